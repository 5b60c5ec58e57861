//! Differential tests against runc: the same image and the same `ctr run` options (so the same OCI spec, which
//! containerd builds) run under runc (`io.containerd.runc.v2`) and under hull (`io.containerd.hull.v2`) in one
//! private containerd, and what the container sees is compared field by field: `$$`, the credential,
//! capability, no_new_privs and seccomp fields of `/proc/self/status`, the resource limits, every mount (point,
//! type, per-mount options), the root directory's entries, cwd, umask, environment, `id`, OOM score
//! adjustment, whether a block device node can be made and opened (the device cgroup), and the exit status.
//!
//! What may differ is listed in [`vm_differences`], each with the reason: the guest is another machine
//! (its own kernel, memory size, cgroup version), or hull adds a guard of its own. Everything else must be
//! equal. Needs root (containerd); skipped otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use hull_tests::containerd::{CmdOutput, Containerd, ContainerdOptions, CTR_NAMESPACE};
use hull_tests::oci_image::{self, BUSYBOX_IMAGE};
use hull_tests::skip;

const HULL_RUNTIME: &str = "io.containerd.hull.v2";
const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
const USER_IMAGE: &str = "hull.test/busybox-user:1";

/// What the container reports about itself, one `key=value` per line, with shell builtins where the answer
/// is about the shell itself (PID 1). Ends with exit status 7.
const PROBE: &str = r#"echo "pid=$$"
while read -r k v; do
  case "$k" in
    Uid:|Gid:|Groups:|CapInh:|CapPrm:|CapEff:|CapBnd:|CapAmb:|NoNewPrivs:|Seccomp:|Seccomp_filters:)
      echo "status.${k%:}=$v";;
  esac
done < /proc/$$/status
while read -r l; do echo "limit=$l"; done < /proc/$$/limits
while read -r l; do echo "mount=$l"; done < /proc/$$/mountinfo
echo "kernel=$(uname -r)"
echo "hostname=$(hostname)"
echo "cwd=$(pwd)"
echo "umask=$(umask)"
echo "oom_score_adj=$(cat /proc/$$/oom_score_adj)"
echo "id=$(id)"
echo "uid_map=$(cat /proc/$$/uid_map)"
echo "gid_map=$(cat /proc/$$/gid_map)"
echo "root_owner=$(stat -c %u:%g /)"
echo "shm_rmid_forced=$(cat /proc/sys/kernel/shm_rmid_forced)"
echo "tty=$(tty 2>&1)"
stty -g >/dev/null 2>&1 && echo "stty=$(stty -g)"
read -r _ _ state ppid pgrp sid ttynr _ < /proc/$$/stat; echo "stat=$ppid $pgrp $sid $ttynr"
kill -TERM $$ 2>/dev/null; echo "sigterm_to_pid1=survived"
echo "rootdir=$(ls -A / | tr '\n' ' ')"
mknod /tmp/probe-disk b 254 0 2>/dev/null && echo "mknod_disk=yes" || echo "mknod_disk=no"
head -c 1 /tmp/probe-disk >/dev/null 2>&1 && echo "open_disk=yes" || echo "open_disk=no"
env | sort | while read -r l; do echo "env=$l"; done
exit 7
"#;

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The probe's output as a map. Whitespace inside values is normalised (the kernel aligns columns).
fn parse(out: &str) -> BTreeMap<String, String> {
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut map = BTreeMap::new();
    let mut add = |k: String, v: String| {
        map.entry(k)
            .and_modify(|old: &mut String| {
                old.push_str(" ; ");
                old.push_str(&v);
            })
            .or_insert(v);
    };
    for line in out.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "limit" => {
                // "Max open files 1024 1024 files": the name is the words before the first value.
                let words: Vec<&str> = value.split_whitespace().collect();
                let at = words
                    .iter()
                    .position(|w| *w == "unlimited" || w.chars().all(|c| c.is_ascii_digit()))
                    .unwrap_or(words.len());
                if at == 0 || words.first() == Some(&"Limit") {
                    continue;
                }
                add(format!("limit.{}", words[..at].join(" ")), words[at..].join(" "));
            }
            "mount" => {
                // mountinfo: id parent dev root point options [optional...] - fstype source superoptions
                let fields: Vec<&str> = value.split_whitespace().collect();
                let dash = fields.iter().position(|f| *f == "-");
                if let (Some(point), Some(options), Some(dash)) = (fields.get(4), fields.get(5), dash) {
                    let fstype = fields.get(dash + 1).copied().unwrap_or("?");
                    add(format!("mount.{point}"), format!("{fstype} {options}"));
                }
            }
            "env" => {
                let (k, v) = value.split_once('=').unwrap_or((value, ""));
                add(format!("env.{k}"), v.to_string());
            }
            _ => add(key.to_string(), norm(value)),
        }
    }
    map
}

