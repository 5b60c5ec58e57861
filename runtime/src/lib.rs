//! What `hull run` and the containerd shim (`containerd-shim-hull-v2`) share to run OCI workloads in a
//! microVM: the two VM backends behind one interface ([`backend`]), the client of the guest's hull-agent
//! ([`agent`]), the client of hull's API socket ([`api_client`]), rootfs block images ([`image`]; `hull run`
//! keeps packed ones in [`image_cache`]), runc-style spec defaults ([`spec`]), ownership of child processes
//! and directories ([`guard`]), confinement of the VM's processes ([`jail`]: hull-jailer, the jail uid/gid;
//! [`jail_uid`]: a uid per VM), and where the guest kernel and initramfs are found ([`guest_files`]).
//!
//! Both build the agent's `CreateContainerRequest` with [`container`] (rootfs and volume disks, copied files,
//! attached streams, the spec); each brings its own spec and disks.

pub mod agent;
pub mod api_client;
pub mod backend;
pub mod container;
pub mod guard;
pub mod image;
pub mod image_cache;
pub mod jail;
pub mod jail_uid;
pub mod output;
pub mod spec;
pub mod template;
pub mod vmm_binary;

use std::path::{Path, PathBuf};

/// The build cache `resources/build-guest.sh` fills: `$HULL_CACHE`, else `~/.cache/hull`.
pub fn build_cache() -> Option<PathBuf> {
    std::env::var_os("HULL_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hull")))
}

/// The newest entry of the build cache that `pick` accepts (and maps to the file to use).
fn newest_in_cache(pick: impl Fn(&Path) -> Option<PathBuf>) -> Option<PathBuf> {
    std::fs::read_dir(build_cache()?)
        .ok()?
        .flatten()
        .filter_map(|e| pick(&e.path()))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

#[derive(Debug, thiserror::Error)]
pub enum GuestFilesError {
    #[error("no guest {0}: pass its path (bash resources/build-guest.sh builds it and prints the path)")]
    Missing(&'static str),
    #[error("{0} is not a file")]
    NotAFile(PathBuf),
}

/// The guest kernel and initramfs: the given paths, else `$HULL_KERNEL` / `$HULL_INITRD`, else the newest
/// ones in the build cache.
pub fn guest_files(kernel: Option<&Path>, initrd: Option<&Path>) -> Result<(PathBuf, PathBuf), GuestFilesError> {
    let kernel = kernel
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HULL_KERNEL").map(PathBuf::from))
        .or_else(|| {
            newest_in_cache(|p| {
                let k = p.join("vmlinux");
                (p.file_name()?.to_str()?.starts_with("kernel-") && k.is_file()).then_some(k)
            })
        })
        .ok_or(GuestFilesError::Missing("kernel"))?;
    let initrd = initrd
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("HULL_INITRD").map(PathBuf::from))
        .or_else(|| {
            newest_in_cache(|p| {
                let n = p.file_name()?.to_str()?;
                (n.starts_with("initramfs-") && (n.ends_with(".cpio") || n.ends_with(".cpio.gz")))
                    .then(|| p.to_path_buf())
            })
        })
        .ok_or(GuestFilesError::Missing("initramfs"))?;
    for f in [&kernel, &initrd] {
        if !f.is_file() {
            return Err(GuestFilesError::NotAFile(f.clone()));
        }
    }
    Ok((kernel, initrd))
}

/// The tail of a guest console log, for error messages; the console may just have been rotated, so the
/// rotated file's end comes first (`hull_logging::rotating`).
pub fn console_tail(path: &Path) -> String {
    let previous = std::fs::read(hull_logging::rotating::rotated_path(path)).unwrap_or_default();
    let mut bytes = previous[previous.len().saturating_sub(4096)..].to_vec();
    bytes.extend(std::fs::read(path).unwrap_or_default());
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    format!("{}:\n{tail}", path.display())
}
