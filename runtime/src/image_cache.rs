//! `hull run`'s cache of packed rootfs images: a second run of the same rootfs directory reuses the ext4
//! image the first one packed instead of running `mkfs.ext4` again.
//!
//! An image is found by a fingerprint of the whole tree as the file system describes it, taken without
//! following symlinks: for the directory and every entry below it, in name order, its relative path, type and
//! mode, owner, size, device and inode, modification and change times (nanoseconds), and a symlink's target.
//! Any change to a file (content, mode, owner, extended attributes, a rename, a new hard link) moves its change
//! time, which no user can set back, so a changed tree never finds an older image. Two guards cover what a
//! fingerprint alone cannot:
//! - a tree that changed less than [`SETTLE`] ago is packed as before, uncached (a change within the file
//!   system's clock tick after the fingerprint could leave the times as they were);
//! - the tree is fingerprinted again after packing, and the image is kept only if nothing moved meanwhile.
//!
//! The cache is a directory of the caller's own (0700, refused when it is someone else's or open to others);
//! images are 0600 and only ever served read-only (the rootfs drive), so concurrent runs share one safely.
//! New images are built under a temporary name and renamed into place. Images not used for
//! [`KEEP_UNUSED`] beyond the newest [`MAX_IMAGES`] are removed; one used within that time is never removed
//! (a run links or opens its image within seconds of finding it).
//!
//! Trust: the rootfs directory is the caller's; nothing in it is executed or followed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::image::{self, ImageError, RootfsImage};

/// Bumped when the packing changes (mkfs options, lost+found handling): older images are then not found.
const FORMAT: &str = "hull-run-rootfs-v1";
/// How long ago the tree's last change must be for its image to be cached.
const SETTLE: Duration = Duration::from_secs(2);
/// Images kept beyond this count are removed once unused for [`KEEP_UNUSED`].
const MAX_IMAGES: usize = 8;
const KEEP_UNUSED: Duration = Duration::from_secs(600);
/// A temporary image older than this is a leftover of a killed run.
const STALE_TMP: Duration = Duration::from_secs(3600);

pub struct ImageCache {
    dir: PathBuf,
    /// [`SETTLE`], but for tests.
    settle: Duration,
}

/// A tree's fingerprint, and the newest change time in it.
struct Fingerprint {
    key: String,
    newest_change: SystemTime,
}