/// Keys whose values may differ between runc and hull, and why. Each comes from the guest being another
/// machine or from a guard hull adds; nothing else may differ.
fn vm_differences() -> Vec<(&'static str, &'static str)> {
    let mut d = vec![
        (
            "limit.Max processes",
            "the kernel sizes the default RLIMIT_NPROC from the machine's memory: the guest has less than the host",
        ),
        (
            "limit.Max pending signals",
            "the kernel sizes the default RLIMIT_SIGPENDING from the machine's memory, as RLIMIT_NPROC",
        ),
        (
            "mount./proc/acpi",
            "a masked path runc covers with a tmpfs; the guest kernel has no ACPI, so there is no /proc/acpi",
        ),
        (
            "mount./proc/keys",
            "a masked path runc covers with /dev/null; the guest kernel has no key retention (CONFIG_KEYS), so \
             there is no /proc/keys",
        ),
        (
            "oom_score_adj",
            "no oomScoreAdj in the spec: runc's process inherits its shim's (containerd's plus one), hull's gets \
             the spec's default, 0, in a guest where the agent is the one to protect",
        ),
        ("kernel", "the guest runs a kernel of its own: the point of hull"),
        (
            "hostname",
            "no hostname in the spec: the container's UTS namespace starts as a copy of its kernel's, the host's \
             under runc and the guest's under hull",
        ),
    ];
    if !host_has_cgroup2() {
        d.push((
            "mount./sys/fs/cgroup",
            "this host mounts cgroup v1 (runc shows it), the guest has cgroup v2 only",
        ));
    }
    d
}

fn host_has_cgroup2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Whether `key` is one of the explained differences (a key, or a mount under an explained mount point).
fn explained(key: &str, differences: &[(&str, &str)]) -> bool {
    differences
        .iter()
        .any(|(k, _)| key == *k || (k.starts_with("mount.") && key.starts_with(&format!("{k}/"))))
}

struct Setup {
    ctd: Containerd,
    shim_config: PathBuf,
    dir: PathBuf,
}

