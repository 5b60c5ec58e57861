//! The virtio-blk device core: features, config space, and the request queue. Transport-agnostic: hull's
//! virtio-mmio and the vhost-user backend both drive it through `VirtioDevice`.
//!
//! Owns: the disk backend, the drive id, the bounce buffer and the metrics. Never trusts: anything in the
//! queue (validated by `request`) or config-space writes from the driver (ignored: every field is
//! read-only).
//!
//! The backing file can be replaced at run time ([`Block::attach`], [`Block::detach`]). The caller must hold
//! the same `&mut Block` the queue is served through (the transport's lock), so a swap always falls between
//! two requests: a request is served wholly by the old file or wholly by the new one. Afterwards the caller
//! tells the driver that the config space changed (virtio-mmio: a config interrupt; vhost-user: the
//! frontend's config-change message). The read-only *feature* the driver negotiated cannot change after
//! boot: a drive created read-only only takes read-only files; a read-write drive may take a read-only
//! file, and then answers writes with an I/O error.
//!
//! Every read and write costs its data bytes and one op of the drive's [`RateLimiter`] (other requests one
//! op). A request that does not fit is left in the queue and the queue is not touched again until the
//! limiter's timer fires: the timer fd is the device's `backend_fd`, so the transport's event loop wakes
//! the device, which never waits itself. Limits can change at run time ([`Block::update_rate_limiter`]).

use std::any::Any;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_debug as debug, guest_warn as warn};

use super::backend::{DiskBackend, EmptyDisk, RawFile};
use super::metrics::BlockMetrics;
use super::request::{BlockRequest, DiskGeometry, StatusSlot, HEADER_LEN, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use super::{ID_BYTES, SECTOR_SIZE, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterUpdate};
use crate::virtio::chain::ParsedChain;
use crate::virtio::{
    read_config_bytes, DeviceError, DeviceMetrics, GuestMemory, QueueSet, QueueSignals, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes moved between the disk and guest memory per step (bounds the bounce buffer).
const CHUNK: usize = 128 << 10;

/// How to build a drive.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// Backing file (raw image).
    pub path: PathBuf,
    /// Refuse writes (`VIRTIO_BLK_F_RO`).
    pub read_only: bool,
    /// Drive id for `GET_ID` (at most 20 bytes are used); defaults to the file name.
    pub id: Option<String>,
    /// Bandwidth and ops limits (unlimited by default).
    pub rate_limiter: RateLimiterConfig,
}

/// Building a drive, or replacing its file, failed. A failed replacement leaves the drive as it was.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("opening disk image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image {path} must be given as an absolute path")]
    RelativePath { path: PathBuf },
    #[error("disk image {path} is not a regular file or block device")]
    NotADisk { path: PathBuf },
    #[error("creating the drive's rate limiter timer: {0}")]
    RateLimiter(#[source] std::io::Error),
    #[error(
        "the drive was created read-only (the guest negotiated VIRTIO_BLK_F_RO); {path} can only be attached read-only"
    )]
    ReadOnlyDrive { path: PathBuf },
}

/// A virtio-blk device.
pub struct Block {
    disk: Box<dyn DiskBackend>,
    /// Writes are refused (the feature bit, or a read-only file attached to a read-write drive).
    read_only: bool,
    /// `VIRTIO_BLK_F_RO` is offered: fixed for the device's life.
    created_read_only: bool,
    /// The file behind the disk; `None` for an empty slot or a test backend.
    path: Option<PathBuf>,
    id: [u8; ID_BYTES],
    avail_features: u64,
    acked_features: u64,
    config: Vec<u8>,
    bounce: Vec<u8>,
    limiter: RateLimiter,
    metrics: Arc<BlockMetrics>,
}

/// What became of one request chain.
enum Served {
    /// Answered, with this many bytes written into the chain.
    Answered(u32),
    /// The rate limiter holds it back: it stays in the queue.
    Throttled,
}

