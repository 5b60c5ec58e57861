//! containerd's OCI spec (the bundle's config.json) made fit for the guest. The spec describes the
//! container as runc would see it on the host; inside hull the VM is the pod's boundary, so:
//!
//! - the network namespace goes (the pod's containers share the VM's interfaces); a container's ipc, uts and
//!   pid namespaces given by path (CRI points them at the sandbox's, the pid one with shareProcessNamespace)
//!   become the pod sandbox container's, which the agent joins, so the pod's hostname and IPC sysctls are
//!   every container's as under runc; any other namespace path is the host's and refused; the `hostname`
//!   goes with the uts namespace;
//! - host bind mounts are carried over: a regular file up to 1 MiB (`/etc/hosts`, `/etc/resolv.conf`,
//!   `/etc/hostname`, `/dev/termination-log`, secrets and config maps) is copied into the guest; a directory
//!   (volumes, hostPath, emptyDir) is packed into an ext4 image given to the guest as a disk (a snapshot at
//!   create time: guest writes stay in the VM); the pod's `/dev/shm` becomes a tmpfs; anything else (sockets,
//!   device nodes, larger files) is left out with a warning in the shim's log;
//! - every container gets its own cgroup namespace, so its `/sys/fs/cgroup` is its own cgroup (what runc
//!   shows on a cgroup v2 host), whatever the spec asked;
//! - hooks are taken out for the host to run ([`crate::hooks`]), but for `createContainer` and
//!   `startContainer`, which stay for the guest (`hull-init` runs them in the container); AppArmor/SELinux
//!   labels and the cgroups path are host matters and are dropped.
//!
//! Everything here is data from containerd's client (the spec) and treated as untrusted input: no panic.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::host_file::HostFile;

pub const MAX_FILE: u64 = 1 << 20;
/// Propagation options that would carry mounts between host and container (`rslave`: HostToContainer,
/// `rshared`: Bidirectional).
const PROPAGATES: [&str; 4] = ["rslave", "slave", "rshared", "shared"];
pub const MAX_FILES: usize = 64;

/// Reads a file mount's source, at most [`MAX_FILE`] bytes: the size checked before may have grown since,
/// and files like /proc/kmsg claim 0 bytes and never end (non-blocking, they answer EAGAIN instead).
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let mut content = Vec::new();
    f.take(MAX_FILE + 1).read_to_end(&mut content)?;
    if content.len() as u64 > MAX_FILE {
        return Err(std::io::Error::other(format!("grew past {MAX_FILE} bytes")));
    }
    Ok(content)
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the OCI spec is not a JSON object")]
    NotAnObject,
    #[error("mount destination {0:?} must be absolute, without '..'")]
    BadDestination(String),
    #[error("reading mount source {path}: {source}")]
    ReadSource { path: PathBuf, source: std::io::Error },
    #[error(
        "linux.namespaces: the {kind} namespace at {path} is the host's; inside the VM a container can join only \
         its pod sandbox's namespaces (or give the container a {kind} namespace of its own)"
    )]
    HostNamespace { kind: String, path: PathBuf },
    #[error(
        "{field}: the pod asks for the host's {kind} namespace, but a hull pod runs in a VM of its own: the host's \
         {what} are outside it. Run the pod without {field}, or with another RuntimeClass"
    )]
    HostNamespaceOfPod {
        field: &'static str,
        kind: &'static str,
        what: &'static str,
    },
}

/// How the shim treats a `hostNetwork` pod (the shim config's `host_network`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostNetwork {
    /// RunPodSandbox fails, naming the field (the default: a VM cannot be on the host's network).
    #[default]
    Refuse,
    /// The VM runs with no NIC at all (only its loopback), which the operator chose knowingly.
    Isolated,
}

