//! Restore-based fast start: a template microVM, booted once to the point where its agent answers, paused
//! and snapshotted into a directory; later VMs are clones restored from it instead of booted.
//!
//! A template directory holds `state.snap` (the VM state), `memory.mem` (guest memory, which every clone
//! maps privately: pages are read from the file on first touch and copied only when written) and
//! `template.json` (the manifest: what the template VM was, written last, so a directory without it is
//! not a template). The template VM has no image disk: its spare slots are empty, and a clone gets its
//! rootfs, scratch disk and volumes attached after the restore, before it is resumed. Each clone also
//! gets its own vsock socket and a fresh guest CID (the guest re-reads it on the transport reset every
//! restore sends), and its NIC on its own TAP. What clones share and must not (the kernel RNG state, the
//! clock) is fixed through the agent after the resume: `SyncClock` and `AddEntropy` (the callers do it,
//! as they hold the agent connection).
//!
//! Only the kvm backend (the hull VMM) snapshots and restores; under the software KVM (`kvm_pvm`) no guest
//! reaches its agent, so a template cannot be made there (the tests use tiny guests that stand in).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backend::{self, BackendError, SnapshotFiles, Vm, VmLaunchConfig};

/// The manifest's format version.
const FORMAT: u64 = 1;
const MANIFEST: &str = "template.json";
const STATE: &str = "state.snap";
const MEMORY: &str = "memory.mem";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {dir}: {what}: {source}")]
    Io {
        dir: String,
        what: String,
        source: std::io::Error,
    },
    #[error("{0} is not a template: {1}")]
    NotATemplate(String, String),
    #[error("the template VM cannot be used: {0}")]
    Mismatch(String),
    #[error("the template VM did not get ready: {0}")]
    NotReady(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What a template VM was made from; a clone must be launched with the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub cpus: u8,
    pub mem_mib: u32,
    /// Read-only spare slots (`slot0`...) and read-write ones (`wslot0`...).
    pub slots: usize,
    pub rw_slots: usize,
    /// Whether the template VM has a NIC (eth0), which a clone puts on its own TAP.
    pub net: bool,
    /// The agent policy on the template's kernel command line (fixed at its boot, so every clone's).
    pub agent_policy: String,
    /// The hull that made it (hull refuses snapshots of another format anyway; this names the reason).
    pub hull_version: String,
    /// The identity of what it was made from ([`key`]).
    pub key: String,
}

impl Manifest {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "format": FORMAT,
            "cpus": self.cpus,
            "mem_mib": self.mem_mib,
            "slots": self.slots,
            "rw_slots": self.rw_slots,
            "net": self.net,
            "agent_policy": self.agent_policy,
            "hull_version": self.hull_version,
            "key": self.key,
        })
    }

    fn from_json(v: &serde_json::Value) -> Result<Manifest, String> {
        if v["format"].as_u64() != Some(FORMAT) {
            return Err(format!("manifest format {} (this hull reads {FORMAT})", v["format"]));
        }
        let num = |k: &str| {
            v[k].as_u64()
                .ok_or_else(|| format!("manifest field {k} is missing or not a number"))
        };
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("manifest field {k} is missing or not a string"))
        };
        let small = |k: &str, max: u64| {
            num(k).and_then(|n| {
                if n <= max {
                    Ok(n)
                } else {
                    Err(format!("manifest field {k} is {n}, at most {max}"))
                }
            })
        };
        Ok(Manifest {
            cpus: small("cpus", 32)? as u8,
            mem_mib: small("mem_mib", 1 << 20)? as u32,
            slots: small("slots", 16)? as usize,
            rw_slots: small("rw_slots", 16)? as usize,
            net: v["net"]
                .as_bool()
                .ok_or("manifest field net is missing or not a boolean")?,
            agent_policy: text("agent_policy")?,
            hull_version: text("hull_version")?,
            key: text("key")?,
        })
    }

    /// What `cfg` (a template VM's or a clone's launch) says about the fields a manifest records.
    fn of(cfg: &VmLaunchConfig) -> Manifest {
        Manifest {
            cpus: cfg.cpus,
            mem_mib: cfg.mem_mib,
            slots: cfg.slots,
            rw_slots: cfg.rw_slots,
            net: cfg.tap.is_some(),
            agent_policy: cfg.agent_policy.to_string(),
            hull_version: env!("CARGO_PKG_VERSION").to_string(),
            key: key(cfg),
        }
    }
}

