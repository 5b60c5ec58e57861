//! The pod's cgroup on the host, like Kata's `sandbox_cgroup_only`: the VM's processes (the VMM or QEMU and
//! its vhost-user backends) run in the cgroup the sandbox's OCI spec names (`linux.cgroupsPath`), so the
//! pod's memory and CPU limits bound the whole VM and the kubelet accounts it to the pod.
//!
//! - The path: containerd's systemd form `slice:prefix:name` becomes the directory systemd would use
//!   (`a-b.slice` → `a.slice/a-b.slice`, then `prefix-name.scope`); the cgroupfs form is a path, absolute from
//!   the hierarchy's root or relative to the shim's own cgroup. The shim creates the directories itself (no
//!   systemd D-Bus scope).
//! - The hierarchy: cgroup v2 when `/sys/fs/cgroup/cgroup.controllers` exists (one tree; the `memory`, `cpu`
//!   and `pids` controllers are enabled down to the pod's cgroup where the parent offers them), else cgroup v1
//!   (one directory in each of the `memory`, `cpu`, `cpuacct` and `pids` hierarchies that is mounted).
//! - Joining: each VM process writes `0` to `cgroup.procs` of every directory between fork and exec
//!   ([`PodCgroup::procs_files`], used by the backend), so it never runs or allocates outside.
//! - Limits: the pod's, as containerd passes them (the sandbox annotations `io.kubernetes.cri.sandbox-memory`
//!   and `-cpu-quota`/`-cpu-period`, or the sandbox spec's own memory limit and CPU quota): v2 `memory.max`
//!   and `cpu.max`, v1 `memory.limit_in_bytes` and `cpu.cfs_quota_us`/`cpu.cfs_period_us`. A limit that cannot
//!   be written fails the VM's boot rather than running it unbounded. The sandbox's CPU shares (CRI gives
//!   the pause container 2) are not applied to the VM.
//! - Removal: when the sandbox goes, the directories the shim created (and only those) are removed.
//!
//! The path is containerd's client's, so it is checked: no `..`, no empty or odd components, never the
//! hierarchy's root itself.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the cgroup hierarchies are mounted.
pub const ROOT: &str = "/sys/fs/cgroup";
const V1_CONTROLLERS: [&str; 4] = ["memory", "cpu", "cpuacct", "pids"];
const V2_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const DEFAULT_CFS_PERIOD: u64 = 100_000;

pub const ANNOTATION_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const ANNOTATION_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const ANNOTATION_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroupsPath {0:?}: neither a cgroupfs path nor systemd's slice:prefix:name (no '..', not the root)")]
    BadPath(String),
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("no cgroup hierarchy (memory, cpu, cpuacct, pids) is mounted under {0}")]
    NoHierarchy(PathBuf),
    #[error("the shim's own cgroup for {0} is not in /proc/self/cgroup")]
    OwnCgroup(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// cgroup v2 when the unified hierarchy is mounted at `root` itself.
pub fn version(root: &Path) -> Version {
    if root.join("cgroup.controllers").exists() {
        Version::V2
    } else {
        Version::V1
    }
}

/// Where `linux.cgroupsPath` points, before it is placed in a hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupsPath {
    /// From the hierarchy's root.
    Absolute(PathBuf),
    /// From the shim's own cgroup in each hierarchy.
    Relative(PathBuf),
}

/// Parses containerd's `linux.cgroupsPath` (systemd `slice:prefix:name` or a cgroupfs path).
pub fn parse(cgroups_path: &str) -> Result<CgroupsPath, CgroupError> {
    let bad = || CgroupError::BadPath(cgroups_path.to_string());
    if cgroups_path.len() > 4096 || cgroups_path.chars().any(|c| c.is_control()) {
        return Err(bad());
    }
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    let path = match parts.as_slice() {
        [slice, prefix, name] if !cgroups_path.contains('/') => {
            if name.is_empty() {
                return Err(bad());
            }
            let mut p = systemd_slice_dir(if slice.is_empty() { "system.slice" } else { slice }).ok_or_else(bad)?;
            p.push(if name.ends_with(".slice") {
                name.to_string()
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            });
            CgroupsPath::Absolute(p)
        }
        [_] if cgroups_path.starts_with('/') => CgroupsPath::Absolute(PathBuf::from(cgroups_path)),
        [_] => CgroupsPath::Relative(PathBuf::from(cgroups_path)),
        _ => return Err(bad()),
    };
    let inner = match &path {
        CgroupsPath::Absolute(p) | CgroupsPath::Relative(p) => p,
    };
    let mut normal = 0;
    for c in inner.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) if n.len() <= 255 => normal += 1,
            _ => return Err(bad()),
        }
    }
    if normal == 0 {
        return Err(bad());
    }
    Ok(path)
}