/// A CRI sandbox's spec leaves out the namespaces of the pod's `hostNetwork`, `hostPID` and `hostIPC`
/// (the host's are shared). None of them can be shared with a VM: the host's processes, IPC objects and
/// interfaces are outside it. Refused with an error naming the field, never run with a silent difference; only
/// `hostNetwork` may be let through as a VM without a NIC when the operator configured so.
pub fn check_pod_namespaces(spec: &Value, host_network: HostNetwork) -> Result<Option<String>, SpecError> {
    let has = |kind: &str| {
        spec["linux"]["namespaces"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["type"] == kind))
    };
    let fields = [
        ("hostPID", "pid", "processes"),
        ("hostIPC", "ipc", "IPC objects"),
        ("hostNetwork", "network", "interfaces and ports"),
    ];
    let mut warning = None;
    for (field, kind, what) in fields {
        if has(kind) {
            continue;
        }
        if field == "hostNetwork" && host_network == HostNetwork::Isolated {
            warning = Some(
                "hostNetwork: the pod's VM gets no network interface (shim config host_network = \"isolated\")".into(),
            );
            continue;
        }
        return Err(SpecError::HostNamespaceOfPod { field, kind, what });
    }
    Ok(warning)
}

/// The guest agent's name for a namespace of another container in the same VM (the agent's
/// `containers/namespaces.rs`).
fn guest_namespace(container: &str, kind: &str) -> String {
    format!("/run/hull/ns/{container}/{kind}")
}

/// Whether `path` is `/proc/<pid>/ns/<kind>`, the form CRI gives for the pod sandbox's namespaces.
fn is_proc_ns(path: &Path, kind: &str) -> bool {
    let Some(rest) = path.to_str().and_then(|p| p.strip_prefix("/proc/")) else {
        return false;
    };
    rest.split_once("/ns/")
        .is_some_and(|(pid, k)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && k == kind)
}

/// A file copied into the guest.
pub struct CopiedFile {
    pub name: String,
    pub content: Vec<u8>,
    pub mode: u32,
    /// The host file, opened at Create without following symlinks ([`crate::host_file`]) and written back
    /// with the guest's copy when the container exits, if the mount is read-write (e.g. Kubernetes'
    /// `/dev/termination-log`).
    pub write_back: Option<HostFile>,
}

/// A host directory the guest gets as a disk.
#[derive(Debug, Clone)]
pub struct DirVolume {
    pub source: PathBuf,
    pub destination: String,
    pub read_only: bool,
}

pub struct GuestSpec {
    pub spec: Value,
    pub files: Vec<CopiedFile>,
    pub volumes: Vec<DirVolume>,
    pub warnings: Vec<String>,
    /// The network namespace path the spec named (the pod's CNI namespace).
    pub netns: Option<PathBuf>,
    pub hostname: Option<String>,
    /// The spec's `hooks` object (null without), which the shim runs on the host.
    pub hooks: Value,
}

