//! hull's emulated devices. `bus` routes vCPU exits to devices; `legacy` holds the port-I/O and MMIO
//! devices every microVM has (8250 serial, i8042, boot timer); `virtio` holds block, net and vsock, each
//! written once and served over virtio-mmio inside hull or as a vhost-user backend.

pub mod bus;
pub mod legacy;
pub mod transport;
pub mod vhost_user;
pub mod virtio;
