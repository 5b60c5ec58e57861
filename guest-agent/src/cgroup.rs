//! cgroup v2 for containers: one directory per container under `/sys/fs/cgroup/hull/<id>`, limits from the
//! OCI `LinuxResources`, statistics, freezing and killing. Values from the spec are numbers we format
//! ourselves; `unified` keys are checked to be plain file names.

use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

use crate::sys::write_file;

pub const ROOT: &str = "/sys/fs/cgroup";
const PARENT: &str = "/sys/fs/cgroup/hull";
const CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids", "io"];

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("bad unified cgroup key {0:?}")]
    BadKey(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Enables the controllers for children of `dir`, each on its own (one missing controller must not stop
/// the others).
fn enable_controllers(dir: &Path) {
    for c in CONTROLLERS {
        let _ = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}"));
    }
}

/// Prepares the hierarchy once at boot.
pub fn init() {
    enable_controllers(Path::new(ROOT));
    let _ = std::fs::create_dir_all(PARENT);
    enable_controllers(Path::new(PARENT));
}

pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn create(id: &str) -> Result<Cgroup, CgroupError> {
        let path = Path::new(PARENT).join(id);
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        Ok(Cgroup { path })
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let p = self.path.join(file);
        write_file(&p, value).map_err(io_err(&p))
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file)).unwrap_or_default()
    }

    /// Attaches the device filter for `rules` ([`crate::device_filter`]) to this cgroup.
    pub fn attach_device_filter(&self, rules: &[crate::device_filter::Rule]) -> Result<(), CgroupError> {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(&self.path).map_err(io_err(&self.path))?;
        crate::device_filter::attach(rules, dir.as_raw_fd()).map_err(io_err(&self.path))
    }

    /// Attaches the vsock guard ([`crate::vsock_guard`]) to this cgroup.
    pub fn attach_vsock_guard(&self) -> Result<(), CgroupError> {
        use std::os::fd::AsRawFd;
        let dir = std::fs::File::open(&self.path).map_err(io_err(&self.path))?;
        crate::vsock_guard::attach(dir.as_raw_fd()).map_err(io_err(&self.path))
    }

    pub fn add_process(&self, pid: i32) -> Result<(), CgroupError> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// Applies OCI resources (memory, cpu, pids, block io weight, unified).
    pub fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let limit = |v: i64| {
            if v < 0 {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(m) = r.memory() {
            if let Some(l) = m.limit() {
                self.write("memory.max", &limit(l))?;
            }
            if let Some(res) = m.reservation() {
                self.write("memory.low", &limit(res))?;
            }
            if let Some(swap) = m.swap() {
                // OCI's swap is memory + swap; cgroup v2 counts swap alone.
                let v = match (m.limit(), swap) {
                    (_, s) if s < 0 => "max".to_string(),
                    (Some(l), s) if l >= 0 => (s - l).max(0).to_string(),
                    (_, s) => s.to_string(),
                };
                // No swap in the guest: the file may not exist.
                let _ = self.write("memory.swap.max", &v);
            }
        }
        if let Some(c) = r.cpu() {
            if c.quota().is_some() || c.period().is_some() {
                let quota = c
                    .quota()
                    .filter(|q| *q > 0)
                    .map_or("max".to_string(), |q| q.to_string());
                self.write("cpu.max", &format!("{quota} {}", c.period().unwrap_or(100_000)))?;
            }
            if let Some(shares) = c.shares().filter(|s| *s > 0) {
                let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
                self.write("cpu.weight", &weight.to_string())?;
            }
            if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
                self.write("cpuset.cpus", cpus)?;
            }
            if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
                self.write("cpuset.mems", mems)?;
            }
        }
        if let Some(p) = r.pids() {
            self.write(
                "pids.max",
                &if p.limit() > 0 {
                    p.limit().to_string()
                } else {
                    "max".into()
                },
            )?;
        }
        if let Some(w) = r.block_io().as_ref().and_then(|b| b.weight()) {
            // io.weight needs an I/O scheduler with weights; without one the file is absent.
            let _ = self.write("io.weight", &format!("default {w}"));
        }
        for (key, value) in r.unified().clone().unwrap_or_default() {
            if key.contains('/') || key.starts_with('.') || key.is_empty() {
                return Err(CgroupError::BadKey(key));
            }
            self.write(&key, &value)?;
        }
        Ok(())
    }

    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    /// SIGKILL to every process in the cgroup (cgroup.kill, Linux 5.14+).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        self.write("cgroup.kill", "1")
    }

    pub fn procs(&self) -> Vec<i32> {
        self.read("cgroup.procs")
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// `key value` lines of a flat-keyed file.
    fn keyed(&self, file: &str) -> std::collections::HashMap<String, u64> {
        self.read(file)
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.parse().ok()?))
            })
            .collect()
    }

    fn number(&self, file: &str) -> u64 {
        self.read(file).trim().parse().unwrap_or(0)
    }

    pub fn oom_kills(&self) -> u64 {
        self.keyed("memory.events").get("oom_kill").copied().unwrap_or(0)
    }

    pub fn stats(&self) -> hull_agent_protocol::agent::StatsContainerResponse {
        use hull_agent_protocol::agent::*;
        let cpu = self.keyed("cpu.stat");
        let mem = self.keyed("memory.stat");
        let events = self.keyed("memory.events");
        let g = |m: &std::collections::HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        let mut r = StatsContainerResponse::new();
        let mut c = CpuStats::new();
        c.usage_usec = g(&cpu, "usage_usec");
        c.user_usec = g(&cpu, "user_usec");
        c.system_usec = g(&cpu, "system_usec");
        c.nr_periods = g(&cpu, "nr_periods");
        c.nr_throttled = g(&cpu, "nr_throttled");
        c.throttled_usec = g(&cpu, "throttled_usec");
        r.cpu = Some(c).into();
        let mut m = MemoryStats::new();
        m.current = self.number("memory.current");
        m.max = self.number("memory.max");
        m.anon = g(&mem, "anon");
        m.file = g(&mem, "file");
        m.oom = g(&events, "oom");
        m.oom_kill = g(&events, "oom_kill");
        r.memory = Some(m).into();
        let mut p = PidsStats::new();
        p.current = self.number("pids.current");
        p.max = self.number("pids.max");
        r.pids = Some(p).into();
        for line in self.read("io.stat").lines() {
            let mut words = line.split_whitespace();
            let Some((major, minor)) = words.next().and_then(|d| d.split_once(':')) else {
                continue;
            };
            let mut d = IoDeviceStats::new();
            d.major = major.parse().unwrap_or(0);
            d.minor = minor.parse().unwrap_or(0);
            for kv in words {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => d.rbytes = v,
                    "wbytes" => d.wbytes = v,
                    "rios" => d.rios = v,
                    "wios" => d.wios = v,
                    _ => {}
                }
            }
            r.io.push(d);
        }
        r
    }

    /// Removes the directory (it must hold no process).
    pub fn remove(&self) -> Result<(), CgroupError> {
        std::fs::remove_dir(&self.path).map_err(io_err(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_temp_dir() -> Cgroup {
        let path = std::env::temp_dir().join(format!(
            "hull-cgroup-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Cgroup { path }
    }

    fn read(c: &Cgroup, f: &str) -> String {
        std::fs::read_to_string(c.path.join(f)).unwrap_or_default()
    }

    #[test]
    fn oci_resources_become_cgroup_v2_values() {
        let c = in_temp_dir();
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":104857600,"swap":209715200,"reservation":1048576},
                "cpu":{"quota":50000,"period":100000,"shares":1024,"cpus":"0"},
                "pids":{"limit":64},"unified":{"memory.high":"max"}}"#,
        )
        .unwrap();
        c.apply(&r).unwrap();
        assert_eq!(read(&c, "memory.max"), "104857600");
        assert_eq!(read(&c, "memory.swap.max"), "104857600");
        assert_eq!(read(&c, "memory.low"), "1048576");
        assert_eq!(read(&c, "cpu.max"), "50000 100000");
        assert_eq!(read(&c, "cpu.weight"), "39");
        assert_eq!(read(&c, "cpuset.cpus"), "0");
        assert_eq!(read(&c, "pids.max"), "64");
        assert_eq!(read(&c, "memory.high"), "max");
        let r: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":-1},"pids":{"limit":0},"cpu":{"quota":-1}}"#).unwrap();
        c.apply(&r).unwrap();
        assert_eq!(read(&c, "memory.max"), "max");
        assert_eq!(read(&c, "pids.max"), "max");
        assert_eq!(read(&c, "cpu.max"), "max 100000");
        let r: LinuxResources = serde_json::from_str(r#"{"unified":{"../escape":"1"}}"#).unwrap();
        assert!(matches!(c.apply(&r), Err(CgroupError::BadKey(_))));
        let _ = std::fs::remove_dir_all(&c.path);
    }

    #[test]
    fn stats_parse_the_kernel_files() {
        let c = in_temp_dir();
        std::fs::write(c.path.join("cpu.stat"), "usage_usec 10\nuser_usec 7\nsystem_usec 3\n").unwrap();
        std::fs::write(c.path.join("memory.current"), "4096\n").unwrap();
        std::fs::write(
            c.path.join("memory.events"),
            "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(c.path.join("pids.current"), "3\n").unwrap();
        std::fs::write(
            c.path.join("io.stat"),
            "254:0 rbytes=512 wbytes=1024 rios=1 wios=2 dbytes=0 dios=0\nbad line\n",
        )
        .unwrap();
        let s = c.stats();
        assert_eq!((s.cpu.usage_usec, s.cpu.user_usec, s.cpu.system_usec), (10, 7, 3));
        assert_eq!((s.memory.current, s.memory.oom_kill), (4096, 1));
        assert_eq!(s.pids.current, 3);
        assert_eq!(s.io.len(), 1);
        assert_eq!(
            (s.io[0].major, s.io[0].minor, s.io[0].rbytes, s.io[0].wios),
            (254, 0, 512, 2)
        );
        assert_eq!(c.oom_kills(), 1);
        let _ = std::fs::remove_dir_all(&c.path);
    }
}
