//! The agent's containers and processes: create (rootfs mounts, cgroup, `hull-init` in new namespaces),
//! start, exec (`hull-exec`), signal, wait, stdio lookup, stats, pause/resume, resource updates, OOM
//! events and removal. Every request names its container and process by validated ids; the OCI documents
//! are parsed with oci-spec and only the parts this module understands are acted on.
//!
//! Paths: `/run/hull/containers/<id>/{image,rw,rootfs,m<N>}` hold the container's mounts in the agent's
//! mount namespace; the spec's `root.path` is ignored (the rootfs is the `Storage` the host names).
//!
//! CreateContainer lives in `create.rs`, the block devices it mounts in `block_device.rs`, the error type
//! in `error.rs`; this file holds the container and process records and every later request.

mod block_device;
mod create;
mod error;
mod namespaces;
mod scratch;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hull_agent_protocol::agent::StdioConfig;
use hull_agent_protocol::ids::{validate_exec_id, validate_id};
use hull_agent_protocol::stdio::{StdioRequest, Stream};
use oci_spec::runtime::{LinuxResources, Process};

use crate::cgroup::Cgroup;
use crate::channel::Channel;
use crate::helper_protocol::{ExecConfig, FromHelper, ToHelper};
use crate::init::{spawn_helper, EXEC_ARGV0};
use crate::reaper::Reaper;
use crate::stdio::{Attach, ProcessIo};
use crate::sys::{umount_detach, ExitStatus};

use error::io_err;
pub use error::AgentError;

const STATE_DIR: &str = "/run/hull/containers";
/// The most a host file given at create (and read back by ReadFile) may hold.
const MAX_FILE_BYTES: usize = 1 << 20;
/// How long a helper may take to report back.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// A process's end, as WaitProcess reports it.
#[derive(Debug, Clone, Copy)]
pub struct ProcessExit {
    pub status: ExitStatus,
    pub oom_killed: bool,
    pub at_unix_nanos: i64,
}

pub struct ProcessEntry {
    pub pid: i32,
    io: Mutex<ProcessIo>,
    exit: Mutex<Option<ProcessExit>>,
    exited: Condvar,
}

impl ProcessEntry {
    fn new(pid: i32, io: ProcessIo) -> Arc<ProcessEntry> {
        Arc::new(ProcessEntry {
            pid,
            io: Mutex::new(io),
            exit: Mutex::new(None),
            exited: Condvar::new(),
        })
    }

    fn set_exit(&self, e: ProcessExit) {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        self.exited.notify_all();
    }

    pub fn wait(&self) -> ProcessExit {
        let mut g = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(e) = *g {
                return e;
            }
            g = self.exited.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn has_exited(&self) -> bool {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Stopped,
}

pub struct Container {
    id: String,
    dir: PathBuf,
    /// Mount points to detach on removal, innermost last.
    mounts: Vec<PathBuf>,
    cgroup: Cgroup,
    namespaces: Vec<String>,
    seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// Its processes may create AF_VSOCK sockets (the spec's `io.hull.allow-vsock` annotation).
    allow_vsock: bool,
    /// Its cgroup carries the vsock guard and the kernel honours it (`crate::vsock_guard`).
    vsock_guarded: bool,
    /// It has a user namespace of its own.
    user_ns: bool,
    /// The files the host registered for copy-back (`File.copy_back`): the only ones ReadFile reads.
    copy_back: Vec<String>,
    init: Arc<ProcessEntry>,
    /// The init helper's channel until Start hands it to the watcher.
    channel: Mutex<Option<Channel>>,
    execs: Mutex<HashMap<String, Arc<ProcessEntry>>>,
    state: Mutex<State>,
    oom_seen: Mutex<u64>,
}

impl Container {
    fn is_stopped(&self) -> bool {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) == State::Stopped
    }
}

pub struct Agent {
    reaper: Arc<Reaper>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    ooms: Mutex<VecDeque<String>>,
    oom_cv: Condvar,
    pub started: Instant,
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// ReadFile's gate: only a name the host registered for copy-back when it created the container.
fn registered_for_copy_back(registered: &[String], id: &str, name: &str) -> Result<(), AgentError> {
    if registered.iter().any(|r| r == name) {
        return Ok(());
    }
    crate::console::log(&format!(
        "refused ReadFile (container {id}): {name:?} is not registered for copy-back"
    ));
    Err(AgentError::NotRegistered {
        container: id.into(),
        name: name.into(),
    })
}

impl Agent {
    pub fn new(reaper: Arc<Reaper>) -> Arc<Agent> {
        let _ = std::fs::create_dir_all(STATE_DIR);
        let agent = Arc::new(Agent {
            reaper,
            containers: Mutex::new(HashMap::new()),
            ooms: Mutex::new(VecDeque::new()),
            oom_cv: Condvar::new(),
            started: Instant::now(),
        });
        let a = agent.clone();
        let _ = std::thread::Builder::new()
            .name("oom-watch".into())
            .spawn(move || a.watch_ooms());
        agent
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        validate_id(id)?;
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NoContainer(id.into()))
    }

