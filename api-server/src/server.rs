//! The API socket and hull's main loop. One thread polls the listening socket, the open connections, the
//! termination signals and the guest's exit eventfd; requests are answered one at a time as they complete.
//!
//! Clients are untrusted, and the policy for them is the constants below:
//! - the socket file is created owner-only (0600) whatever the umask, before it accepts connections; a
//!   socket another process still serves is never taken over, and only a stale one is replaced;
//! - each connection buffers at most one maximal request in and [`MAX_PENDING_OUTPUT`] out: a client that
//!   does not read its answers is not read from either, so pipelining cannot grow hull's memory;
//! - a request must arrive whole, and pending answers must make progress, within [`STALL_TIMEOUT`]; an idle
//!   connection is closed after [`IDLE_TIMEOUT`]; with [`MAX_CONNECTIONS`] open, a new client replaces the
//!   connection that has been quiet longest, so silent clients can never lock the owner out;
//! - sockets are non-blocking, so one slow client never stalls the others, and a misbehaving one is
//!   answered 400 and closed.

use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use devices::stale_socket::{self, OwnedSocketPath, SocketPathError};
use vmm::ExitReason;

use crate::http::{self, Parsed, Response, MAX_REQUEST_SIZE};
use crate::instance::Instance;
use crate::routes;

/// Connections served at once; a new one beyond this replaces the one that has been quiet longest.
const MAX_CONNECTIONS: usize = 64;
/// Answers buffered for one connection before hull stops reading its further requests.
pub const MAX_PENDING_OUTPUT: usize = 64 * 1024;
/// How long a started request may take to arrive whole, and pending answers may go without progress.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection with nothing in flight stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("Cannot use {path} for the API socket: {source}")]
    SocketPath {
        path: PathBuf,
        #[source]
        source: SocketPathError,
    },
    #[error("Cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("Polling the API socket and the microVM failed: {0}")]
    Poll(io::Error),
    #[error("After the microVM started: {0}")]
    AfterStart(String),
}

/// The listening API socket. The socket file is removed when this is dropped, unless something else
/// has replaced it meanwhile.
pub struct ApiSocket {
    listener: UnixListener,
    path: OwnedSocketPath,
}

impl ApiSocket {
    /// Listens on `path` with mode 0600, replacing a stale socket left there by an earlier process. A live
    /// socket (another hull serving it) or anything that is not a socket is refused.
    pub fn bind(path: &Path) -> Result<ApiSocket, ServerError> {
        stale_socket::remove_if_stale(path).map_err(|source| ServerError::SocketPath {
            path: path.to_path_buf(),
            source,
        })?;
        let bind_error = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        // Owner-only from the moment the file exists, whatever the umask (the mode is set before bind).
        let listener = stale_socket::bind_owner_only(path).map_err(bind_error)?;
        listener.set_nonblocking(true).map_err(bind_error)?;
        Ok(ApiSocket {
            listener,
            path: OwnedSocketPath::new(path),
        })
    }

