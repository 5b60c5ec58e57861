//! `hull vhost-user net`: virtio-net over a TAP device, served over vhost-user. The frontend (QEMU) owns
//! the config space (MAC) in this mode; the backend moves frames.
//!
//! Owns: turning CLI arguments into a `Net` core. Never trusts the frontend or the guest: see `super`.

use std::path::PathBuf;

use super::{serve, Error, Protocol};
use crate::virtio::net::{Net, NetConfig};

/// Arguments of `hull vhost-user net`.
#[derive(Debug, Clone)]
pub struct NetArgs {
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
    /// TAP interface to attach to (created if missing and allowed).
    pub tap: String,
}

/// Serves the net device until the frontend disconnects.
pub fn run(args: &NetArgs) -> Result<(), Error> {
    let device = Net::new(&NetConfig {
        tap: args.tap.clone(),
        mac: None,
        rx_rate_limiter: Default::default(),
        tx_rate_limiter: Default::default(),
    })
    .map_err(|e| Error::Device {
        device: "net",
        reason: e.to_string(),
    })?;
    serve("vhost-user-net", device, 2, Protocol::DeferEarlyEnable, &args.socket)
}
