//! virtio-vsock packets: the 44-byte header (virtio spec 1.2, 5.10.6) and the descriptor-chain side of
//! both queues. All validation of what the guest puts in the TX queue, and of the buffers it offers on
//! the RX queue, lives here.
//!
//! Never trusts: header fields (cids, ports, `len`, `type`, `op`, credit counters) or chain layout. A TX
//! packet whose payload is longer than `MAX_PKT_PAYLOAD` or than the chain is refused whole.

use super::{HOST_CID, MAX_PKT_PAYLOAD, TYPE_STREAM};
use crate::virtio::chain::{ChainError, ParsedChain};
use crate::virtio::GuestMemory;

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded packet header. Values are as the guest wrote them; nothing here is validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl PacketHeader {
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        let u64_at = |o: usize| {
            u64::from_le_bytes([
                b[o],
                b[o + 1],
                b[o + 2],
                b[o + 3],
                b[o + 4],
                b[o + 5],
                b[o + 6],
                b[o + 7],
            ])
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        PacketHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A host-to-guest reply skeleton for the connection `hdr` (a guest packet) belongs to.
    pub fn reply_to(hdr: &PacketHeader, op: u16) -> Self {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: hdr.src_cid,
            src_port: hdr.dst_port,
            dst_port: hdr.src_port,
            type_: TYPE_STREAM,
            op,
            ..Default::default()
        }
    }
}

/// Why a TX packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("the header needs {HDR_LEN} device-readable bytes, the chain has {0}")]
    HeaderTooShort(u64),
    #[error("the header is not in guest memory: {0}")]
    HeaderUnreachable(ChainError),
    #[error("payload length {0} exceeds the {MAX_PKT_PAYLOAD}-byte maximum")]
    PayloadTooLong(u32),
    #[error("payload length {len} exceeds the {available} readable bytes after the header")]
    PayloadTruncated { len: u32, available: u64 },
    #[error("the payload is not in guest memory: {0}")]
    PayloadUnreachable(ChainError),
    #[error("the RX buffer has {0} writable bytes, less than a header")]
    RxBufferTooShort(u64),
    #[error("the RX buffer is not in guest memory: {0}")]
    RxBufferUnreachable(ChainError),
}

/// Reads a TX packet: returns its header; for `OP_RW` the payload is left in `payload`.
pub fn parse_tx(chain: &ParsedChain, mem: &GuestMemory, payload: &mut Vec<u8>) -> Result<PacketHeader, PacketError> {
    payload.clear();
    if chain.readable_len() < HDR_LEN as u64 {
        return Err(PacketError::HeaderTooShort(chain.readable_len()));
    }
    let mut raw = [0u8; HDR_LEN];
    chain
        .read_at(mem, 0, &mut raw)
        .map_err(PacketError::HeaderUnreachable)?;
    let hdr = PacketHeader::from_bytes(&raw);
    if hdr.op == OP_RW {
        if hdr.len as usize > MAX_PKT_PAYLOAD {
            return Err(PacketError::PayloadTooLong(hdr.len));
        }
        let available = chain.readable_len() - HDR_LEN as u64;
        if u64::from(hdr.len) > available {
            return Err(PacketError::PayloadTruncated {
                len: hdr.len,
                available,
            });
        }
        payload.resize(hdr.len as usize, 0);
        chain
            .read_at(mem, HDR_LEN as u64, payload)
            .map_err(PacketError::PayloadUnreachable)?;
    }
    Ok(hdr)
}

/// Checks an RX buffer; returns how many payload bytes it can take (capped at `MAX_PKT_PAYLOAD`).
pub fn rx_capacity(chain: &ParsedChain, mem: &GuestMemory) -> Result<usize, PacketError> {
    let total = chain.writable_len();
    if total < HDR_LEN as u64 {
        return Err(PacketError::RxBufferTooShort(total));
    }
    let cap = (total - HDR_LEN as u64).min(MAX_PKT_PAYLOAD as u64);
    chain
        .check_writable(mem, 0, HDR_LEN as u64 + cap)
        .map_err(PacketError::RxBufferUnreachable)?;
    Ok(cap as usize)
}

/// Writes a packet into a checked RX buffer; returns the used length.
pub fn write_rx(chain: &ParsedChain, mem: &GuestMemory, hdr: &PacketHeader, payload: &[u8]) -> Result<u32, ChainError> {
    let mut hdr = *hdr;
    hdr.len = payload.len() as u32;
    chain.write_at(mem, 0, &hdr.to_bytes())?;
    chain.write_at(mem, HDR_LEN as u64, payload)?;
    Ok((HDR_LEN + payload.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{Desc, GuestQueue};
    use crate::virtio::vsock::test_utils::{guest_hdr, write_tx_packet, PKT};

    #[test]
    fn header_round_trips() {
        let h = PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 7,
            dst_port: 9,
            len: 5,
            type_: 1,
            op: 5,
            flags: 0,
            buf_alloc: 100,
            fwd_cnt: 42,
        };
        assert_eq!(PacketHeader::from_bytes(&h.to_bytes()), h);
    }

    #[test]
    fn rw_payload_is_read() {
        let mut q = GuestQueue::new(8);
        write_tx_packet(&mut q, &guest_hdr(OP_RW, 1000, 5000), b"hello", true);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        let mut payload = Vec::new();
        let hdr = parse_tx(&chain, q.mem(), &mut payload).unwrap();
        assert_eq!(hdr.op, OP_RW);
        assert_eq!(payload, b"hello");
    }

    #[test]
    fn len_larger_than_chain_is_refused() {
        let mut q = GuestQueue::new(8);
        let mut h = guest_hdr(OP_RW, 1000, 5000);
        h.len = 4096;
        q.mem_write(PKT, &h.to_bytes());
        q.add_chain(&[Desc::read(PKT, HDR_LEN as u32 + 10)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        assert!(matches!(
            parse_tx(&chain, q.mem(), &mut Vec::new()),
            Err(PacketError::PayloadTruncated { .. })
        ));
    }

    #[test]
    fn huge_len_is_refused() {
        let mut q = GuestQueue::new(8);
        let mut h = guest_hdr(OP_RW, 1000, 5000);
        h.len = u32::MAX;
        q.mem_write(PKT, &h.to_bytes());
        q.add_chain(&[Desc::read(PKT, u32::MAX)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        assert_eq!(
            parse_tx(&chain, q.mem(), &mut Vec::new()),
            Err(PacketError::PayloadTooLong(u32::MAX))
        );
    }

    #[test]
    fn header_in_writable_descriptor_is_too_short() {
        let mut q = GuestQueue::new(8);
        q.add_chain(&[Desc::write(PKT, 64)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        assert_eq!(
            parse_tx(&chain, q.mem(), &mut Vec::new()),
            Err(PacketError::HeaderTooShort(0))
        );
    }

    #[test]
    fn rx_buffer_checks() {
        let mut q = GuestQueue::new(8);
        q.add_chain(&[Desc::write(PKT, 20)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        assert_eq!(rx_capacity(&chain, q.mem()), Err(PacketError::RxBufferTooShort(20)));
        q.add_chain(&[Desc::write(0x7fff_0000_0000, 4096)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        assert!(matches!(
            rx_capacity(&chain, q.mem()),
            Err(PacketError::RxBufferUnreachable(_))
        ));
        q.add_chain(&[Desc::write(PKT, u32::MAX)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        // Capped before the memory check would matter for the full length.
        assert!(rx_capacity(&chain, q.mem()).is_ok());
    }
}
