//! `hull vhost-user vsock`: virtio-vsock with the hybrid unix-socket backend, served over vhost-user.
//! QEMU's vhost-user-vsock keeps the event queue to itself, so only rx and tx are served here.
//!
//! Owns: turning CLI arguments into a `Vsock` core. Never trusts the frontend or the guest: see `super`.

use std::path::PathBuf;

use super::{serve, Error, Protocol};
use crate::stale_socket::OwnedSocketPath;
use crate::virtio::vsock::{Vsock, VsockConfig};

/// Arguments of `hull vhost-user vsock`.
#[derive(Debug, Clone)]
pub struct VsockArgs {
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// Host-side socket: hosts connect here; guest connections to port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Serves the vsock device until the frontend disconnects.
pub fn run(args: &VsockArgs) -> Result<(), Error> {
    if args.guest_cid < 3 || args.guest_cid > u64::from(u32::MAX) {
        return Err(Error::Device {
            device: "vsock",
            reason: format!("guest CID {} is reserved or too large", args.guest_cid),
        });
    }
    let cfg = VsockConfig {
        guest_cid: args.guest_cid,
        uds_path: args.uds_path.clone(),
    };
    let device = Vsock::new(&cfg).map_err(|e| Error::Device {
        device: "vsock",
        reason: e.to_string(),
    })?;
    // The device has just bound the host-side socket. Worker threads may still hold the device when the
    // process exits, so the socket is removed here, and only if it is still the one bound (never a file
    // someone put in its place meanwhile).
    let _bound = OwnedSocketPath::new(&args.uds_path);
    serve("vhost-user-vsock", device, 2, Protocol::Direct, &args.socket)
}
