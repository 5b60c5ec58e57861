//! `hull vhost-user vsock`: virtio-vsock with the hybrid unix-socket backend, served over vhost-user.
//!
//! Owns: turning CLI arguments into a `Vsock` core. Never trusts the frontend or the guest: see `super`.

use std::path::PathBuf;

use super::Error;

/// Arguments of `hull vhost-user vsock`.
#[derive(Debug, Clone)]
pub struct VsockArgs {
    pub socket: PathBuf,
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// Serves the vsock device until the frontend disconnects.
pub fn run(_args: &VsockArgs) -> Result<(), Error> {
    Err(Error::Device { device: "vsock", reason: "not implemented yet".into() })
}
