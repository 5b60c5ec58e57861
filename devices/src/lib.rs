//! hull's emulated devices. `bus` routes vCPU exits to devices; `legacy` holds the port-I/O and MMIO
//! devices every microVM has (8250 serial, i8042, boot timer); `virtio` holds block, net and vsock, each
//! written once and served over virtio-mmio or virtio-pci inside hull (`transport`) or as a vhost-user
//! backend (`vhost_user`).
//!
//! Every virtio device has one folder with the same parts: `device.rs` (the core: features, config
//! space, queues), `request.rs`/`packet.rs` (all validation of guest data, typed errors), `metrics.rs`
//! (its counters), `test_utils.rs`, and its host-side backend (a file, a TAP, or vsock's `muxer` and
//! `connection`). Shared by all three: `virtio::chain` (the one loop over a queue's descriptor chains),
//! `virtio::metrics` (the counter type) and the `VirtioDevice` contract in `virtio`. The cores never
//! remember a fatal error; the transports do (`transport::NeedsReset`). `dirty_log` records the guest pages
//! device code wrote, for diff snapshots.

pub mod bus;
pub mod dirty_log;
pub mod legacy;
pub mod mmds;
pub mod rate_limiter;
pub mod stale_socket;
pub mod transport;
pub mod vhost_user;
pub mod virtio;
