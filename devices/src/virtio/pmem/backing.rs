//! The file behind a pmem device, mapped into this process: shared (guest writes reach the file) or, for a
//! read-only device, private (guest writes stay in the VM and vanish with it; the file is never written).
//! The VMM hands the mapping to KVM as a memory slot; this owns it and unmaps it on drop.
//!
//! The file must be a non-empty multiple of 2 MiB: the guest maps pmem in 2 MiB blocks, and a mapping past
//! the end of a file would fault.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The size unit of a pmem file and of its place in guest physical memory.
pub const PMEM_ALIGN: u64 = 2 << 20;

/// Mapping a pmem file failed.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("path_on_host {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("path_on_host {path} is {size} bytes; a pmem file must be a non-empty multiple of 2 MiB")]
    Size { path: PathBuf, size: u64 },
    #[error("path_on_host {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("mapping path_on_host {path}: {source}")]
    Mmap {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A pmem file mapped into this process.
#[derive(Debug)]
pub struct PmemBacking {
    file: File,
    addr: *mut libc::c_void,
    len: u64,
}

// SAFETY: the mapping is plain memory owned by this value; nothing in it is tied to a thread.
unsafe impl Send for PmemBacking {}

impl PmemBacking {
    /// Opens and checks `path` (read-write unless `read_only`) without mapping it.
    pub fn open(path: &Path, read_only: bool) -> Result<(File, u64), BackingError> {
        let open_err = |source| BackingError::Open {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(BackingError::NotAFile { path: path.to_owned() });
        }
        let size = meta.len();
        if size == 0 || !size.is_multiple_of(PMEM_ALIGN) {
            return Err(BackingError::Size {
                path: path.to_owned(),
                size,
            });
        }
        Ok((file, size))
    }

    /// Maps `path` whole.
    pub fn map(path: &Path, read_only: bool) -> Result<Self, BackingError> {
        let (file, len) = Self::open(path, read_only)?;
        let flags = if read_only {
            libc::MAP_PRIVATE | libc::MAP_NORESERVE
        } else {
            libc::MAP_SHARED | libc::MAP_NORESERVE
        };
        // SAFETY: a new mapping chosen by the kernel, of a file we hold open; nothing is overwritten.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(BackingError::Mmap {
                path: path.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(PmemBacking { file, addr, len })
    }

    /// Where the file is mapped in this process.
    pub fn host_addr(&self) -> u64 {
        self.addr as u64
    }

    /// The file's (and the mapping's) size.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: an empty file is refused.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file, for `fsync`.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for PmemBacking {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `map` made; no reference into it outlives this value (KVM's slot only
        // holds the address, and the VM's vCPUs are stopped before devices are dropped).
        unsafe { libc::munmap(self.addr, self.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, size: u64) -> PathBuf {
        let path = std::env::temp_dir().join(format!("hull-pmem-backing-{}-{name}", std::process::id()));
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        path
    }

    #[test]
    fn shared_mappings_write_through_and_private_ones_do_not() {
        let path = file("rw", PMEM_ALIGN);
        let rw = PmemBacking::map(&path, false).unwrap();
        // SAFETY: the first byte of a 2 MiB mapping we own.
        unsafe { *(rw.host_addr() as *mut u8) = 0x5a };
        rw.file().sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[0], 0x5a);
        let ro = PmemBacking::map(&path, true).unwrap();
        // SAFETY: as above.
        unsafe { *(ro.host_addr() as *mut u8) = 0x11 };
        assert_eq!(
            std::fs::read(&path).unwrap()[0],
            0x5a,
            "a read-only device wrote its file"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn sizes_that_are_not_whole_2_mib_blocks_are_refused() {
        for size in [0, 4096, PMEM_ALIGN + 4096] {
            let path = file(&format!("size{size}"), size);
            let e = PmemBacking::map(&path, true).unwrap_err();
            assert!(matches!(e, BackingError::Size { .. }), "{size}: {e}");
            std::fs::remove_file(path).unwrap();
        }
        assert!(matches!(
            PmemBacking::map(Path::new("/nonexistent/pmem.img"), true),
            Err(BackingError::Open { .. })
        ));
    }
}
