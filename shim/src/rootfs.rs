//! The container's rootfs as a read-only block image for the guest.
//!
//! containerd hands the shim the snapshotter's mounts instead of a mounted rootfs. For the overlayfs
//! snapshotter that is one `overlay` mount whose `lowerdir` list is the image's layers (the snapshot's parent
//! chain) and whose `upperdir` is the container's own, empty, writable snapshot. The image's layers become one
//! ext4 image (`mkfs.ext4 -d` over a read-only overlay of the lower layers: no loop devices, whiteouts already
//! applied), cached in the image cache under the SHA-256 of the lowerdir list, so every further container of
//! the same image reuses it. The guest mounts it read-only and puts an overlay on top whose writable layer is
//! on the VM's scratch disk (`scratch_mib`; a tmpfs in the guest's RAM without one): the container's writes
//! behave as with runc and are gone when the container is deleted. A non-empty upperdir (a container created from a committed snapshot) or a
//! plain bind/rootfs directory is packed on its own, uncached, into the VM's work directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use containerd_shim::protos::api::Mount;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs mount of type {0:?} is not supported (overlay and bind are)")]
    Unsupported(String),
    #[error("overlay rootfs mount without lowerdir")]
    NoLower,
    #[error("more than one rootfs mount ({0}); only a single overlay or bind mount is supported")]
    Several(usize),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("mounting the image's layers: {0}")]
    Mount(String),
    #[error(transparent)]
    Image(#[from] hull_runtime::image::ImageError),
}

/// What to pack: the directories of the merged view, and whether it may be cached.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    /// Image layers, lowest last (overlay's lowerdir order); cached by this list.
    Layers(Vec<PathBuf>),
    /// A directory of its own (the bundle's rootfs, a bind mount, or layers plus a non-empty upperdir).
    Dir {
        lower: Vec<PathBuf>,
        upper: Option<PathBuf>,
    },
}

/// Reads the snapshotter's mounts (or none: the spec's absolute `root.path`, as `ctr run --rootfs` gives,
/// else the bundle's `rootfs` directory).
pub fn source(mounts: &[Mount], bundle: &Path, spec_root: Option<&str>) -> Result<Source, RootfsError> {
    match mounts {
        [] => Ok(Source::Dir {
            lower: vec![spec_root
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| bundle.join("rootfs"))],
            upper: None,
        }),
        [m] => match m.type_.as_str() {
            "overlay" => {
                let mut lower = Vec::new();
                let mut upper = None;
                for o in &m.options {
                    if let Some(l) = o.strip_prefix("lowerdir=") {
                        lower = l.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect();
                    } else if let Some(u) = o.strip_prefix("upperdir=") {
                        upper = Some(PathBuf::from(u));
                    }
                }
                if lower.is_empty() {
                    return Err(RootfsError::NoLower);
                }
                let upper_has_files = upper
                    .as_ref()
                    .is_some_and(|u| std::fs::read_dir(u).map(|mut d| d.next().is_some()).unwrap_or(false));
                if upper_has_files {
                    Ok(Source::Dir { lower, upper })
                } else {
                    Ok(Source::Layers(lower))
                }
            }
            "bind" | "rbind" => Ok(Source::Dir {
                lower: vec![PathBuf::from(&m.source)],
                upper: None,
            }),
            other => Err(RootfsError::Unsupported(other.into())),
        },
        more => Err(RootfsError::Several(more.len())),
    }
}

