//! virtio-blk: a raw-file-backed disk. `device` is the core both transports drive, `request` turns a
//! descriptor chain into a validated `BlockRequest`, `backend` is the file behind the disk. The file can be
//! replaced while the guest runs (`Block::attach`/`Block::detach`: the "slot" model, where a drive boots
//! on an empty placeholder and gets its image later); the transport then announces a config change.
//!
//! Never trusts: request headers, sector numbers, data lengths or descriptor addresses from the guest.

pub mod backend;
pub mod device;
pub mod metrics;
pub mod request;
#[cfg(test)]
pub mod test_utils;

pub use backend::{DiskBackend, EmptyDisk, RawFile};
pub use device::{Block, BlockConfig, BlockError};
pub use metrics::BlockMetrics;

/// Size of a virtio-blk sector, whatever the backing file's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the drive id `GET_ID` returns.
pub const ID_BYTES: usize = 20;

/// Feature bits (virtio spec 1.2, 5.2.3).
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
