//! `hull vhost-user net`: virtio-net over a TAP device, served over vhost-user. The frontend (QEMU) owns
//! the config space (MAC) in this mode; the backend moves frames, and with MMDS answers the guest's
//! metadata requests itself (see `crate::mmds`).
//!
//! Owns: turning CLI arguments into a `Net` core. Never trusts the frontend or the guest: see `super`.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{serve, Error, Protocol};
use crate::mmds::{MmdsStack, SharedMmds};
use crate::virtio::net::{Net, NetConfig};

/// Arguments of `hull vhost-user net`.
#[derive(Debug, Clone)]
pub struct NetArgs {
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
    /// TAP interface to attach to (created if missing and allowed).
    pub tap: String,
    /// MMDS to serve on this interface, at this address.
    pub mmds: Option<(SharedMmds, Ipv4Addr)>,
}

/// Serves the net device until the frontend disconnects.
pub fn run(args: &NetArgs) -> Result<(), Error> {
    let mut device = Net::new(&NetConfig {
        tap: args.tap.clone(),
        mac: None,
        rx_rate_limiter: Default::default(),
        tx_rate_limiter: Default::default(),
    })
    .map_err(|e| Error::Device {
        device: "net",
        reason: e.to_string(),
    })?;
    if let Some((mmds, ipv4)) = &args.mmds {
        device.set_mmds(MmdsStack::new(mmds.clone(), *ipv4));
        tracing::info!(%ipv4, "serving MMDS on this interface");
    }
    serve("vhost-user-net", device, 2, Protocol::DeferEarlyEnable, &args.socket)
}