impl Block {
    /// Opens the image named in `cfg`.
    pub fn new(cfg: &BlockConfig) -> Result<Self, BlockError> {
        let disk = RawFile::open(&cfg.path, cfg.read_only).map_err(|source| BlockError::Open {
            path: cfg.path.clone(),
            source,
        })?;
        let id = cfg.id.clone().unwrap_or_else(|| {
            cfg.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let mut block = Self::with_backend(Box::new(disk), cfg.read_only, &id)?;
        block.path = Some(cfg.path.clone());
        block.update_rate_limiter(&cfg.rate_limiter.into());
        Ok(block)
    }

    /// A drive over any backend (tests use in-memory disks), without rate limits.
    pub fn with_backend(disk: Box<dyn DiskBackend>, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let limiter = RateLimiter::unlimited().map_err(BlockError::RateLimiter)?;
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        let mut avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE;
        if read_only {
            avail_features |= VIRTIO_BLK_F_RO;
        }
        let config = Self::build_config(disk.capacity_bytes() / SECTOR_SIZE);
        Ok(Block {
            disk,
            read_only,
            created_read_only: read_only,
            path: None,
            id: id_bytes,
            avail_features,
            acked_features: 0,
            config,
            bounce: vec![0; CHUNK],
            limiter,
            metrics: Arc::new(BlockMetrics::default()),
        })
    }

    /// Replaces or keeps each bucket of the drive's rate limiter (`PATCH /drives/{id}`). Runs under the
    /// same `&mut Block` that serves the queue, so it falls between two requests.
    pub fn update_rate_limiter(&mut self, update: &RateLimiterUpdate) {
        self.limiter.update(update);
    }

    /// The drive's rate limiter.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// struct virtio_blk_config (60 bytes): capacity, size_max, seg_max, geometry, blk_size, ...
    fn build_config(capacity_sectors: u64) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&capacity_sectors.to_le_bytes());
        // seg_max: data segments per request; the chain also holds the header and the status.
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    /// Counters for the API.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Current capacity in 512-byte sectors (0 for an empty slot).
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_bytes() / SECTOR_SIZE
    }

    /// Whether guest writes are refused right now.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The file behind the disk (`None` when the slot is empty).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Replaces the backing file with `path` (absolute; a regular file or block device, possibly empty) and
    /// returns the new capacity in sectors. On error nothing changes. The caller then announces the config
    /// change to the driver.
    pub fn attach(&mut self, path: &Path, read_only: bool) -> Result<u64, BlockError> {
        if !path.is_absolute() {
            return Err(BlockError::RelativePath { path: path.to_owned() });
        }
        if self.created_read_only && !read_only {
            return Err(BlockError::ReadOnlyDrive { path: path.to_owned() });
        }
        let open_err = |source| BlockError::Open {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        use std::os::unix::fs::FileTypeExt;
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(BlockError::NotADisk { path: path.to_owned() });
        }
        let disk = RawFile::open(path, read_only).map_err(open_err)?;
        self.replace_backend(Box::new(disk), read_only);
        self.path = Some(path.to_owned());
        Ok(self.capacity_sectors())
    }

    /// Empties the slot: capacity 0, every read or write answered with an I/O error. The caller then
    /// announces the config change to the driver.
    pub fn detach(&mut self) {
        self.replace_backend(Box::new(EmptyDisk), self.created_read_only);
        self.path = None;
    }

    /// Swaps in `disk` (any backend; tests use in-memory disks) and rewrites the capacity in the config
    /// space. Writes acknowledged by the old file are flushed first; a failing flush is logged, since the
    /// host asked for the swap and the guest was never promised durability without a FLUSH request.
    pub fn replace_backend(&mut self, disk: Box<dyn DiskBackend>, read_only: bool) {
        if !self.read_only {
            if let Err(error) = self.disk.flush() {
                warn!(%error, "flushing the previous disk before replacing it failed");
            }
        }
        self.disk = disk;
        self.read_only = read_only || self.created_read_only;
        let capacity = self.capacity_sectors();
        self.config[0..8].copy_from_slice(&capacity.to_le_bytes());
        debug!(capacity, read_only = self.read_only, "virtio-blk backing file replaced");
    }

