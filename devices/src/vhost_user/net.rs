//! `hull vhost-user net`: virtio-net over a TAP device, served over vhost-user.
//!
//! Owns: turning CLI arguments into a `Net` core. Never trusts the frontend or the guest: see `super`.

use std::path::PathBuf;

use super::Error;

/// Arguments of `hull vhost-user net`.
#[derive(Debug, Clone)]
pub struct NetArgs {
    pub socket: PathBuf,
    pub tap: String,
}

/// Serves the net device until the frontend disconnects.
pub fn run(_args: &NetArgs) -> Result<(), Error> {
    Err(Error::Device { device: "net", reason: "not implemented yet".into() })
}
