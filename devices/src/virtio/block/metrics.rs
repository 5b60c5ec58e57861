//! Per-drive counters the API can report. Written by the device core only; values are whatever the
//! guest caused, so readers must treat them as statistics, not invariants.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for one block device.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    pub read_requests: AtomicU64,
    pub write_requests: AtomicU64,
    pub flush_requests: AtomicU64,
    pub get_id_requests: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    /// Requests answered with `VIRTIO_BLK_S_IOERR` (bad range, read-only, backend error).
    pub io_errors: AtomicU64,
    /// Requests answered with `VIRTIO_BLK_S_UNSUPP`.
    pub unsupported: AtomicU64,
    /// Chains so broken that the device went `NEEDS_RESET`.
    pub fatal_chains: AtomicU64,
}

impl BlockMetrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value of a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
