//! Firecracker's hybrid vsock backend: guest vsock streams bridged to host unix sockets.
//!
//! * Host → guest: a host process connects to `uds_path` and writes `CONNECT <port>\n`; we send the guest
//!   a REQUEST to `<port>` from a fresh host port H, and on the guest's RESPONSE write `OK <H>\n` back;
//!   from then on the unix stream carries the connection's bytes.
//! * Guest → host: a guest REQUEST to host port P connects to the unix socket `<uds_path>_<P>`.
//!
//! Flow control is virtio-vsock credit: we never send the guest more than it advertised
//! (`buf_alloc - (rx_cnt - fwd_cnt)`), and advertise `CONN_BUF_ALLOC` bytes ourselves, buffering what the
//! host peer has not read yet; a guest that overruns our credit gets RST. Nothing blocks: every socket is
//! non-blocking, and interest in a socket's readiness is registered only while we can act on it (so a
//! starved RX queue or an exhausted credit never makes the event loop spin).
//!
//! Never trusts: guest headers (cids, ports, ops, counters, lengths) or host peers (the `CONNECT` line is
//! at most `MAX_CONNECT_LINE` bytes and parsed strictly). Connection count is bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::backend::VsockBackend;
use super::metrics::VsockMetrics;
use super::packet::*;
use super::{HOST_CID, TYPE_STREAM};

/// Bytes we buffer per connection for the host peer (our advertised `buf_alloc`).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Forwarded bytes after which we volunteer a CREDIT_UPDATE.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;
/// Longest accepted `CONNECT <port>\n` line.
pub const MAX_CONNECT_LINE: usize = 32;
/// Most simultaneous connections (plus handshakes in progress).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most queued RSTs for packets that named no connection.
const MAX_PENDING_RST: usize = 256;
/// First host port handed out for host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const LISTENER_TOKEN: u64 = 0;

/// Errors setting up the backend.
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
}

/// (host port, guest port)
type ConnKey = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated: REQUEST sent (or to send), waiting for the guest's RESPONSE.
    LocalInit,
    Established,
}

struct Conn {
    stream: UnixStream,
    token: u64,
    key: ConnKey,
    state: ConnState,
    /// Events currently registered with epoll (empty = not registered).
    registered: EventSet,
    /// The stream polled readable and has not returned WouldBlock since.
    rx_ready: bool,
    /// The host peer closed its write side (we told the guest with SHUTDOWN(SEND)).
    host_eof: bool,
    /// Guest → host bytes not yet written to the stream.
    tx_buf: VecDeque<u8>,
    /// Bytes of guest data written to the stream (what we report as `fwd_cnt`).
    fwd_cnt: u32,
    /// `fwd_cnt` in the last packet the guest got from us.
    fwd_cnt_sent: u32,
    /// Host → guest bytes sent.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Guest's SHUTDOWN flags so far.
    peer_shutdown: u32,
    // Control packets owed to the guest.
    need_request: bool,
    need_response: bool,
    need_shutdown: bool,
    need_credit_update: bool,
    need_credit_request: bool,
    need_rst: bool,
    /// The stream's write side was shut down after the guest's SHUTDOWN(SEND).
    write_shut: bool,
}

impl Conn {
    fn new(stream: UnixStream, token: u64, key: ConnKey, state: ConnState) -> Self {
        Conn {
            stream,
            token,
            key,
            state,
            registered: EventSet::empty(),
            rx_ready: false,
            host_eof: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            peer_shutdown: 0,
            need_request: false,
            need_response: false,
            need_shutdown: false,
            need_credit_update: false,
            need_credit_request: false,
            need_rst: false,
            write_shut: false,
        }
    }

    /// Bytes the guest can still take from us.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_send_data(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    /// Whether `next_rx` could produce something right now.
    fn wants_rx(&self) -> bool {
        self.need_rst
            || self.need_request
            || self.need_response
            || self.need_shutdown
            || self.need_credit_update
            || self.need_credit_request
            || (self.rx_ready && self.can_send_data())
    }

    /// What epoll should watch for this connection.
    fn desired_events(&self) -> EventSet {
        let mut ev = EventSet::empty();
        if self.state == ConnState::Established
            && !self.rx_ready
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
        {
            ev |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            ev |= EventSet::OUT;
        }
        ev
    }

