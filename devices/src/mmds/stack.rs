//! MMDS on the wire (Firecracker's "dumbo"): one net device's view of the guest's frames. Every frame the
//! guest sends passes [`MmdsStack::handle_tx_frame`] first; what targets MMDS is consumed here and never
//! reaches the TAP:
//! - ARP requests for the MMDS address get a reply naming [`MMDS_MAC`];
//! - IPv4 packets to the MMDS address: TCP to port 80 is served by a minimal responder (handshake, one
//!   request per connection, the answer, FIN), TCP to other ports gets a reset, anything else is dropped;
//! - any frame to [`MMDS_MAC`] is dropped.
//!
//! Everything else passes unchanged. Answers wait in a bounded queue until the device's RX path takes them
//! ([`MmdsStack::pop_frame`]).
//!
//! Never trusts: any field of the guest's frames (every length and offset is checked against the frame;
//! malformed packets to MMDS are dropped), nor how many connections it opens ([`MAX_CONNECTIONS`], the
//! oldest goes) or how fast it reads (at most [`MAX_IN_FLIGHT_SEGMENTS`] unacknowledged segments per
//! connection, [`MAX_PENDING_FRAMES`] queued in all). No timers: the responder only ever reacts to a guest
//! segment, and a duplicate acknowledgement makes it resend what is unacknowledged.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

use super::http::{frame_request, Framed, GuestResponse, MAX_REQUEST_LEN};
use super::SharedMmds;

/// The MAC address MMDS answers ARP with (Firecracker's).
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// The TCP port MMDS serves.
pub const MMDS_PORT: u16 = 80;
/// Open connections per device.
pub const MAX_CONNECTIONS: usize = 32;
/// Unacknowledged data segments per connection.
pub const MAX_IN_FLIGHT_SEGMENTS: usize = 16;
/// Frames waiting for the guest's RX buffers.
pub const MAX_PENDING_FRAMES: usize = 640;

const ETH_HDR_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const IPV4_HDR_LEN: usize = 20;
const TCP_HDR_LEN: usize = 20;
const PROTO_TCP: u8 = 6;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
/// Segment size when the guest's SYN names none (RFC 9293), and the most we ever send.
const DEFAULT_MSS: usize = 536;
const MAX_MSS: usize = 1460;

type ConnKey = ([u8; 4], u16);

#[derive(Debug)]
struct Conn {
    guest_mac: [u8; 6],
    /// The guest's initial sequence number (a repeated SYN with it is a retransmission).
    irs: u32,
    rcv_nxt: u32,
    iss: u32,
    established: bool,
    request: Vec<u8>,
    /// The answer (empty: just close), once the request is complete.
    response: Option<Vec<u8>>,
    /// Bytes of `response` acknowledged / sent.
    una: usize,
    sent: usize,
    fin_sent: bool,
    fin_acked: bool,
    guest_fin: bool,
    mss: usize,
    window: usize,
    /// Order of creation, to find the oldest.
    serial: u64,
}

/// A TCP segment from the guest, already bounds-checked.
struct Segment<'a> {
    src_mac: [u8; 6],
    src_ip: [u8; 4],
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    mss: Option<u16>,
    payload: &'a [u8],
}

impl Segment<'_> {
    /// Sequence space the segment occupies (SYN and FIN count one each).
    fn seq_len(&self) -> u32 {
        self.payload.len() as u32 + u32::from(self.flags & SYN != 0) + u32::from(self.flags & FIN != 0)
    }
}

/// One device's MMDS endpoint.
pub struct MmdsStack {
    mmds: SharedMmds,
    ipv4: [u8; 4],
    conns: HashMap<ConnKey, Conn>,
    out: VecDeque<Vec<u8>>,
    serial: u64,
    isn_state: u64,
    dropped: u64,
    metrics: std::sync::Arc<super::MmdsMetrics>,
}

