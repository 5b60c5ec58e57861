//! The two helper programs the agent starts by re-executing itself (the agent binary, chosen by argv[0]):
//!
//! - `hull-init`: the first process of a container's PID namespace. Receives an
//!   [`InitConfig`](crate::helper_protocol::InitConfig) on the channel, joins its cgroup namespace, builds the
//!   file system view ([`crate::rootfs`]), sets the hostname, allocates the terminal from the container's own
//!   devpts, reports `Ready` and waits for `Start`. Then, as under runc, it reports `Started` and execs the
//!   container's program, which is PID 1 with PID 1's semantics: the kernel delivers it only the signals it
//!   handles (and SIGKILL), orphans are its to reap, and its end tears the namespace down; the agent, its
//!   parent, reaps it for the exit status. A container with an init (`InitConfig::with_init`, as
//!   `docker run --init`) instead gets `hull-init` as a small init: it forks the program, reaps orphans,
//!   forwards signals to the program and reports the program's exact status (`Exited`) before exiting.
//! - `hull-exec`: joins a running container (cgroup, then user/ipc/uts/net/pid/cgroup/time/mnt namespaces of its init) and
//!   starts one process there with clone(CLONE_PARENT), so the process is the agent's child and the agent
//!   reaps it; reports its PID and exits.
//!
//! Both install the seccomp vsock filter ([`crate::seccomp::deny_vsock`]) first when the agent asks
//! (`vsock_seccomp`: the cgroup's vsock guard, [`crate::vsock_guard`], is missing or could be detached by
//! the process), so everything the container runs inherits it, whatever its own seccomp profile says.
//!
//! Both run single-threaded with nothing but the channel and stdio open, and trust only the agent.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Process;

use crate::channel::Channel;
use crate::helper_protocol::{FromHelper, ToHelper};
use crate::process::PreparedProcess;
use crate::sys::{cpath, cstr, cvt, ExitStatus};

pub const INIT_ARGV0: &str = "hull-init";
pub const EXEC_ARGV0: &str = "hull-exec";

/// What the child does between the clone and the exec, besides setting up its descriptors.
#[derive(Default)]
pub struct ChildSetup<'a> {
    /// Namespace descriptors it enters (setns), in order.
    pub join: &'a [RawFd],
    /// Set when the clone made a new user namespace: the child waits for one byte on this descriptor (the
    /// agent has written its uid and gid maps by then), then becomes root of the namespace, keeping the
    /// capabilities it has there, so `hull-init` starts as root with every capability, as runc's init does.
    pub wait_for_maps: Option<RawFd>,
}

/// Runs `spawn` on a thread of its own whose children go to the PID namespace `ns` (setns with
/// CLONE_NEWPID changes only the calling thread's children's namespace; the thread ends right after).
pub fn in_pid_namespace(ns: RawFd, spawn: impl FnOnce() -> io::Result<i32> + Send) -> io::Result<i32> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a namespace descriptor the caller holds open.
            cvt(unsafe { libc::setns(ns, libc::CLONE_NEWPID) })?;
            spawn()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the spawning thread panicked")))
    })
}

/// Starts `/proc/self/exe` as `argv0` with `stdio` as fds 0-2 and `channel` as fd 3, in a child created with
/// `clone_flags` (namespaces) and prepared as `setup` says. The child only makes system calls and execs:
/// safe from a threaded agent.
pub fn spawn_helper(
    argv0: &str,
    clone_flags: libc::c_int,
    stdio: [RawFd; 3],
    channel: RawFd,
    setup: &ChildSetup,
) -> io::Result<i32> {
    let exe = c"/proc/self/exe";
    let arg0 = cstr(argv0)?;
    let argv = [arg0.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let sources = [stdio[0], stdio[1], stdio[2], channel];
    // SAFETY: a fork-like clone (no new stack: the child runs on a copy of ours). The child calls only
    // async-signal-safe functions (read, set*id, setns, fcntl, dup2, close_range, execve, _exit) on data
    // prepared above, then leaves.
    unsafe {
        let pid = libc::syscall(
            libc::SYS_clone,
            (clone_flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            if let Some(fd) = setup.wait_for_maps {
                let mut byte = 0u8;
                let n = loop {
                    let n = libc::read(fd, (&mut byte as *mut u8).cast(), 1);
                    if n >= 0 || *libc::__errno_location() != libc::EINTR {
                        break n;
                    }
                };
                if n != 1
                    || libc::syscall(libc::SYS_setresgid, 0, 0, 0) != 0
                    || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setresuid, 0, 0, 0) != 0
                {
                    libc::_exit(125);
                }
            }
            for fd in setup.join {
                if libc::setns(*fd, 0) != 0 {
                    libc::_exit(125);
                }
            }
            // Move every source out of the way first so the dup2s below cannot clobber one another.
            let mut high = [0; 4];
            for (i, fd) in sources.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    libc::_exit(126);
                }
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, i as RawFd) < 0 {
                    libc::_exit(126);
                }
            }
            // Nothing but 0-3 crosses into the helper, even a descriptor another agent thread received a
            // moment ago and has not made close-on-exec yet (see `Channel::recv`). Best effort: before
            // Linux 5.9 close_range does not exist, and close-on-exec alone applies.
            libc::syscall(
                libc::SYS_close_range,
                4 as libc::c_uint,
                libc::c_uint::MAX,
                0 as libc::c_uint,
            );
            libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
        Ok(pid as i32)
    }
}