    fn geometry(&self) -> DiskGeometry {
        DiskGeometry {
            capacity_sectors: self.disk.capacity_bytes() / SECTOR_SIZE,
            read_only: self.read_only,
        }
    }

    /// Answers one request chain: validates it, asks the rate limiter, runs it and writes its status.
    /// Returns the bytes written into the chain, or that the limiter holds it back (nothing is written
    /// then); an error means the chain has no usable status byte.
    fn answer(&mut self, chain: &ParsedChain, mem: &GuestMemory) -> Result<Served, DeviceError> {
        let head = chain.head;
        let slot = StatusSlot::locate(chain, mem).map_err(|e| DeviceError::Unanswerable {
            queue: 0,
            head,
            reason: e.to_string(),
        })?;
        let (status, written) = match BlockRequest::parse(chain, &slot, mem, self.geometry()) {
            Ok(req) => {
                let bytes = match req {
                    BlockRequest::Read { len, .. } | BlockRequest::Write { len, .. } => len,
                    BlockRequest::Flush | BlockRequest::GetId => 0,
                };
                if !self.limiter.consume(1, bytes) {
                    self.metrics.rate_limiter_throttled.inc();
                    return Ok(Served::Throttled);
                }
                debug!(head, ?req, "virtio-blk request");
                self.execute(&req, chain, mem)
            }
            Err(e) => {
                debug!(head, error = %e, "virtio-blk request refused");
                self.metrics.invalid_requests.inc();
                if e.status() == VIRTIO_BLK_S_IOERR {
                    self.metrics.io_errors.inc();
                } else {
                    self.metrics.unsupported.inc();
                }
                (e.status(), 0)
            }
        };
        // The slot was checked to be in memory; a failure now means memory changed under us.
        slot.write(chain, mem, status)
            .map_err(|source| DeviceError::MalformedChain { queue: 0, head, source })?;
        Ok(Served::Answered(written.saturating_add(1)))
    }

    /// Serves queue 0 until it is empty or the rate limiter holds a request back (it stays first in the
    /// queue for the next pass, which the limiter's timer starts).
    fn serve(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        if self.limiter.is_blocked() {
            return Ok(QueueSignals::NONE);
        }
        let Some(mut queue) = queues.chains(0, mem) else {
            return Ok(QueueSignals::NONE);
        };
        QueueSignals::collect(|signals| {
            while let Some(chain) = queue.pop()? {
                match self.answer(&chain, mem)? {
                    Served::Answered(written) => queue.complete(chain.head, written, signals)?,
                    Served::Throttled => {
                        queue.put_back();
                        break;
                    }
                }
            }
            Ok(())
        })
        .inspect_err(|_| self.metrics.fatal_chains.inc())
    }

    /// Runs a validated request; returns the status and how many data bytes were written to the guest.
    fn execute(&mut self, req: &BlockRequest, chain: &ParsedChain, mem: &GuestMemory) -> (u8, u32) {
        let m = &self.metrics;
        let result = match *req {
            BlockRequest::Read { offset, len } => {
                m.read_requests.inc();
                let mut done = 0u64;
                let mut res = Ok(());
                while done < len {
                    let n = (len - done).min(CHUNK as u64) as usize;
                    let buf = &mut self.bounce[..n];
                    if let Err(e) = self.disk.read_at(buf, offset + done) {
                        res = Err(e.to_string());
                        break;
                    }
                    if let Err(e) = chain.write_at(mem, done, buf) {
                        res = Err(e.to_string());
                        break;
                    }
                    done += n as u64;
                }
                m.read_bytes.add(done);
                res.map(|()| len)
            }
            BlockRequest::Write { offset, len } => {
                m.write_requests.inc();
                let mut done = 0u64;
                let mut res = Ok(0);
                while done < len {
                    let n = (len - done).min(CHUNK as u64) as usize;
                    let buf = &mut self.bounce[..n];
                    if let Err(e) = chain.read_at(mem, HEADER_LEN + done, buf) {
                        res = Err(e.to_string());
                        break;
                    }
                    if let Err(e) = self.disk.write_at(buf, offset + done) {
                        res = Err(e.to_string());
                        break;
                    }
                    done += n as u64;
                }
                m.write_bytes.add(done);
                res
            }
            BlockRequest::Flush => {
                m.flush_requests.inc();
                self.disk.flush().map(|()| 0).map_err(|e| e.to_string())
            }
            BlockRequest::GetId => {
                m.get_id_requests.inc();
                chain
                    .write_at(mem, 0, &self.id)
                    .map(|()| ID_BYTES as u64)
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            // Data lengths were bounded by the chain, whose total is below 4 GiB.
            Ok(written) => (VIRTIO_BLK_S_OK, u32::try_from(written).unwrap_or(u32::MAX)),
            Err(error) => {
                warn!(?req, %error, "virtio-blk request failed");
                self.metrics.io_errors.inc();
                self.metrics.execute_fails.inc();
                (VIRTIO_BLK_S_IOERR, 0)
            }
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn metrics(&self) -> Option<Arc<dyn DeviceMetrics>> {
        Some(self.metrics.clone())
    }

    fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemory,
        queues: &mut QueueSet<'_>,
    ) -> Result<QueueSignals, DeviceError> {
        if index != 0 {
            return Ok(QueueSignals::NONE);
        }
        self.serve(mem, queues)
    }

    /// The rate limiter's timer: readable when a throttled queue may go on.
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.limiter.as_raw_fd())
    }

