//! virtio-blk request parsing: descriptor chain → `BlockRequest`. Every check on guest input for the
//! block device lives here.
//!
//! Layout (virtio spec 1.2, 5.2.6): device-readable `{type: le32, reserved: le32, sector: le64}`, then
//! data (readable for writes, writable for reads and GET_ID), then one device-writable status byte — with
//! no assumption about how the driver splits that over descriptors.
//!
//! Never trusts: the type, the sector, any length, any descriptor address. Two error classes:
//! [`StatusSlot::locate`] fails only when no status byte can be written (the device must go
//! `NEEDS_RESET`); [`BlockRequest::parse`] fails with a [`RequestError`] that maps to a status code.

use super::{ID_BYTES, SECTOR_SIZE};
use crate::virtio::chain::{ChainError, ParsedChain};
use crate::virtio::GuestMemory;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the request header.
pub const HEADER_LEN: u64 = 16;

/// Why a request is refused. `status()` gives what the driver is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the chain has no device-writable byte for the status")]
    NoStatusByte,
    #[error("the status byte is not in guest memory: {0}")]
    StatusUnreachable(ChainError),
    #[error("the header needs {HEADER_LEN} device-readable bytes, the chain has {0}")]
    HeaderTooShort(u64),
    #[error("the header is not in guest memory: {0}")]
    HeaderUnreachable(ChainError),
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    UnalignedLength(u64),
    #[error("sectors {sector}..+{sectors} are past the end of the {capacity}-sector disk")]
    OutOfRange { sector: u64, sectors: u64, capacity: u64 },
    #[error("the drive is read-only")]
    ReadOnly,
    #[error("GET_ID needs {ID_BYTES} writable bytes, the chain has {0}")]
    IdBufferTooShort(u64),
    #[error("the data buffers are not in guest memory: {0}")]
    DataUnreachable(ChainError),
}

impl RequestError {
    /// The status byte the driver gets for this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }
}

/// Where the status byte goes: the last device-writable byte of the chain, checked to be in memory.
#[derive(Debug, Clone, Copy)]
pub struct StatusSlot {
    offset: u64,
}

impl StatusSlot {
    /// Finds the status byte. An error here means the driver cannot be answered at all.
    pub fn locate(chain: &ParsedChain, mem: &GuestMemory) -> Result<Self, RequestError> {
        let offset = chain.writable_len().checked_sub(1).ok_or(RequestError::NoStatusByte)?;
        chain
            .check_writable(mem, offset, 1)
            .map_err(RequestError::StatusUnreachable)?;
        Ok(StatusSlot { offset })
    }

    /// Bytes of the writable part before the status (available for data).
    pub fn data_capacity(&self) -> u64 {
        self.offset
    }

    /// Writes `status` (the location was checked by `locate`).
    pub fn write(&self, chain: &ParsedChain, mem: &GuestMemory, status: u8) -> Result<(), ChainError> {
        chain.write_at(mem, self.offset, &[status])
    }
}

/// A validated request: every range below is inside the disk and inside guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRequest {
    /// Read `len` bytes from byte `offset` of the disk into writable bytes `[0, len)`.
    Read { offset: u64, len: u64 },
    /// Write readable bytes `[HEADER_LEN, HEADER_LEN + len)` at byte `offset` of the disk.
    Write { offset: u64, len: u64 },
    /// Make every completed write durable.
    Flush,
    /// Write the drive id into writable bytes `[0, ID_BYTES)`.
    GetId,
}

/// What `parse` needs to know about the disk.
#[derive(Debug, Clone, Copy)]
pub struct DiskGeometry {
    pub capacity_sectors: u64,
    pub read_only: bool,
}