/// A pty pair from the devpts instance mounted at /dev/pts of the current mount namespace: (master, slave).
fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: open/ioctl with valid C strings and pointers to locals.
    unsafe {
        let master = cvt(libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        let master = OwnedFd::from_raw_fd(master);
        let unlock: libc::c_int = 0;
        cvt(libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock))?;
        let mut n: libc::c_uint = 0;
        cvt(libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n))?;
        let path = cstr(format!("/dev/pts/{n}"))?;
        let slave = cvt(libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        Ok((master, OwnedFd::from_raw_fd(slave)))
    }
}

/// The terminal belongs to the process's user, as a login terminal would.
fn give_terminal(slave: &OwnedFd, process: &Process) {
    // SAFETY: fchown on a descriptor we own.
    unsafe { libc::fchown(slave.as_raw_fd(), process.user().uid(), process.user().gid()) };
}

/// Like runc, the container's /dev/console is its terminal: the slave bound over it (best effort: a
/// rootfs whose /dev is not ours may not allow it).
fn console_on(slave: &OwnedFd) {
    let Ok(pts) = std::fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd())) else {
        return;
    };
    let console = Path::new("/dev/console");
    if std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(console)
        .is_ok()
    {
        let _ = crate::sys::mount(Some(&pts.to_string_lossy()), console, None, libc::MS_BIND, None);
    }
}

/// The container's program leads a session of its own, with or without a terminal, as runc's does (with a
/// terminal, `PreparedProcess` makes it the controlling one; setsid there then fails harmlessly).
fn new_session() {
    // SAFETY: setsid takes no arguments.
    unsafe { libc::setsid() };
}

/// Puts the slave on fds 0-2 (in the child that becomes the process).
fn attach_slave(slave: RawFd) {
    for fd in 0..3 {
        // SAFETY: dup2 on descriptor numbers.
        unsafe { libc::dup2(slave, fd) };
    }
}

/// Entry point of `hull-init`. Never returns.
/// Keeps container processes from ptrace-ing or reading /proc/<pid>/{mem,exe,root} of the helper (which
/// runs as root with every capability, next to container code).
fn not_dumpable() {
    // SAFETY: prctl with plain values.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
}

pub fn init_main() -> ! {
    not_dumpable();
    let mut ch = match Channel::from_helper_fd() {
        Ok(c) => c,
        Err(_) => std::process::exit(125),
    };
    let code = match init_run(&mut ch) {
        Ok(status) => {
            let _ = ch.send(&FromHelper::Exited(status));
            if status.signal != 0 {
                128 + status.signal
            } else {
                status.code
            }
        }
        Err(e) => {
            let _ = ch.send(&FromHelper::Error(e));
            125
        }
    };
    std::process::exit(code)
}