impl ImageCache {
    /// The cache at `dir`, created 0700 if missing; `None` (with a warning) when it cannot be made or is not
    /// private to the caller.
    pub fn open(dir: &Path) -> Option<ImageCache> {
        if let Err(e) = crate::guard::create_private_dir(dir, true) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                tracing::warn!(dir = %dir.display(), error = %e, "no rootfs image cache");
                return None;
            }
        }
        let md = match std::fs::symlink_metadata(dir) {
            Ok(md) => md,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no rootfs image cache");
                return None;
            }
        };
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if !md.is_dir() || md.uid() != me || md.mode() & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), "not using the rootfs image cache: not a directory private to this user");
            return None;
        }
        Some(ImageCache {
            dir: dir.to_path_buf(),
            settle: SETTLE,
        })
    }

    /// `rootfs` as an image: a directory from the cache (packed into it first if needed), anything else as
    /// [`image::prepare`] makes it in `run_dir` under `name_in_dir`.
    pub fn prepare(&self, rootfs: &Path, run_dir: &Path, name_in_dir: &str) -> Result<RootfsImage, ImageError> {
        if !std::fs::metadata(rootfs).is_ok_and(|m| m.is_dir()) {
            return image::prepare(rootfs, run_dir, name_in_dir);
        }
        let started = SystemTime::now();
        let before = fingerprint(rootfs).map_err(|e| ImageError::Io(rootfs.display().to_string(), e))?;
        let settled = before
            .newest_change
            .checked_add(self.settle)
            .is_some_and(|t| t <= started);
        if !settled {
            tracing::info!(rootfs = %rootfs.display(), "rootfs changed just now: packing it uncached");
            return image::prepare(rootfs, run_dir, name_in_dir);
        }
        let path = self.dir.join(format!("{}.ext4", before.key));
        if is_own_file(&path) {
            touch(&path);
            tracing::info!(image = %path.display(), "rootfs image from the cache");
            return Ok(RootfsImage { path, fstype: "ext4" });
        }
        let tmp_name = format!("{}.tmp-{}-{:x}", before.key, std::process::id(), nanos());
        let built = image::prepare(rootfs, &self.dir, &tmp_name);
        let tmp = self.dir.join(format!("{tmp_name}.ext4"));
        let built = built.and_then(|img| {
            let after = fingerprint(rootfs).map_err(|e| ImageError::Io(rootfs.display().to_string(), e))?;
            Ok((img, after.key == before.key))
        });
        match built {
            Ok((_, true)) => {
                std::fs::rename(&tmp, &path).map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    ImageError::Io(path.display().to_string(), e)
                })?;
                tracing::info!(image = %path.display(), "rootfs packed into the cache");
                self.evict(&path);
                Ok(RootfsImage { path, fstype: "ext4" })
            }
            Ok((_, false)) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::info!(rootfs = %rootfs.display(), "rootfs changed while it was packed: packing it uncached");
                image::prepare(rootfs, run_dir, name_in_dir)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Removes temporary images of killed runs, and the least recently used images beyond [`MAX_IMAGES`]
    /// that have not been used for [`KEEP_UNUSED`]; never `keep`.
    fn evict(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        let age = |md: &std::fs::Metadata| md.modified().ok().and_then(|t| now.duration_since(t).ok());
        let mut images = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let Ok(md) = e.metadata() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            if !md.is_file() || !name.ends_with(".ext4") || path == keep {
                continue;
            }
            if name.contains(".tmp-") {
                if age(&md).is_some_and(|a| a > STALE_TMP) {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            images.push((md.modified().unwrap_or(SystemTime::UNIX_EPOCH), age(&md), path));
        }
        // Newest first; `keep` is one of the MAX_IMAGES.
        images.sort_by_key(|image| std::cmp::Reverse(image.0));
        for (_, age, path) in images.into_iter().skip(MAX_IMAGES - 1) {
            if age.is_some_and(|a| a > KEEP_UNUSED) {
                tracing::info!(image = %path.display(), "removing an unused rootfs image from the cache");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn nanos() -> u32 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A regular file (not a link) owned by the caller.
fn is_own_file(path: &Path) -> bool {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.uid() == me)
}

/// Marks an image as just used (its modification time orders the eviction), without opening it.
fn touch(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a NUL-terminated path that lives across the call; null times mean "now"; the link itself.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            std::ptr::null(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
}

/// The fingerprint of the tree at `root` (see the module doc).
fn fingerprint(root: &Path) -> std::io::Result<Fingerprint> {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(root.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    let md = std::fs::metadata(root)?;
    let mut newest = change_time(&md);
    add_entry(&mut h, Path::new(""), &md, None);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(root.join(&rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            let rel = rel.join(&name);
            let path = root.join(&rel);
            let md = std::fs::symlink_metadata(&path)?;
            newest = newest.max(change_time(&md));
            let target = if md.file_type().is_symlink() {
                Some(std::fs::read_link(&path)?)
            } else {
                None
            };
            add_entry(&mut h, &rel, &md, target.as_deref());
            if md.is_dir() {
                stack.push(rel);
            }
        }
    }
    let key = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
    Ok(Fingerprint {
        key,
        newest_change: newest,
    })
}

fn change_time(md: &std::fs::Metadata) -> SystemTime {
    let secs = Duration::new(md.ctime().max(0) as u64, md.ctime_nsec().clamp(0, 999_999_999) as u32);
    let mtime = Duration::new(md.mtime().max(0) as u64, md.mtime_nsec().clamp(0, 999_999_999) as u32);
    SystemTime::UNIX_EPOCH + secs.max(mtime)
}

fn add_entry(h: &mut Sha256, rel: &Path, md: &std::fs::Metadata, target: Option<&Path>) {
    h.update(rel.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    for v in [
        u64::from(md.mode()),
        u64::from(md.uid()),
        u64::from(md.gid()),
        md.size(),
        md.dev(),
        md.ino(),
        md.nlink(),
        md.rdev(),
        md.mtime() as u64,
        md.mtime_nsec() as u64,
        md.ctime() as u64,
        md.ctime_nsec() as u64,
    ] {
        h.update(v.to_le_bytes());
    }
    if let Some(t) = target {
        h.update(t.as_os_str().as_encoded_bytes());
    }
    h.update(b"\0");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Whether e2fsprogs is there; says that `test` is skipped if not.
    fn have_mkfs(test: &str) -> bool {
        let there = Command::new("mkfs.ext4").arg("-V").output().is_ok();
        if !there {
            eprintln!("SKIP {test}: no e2fsprogs");
        }
        there
    }

    struct Dirs {
        base: PathBuf,
    }

    impl Drop for Dirs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    /// A rootfs with one file, a run directory, and a cache (not yet made) in a fresh directory.
    fn dirs(test: &str) -> (Dirs, PathBuf, PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!("hull-image-cache-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (src, run, cache) = (base.join("src"), base.join("run"), base.join("cache"));
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(src.join("etc/hostname"), "one\n").unwrap();
        (Dirs { base }, src, run, cache)
    }

    fn settled(cache: &Path) -> ImageCache {
        let mut c = ImageCache::open(cache).unwrap();
        c.settle = Duration::ZERO;
        c
    }

    fn inode(p: &Path) -> u64 {
        std::fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn an_unchanged_tree_is_packed_once_and_a_changed_one_again() {
        if !have_mkfs("an_unchanged_tree_is_packed_once_and_a_changed_one_again") {
            return;
        }
        let (_d, src, run, cache) = dirs("reuse");
        let c = settled(&cache);
        let first = c.prepare(&src, &run, "rootfs").unwrap();
        assert!(first.path.starts_with(&cache), "{}", first.path.display());
        let again = c.prepare(&src, &run, "rootfs").unwrap();
        assert_eq!(
            (again.path.clone(), inode(&again.path)),
            (first.path.clone(), inode(&first.path))
        );
        // Same size, new content: the change time moves, so the key does.
        std::fs::write(src.join("etc/hostname"), "two\n").unwrap();
        let changed = c.prepare(&src, &run, "rootfs").unwrap();
        assert_ne!(changed.path, first.path);
        // A mode change alone is a change too.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(src.join("etc/hostname"), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(c.prepare(&src, &run, "rootfs").unwrap().path, changed.path);
        // Nothing was left in the run directory, and the cache holds images only.
        assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
        for e in std::fs::read_dir(&cache).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(name.ends_with(".ext4") && !name.contains(".tmp-"), "{name}");
        }
    }

    #[test]
    fn a_tree_changed_just_now_is_packed_for_the_run_alone() {
        if !have_mkfs("a_tree_changed_just_now_is_packed_for_the_run_alone") {
            return;
        }
        let (_d, src, run, cache) = dirs("fresh");
        let c = ImageCache::open(&cache).unwrap();
        let image = c.prepare(&src, &run, "rootfs").unwrap();
        assert_eq!(image.path, run.join("rootfs.ext4"));
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
    }

    #[test]
    fn an_image_file_is_used_as_it_is() {
        let (_d, src, run, cache) = dirs("file");
        let file = src.join("etc/hostname");
        let c = settled(&cache);
        // Not an image: the same error as without the cache.
        assert!(matches!(
            c.prepare(&file, &run, "rootfs"),
            Err(ImageError::Io(..) | ImageError::UnknownFs(_))
        ));
    }

    #[test]
    fn a_cache_open_to_others_is_not_used() {
        let (_d, _src, _run, cache) = dirs("open");
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(&cache).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ImageCache::open(&cache).is_none());
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(ImageCache::open(&cache).is_some());
    }

    #[test]
    fn old_images_beyond_the_limit_go_but_recent_ones_stay() {
        let (_d, _src, _run, cache) = dirs("evict");
        let c = settled(&cache);
        let old = SystemTime::now() - KEEP_UNUSED - Duration::from_secs(60);
        let mut paths = Vec::new();
        for i in 0..(MAX_IMAGES + 3) {
            let p = cache.join(format!("{i:032x}.ext4"));
            let f = std::fs::File::create(&p).unwrap();
            // The first two are recent; the rest old, oldest last.
            let t = if i < 2 {
                SystemTime::now()
            } else {
                old - Duration::from_secs(i as u64)
            };
            f.set_modified(t).unwrap();
            paths.push(p);
        }
        let tmp = cache.join("abc.tmp-1-2.ext4");
        std::fs::File::create(&tmp)
            .unwrap()
            .set_modified(old - STALE_TMP)
            .unwrap();
        let keep = cache.join("keep.ext4");
        std::fs::File::create(&keep)
            .unwrap()
            .set_modified(old - Duration::from_secs(3600))
            .unwrap();
        c.evict(&keep);
        let left: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
        // `keep` plus the newest MAX_IMAGES - 1 of the others stay.
        assert_eq!(left.iter().filter(|x| **x).count(), MAX_IMAGES - 1);
        assert!(left[..MAX_IMAGES - 1].iter().all(|x| *x), "{left:?}");
        assert!(keep.exists() && !tmp.exists());
    }
}