/// The cache key of a layer chain.
pub fn cache_key(layers: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    for l in layers {
        h.update(l.as_os_str().as_encoded_bytes());
        h.update(b"\0");
    }
    let d = h.finalize();
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// A built image and whether it lives in the cache (and must not be removed with the VM).
pub struct Image {
    pub image: hull_runtime::image::RootfsImage,
    pub key: String,
}

/// Returns the image for `src`: from the cache when the layers were packed before, else packed now.
pub fn prepare(src: &Source, cache: &Path, work: &Path, name: &str) -> Result<Image, RootfsError> {
    match src {
        Source::Layers(layers) => {
            let key = cache_key(layers);
            // Owner-only, as is every image in it (hull_runtime::image), whatever containerd's umask.
            hull_runtime::guard::create_private_dir(cache, true)
                .map_err(|e| RootfsError::Io(cache.display().to_string(), e))?;
            let path = cache.join(format!("{key}.ext4"));
            // One builder per key, across shims: the others wait and then find it built.
            let lock = hull_runtime::guard::create_private_file(&cache.join(format!("{key}.lock")))
                .map_err(|e| RootfsError::Io("image cache lock".into(), e))?;
            // SAFETY: flock on an owned, open descriptor.
            unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
            if !path.is_file() {
                let tmp_name = format!("{key}.tmp{}", std::process::id());
                let built = with_merged(layers, None, work, |dir| {
                    Ok(hull_runtime::image::prepare(dir, cache, &tmp_name)?)
                })
                .and_then(|built| {
                    std::fs::rename(&built.path, &path).map_err(|e| RootfsError::Io(path.display().to_string(), e))
                });
                if let Err(e) = built {
                    // A half-made image must not stay in the cache.
                    let _ = std::fs::remove_file(cache.join(format!("{tmp_name}.ext4")));
                    return Err(e);
                }
                log::info!("packed image layers into {}", path.display());
            }
            let _ = std::fs::remove_file(cache.join(format!("{key}.lock")));
            Ok(Image {
                image: hull_runtime::image::RootfsImage { path, fstype: "ext4" },
                key,
            })
        }
        Source::Dir { lower, upper } => {
            let image = with_merged(lower, upper.as_deref(), work, |dir| {
                Ok(hull_runtime::image::prepare(dir, work, name)?)
            })?;
            Ok(Image {
                image,
                key: format!("dir-{name}"),
            })
        }
    }
}

/// Runs `f` on the merged view of `lower` (+ `upper`): the directory itself when there is only one, else a
/// read-only overlay mounted for the duration.
fn with_merged<T>(
    lower: &[PathBuf],
    upper: Option<&Path>,
    work: &Path,
    f: impl FnOnce(&Path) -> Result<T, RootfsError>,
) -> Result<T, RootfsError> {
    let mut dirs: Vec<&Path> = upper.into_iter().collect();
    dirs.extend(lower.iter().map(PathBuf::as_path));
    if dirs.len() == 1 {
        return f(dirs[0]);
    }
    let target = work.join(format!("merge-{}", std::process::id()));
    hull_runtime::guard::create_private_dir(&target, true)
        .map_err(|e| RootfsError::Io(target.display().to_string(), e))?;
    let lowerdir = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={lowerdir}"))
        .arg(&target)
        .output()
        .map_err(|e| RootfsError::Io("mount".into(), e))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir(&target);
        return Err(RootfsError::Mount(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let r = f(&target);
    let _ = Command::new("umount").arg(&target).status();
    let _ = std::fs::remove_dir(&target);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(t: &str, src: &str, opts: &[&str]) -> Mount {
        let mut m = Mount::new();
        m.type_ = t.into();
        m.source = src.into();
        m.options = opts.iter().map(|s| s.to_string()).collect();
        m
    }

    #[test]
    fn overlay_layers_are_the_cache_key_and_odd_mounts_are_refused() {
        let d = std::env::temp_dir().join(format!("hull-shim-rootfs-{}", std::process::id()));
        std::fs::create_dir_all(d.join("upper")).unwrap();
        let m = mount(
            "overlay",
            "overlay",
            &[
                "index=off",
                &format!("upperdir={}", d.join("upper").display()),
                "lowerdir=/l/2:/l/1",
            ],
        );
        let s = source(std::slice::from_ref(&m), Path::new("/b"), None).unwrap();
        assert_eq!(s, Source::Layers(vec!["/l/2".into(), "/l/1".into()]));
        assert_eq!(cache_key(&["/l/2".into(), "/l/1".into()]).len(), 32);
        assert_ne!(cache_key(&["/l/2".into()]), cache_key(&["/l/1".into()]));
        std::fs::write(d.join("upper/file"), "x").unwrap();
        assert!(matches!(
            source(std::slice::from_ref(&m), Path::new("/b"), None).unwrap(),
            Source::Dir { upper: Some(_), .. }
        ));
        assert_eq!(
            source(&[], Path::new("/b"), Some("rootfs")).unwrap(),
            Source::Dir {
                lower: vec!["/b/rootfs".into()],
                upper: None
            }
        );
        assert!(source(&[mount("overlay", "overlay", &["upperdir=/u"])], Path::new("/b"), None).is_err());
        assert!(source(&[mount("nfs", "x", &[])], Path::new("/b"), None).is_err());
        assert!(source(&[m.clone(), m], Path::new("/b"), None).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