    fn process_backend(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        if !self.limiter.on_timer() {
            return Ok(QueueSignals::NONE);
        }
        self.serve(mem, queues)
    }

    fn reset(&mut self) {
        self.acked_features = 0;
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::rate_limiter::BucketConfig;
    use crate::virtio::block::request::*;
    use crate::virtio::block::test_utils::{offer_request, status, MemDisk, DATA, HDR, STATUS};
    use crate::virtio::test_utils::{xorshift, Desc, GuestQueue, TestTransport};

    fn device(read_only: bool) -> (TestTransport<Block>, MemDisk) {
        let disk = MemDisk::new(64 * 512);
        (
            TestTransport::new(
                Block::with_backend(Box::new(disk.clone()), read_only, "hull-test-drive-id-longer-than-20").unwrap(),
            ),
            disk,
        )
    }

    fn run(dev: &mut TestTransport<Block>, q: &mut GuestQueue) -> Result<QueueSignals, DeviceError> {
        let (mem, queue) = q.parts();
        let mut set = QueueSet::new();
        set.push(Some(queue));
        dev.process_queue(0, mem, &mut set)
    }

    fn limit(bandwidth: (u64, u64), ops: (u64, u64)) -> RateLimiterUpdate {
        let bucket = |(size, refill_time_ms)| BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms,
        };
        RateLimiterConfig {
            bandwidth: bucket(bandwidth),
            ops: bucket(ops),
        }
        .into()
    }

