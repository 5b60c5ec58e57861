//! `hull vhost-user rng`: virtio-rng fed from the host's getrandom, served over vhost-user (QEMU's
//! `vhost-user-rng` device).
//!
//! Owns: building the `Rng` core. Never trusts the frontend or the guest: see `super`.

use std::path::PathBuf;

use super::{serve, Error, Protocol};
use crate::virtio::rng::Rng;

/// Arguments of `hull vhost-user rng`.
#[derive(Debug, Clone)]
pub struct RngArgs {
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
}

/// Serves the entropy device until the frontend disconnects.
pub fn run(args: &RngArgs) -> Result<(), Error> {
    let device = Rng::new(&Default::default()).map_err(|e| Error::Device {
        device: "rng",
        reason: e.to_string(),
    })?;
    // virtio-rng has no config space, so CONFIG is not offered (QEMU's vhost-user-rng warns about it), and
    // the relay tolerates a SET_VRING_ENABLE that comes before SET_FEATURES.
    serve("vhost-user-rng", device, 1, Protocol::DeferEarlyEnable, &args.socket)
}
