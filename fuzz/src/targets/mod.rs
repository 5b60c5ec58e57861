//! The fuzz targets, one `fn(&[u8])` each, grouped by the crate they feed.

pub mod agent;
pub mod api;
pub mod mmds;
pub mod pci;
pub mod snapshot;
pub mod vhost_user;
pub mod virtio;
pub mod vsock;
