//! The shim's configuration file (TOML): which VM backend, where the `hull` binary, guest kernel and
//! initramfs are, VM size defaults and limits, how many spare disk slots a pod VM gets, and where images and
//! per-VM state live.
//!
//! Found at (first that exists): the `ConfigPath` runtime option containerd passes for the handler, the
//! `HULL_SHIM_CONFIG` environment variable, `/etc/hull/shim.toml`. Without a file, the defaults apply.
//! Unknown keys are refused, so a typo does not silently fall back to a default.

use std::path::{Path, PathBuf};

use hull_agent_protocol::policy::{Call, Policy, EXEC_ANNOTATION};
use hull_runtime::backend::BackendKind;
use hull_runtime::jail::{JailConfig, DEFAULT_BASE_DIR, DEFAULT_JAIL_ID, DEFAULT_JAIL_UID_COUNT};
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/hull/shim.toml";

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Kvm,
    Qemu,
}

impl From<Backend> for BackendKind {
    fn from(b: Backend) -> BackendKind {
        match b {
            Backend::Auto => BackendKind::Auto,
            Backend::Kvm => BackendKind::Kvm,
            Backend::Qemu => BackendKind::Qemu,
        }
    }
}

/// Disk slots a VM can have besides its rootfs: QEMU's microvm has 8 virtio-mmio transports, and the rootfs,
/// vsock and net take 3.
pub const MAX_SLOTS: usize = 5;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShimConfig {
    /// `auto` (hull on hardware KVM, else QEMU TCG with hull's device backends), `kvm` or `qemu`.
    pub backend: Backend,
    /// The `hull` binary (default: `hull` next to the shim binary, else /usr/local/bin/hull).
    pub hull_binary: Option<PathBuf>,
    /// Guest kernel and initramfs (default: /var/lib/hull/{vmlinux,initramfs.cpio} when present, else
    /// `$HULL_KERNEL`/`$HULL_INITRD`, else the newest in the build cache).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// vCPUs and memory of a VM before the workload's own limits are added.
    pub default_vcpus: u8,
    pub default_memory_mib: u32,
    /// Upper bounds for a VM whatever the limits ask.
    pub max_vcpus: u8,
    pub max_memory_mib: u32,
    /// Spare virtio-blk slots of a pod VM, for images and volumes of containers created after boot.
    pub pod_slots: usize,
    /// Size (MiB) of a pod VM's scratch disk, a sparse file in the VM's directory that holds what its
    /// containers write to their root file systems; 0: a tmpfs in the guest's RAM instead. It takes one of the
    /// slots `pod_slots` may have.
    pub scratch_mib: u64,
    /// Read-only rootfs images, one per snapshot parent chain.
    pub image_cache: PathBuf,
    /// Per-VM state (sockets, console log, logs).
    pub work_dir: PathBuf,
    pub boot_timeout_secs: u64,
    /// How the VM's processes are confined (`[jail]`).
    pub jail: JailSection,
    /// Which agent calls a pod's guest serves, in the text form of `hull_agent_protocol::policy` (e.g.
    /// `-ExecProcess`); empty: every call, which is what the shim makes. A pod whose sandbox carries the
    /// annotation `io.hull.policy.exec: "false"` also gets no ExecProcess.
    pub agent_policy: String,
    /// The shim's log: `text` (containerd-shim's `key="value"` lines) or `json` (one object per line).
    pub log_format: crate::logging::LogFormat,
    /// `hostNetwork` pods: `refuse` (RunPodSandbox fails naming the field) or `isolated` (the VM runs without
    /// a NIC). hostPID and hostIPC pods are always refused.
    pub host_network: crate::guest_spec::HostNetwork,
    /// Restore pod VMs from a template (made once per VM kind, in `template_dir`) instead of booting them:
    /// the kvm backend only; elsewhere pods boot as without it ([`crate::fast_start`]).
    pub fast_start: bool,
    /// Where `fast_start` keeps its templates (one directory per VM kind; each holds a snapshot of the
    /// guest's memory as big as the VM).
    pub template_dir: PathBuf,
}

impl Default for ShimConfig {
    fn default() -> Self {
        ShimConfig {
            backend: Backend::Auto,
            hull_binary: None,
            kernel: None,
            initrd: None,
            default_vcpus: 1,
            default_memory_mib: 256,
            max_vcpus: 8,
            max_memory_mib: 16384,
            pod_slots: 4,
            scratch_mib: hull_runtime::image::DEFAULT_SCRATCH_MIB,
            image_cache: PathBuf::from("/var/lib/hull/images"),
            work_dir: PathBuf::from("/run/hull/shim"),
            boot_timeout_secs: 120,
            jail: JailSection::default(),
            agent_policy: String::new(),
            log_format: crate::logging::LogFormat::Text,
            host_network: crate::guest_spec::HostNetwork::Refuse,
            fast_start: false,
            template_dir: PathBuf::from("/var/lib/hull/templates"),
        }
    }
}

