//! virtio-blk: the device core (`devices::virtio::block::Block` over a raw file in the temp dir) serving
//! 4 KiB and 64 KiB reads and writes queued `DEPTH` at a time (header, data and status in three
//! descriptors, as Linux's driver lays them out), against pread/pwrite of the same sizes at the same offsets
//! of the same file. Both go through the page cache; nothing is fsynced.
//!
//! Before timing, each size is checked end to end (device write → pread sees it; pwrite → device read sees
//! it), and every request in the timed loop must come back with status OK and the expected used length.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use devices::rate_limiter::RateLimiterConfig;
use devices::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::{GuestMemory, QueueSet, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

use super::{compare, guest_memory, timed, wait_readable, DeviceOptions, Rate};
use crate::error::{fail, BenchError, Result};
use crate::report::Section;
use crate::virtq::{Buffer, DriverQueue};

/// Requests offered per queue notification.
pub const DEPTH: usize = 32;
const QUEUE_SIZE: u16 = 256;
const FILE_BYTES: u64 = 128 << 20;
const MEM_BYTES: usize = 16 << 20;
const RING_BASE: u64 = 0x1000;
const HDR_BASE: u64 = 0x10_0000;
const STATUS_BASE: u64 = 0x11_0000;
const DATA_BASE: u64 = 0x20_0000;
const DATA_SLOT: u64 = 64 << 10;
const SECTOR: u64 = 512;

/// A file in the temp dir, removed on drop.
pub(super) struct ScratchFile {
    pub(super) path: PathBuf,
    file: File,
}

impl ScratchFile {
    /// `bytes` of a non-zero pattern (holes would read faster than data).
    pub(super) fn create(bytes: u64) -> Result<ScratchFile> {
        let path = std::env::temp_dir().join(format!("hull-bench-blk-{}.img", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(fail(format!("creating {}", path.display())))?;
        let scratch = ScratchFile { path, file };
        let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        let mut off = 0;
        while off < bytes {
            scratch
                .file
                .write_all_at(&chunk, off)
                .map_err(fail(format!("filling {}", scratch.path.display())))?;
            off += chunk.len() as u64;
        }
        Ok(scratch)
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A guest driver with one request queue and `DEPTH` request slots.
pub(super) struct BlockDriver {
    mem: GuestMemory,
    queue: DriverQueue,
    pub(super) dev: Block,
    next_offset: u64,
}

impl BlockDriver {
    /// A drive over `path` with the limits of `rate_limiter`.
    pub(super) fn new(path: &std::path::Path, rate_limiter: RateLimiterConfig) -> Result<BlockDriver> {
        let mem = guest_memory(MEM_BYTES)?;
        let queue = DriverQueue::new(&mem, RING_BASE, QUEUE_SIZE).map_err(BenchError::failed)?;
        let mut dev = Block::new(&BlockConfig {
            path: path.to_path_buf(),
            read_only: false,
            id: None,
            rate_limiter,
        })
        .map_err(fail("creating the virtio-blk device"))?;
        dev.set_acked_features(dev.avail_features());
        dev.activate().map_err(fail("activating the virtio-blk device"))?;
        Ok(BlockDriver {
            mem,
            queue,
            dev,
            next_offset: 0,
        })
    }

    fn data_addr(slot: usize) -> u64 {
        DATA_BASE + slot as u64 * DATA_SLOT
    }

    /// Offers `n` requests of `size` bytes at consecutive offsets, notifies the device once, and checks
    /// every completion; a rate-limited device that holds requests back is woken by its timer fd, as the
    /// VMM's event loop would. Returns the first request's byte offset.
    pub(super) fn batch(&mut self, write: bool, size: u32, n: usize) -> Result<u64> {
        let mut first = None;
        let kind = if write { VIRTIO_BLK_T_OUT } else { VIRTIO_BLK_T_IN };
        let io = |e: vm_memory::GuestMemoryError| BenchError::failed(format!("writing guest memory: {e}"));
        for slot in 0..n {
            if self.next_offset + u64::from(size) > FILE_BYTES {
                self.next_offset = 0;
            }
            first.get_or_insert(self.next_offset);
            let hdr = HDR_BASE + slot as u64 * 16;
            let mut raw = [0u8; 16];
            raw[0..4].copy_from_slice(&kind.to_le_bytes());
            raw[8..16].copy_from_slice(&(self.next_offset / SECTOR).to_le_bytes());
            self.mem.write_slice(&raw, GuestAddress(hdr)).map_err(io)?;
            let status = STATUS_BASE + slot as u64;
            self.mem.write_obj(0xffu8, GuestAddress(status)).map_err(io)?;
            let data = Self::data_addr(slot);
            let data = if write {
                Buffer::readable(data, size)
            } else {
                Buffer::writable(data, size)
            };
            self.queue
                .offer(
                    &self.mem,
                    &[Buffer::readable(hdr, 16), data, Buffer::writable(status, 1)],
                )
                .map_err(BenchError::failed)?;
            self.next_offset += u64::from(size);
        }
        let mut set = QueueSet::new();
        set.push(Some(self.queue.device_queue()));
        self.dev
            .process_queue(0, &self.mem, &mut set)
            .map_err(fail("virtio-blk process_queue"))?;
        let mut used = self.queue.take_used(&self.mem).map_err(BenchError::failed)?;
        while used.len() < n && self.dev.rate_limiter().is_blocked() {
            let fd = self.dev.backend_fd().ok_or_else(|| BenchError::failed("no timer fd"))?;
            wait_readable(fd, std::time::Duration::from_secs(10))?;
            let mut set = QueueSet::new();
            set.push(Some(self.queue.device_queue()));
            self.dev
                .process_backend(&self.mem, &mut set)
                .map_err(fail("virtio-blk process_backend"))?;
            used.extend(self.queue.take_used(&self.mem).map_err(BenchError::failed)?);
        }
        if used.len() != n {
            return Err(BenchError::failed(format!(
                "{n} requests offered, {} completed",
                used.len()
            )));
        }
        let mut statuses = vec![0u8; n];
        self.mem
            .read_slice(&mut statuses, GuestAddress(STATUS_BASE))
            .map_err(|e| BenchError::failed(format!("reading status bytes: {e}")))?;
        if let Some(bad) = statuses.iter().find(|s| **s != VIRTIO_BLK_S_OK) {
            return Err(BenchError::failed(format!("a request completed with status {bad}")));
        }
        let expected_len = if write { 1 } else { size + 1 };
        if let Some(u) = used.iter().find(|u| u.len != expected_len) {
            return Err(BenchError::failed(format!(
                "request {} completed with length {}, expected {expected_len}",
                u.head, u.len
            )));
        }
        Ok(first.unwrap_or(0))
    }
}

/// Checks that data moves correctly both ways at `size` before it is timed.
fn verify(driver: &mut BlockDriver, file: &File, size: u32) -> Result<()> {
    let n = size as usize;
    let pattern: Vec<u8> = (0..n).map(|i| (i * 7 + size as usize) as u8).collect();
    driver
        .mem
        .write_slice(&pattern, GuestAddress(BlockDriver::data_addr(0)))
        .map_err(fail("writing guest memory"))?;
    let at = driver.batch(true, size, 1)?;
    let mut back = vec![0u8; n];
    file.read_exact_at(&mut back, at).map_err(fail("pread"))?;
    if back != pattern {
        return Err(BenchError::failed(format!(
            "a {size}-byte device write did not reach the file"
        )));
    }
    let other: Vec<u8> = pattern.iter().map(|b| !b).collect();
    file.write_all_at(&other, 0).map_err(fail("pwrite"))?;
    driver.next_offset = 0;
    driver.batch(false, size, 1)?;
    driver
        .mem
        .read_slice(&mut back, GuestAddress(BlockDriver::data_addr(0)))
        .map_err(fail("reading guest memory"))?;
    if back != other {
        return Err(BenchError::failed(format!(
            "a {size}-byte device read did not return the file's bytes"
        )));
    }
    Ok(())
}

/// Runs the virtio-blk comparisons into `s`.
pub fn run(s: &mut Section, opts: &DeviceOptions) -> Result<()> {
    let scratch = ScratchFile::create(FILE_BYTES)?;
    let mut driver = BlockDriver::new(&scratch.path, RateLimiterConfig::default())?;
    let raw_file = &scratch.file;
    for size in [4096u32, 64 << 10] {
        verify(&mut driver, raw_file, size)?;
        for write in [false, true] {
            let (mut dev_rates, mut raw_rates) = (Vec::<Rate>::new(), Vec::<Rate>::new());
            let mut buf = vec![0x5au8; size as usize];
            for _ in 0..opts.runs {
                dev_rates.push(timed(opts.window, || {
                    driver.batch(write, size, DEPTH)?;
                    Ok((DEPTH as u64, DEPTH as u64 * u64::from(size)))
                })?);
                let mut offset = 0u64;
                raw_rates.push(timed(opts.window, || {
                    for _ in 0..DEPTH {
                        if write {
                            raw_file.write_all_at(&buf, offset).map_err(fail("pwrite"))?;
                        } else {
                            raw_file.read_exact_at(&mut buf, offset).map_err(fail("pread"))?;
                        }
                        offset = (offset + u64::from(size)) % FILE_BYTES;
                    }
                    Ok((DEPTH as u64, DEPTH as u64 * u64::from(size)))
                })?);
            }
            let label = format!("blk {} {} KiB", if write { "write" } else { "read" }, size / 1024);
            let raw_label = if write { "pwrite" } else { "pread" };
            compare(s, &label, "req", &dev_rates, raw_label, &raw_rates);
        }
    }
    s.note(format!(
        "{DEPTH} requests per notification, 3 descriptors each; {} MiB file in {} (page cache, no fsync); \
         {} windows of {:?} per row, device and raw interleaved; ratio = device MB/s / raw MB/s per window pair",
        FILE_BYTES >> 20,
        std::env::temp_dir().display(),
        opts.runs,
        opts.window
    ));
    Ok(())
}
