//! Counters of the vsock device and its host-side backend. Statistics only: the guest drives them.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct VsockMetrics {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// TX packets dropped because they were malformed or unroutable.
    pub tx_dropped: AtomicU64,
    pub conns_opened: AtomicU64,
    pub conns_closed: AtomicU64,
    pub rst_sent: AtomicU64,
    /// Chains so broken that the device went `NEEDS_RESET`.
    pub fatal_chains: AtomicU64,
}

impl VsockMetrics {
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
