//! What a virtio-blk disk is stored in. `RawFile` maps sector N to byte N*512 of a regular file (or
//! block device); the device core only talks to the `DiskBackend` trait.
//!
//! Owns: the open file and its read-only flag. Never trusts offsets blindly: the core bounds-checks
//! against `capacity_bytes` before calling, and the file API errors on anything else.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::SECTOR_SIZE;

/// Storage behind a block device.
pub trait DiskBackend: Send {
    /// Usable size in bytes, a multiple of the sector size.
    fn capacity_bytes(&self) -> u64;
    /// Fills `buf` from byte `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at byte `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
}

/// A raw disk image file.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    path: PathBuf,
    capacity: u64,
}

impl RawFile {
    /// Opens `path` (read-write unless `read_only`); the capacity is its size rounded down to sectors.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let len = file.metadata()?.len();
        // A block device reports 0 in metadata; ask it for its end instead.
        let len = if len == 0 {
            use std::io::Seek;
            (&file).seek(io::SeekFrom::End(0))?
        } else {
            len
        };
        Ok(RawFile {
            file,
            path: path.to_owned(),
            capacity: len - len % SECTOR_SIZE,
        })
    }

    /// The path the disk was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// No disk at all: capacity 0. What an empty slot holds after `detach`; the request checks refuse every
/// read and write before they get here, and these methods refuse them again if they ever do.
#[derive(Debug, Default, Clone, Copy)]
pub struct EmptyDisk;

impl DiskBackend for EmptyDisk {
    fn capacity_bytes(&self) -> u64 {
        0
    }

    fn read_at(&mut self, _buf: &mut [u8], offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("no disk attached (read at byte {offset})"),
        ))
    }

    fn write_at(&mut self, _buf: &[u8], offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("no disk attached (write at byte {offset})"),
        ))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl DiskBackend for RawFile {
    fn capacity_bytes(&self) -> u64 {
        self.capacity
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
}