    fn process(&self, id: &str, exec: &str) -> Result<(Arc<Container>, Arc<ProcessEntry>), AgentError> {
        validate_exec_id(exec)?;
        let c = self.container(id)?;
        let p = if exec.is_empty() {
            c.init.clone()
        } else {
            c.execs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(exec)
                .cloned()
                .ok_or_else(|| AgentError::NoProcess {
                    container: id.into(),
                    exec: exec.into(),
                })?
        };
        Ok((c, p))
    }
    /// A file given at create and registered for copy-back, as the container has left it; at most 1 MiB, and
    /// never through a symlink the container may have put in its place.
    pub fn read_file(&self, id: &str, name: &str) -> Result<Vec<u8>, AgentError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let c = self.container(id)?;
        validate_id(name).map_err(|_| AgentError::BadSpec(format!("bad file name {name:?}")))?;
        registered_for_copy_back(&c.copy_back, id, name)?;
        let path = c.dir.join("files").join(name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let mut content = Vec::new();
        f.take(MAX_FILE_BYTES as u64 + 1)
            .read_to_end(&mut content)
            .map_err(io_err(format!("reading {}", path.display())))?;
        if content.len() > MAX_FILE_BYTES {
            return Err(AgentError::BadSpec(format!("file {name} is over 1 MiB")));
        }
        Ok(content)
    }

    pub fn start(&self, id: &str) -> Result<(), AgentError> {
        let c = self.container(id)?;
        let mut state = c.state.lock().unwrap_or_else(|p| p.into_inner());
        if *state != State::Created {
            return Err(AgentError::BadState(id.into(), "start needs a created container"));
        }
        let mut ch = c
            .channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(AgentError::BadState(id.into(), "no channel"))?;
        ch.send(&ToHelper::Start).map_err(io_err("starting the container"))?;
        match ch.recv::<FromHelper>() {
            Ok(Some((FromHelper::Started { .. }, _))) => {}
            Ok(Some((FromHelper::Error(e), _))) => return Err(AgentError::Helper(e)),
            other => {
                return Err(AgentError::Helper(format!(
                    "unexpected answer to Start: {:?}",
                    other.map(|o| o.map(|m| m.0))
                )))
            }
        }
        *state = State::Running;
        drop(state);
        // The watcher: the helper's report of the program's status, then the helper's own end.
        let reaper = self.reaper.clone();
        let c2 = c.clone();
        std::thread::Builder::new()
            .name(format!("wait-{id}"))
            .spawn(move || {
                let mut reported = None;
                while let Ok(Some((msg, _))) = ch.recv::<FromHelper>() {
                    if let FromHelper::Exited(st) = msg {
                        reported = Some(st);
                    }
                }
                let raw = reaper.wait(c2.init.pid);
                let status = reported.unwrap_or(raw);
                let oom_killed = status.signal == libc::SIGKILL
                    && c2.cgroup.oom_kills() > *c2.oom_seen.lock().unwrap_or_else(|p| p.into_inner());
                *c2.state.lock().unwrap_or_else(|p| p.into_inner()) = State::Stopped;
                c2.init.set_exit(ProcessExit {
                    status,
                    oom_killed,
                    at_unix_nanos: now_nanos(),
                });
            })
            .map_err(io_err("spawning a watcher thread"))?;
        Ok(())
    }

