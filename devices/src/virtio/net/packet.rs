//! Frames between the guest's queues and the TAP: validation of TX chains (header + Ethernet frame in
//! device-readable buffers) and of RX buffers, and the virtio-net header rules we apply.
//!
//! Never trusts: the guest's header fields (flags, GSO type, checksum offsets are zeroed: nothing was
//! negotiated that would give them meaning) or any length.

use super::{MAX_FRAME_LEN, MIN_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::chain::{ChainError, ParsedChain};
use crate::virtio::GuestMemory;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("TX frame of {0} bytes is shorter than a virtio-net and an Ethernet header")]
    TooShort(u64),
    #[error("TX frame of {0} bytes exceeds {MAX_FRAME_LEN}")]
    TooLong(u64),
    #[error("TX frame is not in guest memory: {0}")]
    Unreachable(ChainError),
    #[error("RX buffer of {0} writable bytes cannot hold a virtio-net header")]
    RxBufferTooShort(u64),
}

/// Reads a TX frame (virtio-net header + Ethernet frame) into `buf`, with the header zeroed.
pub fn read_tx_frame(chain: &ParsedChain, mem: &GuestMemory, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = chain.readable_len();
    if len < MIN_FRAME_LEN as u64 {
        return Err(FrameError::TooShort(len));
    }
    if len > MAX_FRAME_LEN as u64 {
        return Err(FrameError::TooLong(len));
    }
    buf.resize(len as usize, 0);
    chain.read_at(mem, 0, buf).map_err(FrameError::Unreachable)?;
    buf[..VNET_HDR_LEN].fill(0);
    Ok(())
}

/// Writable bytes of an RX buffer (at least a header).
pub fn rx_capacity(chain: &ParsedChain) -> Result<u64, FrameError> {
    let cap = chain.writable_len();
    if cap < VNET_HDR_LEN as u64 {
        return Err(FrameError::RxBufferTooShort(cap));
    }
    Ok(cap)
}

/// Sets the RX header the guest sees: no offload flags, `num_buffers` = 1.
pub fn prepare_rx_header(frame: &mut [u8]) {
    if frame.len() >= VNET_HDR_LEN {
        frame[..VNET_HDR_LEN].fill(0);
        frame[10..12].copy_from_slice(&1u16.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{Desc, GuestQueue};

    #[test]
    fn tx_frame_header_is_zeroed() {
        let mut q = GuestQueue::new(8);
        let mut frame = vec![0xffu8; VNET_HDR_LEN];
        frame.extend_from_slice(&[0xaa; 60]);
        q.mem_write(0x10_000, &frame);
        q.add_chain(&[Desc::read(0x10_000, 5), Desc::read(0x10_005, frame.len() as u32 - 5)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        let mut buf = Vec::new();
        read_tx_frame(&chain, q.mem(), &mut buf).unwrap();
        assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&buf[VNET_HDR_LEN..], &[0xaa; 60][..]);
    }

    #[test]
    fn tx_frame_limits() {
        let mut q = GuestQueue::new(8);
        q.add_chain(&[Desc::read(0x10_000, 20)]);
        q.add_chain(&[Desc::read(0x10_000, u32::MAX)]);
        q.add_chain(&[Desc::write(0x10_000, 100)]);
        q.add_chain(&[Desc::read(0x7f00_0000_0000, 100)]);
        let chains: Vec<ParsedChain> = (0..4).map(|_| ParsedChain::parse(q.pop()).unwrap()).collect();
        let mut buf = Vec::new();
        assert_eq!(
            read_tx_frame(&chains[0], q.mem(), &mut buf),
            Err(FrameError::TooShort(20))
        );
        assert_eq!(
            read_tx_frame(&chains[1], q.mem(), &mut buf),
            Err(FrameError::TooLong(u64::from(u32::MAX)))
        );
        // Wrong direction: nothing device-readable.
        assert_eq!(
            read_tx_frame(&chains[2], q.mem(), &mut buf),
            Err(FrameError::TooShort(0))
        );
        assert!(matches!(
            read_tx_frame(&chains[3], q.mem(), &mut buf),
            Err(FrameError::Unreachable(_))
        ));
    }
}