impl MmdsStack {
    pub fn new(mmds: SharedMmds, ipv4: Ipv4Addr) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        let metrics = mmds.lock().unwrap_or_else(|e| e.into_inner()).metrics();
        MmdsStack {
            metrics,
            mmds,
            ipv4: ipv4.octets(),
            conns: HashMap::new(),
            out: VecDeque::new(),
            serial: 0,
            isn_state: seed | 1,
            dropped: 0,
        }
    }

    /// The next answer frame (an Ethernet frame, no virtio-net header) for the guest.
    pub fn pop_frame(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn has_frames(&self) -> bool {
        !self.out.is_empty()
    }

    /// Forgets every connection and queued answer (the device was reset: the guest's stack starts over).
    pub fn forget_all(&mut self) {
        self.metrics.connections_destroyed.add(self.conns.len() as u64);
        self.conns.clear();
        self.out.clear();
    }

    /// Answer frames dropped because the queue was full.
    pub fn dropped_frames(&self) -> u64 {
        self.dropped
    }

    /// Looks at one Ethernet frame from the guest; `true` when it was for MMDS (consumed: it must not reach
    /// the TAP).
    pub fn handle_tx_frame(&mut self, frame: &[u8]) -> bool {
        self.metrics.rx_count.inc();
        if frame.len() < ETH_HDR_LEN {
            self.metrics.rx_bad_eth.inc();
            return false;
        }
        let ethertype = be16(&frame[12..14]);
        let payload = &frame[ETH_HDR_LEN..];
        let src_mac: [u8; 6] = frame[6..12].try_into().unwrap_or_default();
        let consumed = match ethertype {
            ETHERTYPE_ARP => self.handle_arp(src_mac, payload),
            ETHERTYPE_IPV4 => self.handle_ipv4(src_mac, payload),
            _ => false,
        };
        let consumed = consumed || frame[..6] == MMDS_MAC;
        if consumed {
            self.metrics.rx_accepted.inc();
        }
        consumed
    }

    fn push(&mut self, frame: Vec<u8>) -> bool {
        if self.out.len() >= MAX_PENDING_FRAMES {
            self.dropped += 1;
            self.metrics.tx_errors.inc();
            return false;
        }
        self.metrics.tx_frames.inc();
        self.metrics.tx_bytes.add(frame.len() as u64);
        self.out.push_back(frame);
        true
    }

    fn handle_arp(&mut self, src_mac: [u8; 6], arp: &[u8]) -> bool {
        if arp.len() < 28 || be16(&arp[0..2]) != 1 || be16(&arp[2..4]) != ETHERTYPE_IPV4 || arp[4] != 6 || arp[5] != 4 {
            return false;
        }
        if arp[24..28] != self.ipv4 {
            return false;
        }
        if be16(&arp[6..8]) == 1 {
            let mut f = Vec::with_capacity(ETH_HDR_LEN + 28);
            f.extend_from_slice(&src_mac);
            f.extend_from_slice(&MMDS_MAC);
            f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
            f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
            f.extend_from_slice(&MMDS_MAC);
            f.extend_from_slice(&self.ipv4);
            f.extend_from_slice(&arp[8..14]);
            f.extend_from_slice(&arp[14..18]);
            self.push(f);
        }
        true
    }

    fn handle_ipv4(&mut self, src_mac: [u8; 6], ip: &[u8]) -> bool {
        if ip.len() < IPV4_HDR_LEN || ip[0] >> 4 != 4 || ip[16..20] != self.ipv4 {
            return false;
        }
        // From here on the packet is MMDS's: consumed whatever it holds.
        if let Some(seg) = parse_tcp(src_mac, ip) {
            self.handle_tcp(&seg);
        }
        true
    }

    fn handle_tcp(&mut self, seg: &Segment<'_>) {
        if seg.flags & RST != 0 {
            if self.conns.remove(&(seg.src_ip, seg.src_port)).is_some() {
                self.metrics.connections_destroyed.inc();
            }
            return;
        }
        if seg.dst_port != MMDS_PORT {
            self.reset(seg);
            return;
        }
        let key = (seg.src_ip, seg.src_port);
        if seg.flags & SYN != 0 && seg.flags & ACK == 0 {
            self.open(key, seg);
            return;
        }
        let Some(mut conn) = self.conns.remove(&key) else {
            self.reset(seg);
            return;
        };
        if seg.flags & SYN != 0 {
            // A SYN|ACK to a server makes no sense: drop the segment, keep the connection.
            self.conns.insert(key, conn);
            return;
        }
        let mut must_ack = false;
        if seg.flags & ACK != 0 {
            let data_start = conn.iss.wrapping_add(1);
            let acked = seg.ack.wrapping_sub(data_start) as usize;
            if !conn.established {
                if seg.ack == data_start {
                    conn.established = true;
                } else {
                    self.metrics.connections_destroyed.inc();
                    self.reset(seg);
                    return;
                }
            }
            conn.window = usize::from(seg.window);
            let total = conn.response.as_ref().map_or(0, Vec::len);
            if acked <= conn.sent {
                if acked == conn.una && seg.payload.is_empty() && seg.flags & FIN == 0 && conn.sent > conn.una {
                    // A duplicate acknowledgement: something we sent was lost, send it again.
                    conn.sent = conn.una;
                    conn.fin_sent = false;
                }
                conn.una = conn.una.max(acked);
            } else if conn.fin_sent && acked == total + 1 {
                conn.una = total;
                conn.fin_acked = true;
            }
        }
        if !conn.established {
            self.conns.insert(key, conn);
            return;
        }
        // Data: only what continues the stream is taken; anything else is acknowledged again.
        if !seg.payload.is_empty() {
            must_ack = true;
            let offset = conn.rcv_nxt.wrapping_sub(seg.seq) as usize;
            if offset < seg.payload.len() {
                let fresh = &seg.payload[offset..];
                conn.rcv_nxt = conn.rcv_nxt.wrapping_add(fresh.len() as u32);
                if conn.response.is_none() {
                    conn.request.extend_from_slice(fresh);
                    self.try_answer(&mut conn);
                }
            }
        }
        if seg.flags & FIN != 0 {
            must_ack = true;
            let fin_seq = seg.seq.wrapping_add(seg.payload.len() as u32);
            if fin_seq == conn.rcv_nxt && !conn.guest_fin {
                conn.guest_fin = true;
                conn.rcv_nxt = conn.rcv_nxt.wrapping_add(1);
                if conn.response.is_none() {
                    // The guest closed before a whole request: close too.
                    conn.response = Some(Vec::new());
                    conn.request = Vec::new();
                }
            }
        }
        let sent_any = self.send_pending(key, &mut conn);
        if must_ack && !sent_any {
            let (seq, ack) = (
                conn.iss
                    .wrapping_add(1)
                    .wrapping_add(conn.sent as u32 + u32::from(conn.fin_sent)),
                conn.rcv_nxt,
            );
            let frame = self.tcp_frame(&conn, key, (seq, ack, ACK), &[], &[]);
            self.push(frame);
        }
        if !(conn.fin_acked && conn.guest_fin) {
            self.conns.insert(key, conn);
        } else {
            self.metrics.connections_destroyed.inc();
        }
    }

    /// A SYN: a new connection, or the retransmission of one we know (answered with the same SYN|ACK).
    fn open(&mut self, key: ConnKey, seg: &Segment<'_>) {
        let known = self.conns.get(&key).is_some_and(|c| c.irs == seg.seq && !c.established);
        if !known {
            if self.conns.len() >= MAX_CONNECTIONS && !self.conns.contains_key(&key) {
                if let Some(oldest) = self.conns.iter().min_by_key(|(_, c)| c.serial).map(|(k, _)| *k) {
                    self.conns.remove(&oldest);
                    self.metrics.connections_destroyed.inc();
                }
            }
            self.serial += 1;
            let iss = self.next_isn();
            if !self.conns.contains_key(&key) {
                self.metrics.connections_created.inc();
            }
            self.conns.insert(
                key,
                Conn {
                    guest_mac: seg.src_mac,
                    irs: seg.seq,
                    rcv_nxt: seg.seq.wrapping_add(1),
                    iss,
                    established: false,
                    request: Vec::new(),
                    response: None,
                    una: 0,
                    sent: 0,
                    fin_sent: false,
                    fin_acked: false,
                    guest_fin: false,
                    mss: seg.mss.map_or(DEFAULT_MSS, usize::from).clamp(64, MAX_MSS),
                    window: usize::from(seg.window),
                    serial: self.serial,
                },
            );
        }
        let Some(conn) = self.conns.get(&key) else { return };
        let mss_option = (MAX_MSS as u16).to_be_bytes();
        let options = [2, 4, mss_option[0], mss_option[1]];
        let frame = self.tcp_frame(conn, key, (conn.iss, conn.rcv_nxt, SYN | ACK), &options, &[]);
        self.push(frame);
    }

    fn try_answer(&mut self, conn: &mut Conn) {
        let response = match frame_request(&conn.request) {
            Framed::Partial if conn.request.len() < MAX_REQUEST_LEN => return,
            Framed::Partial => GuestResponse::text(400, format!("Request longer than {MAX_REQUEST_LEN} bytes.")),
            Framed::Invalid(reason) => GuestResponse::text(400, reason),
            Framed::Request(req) => {
                let mut mmds = self.mmds.lock().unwrap_or_else(|e| e.into_inner());
                mmds.answer(&req)
            }
        };
        self.metrics.tx_count.inc();
        conn.response = Some(response.to_bytes());
        conn.request = Vec::new();
    }

    /// Sends what of the answer the guest's window and the in-flight bound allow, then the FIN. Returns
    /// whether any segment went out.
    fn send_pending(&mut self, key: ConnKey, conn: &mut Conn) -> bool {
        let Some(response) = conn.response.take() else {
            return false;
        };
        let mut any = false;
        let in_flight_cap = (conn.mss * MAX_IN_FLIGHT_SEGMENTS).min(conn.window);
        while conn.sent < response.len() && conn.sent - conn.una < in_flight_cap {
            let room = in_flight_cap - (conn.sent - conn.una);
            let len = conn.mss.min(response.len() - conn.sent).min(room);
            let seq = conn.iss.wrapping_add(1).wrapping_add(conn.sent as u32);
            let payload = &response[conn.sent..conn.sent + len];
            let frame = self.tcp_frame(conn, key, (seq, conn.rcv_nxt, ACK | PSH), &[], payload);
            if !self.push(frame) {
                break;
            }
            conn.sent += len;
            any = true;
        }
        if conn.sent == response.len() && !conn.fin_sent {
            let seq = conn.iss.wrapping_add(1).wrapping_add(response.len() as u32);
            let frame = self.tcp_frame(conn, key, (seq, conn.rcv_nxt, FIN | ACK), &[], &[]);
            if self.push(frame) {
                conn.fin_sent = true;
                any = true;
            }
        }
        conn.response = Some(response);
        any
    }

    /// RFC 9293's reset for a segment that belongs to no connection.
    fn reset(&mut self, seg: &Segment<'_>) {
        let (seq, ack, flags) = if seg.flags & ACK != 0 {
            (seg.ack, 0, RST)
        } else {
            (0, seg.seq.wrapping_add(seg.seq_len()), RST | ACK)
        };
        let frame = build_tcp_frame(
            seg.src_mac,
            self.ipv4,
            (seg.src_ip, seg.src_port),
            seg.dst_port,
            (seq, ack, flags, 0),
            &[],
            &[],
        );
        self.push(frame);
    }

    fn tcp_frame(
        &self,
        conn: &Conn,
        key: ConnKey,
        (seq, ack, flags): (u32, u32, u8),
        options: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let window = (MAX_REQUEST_LEN.saturating_sub(conn.request.len())) as u16;
        build_tcp_frame(
            conn.guest_mac,
            self.ipv4,
            key,
            MMDS_PORT,
            (seq, ack, flags, window),
            options,
            payload,
        )
    }

    fn next_isn(&mut self) -> u32 {
        self.isn_state = self
            .isn_state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.isn_state >> 32) as u32
    }
}