    pub fn exec(&self, id: &str, exec_id: &str, process_json: &[u8], stdio: &StdioConfig) -> Result<(), AgentError> {
        validate_id(exec_id)?;
        let c = self.container(id)?;
        if *c.state.lock().unwrap_or_else(|p| p.into_inner()) != State::Running {
            return Err(AgentError::BadState(id.into(), "exec needs a running container"));
        }
        if c.execs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(exec_id) {
            return Err(AgentError::ProcessExists(exec_id.into()));
        }
        let process: Process = serde_json::from_slice(process_json).map_err(|e| AgentError::BadSpec(e.to_string()))?;
        let terminal = process.terminal().unwrap_or(false);
        let (mut pio, child) = crate::stdio::make(stdio.stdin, stdio.stdout, stdio.stderr, terminal)
            .map_err(io_err("creating stdio pipes"))?;
        let (mut ch, helper_end) = Channel::pair().map_err(io_err("socketpair"))?;
        let helper = spawn_helper(EXEC_ARGV0, 0, child.raw(), helper_end.as_raw_fd(), &Default::default())
            .map_err(io_err("starting hull-exec"))?;
        self.reaper.watch(helper);
        drop(child);
        drop(helper_end);
        let vsock_seccomp =
            !c.allow_vsock && (!c.vsock_guarded || crate::vsock_guard::process_could_detach(&process, c.user_ns));
        let cfg = ExecConfig {
            process,
            init_pid: c.init.pid,
            namespaces: c.namespaces.clone(),
            cgroup: c.cgroup.path.clone(),
            seccomp: c.seccomp.clone(),
            vsock_seccomp,
        };
        let sent = ch.send(&ToHelper::Exec(Box::new(cfg)));
        let _ = ch.set_read_timeout(Some(HELPER_TIMEOUT));
        let answer = sent
            .map_err(io_err("sending the exec configuration"))
            .and_then(|()| ch.recv::<FromHelper>().map_err(io_err("waiting for hull-exec")));
        let pid = match answer {
            Ok(Some((FromHelper::Started { pid }, fd))) if pid > 0 => {
                if terminal {
                    pio.terminal = fd.map(File::from);
                }
                pid
            }
            Ok(Some((FromHelper::Error(e), _))) => {
                let _ = crate::sys::kill(helper, libc::SIGKILL);
                self.reaper.wait(helper);
                return Err(AgentError::Helper(e));
            }
            Ok(_) => {
                self.reaper.wait(helper);
                return Err(AgentError::Helper(
                    "hull-exec ended without starting the process".into(),
                ));
            }
            Err(e) => {
                let _ = crate::sys::kill(helper, libc::SIGKILL);
                self.reaper.wait(helper);
                return Err(e);
            }
        };
        self.reaper.watch(pid);
        self.reaper.wait(helper);
        let entry = ProcessEntry::new(pid, pio);
        c.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(exec_id.to_string(), entry.clone());
        let reaper = self.reaper.clone();
        let ooms_before = c.cgroup.oom_kills();
        let _ = std::thread::Builder::new()
            .name(format!("wait-{id}-{exec_id}"))
            .spawn(move || {
                let status = reaper.wait(pid);
                // Killed by SIGKILL while the cgroup counted a new OOM kill: the OOM killer did it.
                let oom_killed = status.signal == libc::SIGKILL && c.cgroup.oom_kills() > ooms_before;
                entry.set_exit(ProcessExit {
                    status,
                    oom_killed,
                    at_unix_nanos: now_nanos(),
                });
            });
        Ok(())
    }

    pub fn signal(&self, id: &str, exec: &str, signal: u32, all: bool) -> Result<(), AgentError> {
        let sig = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or(AgentError::BadSpec(format!("bad signal {signal}")))?;
        let (c, p) = self.process(id, exec)?;
        if all {
            if sig == libc::SIGKILL {
                return Ok(c.cgroup.kill_all()?);
            }
            for pid in c.cgroup.procs() {
                let _ = crate::sys::kill(pid, sig);
            }
            return Ok(());
        }
        if p.has_exited() {
            return Ok(());
        }
        crate::sys::kill(p.pid, sig).map_err(io_err(format!("kill({}, {sig})", p.pid)))
    }

    pub fn wait(&self, id: &str, exec: &str) -> Result<ProcessExit, AgentError> {
        // Waiting before Start is allowed (containerd does it): it blocks until the process ends.
        let (_, p) = self.process(id, exec)?;
        Ok(p.wait())
    }

    pub fn close_stdin(&self, id: &str, exec: &str, total: u64) -> Result<(), AgentError> {
        let (_, p) = self.process(id, exec)?;
        let mut io = p.io.lock().unwrap_or_else(|p| p.into_inner());
        io.stdin_ctl.close_at(total);
        // Never attached: drop our end so the process sees end of file.
        if total == 0 {
            io.stdin = None;
        }
        Ok(())
    }

