//! The unix-socket side of Firecracker's hybrid vsock protocol: the `CONNECT <port>\n` line a host process
//! sends after connecting to `uds_path`, a connect that never blocks (for guest-initiated connections to
//! `<uds_path>_<port>`), and a send that never raises SIGPIPE.
//!
//! Never trusts: host peers. The `CONNECT` line is at most `MAX_CONNECT_LINE` bytes, read one byte at a
//! time (so no connection data is consumed), and parsed strictly.

use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Longest accepted `CONNECT <port>\n` line.
pub const MAX_CONNECT_LINE: usize = 32;

/// Errors setting up the host side of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum UnixBackendError {
    #[error("binding vsock host socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating the vsock epoll: {0}")]
    Epoll(#[source] io::Error),
    /// `uds_path` names something hull must not replace: a file, or a socket another process serves.
    #[error("vsock uds_path: {0}")]
    UdsPath(#[from] crate::stale_socket::SocketPathError),
}

/// A host stream that connected to `uds_path` and has not finished its `CONNECT` line.
pub struct Handshake {
    pub stream: UnixStream,
    line: Vec<u8>,
}

impl Handshake {
    pub fn new(stream: UnixStream) -> Self {
        Handshake {
            stream,
            line: Vec::new(),
        }
    }

    /// Reads what has arrived of the line: `None` while it is incomplete, then the guest port asked for,
    /// or why the handshake is refused.
    pub fn read_line(&mut self) -> Option<Result<u32, &'static str>> {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return Some(Err("closed before CONNECT")),
                Ok(_) if byte[0] == b'\n' => return Some(parse_connect(&self.line)),
                Ok(_) => {
                    self.line.push(byte[0]);
                    if self.line.len() > MAX_CONNECT_LINE {
                        return Some(Err("CONNECT line too long"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Some(Err("read error")),
            }
        }
    }
}

/// Connects without ever blocking: a host listener whose backlog is full makes `connect(2)` on a
/// blocking unix socket wait, and a guest must not be able to stall the device that way. A full
/// backlog (`EAGAIN`) counts as refused.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::FromRawFd;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zero is a valid initial value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2) call; the fd is wrapped right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len()) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un and `len` covers the family and the path.
    let rc = unsafe { libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// `send(2)` with `MSG_NOSIGNAL`: a host peer that closed its socket must not raise SIGPIPE in hull.
pub fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid slice for the duration of the call; the fd is owned by `stream`.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Parses `CONNECT <port>` (without the newline).
fn parse_connect(line: &[u8]) -> Result<u32, &'static str> {
    let text = std::str::from_utf8(line).map_err(|_| "CONNECT line is not UTF-8")?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ").ok_or("expected CONNECT <port>")?;
    port.trim().parse::<u32>().map_err(|_| "bad port in CONNECT line")
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn connect_to_full_backlog_fails_instead_of_blocking() {
        let dir = std::env::temp_dir().join(format!("hull-vsock-backlog-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("l");
        let _ = std::fs::remove_file(&path);
        let _listener = UnixListener::bind(&path).unwrap();
        let mut held = Vec::new();
        let refused = (0..10_000).any(|_| match connect_nonblocking(&path) {
            Ok(s) => {
                held.push(s);
                false
            }
            Err(_) => true,
        });
        assert!(refused, "the backlog never filled");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn connect_line_parsing_is_strict() {
        assert_eq!(parse_connect(b"CONNECT 52"), Ok(52));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Ok(52));
        assert!(parse_connect(b"CONNECT -1").is_err());
        assert!(parse_connect(b"CONNECT 99999999999").is_err());
        assert!(parse_connect(b"connect 5").is_err());
        assert!(parse_connect(&[0xff, 0xfe]).is_err());
    }
}
