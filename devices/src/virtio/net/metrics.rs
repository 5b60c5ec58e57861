//! Counters of one virtio-net device. Statistics only: the guest and the network drive them.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct NetMetrics {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames from the TAP that fit no RX buffer.
    pub rx_dropped: AtomicU64,
    /// Malformed guest frames, or frames the TAP refused.
    pub tx_dropped: AtomicU64,
    /// Chains so broken that the device went `NEEDS_RESET`.
    pub fatal_chains: AtomicU64,
}

impl NetMetrics {
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}
