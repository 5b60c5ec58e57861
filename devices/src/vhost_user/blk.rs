//! `hull vhost-user blk`: a raw-file virtio-blk disk served over vhost-user to one frontend.
//!
//! Owns: turning CLI arguments into a `Block` core. Never trusts the frontend or the guest: see `super`.

use std::path::PathBuf;

use super::{serve, Error, Protocol};
use crate::virtio::block::{Block, BlockConfig};

/// Arguments of `hull vhost-user blk`.
#[derive(Debug, Clone)]
pub struct BlkArgs {
    /// The vhost-user socket to listen on.
    pub socket: PathBuf,
    /// The raw disk image.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub read_only: bool,
    /// `GET_ID` answer (default: the image's file name).
    pub id: Option<String>,
}

/// Serves the disk until the frontend disconnects.
pub fn run(args: &BlkArgs) -> Result<(), Error> {
    let cfg = BlockConfig {
        path: args.path.clone(),
        read_only: args.read_only,
        id: args.id.clone(),
    };
    let device = Block::new(&cfg).map_err(|e| Error::Device {
        device: "blk",
        reason: e.to_string(),
    })?;
    serve("vhost-user-blk", device, 1, Protocol::Direct, &args.socket)
}