/// A bounds-checked TCP segment out of an IPv4 packet to MMDS, or `None` for anything else (fragments,
/// other protocols, inconsistent lengths).
fn parse_tcp(src_mac: [u8; 6], ip: &[u8]) -> Option<Segment<'_>> {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(be16(&ip[2..4]));
    if ihl < IPV4_HDR_LEN || total < ihl || total > ip.len() {
        return None;
    }
    // More-fragments flag or an offset: MMDS takes whole packets only.
    if be16(&ip[6..8]) & 0x3fff != 0 || ip[9] != PROTO_TCP {
        return None;
    }
    let tcp = &ip[ihl..total];
    if tcp.len() < TCP_HDR_LEN {
        return None;
    }
    let data_off = usize::from(tcp[12] >> 4) * 4;
    if data_off < TCP_HDR_LEN || data_off > tcp.len() {
        return None;
    }
    let flags = tcp[13];
    let mut mss = None;
    let mut options = &tcp[TCP_HDR_LEN..data_off];
    while let Some(&kind) = options.first() {
        match kind {
            0 => break,
            1 => options = &options[1..],
            _ => {
                let len = usize::from(*options.get(1)?);
                if len < 2 || len > options.len() {
                    break;
                }
                if kind == 2 && len == 4 {
                    mss = Some(be16(&options[2..4]));
                }
                options = &options[len..];
            }
        }
    }
    Some(Segment {
        src_mac,
        src_ip: ip[12..16].try_into().ok()?,
        src_port: be16(&tcp[0..2]),
        dst_port: be16(&tcp[2..4]),
        seq: be32(&tcp[4..8]),
        ack: be32(&tcp[8..12]),
        flags,
        window: be16(&tcp[14..16]),
        mss: if flags & SYN != 0 { mss } else { None },
        payload: &tcp[data_off..],
    })
}

