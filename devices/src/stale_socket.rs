//! Making room for a unix socket that hull is about to bind: a path may be taken over only when it holds a
//! *stale* socket, one that no process listens on any more. Paths come from API clients (the vsock
//! `uds_path`) and command lines, so this never removes a regular file, a directory, a symlink or a socket
//! that some process still serves; it tells the caller which of those it found instead.

use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why a path could not be made free for a new socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketPathError {
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another process is listening on {path}; refusing to take it over")]
    InUse { path: PathBuf },
    #[error("cannot tell whether {path} is still in use: {source}")]
    Probe { path: PathBuf, source: io::Error },
    #[error("cannot remove the stale socket {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
}

/// What a path holds, as far as binding a socket there goes.
#[derive(Debug, PartialEq, Eq)]
pub enum SocketPath {
    /// Nothing is there.
    Free,
    /// A socket nobody accepts connections on (its process is gone): it may be replaced.
    Stale,
    /// A socket that a process listens on.
    Live,
    /// Something other than a socket (a file, a directory, a symlink, ...).
    NotASocket,
}

/// Looks at `path` without changing it. A socket counts as stale only when connecting to it is refused.
pub fn probe(path: &Path) -> io::Result<SocketPath> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(SocketPath::Free),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Ok(SocketPath::NotASocket);
    }
    match UnixStream::connect(path) {
        Ok(_) => Ok(SocketPath::Live),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(SocketPath::Stale),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(SocketPath::Free),
        // A full backlog (EAGAIN) means a live listener too.
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(SocketPath::Live),
        Err(e) => Err(e),
    }
}

/// Removes `path` if it is a stale socket; succeeds if the path is free afterwards.
pub fn remove_if_stale(path: &Path) -> Result<(), SocketPathError> {
    let found = probe(path).map_err(|source| SocketPathError::Probe {
        path: path.to_path_buf(),
        source,
    })?;
    match found {
        SocketPath::Free => Ok(()),
        SocketPath::Stale => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SocketPathError::Remove {
                path: path.to_path_buf(),
                source,
            }),
        },
        SocketPath::Live => Err(SocketPathError::InUse {
            path: path.to_path_buf(),
        }),
        SocketPath::NotASocket => Err(SocketPathError::NotASocket {
            path: path.to_path_buf(),
        }),
    }
}

/// Mode of every socket file hull binds: owner-only.
pub const SOCKET_FILE_MODE: libc::mode_t = 0o600;

/// Binds and listens on a unix socket at `path` whose file is owner-only (0600) from the moment it exists,
/// whatever the umask: Linux creates the socket file with the socket's own mode (less the umask), which is
/// set with fchmod before bind. (`UnixListener::bind` gives 0777 less the umask.) The path must be free.
pub fn bind_owner_only(path: &Path) -> io::Result<UnixListener> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(ErrorKind::InvalidInput, "unusable unix socket path"));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(fd.as_raw_fd(), SOCKET_FILE_MODE) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } < 0 {
        let err = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(err);
    }
    Ok(UnixListener::from(fd))
}

/// A socket file this process bound. It is removed on drop, unless something else has replaced it
/// meanwhile (its device and inode no longer match): hull only ever deletes its own sockets.
#[derive(Debug)]
pub struct OwnedSocketPath {
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl OwnedSocketPath {
    /// Call right after binding `path`.
    pub fn new(path: &Path) -> OwnedSocketPath {
        OwnedSocketPath {
            path: path.to_path_buf(),
            identity: identity(path),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.file_type().is_socket().then(|| (meta.dev(), meta.ino()))
}

impl Drop for OwnedSocketPath {
    fn drop(&mut self) {
        if self.identity.is_some() && identity(&self.path) == self.identity {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a socket hull bound");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_socket_bound_owner_only_is_0600_and_serves() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-owner-only-socket").unwrap();
        let path = dir.as_path().join("s");
        let listener = bind_owner_only(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o600);
        let _client = UnixStream::connect(&path).unwrap();
        listener.accept().unwrap();
        assert!(bind_owner_only(&path).is_err(), "the path is taken");
    }

    #[test]
    fn only_a_stale_socket_is_removed() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-stale-socket").unwrap();
        let path = dir.as_path().join("s");
        assert_eq!(probe(&path).unwrap(), SocketPath::Free);
        remove_if_stale(&path).unwrap();

        let listener = UnixListener::bind(&path).unwrap();
        assert_eq!(probe(&path).unwrap(), SocketPath::Live);
        assert!(matches!(remove_if_stale(&path), Err(SocketPathError::InUse { .. })));
        assert!(path.exists());
        drop(listener);
        assert_eq!(probe(&path).unwrap(), SocketPath::Stale);
        remove_if_stale(&path).unwrap();
        assert!(!path.exists());

        std::fs::write(&path, "precious").unwrap();
        assert!(matches!(
            remove_if_stale(&path),
            Err(SocketPathError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        let link = dir.as_path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            remove_if_stale(&link),
            Err(SocketPathError::NotASocket { .. })
        ));
        assert!(link.exists());
    }

    #[test]
    fn an_owned_socket_is_removed_on_drop_unless_replaced() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-owned-socket").unwrap();
        let path = dir.as_path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        drop(OwnedSocketPath::new(&path));
        assert!(!path.exists());
        drop(listener);

        let _listener = UnixListener::bind(&path).unwrap();
        let owned = OwnedSocketPath::new(&path);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "someone else's").unwrap();
        drop(owned);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone else's");
    }
}