impl Setup {
    fn start() -> Setup {
        hull_tests::ensure_qemu_tools();
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hull-runc-diff-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let shim_config = dir.join("shim.toml");
        let ctd = Containerd::start(ContainerdOptions {
            hull_config_path: Some(shim_config.clone()),
            ..Default::default()
        });
        ctd.write_hull_shim_config(&shim_config, "");
        ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
        ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image_as(USER_IMAGE, "1000:1000"));
        Setup { ctd, shim_config, dir }
    }

    /// A busybox root directory for whole specs (`ctr run --config`), built once.
    fn rootfs(&self) -> PathBuf {
        let rootfs = self.dir.join("rootfs");
        if !rootfs.join("bin/busybox").exists() {
            hull_tests::build_busybox_rootfs(&rootfs);
        }
        rootfs
    }

    /// `ctr run --rm --config` of the probe under `runtime`: `ctr oci spec`'s default spec with the probe as
    /// the process, the busybox directory as a read-only root, then `edit`.
    fn probe_spec(&self, runtime: &str, id: &str, edit: &dyn Fn(&mut serde_json::Value)) -> CmdOutput {
        let out = self.ctd.ctr(&["oci", "spec"]);
        let mut spec: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        spec["process"]["args"] = serde_json::json!(["sh", "-c", PROBE]);
        spec["process"]["terminal"] = false.into();
        // ctr's default spec has no environment; without PATH, runc and hull find only programs named by a
        // path (`a_whole_spec_is_seen_as_under_runc` tries that).
        spec["process"]["env"] = serde_json::json!(["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
        spec["root"] = serde_json::json!({ "path": self.rootfs().to_string_lossy(), "readonly": true });
        // ctr's default spec puts every container in "/default", the parent of every other ctr container's
        // cgroup: runc cannot set a cgroup v1 device list on a cgroup with children. As `ctr run` does
        // without --config: a cgroup of its own.
        spec["linux"]["cgroupsPath"] = format!("/default/{id}").into();
        edit(&mut spec);
        let path = self.dir.join(format!("{id}.json"));
        std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
        let cfg = self.shim_config.to_string_lossy().to_string();
        let path = path.to_string_lossy().to_string();
        let mut args = vec!["run", "--rm", "--runtime", runtime];
        if runtime == HULL_RUNTIME {
            args.extend(["--runtime-config-path", cfg.as_str()]);
        }
        args.extend(["--config", path.as_str(), id]);
        self.ctd.ctr(&args)
    }

    /// `ctr run --rm` of the probe under `runtime` with `options` and `image`.
    fn probe(&self, runtime: &str, options: &[&str], image: &str, id: &str) -> CmdOutput {
        let cfg = self.shim_config.to_string_lossy().to_string();
        let mut args = vec!["run", "--rm", "--runtime", runtime];
        if runtime == HULL_RUNTIME {
            args.extend(["--runtime-config-path", cfg.as_str()]);
        }
        args.extend_from_slice(options);
        args.extend([image, id, "sh", "-c", PROBE]);
        self.ctd.ctr(&args)
    }
}

impl Setup {
    /// `ctr run --rm -t` of the probe under `runtime`, inside `script`, which gives ctr the terminal it
    /// wants on its side.
    fn probe_tty(&self, runtime: &str, id: &str) -> CmdOutput {
        let cfg = self.shim_config.to_string_lossy().to_string();
        let extra = if runtime == HULL_RUNTIME {
            format!("--runtime-config-path {cfg}")
        } else {
            String::new()
        };
        let probe = self.dir.join("probe.sh");
        std::fs::write(&probe, PROBE).unwrap();
        let ctr = format!(
            "stty rows 30 cols 100; ctr --address {} run --rm -t --runtime {runtime} {extra} \
             --mount type=bind,src={},dst=/probe.sh,options=rbind:ro {BUSYBOX_IMAGE} {id} sh /probe.sh",
            self.ctd.socket().display(),
            probe.display()
        );
        let child = std::process::Command::new("script")
            .args(["-qec", &ctr, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        CmdOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).replace('\r', ""),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        }
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What differs for a container whose root holds CAP_SYS_ADMIN: it could detach the cgroup's vsock guard, so
/// hull also gives it the agent's seccomp vsock filter (`guest-agent/src/vsock_guard.rs`).
const VSOCK_SECCOMP_FALLBACK: &[(&str, &str)] = &[
    (
        "status.Seccomp_filters",
        "CAP_SYS_ADMIN could detach the cgroup's vsock guard, so hull adds its seccomp vsock filter (docs/SECURITY.md)",
    ),
    (
        "status.Seccomp",
        "the same filter puts the process in seccomp filter mode (2)",
    ),
];

/// What differs under an OCI seccomp profile: the same calls are refused, but hull compiles the profile into
/// one filter per action (`guest-agent/src/seccomp.rs`) where runc makes one.
const PROFILE_AS_FILTERS: &[(&str, &str)] = &[(
    "status.Seccomp_filters",
    "hull compiles an OCI profile into one seccomp filter per action, runc (libseccomp) into one",
)];

/// Runs the probe with runc and with hull; returns the differences not explained by [`vm_differences`] or
/// `also`.
fn compare(s: &Setup, case: &str, options: &[&str], image: &str, also: &[(&str, &str)]) -> Vec<String> {
    let runc = s.probe(RUNC_RUNTIME, options, image, &format!("diff-runc-{case}"));
    let hull = s.probe(HULL_RUNTIME, options, image, &format!("diff-hull-{case}"));
    differences(case, &runc, &hull, also)
}

/// The differences between what runc's and hull's probes saw that [`vm_differences`] does not explain.
fn differences(case: &str, runc: &CmdOutput, hull: &CmdOutput, also: &[(&str, &str)]) -> Vec<String> {
    let mut diffs = Vec::new();
    if runc.code() != hull.code() {
        diffs.push(format!(
            "{case}: exit status runc {} hull {}\nrunc: {}\nhull: {}",
            runc.code(),
            hull.code(),
            runc.stderr,
            hull.stderr
        ));
        return diffs;
    }
    assert_eq!(runc.code(), 7, "{case}: the probe did not run: {runc:?}\n{hull:?}");
    let (r, h) = (parse(&runc.stdout), parse(&hull.stdout));
    assert!(r.contains_key("status.CapBnd"), "{case}: no probe output: {runc:?}");
    // Each ran where it should: hull's probe in the guest's kernel, runc's in the host's.
    let kernel = |m: &BTreeMap<String, String>| m.get("kernel").cloned().unwrap_or_default();
    assert!(
        kernel(&h).ends_with("-hull"),
        "{case}: hull's probe ran in {:?}",
        kernel(&h)
    );
    assert!(
        !kernel(&r).ends_with("-hull"),
        "{case}: runc's probe ran in {:?}",
        kernel(&r)
    );
    let mut differences = vm_differences();
    differences.extend_from_slice(also);
    let keys: BTreeSet<&String> = r.keys().chain(h.keys()).collect();
    for key in keys {
        let (a, b) = (r.get(key), h.get(key));
        if a == b || explained(key, &differences) {
            continue;
        }
        diffs.push(format!("{case}: {key}: runc {a:?}, hull {b:?}"));
    }
    diffs
}

#[test]
fn what_the_container_sees_matches_runc() {
    if !is_root() {
        skip("what_the_container_sees_matches_runc", "needs root for containerd");
        return;
    }
    let s = Setup::start();
    type Case<'a> = (&'a str, &'a [&'a str], &'a str, &'a [(&'a str, &'a str)]);
    let cases: [Case; 7] = [
        ("default", &[], BUSYBOX_IMAGE, &[]),
        ("read-only-rootfs", &["--read-only"], BUSYBOX_IMAGE, &[]),
        ("uid-gid-from-the-image", &[], USER_IMAGE, &[]),
        (
            "capabilities-added-and-dropped",
            &["--cap-add", "CAP_SYS_ADMIN", "--cap-drop", "CAP_CHOWN"],
            BUSYBOX_IMAGE,
            VSOCK_SECCOMP_FALLBACK,
        ),
        (
            "env-and-cwd",
            &["--env", "FOO=bar baz", "--cwd", "/tmp"],
            BUSYBOX_IMAGE,
            &[],
        ),
        (
            "seccomp-default-profile",
            &["--seccomp"],
            BUSYBOX_IMAGE,
            PROFILE_AS_FILTERS,
        ),
        ("new-privileges-allowed", &["--allow-new-privs"], BUSYBOX_IMAGE, &[]),
    ];
    let mut all = Vec::new();
    for (case, options, image, also) in cases {
        all.extend(compare(&s, case, options, image, also));
    }
    let explained: Vec<String> = vm_differences()
        .iter()
        .map(|(k, why)| format!("  {k}: {why}"))
        .collect();
    hull_tests::note(&format!(
        "runc differential: {} cases; differences allowed and why:\n{}",
        cases.len(),
        explained.join("\n")
    ));
    assert!(
        all.is_empty(),
        "hull differs from runc:\n{}\n{}",
        all.join("\n"),
        s.ctd.report()
    );
}

/// With a root directory instead of an image, runc uses the directory in place (the host's file system);
/// hull packs it into a disk image under an overlay.
const ROOT_DIRECTORY: [(&str, &str); 2] = [
    (
        "mount./",
        "a root directory: runc mounts it in place (the host's file system), hull packs it into an image",
    ),
    ("mount./var", "the same for a read-only path under that root"),
];

/// Whole specs (`ctr run --config`), for what `ctr run`'s flags cannot say: user and additional groups,
/// rlimits, hostname and sysctls, masked and read-only paths, a minimal capability set.
#[test]
fn a_whole_spec_is_seen_as_under_runc() {
    if !is_root() {
        skip("a_whole_spec_is_seen_as_under_runc", "needs root for containerd");
        return;
    }
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 5] = [
        ("user-and-groups", |s| {
            s["process"]["user"] = serde_json::json!({ "uid": 1000, "gid": 1000, "additionalGids": [10, 20] });
        }),
        ("rlimits", |s| {
            s["process"]["rlimits"] = serde_json::json!([
                { "type": "RLIMIT_NOFILE", "soft": 256, "hard": 512 },
                { "type": "RLIMIT_CORE", "soft": 0, "hard": 0 },
                { "type": "RLIMIT_NPROC", "soft": 100, "hard": 200 },
            ]);
        }),
        ("hostname-and-sysctl", |s| {
            s["hostname"] = "probe-host".into();
            s["linux"]["sysctl"] = serde_json::json!({ "kernel.shm_rmid_forced": "1" });
        }),
        ("masked-and-read-only-paths", |s| {
            s["linux"]["maskedPaths"]
                .as_array_mut()
                .unwrap()
                .push("/etc/group".into());
            s["linux"]["readonlyPaths"].as_array_mut().unwrap().push("/var".into());
        }),
        ("capabilities-minimal", |s| {
            let one = serde_json::json!(["CAP_KILL"]);
            for set in ["bounding", "effective", "permitted"] {
                s["process"]["capabilities"][set] = one.clone();
            }
        }),
    ];
    let s = Setup::start();
    let mut all = Vec::new();
    for (case, edit) in cases {
        let runc = s.probe_spec(RUNC_RUNTIME, &format!("spec-runc-{case}"), &edit);
        let hull = s.probe_spec(HULL_RUNTIME, &format!("spec-hull-{case}"), &edit);
        all.extend(differences(case, &runc, &hull, &ROOT_DIRECTORY));
    }
    // A sysctl no namespace of the container scopes would change the whole kernel (the guest's, for hull):
    // both refuse to create the container.
    let global: Edit = |s| s["linux"]["sysctl"] = serde_json::json!({ "kernel.core_pattern": "|/tmp/x" });
    let runc = s.probe_spec(RUNC_RUNTIME, "spec-runc-global-sysctl", &global);
    let hull = s.probe_spec(HULL_RUNTIME, "spec-hull-global-sysctl", &global);
    assert!(!runc.success() && runc.stderr.contains("core_pattern"), "{runc:?}");
    assert!(
        !hull.success() && hull.stderr.contains("kernel.core_pattern is not namespaced"),
        "{hull:?}"
    );
    // No PATH in the environment: `sh` is not found, and both fail the create with Go's words, before anything
    // of the container runs.
    let no_path: Edit = |s| s["process"]["env"] = serde_json::json!([]);
    let runc = s.probe_spec(RUNC_RUNTIME, "spec-runc-no-path", &no_path);
    let hull = s.probe_spec(HULL_RUNTIME, "spec-hull-no-path", &no_path);
    let said = r#"exec: "sh": executable file not found in $PATH"#;
    assert!(!runc.success() && runc.stderr.contains(said), "{runc:?}");
    assert!(!hull.success() && hull.stderr.contains(said), "{hull:?}");
    assert!(
        all.is_empty(),
        "hull differs from runc:\n{}\n{}",
        all.join("\n"),
        s.ctd.report()
    );
}

