//! The API socket and hull's main loop. One thread polls the listening socket, the open connections, the
//! termination signals and the guest's exit eventfd; requests are answered one at a time as they complete.
//! Clients are untrusted: each connection buffers at most one maximal request, sockets are non-blocking
//! so a slow or silent client cannot stall the loop, and a misbehaving one is answered 400 and closed.

use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm::ExitReason;

use crate::http::{self, Parsed, Response, MAX_REQUEST_SIZE};
use crate::instance::Instance;
use crate::routes;

/// Connections served at once; more are accepted and closed at once.
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("Cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("Cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("Polling the API socket and the microVM failed: {0}")]
    Poll(io::Error),
}

/// The listening API socket. The socket file is removed when this is dropped, unless something else
/// has replaced it meanwhile.
pub struct ApiSocket {
    listener: UnixListener,
    path: PathBuf,
    identity: (u64, u64),
}

impl ApiSocket {
    /// Listens on `path`, replacing a stale socket left there by an earlier process.
    pub fn bind(path: &Path) -> Result<ApiSocket, ServerError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let bind_error = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        let meta = std::fs::symlink_metadata(path).map_err(bind_error)?;
        Ok(ApiSocket {
            listener,
            path: path.to_path_buf(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the API socket");
            }
        }
    }
}

/// Why the main loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    GuestExited(ExitReason),
    Signal(i32),
}

impl Outcome {
    /// The process exit status: the guest's (0 for a reset), or 128 + the signal number.
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::GuestExited(reason) => reason.exit_code(),
            Outcome::Signal(signal) => 128 + signal,
        }
    }
}

/// Where the main loop learns that hull must stop: a descriptor that is readable while a termination signal
/// is pending (the `hull` binary uses a signalfd), and a way to take that signal.
pub trait TerminationSignals: AsRawFd {
    /// The number of a pending termination signal, if any; it is consumed.
    fn take(&self) -> Option<i32>;
}

/// Serves the API on `socket` (if any) until the guest ends or a termination signal arrives.
pub fn run(
    instance: &mut Instance,
    socket: Option<&ApiSocket>,
    signals: &impl TerminationSignals,
) -> Result<Outcome, ServerError> {
    let mut connections: Vec<Connection> = Vec::new();
    loop {
        // Fixed slots first: signals, guest exit, listener; then one per connection.
        let exit_fd = instance.exit_fd().unwrap_or(-1);
        let listener_fd = socket.map_or(-1, |s| s.listener.as_raw_fd());
        let mut fds = vec![pollfd(signals.as_raw_fd(), libc::POLLIN), pollfd(exit_fd, libc::POLLIN)];
        fds.push(pollfd(listener_fd, libc::POLLIN));
        fds.extend(connections.iter().map(|c| pollfd(c.stream.as_raw_fd(), c.interest())));

        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs; negative fds are ignored by poll.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(ServerError::Poll(err));
        }

        for (conn, fd) in connections.iter_mut().zip(&fds[3..]) {
            if fd.revents != 0 {
                conn.on_ready(instance, fd.revents);
            }
        }
        connections.retain(|c| !c.finished());

        if fds[2].revents != 0 {
            if let Some(socket) = socket {
                accept_all(&socket.listener, &mut connections);
            }
        }
        if fds[0].revents != 0 {
            if let Some(signal) = signals.take() {
                tracing::info!(signal, "termination signal received, shutting down");
                return Ok(Outcome::Signal(signal));
            }
        }
        if fds[1].revents != 0 {
            if let Some(reason) = instance.exit_reason() {
                tracing::info!(?reason, exit_code = reason.exit_code(), "the guest has ended");
                return Ok(Outcome::GuestExited(reason));
            }
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

fn accept_all(listener: &UnixListener, connections: &mut Vec<Connection>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if connections.len() >= MAX_CONNECTIONS {
                    tracing::warn!(limit = MAX_CONNECTIONS, "too many API connections; closing a new one");
                    continue;
                }
                if let Err(e) = stream.set_nonblocking(true) {
                    tracing::warn!(error = %e, "cannot make an API connection non-blocking; closing it");
                    continue;
                }
                connections.push(Connection::new(stream));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // Typically out of file descriptors; back off instead of spinning on a readable listener.
                tracing::warn!(error = %e, "cannot accept an API connection");
                std::thread::sleep(Duration::from_millis(10));
                return;
            }
        }
    }
}

/// One client connection: bytes in, complete requests answered in order, bytes out.
struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// No more requests are read; the connection closes once `output` is sent.
    closing: bool,
    /// The client closed its side.
    peer_done: bool,
    /// `100 Continue` was sent for the request being received.
    continue_sent: bool,
}

