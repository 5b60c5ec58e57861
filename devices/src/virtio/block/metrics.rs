//! Per-drive counters the API can report. Written by the device core only; values are whatever the
//! guest caused, so readers must treat them as statistics, not invariants.

use crate::virtio::metrics::device_metrics;

device_metrics! {
    /// Counters for one block device.
    pub struct BlockMetrics {
        read_requests,
        write_requests,
        flush_requests,
        get_id_requests,
        read_bytes,
        write_bytes,
        /// Requests answered with `VIRTIO_BLK_S_IOERR` (bad range, read-only, backend error).
        io_errors,
        /// Requests answered with `VIRTIO_BLK_S_UNSUPP`.
        unsupported,
        /// Requests refused before they ran (bad range, read-only, unknown type): Firecracker's
        /// `invalid_reqs_count`.
        invalid_requests,
        /// Valid requests the backing file failed (Firecracker's `execute_fails`).
        execute_fails,
        /// Times the drive's rate limiter stopped the queue until its timer fired.
        rate_limiter_throttled,
        /// Chains so broken that the device reported a fatal error (the transport then needs a reset).
        fatal_chains,
    }
}
