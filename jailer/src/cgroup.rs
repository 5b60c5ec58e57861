//! cgroups for the jailed process, before the jail closes (Firecracker's semantics):
//!
//! - v1: each `--cgroup FILE=VALUE` names its controller by the file's prefix (`cpuset.cpus` → `cpuset`);
//!   the controller's hierarchy is found in `/proc/mounts`; `<hierarchy>/<parent>/<id>` is created
//!   (cpuset levels inherit `cpuset.cpus` and `cpuset.mems` from their parent, or nothing could join them),
//!   the values are written and the jailer's PID goes to `tasks`.
//! - v2: the unified hierarchy (the `cgroup2` mount); each controller is enabled in `cgroup.subtree_control`
//!   from the root down to `<parent>`, `<root>/<parent>/<id>` is created, the values written, the PID put
//!   in `cgroup.procs`. Without `--cgroup`, an existing `<root>/<parent>` is joined instead (not created).
//!
//! `/proc/mounts` is the kernel's and trusted.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::args::{CgroupValue, CgroupVersion};
use crate::error::JailerError;

const PROC_MOUNTS: &str = "/proc/mounts";

/// The cgroup mounts: v1 hierarchies by controller, and the v2 unified root.
#[derive(Debug, Default)]
pub struct Hierarchies {
    v1: BTreeMap<String, PathBuf>,
    v2: Option<PathBuf>,
}

impl Hierarchies {
    pub fn from_proc_mounts() -> Result<Hierarchies, JailerError> {
        let text = std::fs::read_to_string(PROC_MOUNTS).map_err(|e| JailerError::Read(PROC_MOUNTS.into(), e))?;
        Ok(Self::parse(&text))
    }

    /// Reads `/proc/mounts` lines: `cgroup <dir> cgroup <opts,controllers> 0 0` and `cgroup2 <dir> cgroup2 ...`.
    pub fn parse(text: &str) -> Hierarchies {
        let mut h = Hierarchies::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            match f[2] {
                "cgroup2" if h.v2.is_none() => h.v2 = Some(PathBuf::from(f[1])),
                "cgroup" => {
                    for opt in f[3].split(',') {
                        h.v1.entry(opt.to_string()).or_insert_with(|| PathBuf::from(f[1]));
                    }
                }
                _ => {}
            }
        }
        h
    }

    pub fn v2_root(&self) -> Result<&Path, JailerError> {
        self.v2
            .as_deref()
            .ok_or_else(|| JailerError::CgroupHierarchyMissing("cgroup2".into()))
    }

    fn v1_root(&self, controller: &str) -> Result<&Path, JailerError> {
        self.v1
            .get(controller)
            .map(PathBuf::as_path)
            .ok_or_else(|| JailerError::CgroupHierarchyMissing(controller.into()))
    }
}

fn write(path: &Path, value: &str) -> Result<(), JailerError> {
    std::fs::write(path, format!("{value}\n")).map_err(|e| JailerError::Write(path.to_path_buf(), e))
}

fn read_trimmed(path: &Path) -> Result<String, JailerError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| JailerError::Read(path.to_path_buf(), e))
}

/// Creates `root/rel` level by level; `on_new(level)` runs for every level that did not exist.
fn create_levels(
    root: &Path,
    rel: &Path,
    on_new: impl Fn(&Path) -> Result<(), JailerError>,
) -> Result<(), JailerError> {
    let mut dir = root.to_path_buf();
    for c in rel.components() {
        dir.push(c);
        match std::fs::create_dir(&dir) {
            Ok(()) => on_new(&dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(JailerError::CreateDir(dir, e)),
        }
    }
    Ok(())
}

/// v1 cpuset: a new level starts with empty `cpus`/`mems`; copy the parent's.
fn inherit_cpuset(dir: &Path) -> Result<(), JailerError> {
    let parent = dir.parent().unwrap_or(dir);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if read_trimmed(&dir.join(file))?.is_empty() {
            write(&dir.join(file), &read_trimmed(&parent.join(file))?)?;
        }
    }
    Ok(())
}

/// Creates the VM's cgroups, writes the values and moves this process in (`--cgroup` given).
pub fn setup(
    h: &Hierarchies,
    version: CgroupVersion,
    values: &[CgroupValue],
    parent: &Path,
    id: &str,
) -> Result<Vec<PathBuf>, JailerError> {
    let rel = parent.join(id);
    let pid = std::process::id().to_string();
    let mut created = Vec::new();
    match version {
        CgroupVersion::V1 => {
            let mut by_root: BTreeMap<&Path, Vec<&CgroupValue>> = BTreeMap::new();
            for v in values {
                by_root.entry(h.v1_root(&v.controller)?).or_default().push(v);
            }
            for (root, vals) in by_root {
                let cpuset = vals.iter().any(|v| v.controller == "cpuset");
                create_levels(root, &rel, |d| if cpuset { inherit_cpuset(d) } else { Ok(()) })?;
                let dir = root.join(&rel);
                for v in vals {
                    write(&dir.join(&v.file), &v.value)?;
                }
                write(&dir.join("tasks"), &pid)?;
                created.push(dir);
            }
        }
        CgroupVersion::V2 => {
            let root = h.v2_root()?;
            let available = read_trimmed(&root.join("cgroup.controllers"))?;
            let mut controllers: Vec<&str> = values.iter().map(|v| v.controller.as_str()).collect();
            controllers.sort_unstable();
            controllers.dedup();
            for c in &controllers {
                if !available.split_whitespace().any(|a| a == *c) {
                    return Err(JailerError::CgroupControllerUnavailable(c.to_string()));
                }
            }
            create_levels(root, parent, |_| Ok(()))?;
            // Enable the controllers from the root down to the parent, so the VM's cgroup gets their files.
            let mut dir = root.to_path_buf();
            let mut levels = vec![dir.clone()];
            for c in parent.components() {
                dir.push(c);
                levels.push(dir.clone());
            }
            for level in &levels {
                for c in &controllers {
                    let enabled = read_trimmed(&level.join("cgroup.subtree_control"))?;
                    if !enabled.split_whitespace().any(|e| e == *c) {
                        write(&level.join("cgroup.subtree_control"), &format!("+{c}"))?;
                    }
                }
            }
            create_levels(root, &rel, |_| Ok(()))?;
            let dir = root.join(&rel);
            for v in values {
                write(&dir.join(&v.file), &v.value)?;
            }
            write(&dir.join("cgroup.procs"), &pid)?;
            created.push(dir);
        }
    }
    Ok(created)
}

/// v2 without `--cgroup`: join `<root>/<parent>` when it exists (Firecracker moves the process there,
/// contrary to the flag's name); nothing when it does not.
pub fn join_existing_v2_parent(h: &Hierarchies, parent: &Path) -> Result<(), JailerError> {
    let dir = h.v2_root()?.join(parent);
    if dir.is_dir() {
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| JailerError::CgroupMove(dir, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hierarchies_come_from_proc_mounts() {
        let h = Hierarchies::parse(
            "sysfs /sys sysfs rw 0 0\n\
             cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n\
             cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n\
             cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n",
        );
        assert_eq!(h.v1_root("cpu").unwrap(), Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(h.v1_root("cpuacct").unwrap(), Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(h.v1_root("pids").unwrap(), Path::new("/sys/fs/cgroup/pids"));
        assert!(matches!(
            h.v1_root("memory"),
            Err(JailerError::CgroupHierarchyMissing(_))
        ));
        assert_eq!(h.v2_root().unwrap(), Path::new("/sys/fs/cgroup/unified"));
        assert!(Hierarchies::parse("").v2_root().is_err());
    }
}