impl Connection {
    fn new(stream: UnixStream) -> Connection {
        Connection {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            closing: false,
            peer_done: false,
            continue_sent: false,
        }
    }

    fn interest(&self) -> libc::c_short {
        let mut events = 0;
        if !self.closing && !self.peer_done && self.input.len() < MAX_REQUEST_SIZE {
            events |= libc::POLLIN;
        }
        if !self.output.is_empty() {
            events |= libc::POLLOUT;
        }
        events
    }

    fn finished(&self) -> bool {
        self.output.is_empty() && (self.closing || self.peer_done)
    }

    fn on_ready(&mut self, instance: &mut Instance, revents: libc::c_short) {
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read_available();
            self.answer_complete_requests(instance);
        }
        self.flush();
    }

    fn read_available(&mut self) {
        let mut chunk = [0u8; 8192];
        while !self.closing && self.input.len() < MAX_REQUEST_SIZE {
            let room = (MAX_REQUEST_SIZE - self.input.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => {
                    self.peer_done = true;
                    return;
                }
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_connection();
                    return;
                }
            }
        }
    }

    fn answer_complete_requests(&mut self, instance: &mut Instance) {
        while !self.closing {
            match http::parse_request(&self.input) {
                Ok(Parsed::Complete(request, used)) => {
                    self.input.drain(..used);
                    self.continue_sent = false;
                    let response = routes::handle(instance, &request);
                    self.output.extend_from_slice(&response.to_bytes(request.keep_alive));
                    self.closing = !request.keep_alive;
                }
                Ok(Parsed::Incomplete { expects_continue }) => {
                    if expects_continue && !self.continue_sent {
                        self.output.extend_from_slice(http::CONTINUE);
                        self.continue_sent = true;
                    }
                    return;
                }
                Err(e) => {
                    tracing::info!(error = %e, "malformed API request; closing the connection");
                    self.output
                        .extend_from_slice(&Response::fault(400, &e.to_string()).to_bytes(false));
                    self.input.clear();
                    self.closing = true;
                }
            }
        }
    }

    fn flush(&mut self) {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return self.drop_connection(),
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_connection(),
            }
        }
    }

    fn drop_connection(&mut self) {
        self.output.clear();
        self.input.clear();
        self.closing = true;
    }
}

#[cfg(test)]
mod tests {
    use vmm::VmmOptions;

    use super::*;

    fn exchange(conn: &mut Connection, client: &mut UnixStream, instance: &mut Instance, data: &[u8]) -> String {
        client.write_all(data).unwrap();
        conn.on_ready(instance, libc::POLLIN);
        let mut buf = vec![0u8; 65536];
        let n = client.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn keep_alive_serves_several_requests_then_close_ends_it() {
        let (server, mut client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut instance = Instance::new("x".into(), VmmOptions::default());
        let mut conn = Connection::new(server);

        let answer = exchange(&mut conn, &mut client, &mut instance, b"GET / HTTP/1.1\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 200 OK") && answer.contains("Not started"),
            "{answer}"
        );
        assert!(!conn.finished());

        // A request split over two reads, with 100-continue.
        let body = br#"{"vcpu_count":2,"mem_size_mib":256}"#;
        let head = format!(
            "PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let answer = exchange(&mut conn, &mut client, &mut instance, head.as_bytes());
        assert_eq!(answer, "HTTP/1.1 100 Continue\r\n\r\n");
        let answer = exchange(&mut conn, &mut client, &mut instance, body);
        assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
        assert_eq!(instance.machine_config().vcpu_count, 2);

        let answer = exchange(
            &mut conn,
            &mut client,
            &mut instance,
            b"GET /version HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(conn.finished());
    }

    #[test]
    fn garbage_is_answered_400_and_closed() {
        let (server, mut client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut instance = Instance::new("x".into(), VmmOptions::default());
        let mut conn = Connection::new(server);
        let answer = exchange(&mut conn, &mut client, &mut instance, b"\x16\x03\x01 hello\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 400") && answer.contains("fault_message"),
            "{answer}"
        );
        assert!(conn.finished());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_removed_on_drop_but_a_file_is_not() {
        let dir = std::env::temp_dir().join(format!("hull-server-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        let socket = ApiSocket::bind(&path).unwrap();
        assert!(path.exists());
        drop(socket);
        assert!(!path.exists());

        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(ApiSocket::bind(&path), Err(ServerError::NotASocket { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