    fn header(&mut self, guest_cid: u64, op: u16) -> PacketHeader {
        self.fwd_cnt_sent = self.fwd_cnt;
        self.need_credit_update = false;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.key.0,
            dst_port: self.key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Writes buffered guest data to the host peer. Returns false if the stream failed.
    fn flush_tx(&mut self) -> bool {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match send_nosignal(&self.stream, front) {
                Ok(0) => return false,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.need_credit_update = true;
        }
        if self.tx_buf.is_empty() && self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.write_shut {
            let _ = self.stream.shutdown(Shutdown::Write);
            self.write_shut = true;
        }
        if self.tx_buf.is_empty() && self.peer_shutdown == SHUTDOWN_RCV | SHUTDOWN_SEND {
            // The guest closed both directions and everything it sent is delivered: finish with RST.
            self.need_rst = true;
        }
        true
    }
}

/// A host stream that connected to `uds_path` and has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The hybrid unix-socket vsock backend.
pub struct HybridUnixBackend {
    guest_cid: u64,
    uds_path: PathBuf,
    epoll: Epoll,
    listener: UnixListener,
    conns: HashMap<ConnKey, Conn>,
    tokens: HashMap<u64, ConnKey>,
    handshakes: HashMap<u64, Handshake>,
    next_token: u64,
    next_local_port: u32,
    local_ports: HashSet<u32>,
    /// Connections that may have packets for the guest, in service order.
    rx_order: VecDeque<ConnKey>,
    /// Replies (RST) to packets that named no connection.
    pending_rst: VecDeque<PacketHeader>,
    metrics: Arc<VsockMetrics>,
}

impl HybridUnixBackend {
    /// Binds `uds_path` (replacing a stale socket) for host-initiated connections.
    pub fn new(guest_cid: u64, uds_path: &Path, metrics: Arc<VsockMetrics>) -> Result<Self, UnixBackendError> {
        let _ = std::fs::remove_file(uds_path);
        let listener = UnixListener::bind(uds_path).map_err(|source| UnixBackendError::Bind {
            path: uds_path.to_owned(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| UnixBackendError::Bind {
                path: uds_path.to_owned(),
                source,
            })?;
        let epoll = Epoll::new().map_err(UnixBackendError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(UnixBackendError::Epoll)?;
        Ok(HybridUnixBackend {
            guest_cid,
            uds_path: uds_path.to_owned(),
            epoll,
            listener,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            handshakes: HashMap::new(),
            next_token: LISTENER_TOKEN + 1,
            next_local_port: FIRST_LOCAL_PORT,
            local_ports: HashSet::new(),
            rx_order: VecDeque::new(),
            pending_rst: VecDeque::new(),
            metrics,
        })
    }

    /// Number of open connections (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn alloc_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..(MAX_CONNECTIONS * 2) {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.local_ports.contains(&p) {
                return Some(p);
            }
        }
        None
    }

    fn queue_rst(&mut self, hdr: &PacketHeader) {
        if hdr.op == OP_RST || self.pending_rst.len() >= MAX_PENDING_RST {
            return;
        }
        let mut rst = PacketHeader::reply_to(hdr, OP_RST);
        rst.dst_cid = self.guest_cid;
        self.pending_rst.push_back(rst);
    }

