//! The agent's containers and processes: create (rootfs mounts, cgroup, `hull-init` in new namespaces),
//! start, exec (`hull-exec`), signal, wait, stdio lookup, stats, pause/resume, resource updates, OOM
//! events and removal. Every request names its container and process by validated ids; the OCI documents
//! are parsed with oci-spec and only the parts this module understands are acted on.
//!
//! Paths: `/run/hull/containers/<id>/{image,rw,rootfs,m<N>}` hold the container's mounts in the agent's
//! mount namespace; the spec's `root.path` is ignored (the rootfs is the `Storage` the host names).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hull_agent_protocol::agent::{File as HostFile, StdioConfig, Storage};
use hull_agent_protocol::ids::{validate_exec_id, validate_id, IdError};
use hull_agent_protocol::stdio::{StdioRequest, Stream};
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Mount, Process, Spec};

use crate::cgroup::{Cgroup, CgroupError};
use crate::channel::Channel;
use crate::helper_protocol::{ExecConfig, FromHelper, InitConfig, ToHelper};
use crate::init::{spawn_helper, EXEC_ARGV0, INIT_ARGV0};
use crate::reaper::Reaper;
use crate::stdio::{Attach, ProcessIo};
use crate::sys::{mount, umount_detach, ExitStatus};

const STATE_DIR: &str = "/run/hull/containers";
/// How long a helper may take to report back.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    BadId(#[from] IdError),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("no container {0}")]
    NoContainer(String),
    #[error("no process {exec:?} in container {container}")]
    NoProcess { container: String, exec: String },
    #[error("process {0:?} already exists")]
    ProcessExists(String),
    #[error("container {0} is not in a state that allows this ({1})")]
    BadState(String, &'static str),
    #[error("invalid OCI document: {0}")]
    BadSpec(String),
    #[error("block device {0:?} not found or not acceptable")]
    BadDevice(String),
    #[error("block device {device} is still empty (size 0) after {waited:?}: no disk was attached to its slot")]
    EmptyDevice { device: String, waited: Duration },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("container setup failed: {0}")]
    Helper(String),
    #[error("container {container}: file {name:?} was not registered for copy-back at create")]
    NotRegistered { container: String, name: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

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
    /// The files the host registered for copy-back (`File.copy_back`): the only ones ReadFile reads.
    copy_back: Vec<String>,
    init: Arc<ProcessEntry>,
    /// The init helper's channel until Start hands it to the watcher.
    channel: Mutex<Option<Channel>>,
    execs: Mutex<HashMap<String, Arc<ProcessEntry>>>,
    state: Mutex<State>,
    oom_seen: Mutex<u64>,
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

const MAX_FILES: usize = 64;
const MAX_FILE_BYTES: usize = 1 << 20;

/// Writes the host's small files into `<dir>/files/` and points the spec's `hull-file:<name>` mount sources
/// at them. Names, counts and sizes are checked: they come from the host, but a bad one is still an error,
/// not a write outside the directory.
fn write_files(dir: &Path, files: &[HostFile], spec: &mut Spec) -> Result<(), AgentError> {
    if files.len() > MAX_FILES {
        return Err(AgentError::BadSpec(format!(
            "{} files (at most {MAX_FILES})",
            files.len()
        )));
    }
    let fdir = dir.join("files");
    std::fs::create_dir_all(&fdir).map_err(io_err("mkdir files"))?;
    for f in files {
        validate_id(&f.name).map_err(|_| AgentError::BadSpec(format!("bad file name {:?}", f.name)))?;
        if f.content.len() > MAX_FILE_BYTES {
            return Err(AgentError::BadSpec(format!("file {} is over 1 MiB", f.name)));
        }
        let path = fdir.join(&f.name);
        std::fs::write(&path, &f.content).map_err(io_err(format!("writing {}", path.display())))?;
        let mode = if f.mode == 0 { 0o644 } else { f.mode & 0o7777 };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", path.display())))?;
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mut mounts {
        let Some(name) = m
            .source()
            .as_ref()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("hull-file:"))
        else {
            continue;
        };
        if !files.iter().any(|f| f.name == name) {
            return Err(AgentError::BadSpec(format!(
                "mount source hull-file:{name} names no file"
            )));
        }
        let path = fdir.join(name);
        m.set_source(Some(path));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// `/dev/<name>` for "vda"-style names, or the device whose virtio-blk serial matches "serial:<s>".
fn resolve_device(device: &str) -> Result<PathBuf, AgentError> {
    let bad = || AgentError::BadDevice(device.chars().take(64).collect());
    if let Some(serial) = device.strip_prefix("serial:") {
        for entry in std::fs::read_dir("/sys/block").map_err(io_err("/sys/block"))?.flatten() {
            let s = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
            if !serial.is_empty() && s.trim() == serial {
                return Ok(Path::new("/dev").join(entry.file_name()));
            }
        }
        return Err(bad());
    }
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    if name.is_empty() || name.len() > 32 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(bad());
    }
    let p = Path::new("/dev").join(name);
    if !p.exists() {
        return Err(bad());
    }
    Ok(p)
}

/// How long a Storage's block device may stay empty: a slot whose disk the host is still attaching.
const DEVICE_FILL_TIMEOUT: Duration = Duration::from_secs(10);
const DEVICE_FILL_POLL: Duration = Duration::from_millis(20);
/// `BLKFLSBUF`, `_IO(0x12, 97)`: write back and drop the device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Reads a sysfs `size` file (512-byte sectors) until it holds a number above 0, for at most `timeout`.
/// `Ok(None)` when it stayed 0 (or unreadable) that long.
fn wait_for_nonzero_size(size_file: &Path, timeout: Duration, poll: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let size = std::fs::read_to_string(size_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(sectors) = size.filter(|s| *s > 0) {
            return Some(sectors);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(poll);
    }
}

/// Makes a Storage's block device ready to mount. The device may be a disk slot that booted empty and
/// gets its image while the VM runs: wait (up to `DEVICE_FILL_TIMEOUT`) until its size is above 0, then
/// drop any buffer cache left from the slot's previous disk (BLKFLSBUF), so the mount reads the new one.
fn prepare_block_device(dev: &Path) -> Result<(), AgentError> {
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size_file = Path::new("/sys/class/block").join(&name).join("size");
    if wait_for_nonzero_size(&size_file, DEVICE_FILL_TIMEOUT, DEVICE_FILL_POLL).is_none() {
        return Err(AgentError::EmptyDevice {
            device: dev.display().to_string(),
            waited: DEVICE_FILL_TIMEOUT,
        });
    }
    let file = File::open(dev).map_err(io_err(format!("opening {}", dev.display())))?;
    // SAFETY: BLKFLSBUF takes no argument pointer; the fd is open for the call.
    crate::sys::cvt(unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF as _, 0) }).map_err(io_err(format!(
        "dropping stale buffers of {} (BLKFLSBUF)",
        dev.display()
    )))?;
    Ok(())
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

/// Whether the spec's annotations let the container's processes create AF_VSOCK sockets (exactly "true").
fn allows_vsock(spec: &Spec) -> bool {
    let key = hull_agent_protocol::policy::ALLOW_VSOCK_ANNOTATION;
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .is_some_and(|v| v == "true")
}

fn check_fstype(t: &str) -> Result<&str, AgentError> {
    match t {
        "ext4" | "ext3" | "ext2" | "erofs" | "squashfs" | "xfs" | "vfat" | "btrfs" => Ok(t),
        _ => Err(AgentError::BadSpec(format!("unsupported file system type {t:?}"))),
    }
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

    pub fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &Storage,
        extra: &[Storage],
        files: &[HostFile],
        stdio: &StdioConfig,
    ) -> Result<(), AgentError> {
        validate_id(id)?;
        if self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
        {
            return Err(AgentError::Exists(id.into()));
        }
        let mut spec: Spec = serde_json::from_slice(spec_json).map_err(|e| AgentError::BadSpec(e.to_string()))?;
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| AgentError::BadSpec("no process".into()))?;
        let dir = Path::new(STATE_DIR).join(id);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut mounts = Vec::new();
        let result = write_files(&dir, files, &mut spec)
            .and_then(|()| self.create_inner(id, &dir, &mut spec, &process, rootfs, extra, files, stdio, &mut mounts));
        if result.is_err() {
            for m in mounts.iter().rev() {
                let _ = umount_detach(m);
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn create_inner(
        &self,
        id: &str,
        dir: &Path,
        spec: &mut Spec,
        process: &Process,
        rootfs: &Storage,
        extra: &[Storage],
        files: &[HostFile],
        stdio: &StdioConfig,
        mounts: &mut Vec<PathBuf>,
    ) -> Result<(), AgentError> {
        // The rootfs: the image (read-only if asked), and an overlay with a tmpfs upper layer on top.
        let image = dir.join("image");
        std::fs::create_dir_all(&image).map_err(io_err("mkdir image"))?;
        let dev = resolve_device(&rootfs.device)?;
        prepare_block_device(&dev)?;
        let flags = if rootfs.read_only { libc::MS_RDONLY } else { 0 };
        mount(
            Some(&dev.to_string_lossy()),
            &image,
            Some(check_fstype(&rootfs.fstype)?),
            flags,
            None,
        )
        .map_err(io_err(format!(
            "mounting {} ({}) on {}",
            dev.display(),
            rootfs.fstype,
            image.display()
        )))?;
        mounts.push(image.clone());
        let root = if rootfs.writable_overlay {
            let rw = dir.join("rw");
            std::fs::create_dir_all(&rw).map_err(io_err("mkdir rw"))?;
            mount(Some("tmpfs"), &rw, Some("tmpfs"), 0, Some("mode=0755"))
                .map_err(io_err("mounting the overlay's tmpfs"))?;
            mounts.push(rw.clone());
            for d in ["upper", "work"] {
                std::fs::create_dir_all(rw.join(d)).map_err(io_err("mkdir upper/work"))?;
            }
            let root = dir.join("rootfs");
            std::fs::create_dir_all(&root).map_err(io_err("mkdir rootfs"))?;
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                rw.join("upper").display(),
                rw.join("work").display()
            );
            mount(Some("overlay"), &root, Some("overlay"), 0, Some(&data)).map_err(io_err("mounting the overlay"))?;
            mounts.push(root.clone());
            root
        } else {
            image.clone()
        };
        // Extra block devices become bind mounts in the spec.
        let mut spec_mounts = spec.mounts().clone().unwrap_or_default();
        for (i, s) in extra.iter().enumerate() {
            let target = dir.join(format!("m{i}"));
            std::fs::create_dir_all(&target).map_err(io_err("mkdir extra mount"))?;
            let dev = resolve_device(&s.device)?;
            prepare_block_device(&dev)?;
            let flags = if s.read_only { libc::MS_RDONLY } else { 0 };
            mount(
                Some(&dev.to_string_lossy()),
                &target,
                Some(check_fstype(&s.fstype)?),
                flags,
                None,
            )
            .map_err(io_err(format!("mounting {}", dev.display())))?;
            mounts.push(target.clone());
            let m: Mount = serde_json::from_value(serde_json::json!({
                "destination": s.container_path, "type": "bind", "source": target,
                "options": if s.read_only { vec!["rbind", "ro"] } else { vec!["rbind", "rw"] },
            }))
            .map_err(|e| AgentError::BadSpec(e.to_string()))?;
            spec_mounts.push(m);
        }
        spec.set_mounts(Some(spec_mounts));

        // Namespaces: the ones the spec lists (paths to join are not supported: one VM is one sandbox).
        let linux = spec.linux().clone().unwrap_or_default();
        // Compiled here too, so a bad profile fails CreateContainer with a clear error.
        if let Some(profile) = linux.seccomp() {
            crate::seccomp::compile(profile).map_err(|e| AgentError::BadSpec(e.to_string()))?;
        }
        if linux
            .resources()
            .as_ref()
            .and_then(|r| r.devices().as_ref())
            .is_some_and(|d| !d.is_empty())
        {
            crate::console::log(&format!(
                "container {id}: device cgroup rules are not applied (only listed devices exist)"
            ));
        }
        let mut clone_flags = 0;
        let mut names = Vec::new();
        let mut cgroup_ns = false;
        for ns in linux.namespaces().clone().unwrap_or_default() {
            if ns.path().is_some() {
                return Err(AgentError::BadSpec(
                    "joining an existing namespace by path is not supported".into(),
                ));
            }
            let (flag, name) = match ns.typ() {
                LinuxNamespaceType::Mount => (libc::CLONE_NEWNS, "mnt"),
                LinuxNamespaceType::Pid => (libc::CLONE_NEWPID, "pid"),
                LinuxNamespaceType::Uts => (libc::CLONE_NEWUTS, "uts"),
                LinuxNamespaceType::Ipc => (libc::CLONE_NEWIPC, "ipc"),
                LinuxNamespaceType::Network => (libc::CLONE_NEWNET, "net"),
                LinuxNamespaceType::Cgroup => {
                    cgroup_ns = true;
                    (0, "cgroup")
                }
                other => return Err(AgentError::BadSpec(format!("namespace {other:?} is not supported"))),
            };
            clone_flags |= flag;
            names.push(name.to_string());
        }
        if clone_flags & libc::CLONE_NEWNS == 0 {
            return Err(AgentError::BadSpec("a mount namespace is required".into()));
        }
        // setns order for hull-exec: the mount namespace last, after /proc/<pid>/ns was read.
        names.sort_by_key(|n| n == "mnt");

        let cgroup = Cgroup::create(id)?;
        if let Some(r) = linux.resources() {
            cgroup.apply(r)?;
        }
        let terminal = process.terminal().unwrap_or(false);
        let (pio, child) = crate::stdio::make(stdio.stdin, stdio.stdout, stdio.stderr, terminal)
            .map_err(io_err("creating stdio pipes"))?;
        let (mut ch, helper_end) = Channel::pair().map_err(io_err("socketpair"))?;
        let pid = spawn_helper(INIT_ARGV0, clone_flags, child.raw(), helper_end.as_raw_fd())
            .map_err(io_err("starting hull-init"))?;
        self.reaper.watch(pid);
        drop(child);
        drop(helper_end);
        let fail = |e: AgentError, reaper: &Reaper| {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
            reaper.wait(pid);
            let _ = cgroup.remove();
            e
        };
        if let Err(e) = cgroup.add_process(pid) {
            return Err(fail(e.into(), &self.reaper));
        }
        let allow_vsock = allows_vsock(spec);
        if allow_vsock {
            crate::console::log(&format!("container {id}: AF_VSOCK sockets allowed by its annotation"));
        }
        let cfg = InitConfig {
            spec: spec.clone(),
            rootfs: root,
            cgroup_ns,
            allow_vsock,
        };
        if let Err(e) = ch.send(&ToHelper::Init(Box::new(cfg))) {
            return Err(fail(io_err("sending the configuration")(e), &self.reaper));
        }
        let _ = ch.set_read_timeout(Some(HELPER_TIMEOUT));
        let mut pio = pio;
        match ch.recv::<FromHelper>() {
            Ok(Some((FromHelper::Ready, fd))) => {
                if terminal {
                    match fd {
                        Some(fd) => pio.terminal = Some(File::from(fd)),
                        None => {
                            return Err(fail(
                                AgentError::Helper("no terminal from hull-init".into()),
                                &self.reaper,
                            ))
                        }
                    }
                }
            }
            Ok(Some((FromHelper::Error(e), _))) => return Err(fail(AgentError::Helper(e), &self.reaper)),
            Ok(_) => {
                return Err(fail(
                    AgentError::Helper("hull-init ended during setup".into()),
                    &self.reaper,
                ))
            }
            Err(e) => return Err(fail(io_err("waiting for hull-init")(e), &self.reaper)),
        }
        let _ = ch.set_read_timeout(None);
        let oom_seen = cgroup.oom_kills();
        let c = Arc::new(Container {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            mounts: std::mem::take(mounts),
            cgroup,
            namespaces: names,
            seccomp: linux.seccomp().clone(),
            allow_vsock,
            copy_back: files.iter().filter(|f| f.copy_back).map(|f| f.name.clone()).collect(),
            init: ProcessEntry::new(pid, pio),
            channel: Mutex::new(Some(ch)),
            execs: Mutex::new(HashMap::new()),
            state: Mutex::new(State::Created),
            oom_seen: Mutex::new(oom_seen),
        });
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), c);
        Ok(())
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
        let helper =
            spawn_helper(EXEC_ARGV0, 0, child.raw(), helper_end.as_raw_fd()).map_err(io_err("starting hull-exec"))?;
        self.reaper.watch(helper);
        drop(child);
        drop(helper_end);
        let cfg = ExecConfig {
            process,
            init_pid: c.init.pid,
            namespaces: c.namespaces.clone(),
            cgroup: c.cgroup.path.clone(),
            seccomp: c.seccomp.clone(),
            allow_vsock: c.allow_vsock,
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

    #[test]
    fn only_the_annotation_true_allows_vsock() {
        let spec = |annotations: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({ "ociVersion": "1.0.2", "annotations": annotations })).unwrap()
        };
        assert!(allows_vsock(&spec(
            serde_json::json!({ "io.hull.allow-vsock": "true" })
        )));
        for v in ["false", "1", "TRUE", ""] {
            assert!(
                !allows_vsock(&spec(serde_json::json!({ "io.hull.allow-vsock": v }))),
                "{v}"
            );
        }
        assert!(!allows_vsock(&spec(serde_json::json!({}))));
        assert!(!allows_vsock(&Spec::default()));
    }

    fn size_file(name: &str, content: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("hull-agent-size-{}-{name}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn a_device_that_gets_a_disk_is_waited_for() {
        let p = size_file("fills", "0\n");
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(&p, "32768\n").unwrap();
            })
        };
        let got = wait_for_nonzero_size(&p, Duration::from_secs(5), Duration::from_millis(5));
        writer.join().unwrap();
        assert_eq!(got, Some(32768));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn an_empty_missing_or_garbled_size_times_out() {
        let zero = size_file("zero", "0\n");
        let garbage = size_file("garbage", "lots\n");
        for p in [zero.clone(), garbage.clone(), PathBuf::from("/nonexistent/size")] {
            let started = Instant::now();
            assert_eq!(
                wait_for_nonzero_size(&p, Duration::from_millis(60), Duration::from_millis(10)),
                None
            );
            assert!(started.elapsed() >= Duration::from_millis(60));
        }
        let e = AgentError::EmptyDevice {
            device: "/dev/vdb".into(),
            waited: DEVICE_FILL_TIMEOUT,
        }
        .to_string();
        assert_eq!(
            e,
            "block device /dev/vdb is still empty (size 0) after 10s: no disk was attached to its slot"
        );
        std::fs::remove_file(zero).unwrap();
        std::fs::remove_file(garbage).unwrap();
    }
}