impl BlockRequest {
    /// Validates the request in `chain` against the disk.
    pub fn parse(
        chain: &ParsedChain,
        status: &StatusSlot,
        mem: &GuestMemory,
        disk: DiskGeometry,
    ) -> Result<Self, RequestError> {
        if chain.readable_len() < HEADER_LEN {
            return Err(RequestError::HeaderTooShort(chain.readable_len()));
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        chain
            .read_at(mem, 0, &mut raw)
            .map_err(RequestError::HeaderUnreachable)?;
        let kind = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&raw[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);

        match kind {
            VIRTIO_BLK_T_IN => {
                let len = status.data_capacity();
                let offset = check_range(sector, len, disk)?;
                chain
                    .check_writable(mem, 0, len)
                    .map_err(RequestError::DataUnreachable)?;
                Ok(BlockRequest::Read { offset, len })
            }
            VIRTIO_BLK_T_OUT => {
                if disk.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let len = chain.readable_len() - HEADER_LEN;
                let offset = check_range(sector, len, disk)?;
                chain
                    .check_readable(mem, HEADER_LEN, len)
                    .map_err(RequestError::DataUnreachable)?;
                Ok(BlockRequest::Write { offset, len })
            }
            VIRTIO_BLK_T_FLUSH => Ok(BlockRequest::Flush),
            VIRTIO_BLK_T_GET_ID => {
                if status.data_capacity() < ID_BYTES as u64 {
                    return Err(RequestError::IdBufferTooShort(status.data_capacity()));
                }
                chain
                    .check_writable(mem, 0, ID_BYTES as u64)
                    .map_err(RequestError::DataUnreachable)?;
                Ok(BlockRequest::GetId)
            }
            other => Err(RequestError::Unsupported(other)),
        }
    }
}

/// Checks `len` bytes from `sector` against the disk; returns the byte offset.
#[allow(clippy::manual_is_multiple_of)] // `is_multiple_of` is newer than the workspace's rust-version
fn check_range(sector: u64, len: u64, disk: DiskGeometry) -> Result<u64, RequestError> {
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::UnalignedLength(len));
    }
    let sectors = len / SECTOR_SIZE;
    let out_of_range = RequestError::OutOfRange {
        sector,
        sectors,
        capacity: disk.capacity_sectors,
    };
    let end = sector.checked_add(sectors).ok_or(out_of_range.clone())?;
    if end > disk.capacity_sectors {
        return Err(out_of_range);
    }
    // sector < capacity_sectors <= u64::MAX / 512, so this cannot overflow.
    Ok(sector * SECTOR_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::test_utils::{offer_request, DATA, HDR, STATUS};
    use crate::virtio::test_utils::{Desc, GuestQueue};

    const DISK: DiskGeometry = DiskGeometry {
        capacity_sectors: 16,
        read_only: false,
    };

    fn parse(q: &mut GuestQueue) -> Result<BlockRequest, RequestError> {
        let chain = ParsedChain::parse(q.pop()).unwrap();
        let slot = StatusSlot::locate(&chain, q.mem())?;
        BlockRequest::parse(&chain, &slot, q.mem(), DISK)
    }

    #[test]
    fn read_request_parses() {
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_IN, 2, &[Desc::write(DATA, 1024)]);
        assert_eq!(
            parse(&mut q),
            Ok(BlockRequest::Read {
                offset: 1024,
                len: 1024
            })
        );
    }

    #[test]
    fn read_past_end_is_out_of_range() {
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_IN, 15, &[Desc::write(DATA, 1024)]);
        assert!(matches!(parse(&mut q), Err(RequestError::OutOfRange { .. })));
    }

    #[test]
    fn sector_overflow_is_out_of_range() {
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_IN, u64::MAX, &[Desc::write(DATA, 512)]);
        assert!(matches!(parse(&mut q), Err(RequestError::OutOfRange { .. })));
    }

    #[test]
    fn unaligned_length_is_refused() {
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 100)]);
        assert_eq!(parse(&mut q), Err(RequestError::UnalignedLength(100)));
    }

    #[test]
    fn unknown_type_is_unsupported() {
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, 0xdead, 0, &[]);
        let err = parse(&mut q).unwrap_err();
        assert_eq!(err, RequestError::Unsupported(0xdead));
        assert_eq!(err.status(), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn short_header_is_ioerr() {
        let mut q = GuestQueue::new(16);
        q.add_chain(&[Desc::read(HDR, 8), Desc::write(STATUS, 1)]);
        assert_eq!(parse(&mut q), Err(RequestError::HeaderTooShort(8)));
    }

    #[test]
    fn header_split_over_descriptors_parses() {
        let mut q = GuestQueue::new(16);
        crate::virtio::block::test_utils::write_header(&q, VIRTIO_BLK_T_IN, 3);
        q.add_chain(&[
            Desc::read(HDR, 5),
            Desc::read(HDR + 5, 11),
            Desc::write(DATA, 512),
            Desc::write(STATUS, 1),
        ]);
        assert_eq!(
            parse(&mut q),
            Ok(BlockRequest::Read {
                offset: 3 * 512,
                len: 512
            })
        );
    }

    #[test]
    fn missing_status_is_fatal() {
        let mut q = GuestQueue::new(16);
        q.add_chain(&[Desc::read(HDR, 16)]);
        assert_eq!(parse(&mut q), Err(RequestError::NoStatusByte));
    }

    #[test]
    fn status_outside_memory_is_fatal() {
        let mut q = GuestQueue::new(16);
        q.add_chain(&[Desc::read(HDR, 16), Desc::write(0x7000_0000, 1)]);
        assert!(matches!(parse(&mut q), Err(RequestError::StatusUnreachable(_))));
    }

    #[test]
    fn data_outside_memory_is_ioerr() {
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_IN, 0, &[Desc::write(0x7000_0000, 512)]);
        assert!(matches!(parse(&mut q), Err(RequestError::DataUnreachable(_))));
    }

    #[test]
    fn write_data_in_writable_descriptor_is_refused() {
        // Wrong direction: the "data" of a write sits in a device-writable buffer, so the device sees
        // an empty write (0 sectors) -- valid but harmless -- and never reads guest-writable memory.
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_OUT, 0, &[Desc::write(DATA, 512)]);
        assert_eq!(parse(&mut q), Ok(BlockRequest::Write { offset: 0, len: 0 }));
    }

    #[test]
    fn get_id_needs_twenty_bytes() {
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_GET_ID, 0, &[Desc::write(DATA, 8)]);
        assert_eq!(parse(&mut q), Err(RequestError::IdBufferTooShort(8)));
    }
}
