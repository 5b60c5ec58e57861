//! Counters of one virtio-net device. Statistics only: the guest and the network drive them.

use crate::virtio::metrics::device_metrics;

device_metrics! {
    /// Counters for one net device.
    pub struct NetMetrics {
        rx_frames,
        rx_bytes,
        tx_frames,
        tx_bytes,
        /// Frames from the TAP that fit no RX buffer.
        rx_dropped,
        /// Malformed guest frames, or frames the TAP refused.
        tx_dropped,
        /// Times the RX (TX) rate limiter stopped that direction until its timer fired.
        rx_rate_limiter_throttled,
        tx_rate_limiter_throttled,
        /// Chains so broken that the device reported a fatal error (the transport then needs a reset).
        fatal_chains,
    }
}