    /// Brings the epoll registration of `key` in line with what the connection needs.
    fn sync_interest(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        let want = conn.desired_events();
        if want == conn.registered {
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let res = if want.is_empty() {
            // Deregister rather than watch nothing: HUP/ERR are reported regardless of interest.
            self.epoll.ctl(
                ControlOperation::Delete,
                fd,
                EpollEvent::new(conn.registered, conn.token),
            )
        } else if conn.registered.is_empty() {
            self.epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(want, conn.token))
        } else {
            self.epoll
                .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, conn.token))
        };
        match res {
            Ok(()) => conn.registered = want,
            Err(e) => {
                warn!(host_port = key.0, guest_port = key.1, error = %e, "vsock epoll update failed");
                conn.need_rst = true;
            }
        }
    }

    /// Marks `key` as having something for the guest (if it does).
    fn schedule(&mut self, key: ConnKey) {
        if self.conns.get(&key).is_some_and(|c| c.wants_rx()) && !self.rx_order.contains(&key) {
            self.rx_order.push_back(key);
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            if !conn.registered.is_empty() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    conn.stream.as_raw_fd(),
                    EpollEvent::new(conn.registered, conn.token),
                );
            }
            self.tokens.remove(&conn.token);
            self.local_ports.remove(&key.0);
            self.metrics.conns_closed.inc();
            debug!(host_port = key.0, guest_port = key.1, "vsock connection closed");
        }
        self.rx_order.retain(|k| *k != key);
    }

    fn add_conn(&mut self, conn: Conn) {
        let key = conn.key;
        self.tokens.insert(conn.token, key);
        self.local_ports.insert(key.0);
        self.conns.insert(key, conn);
        self.metrics.conns_opened.inc();
        self.sync_interest(key);
        self.schedule(key);
    }

    /// Guest REQUEST to host port `hdr.dst_port`: connect to `<uds_path>_<port>`.
    fn guest_connect(&mut self, hdr: &PacketHeader) {
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            warn!(port = hdr.dst_port, "vsock connection limit reached");
            self.queue_rst(hdr);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(_) => {
                debug!(port = hdr.dst_port, path = ?path, "no host listener for guest connection");
                self.queue_rst(hdr);
                return;
            }
        };
        let token = self.alloc_token();
        let mut conn = Conn::new(stream, token, (hdr.dst_port, hdr.src_port), ConnState::Established);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        conn.need_response = true;
        info!(
            host_port = hdr.dst_port,
            guest_port = hdr.src_port,
            "guest connected to host"
        );
        self.add_conn(conn);
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        warn!("vsock connection limit reached; dropping host connection");
                        continue;
                    }
                    let token = self.alloc_token();
                    if self
                        .epoll
                        .ctl(
                            ControlOperation::Add,
                            stream.as_raw_fd(),
                            EpollEvent::new(EventSet::IN, token),
                        )
                        .is_ok()
                    {
                        self.handshakes.insert(
                            token,
                            Handshake {
                                stream,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time (so no connection data is consumed).
    fn advance_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut done: Option<Result<u32, &'static str>> = None;
        let mut byte = [0u8; 1];
        loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => {
                    done = Some(Err("closed before CONNECT"));
                    break;
                }
                Ok(_) if byte[0] == b'\n' => {
                    done = Some(parse_connect(&hs.line));
                    break;
                }
                Ok(_) => {
                    hs.line.push(byte[0]);
                    if hs.line.len() > MAX_CONNECT_LINE {
                        done = Some(Err("CONNECT line too long"));
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    done = Some(Err("read error"));
                    break;
                }
            }
        }
        let Some(outcome) = done else { return };
        let Some(hs) = self.handshakes.remove(&token) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            hs.stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        );
        let port = match outcome {
            Ok(p) => p,
            Err(reason) => {
                debug!(reason, "vsock host handshake refused");
                return;
            }
        };
        let Some(local) = self.alloc_local_port() else {
            warn!("no free vsock host port");
            return;
        };
        let mut conn = Conn::new(hs.stream, token, (local, port), ConnState::LocalInit);
        conn.need_request = true;
        info!(host_port = local, guest_port = port, "host connecting to guest");
        self.add_conn(conn);
    }

    fn conn_event(&mut self, token: u64, events: EventSet) {
        let Some(&key) = self.tokens.get(&token) else { return };
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
            conn.rx_ready = true;
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR)
            && !conn.tx_buf.is_empty()
            && !conn.flush_tx()
        {
            conn.need_rst = true;
            conn.tx_buf.clear();
        }
        self.sync_interest(key);
        self.schedule(key);
    }

    /// Produces the next packet of `key`, if any. Removes the connection after its RST.
    fn conn_next_rx(&mut self, key: ConnKey, buf: &mut [u8]) -> Option<(PacketHeader, usize)> {
        let guest_cid = self.guest_cid;
        let conn = self.conns.get_mut(&key)?;
        if conn.need_rst {
            let hdr = conn.header(guest_cid, OP_RST);
            self.metrics.rst_sent.inc();
            self.remove_conn(key);
            return Some((hdr, 0));
        }
        if conn.need_request {
            conn.need_request = false;
            return Some((conn.header(guest_cid, OP_REQUEST), 0));
        }
        if conn.need_response {
            conn.need_response = false;
            return Some((conn.header(guest_cid, OP_RESPONSE), 0));
        }
        if conn.rx_ready && conn.can_send_data() {
            let n = buf.len().min(conn.peer_credit() as usize);
            match conn.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    conn.rx_ready = false;
                    conn.host_eof = true;
                    conn.need_shutdown = true;
                }
                Ok(n) => {
                    conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
                    if conn.peer_credit() == 0 {
                        conn.need_credit_request = true;
                    }
                    let hdr = conn.header(guest_cid, OP_RW);
                    self.sync_interest(key);
                    return Some((hdr, n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    conn.rx_ready = false;
                }
                Err(_) => {
                    conn.need_rst = true;
                    return self.conn_next_rx(key, buf);
                }
            }
            self.sync_interest(key);
        }
        let conn = self.conns.get_mut(&key)?;
        if conn.need_shutdown {
            conn.need_shutdown = false;
            let mut hdr = conn.header(guest_cid, OP_SHUTDOWN);
            hdr.flags = SHUTDOWN_SEND;
            return Some((hdr, 0));
        }
        if conn.need_credit_update {
            return Some((conn.header(guest_cid, OP_CREDIT_UPDATE), 0));
        }
        if conn.need_credit_request {
            conn.need_credit_request = false;
            return Some((conn.header(guest_cid, OP_CREDIT_REQUEST), 0));
        }
        None
    }

    /// A guest packet for an existing connection.
    fn conn_packet(&mut self, key: ConnKey, hdr: &PacketHeader, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            OP_RESPONSE if conn.state == ConnState::LocalInit => {
                conn.state = ConnState::Established;
                // A fresh unix stream's send buffer is empty, so this short write completes.
                let line = format!("OK {}\n", key.0);
                if send_nosignal(&conn.stream, line.as_bytes()).ok() != Some(line.len()) {
                    conn.need_rst = true;
                }
            }
            OP_RW if conn.state == ConnState::Established && conn.peer_shutdown & SHUTDOWN_SEND == 0 => {
                let buffered = conn.tx_buf.len() + payload.len();
                if buffered > CONN_BUF_ALLOC as usize {
                    warn!(
                        host_port = key.0,
                        guest_port = key.1,
                        buffered,
                        "guest overran vsock credit"
                    );
                    conn.need_rst = true;
                    conn.tx_buf.clear();
                } else {
                    conn.tx_buf.extend(payload);
                    if !conn.flush_tx() {
                        conn.need_rst = true;
                        conn.tx_buf.clear();
                    }
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => conn.need_credit_update = true,
            OP_SHUTDOWN => {
                conn.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if !conn.flush_tx() {
                    conn.need_rst = true;
                    conn.tx_buf.clear();
                }
            }
            OP_RST => {
                // Deliver what we can of the data the guest sent before resetting, then close.
                let _ = conn.flush_tx();
                self.remove_conn(key);
                return;
            }
            _ => conn.need_rst = true,
        }
        self.sync_interest(key);
        self.schedule(key);
    }
}