/// A user namespace (`uidMappings`/`gidMappings`, what Kubernetes' `hostUsers: false` asks for): root inside
/// is an unprivileged id outside. As runc requires, the root directory belongs to the mapped root (the test
/// chowns its copy); hull's image keeps that ownership, so inside both the ids, maps, capabilities and mounts
/// are the same. (Time namespaces are not compared: Debian 12's runc 1.1 has none, and containerd 1.6 drops
/// `timeOffsets` from a spec; `run_exec.rs` tries hull's through the agent.)
#[test]
fn a_user_namespace_is_seen_as_under_runc() {
    if !is_root() {
        skip("a_user_namespace_is_seen_as_under_runc", "needs root for containerd");
        return;
    }
    let s = Setup::start();
    let owned = s.dir.join("rootfs-100000");
    hull_tests::build_busybox_rootfs(&owned);
    let chown = std::process::Command::new("chown")
        .args(["-hR", "100000:100000"])
        .arg(&owned)
        .status()
        .unwrap();
    assert!(chown.success());
    let user_ns = |spec: &mut serde_json::Value| {
        spec["root"]["path"] = owned.to_string_lossy().to_string().into();
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({ "type": "user" }));
        spec["linux"]["uidMappings"] = serde_json::json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
        spec["linux"]["gidMappings"] = serde_json::json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
    };
    let runc = s.probe_spec(RUNC_RUNTIME, "userns-runc", &user_ns);
    let hull = s.probe_spec(HULL_RUNTIME, "userns-hull", &user_ns);
    let seen = parse(&hull.stdout);
    assert_eq!(
        seen.get("uid_map").map(String::as_str),
        Some("0 100000 65536"),
        "{hull:?}"
    );
    assert_eq!(seen.get("root_owner").map(String::as_str), Some("0:0"), "{hull:?}");
    // Made in the container's user namespace, a device node is refused by the kernel under both.
    assert_eq!(seen.get("mknod_disk").map(String::as_str), Some("no"), "{hull:?}");
    // In a user namespace no device node can be made: runc binds the host's nodes and hull the guest's, and a
    // bind keeps the flags of the mount it comes from (the guest's /dev is nosuid; this host's is not).
    let why = "a device node bound from the host's /dev (runc) or the guest's (hull, nosuid) in a user namespace";
    let mut also = ROOT_DIRECTORY.to_vec();
    for dev in ["null", "zero", "full", "random", "urandom", "tty"] {
        also.push((Box::leak(format!("mount./dev/{dev}").into_boxed_str()), why));
    }
    also.push((
        "mount./proc/timer_list",
        "a masked path: /dev/null bound over it, as above",
    ));
    let diffs = differences("user-namespace", &runc, &hull, &also);
    assert!(
        diffs.is_empty(),
        "hull differs from runc:\n{}\n{}",
        diffs.join("\n"),
        s.ctd.report()
    );
}