/// `[jail]`: hull (the VMM, or QEMU's device backends) starts through hull-jailer in a chroot under
/// `base_dir`, and hull and QEMU run as the jail gid `gid` and a uid of the VM's own from `uid` ..
/// `uid + uid_count`; `enabled = false` runs them as the shim (root).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JailSection {
    pub enabled: bool,
    /// The first of the uids the pods' VMs draw from (one each, while it runs).
    pub uid: u32,
    pub uid_count: u32,
    pub gid: u32,
    /// hull-jailer's `--chroot-base-dir`.
    pub base_dir: PathBuf,
    /// The hull-jailer binary (default: next to the hull binary).
    pub jailer: Option<PathBuf>,
}

impl Default for JailSection {
    fn default() -> Self {
        JailSection {
            enabled: true,
            uid: DEFAULT_JAIL_ID,
            uid_count: DEFAULT_JAIL_UID_COUNT,
            gid: DEFAULT_JAIL_ID,
            base_dir: PathBuf::from(DEFAULT_BASE_DIR),
            jailer: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the shim config {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("the shim config {0} is not valid: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("the shim config {0}: {1}")]
    Invalid(PathBuf, String),
}

impl ShimConfig {
    /// Loads the config: `explicit` (the runtime option), else `$HULL_SHIM_CONFIG`, else the default path;
    /// a missing default file means the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<ShimConfig, ConfigError> {
        let env = std::env::var_os("HULL_SHIM_CONFIG").map(PathBuf::from);
        let (path, required) = match (explicit, env) {
            (Some(p), _) => (p.to_path_buf(), true),
            (None, Some(p)) => (p, true),
            (None, None) => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(ShimConfig::default()),
            Err(e) => return Err(ConfigError::Read(path, e)),
        };
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Invalid(_, m) => ConfigError::Invalid(path.clone(), m),
            ConfigError::Parse(_, m) => ConfigError::Parse(path.clone(), m),
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<ShimConfig, ConfigError> {
        let c: ShimConfig = toml::from_str(text).map_err(|e| ConfigError::Parse(PathBuf::new(), e))?;
        let bad = |m: &str| Err(ConfigError::Invalid(PathBuf::new(), m.into()));
        if c.default_vcpus == 0 || c.default_vcpus > c.max_vcpus {
            return bad("default_vcpus must be 1..=max_vcpus");
        }
        if c.default_memory_mib < 64 || c.default_memory_mib > c.max_memory_mib {
            return bad("default_memory_mib must be 64..=max_memory_mib");
        }
        if c.pod_slots + usize::from(c.scratch_mib > 0) > MAX_SLOTS {
            return bad(
                "pod_slots must be at most 5, 4 with a scratch disk (QEMU's microvm has 8 virtio-mmio slots: rootfs, \
                 vsock, net and 5)",
            );
        }
        if c.scratch_mib > hull_runtime::image::MAX_SCRATCH_MIB {
            return bad("scratch_mib must be at most 16 TiB");
        }
        if !c.image_cache.is_absolute() || !c.work_dir.is_absolute() || !c.template_dir.is_absolute() {
            return bad("image_cache, work_dir and template_dir must be absolute paths");
        }
        if !c.jail.base_dir.is_absolute() {
            return bad("jail.base_dir must be an absolute path");
        }
        if let Err(e) = Policy::parse(&c.agent_policy) {
            return bad(&e.to_string());
        }
        Ok(c)
    }

    /// The agent policy of a pod's VM: `agent_policy`, minus ExecProcess when the pod's annotations (its
    /// first container's, the sandbox's under CRI) say `io.hull.policy.exec: "false"`.
    pub fn agent_policy(&self, annotations: &serde_json::Value) -> Policy {
        // Checked at parse: a bad text cannot get here; were it to, the guest would serve nothing.
        let mut p = Policy::parse(&self.agent_policy).unwrap_or_else(|_| Policy::none());
        if annotations[EXEC_ANNOTATION] == "false" {
            p.deny(Call::ExecProcess);
        }
        p
    }

    /// The VM processes' jail for the hull binary `hull`, unless `[jail] enabled = false`.
    pub fn jail_config(&self, hull: &Path) -> Option<JailConfig> {
        let j = &self.jail;
        j.enabled.then(|| {
            let mut c = JailConfig::beside(hull);
            c.uid = j.uid;
            c.uid_count = j.uid_count;
            c.gid = j.gid;
            c.base_dir = j.base_dir.clone();
            if let Some(jailer) = &j.jailer {
                c.jailer = jailer.clone();
            }
            c
        })
    }

    pub fn hull_binary(&self) -> PathBuf {
        if let Some(p) = &self.hull_binary {
            return p.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.join("hull")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("/usr/local/bin/hull"))
    }

    /// The guest kernel and initramfs: configured, else the installed ones, else the runtime's defaults.
    pub fn guest_files(&self) -> Result<(PathBuf, PathBuf), hull_runtime::GuestFilesError> {
        let installed = |name: &str| {
            let p = Path::new("/var/lib/hull").join(name);
            p.is_file().then_some(p)
        };
        let kernel = self.kernel.clone().or_else(|| {
            std::env::var_os("HULL_KERNEL")
                .is_none()
                .then(|| installed("vmlinux"))
                .flatten()
        });
        let initrd = self.initrd.clone().or_else(|| {
            std::env::var_os("HULL_INITRD")
                .is_none()
                .then(|| installed("initramfs.cpio"))
                .flatten()
        });
        hull_runtime::guest_files(kernel.as_deref(), initrd.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_policy_from_the_config_and_the_pod_annotation() {
        let c = ShimConfig::parse("").unwrap();
        assert_eq!(c.agent_policy(&serde_json::json!({})), Policy::all());
        let no_exec = c.agent_policy(&serde_json::json!({ "io.hull.policy.exec": "false" }));
        assert!(!no_exec.allows(Call::ExecProcess) && no_exec.allows(Call::ReadFile));
        assert_eq!(
            c.agent_policy(&serde_json::json!({ "io.hull.policy.exec": "true" })),
            Policy::all()
        );
        let c = ShimConfig::parse("agent_policy = \"-UpdateResources\"").unwrap();
        assert!(!c.agent_policy(&serde_json::Value::Null).allows(Call::UpdateResources));
        assert!(ShimConfig::parse("agent_policy = \"-Exec\"").is_err());
    }

    #[test]
    fn defaults_parse_and_typos_are_refused() {
        let c = ShimConfig::parse("").unwrap();
        assert_eq!(c.backend, Backend::Auto);
        assert_eq!(c.default_memory_mib, 256);
        let c = ShimConfig::parse("backend = \"qemu\"\ndefault_memory_mib = 512\n").unwrap();
        assert_eq!((c.backend, c.default_memory_mib), (Backend::Qemu, 512));
        assert!(ShimConfig::parse("backnd = \"qemu\"").is_err());
        assert!(ShimConfig::parse("backend = \"xen\"").is_err());
        assert!(ShimConfig::parse("default_vcpus = 0").is_err());
        assert!(ShimConfig::parse("default_memory_mib = 999999").is_err());
        assert!(ShimConfig::parse("image_cache = \"rel\"").is_err());
        assert!(ShimConfig::parse("pod_slots = \"x\"").is_err());
        assert!(ShimConfig::parse("template_dir = \"rel\"").is_err());
        assert!(ShimConfig::parse("fast_start = \"yes\"").is_err());
        let c = ShimConfig::parse("fast_start = true\ntemplate_dir = \"/t\"").unwrap();
        assert!(c.fast_start && c.template_dir == std::path::Path::new("/t"));
        // The file install.sh ships parses, with fast start off.
        let shipped = ShimConfig::parse(include_str!("../../resources/shim.toml")).unwrap();
        assert!(!shipped.fast_start);
    }

    #[test]
    fn the_scratch_disk_takes_a_slot() {
        let c = ShimConfig::parse("").unwrap();
        assert_eq!((c.scratch_mib, c.pod_slots), (10240, 4));
        assert!(
            ShimConfig::parse("pod_slots = 5").is_err(),
            "5 slots and a scratch disk"
        );
        let c = ShimConfig::parse("pod_slots = 5\nscratch_mib = 0").unwrap();
        assert_eq!((c.scratch_mib, c.pod_slots), (0, 5));
        assert!(ShimConfig::parse("scratch_mib = 99999999999").is_err());
    }

    #[test]
    fn the_jail_is_on_by_default_and_configurable() {
        let c = ShimConfig::parse("").unwrap();
        let j = c.jail_config(Path::new("/usr/local/bin/hull")).unwrap();
        assert_eq!(
            (j.uid, j.gid, j.base_dir.as_path()),
            (64000, 64000, Path::new("/srv/jailer"))
        );
        assert_eq!(j.jailer, Path::new("/usr/local/bin/hull-jailer"));
        assert_eq!(j.uid_count, 1000);
        let c = ShimConfig::parse("[jail]\nuid = 5000\nuid_count = 10\ngid = 5001\nbase_dir = \"/jails\"\n").unwrap();
        let j = c.jail_config(Path::new("/x/hull")).unwrap();
        assert_eq!(
            (j.uid, j.uid_count, j.gid, j.base_dir.as_path()),
            (5000, 10, 5001, Path::new("/jails"))
        );
        assert!(ShimConfig::parse("[jail]\nenabled = false\n")
            .unwrap()
            .jail_config(Path::new("/x"))
            .is_none());
        assert!(ShimConfig::parse("[jail]\nbase_dir = \"rel\"\n").is_err());
        assert!(ShimConfig::parse("[jail]\nuser = 1\n").is_err());
    }
}
