//! Thin, checked wrappers over the libc calls the agent makes: every return code becomes an
//! `io::Result`, every path becomes a `CString` (a path with a NUL byte is an error, never a panic).

use std::ffi::CString;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;

/// `rc == -1` → the current errno.
pub fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub fn cstr(s: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(s.as_ref()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string holds a NUL byte"))
}

pub fn cpath(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_encoded_bytes())
}

/// mount(2); `None` becomes a null pointer.
pub fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cpath(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.filter(|d| !d.is_empty()).map(cstr).transpose()?;
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    cvt(unsafe { libc::mount(p(&source), target.as_ptr(), p(&fstype), flags, p(&data).cast()) }).map(drop)
}

pub fn umount_detach(target: &Path) -> io::Result<()> {
    let t = cpath(target)?;
    // SAFETY: `t` is a valid C string for the call's duration.
    cvt(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// A pipe whose both ends are close-on-exec: (read, write).
pub fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` is a two-element array pipe2 fills.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) })
}

pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor number; a bad number is EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) }).map(drop)
}

pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes no pointers.
    cvt(unsafe { libc::kill(pid, signal) }).map(drop)
}

/// Writes a whole file (cgroup and proc files want one write).
pub fn write_file(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("writing {value:?} to {}: {e}", path.display())))
}

/// Unblocks every signal and puts every handler back to the default; run in a child before exec.
pub fn reset_signals() {
    // SAFETY: a local, zeroed signal set; sigprocmask and signal take plain values.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Decoded wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitStatus {
    /// Exit code, or -1 when a signal ended the process.
    pub code: i32,
    /// The signal that ended the process, or 0.
    pub signal: i32,
}

impl ExitStatus {
    pub fn from_wait(status: libc::c_int) -> ExitStatus {
        if libc::WIFSIGNALED(status) {
            ExitStatus {
                code: -1,
                signal: libc::WTERMSIG(status),
            }
        } else {
            ExitStatus {
                code: libc::WEXITSTATUS(status),
                signal: 0,
            }
        }
    }
}
