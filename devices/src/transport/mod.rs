//! Transports that carry a [`crate::virtio::VirtioDevice`] core to a guest inside hull. `mmio` is
//! virtio-mmio version 2 (virtio 1.x): a 4 KiB register window on the MMIO bus per device. (The other
//! transport, vhost-user, serves the same cores to another VMM and lives in `crate::vhost_user`.)
//!
//! Never trusted here: any value the driver writes into a register window.

pub mod mmio;

pub use mmio::{MmioTransport, TransportError};