fn is_bind(m: &Value) -> bool {
    m["type"] == "bind"
        || m["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

fn read_only(m: &Value) -> bool {
    m["options"].as_array().is_some_and(|o| o.iter().any(|x| x == "ro"))
}

/// Rewrites `spec` (consumed) for the guest.
pub fn for_guest(mut spec: Value) -> Result<GuestSpec, SpecError> {
    if !spec.is_object() {
        return Err(SpecError::NotAnObject);
    }
    let mut warnings = Vec::new();
    let mut netns = None;
    let mut keep_uts = true;
    let sandbox = match (
        spec["annotations"]["io.kubernetes.cri.container-type"].as_str(),
        spec["annotations"]["io.kubernetes.cri.sandbox-id"].as_str(),
    ) {
        (Some("container"), Some(s)) if hull_agent_protocol::ids::validate_id(s).is_ok() => Some(s.to_string()),
        _ => None,
    };
    if let Some(nss) = spec["linux"]["namespaces"].as_array_mut() {
        let mut out = Vec::new();
        for ns in nss.drain(..) {
            let t = ns["type"].as_str().unwrap_or_default().to_string();
            let path = ns["path"].as_str().filter(|p| !p.is_empty()).map(PathBuf::from);
            match (t.as_str(), path) {
                ("network", p) => {
                    netns = p.or(netns);
                }
                // CRI points a container's ipc and uts namespaces (and the pid one, with
                // shareProcessNamespace) at the sandbox's: the sandbox container's, which is in the VM.
                ("ipc" | "uts" | "pid", Some(p)) if sandbox.is_some() && is_proc_ns(&p, &t) => {
                    if t == "uts" {
                        keep_uts = false;
                    }
                    let s = sandbox.as_deref().unwrap_or_default();
                    out.push(json!({ "type": t, "path": guest_namespace(s, &t) }));
                }
                (_, Some(path)) => return Err(SpecError::HostNamespace { kind: t, path }),
                (_, None) => out.push(ns),
            }
        }
        if !out.iter().any(|n| n["type"] == "cgroup") {
            out.push(json!({ "type": "cgroup" }));
        }
        *nss = out;
    }
    let hostname = spec["hostname"].as_str().map(str::to_string);
    if !keep_uts {
        if let Some(o) = spec.as_object_mut() {
            o.remove("hostname");
        }
    }
    let hooks = spec
        .as_object_mut()
        .and_then(|o| o.remove("hooks"))
        .unwrap_or(Value::Null);
    // The hooks that run in the container's namespaces go to the guest (hull-init runs them).
    let mut in_guest = serde_json::Map::new();
    for kind in ["createContainer", "startContainer"] {
        if hooks[kind].as_array().is_some_and(|a| !a.is_empty()) {
            in_guest.insert(kind.into(), hooks[kind].clone());
        }
    }
    if !in_guest.is_empty() {
        spec["hooks"] = Value::Object(in_guest);
    }
    if let Some(l) = spec["linux"].as_object_mut() {
        l.remove("cgroupsPath");
        l.remove("mountLabel");
    }
    strip_process_labels(&mut spec["process"]);

    let mut files = Vec::new();
    let mut volumes = Vec::new();
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        let mut out = Vec::new();
        for mut m in mounts.drain(..) {
            let dest = m["destination"].as_str().unwrap_or_default().to_string();
            if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
                return Err(SpecError::BadDestination(dest));
            }
            if !is_bind(&m) {
                out.push(m);
                continue;
            }
            let source = PathBuf::from(m["source"].as_str().unwrap_or_default());
            if dest == "/dev/shm" {
                out.push(json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] }));
                continue;
            }
            match std::fs::metadata(&source) {
                Ok(md) if md.is_file() && md.len() <= MAX_FILE && files.len() < MAX_FILES => {
                    // A read-write mount goes back at exit through the descriptor opened here; what is
                    // copied in is then read through it too. A path that cannot be opened that way (a
                    // symlink in it) is copied in as before but never written back.
                    let write_back = if read_only(&m) {
                        None
                    } else {
                        match HostFile::open(&source) {
                            Ok(h) => Some(h),
                            Err(e) => {
                                warnings.push(format!("mount {dest}: {e}; the guest's copy is not written back"));
                                None
                            }
                        }
                    };
                    let read = match &write_back {
                        Some(h) => h.read().and_then(|c| {
                            if c.len() as u64 > MAX_FILE {
                                Err(std::io::Error::other(format!("grew past {MAX_FILE} bytes")))
                            } else {
                                Ok(c)
                            }
                        }),
                        None => read_bounded(&source),
                    };
                    let content = read.map_err(|e| SpecError::ReadSource {
                        path: source.clone(),
                        source: e,
                    })?;
                    let name = format!("f{}", files.len());
                    use std::os::unix::fs::PermissionsExt;
                    files.push(CopiedFile {
                        name: name.clone(),
                        content,
                        mode: md.permissions().mode() & 0o7777,
                        write_back,
                    });
                    m["source"] = json!(format!("hull-file:{name}"));
                    out.push(m);
                }
                Ok(md) if md.is_dir() => {
                    // A volume is a copy in a disk image of the VM's: no mount made on either side after
                    // Create reaches the other (Kubernetes' HostToContainer and Bidirectional propagation).
                    let options = m["options"].as_array().cloned().unwrap_or_default();
                    if let Some(p) = options
                        .iter()
                        .filter_map(|o| o.as_str())
                        .find(|o| PROPAGATES.contains(o))
                    {
                        warnings.push(format!(
                            "mount {dest}: {p} propagation cannot cross the VM: {} is copied into the guest at \
                             create time, so later host mounts under it are not seen and the container's are not \
                             seen on the host",
                            source.display()
                        ));
                    }
                    volumes.push(DirVolume {
                        source,
                        destination: dest,
                        read_only: read_only(&m),
                    })
                }
                Ok(_) => warnings.push(format!(
                    "mount {dest}: {} is neither a directory nor a file of at most 1 MiB; left out",
                    source.display()
                )),
                Err(e) => warnings.push(format!("mount {dest}: {}: {e}; left out", source.display())),
            }
        }
        *mounts = out;
    }
    Ok(GuestSpec {
        spec,
        files,
        volumes,
        warnings,
        netns,
        hostname,
        hooks,
    })
}