fn init_run(ch: &mut Channel) -> Result<ExitStatus, String> {
    let cfg = match ch.recv::<ToHelper>() {
        Ok(Some((ToHelper::Init(cfg), _))) => cfg,
        Ok(_) => return Err("expected the container's configuration".into()),
        Err(e) => return Err(format!("reading the configuration: {e}")),
    };
    // Where the cgroup's vsock guard is not enough: no AF_VSOCK for anything this container runs, before any
    // of it runs (inherited through fork).
    if cfg.vsock_seccomp {
        crate::seccomp::deny_vsock().map_err(|e| e.to_string())?;
    }
    // Our own OOM protection: the kernel should pick the program, whose death we report.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    if cfg.cgroup_ns {
        // SAFETY: unshare takes a flag word.
        cvt(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) }).map_err(|e| format!("unshare(cgroup): {e}"))?;
    }
    if let Some(offsets) = &cfg.time_offsets {
        enter_new_time_namespace(offsets)?;
    }
    crate::rootfs::setup(&cfg.spec, &cfg.rootfs, cfg.user_ns).map_err(|e| e.to_string())?;
    if let Some(h) = cfg.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
        // SAFETY: pointer and length of a live string.
        cvt(unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) }).map_err(|e| format!("sethostname: {e}"))?;
    }
    if let Some(d) = cfg.spec.domainname().as_deref().filter(|d| !d.is_empty()) {
        // SAFETY: pointer and length of a live string.
        cvt(unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) }).map_err(|e| format!("setdomainname: {e}"))?;
    }
    // createContainer hooks, in the container's namespaces with its file system view.
    let hooks = cfg.spec.hooks().clone().unwrap_or_default();
    let hook_state = |status: &str| {
        crate::guest_hooks::state(&cfg.id, status, cfg.pid, &cfg.bundle, cfg.spec.annotations().as_ref())
    };
    crate::guest_hooks::run(
        "createContainer",
        hooks.create_container().as_deref().unwrap_or_default(),
        &hook_state("created"),
    )?;
    let process = cfg.spec.process().clone().ok_or("the spec has no process")?;
    // Like runc: a missing working directory is created (as root, inside the new root).
    if process.cwd().is_absolute() {
        let _ = std::fs::create_dir_all(process.cwd());
    }
    let seccomp = cfg.spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let prepared = PreparedProcess::prepare(&process, seccomp.as_ref()).map_err(|e| e.to_string())?;
    let pty = if prepared.controlling_tty {
        Some(open_pty().map_err(|e| format!("allocating a pty: {e}"))?)
    } else {
        None
    };
    if let Some((_, slave)) = &pty {
        give_terminal(slave, &process);
        console_on(slave);
    }
    ch.send_with_fd(&FromHelper::Ready, pty.as_ref().map(|(m, _)| m.as_raw_fd()))
        .map_err(|e| e.to_string())?;
    match ch.recv::<ToHelper>() {
        Ok(Some((ToHelper::Start, _))) => {}
        _ => return Err("expected Start".into()),
    }
    crate::guest_hooks::run(
        "startContainer",
        hooks.start_container().as_deref().unwrap_or_default(),
        &hook_state("created"),
    )?;
    if !cfg.with_init {
        become_the_program(ch, &prepared, &process, pty.as_ref().map(|(_, slave)| slave));
    }
    let signals = forwarding_signals();
    // SAFETY: we are single-threaded; the child runs PreparedProcess::exec (system calls) and leaves.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        let _ = std::fs::write(
            "/proc/self/oom_score_adj",
            process.oom_score_adj().unwrap_or(0).to_string(),
        );
        if let Some((_, slave)) = &pty {
            attach_slave(slave.as_raw_fd());
        }
        new_session();
        let _ = prepared.exec();
        // SAFETY: leaving the child without running our parent's exit handlers.
        unsafe { libc::_exit(127) };
    }
    drop(pty);
    let _ = ch.send(&FromHelper::Started { pid: 0 });
    Ok(supervise(pid, &signals))
}

/// A new time namespace with `offsets`, entered by this process: unshare makes it for our children only,
/// and the offsets can be written only before any process is in it; then setns moves us in (we are
/// single-threaded), so the program we exec (or fork) sees the offset clocks.
fn enter_new_time_namespace(offsets: &str) -> Result<(), String> {
    // SAFETY: unshare takes a flag word.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWTIME) }).map_err(|e| format!("unshare(time): {e}"))?;
    if !offsets.is_empty() {
        std::fs::write("/proc/self/timens_offsets", offsets).map_err(|e| format!("writing the time offsets: {e}"))?;
    }
    let ns = std::fs::File::open("/proc/self/ns/time_for_children").map_err(|e| format!("time namespace: {e}"))?;
    // SAFETY: setns on a namespace descriptor we hold open.
    cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWTIME) }).map_err(|e| format!("setns(time): {e}"))?;
    Ok(())
}

/// Without an init: reports `Started`, then turns this process (PID 1 of the namespace) into the container's
/// program. The channel and the terminal's master close on exec, so the agent sees the channel end and takes
/// the program's status from waitpid. If the exec fails, the reason is on the program's stderr (as with a fork)
/// and the status is 127.
fn become_the_program(ch: &mut Channel, prepared: &PreparedProcess, process: &Process, slave: Option<&OwnedFd>) -> ! {
    if ch.send(&FromHelper::Started { pid: 0 }).is_err() {
        std::process::exit(125);
    }
    let _ = std::fs::write(
        "/proc/self/oom_score_adj",
        process.oom_score_adj().unwrap_or(0).to_string(),
    );
    if let Some(slave) = slave {
        attach_slave(slave.as_raw_fd());
    }
    new_session();
    let _ = prepared.exec();
    // SAFETY: leaving without running exit handlers, as the forked child does.
    unsafe { libc::_exit(127) }
}

