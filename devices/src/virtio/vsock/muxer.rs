//! The vsock multiplexer behind Firecracker's hybrid unix-socket protocol: every guest vsock stream is
//! bridged to a host unix stream, and this file routes between them.
//!
//! * Host → guest: a host process connects to `uds_path` and writes `CONNECT <port>\n`; we send the guest
//!   a REQUEST to `<port>` from a fresh host port H, and on the guest's RESPONSE write `OK <H>\n` back;
//!   from then on the unix stream carries the connection's bytes.
//! * Guest → host: a guest REQUEST to host port P connects to the unix socket `<uds_path>_<P>`.
//!
//! Owns: the listener, one epoll for every host-side fd, the connection table (each [`Connection`] runs its
//! own state machine and credit), RSTs for packets that name no connection, and the fair order in which
//! connections get RX buffers. Nothing blocks: every socket is non-blocking, and interest in a socket's
//! readiness is registered only while its connection can act on it (so a starved RX queue or an exhausted
//! credit never makes the event loop spin).
//!
//! Never trusts: guest headers (cids, ports, ops, counters, lengths) or host peers. Connection count and
//! queued RSTs are bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_debug as debug, guest_info as info, guest_warn as warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::backend::VsockBackend;
use super::connection::{ConnKey, Connection, Verdict};
use super::metrics::VsockMetrics;
use super::packet::*;
use super::unix::{connect_nonblocking, Handshake, UnixBackendError};
use super::{HOST_CID, TYPE_STREAM};
use crate::stale_socket::{bind_owner_only, remove_if_stale, OwnedSocketPath};

/// Most simultaneous connections (plus handshakes in progress).
pub const MAX_CONNECTIONS: usize = 1024;
/// Most queued RSTs for packets that named no connection.
const MAX_PENDING_RST: usize = 256;
/// First host port handed out for host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const LISTENER_TOKEN: u64 = 0;

/// The hybrid unix-socket vsock backend.
pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    epoll: Epoll,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
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
    /// Removes the listener's socket file on drop, if it is still ours.
    _bound: OwnedSocketPath,
}

impl VsockMuxer {
    /// Binds `uds_path` for host-initiated connections. The path comes from an API client: only a stale
    /// socket there is replaced, never a file or a socket another process serves.
    pub fn new(guest_cid: u64, uds_path: &Path, metrics: Arc<VsockMetrics>) -> Result<Self, UnixBackendError> {
        remove_if_stale(uds_path)?;
        let listener = bind_owner_only(uds_path).map_err(|source| UnixBackendError::Bind {
            path: uds_path.to_owned(),
            source,
        })?;
        let bound = OwnedSocketPath::new(uds_path);
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
        Ok(VsockMuxer {
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
            _bound: bound,
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
                conn.kill();
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

    fn add_conn(&mut self, conn: Connection) {
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
        let conn = Connection::guest_initiated(stream, token, hdr);
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
                        self.handshakes.insert(token, Handshake::new(stream));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }

    /// Reads what arrived of a host stream's `CONNECT <port>\n` line; once it is complete, the stream
    /// becomes a connection (or is dropped).
    fn advance_handshake(&mut self, token: u64) {
        let Some(hs) = self.handshakes.get_mut(&token) else {
            return;
        };
        let Some(outcome) = hs.read_line() else { return };
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
        let conn = Connection::host_initiated(hs.stream, token, (local, port));
        info!(host_port = local, guest_port = port, "host connecting to guest");
        self.add_conn(conn);
    }

    fn conn_event(&mut self, token: u64, events: EventSet) {
        let Some(&key) = self.tokens.get(&token) else { return };
        let Some(conn) = self.conns.get_mut(&key) else { return };
        conn.on_readiness(events);
        self.sync_interest(key);
        self.schedule(key);
    }

    /// Produces the next packet of `key`, if any. Removes the connection after its RST.
    fn conn_next_rx(&mut self, key: ConnKey, buf: &mut [u8]) -> Option<(PacketHeader, usize)> {
        let conn = self.conns.get_mut(&key)?;
        let pkt = conn.next_packet(self.guest_cid, buf);
        if pkt.is_some_and(|(hdr, _)| hdr.op == OP_RST) {
            self.metrics.rst_sent.inc();
            self.remove_conn(key);
        } else {
            self.sync_interest(key);
        }
        pkt
    }

    /// A guest packet for an existing connection.
    fn conn_packet(&mut self, key: ConnKey, hdr: &PacketHeader, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        match conn.on_guest_packet(hdr, payload) {
            Verdict::Open => {
                self.sync_interest(key);
                self.schedule(key);
            }
            Verdict::Closed => self.remove_conn(key),
        }
    }
}

impl VsockBackend for VsockMuxer {
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
                    c.kill();
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
        // Connections with nothing that fits `buf` (data for a header-only buffer) keep their turn.
        let mut passed = Vec::new();
        let mut found = None;
        while let Some(key) = self.rx_order.pop_front() {
            if let Some(pkt) = self.conn_next_rx(key, buf) {
                // Round robin: a connection with more to say goes to the back.
                self.schedule(key);
                found = Some(pkt);
                break;
            }
            passed.push(key);
        }
        for key in passed {
            self.schedule(key);
        }
        found
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