/// Connects without ever blocking: a host listener whose backlog is full makes `connect(2)` on a
/// blocking unix socket wait, and a guest must not be able to stall the device that way. A full
/// backlog (`EAGAIN`) counts as refused.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
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
fn send_nosignal(stream: &UnixStream, buf: &[u8]) -> io::Result<usize> {
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

impl VsockBackend for HybridUnixBackend {
    fn send_pkt(&mut self, hdr: &PacketHeader, payload: &[u8]) {
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid {
            debug!(
                src_cid = hdr.src_cid,
                dst_cid = hdr.dst_cid,
                "vsock packet with wrong cids dropped"
            );
            self.metrics.tx_dropped.inc();
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            self.metrics.tx_dropped.inc();
            self.queue_rst(hdr);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            if hdr.op == OP_REQUEST {
                // A second REQUEST on a live connection: the guest lost track; reset it.
                if let Some(c) = self.conns.get_mut(&key) {
                    c.need_rst = true;
                }
                self.schedule(key);
            } else {
                self.conn_packet(key, hdr, payload);
            }
            return;
        }
        match hdr.op {
            OP_REQUEST => self.guest_connect(hdr),
            OP_RST => {}
            _ => {
                self.metrics.tx_dropped.inc();
                self.queue_rst(hdr);
            }
        }
    }

    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(PacketHeader, usize)> {
        if let Some(rst) = self.pending_rst.pop_front() {
            self.metrics.rst_sent.inc();
            return Some((rst, 0));
        }
        while let Some(key) = self.rx_order.pop_front() {
            if let Some(pkt) = self.conn_next_rx(key, buf) {
                // Round robin: a connection with more to say goes to the back.
                self.schedule(key);
                return Some(pkt);
            }
        }
        None
    }

    fn has_pending_rx(&self) -> bool {
        !self.pending_rst.is_empty() || !self.rx_order.is_empty()
    }

    fn event_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn process_events(&mut self) {
        let mut events = vec![EpollEvent::default(); 64];
        // Bounded rounds: the fds stay level-triggered, anything left is picked up next time.
        for _ in 0..4 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!(error = %e, "vsock epoll wait failed");
                    return;
                }
            };
            if n == 0 {
                return;
            }
            for ev in events.iter().take(n) {
                let token = ev.data();
                let set = EventSet::from_bits_truncate(ev.events());
                if token == LISTENER_TOKEN {
                    self.accept_all();
                } else if self.handshakes.contains_key(&token) {
                    self.advance_handshake(token);
                } else {
                    self.conn_event(token, set);
                }
            }
        }
    }

    fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove_conn(k);
        }
        for (token, hs) in self.handshakes.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                hs.stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            );
        }
        self.pending_rst.clear();
        self.rx_order.clear();
    }
}

impl Drop for HybridUnixBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests {
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