    pub fn path(&self) -> &Path {
        self.path.path()
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

/// Serves the API on `socket` (if any) until the guest ends or a termination signal arrives. `after_start`
/// runs once, on this thread, as soon as the VM is running (the `hull` binary narrows this thread's seccomp
/// filter there); if it fails, serving stops with that error.
pub fn run(
    instance: &mut Instance,
    socket: Option<&ApiSocket>,
    signals: &impl TerminationSignals,
    after_start: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Outcome, ServerError> {
    let mut connections: Vec<Connection> = Vec::new();
    let mut started = false;
    loop {
        if !started && instance.exit_fd().is_some() {
            started = true;
            after_start().map_err(ServerError::AfterStart)?;
        }
        // Fixed slots first: signals, guest exit, listener; then one per connection.
        let exit_fd = instance.exit_fd().unwrap_or(-1);
        let listener_fd = socket.map_or(-1, |s| s.listener.as_raw_fd());
        let mut fds = vec![pollfd(signals.as_raw_fd(), libc::POLLIN), pollfd(exit_fd, libc::POLLIN)];
        fds.push(pollfd(listener_fd, libc::POLLIN));
        fds.extend(connections.iter().map(|c| pollfd(c.stream.as_raw_fd(), c.interest())));

        let timeout = poll_timeout(&connections, Instant::now());
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs; negative fds are ignored by poll.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
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
        let now = Instant::now();
        connections.retain(|c| !c.finished() && !c.timed_out(now));

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

/// Milliseconds until the first connection deadline (rounded up), or -1 (no deadline) for `poll`.
fn poll_timeout(connections: &[Connection], now: Instant) -> libc::c_int {
    match connections.iter().map(Connection::deadline).min() {
        None => -1,
        Some(deadline) => {
            let wait = deadline.saturating_duration_since(now);
            wait.as_millis().saturating_add(1).min(libc::c_int::MAX as u128) as libc::c_int
        }
    }
}

fn accept_all(listener: &UnixListener, connections: &mut Vec<Connection>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if connections.len() >= MAX_CONNECTIONS {
                    // Quiet clients must not lock the others out: the longest-quiet one makes room.
                    if let Some(quietest) = (0..connections.len()).min_by_key(|&i| connections[i].last_activity) {
                        tracing::warn!(
                            limit = MAX_CONNECTIONS,
                            "too many API connections; closing the one quiet for longest"
                        );
                        connections.swap_remove(quietest);
                    }
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
    /// Last time bytes came in or went out.
    last_activity: Instant,
    /// When the first byte of the request being received arrived.
    request_started: Option<Instant>,
    /// Last time pending output made progress (or became pending).
    output_progress: Instant,
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
            last_activity: Instant::now(),
            request_started: None,
            output_progress: Instant::now(),
        }
    }

    /// Whether the connection may send more requests: not while its answers pile up unread.
    fn wants_input(&self) -> bool {
        !self.closing
            && !self.peer_done
            && self.input.len() < MAX_REQUEST_SIZE
            && self.output.len() < MAX_PENDING_OUTPUT
    }

    fn interest(&self) -> libc::c_short {
        let mut events = 0;
        if self.wants_input() {
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

    /// When this connection is closed unless something happens first.
    fn deadline(&self) -> Instant {
        if !self.output.is_empty() {
            self.output_progress + STALL_TIMEOUT
        } else if let Some(started) = self.request_started {
            started + STALL_TIMEOUT
        } else {
            self.last_activity + IDLE_TIMEOUT
        }
    }

    fn timed_out(&self, now: Instant) -> bool {
        let expired = now >= self.deadline();
        if expired {
            tracing::info!(
                pending_request = self.request_started.is_some(),
                pending_output = self.output.len(),
                "closing an API connection that stalled or stayed idle"
            );
        }
        expired
    }

    fn on_ready(&mut self, instance: &mut Instance, revents: libc::c_short) {
        if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            self.read_available();
        }
        // Answer and send until the client's socket is full or no complete request is left buffered
        // (requests may wait here while earlier answers were pending).
        loop {
            let answered = self.answer_complete_requests(instance);
            self.flush();
            if !answered || !self.output.is_empty() || self.closing {
                break;
            }
        }
    }

    fn read_available(&mut self) {
        let mut chunk = [0u8; 8192];
        while self.wants_input() {
            let room = (MAX_REQUEST_SIZE - self.input.len()).min(chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => {
                    self.peer_done = true;
                    return;
                }
                Ok(n) => {
                    self.input.extend_from_slice(&chunk[..n]);
                    self.last_activity = Instant::now();
                    self.request_started.get_or_insert(self.last_activity);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.drop_connection();
                    return;
                }
            }
        }
    }

    /// Answers the complete requests buffered, as long as the pending output has room; returns whether it
    /// answered any.
    fn answer_complete_requests(&mut self, instance: &mut Instance) -> bool {
        let mut answered = false;
        while !self.closing && self.output.len() < MAX_PENDING_OUTPUT {
            match http::parse_request(&self.input) {
                Ok(Parsed::Complete(request, used)) => {
                    self.input.drain(..used);
                    self.continue_sent = false;
                    // The next request's clock starts with its first byte, which may already be here.
                    self.request_started = (!self.input.is_empty()).then(Instant::now);
                    let response = routes::handle(instance, &request);
                    self.queue_output(&response.to_bytes(request.keep_alive));
                    self.closing = !request.keep_alive;
                    answered = true;
                }
                Ok(Parsed::Incomplete { expects_continue }) => {
                    if expects_continue && !self.continue_sent {
                        self.queue_output(http::CONTINUE);
                        self.continue_sent = true;
                    }
                    return answered;
                }
                Err(e) => {
                    tracing::info!(error = %e, "malformed API request; closing the connection");
                    self.queue_output(&Response::fault(400, &e.to_string()).to_bytes(false));
                    self.input.clear();
                    self.request_started = None;
                    self.closing = true;
                }
            }
        }
        answered
    }

    fn queue_output(&mut self, bytes: &[u8]) {
        if self.output.is_empty() {
            self.output_progress = Instant::now();
        }
        self.output.extend_from_slice(bytes);
    }

    fn flush(&mut self) {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return self.drop_connection(),
                Ok(n) => {
                    self.output.drain(..n);
                    self.output_progress = Instant::now();
                    self.last_activity = self.output_progress;
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
        self.request_started = None;
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

        let socket = ApiSocket::bind(&path).unwrap();
        assert!(matches!(
            ApiSocket::bind(&path),
            Err(ServerError::SocketPath {
                source: SocketPathError::InUse { .. },
                ..
            })
        ));
        assert!(UnixStream::connect(&path).is_ok(), "the first socket keeps serving");
        drop(socket);

        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(
            ApiSocket::bind(&path),
            Err(ServerError::SocketPath {
                source: SocketPathError::NotASocket { .. },
                ..
            })
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_client_that_does_not_read_is_not_read_from() {
        let (server, mut client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut instance = Instance::new("x".into(), VmmOptions::default());
        let mut conn = Connection::new(server);
        let request = b"GET /machine-config HTTP/1.1\r\n\r\n";
        let mut sent = 0usize;
        for _ in 0..2000 {
            // Fill the client->server direction as far as it goes; never read the answers.
            while let Ok(n) = client.write(request) {
                sent += n;
                if n < request.len() {
                    break;
                }
            }
            conn.on_ready(&mut instance, libc::POLLIN | libc::POLLOUT);
            assert!(
                conn.output.len() < MAX_PENDING_OUTPUT + 4096,
                "output grew to {}",
                conn.output.len()
            );
            assert!(conn.input.len() <= MAX_REQUEST_SIZE);
        }
        assert!(
            conn.interest() & libc::POLLIN == 0,
            "still reading from a client that does not read"
        );
        assert!(sent > 0);
        assert!(!conn.finished());
        assert!(conn.deadline() <= Instant::now() + STALL_TIMEOUT);
    }

    #[test]
    fn a_half_sent_request_times_out_and_an_idle_connection_later() {
        let (server, mut client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut instance = Instance::new("x".into(), VmmOptions::default());
        let mut conn = Connection::new(server);
        let start = Instant::now();
        assert!(!conn.timed_out(start + IDLE_TIMEOUT - Duration::from_millis(100)));
        assert!(conn.timed_out(start + IDLE_TIMEOUT + Duration::from_millis(100)));
        client.write_all(b"GET / HT").unwrap();
        conn.on_ready(&mut instance, libc::POLLIN);
        let now = Instant::now();
        assert!(conn.timed_out(now + STALL_TIMEOUT + Duration::from_millis(100)));
        assert_eq!(poll_timeout(&[], now), -1);
        assert!(poll_timeout(std::slice::from_ref(&conn), now) <= STALL_TIMEOUT.as_millis() as i32 + 1);
    }
}
