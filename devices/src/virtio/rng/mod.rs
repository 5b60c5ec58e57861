//! virtio-rng (Firecracker's entropy device): the guest offers writable buffers and gets them back filled
//! with bytes from the host's `getrandom(2)`. `device` is the core both transports drive (hull's
//! virtio-mmio and `hull vhost-user rng`), `source` the host randomness behind a small interface, `metrics`
//! its counters.
//!
//! Never trusts: descriptor addresses and lengths from the guest. A buffer is filled up to
//! [`MAX_BYTES_PER_REQUEST`], however large the chain says it is.

pub mod device;
pub mod metrics;
pub mod source;

pub use device::{Rng, RngError};
pub use metrics::RngMetrics;
pub use source::{EntropySource, HostRandom};

/// Most bytes one request gets: bounds the host work (and bucket tokens) a single chain can ask for. The
/// Linux driver asks for at most a page at a time.
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
