//! virtio-balloon (Firecracker's balloon device): the host sets a target size, the guest driver gives pages
//! back (inflate) or takes them again (deflate), reports the size it reached in the config space, and, if
//! statistics are enabled, sends its memory statistics whenever the device returns the stats buffer (every
//! `stats_polling_interval_s`). `device` is the core (virtio-mmio in hull; QEMU has no vhost-user balloon),
//! `request` parses page-frame lists and statistics, `metrics` its counters.
//!
//! Never trusts: page frame numbers (each range is checked against guest memory before it is released),
//! statistics buffers (bounded, unknown tags ignored), the `actual` value the driver writes.

pub mod device;
pub mod metrics;
pub mod request;

pub use device::{Balloon, BalloonError, BalloonStats};
pub use metrics::BalloonMetrics;

/// Queue indices.
pub const INFLATE_QUEUE: usize = 0;
pub const DEFLATE_QUEUE: usize = 1;
pub const STATS_QUEUE: usize = 2;

/// Feature bits (virtio spec 1.2, 5.5.3).
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;

/// The balloon's page size, whatever the host's: PFNs are guest addresses shifted by 12.
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// 4 KiB pages in a MiB.
pub const PAGES_PER_MIB: u64 = 256;
