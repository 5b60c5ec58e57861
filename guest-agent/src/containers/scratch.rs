//! The scratch disk: a writable ext4 disk the host gives the VM (a sparse file on the host) for the
//! containers' writable layers, so what a container writes to its root file system goes to the host's disk
//! and not into the guest's RAM, and may grow as large as the disk. Mounted in the agent's mount namespace at
//! its first use; each container's overlay upper and work directories live in a directory named after the
//! container (an id the agent validated), removed with the container.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::block_device::{prepare_block_device, resolve_device};
use super::error::{io_err, AgentError};
use crate::sys::mount;

const SCRATCH_DIR: &str = "/run/hull/scratch";

/// The device mounted at [`SCRATCH_DIR`], once one is.
static MOUNTED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// An empty directory for container `id`'s writable layers on the scratch disk `device` ("vdb" or
/// "serial:<s>"), mounting the disk first if this is its first use.
pub(super) fn container_dir(device: &str, id: &str) -> Result<PathBuf, AgentError> {
    let mut mounted = MOUNTED.lock().unwrap_or_else(|p| p.into_inner());
    let dev = resolve_device(device)?;
    match mounted.as_ref() {
        Some(m) if *m == dev => {}
        Some(_) => {
            return Err(AgentError::BadDevice(format!(
                "{device} (another scratch disk is in use)"
            )))
        }
        None => {
            prepare_block_device(&dev)?;
            std::fs::create_dir_all(SCRATCH_DIR).map_err(io_err("mkdir the scratch mount point"))?;
            mount(
                Some(&dev.to_string_lossy()),
                Path::new(SCRATCH_DIR),
                Some("ext4"),
                0,
                // The host made it with lazy inode tables: no zeroing thread burning the guest's CPU.
                Some("noinit_itable"),
            )
            .map_err(io_err(format!("mounting the scratch disk {}", dev.display())))?;
            *mounted = Some(dev);
        }
    }
    let dir = Path::new(SCRATCH_DIR).join(id);
    // What an earlier container of the same id left (it ended with the VM's previous life) is not ours.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(io_err("mkdir the container's scratch directory"))?;
    Ok(dir)
}

/// Removes container `id`'s writable layers from the scratch disk, if it has one.
pub(super) fn remove(id: &str) {
    if MOUNTED.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
        let _ = std::fs::remove_dir_all(Path::new(SCRATCH_DIR).join(id));
    }
}