/// systemd's directory for slice `a-b-c.slice`: `a.slice/a-b.slice/a-b-c.slice` (`-.slice` is the root).
fn systemd_slice_dir(slice: &str) -> Option<PathBuf> {
    let stem = slice.strip_suffix(".slice")?;
    let mut p = PathBuf::from("/");
    if stem == "-" {
        return Some(p);
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return None;
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        p.push(format!("{prefix}.slice"));
    }
    Some(p)
}

/// The pod's limits for its VM's cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CFS quota and period in µs.
    pub cpu_quota: Option<u64>,
    pub cpu_period: Option<u64>,
}

/// The pod's limits from the sandbox's spec: containerd's sandbox annotations (the kubelet's pod-level
/// resources), else the spec's own memory limit and CPU quota. Values that are not positive numbers are
/// no limit.
pub fn sandbox_limits(spec: &Value) -> Limits {
    let ann = |k: &str| {
        spec["annotations"][k]
            .as_str()
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v > 0)
            .map(|v| v as u64)
    };
    let res = &spec["linux"]["resources"];
    let positive = |v: &Value| v.as_i64().filter(|v| *v > 0).map(|v| v as u64);
    Limits {
        memory_bytes: ann(ANNOTATION_MEMORY).or_else(|| positive(&res["memory"]["limit"])),
        cpu_quota: ann(ANNOTATION_CPU_QUOTA).or_else(|| positive(&res["cpu"]["quota"])),
        cpu_period: ann(ANNOTATION_CPU_PERIOD).or_else(|| positive(&res["cpu"]["period"])),
    }
}

/// The pod's cgroup: one directory per hierarchy (one on v2), and those the shim created.
#[derive(Debug)]
pub struct PodCgroup {
    pub version: Version,
    root: PathBuf,
    dirs: Vec<PathBuf>,
    /// Directories the shim made, parents first; removed in reverse.
    created: Vec<PathBuf>,
}