/// Installs a no-op handler on every signal we forward (the kernel drops signals to a namespace's init that
/// has no handler), then blocks them and SIGCHLD for sigwaitinfo. Returns the blocked set.
fn forwarding_signals() -> libc::sigset_t {
    extern "C" fn noop(_: libc::c_int) {}
    // SAFETY: a local signal set; sigaction with a plain function pointer handler.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in 1..32 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            libc::signal(sig, noop as extern "C" fn(libc::c_int) as libc::sighandler_t);
            libc::sigaddset(&mut set, sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Reaps until the program ends; forwards every other signal to it.
fn supervise(program: i32, set: &libc::sigset_t) -> ExitStatus {
    loop {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes our local.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == program {
                return ExitStatus::from_wait(status);
            }
        }
        // SAFETY: a zeroed siginfo the kernel fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let sig = unsafe { libc::sigwaitinfo(set, &mut info) };
        if sig > 0 && sig != libc::SIGCHLD {
            let _ = crate::sys::kill(program, sig);
        }
    }
}

/// Entry point of `hull-exec`. Never returns.
pub fn exec_main() -> ! {
    not_dumpable();
    let mut ch = match Channel::from_helper_fd() {
        Ok(c) => c,
        Err(_) => std::process::exit(125),
    };
    match exec_run(&mut ch) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let _ = ch.send(&FromHelper::Error(e));
            std::process::exit(125)
        }
    }
}

fn exec_run(ch: &mut Channel) -> Result<(), String> {
    let cfg = match ch.recv::<ToHelper>() {
        Ok(Some((ToHelper::Exec(cfg), _))) => cfg,
        _ => return Err("expected an exec configuration".into()),
    };
    if cfg.vsock_seccomp {
        crate::seccomp::deny_vsock().map_err(|e| e.to_string())?;
    }
    crate::sys::write_file(&cfg.cgroup.join("cgroup.procs"), &std::process::id().to_string())
        .map_err(|e| format!("joining the container's cgroup: {e}"))?;
    // Open every namespace first: /proc changes meaning once we are in the container's mount namespace.
    let mut fds = Vec::new();
    for ns in &cfg.namespaces {
        if !["user", "ipc", "uts", "net", "pid", "mnt", "cgroup", "time"].contains(&ns.as_str()) {
            return Err(format!("unknown namespace {ns}"));
        }
        let path = PathBuf::from(format!("/proc/{}/ns/{ns}", cfg.init_pid));
        let f = std::fs::File::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
        fds.push((ns.clone(), f));
    }
    for (ns, f) in &fds {
        // SAFETY: setns on an open namespace descriptor.
        cvt(unsafe { libc::setns(f.as_raw_fd(), 0) }).map_err(|e| format!("setns({ns}): {e}"))?;
    }
    drop(fds);
    let root = cpath(Path::new("/")).map_err(|e| e.to_string())?;
    // SAFETY: a valid C string.
    cvt(unsafe { libc::chdir(root.as_ptr()) }).map_err(|e| format!("chdir /: {e}"))?;
    let prepared = PreparedProcess::prepare(&cfg.process, cfg.seccomp.as_ref()).map_err(|e| e.to_string())?;
    let pty = if prepared.controlling_tty {
        Some(open_pty().map_err(|e| format!("allocating a pty: {e}"))?)
    } else {
        None
    };
    if let Some((_, slave)) = &pty {
        give_terminal(slave, &cfg.process);
    }
    let _ = std::fs::write(
        "/proc/self/oom_score_adj",
        cfg.process.oom_score_adj().unwrap_or(0).to_string(),
    );
    // SAFETY: fork-like clone from a single-threaded process; the child runs PreparedProcess::exec.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!("clone: {}", io::Error::last_os_error()));
    }
    if pid == 0 {
        if let Some((_, slave)) = &pty {
            attach_slave(slave.as_raw_fd());
        }
        let _ = prepared.exec();
        // SAFETY: leave the child.
        unsafe { libc::_exit(127) };
    }
    ch.send_with_fd(
        &FromHelper::Started { pid: pid as i32 },
        pty.as_ref().map(|(m, _)| m.as_raw_fd()),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}
