//! The container's rootfs as a block image. A directory becomes an ext4 image with `mkfs.ext4 -d` (e2fsprogs,
//! present on every Debian host and needing no root or loop device; the guest kernel has ext4 built in; the
//! image is served read-only and the guest puts a tmpfs overlay on top). erofs would make smaller images,
//! but needs Debian's erofs-utils installed; ext4 keeps `hull run` working on a bare host.
//! An existing image file is used as is (read-only); its type is read from its superblock magic.
//! A packed image holds everything of its directory, a volume's secrets included: it is created 0600 (in the
//! caller's 0700 directory) before `mkfs.ext4` writes into it, and `mkfs.ext4` runs with umask 077.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("rootfs {0}: {1}")]
    Io(String, std::io::Error),
    #[error("rootfs {0} is neither a directory nor a regular file")]
    NotUsable(String),
    #[error("rootfs image {0} is neither ext2/3/4 nor erofs")]
    UnknownFs(String),
    #[error("mkfs.ext4 failed for {dir}: {output}")]
    Mkfs { dir: String, output: String },
}

pub struct RootfsImage {
    pub path: PathBuf,
    pub fstype: &'static str,
}

/// Sum of file sizes and count of entries under `dir` (symlinks not followed).
fn tree_size(dir: &Path) -> std::io::Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let md = e.path().symlink_metadata()?;
            entries += 1;
            bytes += md.len().div_ceil(4096) * 4096;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok((bytes, entries))
}

/// Prepares `rootfs` (a directory or an image file) as a block image; a packed directory becomes
/// `<run_dir>/<name>.ext4`.
pub fn prepare(rootfs: &Path, run_dir: &Path, name_in_dir: &str) -> Result<RootfsImage, ImageError> {
    let name = rootfs.display().to_string();
    let md = std::fs::metadata(rootfs).map_err(|e| ImageError::Io(name.clone(), e))?;
    if md.is_file() {
        return Ok(RootfsImage {
            path: rootfs.to_path_buf(),
            fstype: detect(rootfs)?,
        });
    }
    if !md.is_dir() {
        return Err(ImageError::NotUsable(name));
    }
    let (bytes, entries) = tree_size(rootfs).map_err(|e| ImageError::Io(name.clone(), e))?;
    let size = (bytes + bytes / 5 + (entries + 64) * 4096 + (8 << 20)).div_ceil(1 << 20) << 20;
    let image = run_dir.join(format!("{name_in_dir}.ext4"));
    let inodes = (entries + 256).to_string();
    // mkfs.ext4 -d copies the owners of what is inside, but the root directory would be the caller's: give it
    // the directory's own (a user-namespaced container's root owns its `/`, as under runc).
    use std::os::unix::fs::MetadataExt;
    let root_owner = format!("root_owner={}:{}", md.uid(), md.gid());
    let extra = [
        OsStr::new("-N"),
        OsStr::new(&inodes),
        OsStr::new("-E"),
        OsStr::new(&root_owner),
        OsStr::new("-d"),
        rootfs.as_os_str(),
    ];
    make_ext4(&image, size, name_in_dir, &extra, &name)?;
    // mkfs.ext4 adds lost+found; a container's / shows only what its image holds, as under runc.
    if std::fs::symlink_metadata(rootfs.join("lost+found")).is_err() {
        let out = Command::new("debugfs")
            .args(["-w", "-R", "rmdir lost+found"])
            .arg(&image)
            .env("E2FSPROGS_FAKE_TIME", "0")
            .output()
            .map_err(|e| ImageError::Io("debugfs (install e2fsprogs)".into(), e))?;
        let said = String::from_utf8_lossy(&out.stderr);
        // debugfs reports a failed request on stderr after its banner and still exits 0.
        if !out.status.success() || said.lines().skip(1).any(|l| !l.trim().is_empty()) {
            return Err(ImageError::Mkfs {
                dir: name,
                output: format!("removing lost+found: {}", said.trim()),
            });
        }
    }
    Ok(RootfsImage {
        path: image,
        fstype: "ext4",
    })
}

