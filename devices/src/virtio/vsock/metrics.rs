//! Counters of the vsock device and its host-side backend. Statistics only: the guest drives them.

use crate::virtio::metrics::device_metrics;

device_metrics! {
    /// Counters for one vsock device and its connections.
    pub struct VsockMetrics {
        tx_packets,
        tx_bytes,
        rx_packets,
        rx_bytes,
        /// TX packets dropped because they were malformed or unroutable.
        tx_dropped,
        conns_opened,
        conns_closed,
        rst_sent,
        /// Chains so broken that the device reported a fatal error (the transport then needs a reset).
        fatal_chains,
    }
}
