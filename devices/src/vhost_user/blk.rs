//! `hull vhost-user blk`: a raw-file virtio-blk disk served over vhost-user to one frontend. With a control
//! socket (`--control`), the disk is a *slot*: it may start on an empty placeholder file and get its image
//! later (`blk_control`), the frontend being told through `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`.
//!
//! Owns: turning CLI arguments into a `Block` core. Never trusts the frontend or the guest: see `super`.

use std::path::PathBuf;

use super::blk_control::{ControlSocket, SlotControl};
use super::{serve, serve_with, ConfigNotifier, Error, Protocol};
use crate::virtio::block::{Block, BlockConfig};

/// Arguments of `hull vhost-user blk`.
#[derive(Debug, Clone)]
pub struct BlkArgs {
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
    /// The raw disk image (may be empty: capacity 0).
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
    /// `GET_ID` answer (default: the image's file name).
    pub id: Option<String>,
    /// The control socket for `attach`/`detach` requests, if any.
    pub control: Option<PathBuf>,
}

/// Serves the disk until the frontend disconnects.
pub fn run(args: &BlkArgs) -> Result<(), Error> {
    let cfg = BlockConfig {
        path: args.path.clone(),
        read_only: args.read_only,
        id: args.id.clone(),
        rate_limiter: Default::default(),
    };
    let device = Block::new(&cfg).map_err(|e| Error::Device {
        device: "blk",
        reason: e.to_string(),
    })?;
    let Some(control_path) = &args.control else {
        return serve("vhost-user-blk", device, 1, Protocol::Direct, &args.socket);
    };
    let notifier = ConfigNotifier::new();
    // Bound before the vhost-user socket, and removed (on drop) when serving ends.
    let mut control = None;
    serve_with(
        "vhost-user-blk",
        device,
        1,
        Protocol::ConfigNotify(notifier.clone()),
        &args.socket,
        |handle| {
            let socket =
                ControlSocket::start(control_path, SlotControl::new(handle, notifier)).map_err(|e| Error::Device {
                    device: "blk",
                    reason: format!("binding the control socket {}: {e}", control_path.display()),
                })?;
            control = Some(socket);
            Ok(())
        },
    )
}
