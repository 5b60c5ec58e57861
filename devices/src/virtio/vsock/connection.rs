//! One vsock stream between a guest port and a host unix stream: its state machine (a host-initiated
//! connection waits for the guest's RESPONSE; then data flows until SHUTDOWN and RST), virtio-vsock
//! credit in both directions, and the control packets it owes the guest. The muxer (`muxer`) routes guest
//! packets and socket readiness to it, asks it for packets for the guest, and keeps its epoll
//! registration in line with [`Connection::desired_events`].
//!
//! Flow control: we never send the guest more than it advertised (`buf_alloc - (rx_cnt - fwd_cnt)`), and
//! advertise `CONN_BUF_ALLOC` bytes ourselves, buffering what the host peer has not read yet.
//!
//! Never trusts: the guest's headers (ops, flags, credit counters, payload lengths: a guest that overruns
//! our credit gets RST) or the host peer (a stream that fails gets RST).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::guest_warn as warn;
use vmm_sys_util::epoll::EventSet;

use super::packet::*;
use super::unix::send_nosignal;
use super::{HOST_CID, TYPE_STREAM};

/// Bytes we buffer per connection for the host peer (our advertised `buf_alloc`).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Forwarded bytes after which we volunteer a CREDIT_UPDATE.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;

/// (host port, guest port)
pub type ConnKey = (u32, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated: REQUEST sent (or to send), waiting for the guest's RESPONSE.
    LocalInit,
    Established,
}

/// What became of a connection after a guest packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It lives on (possibly owing the guest an RST).
    Open,
    /// The guest reset it: forget it without answering.
    Closed,
}

/// One connection.
pub struct Connection {
    pub stream: UnixStream,
    /// Its epoll token in the muxer.
    pub token: u64,
    pub key: ConnKey,
    state: ConnState,
    /// Events currently registered with the muxer's epoll (empty = not registered).
    pub registered: EventSet,
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

impl Connection {
    /// The guest's REQUEST `hdr` reached a host listener through `stream`: we owe it a RESPONSE.
    pub fn guest_initiated(stream: UnixStream, token: u64, hdr: &PacketHeader) -> Self {
        let mut conn = Connection::new(stream, token, (hdr.dst_port, hdr.src_port), ConnState::Established);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = hdr.fwd_cnt;
        conn.need_response = true;
        conn
    }

    /// A host process asked (`CONNECT <guest_port>`) for the guest's port: we owe the guest a REQUEST.
    pub fn host_initiated(stream: UnixStream, token: u64, key: ConnKey) -> Self {
        let mut conn = Connection::new(stream, token, key, ConnState::LocalInit);
        conn.need_request = true;
        conn
    }

    fn new(stream: UnixStream, token: u64, key: ConnKey, state: ConnState) -> Self {
        Connection {
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

    /// The connection cannot go on: the guest gets an RST next.
    pub fn kill(&mut self) {
        self.need_rst = true;
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

    /// Whether `next_packet` could produce something right now.
    pub fn wants_rx(&self) -> bool {
        self.need_rst
            || self.need_request
            || self.need_response
            || self.need_shutdown
            || self.need_credit_update
            || self.need_credit_request
            || (self.rx_ready && self.can_send_data())
    }

    /// What epoll should watch for this connection.
    pub fn desired_events(&self) -> EventSet {
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

    /// Flushes buffered guest data; a failing stream kills the connection.
    fn flush_or_kill(&mut self) {
        if !self.flush_tx() {
            self.need_rst = true;
            self.tx_buf.clear();
        }
    }

    /// The stream polled with `events`.
    pub fn on_readiness(&mut self, events: EventSet) {
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
            self.rx_ready = true;
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) && !self.tx_buf.is_empty() {
            self.flush_or_kill();
        }
    }

    /// A guest packet for this connection (its cids, type and ports already matched).
    pub fn on_guest_packet(&mut self, hdr: &PacketHeader, payload: &[u8]) -> Verdict {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        match hdr.op {
            OP_RESPONSE if self.state == ConnState::LocalInit => {
                self.state = ConnState::Established;
                // A fresh unix stream's send buffer is empty, so this short write completes.
                let line = format!("OK {}\n", self.key.0);
                if send_nosignal(&self.stream, line.as_bytes()).ok() != Some(line.len()) {
                    self.need_rst = true;
                }
            }
            OP_RW if self.state == ConnState::Established && self.peer_shutdown & SHUTDOWN_SEND == 0 => {
                let buffered = self.tx_buf.len() + payload.len();
                if buffered > CONN_BUF_ALLOC as usize {
                    warn!(
                        host_port = self.key.0,
                        guest_port = self.key.1,
                        buffered,
                        "guest overran vsock credit"
                    );
                    self.need_rst = true;
                    self.tx_buf.clear();
                } else {
                    self.tx_buf.extend(payload);
                    self.flush_or_kill();
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => self.need_credit_update = true,
            OP_SHUTDOWN => {
                self.peer_shutdown |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                self.flush_or_kill();
            }
            OP_RST => {
                // Deliver what we can of the data the guest sent before resetting, then close.
                let _ = self.flush_tx();
                return Verdict::Closed;
            }
            _ => self.need_rst = true,
        }
        Verdict::Open
    }

    /// The next packet this connection owes the guest, with up to `buf.len()` payload bytes read from the
    /// host peer into `buf`. After an RST the connection is done.
    pub fn next_packet(&mut self, guest_cid: u64, buf: &mut [u8]) -> Option<(PacketHeader, usize)> {
        if self.need_rst {
            return Some((self.header(guest_cid, OP_RST), 0));
        }
        if self.need_request {
            self.need_request = false;
            return Some((self.header(guest_cid, OP_REQUEST), 0));
        }
        if self.need_response {
            self.need_response = false;
            return Some((self.header(guest_cid, OP_RESPONSE), 0));
        }
        // An RX buffer with no room past the header takes no data: reading 0 bytes into it would look
        // like the host closing the stream.
        if self.rx_ready && self.can_send_data() && !buf.is_empty() {
            let n = buf.len().min(self.peer_credit() as usize);
            match self.stream.read(&mut buf[..n]) {
                Ok(0) => {
                    self.rx_ready = false;
                    self.host_eof = true;
                    self.need_shutdown = true;
                }
                Ok(n) => {
                    self.rx_cnt = self.rx_cnt.wrapping_add(n as u32);
                    if self.peer_credit() == 0 {
                        self.need_credit_request = true;
                    }
                    return Some((self.header(guest_cid, OP_RW), n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    self.rx_ready = false;
                }
                Err(_) => {
                    self.need_rst = true;
                    return self.next_packet(guest_cid, buf);
                }
            }
        }
        if self.need_shutdown {
            self.need_shutdown = false;
            let mut hdr = self.header(guest_cid, OP_SHUTDOWN);
            hdr.flags = SHUTDOWN_SEND;
            return Some((hdr, 0));
        }
        if self.need_credit_update {
            return Some((self.header(guest_cid, OP_CREDIT_UPDATE), 0));
        }
        if self.need_credit_request {
            self.need_credit_request = false;
            return Some((self.header(guest_cid, OP_CREDIT_REQUEST), 0));
        }
        None
    }
}
