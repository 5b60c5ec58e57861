//! Ownership of everything a run creates on the host, so that nothing outlives it: child processes
//! (SIGKILL by PID and reaped on drop; started with PR_SET_PDEATHSIG so they die with their parent even if it
//! is killed with SIGKILL — the signal follows the *thread* that spawned them, so long-lived callers spawn
//! from a thread that lives as long as the process) and the run directory (removed on drop, with the sockets
//! and images inside).
//!
//! Everything a run makes is private to the user running it, whatever the caller's umask: directories are
//! created 0700 and files 0600 ([`create_private_dir`], [`create_private_file`]), and child processes start
//! with umask 077, so what they create (QEMU's console file, the sockets of hull's device backends and VMM)
//! is owner-only from the moment it exists. Images of volumes can hold Kubernetes Secrets and tokens.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Mode of every directory a run creates: owner-only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file a run creates: owner-only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// The umask of every child process: what they create is owner-only too.
const CHILD_UMASK: libc::mode_t = 0o077;

/// Creates the directory `path` with mode 0700 (the umask can only take bits away). With `recursive`, the
/// missing parents too, each 0700; directories that exist already keep their mode.
pub fn create_private_dir(path: &Path, recursive: bool) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(recursive)
        .mode(PRIVATE_DIR_MODE)
        .create(path)
}

/// Creates the file `path` for writing with mode 0600; a file already there (left by a killed run) is
/// replaced, never reused with its old mode.
pub fn create_private_file(path: &Path) -> std::io::Result<File> {
    let open = || {
        File::options()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

/// Makes `cmd` start with umask 077, for children that create files (`mkfs.ext4` writing an image).
pub fn private_umask(cmd: &mut Command) -> &mut Command {
    // SAFETY: umask(2) is async-signal-safe and cannot fail.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(CHILD_UMASK);
            Ok(())
        })
    }
}

/// A child process that is killed and reaped when dropped.
pub struct ChildGuard {
    pub name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd` in its own process group (a terminal's Ctrl-C reaches hull only), with stdout and stderr
    /// appended to `log` (created 0600), umask 077, and the parent-death signal set to SIGKILL; inside the
    /// network namespace `netns` (a path like /var/run/netns/NAME) when one is given.
    pub fn spawn(name: &str, cmd: Command, log: &Path, netns: Option<&Path>) -> std::io::Result<ChildGuard> {
        Self::spawn_as(name, cmd, log, netns, None)
    }

    /// [`ChildGuard::spawn`], and with `user` (uid, gid) the process drops to them just before exec, after
    /// everything that needs root (the namespace, the caller's own pre-exec steps such as joining cgroups):
    /// no supplementary groups, real, effective and saved ids changed, the parent-death signal set again
    /// (a credential change clears it).
    pub fn spawn_as(
        name: &str,
        mut cmd: Command,
        log: &Path,
        netns: Option<&Path>,
        user: Option<(u32, u32)>,
    ) -> std::io::Result<ChildGuard> {
        let out = File::options()
            .create(true)
            .append(true)
            .mode(PRIVATE_FILE_MODE)
            .open(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let ns = netns.map(File::open).transpose()?;
        // SAFETY: umask, prctl(PR_SET_PDEATHSIG) and setns are async-signal-safe and touch no memory of the
        // parent but the namespace file descriptor, which stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(CHILD_UMASK);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(ns) = &ns {
                    use std::os::fd::AsRawFd;
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some((uid, gid)) = user {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setresgid(gid, gid, gid) != 0
                        || libc::setresuid(uid, uid, uid) != 0
                        || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        tracing::debug!(name, pid = child.id(), "started");
        Ok(ChildGuard {
            name: name.to_string(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Whether the process has ended (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(Some(_))) | None)
    }

    /// Waits up to `timeout` for the process to end by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.exited()
    }

    /// Sends SIGKILL without waiting for the process to end ([`ChildGuard::kill`] reaps it), so that several
    /// processes can be ended at once.
    pub fn start_kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            tracing::debug!(name = %self.name, pid = c.id(), "stopping");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The run's private directory; removed with everything in it on drop.
pub struct RunDir(PathBuf);

impl RunDir {
    /// A fresh directory under `$XDG_RUNTIME_DIR` (else the temp dir); directories of runs whose process is
    /// gone are swept first.
    pub fn create() -> std::io::Result<RunDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        Self::create_in(&base)
    }

    /// A fresh directory `hull-run-<pid>-<nanos>` (mode 0700) under `base`, after sweeping those of dead
    /// processes.
    pub fn create_in(base: &Path) -> std::io::Result<RunDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        sweep_stale(base);
        let dir = base.join(format!("hull-run-{}-{nanos:x}", std::process::id()));
        create_private_dir(&dir, false)?;
        Ok(RunDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::env::var_os("HULL_RUN_KEEP").is_some() {
            eprintln!("hull run: keeping {} (HULL_RUN_KEEP)", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes run directories of `hull run` processes that no longer exist (killed with SIGKILL, which no
/// clean-up survives; their children died with them through PR_SET_PDEATHSIG).
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hull-run-"))
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else { continue };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && e.path().is_dir() {
            tracing::info!(dir = %e.path().display(), "removing the run directory of a hull run that was killed");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Waits until a unix socket at `path` accepts a connection, or the child ends, or `timeout` passes. The
/// file exists from the server's `bind`, a moment before its `listen`: a client that connects as soon as it
/// sees the file can be refused (seen under load), so only a connection says the server is up. The probe
/// connection is closed at once (hull's API server reads it to its end); not for sockets that serve one
/// client only (vhost-user backends: [`wait_for_path`]).
pub fn wait_for_listener(path: &Path, child: &mut ChildGuard, timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return true;
        }
        if child.exited() || start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until `path` exists or the child ends or `timeout` passes.
pub fn wait_for_path(path: &Path, child: &mut ChildGuard, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if path.exists() {
            return true;
        }
        if child.exited() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    path.exists()
}
