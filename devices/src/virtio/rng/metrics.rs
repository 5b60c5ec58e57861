//! Counters of the entropy device, named as Firecracker's `entropy` metrics section. Statistics only: the
//! guest drives them.

use crate::virtio::metrics::device_metrics;

device_metrics! {
    /// Counters for the entropy device.
    pub struct RngMetrics {
        /// Queue notifications and rate-limiter wake-ups handled.
        entropy_event_count,
        /// Random bytes written into guest buffers.
        entropy_bytes,
        /// Requests answered empty because the host's getrandom failed.
        host_rng_fails,
        /// Times the rate limiter stopped the queue until its timer fired.
        entropy_rate_limiter_throttled,
        /// Chains so broken that the device reported a fatal error (the transport then needs a reset).
        entropy_event_fails,
    }
}