/// An Ethernet + IPv4 + TCP frame from MMDS to `(guest ip, guest port)`.
fn build_tcp_frame(
    guest_mac: [u8; 6],
    mmds_ip: [u8; 4],
    (guest_ip, guest_port): ConnKey,
    src_port: u16,
    (seq, ack, flags, window): (u32, u32, u8, u16),
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let tcp_len = TCP_HDR_LEN + options.len() + payload.len();
    let ip_len = IPV4_HDR_LEN + tcp_len;
    let mut f = Vec::with_capacity(ETH_HDR_LEN + ip_len);
    f.extend_from_slice(&guest_mac);
    f.extend_from_slice(&MMDS_MAC);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(ip_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0]);
    f.extend_from_slice(&mmds_ip);
    f.extend_from_slice(&guest_ip);
    let ip_sum = checksum(0, &f[ip_start..ip_start + IPV4_HDR_LEN]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp_start = f.len();
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&guest_port.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.push((((TCP_HDR_LEN + options.len()) / 4) as u8) << 4);
    f.push(flags);
    f.extend_from_slice(&window.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(options);
    f.extend_from_slice(payload);
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&mmds_ip);
    pseudo[4..8].copy_from_slice(&guest_ip);
    pseudo[9] = PROTO_TCP;
    pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    let partial = sum16(0, &pseudo);
    let tcp_sum = checksum(partial, &f[tcp_start..]);
    f[tcp_start + 16..tcp_start + 18].copy_from_slice(&tcp_sum.to_be_bytes());
    f
}