/// A signal from outside (`ctr task kill`) to a PID-1 program without a handler: runc's kernel drops SIGTERM
/// and so does hull's guest kernel; SIGKILL ends it under both, with status 137.
#[test]
fn pid_1_gets_only_the_signals_it_handles_as_under_runc() {
    if !is_root() {
        skip(
            "pid_1_gets_only_the_signals_it_handles_as_under_runc",
            "needs root for containerd",
        );
        return;
    }
    let s = Setup::start();
    let cfg = s.shim_config.to_string_lossy().to_string();
    let mut seen = Vec::new();
    for runtime in [RUNC_RUNTIME, HULL_RUNTIME] {
        let id = format!("sig-{}", if runtime == HULL_RUNTIME { "hull" } else { "runc" });
        let mut args = vec!["run", "-d", "--runtime", runtime];
        if runtime == HULL_RUNTIME {
            args.extend(["--runtime-config-path", cfg.as_str()]);
        }
        args.extend([BUSYBOX_IMAGE, id.as_str(), "sleep", "600"]);
        let out = s.ctd.ctr(&args);
        assert!(out.success(), "{runtime}: {out:?}");
        let running = |s: &Setup| {
            s.ctd
                .ctr(&["task", "ls"])
                .stdout
                .lines()
                .any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING"))
        };
        assert!(s.ctd.ctr(&["task", "kill", "-s", "SIGTERM", &id]).success());
        std::thread::sleep(std::time::Duration::from_secs(2));
        let after_term = running(&s);
        assert!(s.ctd.ctr(&["task", "kill", "-s", "SIGKILL", &id]).success());
        let t0 = std::time::Instant::now();
        while running(&s) && t0.elapsed() < std::time::Duration::from_secs(30) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let del = s.ctd.ctr(&["task", "delete", &id]);
        let status_137 = del.stdout.contains("137") || del.stderr.contains("137");
        let _ = s.ctd.ctr(&["container", "rm", &id]);
        seen.push((runtime, after_term, status_137));
    }
    assert_eq!(
        seen,
        vec![(RUNC_RUNTIME, true, true), (HULL_RUNTIME, true, true)],
        "(runtime, still running after SIGTERM, status 137 after SIGKILL)"
    );
}

/// With a terminal (`ctr run -t`): the same probe sees the same terminal, settings and session.
#[test]
fn a_terminal_is_seen_as_under_runc() {
    if !is_root() {
        skip("a_terminal_is_seen_as_under_runc", "needs root for containerd");
        return;
    }
    let s = Setup::start();
    let runc = s.probe_tty(RUNC_RUNTIME, "tty-runc");
    let hull = s.probe_tty(HULL_RUNTIME, "tty-hull");
    assert!(
        parse(&hull.stdout)
            .get("tty")
            .is_some_and(|t| t.starts_with("/dev/pts/")),
        "{hull:?}"
    );
    // The probe comes in as a file mount: runc binds it, hull copies it into the guest.
    let file_mount = [(
        "mount./probe.sh",
        "a file mount: runc binds the host's file, hull copies it into the guest",
    )];
    let diffs = differences("tty", &runc, &hull, &file_mount);
    assert!(diffs.is_empty(), "hull differs from runc:\n{}", diffs.join("\n"));
}