/// Host security labels mean nothing in the guest.
pub fn strip_process_labels(process: &mut Value) {
    if let Some(p) = process.as_object_mut() {
        p.remove("apparmorProfile");
        p.remove("selinuxLabel");
    }
}

/// VM size for a workload: the defaults plus what the spec's limits ask (memory limit, CPU quota), capped.
pub fn vm_size(spec: &Value, cfg: &crate::config::ShimConfig) -> (u8, u32) {
    let res = &spec["linux"]["resources"];
    let mem_extra = res["memory"]["limit"]
        .as_i64()
        .filter(|l| *l > 0)
        .map(|l| (l as u64).div_ceil(1 << 20))
        .unwrap_or(0);
    let cpu_extra = match (res["cpu"]["quota"].as_i64(), res["cpu"]["period"].as_u64()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => (q as u64).div_ceil(p),
        _ => 0,
    };
    let mem = (cfg.default_memory_mib as u64 + mem_extra).min(cfg.max_memory_mib as u64) as u32;
    let cpus = (cfg.default_vcpus as u64 + cpu_extra).min(cfg.max_vcpus as u64) as u8;
    (cpus, mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_mounts_are_read_within_the_limit_and_without_blocking() {
        let dir = std::env::temp_dir().join(format!("hull-shim-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        std::fs::write(&small, b"abc").unwrap();
        assert_eq!(read_bounded(&small).unwrap(), b"abc");
        let big = dir.join("big");
        std::fs::write(&big, vec![0u8; MAX_FILE as usize + 1]).unwrap();
        assert!(read_bounded(&big).is_err());
        // A FIFO with no writer: the non-blocking open and read return at once (empty) instead of hanging.
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read_bounded(&fifo).unwrap(), b"");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn propagation_that_would_cross_the_vm_is_warned_about() {
        let dir = std::env::temp_dir().join(format!("hull-shim-prop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mount = |p: &str| json!({ "destination": "/data", "type": "bind", "source": dir, "options": ["rbind", p] });
        for (p, warned) in [("rprivate", false), ("rslave", true), ("rshared", true)] {
            let g = for_guest(json!({ "process": { "args": ["sh"] }, "mounts": [mount(p)] })).unwrap();
            assert_eq!(g.volumes.len(), 1);
            assert_eq!(
                g.warnings.iter().any(|w| w.contains("propagation cannot cross the VM")),
                warned,
                "{p}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_namespaces_of_a_pod_are_refused_by_name() {
        let sandbox = |kinds: &[&str]| json!({ "linux": { "namespaces": kinds.iter().map(|k| json!({ "type": k })).collect::<Vec<_>>() } });
        let all = sandbox(&["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(check_pod_namespaces(&all, HostNetwork::Refuse).unwrap(), None);
        for (kinds, field) in [
            (&["ipc", "uts", "mount", "network"][..], "hostPID"),
            (&["pid", "uts", "mount", "network"][..], "hostIPC"),
            (&["pid", "ipc", "uts", "mount"][..], "hostNetwork"),
        ] {
            let e = check_pod_namespaces(&sandbox(kinds), HostNetwork::Refuse)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(field), "{e}");
        }
        let no_net = sandbox(&["pid", "ipc", "uts", "mount"]);
        assert!(check_pod_namespaces(&no_net, HostNetwork::Isolated).unwrap().is_some());
        let no_pid = sandbox(&["ipc", "uts", "mount"]);
        assert!(check_pod_namespaces(&no_pid, HostNetwork::Isolated)
            .unwrap_err()
            .to_string()
            .starts_with("hostPID"));
    }

    #[test]
    fn only_the_sandboxs_pid_namespace_is_joined_and_host_paths_are_refused() {
        let spec = |ann: Value, ns: Value| {
            json!({ "annotations": ann, "process": { "args": ["sh"] },
                    "linux": { "namespaces": [{ "type": "mount" }, ns] } })
        };
        let pod = json!({ "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb1" });
        let g = for_guest(spec(pod.clone(), json!({ "type": "pid", "path": "/proc/4242/ns/pid" }))).unwrap();
        assert_eq!(
            g.spec["linux"]["namespaces"][1],
            json!({ "type": "pid", "path": "/run/hull/ns/sb1/pid" })
        );
        for (ann, ns) in [
            (json!({}), json!({ "type": "pid", "path": "/proc/4242/ns/pid" })),
            (pod.clone(), json!({ "type": "pid", "path": "/var/run/some/pid" })),
            (pod.clone(), json!({ "type": "user", "path": "/proc/4242/ns/user" })),
            (pod, json!({ "type": "cgroup", "path": "/proc/1/ns/cgroup" })),
        ] {
            let e = for_guest(spec(ann, ns.clone()))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("is the host's"), "{ns}: {e}");
        }
    }

    #[test]
    fn namespaces_mounts_and_labels_are_fitted() {
        let dir = std::env::temp_dir().join(format!("hull-shim-spec-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("vol")).unwrap();
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let spec = json!({
            "hostname": "pod",
            "annotations": { "io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sb" },
            "process": { "args": ["sh"], "apparmorProfile": "x" },
            "hooks": { "prestart": [] },
            "mounts": [
                { "destination": "/proc", "type": "proc", "source": "proc" },
                { "destination": "/etc/hosts", "type": "bind", "source": dir.join("hosts"), "options": ["rbind", "ro"] },
                { "destination": "/data", "type": "bind", "source": dir.join("vol"), "options": ["rbind", "ro"] },
                { "destination": "/dev/shm", "type": "bind", "source": "/run/x/shm", "options": ["rbind"] },
                { "destination": "/gone", "type": "bind", "source": "/no/such/path", "options": ["rbind"] }
            ],
            "linux": {
                "cgroupsPath": "/k8s/x",
                "namespaces": [
                    { "type": "pid" }, { "type": "ipc", "path": "/proc/1/ns/ipc" }, { "type": "uts", "path": "/proc/1/ns/uts" },
                    { "type": "mount" }, { "type": "network", "path": "/var/run/netns/cni-1" }
                ]
            }
        });
        let g = for_guest(spec).unwrap();
        assert_eq!(g.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(g.hostname.as_deref(), Some("pod"));
        assert!(g.spec.get("hostname").is_none() && g.spec.get("hooks").is_none());
        assert!(g.spec["process"].get("apparmorProfile").is_none());
        let types: Vec<&str> = g.spec["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, vec!["pid", "ipc", "uts", "mount", "cgroup"]);
        assert_eq!(g.spec["linux"]["namespaces"][1]["path"], "/run/hull/ns/sb/ipc");
        assert_eq!(g.spec["linux"]["namespaces"][2]["path"], "/run/hull/ns/sb/uts");
        let mounts = g.spec["mounts"].as_array().unwrap();
        assert_eq!(mounts.len(), 3, "{mounts:?}");
        assert_eq!(mounts[1]["source"], "hull-file:f0");
        assert_eq!(mounts[2]["type"], "tmpfs");
        assert_eq!(g.files[0].content, b"127.0.0.1 localhost\n");
        assert_eq!(g.volumes.len(), 1);
        assert!(g.volumes[0].read_only && g.volumes[0].destination == "/data");
        assert_eq!(g.warnings.len(), 1, "{:?}", g.warnings);
        // The hooks are out of the guest's spec, kept for the host.
        assert_eq!(g.hooks["prestart"], json!([]));
        assert!(for_guest(json!({ "mounts": [ { "destination": "rel", "type": "bind", "source": "/" } ] })).is_err());
        assert!(for_guest(json!("x")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn vm_size_adds_limits_and_caps() {
        let cfg = crate::config::ShimConfig::default();
        assert_eq!(vm_size(&json!({}), &cfg), (1, 256));
        let s = json!({ "linux": { "resources": { "memory": { "limit": 512u64 << 20 }, "cpu": { "quota": 150000, "period": 100000 } } } });
        assert_eq!(vm_size(&s, &cfg), (3, 768));
        let s = json!({ "linux": { "resources": { "memory": { "limit": 1u64 << 50 } } } });
        assert_eq!(vm_size(&s, &cfg).1, cfg.max_memory_mib);
    }
}
