//! Counters of the balloon device, named as Firecracker's `balloon` metrics section. Statistics only: the
//! guest drives them.

use crate::virtio::metrics::device_metrics;

device_metrics! {
    /// Counters for the balloon device.
    pub struct BalloonMetrics {
        /// Inflate queue notifications handled.
        inflate_count,
        /// Deflate queue notifications handled.
        deflate_count,
        /// Statistics buffers received from the guest.
        stats_updates_count,
        /// Times the device asked the guest for fresh statistics.
        stats_update_fails,
        /// Pages released to the host (madvise) on inflate.
        released_pages,
        /// Page ranges refused: outside guest memory, or the release failed.
        bad_ranges,
        /// Chains so broken that the device reported a fatal error (the transport then needs a reset).
        event_fails,
    }
}