/// The identity of a template made from `cfg`: a digest of the kernel and initramfs (path, size, mtime),
/// the VM's size, slots, NIC, kernel command line and agent policy. A shim keeps one template per key.
pub fn key(cfg: &VmLaunchConfig) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for file in [cfg.kernel, cfg.initrd] {
        h.update(file.as_os_str().as_encoded_bytes());
        h.update([0]);
        if let Ok(m) = std::fs::metadata(file) {
            use std::os::unix::fs::MetadataExt;
            h.update(m.len().to_le_bytes());
            h.update(m.mtime().to_le_bytes());
            h.update(m.mtime_nsec().to_le_bytes());
        }
    }
    let fields = format!(
        "{} {} {} {} {} {} {}",
        cfg.cpus,
        cfg.mem_mib,
        cfg.slots,
        cfg.rw_slots,
        cfg.tap.is_some(),
        cfg.agent_policy,
        cfg.cmdline_extra
    );
    h.update(fields.as_bytes());
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A template directory, checked.
#[derive(Debug, Clone)]
pub struct Template {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Template {
    /// Makes a template in `dir` (created; it must not exist yet, or be empty) from the VM `cfg`
    /// describes, which has no drives (its spare slots are empty) and runs on the kvm backend: boots it,
    /// waits for `ready` (the agent answers, [`agent_answers`]), pauses it, snapshots it and stops it.
    pub fn create(
        cfg: &VmLaunchConfig,
        dir: &Path,
        ready: &mut dyn FnMut(&mut dyn Vm) -> Result<(), String>,
    ) -> Result<Template, TemplateError> {
        let io = |what: &str| {
            let (dir, what) = (dir.display().to_string(), what.to_string());
            move |source| TemplateError::Io { dir, what, source }
        };
        if !cfg.drives.is_empty() {
            return Err(TemplateError::Mismatch(
                "a template VM has no drives: its disks are attached to each clone after the restore".into(),
            ));
        }
        {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if std::fs::read_dir(dir).map_err(io("reading"))?.next().is_some() {
                        return Err(TemplateError::Mismatch(format!(
                            "{} exists and is not empty",
                            dir.display()
                        )));
                    }
                }
                Err(e) => return Err(io("creating")(e)),
            }
        }
        let t0 = Instant::now();
        let mut vm = backend::start_for_snapshot(cfg)?;
        let result = ready(vm.as_mut()).map_err(TemplateError::NotReady).and_then(|()| {
            vm.snapshot(&SnapshotFiles {
                state: dir.join(STATE),
                memory: dir.join(MEMORY),
            })
            .map_err(TemplateError::from)
        });
        vm.stop(Duration::ZERO);
        drop(vm);
        result?;
        let manifest = Manifest::of(cfg);
        let text = serde_json::to_string_pretty(&manifest.to_json()).unwrap_or_default();
        let tmp = dir.join(format!("{MANIFEST}.tmp"));
        std::fs::write(&tmp, text).map_err(io("writing the manifest"))?;
        std::fs::rename(&tmp, dir.join(MANIFEST)).map_err(io("writing the manifest"))?;
        tracing::info!(dir = %dir.display(), ms = t0.elapsed().as_millis() as u64, "template VM snapshotted");
        Ok(Template {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Opens and checks the template in `dir`.
    pub fn open(dir: &Path) -> Result<Template, TemplateError> {
        let not = |why: String| TemplateError::NotATemplate(dir.display().to_string(), why);
        let text = std::fs::read_to_string(dir.join(MANIFEST)).map_err(|e| not(format!("{MANIFEST}: {e}")))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| not(format!("{MANIFEST} is not JSON: {e}")))?;
        let manifest = Manifest::from_json(&json).map_err(not)?;
        let mem = std::fs::metadata(dir.join(MEMORY)).map_err(|e| not(format!("{MEMORY}: {e}")))?;
        if mem.len() != u64::from(manifest.mem_mib) << 20 {
            return Err(not(format!(
                "{MEMORY} has {} bytes, the manifest says {} MiB",
                mem.len(),
                manifest.mem_mib
            )));
        }
        std::fs::metadata(dir.join(STATE)).map_err(|e| not(format!("{STATE}: {e}")))?;
        Ok(Template {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The snapshot's files.
    pub fn files(&self) -> SnapshotFiles {
        SnapshotFiles {
            state: self.dir.join(STATE),
            memory: self.dir.join(MEMORY),
        }
    }

    /// Restores a clone, Paused, for the launch `cfg` (its directory, jail, TAP; its size, slots, NIC and
    /// policy must be the template's), with a fresh guest CID. The caller attaches the clone's disks to
    /// the slots, then [`Vm::resume`]s it.
    pub fn restore(&self, cfg: &VmLaunchConfig, cgroup_procs: &[PathBuf]) -> Result<Box<dyn Vm>, TemplateError> {
        let m = &self.manifest;
        let want = Manifest::of(cfg);
        let differs = [
            ("vCPUs", m.cpus.to_string(), want.cpus.to_string()),
            ("memory MiB", m.mem_mib.to_string(), want.mem_mib.to_string()),
            ("read-only slots", m.slots.to_string(), want.slots.to_string()),
            ("read-write slots", m.rw_slots.to_string(), want.rw_slots.to_string()),
            ("NIC", m.net.to_string(), want.net.to_string()),
            ("agent policy", m.agent_policy.clone(), want.agent_policy.clone()),
        ]
        .into_iter()
        .filter(|(_, a, b)| a != b)
        .map(|(what, a, b)| format!("{what}: the template has {a}, this VM wants {b}"))
        .collect::<Vec<_>>();
        if !differs.is_empty() {
            return Err(TemplateError::Mismatch(differs.join("; ")));
        }
        if !cfg.drives.is_empty() {
            return Err(TemplateError::Mismatch(
                "a clone's disks go into its slots after the restore, not in drives".into(),
            ));
        }
        Ok(backend::restore_in_cgroup(
            cfg,
            &self.files(),
            fresh_guest_cid(),
            cgroup_procs,
        )?)
    }
}

/// A random guest CID (3 to 2^31-1): clones of one template do not share one.
pub fn fresh_guest_cid() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let r = if n == 4 {
        u32::from_le_bytes(b)
    } else {
        // No getrandom: the time's nanoseconds and the pid still differ between clones.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.subsec_nanos() ^ std::process::id().rotate_left(16)
    };
    3 + r % (0x7fff_ffff - 3)
}

/// Readiness of a template VM that runs hull-agent: the agent answers on the VM's vsock within `timeout`.
pub fn agent_answers(vm: &mut dyn Vm, timeout: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    loop {
        match crate::agent::Agent::connect(vm.vsock_uds(), Duration::from_secs(1)) {
            // The connection closes here, before the snapshot (a clone's would be reset anyway).
            Ok(agent) => return agent.version().map(drop).map_err(|e| e.to_string()),
            Err(e) if !vm.alive() || t0.elapsed() >= timeout => {
                return Err(format!("{e}; guest console {}", crate::console_tail(&vm.console_log())))
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_bad_ones_are_refused() {
        let m = Manifest {
            cpus: 2,
            mem_mib: 256,
            slots: 1,
            rw_slots: 2,
            net: true,
            agent_policy: "all".into(),
            hull_version: "0.1.0".into(),
            key: "abcd".into(),
        };
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
        let mut v = m.to_json();
        v["format"] = 2.into();
        assert!(Manifest::from_json(&v).unwrap_err().contains("format 2"));
        let mut v = m.to_json();
        v["cpus"] = 400.into();
        assert!(Manifest::from_json(&v).unwrap_err().contains("cpus is 400"));
        let mut v = m.to_json();
        v["net"] = "yes".into();
        assert!(Manifest::from_json(&v).is_err());
    }

    #[test]
    fn fresh_cids_are_in_range_and_differ() {
        let cids: std::collections::BTreeSet<u32> = (0..64).map(|_| fresh_guest_cid()).collect();
        assert!(cids.iter().all(|c| (3..0x7fff_ffff).contains(c)));
        assert!(cids.len() > 60, "{cids:?}");
    }

    #[test]
    fn a_directory_without_a_manifest_or_with_a_short_memory_file_is_not_a_template() {
        let dir = std::env::temp_dir().join(format!("hull-template-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(Template::open(&dir), Err(TemplateError::NotATemplate(..))));
        let m = Manifest {
            cpus: 1,
            mem_mib: 1,
            slots: 0,
            rw_slots: 0,
            net: false,
            agent_policy: "all".into(),
            hull_version: "0.1.0".into(),
            key: "k".into(),
        };
        std::fs::write(dir.join(MANIFEST), m.to_json().to_string()).unwrap();
        std::fs::write(dir.join(STATE), b"x").unwrap();
        std::fs::write(dir.join(MEMORY), vec![0u8; 4096]).unwrap();
        let e = Template::open(&dir).unwrap_err().to_string();
        assert!(e.contains("4096 bytes"), "{e}");
        std::fs::write(dir.join(MEMORY), vec![0u8; 1 << 20]).unwrap();
        assert_eq!(Template::open(&dir).unwrap().manifest, m);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
