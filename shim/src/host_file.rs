//! The host end of a read-write file mount (Kubernetes' `/dev/termination-log`): opened once, at Create,
//! without following any symlink, and written back at the container's exit through that descriptor only.
//!
//! What it distrusts: the host path (anything that can write in one of its directories could swap a symlink
//! in for the file or a parent directory between Create and the exit) and the guest's copy (any bytes, any
//! size). So the path is resolved exactly once: every directory with `openat2(RESOLVE_NO_SYMLINKS)` (or, on
//! kernels without openat2, one component at a time with `O_NOFOLLOW|O_DIRECTORY`), the file itself with
//! `O_NOFOLLOW` relative to its parent's descriptor, and it must be a regular file with one link. At exit the
//! guest's copy, at most [`MAX_WRITE_BACK`] bytes, replaces the content through the descriptor (truncate,
//! then write): a symlink put in place since is never followed, and the path is never looked up again.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// The most the guest may hand back for one file: what the shim copies in (see [`crate::guest_spec`]).
pub const MAX_WRITE_BACK: usize = crate::guest_spec::MAX_FILE as usize;

#[derive(Debug, thiserror::Error)]
pub enum HostFileError {
    #[error("{path}: must be an absolute path without '..'")]
    BadPath { path: PathBuf },
    #[error("{path}: {source} (a symlink anywhere in the path is refused)")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: not a regular file with a single link")]
    NotPlain { path: PathBuf },
    #[error("{path}: the guest's copy is {len} bytes; at most {MAX_WRITE_BACK} are written back")]
    TooBig { path: PathBuf, len: usize },
    #[error("{path}: writing back: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// A host file opened for write-back.
#[derive(Debug)]
pub struct HostFile {
    path: PathBuf,
    file: File,
}

impl HostFile {
    /// Opens `path` read-write without following a symlink in any component.
    pub fn open(path: &Path) -> Result<HostFile, HostFileError> {
        let bad = || HostFileError::BadPath { path: path.into() };
        let open_err = |source| HostFileError::Open {
            path: path.into(),
            source,
        };
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(bad());
        };
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            return Err(bad());
        }
        let dir = open_dir_no_symlinks(parent).map_err(open_err)?;
        let name = CString::new(name.as_bytes()).map_err(|_| bad())?;
        let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: openat with a directory descriptor we own and a NUL-terminated name; the result is checked.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(open_err(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by openat and is owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let md = file.metadata().map_err(open_err)?;
        if !md.is_file() || md.nlink() != 1 {
            return Err(HostFileError::NotPlain { path: path.into() });
        }
        Ok(HostFile {
            path: path.into(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's content through the descriptor, at most `MAX_WRITE_BACK + 1` bytes.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; MAX_WRITE_BACK + 1];
        let mut len = 0;
        while len < buf.len() {
            match self.file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(len);
        Ok(buf)
    }

    /// Replaces the file's content with the guest's copy `content` (refused above [`MAX_WRITE_BACK`]);
    /// returns whether anything changed.
    pub fn write_back(&self, content: &[u8]) -> Result<bool, HostFileError> {
        if content.len() > MAX_WRITE_BACK {
            return Err(HostFileError::TooBig {
                path: self.path.clone(),
                len: content.len(),
            });
        }
        let write = |source| HostFileError::Write {
            path: self.path.clone(),
            source,
        };
        if self.read().map_err(write)? == content {
            return Ok(false);
        }
        self.file.set_len(0).map_err(write)?;
        self.file.write_all_at(content, 0).map_err(write)?;
        Ok(true)
    }
}

/// Opens directory `dir` (absolute) as an `O_PATH` descriptor, following no symlink on the way.
fn open_dir_no_symlinks(dir: &Path) -> io::Result<OwnedFd> {
    match openat2_no_symlinks(dir) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => walk_no_symlinks(dir),
        r => r,
    }
}

fn openat2_no_symlinks(dir: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero open_how is valid (no flags); the fields are then set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a NUL-terminated path and a valid open_how of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat2 just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The fallback: from `/`, one component at a time, each `O_NOFOLLOW|O_DIRECTORY`.
fn walk_no_symlinks(dir: &Path) -> io::Result<OwnedFd> {
    let open = |at: libc::c_int, name: &[u8]| -> io::Result<OwnedFd> {
        let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat with a valid directory descriptor (or AT_FDCWD) and a NUL-terminated name.
        let fd = unsafe { libc::openat(at, c.as_ptr(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor openat just returned, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let mut cur = open(libc::AT_FDCWD, b"/")?;
    for c in dir.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => cur = open(cur.as_raw_fd(), name.as_bytes())?,
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hull-host-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_back_through_the_descriptor_and_refuses_more_than_1_mib() {
        let d = scratch("write");
        let f = d.join("termination-log");
        std::fs::write(&f, "old content that is longer\n").unwrap();
        let h = HostFile::open(&f).unwrap();
        assert!(h.write_back(b"last words\n").unwrap());
        assert_eq!(std::fs::read(&f).unwrap(), b"last words\n", "truncated, then written");
        assert!(
            !h.write_back(b"last words\n").unwrap(),
            "unchanged content is not rewritten"
        );
        let big = vec![b'x'; MAX_WRITE_BACK + 1];
        assert!(matches!(h.write_back(&big), Err(HostFileError::TooBig { .. })));
        assert_eq!(
            std::fs::read(&f).unwrap(),
            b"last words\n",
            "a refused reply changes nothing"
        );
        assert!(h.write_back(&big[..MAX_WRITE_BACK]).unwrap(), "exactly 1 MiB is fine");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_swapped_in_after_create_is_not_followed() {
        let d = scratch("swap");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        // The file itself replaced by a symlink after Create.
        let f = d.join("log");
        std::fs::write(&f, "").unwrap();
        let h = HostFile::open(&f).unwrap();
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&victim, &f).unwrap();
        h.write_back(b"pwned\n").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        // A parent directory replaced by a symlink after Create.
        std::fs::create_dir_all(d.join("pod/containers")).unwrap();
        std::fs::create_dir_all(d.join("elsewhere")).unwrap();
        let g = d.join("pod/containers/log");
        std::fs::write(&g, "").unwrap();
        let other = d.join("elsewhere/log");
        std::fs::write(&other, "precious\n").unwrap();
        let h = HostFile::open(&g).unwrap();
        std::fs::rename(d.join("pod/containers"), d.join("pod/moved")).unwrap();
        std::os::unix::fs::symlink(d.join("elsewhere"), d.join("pod/containers")).unwrap();
        h.write_back(b"pwned\n").unwrap();
        assert_eq!(std::fs::read(&other).unwrap(), b"precious\n");
        assert_eq!(
            std::fs::read(d.join("pod/moved/log")).unwrap(),
            b"pwned\n",
            "the file opened at Create"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_at_create_hard_links_and_odd_paths_are_refused() {
        let d = scratch("refuse");
        let real = d.join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("f"), "").unwrap();
        std::os::unix::fs::symlink(real.join("f"), d.join("link")).unwrap();
        std::os::unix::fs::symlink(&real, d.join("dirlink")).unwrap();
        assert!(matches!(
            HostFile::open(&d.join("link")),
            Err(HostFileError::Open { .. })
        ));
        assert!(matches!(
            HostFile::open(&d.join("dirlink/f")),
            Err(HostFileError::Open { .. })
        ));
        assert!(
            walk_no_symlinks(&d.join("dirlink")).is_err(),
            "the fallback walk refuses it too"
        );
        assert!(walk_no_symlinks(&real).is_ok());
        std::fs::hard_link(real.join("f"), d.join("hard")).unwrap();
        assert!(matches!(
            HostFile::open(&d.join("hard")),
            Err(HostFileError::NotPlain { .. })
        ));
        assert!(matches!(
            HostFile::open(&real),
            Err(HostFileError::Open { .. }) | Err(HostFileError::NotPlain { .. })
        ));
        assert!(matches!(
            HostFile::open(Path::new("rel/f")),
            Err(HostFileError::BadPath { .. })
        ));
        assert!(matches!(
            HostFile::open(&real.join("../real/f")),
            Err(HostFileError::BadPath { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