    pub fn resize(&self, id: &str, exec: &str, rows: u32, cols: u32) -> Result<(), AgentError> {
        let (_, p) = self.process(id, exec)?;
        let io = p.io.lock().unwrap_or_else(|p| p.into_inner());
        let ws = libc::winsize {
            ws_row: rows.min(u16::MAX as u32) as u16,
            ws_col: cols.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let fd = io
            .terminal
            .as_ref()
            .map(|t| t.as_raw_fd())
            .ok_or(AgentError::BadState(id.into(), "no terminal"))?;
        // SAFETY: TIOCSWINSZ reads one winsize we own.
        crate::sys::cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) })
            .map_err(io_err("TIOCSWINSZ"))
            .map(drop)
    }

    /// The stdio attach lookup for the stdio listener.
    pub fn attach(&self, req: &StdioRequest) -> Result<Attach, String> {
        let (_, p) = self
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| e.to_string())?;
        let mut io = p.io.lock().unwrap_or_else(|p| p.into_inner());
        let taken = match req.stream {
            Stream::Stdin => io.stdin.take().map(|f| Attach::Input(f, io.stdin_ctl.clone())),
            Stream::Stdout => io.stdout.take().map(Attach::Output),
            Stream::Stderr => io.stderr.take().map(Attach::Output),
            Stream::Terminal => io
                .terminal
                .as_ref()
                .and_then(|t| t.try_clone().ok())
                .map(Attach::Terminal),
        };
        taken.ok_or_else(|| {
            format!(
                "{} is not available (not requested, or already attached)",
                req.stream.as_str()
            )
        })
    }

    pub fn list(&self, id: &str) -> Result<Vec<(i32, String)>, AgentError> {
        let c = self.container(id)?;
        Ok(c.cgroup
            .procs()
            .into_iter()
            .map(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd)
                    .replace('\0', " ")
                    .trim()
                    .chars()
                    .take(4096)
                    .collect();
                (pid, cmd)
            })
            .collect())
    }

    pub fn stats(&self, id: &str) -> Result<hull_agent_protocol::agent::StatsContainerResponse, AgentError> {
        Ok(self.container(id)?.cgroup.stats())
    }

    pub fn update(&self, id: &str, json: &[u8]) -> Result<(), AgentError> {
        let r: LinuxResources = serde_json::from_slice(json).map_err(|e| AgentError::BadSpec(e.to_string()))?;
        Ok(self.container(id)?.cgroup.apply(&r)?)
    }

    pub fn pause(&self, id: &str, frozen: bool) -> Result<(), AgentError> {
        Ok(self.container(id)?.cgroup.freeze(frozen)?)
    }

    /// Blocks until some container records a new OOM kill.
    pub fn next_oom(&self) -> String {
        let mut q = self.ooms.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(id) = q.pop_front() {
                return id;
            }
            q = self.oom_cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn watch_ooms(&self) {
        let mut last: HashMap<String, u64> = HashMap::new();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let cs: Vec<Arc<Container>> = self
                .containers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned()
                .collect();
            for c in cs {
                let n = c.cgroup.oom_kills();
                let prev = last.entry(c.id.clone()).or_insert(0);
                if n > *prev {
                    *prev = n;
                    let mut q = self.ooms.lock().unwrap_or_else(|p| p.into_inner());
                    if q.len() < 1024 {
                        q.push_back(c.id.clone());
                    }
                    self.oom_cv.notify_all();
                }
            }
        }
    }

    pub fn remove(&self, id: &str) -> Result<(), AgentError> {
        let c = self.container(id)?;
        let state = *c.state.lock().unwrap_or_else(|p| p.into_inner());
        if !c.init.has_exited() {
            let _ = c.cgroup.kill_all();
            let _ = crate::sys::kill(c.init.pid, libc::SIGKILL);
            if state == State::Created {
                // No watcher thread yet: collect the helper here.
                c.channel.lock().unwrap_or_else(|p| p.into_inner()).take();
                let st = self.reaper.wait(c.init.pid);
                c.init.set_exit(ProcessExit {
                    status: st,
                    oom_killed: false,
                    at_unix_nanos: now_nanos(),
                });
            } else {
                c.init.wait();
            }
        }
        // Exec'd processes die with the PID namespace; give the cgroup a moment to empty.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.cgroup.procs().is_empty() && Instant::now() < deadline {
            let _ = c.cgroup.kill_all();
            std::thread::sleep(Duration::from_millis(20));
        }
        for m in c.mounts.iter().rev() {
            let _ = umount_detach(m);
        }
        let _ = c.cgroup.remove();
        scratch::remove(id);
        let _ = std::fs::remove_dir_all(&c.dir);
        self.containers.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        Ok(())
    }

    /// Removes every container (for Shutdown).
    pub fn remove_all(&self) {
        let ids: Vec<String> = self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        for id in ids {
            let _ = self.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_file_reads_only_what_was_registered_for_copy_back() {
        let registered = vec!["f1".to_string()];
        assert!(registered_for_copy_back(&registered, "c1", "f1").is_ok());
        for name in ["f0", "f10", "F1", ""] {
            assert!(matches!(
                registered_for_copy_back(&registered, "c1", name),
                Err(AgentError::NotRegistered { .. })
            ));
        }
        assert!(registered_for_copy_back(&[], "c1", "f1").is_err());
    }
}