impl PodCgroup {
    /// Creates (where missing) the cgroup `cgroups_path` under the hierarchies at `root` and writes `limits`.
    pub fn create(root: &Path, cgroups_path: &str, limits: &Limits) -> Result<PodCgroup, CgroupError> {
        let path = parse(cgroups_path)?;
        let version = version(root);
        let hierarchies: Vec<(String, PathBuf)> = match version {
            Version::V2 => vec![(String::new(), root.to_path_buf())],
            Version::V1 => {
                let mut seen: Vec<PathBuf> = Vec::new();
                let mut out = Vec::new();
                for c in V1_CONTROLLERS {
                    let h = root.join(c);
                    let Ok(real) = h.canonicalize() else { continue };
                    if !real.join("cgroup.procs").exists() || seen.contains(&real) {
                        continue;
                    }
                    seen.push(real);
                    out.push((c.to_string(), h));
                }
                out
            }
        };
        if hierarchies.is_empty() {
            return Err(CgroupError::NoHierarchy(root.to_path_buf()));
        }
        let mut cg = PodCgroup {
            version,
            root: root.to_path_buf(),
            dirs: Vec::new(),
            created: Vec::new(),
        };
        for (controller, hierarchy) in &hierarchies {
            let rel = match &path {
                CgroupsPath::Absolute(p) => p.strip_prefix("/").unwrap_or(p).to_path_buf(),
                CgroupsPath::Relative(p) => own_cgroup(controller, version)?.join(p),
            };
            let dir = match cg.make_dirs(hierarchy, &rel) {
                Ok(d) => d,
                Err(e) => {
                    cg.remove();
                    return Err(e);
                }
            };
            cg.dirs.push(dir);
        }
        if let Err(e) = cg.apply(root, limits) {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// `hierarchy/rel`, each missing directory made (and recorded); on v2 the controllers enabled on the way.
    fn make_dirs(&mut self, hierarchy: &Path, rel: &Path) -> Result<PathBuf, CgroupError> {
        let mut dir = hierarchy.to_path_buf();
        for c in rel.components() {
            let Component::Normal(name) = c else { continue };
            if self.version == Version::V2 {
                enable_controllers(&dir);
            }
            dir.push(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => self.created.push(dir.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(e) => return Err(io_err(&dir)(e)),
            }
        }
        Ok(dir)
    }

    fn apply(&self, root: &Path, limits: &Limits) -> Result<(), CgroupError> {
        let write = |file: PathBuf, value: String| std::fs::write(&file, value).map_err(io_err(&file));
        let period = limits.cpu_period.unwrap_or(DEFAULT_CFS_PERIOD);
        match self.version {
            Version::V2 => {
                let dir = &self.dirs[0];
                if let Some(m) = limits.memory_bytes {
                    write(dir.join("memory.max"), m.to_string())?;
                }
                if let Some(q) = limits.cpu_quota {
                    write(dir.join("cpu.max"), format!("{q} {period}"))?;
                }
            }
            Version::V1 => {
                for dir in &self.dirs {
                    let under = |c: &str| dir.starts_with(root.join(c));
                    if let (Some(m), true) = (limits.memory_bytes, under("memory")) {
                        write(dir.join("memory.limit_in_bytes"), m.to_string())?;
                    }
                    if let (Some(q), true) = (limits.cpu_quota, under("cpu")) {
                        write(dir.join("cpu.cfs_period_us"), period.to_string())?;
                        write(dir.join("cpu.cfs_quota_us"), q.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The pod's directory in each hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The directories the shim created (for the VM record, so `delete` can remove them after a crash).
    pub fn created(&self) -> &[PathBuf] {
        &self.created
    }

    /// The `cgroup.procs` file of each directory: a VM process joins by writing `0` to each.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Removes the directories the shim created, deepest first (once the VM's processes have been reaped;
    /// a cgroup still busy is retried for a moment, one still used by others is left).
    pub fn remove(&self) {
        remove_dirs(&self.root, &self.created);
    }
}

impl Drop for PodCgroup {
    /// A pod cgroup that goes out of scope (a failed boot) takes its directories along.
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes cgroup directories `dirs` (parents first in the list), deepest first; only directories below
/// `root` (a record read back from a bundle is not trusted to name anything else).
pub fn remove_dirs(root: &Path, dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        if !d.starts_with(root) || d.components().any(|c| c == Component::ParentDir) || d == root {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match std::fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                // Busy: a process just killed may still be leaving it.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    log::debug!("removing cgroup {}: {e}", d.display());
                    break;
                }
            }
        }
    }
}

/// v2: enables the controllers the VM's limits need for the children of `dir`, where offered. Best effort:
/// a cgroup with processes of its own cannot (the no-internal-processes rule); a limit then fails loudly.
fn enable_controllers(dir: &Path) {
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in V2_CONTROLLERS {
        let has = |list: &str| list.split_whitespace().any(|x| x == c);
        if has(&offered) && !has(&enabled) {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                log::warn!("enabling the {c} controller in {}: {e}", dir.display());
            }
        }
    }
}

/// The shim's own cgroup in `controller`'s hierarchy (v1) or the unified one (v2), from /proc/self/cgroup,
/// relative to the hierarchy's root.
fn own_cgroup(controller: &str, version: Version) -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(io_err(Path::new("/proc/self/cgroup")))?;
    own_cgroup_in(&text, controller, version).ok_or_else(|| CgroupError::OwnCgroup(controller.to_string()))
}

fn own_cgroup_in(text: &str, controller: &str, version: Version) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, list, path) = (f.next()?, f.next()?, f.next()?);
        let ours = match version {
            Version::V2 => list.is_empty(),
            Version::V1 => list.split(',').any(|c| c == controller),
        };
        ours.then(|| PathBuf::from(path.strip_prefix('/').unwrap_or(path)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cgroupfs_and_systemd_paths() {
        assert_eq!(
            parse("/kubepods/pod1/abc").unwrap(),
            CgroupsPath::Absolute("/kubepods/pod1/abc".into())
        );
        assert_eq!(parse("hull/abc").unwrap(), CgroupsPath::Relative("hull/abc".into()));
        assert_eq!(
            parse("kubepods-burstable-pod1.slice:cri-containerd:abc").unwrap(),
            CgroupsPath::Absolute(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope"
                    .into()
            )
        );
        assert_eq!(
            parse(":cri-containerd:abc").unwrap(),
            CgroupsPath::Absolute("/system.slice/cri-containerd-abc.scope".into())
        );
        assert_eq!(
            parse("-.slice::abc").unwrap(),
            CgroupsPath::Absolute("/abc.scope".into())
        );
        for bad in [
            "",
            "/",
            "/a/../b",
            "../x",
            "a:b",
            "x.slice:p:",
            "bad:p:n",
            "a-.slice:p:n",
            "/a\n/b",
            "a:b:c:d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_pods_limits_come_from_the_sandbox_annotations_or_its_spec() {
        let spec = json!({
            "annotations": { ANNOTATION_MEMORY: "268435456", ANNOTATION_CPU_QUOTA: "50000", ANNOTATION_CPU_PERIOD: "100000" },
            "linux": { "resources": { "cpu": { "shares": 2 } } }
        });
        let l = sandbox_limits(&spec);
        assert_eq!(l.memory_bytes, Some(256 << 20));
        assert_eq!((l.cpu_quota, l.cpu_period), (Some(50000), Some(100000)));
        let spec = json!({ "annotations": { ANNOTATION_MEMORY: "0", ANNOTATION_CPU_QUOTA: "-1" },
            "linux": { "resources": { "memory": { "limit": 1048576 } } } });
        assert_eq!(
            sandbox_limits(&spec),
            Limits {
                memory_bytes: Some(1 << 20),
                ..Default::default()
            }
        );
        assert_eq!(
            sandbox_limits(&json!({ "annotations": { ANNOTATION_MEMORY: "lots" } })),
            Limits::default()
        );
    }

    #[test]
    fn own_cgroup_per_hierarchy() {
        let text = "4:memory:/process_api/x\n2:cpu,cpuacct:/\n0::/user.slice/s.scope\n";
        assert_eq!(own_cgroup_in(text, "memory", Version::V1), Some("process_api/x".into()));
        assert_eq!(own_cgroup_in(text, "cpuacct", Version::V1), Some("".into()));
        assert_eq!(own_cgroup_in(text, "", Version::V2), Some("user.slice/s.scope".into()));
        assert_eq!(own_cgroup_in(text, "pids", Version::V1), None);
    }

    /// On a fake v1 and v2 tree (plain directories): the pod's directories are made, limits written, and only
    /// what was made is removed.
    #[test]
    fn creates_limits_and_removes_only_its_own_directories() {
        let base = std::env::temp_dir().join(format!("hull-cgroup-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let v1 = base.join("v1");
        for c in ["memory", "cpu"] {
            std::fs::create_dir_all(v1.join(c).join("kubepods")).unwrap();
            std::fs::write(v1.join(c).join("cgroup.procs"), "").unwrap();
        }
        std::fs::write(v1.join("cpu/cpu.cfs_quota_us"), "").unwrap();
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            cpu_quota: Some(50000),
            cpu_period: None,
        };
        let cg = PodCgroup::create(&v1, "/kubepods/pod1", &limits).unwrap();
        assert_eq!(cg.version, Version::V1);
        assert_eq!(
            cg.dirs(),
            &[v1.join("memory/kubepods/pod1"), v1.join("cpu/kubepods/pod1")]
        );
        assert_eq!(cg.procs_files()[0], v1.join("memory/kubepods/pod1/cgroup.procs"));
        assert_eq!(cg.created().len(), 2, "kubepods existed already");
        let read = |p: &str| std::fs::read_to_string(v1.join(p)).unwrap();
        assert_eq!(
            read("memory/kubepods/pod1/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("cpu/kubepods/pod1/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/kubepods/pod1/cpu.cfs_period_us"), "100000");
        // (A real cgroup's control files go with its directory; plain files here must be removed first.)
        for f in [
            "memory/kubepods/pod1/memory.limit_in_bytes",
            "cpu/kubepods/pod1/cpu.cfs_quota_us",
        ] {
            std::fs::remove_file(v1.join(f)).unwrap();
        }
        std::fs::remove_file(v1.join("cpu/kubepods/pod1/cpu.cfs_period_us")).unwrap();
        cg.remove();
        assert!(!v1.join("memory/kubepods/pod1").exists() && !v1.join("cpu/kubepods/pod1").exists());
        assert!(v1.join("memory/kubepods").is_dir(), "what existed before stays");
        remove_dirs(&v1, &[base.join("elsewhere")]);
        assert!(matches!(
            PodCgroup::create(&v1, "/", &limits),
            Err(CgroupError::BadPath(_))
        ));
        let v2 = base.join("v2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory pids").unwrap();
        let cg2 = PodCgroup::create(&v2, "a.slice:p:n", &Limits::default()).unwrap();
        assert_eq!(cg2.version, Version::V2);
        assert_eq!(cg2.dirs(), &[v2.join("a.slice/p-n.scope")]);
        assert_eq!(
            std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        cg2.remove();
        assert!(!v2.join("a.slice").exists(), "both directories it made are gone");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