fn sum16(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// The Internet checksum of `data`, starting from a partial sum.
fn checksum(start: u32, data: &[u8]) -> u16 {
    let mut acc = sum16(start, data);
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mmds::{Mmds, MmdsVersion, DEFAULT_IPV4};

    const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
    const GUEST_IP: [u8; 4] = [169, 254, 0, 2];

    fn stack(version: MmdsVersion) -> MmdsStack {
        let mut m = Mmds::new(51_200);
        m.data_store_mut()
            .put(json!({"latest": {"meta-data": {"ami-id": "ami-12345678", "big": "x".repeat(20_000)}}}))
            .unwrap();
        m.configure(version, false);
        MmdsStack::new(m.shared(), DEFAULT_IPV4)
    }

    /// A guest-sent TCP frame to MMDS (port 80 unless `port`).
    fn guest_tcp(port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = build_tcp_frame(
            MMDS_MAC,
            GUEST_IP,
            (DEFAULT_IPV4.octets(), port),
            40_000,
            (seq, ack, flags, 65_535),
            &[],
            payload,
        );
        // build_tcp_frame writes MMDS → guest; flip the addresses to make it guest → MMDS.
        f[6..12].copy_from_slice(&GUEST_MAC);
        f
    }

    struct Parsed {
        flags: u8,
        seq: u32,
        ack: u32,
        payload: Vec<u8>,
    }

    fn parse_out(frame: &[u8]) -> Parsed {
        assert_eq!(&frame[..6], &GUEST_MAC);
        assert_eq!(&frame[6..12], &MMDS_MAC);
        let ip = &frame[ETH_HDR_LEN..];
        assert_eq!(checksum(0, &ip[..IPV4_HDR_LEN]), 0, "IPv4 header checksum");
        let tcp = &ip[IPV4_HDR_LEN..];
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&ip[12..16]);
        pseudo[4..8].copy_from_slice(&ip[16..20]);
        pseudo[9] = PROTO_TCP;
        pseudo[10..12].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
        assert_eq!(checksum(sum16(0, &pseudo), tcp), 0, "TCP checksum");
        let off = usize::from(tcp[12] >> 4) * 4;
        Parsed {
            flags: tcp[13],
            seq: be32(&tcp[4..8]),
            ack: be32(&tcp[8..12]),
            payload: tcp[off..].to_vec(),
        }
    }

    fn drain(s: &mut MmdsStack) -> Vec<Parsed> {
        std::iter::from_fn(|| s.pop_frame()).map(|f| parse_out(&f)).collect()
    }

    /// Handshake, request, reading the whole answer with ACKs, FIN exchange. Returns the answer.
    fn exchange(s: &mut MmdsStack, request: &str) -> String {
        assert!(s.handle_tx_frame(&guest_tcp(80, 1000, 0, SYN, &[])));
        let synack = drain(s).remove(0);
        assert_eq!((synack.flags, synack.ack), (SYN | ACK, 1001));
        let mut ours = synack.seq.wrapping_add(1);
        assert!(s.handle_tx_frame(&guest_tcp(80, 1001, ours, ACK, &[])));
        assert!(drain(s).is_empty());
        let mut theirs = 1001 + request.len() as u32;
        assert!(s.handle_tx_frame(&guest_tcp(80, 1001, ours, ACK | PSH, request.as_bytes())));
        let mut answer = Vec::new();
        loop {
            let segs = drain(s);
            assert!(!segs.is_empty(), "the responder stalled");
            let mut fin = false;
            for seg in segs {
                assert_eq!(seg.seq, ours);
                assert_eq!(seg.ack, theirs);
                ours = ours.wrapping_add(seg.payload.len() as u32);
                answer.extend_from_slice(&seg.payload);
                if seg.flags & FIN != 0 {
                    ours = ours.wrapping_add(1);
                    fin = true;
                }
            }
            if fin {
                break;
            }
            s.handle_tx_frame(&guest_tcp(80, theirs, ours, ACK, &[]));
        }
        // Our FIN: acknowledge it with the guest's own FIN; MMDS acknowledges and forgets the connection.
        s.handle_tx_frame(&guest_tcp(80, theirs, ours, FIN | ACK, &[]));
        theirs += 1;
        let last = drain(s);
        assert_eq!((last.len(), last[0].flags, last[0].ack), (1, ACK, theirs));
        assert!(s.conns.is_empty());
        String::from_utf8(answer).unwrap()
    }

    #[test]
    fn arp_for_the_mmds_address_is_answered_others_pass() {
        let mut s = stack(MmdsVersion::V1);
        let arp = |target: [u8; 4]| {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&GUEST_MAC);
            f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&GUEST_MAC);
            f.extend_from_slice(&GUEST_IP);
            f.extend_from_slice(&[0; 6]);
            f.extend_from_slice(&target);
            f
        };
        assert!(!s.handle_tx_frame(&arp([10, 0, 0, 1])));
        assert!(!s.has_frames());
        assert!(s.handle_tx_frame(&arp(DEFAULT_IPV4.octets())));
        let reply = s.pop_frame().unwrap();
        assert_eq!(&reply[..6], &GUEST_MAC);
        assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
        assert_eq!(&reply[22..28], &MMDS_MAC);
        assert_eq!(&reply[28..32], &DEFAULT_IPV4.octets());
        assert_eq!(&reply[38..42], &GUEST_IP);
    }

    #[test]
    fn other_traffic_passes_and_mmds_traffic_is_consumed() {
        let mut s = stack(MmdsVersion::V1);
        let mut other = guest_tcp(80, 1, 0, SYN, &[]);
        other[ETH_HDR_LEN + 16..ETH_HDR_LEN + 20].copy_from_slice(&[10, 0, 0, 1]);
        other[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        assert!(!s.handle_tx_frame(&other));
        assert!(!s.handle_tx_frame(&[0u8; 10]));
        // UDP to MMDS: consumed, no answer.
        let mut udp = guest_tcp(80, 1, 0, SYN, &[]);
        udp[ETH_HDR_LEN + 9] = 17;
        assert!(s.handle_tx_frame(&udp));
        assert!(!s.has_frames());
        // Anything to the MMDS MAC is consumed.
        let mut to_mac = other.clone();
        to_mac[..6].copy_from_slice(&MMDS_MAC);
        assert!(s.handle_tx_frame(&to_mac));
    }

    #[test]
    fn a_get_is_answered_over_tcp_and_the_connection_closes() {
        let mut s = stack(MmdsVersion::V1);
        let answer = exchange(&mut s, "GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nami-12345678"), "{answer}");
    }

    #[test]
    fn a_large_answer_respects_the_in_flight_bound() {
        let mut s = stack(MmdsVersion::V1);
        let answer = exchange(&mut s, "GET /latest/meta-data/big HTTP/1.1\r\n\r\n");
        assert!(answer.ends_with(&"x".repeat(20_000)));
    }

    #[test]
    fn v2_session_over_tcp() {
        let mut s = stack(MmdsVersion::V2);
        let answer = exchange(&mut s, "GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        let answer = exchange(
            &mut s,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
        );
        let token = answer.split("\r\n\r\n").nth(1).unwrap().to_string();
        let answer = exchange(
            &mut s,
            &format!("GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n"),
        );
        assert!(answer.ends_with("ami-12345678"), "{answer}");
        let answer = exchange(
            &mut s,
            "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-metadata-token: forged\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        // The counters saw four connections, each opened and closed, four answers, one request without a
        // token and one with a forged one; every frame was MMDS's.
        let m = s.metrics.clone();
        assert_eq!((m.connections_created.get(), m.connections_destroyed.get()), (4, 4));
        assert_eq!(
            (m.tx_count.get(), m.rx_no_token.get(), m.rx_invalid_token.get()),
            (4, 1, 1)
        );
        assert_eq!(m.rx_accepted.get(), m.rx_count.get());
        assert!(m.tx_frames.get() >= 4 * 3 && m.tx_bytes.get() > m.tx_frames.get() * 54);
        assert_eq!((m.tx_errors.get(), m.rx_bad_eth.get()), (0, 0));
    }

    #[test]
    fn resets_for_strangers_and_retransmitted_syn_gets_the_same_answer() {
        let mut s = stack(MmdsVersion::V1);
        // Port 22: reset.
        s.handle_tx_frame(&guest_tcp(22, 5, 0, SYN, &[]));
        let rst = drain(&mut s).remove(0);
        assert_eq!((rst.flags, rst.ack), (RST | ACK, 6));
        // An ACK for no connection: reset with its ack as our seq.
        s.handle_tx_frame(&guest_tcp(80, 5, 777, ACK, &[]));
        let rst = drain(&mut s).remove(0);
        assert_eq!((rst.flags, rst.seq), (RST, 777));
        // A SYN sent twice is one connection with one ISN.
        s.handle_tx_frame(&guest_tcp(80, 9, 0, SYN, &[]));
        s.handle_tx_frame(&guest_tcp(80, 9, 0, SYN, &[]));
        let synacks = drain(&mut s);
        assert_eq!(synacks.len(), 2);
        assert_eq!(synacks[0].seq, synacks[1].seq);
        // The guest's reset forgets it.
        s.handle_tx_frame(&guest_tcp(80, 10, 0, RST, &[]));
        assert!(s.conns.is_empty());
        // So does a device reset, with whatever answers were queued.
        s.handle_tx_frame(&guest_tcp(80, 9, 0, SYN, &[]));
        s.forget_all();
        assert!(s.conns.is_empty() && !s.has_frames());
    }

    #[test]
    fn garbage_to_mmds_never_panics_and_state_stays_bounded() {
        let mut s = stack(MmdsVersion::V1);
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u32 {
            let mut f = guest_tcp(80, rnd() as u32, rnd() as u32, rnd() as u8, &[b'G'; 7]);
            // Spread over many source ports, then scribble over header bytes.
            let port = (rnd() % 200) as u16;
            f[ETH_HDR_LEN + 20..ETH_HDR_LEN + 22].copy_from_slice(&port.to_be_bytes());
            for _ in 0..(rnd() % 4) {
                let at = ETH_HDR_LEN + (rnd() as usize % (f.len() - ETH_HDR_LEN));
                f[at] = rnd() as u8;
            }
            let cut = if i % 3 == 0 { rnd() as usize % f.len() } else { f.len() };
            s.handle_tx_frame(&f[..cut]);
            if i % 7 == 0 {
                while s.pop_frame().is_some() {}
            }
        }
        assert!(s.conns.len() <= MAX_CONNECTIONS);
        assert!(s.out.len() <= MAX_PENDING_FRAMES);
    }
}
