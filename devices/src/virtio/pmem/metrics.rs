//! Counters of one pmem device. Statistics only: the guest drives them.

use crate::virtio::metrics::device_metrics;

device_metrics! {
    /// Counters for one pmem device.
    pub struct PmemMetrics {
        /// Flush requests answered.
        flushes,
        /// Flushes whose fsync failed, and requests of an unknown type or shape.
        failed_requests,
        /// Chains so broken that the device reported a fatal error (the transport then needs a reset).
        event_fails,
    }
}