/// Creates `image` (owner-only, `size` bytes, sparse) and makes an ext4 file system labelled `label` in it:
/// 4 KiB blocks, no journal, reproducible times, mkfs.ext4 under umask 077, plus `extra` options. `what`
/// names the image in errors.
fn make_ext4(image: &Path, size: u64, label: &str, extra: &[&OsStr], what: &str) -> Result<(), ImageError> {
    let f = crate::guard::create_private_file(image).map_err(|e| ImageError::Io(image.display().to_string(), e))?;
    f.set_len(size)
        .map_err(|e| ImageError::Io(image.display().to_string(), e))?;
    drop(f);
    let mut mkfs = Command::new("mkfs.ext4");
    crate::guard::private_umask(&mut mkfs);
    let out = mkfs
        .args(["-q", "-F", "-O", "^has_journal", "-b", "4096", "-L", label])
        .args(extra)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", "0")
        .output()
        .map_err(|e| ImageError::Io("mkfs.ext4 (install e2fsprogs)".into(), e))?;
    if !out.status.success() {
        return Err(ImageError::Mkfs {
            dir: what.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The default size of a VM's scratch disk (MiB): a sparse file, so only what containers write takes room.
pub const DEFAULT_SCRATCH_MIB: u64 = 10 * 1024;
/// The largest scratch disk (MiB): 16 TiB, ext4's limit with 4 KiB blocks and 32-bit block numbers.
pub const MAX_SCRATCH_MIB: u64 = 16 * 1024 * 1024 - 1;

/// A VM's scratch disk, `<run_dir>/<name_in_dir>.ext4`: an empty ext4 file system of `size_mib` in a sparse
/// file (about 4 MiB written, in tens of milliseconds), made with lazy inode tables and no journal (what it
/// holds dies with the VM). The guest keeps the containers' writable layers on it (see the agent's
/// `containers/scratch.rs`).
pub fn scratch(run_dir: &Path, name_in_dir: &str, size_mib: u64) -> Result<RootfsImage, ImageError> {
    let image = run_dir.join(format!("{name_in_dir}.ext4"));
    let what = image.display().to_string();
    make_ext4(
        &image,
        size_mib << 20,
        name_in_dir,
        &["-m", "0", "-E", "lazy_itable_init=1,nodiscard"].map(OsStr::new),
        &what,
    )?;
    Ok(RootfsImage {
        path: image,
        fstype: "ext4",
    })
}

/// ext2/3/4: 0xEF53 at byte 1080; erofs: 0xE0F5E1E2 at byte 1024.
fn detect(image: &Path) -> Result<&'static str, ImageError> {
    use std::io::Read;
    let mut buf = [0u8; 1082];
    let mut f = std::fs::File::open(image).map_err(|e| ImageError::Io(image.display().to_string(), e))?;
    f.read_exact(&mut buf)
        .map_err(|e| ImageError::Io(image.display().to_string(), e))?;
    if u32::from_le_bytes([buf[1024], buf[1025], buf[1026], buf[1027]]) == 0xE0F5_E1E2 {
        return Ok("erofs");
    }
    if u16::from_le_bytes([buf[1080], buf[1081]]) == 0xEF53 {
        return Ok("ext4");
    }
    Err(ImageError::UnknownFs(image.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The root directory's entries in an ext4 image, as debugfs lists them.
    fn root_entries(image: &Path) -> Vec<String> {
        let out = Command::new("debugfs")
            .args(["-R", "ls -p /"])
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect()
    }

    #[test]
    fn a_packed_directory_shows_only_its_own_entries() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("SKIP a_packed_directory_shows_only_its_own_entries: no e2fsprogs");
            return;
        }
        let base = std::env::temp_dir().join(format!("hull-image-test-{}", std::process::id()));
        let src = base.join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/hostname"), "x\n").unwrap();
        let image = prepare(&src, &base, "plain").unwrap();
        assert_eq!(root_entries(&image.path), vec!["etc".to_string()]);
        // An image that has its own lost+found keeps it.
        std::fs::create_dir(src.join("lost+found")).unwrap();
        let image = prepare(&src, &base, "with").unwrap();
        let mut entries = root_entries(&image.path);
        entries.sort();
        assert_eq!(entries, vec!["etc".to_string(), "lost+found".to_string()]);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_scratch_disk_is_sparse_and_empty() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("SKIP a_scratch_disk_is_sparse_and_empty: no e2fsprogs");
            return;
        }
        use std::os::unix::fs::MetadataExt;
        let base = std::env::temp_dir().join(format!("hull-scratch-test-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let disk = scratch(&base, "scratch", 4096).unwrap();
        let md = std::fs::metadata(&disk.path).unwrap();
        assert_eq!(md.len(), 4096 << 20);
        assert!(md.blocks() * 512 < 32 << 20, "{} bytes on disk", md.blocks() * 512);
        assert!(root_entries(&disk.path).iter().all(|e| e == "lost+found"));
        std::fs::remove_dir_all(&base).unwrap();
    }
}
