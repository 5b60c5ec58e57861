//! virtio-vsock with Firecracker's hybrid unix-socket backend. `device` is the transport-agnostic core,
//! `packet` validates what the guest puts in the queues, and behind the `VsockBackend` interface
//! (`backend`) the host side: `muxer` owns a listener at `uds_path` for host-initiated connections
//! (`CONNECT <port>\n` → `OK <hostport>\n`, see `unix`), connects guest-initiated ones to
//! `<uds_path>_<port>`, and routes packets to each `connection`, which runs one stream's state machine
//! with credit-based flow control in both directions.
//!
//! Never trusts: packet headers, lengths, ports or credit counters from the guest, nor bytes from host
//! peers (the `CONNECT` line is length-bounded and parsed strictly).

pub mod backend;
pub mod connection;
pub mod device;
pub mod metrics;
pub mod muxer;
pub mod packet;
#[cfg(test)]
pub mod test_utils;
pub mod unix;

pub use backend::VsockBackend;
pub use device::{Vsock, VsockConfig};
pub use metrics::VsockMetrics;
pub use muxer::VsockMuxer;
pub use unix::UnixBackendError;

/// The host's context id.
pub const HOST_CID: u64 = 2;
/// `VIRTIO_VSOCK_TYPE_STREAM`.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload of one packet (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PKT_PAYLOAD: usize = 64 * 1024;

/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