    #[test]
    fn throttled_requests_stay_in_the_queue_until_the_limiter_timer_fires() {
        let (mut dev, _) = device(false);
        // Two requests at once, then one every 50 ms.
        dev.update_rate_limiter(&limit((0, 0), (2, 100)));
        let mut q = GuestQueue::new(16);
        let heads: Vec<u16> = (0..3)
            .map(|_| offer_request(&mut q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]))
            .collect();
        let started = std::time::Instant::now();
        run(&mut dev, &mut q).unwrap();
        assert_eq!(q.take_used(), vec![(heads[0], 513), (heads[1], 513)]);
        assert!(dev.rate_limiter().is_blocked());
        assert_eq!(dev.metrics().rate_limiter_throttled.get(), 1);
        // Kicks while throttled serve nothing, and neither does a wake-up before the timer.
        run(&mut dev, &mut q).unwrap();
        assert_eq!(q.take_used(), vec![]);
        let (mem, queue) = q.parts();
        let mut set = QueueSet::new();
        set.push(Some(queue));
        // The timer fd is what the transport watches.
        let fd = dev.backend_fd().unwrap();
        assert!(crate::virtio::test_utils::readable_within(
            fd,
            std::time::Duration::from_secs(5)
        ));
        assert!(started.elapsed() >= std::time::Duration::from_millis(40));
        assert!(dev.process_backend(mem, &mut set).unwrap().contains(0));
        assert_eq!(q.take_used(), vec![(heads[2], 513)]);
        assert!(!dev.rate_limiter().is_blocked());
    }

    #[test]
    fn bandwidth_counts_data_bytes_and_a_lifted_limit_serves_at_once() {
        let (mut dev, _) = device(false);
        // 1 KiB per minute: two 512-byte reads, then the third waits.
        dev.update_rate_limiter(&limit((1024, 60_000), (0, 0)));
        let mut q = GuestQueue::new(16);
        // (The chains share one header, so all four are reads.)
        for _ in 0..4 {
            offer_request(&mut q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]);
        }
        run(&mut dev, &mut q).unwrap();
        assert_eq!(q.take_used().len(), 2);
        assert!(dev.rate_limiter().is_blocked());
        // Lifting the limit wakes the device through its timer well before the minute is up.
        dev.update_rate_limiter(&limit((0, 0), (0, 0)));
        let fd = dev.backend_fd().unwrap();
        assert!(crate::virtio::test_utils::readable_within(
            fd,
            std::time::Duration::from_secs(5)
        ));
        let (mem, queue) = q.parts();
        let mut set = QueueSet::new();
        set.push(Some(queue));
        dev.process_backend(mem, &mut set).unwrap();
        assert_eq!(q.take_used().len(), 2);
        assert!(dev.rate_limiter().is_unlimited());
    }

    #[test]
    fn config_reports_capacity_in_sectors() {
        let (dev, _) = device(false);
        let mut cap = [0u8; 8];
        dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 64);
        let mut past = [0xffu8; 4];
        dev.read_config(1000, &mut past);
        assert_eq!(past, [0; 4]);
        assert_eq!(dev.avail_features() & VIRTIO_BLK_F_RO, 0);
        assert_ne!(device(true).0.avail_features() & VIRTIO_BLK_F_RO, 0);
    }

    #[test]
    fn read_returns_disk_bytes() {
        let (mut dev, disk) = device(false);
        let mut q = GuestQueue::new(16);
        let head = offer_request(&mut q, VIRTIO_BLK_T_IN, 3, &[Desc::write(DATA, 1024)]);
        let sig = run(&mut dev, &mut q).unwrap();
        assert!(sig.contains(0));
        assert_eq!(status(&q), VIRTIO_BLK_S_OK);
        assert_eq!(q.take_used(), vec![(head, 1025)]);
        let mut got = vec![0u8; 1024];
        q.mem().read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, disk.data.lock().unwrap()[1536..2560]);
    }

    #[test]
    fn write_then_flush_reaches_the_disk() {
        let (mut dev, disk) = device(false);
        let mut q = GuestQueue::new(16);
        q.mem().write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
        offer_request(&mut q, VIRTIO_BLK_T_OUT, 63, &[Desc::read(DATA, 512)]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_OK);
        assert!(disk.data.lock().unwrap()[63 * 512..].iter().all(|b| *b == 0xab));
        offer_request(&mut q, VIRTIO_BLK_T_FLUSH, 0, &[]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_OK);
        assert_eq!(*disk.flushes.lock().unwrap(), 1);
    }

    #[test]
    fn read_only_drive_refuses_writes() {
        let (mut dev, disk) = device(true);
        let before = disk.data.lock().unwrap().clone();
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_OUT, 0, &[Desc::read(DATA, 512)]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_IOERR);
        assert_eq!(*disk.data.lock().unwrap(), before);
    }

    #[test]
    fn get_id_returns_twenty_bytes() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        let head = offer_request(&mut q, VIRTIO_BLK_T_GET_ID, 0, &[Desc::write(DATA, 20)]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_OK);
        assert_eq!(q.take_used(), vec![(head, 21)]);
        let mut id = [0u8; 20];
        q.mem().read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"hull-test-drive-id-l");
    }

    #[test]
    fn unknown_type_gets_unsupp_and_device_goes_on() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, 11 /* DISCARD, not offered */, 0, &[]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_UNSUPP);
        offer_request(&mut q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_OK);
        assert_eq!(dev.metrics().unsupported.get(), 1);
        assert_eq!(dev.metrics().invalid_requests.get(), 1);
        assert_eq!(dev.metrics().execute_fails.get(), 0);
    }

    #[test]
    fn range_past_end_gets_ioerr() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        let head = offer_request(&mut q, VIRTIO_BLK_T_IN, 64, &[Desc::write(DATA, 512)]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_IOERR);
        assert_eq!(q.take_used(), vec![(head, 1)]);
    }

    #[test]
    fn huge_length_gets_ioerr_without_allocating() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, u32::MAX - 512)]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn zero_length_descriptors_are_harmless() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        offer_request(
            &mut q,
            VIRTIO_BLK_T_IN,
            0,
            &[Desc::write(DATA, 0), Desc::write(DATA, 0)],
        );
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_OK);
    }

    #[test]
    fn data_outside_memory_gets_ioerr() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_OUT, 0, &[Desc::read(0xdead_0000_0000, 512)]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn status_in_readable_descriptor_needs_reset() {
        // Wrong direction: everything device-readable, nowhere to put the status.
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        crate::virtio::block::test_utils::write_header(&q, VIRTIO_BLK_T_IN, 0);
        q.add_chain(&[Desc::read(HDR, 16), Desc::read(DATA, 512), Desc::read(STATUS, 1)]);
        assert!(matches!(run(&mut dev, &mut q), Err(DeviceError::Unanswerable { .. })));
        // Broken until reset; the process is fine.
        assert!(matches!(run(&mut dev, &mut q), Err(DeviceError::NeedsReset)));
        dev.reset();
    }

    #[test]
    fn looping_chain_needs_reset() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        q.add_raw_chain(&[(HDR, 16, 1, 1), (STATUS, 1, 3, 0)]);
        assert!(matches!(run(&mut dev, &mut q), Err(DeviceError::MalformedChain { .. })));
    }

    #[test]
    fn descriptor_table_index_out_of_queue_needs_reset() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        q.write_desc(0, HDR, 16, 0, 0);
        q.publish(999); // head index past the queue size
        assert!(run(&mut dev, &mut q).is_err());
    }

    #[test]
    fn avail_index_jump_needs_reset() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        q.set_avail_idx(1000);
        assert!(matches!(run(&mut dev, &mut q), Err(DeviceError::InvalidRing { .. })));
    }

    #[test]
    fn indirect_chain_works() {
        let (mut dev, disk) = device(false);
        let mut q = GuestQueue::new(16);
        crate::virtio::block::test_utils::write_header(&q, VIRTIO_BLK_T_IN, 1);
        q.add_indirect_chain(
            0x40_000,
            &[Desc::read(HDR, 16), Desc::write(DATA, 512), Desc::write(STATUS, 1)],
        );
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 512];
        q.mem().read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, disk.data.lock().unwrap()[512..1024]);
    }

    #[test]
    fn indirect_table_with_bad_length_needs_reset() {
        let (mut dev, _) = device(false);
        let mut q = GuestQueue::new(16);
        q.add_raw_chain(&[(0x40_000, 17, crate::virtio::test_utils::F_INDIRECT, 0)]);
        assert!(run(&mut dev, &mut q).is_err());
    }

    /// A scratch file under the temp dir, removed on drop.
    struct TempImage(PathBuf);

    impl TempImage {
        fn new(name: &str, bytes: &[u8]) -> Self {
            let p = std::env::temp_dir().join(format!("hull-blk-slot-{}-{name}", std::process::id()));
            std::fs::write(&p, bytes).unwrap();
            TempImage(p)
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn slot(name: &str, read_only: bool) -> (TestTransport<Block>, TempImage) {
        let empty = TempImage::new(name, &[]);
        let cfg = BlockConfig {
            path: empty.0.clone(),
            read_only,
            id: Some("slot0".into()),
            rate_limiter: Default::default(),
        };
        (TestTransport::new(Block::new(&cfg).unwrap()), empty)
    }

    fn config_capacity(dev: &Block) -> u64 {
        let mut cap = [0u8; 8];
        dev.read_config(0, &mut cap);
        u64::from_le_bytes(cap)
    }

    fn read_sector(dev: &mut TestTransport<Block>, sector: u64) -> (u8, Vec<u8>) {
        let mut q = GuestQueue::new(16);
        q.mem().write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
        offer_request(&mut q, VIRTIO_BLK_T_IN, sector, &[Desc::write(DATA, 512)]);
        run(dev, &mut q).unwrap();
        let mut got = vec![0u8; 512];
        q.mem().read_slice(&mut got, GuestAddress(DATA)).unwrap();
        (status(&q), got)
    }

    fn write_sector(dev: &mut TestTransport<Block>, sector: u64, byte: u8) -> u8 {
        let mut q = GuestQueue::new(16);
        q.mem().write_slice(&[byte; 512], GuestAddress(DATA)).unwrap();
        offer_request(&mut q, VIRTIO_BLK_T_OUT, sector, &[Desc::read(DATA, 512)]);
        run(dev, &mut q).unwrap();
        status(&q)
    }

    #[test]
    fn empty_placeholder_has_capacity_zero_and_refuses_io() {
        let (mut dev, _f) = slot("empty", false);
        assert_eq!((dev.capacity_sectors(), config_capacity(&dev)), (0, 0));
        assert_eq!(read_sector(&mut dev, 0).0, VIRTIO_BLK_S_IOERR);
        assert_eq!(write_sector(&mut dev, 0, 1), VIRTIO_BLK_S_IOERR);
        assert_eq!(read_sector(&mut dev, u64::MAX).0, VIRTIO_BLK_S_IOERR);
        // A zero-length read and a flush are fine on an empty disk.
        let mut q = GuestQueue::new(16);
        offer_request(&mut q, VIRTIO_BLK_T_IN, 0, &[]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_OK);
        offer_request(&mut q, VIRTIO_BLK_T_FLUSH, 0, &[]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(status(&q), VIRTIO_BLK_S_OK);
        assert_eq!(dev.metrics().io_errors.get(), 3);
        // Out of range on an empty disk: refused before anything ran.
        assert_eq!(dev.metrics().invalid_requests.get(), 3);
        assert_eq!(dev.metrics().execute_fails.get(), 0);
    }

    #[test]
    fn attach_swaps_the_file_between_requests_and_detach_empties_the_slot() {
        let (mut dev, _f) = slot("swap", false);
        let first = TempImage::new("first", &[0x11; 4096]);
        let second = TempImage::new("second", &[0x22; 8192 + 100]);
        assert_eq!(dev.attach(&first.0, false).unwrap(), 8);
        assert_eq!(config_capacity(&dev), 8);
        assert_eq!(dev.path(), Some(first.0.as_path()));
        assert_eq!(read_sector(&mut dev, 7), (VIRTIO_BLK_S_OK, vec![0x11; 512]));
        assert_eq!(write_sector(&mut dev, 0, 0x33), VIRTIO_BLK_S_OK);
        // The next request after the swap is served by the new file (size rounded down to sectors).
        assert_eq!(dev.attach(&second.0, false).unwrap(), 16);
        assert_eq!(config_capacity(&dev), 16);
        assert_eq!(read_sector(&mut dev, 0), (VIRTIO_BLK_S_OK, vec![0x22; 512]));
        assert_eq!(read_sector(&mut dev, 16).0, VIRTIO_BLK_S_IOERR);
        // The write went to the first file, and stayed there.
        assert_eq!(std::fs::read(&first.0).unwrap()[..512], [0x33; 512]);
        dev.detach();
        assert_eq!(
            (dev.capacity_sectors(), config_capacity(&dev), dev.path()),
            (0, 0, None)
        );
        assert_eq!(read_sector(&mut dev, 0).0, VIRTIO_BLK_S_IOERR);
        assert_eq!(write_sector(&mut dev, 0, 1), VIRTIO_BLK_S_IOERR);
        // Back to a real file after a detach.
        dev.attach(&first.0, false).unwrap();
        assert_eq!(read_sector(&mut dev, 0), (VIRTIO_BLK_S_OK, vec![0x33; 512]));
    }

    #[test]
    fn read_only_attach_on_a_read_write_drive_refuses_writes() {
        let (mut dev, _f) = slot("ro-on-rw", false);
        let image = TempImage::new("ro-image", &[0x44; 1024]);
        dev.attach(&image.0, true).unwrap();
        assert!(dev.is_read_only());
        assert_eq!(write_sector(&mut dev, 0, 0x55), VIRTIO_BLK_S_IOERR);
        assert_eq!(std::fs::read(&image.0).unwrap(), vec![0x44; 1024]);
        // The feature bit never changes after creation.
        assert_eq!(dev.avail_features() & VIRTIO_BLK_F_RO, 0);
        dev.attach(&image.0, false).unwrap();
        assert!(!dev.is_read_only());
    }

    #[test]
    fn read_only_drive_takes_only_read_only_files() {
        let (mut dev, _f) = slot("ro-drive", true);
        let image = TempImage::new("ro-drive-image", &[0x66; 1024]);
        let e = dev.attach(&image.0, false).unwrap_err();
        assert!(matches!(e, BlockError::ReadOnlyDrive { .. }), "{e}");
        assert_eq!(dev.capacity_sectors(), 0, "a refused attach changes nothing");
        dev.attach(&image.0, true).unwrap();
        assert_eq!(dev.capacity_sectors(), 2);
        dev.detach();
        assert!(dev.is_read_only());
    }

    #[test]
    fn bad_attach_requests_change_nothing() {
        let (mut dev, _f) = slot("bad", false);
        let image = TempImage::new("bad-image", &[0x77; 512]);
        dev.attach(&image.0, false).unwrap();
        let cases: Vec<(PathBuf, &str)> = vec![
            (PathBuf::from("relative/disk.img"), "absolute path"),
            (PathBuf::from("/no/such/disk.img"), "/no/such/disk.img"),
            (std::env::temp_dir(), "not a regular file"),
        ];
        for (path, expected) in cases {
            let e = dev.attach(&path, false).unwrap_err().to_string();
            assert!(e.contains(expected), "{}: {e}", path.display());
            assert_eq!(dev.capacity_sectors(), 1);
            assert_eq!(dev.path(), Some(image.0.as_path()));
        }
        assert_eq!(read_sector(&mut dev, 0), (VIRTIO_BLK_S_OK, vec![0x77; 512]));
    }

    #[test]
    fn garbage_on_an_empty_slot_never_panics() {
        let (mut dev, _f) = slot("fuzz", false);
        let mut rnd = xorshift(0x0bad_cafe);
        for _ in 0..200 {
            let seed = rnd();
            let mut q = GuestQueue::new(8);
            let kind = (seed % 12) as u32;
            offer_request(
                &mut q,
                kind,
                seed >> 8,
                &[Desc::write(DATA, ((seed >> 40) % 4096) as u32)],
            );
            let _ = run(&mut dev, &mut q);
            dev.reset();
        }
    }

    #[test]
    fn random_garbage_never_panics() {
        // A crude fuzz: random descriptor tables and rings; the device may fail, never panic.
        let mut rnd = xorshift(0x1234_5678_9abc_def0);
        for _ in 0..300 {
            let (mut dev, _) = device(rnd() % 2 == 0);
            let mut q = GuestQueue::new(8);
            for i in 0..8u16 {
                let addr = match rnd() % 3 {
                    0 => rnd(),
                    1 => rnd() % (crate::virtio::test_utils::MEM_SIZE as u64),
                    _ => HDR,
                };
                q.write_desc(i, addr, (rnd() % 70000) as u32, (rnd() % 8) as u16, (rnd() % 10) as u16);
            }
            let raw: Vec<u8> = (0..16).map(|_| rnd() as u8).collect();
            q.mem().write_slice(&raw, GuestAddress(HDR)).unwrap();
            for _ in 0..(rnd() % 5) {
                q.publish((rnd() % 9) as u16);
            }
            let _ = run(&mut dev, &mut q);
        }
    }
}
