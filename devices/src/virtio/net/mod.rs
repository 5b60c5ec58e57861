//! virtio-net over a TAP device. `device` is the transport-agnostic core (RX/TX queues, MAC in config
//! space), `packet` validates frames the guest hands over and RX buffers it offers, `tap` is the host
//! side behind the `NetBackend` trait.
//!
//! Never trusts: the guest's virtio-net headers (zeroed before reaching the host: no offloads are
//! negotiated), frame lengths, descriptor layout.

pub mod device;
pub mod metrics;
pub mod packet;
pub mod tap;
#[cfg(test)]
pub mod test_utils;

pub use device::{Net, NetConfig};
pub use metrics::NetMetrics;
pub use tap::{NetBackend, Tap};

/// `struct virtio_net_hdr_v1`: 12 bytes with VIRTIO_F_VERSION_1.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame we move: a 64 KiB IP packet plus Ethernet header and the virtio-net header.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 14 + 65535;
/// Shortest frame accepted from the guest (virtio-net header + Ethernet header).
pub const MIN_FRAME_LEN: usize = VNET_HDR_LEN + 14;

/// Feature bits (virtio spec 1.2, 5.1.3).
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
/// Config-space status: link up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
