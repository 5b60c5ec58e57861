//! The virtio-balloon device core: the target and actual sizes in the config space, the inflate queue
//! (released pages are dropped from the host with `madvise(MADV_DONTNEED)`, so they read back as zeros and
//! cost no host memory until the guest touches them again), the deflate queue (nothing to do: the pages
//! come back on the guest's next touch), and the statistics queue, whose one buffer the device holds and
//! returns every polling interval so the driver refills it.
//!
//! Owns: the configured size and statistics interval, the statistics timer (the device's `backend_fd`), the
//! latest statistics and the metrics. Host-side calls ([`Balloon::update_size`],
//! [`Balloon::update_stats_interval`], [`Balloon::stats`]) run under the transport's lock, between two
//! queue notifications, and their errors carry Firecracker's API messages. Never trusts: PFNs (each run is
//! checked to lie inside one guest memory region before it is released), statistics buffers, or the
//! `actual` value the driver writes (reported, never acted on).

use std::any::Any;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_debug as debug, guest_warn as warn};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::timerfd::TimerFd;

use super::metrics::BalloonMetrics;
use super::request::{page_runs, read_pfns, read_stats, STAT_TAGS};
use super::{
    DEFLATE_QUEUE, INFLATE_QUEUE, PAGES_PER_MIB, PAGE_SHIFT, PAGE_SIZE, STATS_QUEUE, VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::virtio::{
    read_config_bytes, ActivateError, DeviceError, DeviceMetrics, GuestMemory, QueueSet, QueueSignals, VirtioDevice,
    TYPE_BALLOON, VIRTIO_F_VERSION_1,
};

/// Queue size offered for each of the three queues.
pub const QUEUE_SIZE: u16 = 256;

/// Why a balloon operation was refused. The texts are Firecracker's API messages.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("Amount of pages requested is too large.")]
    TooManyPagesRequested,
    #[error("Device is inactive, check if balloon driver is enabled in guest kernel.")]
    DeviceNotActive,
    #[error("Cannot enable/disable the statistics after boot.")]
    StatisticsStateChange,
    #[error("Statistics for the balloon device are not enabled")]
    StatisticsDisabled,
    #[error("Error creating the balloon device: the statistics timer: {0}")]
    Timer(#[source] std::io::Error),
}

/// The statistics the API reports: the sizes, and what the guest last sent (`None`: never sent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    pub target_pages: u32,
    pub actual_pages: u32,
    /// By tag (see [`BalloonStats::TAG_NAMES`]).
    pub guest: [Option<u64>; STAT_TAGS],
}

impl BalloonStats {
    /// The API names of the statistics tags, by tag (Firecracker's `BalloonStats` keys).
    pub const TAG_NAMES: [&'static str; STAT_TAGS] = [
        "swap_in",
        "swap_out",
        "major_faults",
        "minor_faults",
        "free_memory",
        "total_memory",
        "available_memory",
        "disk_caches",
        "hugetlb_allocations",
        "hugetlb_failures",
        "oom_kill",
        "alloc_stall",
        "async_scan",
        "direct_scan",
        "async_reclaim",
        "direct_reclaim",
    ];

    pub fn target_mib(&self) -> u32 {
        (u64::from(self.target_pages) / PAGES_PER_MIB) as u32
    }

    pub fn actual_mib(&self) -> u32 {
        (u64::from(self.actual_pages) / PAGES_PER_MIB) as u32
    }
}

/// MiB to 4 KiB pages, refused when the count does not fit the config space's 32 bits.
pub fn mib_to_pages(amount_mib: u32) -> Result<u32, BalloonError> {
    u32::try_from(u64::from(amount_mib) * PAGES_PER_MIB).map_err(|_| BalloonError::TooManyPagesRequested)
}

/// A timer fd whose reads never block (a spurious wake-up must not stall the event loop).
fn nonblocking_timer() -> std::io::Result<TimerFd> {
    let timer = TimerFd::new().map_err(std::io::Error::from)?;
    let fd = timer.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns; reads and writes no memory of ours.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}

/// A virtio-balloon device.
pub struct Balloon {
    target_pages: u32,
    actual_pages: u32,
    stats_interval_s: u16,
    avail_features: u64,
    acked_features: u64,
    activated: bool,
    stats_timer: TimerFd,
    /// The timer was armed since the driver last started the device.
    stats_timer_armed: bool,
    /// The statistics buffer the driver gave and the device holds until the next poll.
    stats_head: Option<u16>,
    guest_stats: [Option<u64>; STAT_TAGS],
    metrics: Arc<BalloonMetrics>,
}

impl Balloon {
    /// A balloon with target `amount_mib`; `deflate_on_oom` offers VIRTIO_BALLOON_F_DEFLATE_ON_OOM, a
    /// non-zero `stats_interval_s` offers the statistics queue.
    pub fn new(amount_mib: u32, deflate_on_oom: bool, stats_interval_s: u16) -> Result<Self, BalloonError> {
        let mut avail_features = VIRTIO_F_VERSION_1;
        if deflate_on_oom {
            avail_features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if stats_interval_s > 0 {
            avail_features |= VIRTIO_BALLOON_F_STATS_VQ;
        }
        Ok(Balloon {
            target_pages: mib_to_pages(amount_mib)?,
            actual_pages: 0,
            stats_interval_s,
            avail_features,
            acked_features: 0,
            activated: false,
            stats_timer: nonblocking_timer().map_err(BalloonError::Timer)?,
            stats_timer_armed: false,
            stats_head: None,
            guest_stats: [None; STAT_TAGS],
            metrics: Arc::new(BalloonMetrics::default()),
        })
    }

    /// Counters for the API.
    pub fn metrics(&self) -> Arc<BalloonMetrics> {
        self.metrics.clone()
    }

    /// The current target in MiB, whether the balloon deflates on OOM, and the statistics interval
    /// (`GET /balloon`).
    pub fn config(&self) -> (u32, bool, u16) {
        (
            (u64::from(self.target_pages) / PAGES_PER_MIB) as u32,
            self.avail_features & VIRTIO_BALLOON_F_DEFLATE_ON_OOM != 0,
            self.stats_interval_s,
        )
    }

    /// Whether the driver has the device running.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// A new target (`PATCH /balloon` after boot); the caller then announces the config change. Refused
    /// while no driver runs the device, as Firecracker refuses it.
    pub fn update_size(&mut self, amount_mib: u32) -> Result<(), BalloonError> {
        if !self.activated {
            return Err(BalloonError::DeviceNotActive);
        }
        self.target_pages = mib_to_pages(amount_mib)?;
        Ok(())
    }

    /// A new statistics interval (`PATCH /balloon/statistics`): statistics cannot be turned on or off
    /// once the device exists. A running device asks the guest for statistics at once, then every interval.
    pub fn update_stats_interval(&mut self, interval_s: u16) -> Result<(), BalloonError> {
        if interval_s == self.stats_interval_s {
            return Ok(());
        }
        if interval_s == 0 || self.stats_interval_s == 0 {
            return Err(BalloonError::StatisticsStateChange);
        }
        self.stats_interval_s = interval_s;
        if self.activated {
            self.stats_timer_armed = true;
            self.arm_stats_timer(Duration::from_millis(1));
        }
        Ok(())
    }

    /// The latest statistics (`GET /balloon/statistics`); the guest's values stay absent until its driver
    /// sent some, as with Firecracker.
    pub fn stats(&self) -> Result<BalloonStats, BalloonError> {
        if self.stats_interval_s == 0 {
            return Err(BalloonError::StatisticsDisabled);
        }
        Ok(BalloonStats {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            guest: self.guest_stats,
        })
    }

    fn arm_stats_timer(&mut self, first: Duration) {
        let every = Duration::from_secs(u64::from(self.stats_interval_s));
        if let Err(error) = self.stats_timer.reset(first, Some(every)) {
            warn!(%error, "cannot arm the balloon statistics timer; statistics will not be refreshed");
        }
    }

    /// Drops `pages` guest pages from `first_pfn` from the host, if the whole run lies in one region.
    fn release(&self, mem: &GuestMemory, first_pfn: u64, pages: u64) -> Result<(), String> {
        let start = GuestAddress(first_pfn << PAGE_SHIFT);
        let len = pages * PAGE_SIZE;
        let (region, offset) = mem
            .to_region_addr(start)
            .ok_or_else(|| format!("{:#x} is outside guest memory", start.raw_value()))?;
        let end = offset.raw_value().checked_add(len).filter(|end| *end <= region.len());
        if end.is_none() {
            return Err(format!(
                "{len:#x} bytes at {:#x} run past the end of guest memory",
                start.raw_value()
            ));
        }
        let host = region.get_host_address(offset).map_err(|e| e.to_string())?;
        // SAFETY: [host, host+len) lies inside the region's mapping, checked above. MADV_DONTNEED only drops
        // the pages' contents (they read back as zeros); the mapping and every reference into it stay valid.
        let rc = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
        if rc != 0 {
            return Err(format!("madvise: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn process_inflate(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        self.metrics.inflate_count.inc();
        let Some(mut queue) = queues.chains(INFLATE_QUEUE, mem) else {
            return Ok(QueueSignals::NONE);
        };
        QueueSignals::collect(|signals| {
            while let Some(chain) = queue.pop()? {
                match read_pfns(&chain, mem) {
                    Ok(pfns) => {
                        for (first, pages) in page_runs(&pfns) {
                            match self.release(mem, first, pages) {
                                Ok(()) => self.metrics.released_pages.add(pages),
                                Err(error) => {
                                    self.metrics.bad_ranges.inc();
                                    debug!(first_pfn = first, pages, %error, "balloon: page run not released");
                                }
                            }
                        }
                    }
                    Err(error) => {
                        self.metrics.bad_ranges.inc();
                        debug!(head = chain.head, %error, "balloon: unreadable PFN list");
                    }
                }
                queue.complete(chain.head, 0, signals)?;
            }
            Ok(())
        })
    }

    fn process_deflate(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        self.metrics.deflate_count.inc();
        let Some(mut queue) = queues.chains(DEFLATE_QUEUE, mem) else {
            return Ok(QueueSignals::NONE);
        };
        // Without VIRTIO_BALLOON_F_MUST_TELL_HOST the guest may reuse the pages already; nothing to do.
        QueueSignals::collect(|signals| queue.serve_all(signals, |_| Ok(0)))
    }

    fn process_stats(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        let Some(mut queue) = queues.chains(STATS_QUEUE, mem) else {
            return Ok(QueueSignals::NONE);
        };
        let signals = QueueSignals::collect(|signals| {
            while let Some(chain) = queue.pop()? {
                match read_stats(&chain, mem) {
                    Ok(values) => {
                        self.metrics.stats_updates_count.inc();
                        for (slot, value) in self.guest_stats.iter_mut().zip(values) {
                            if value.is_some() {
                                *slot = value;
                            }
                        }
                    }
                    Err(error) => debug!(head = chain.head, %error, "balloon: unreadable statistics buffer"),
                }
                // The driver keeps one buffer in flight; a second one means it gave up on the first.
                if let Some(old) = self.stats_head.replace(chain.head) {
                    queue.complete(old, 0, signals)?;
                }
            }
            Ok(())
        })?;
        if !self.stats_timer_armed && self.stats_interval_s > 0 {
            self.stats_timer_armed = true;
            self.arm_stats_timer(Duration::from_secs(u64::from(self.stats_interval_s)));
        }
        Ok(signals)
    }

    /// The statistics timer fired: hand the held buffer back so the driver refills it.
    fn request_stats(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        let Some(head) = self.stats_head.take() else {
            return Ok(QueueSignals::NONE);
        };
        let Some(mut queue) = queues.chains(STATS_QUEUE, mem) else {
            self.stats_head = Some(head);
            self.metrics.stats_update_fails.inc();
            return Ok(QueueSignals::NONE);
        };
        QueueSignals::collect(|signals| queue.complete(head, 0, signals))
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    /// struct virtio_balloon_config: `num_pages` (the target), `actual` (what the driver reached).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 8];
        config[0..4].copy_from_slice(&self.target_pages.to_le_bytes());
        config[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        read_config_bytes(&config, offset, data);
    }

    /// Only `actual` is writable, as one 32-bit value.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let (4, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
            self.actual_pages = u32::from_le_bytes(bytes);
        }
    }

    /// Runs on the vCPU that wrote DRIVER_OK, which may not touch timers (seccomp): the statistics timer is
    /// armed when the driver hands over its first statistics buffer, on the event loop.
    fn activate(&mut self) -> Result<(), ActivateError> {
        self.activated = true;
        self.stats_timer_armed = false;
        Ok(())
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
        match index {
            INFLATE_QUEUE => self.process_inflate(mem, queues),
            DEFLATE_QUEUE => self.process_deflate(mem, queues),
            STATS_QUEUE => self.process_stats(mem, queues),
            _ => Ok(QueueSignals::NONE),
        }
        .inspect_err(|_| self.metrics.event_fails.inc())
    }

    /// The statistics timer.
    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.stats_timer.as_raw_fd())
    }

    fn process_backend(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        if self.stats_timer.wait().is_err() {
            return Ok(QueueSignals::NONE);
        }
        if !self.activated {
            // The driver reset the device since the timer was armed.
            self.stats_timer_armed = false;
            if let Err(error) = self.stats_timer.reset(Duration::ZERO, None) {
                warn!(%error, "cannot disarm the balloon statistics timer");
            }
            return Ok(QueueSignals::NONE);
        }
        self.request_stats(mem, queues)
            .inspect_err(|_| self.metrics.event_fails.inc())
    }

    /// Also on a vCPU: the timer stays armed, and its next tick finds no buffer to return and disarms it.
    fn reset(&mut self) {
        self.acked_features = 0;
        self.activated = false;
        self.stats_head = None;
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::virtio::test_utils::{readable_within, Desc, GuestQueue, TestTransport, RING_SPAN};

    const LIST: u64 = 0x40_000;

    /// The three queues in one 16 MiB guest, rings one after another.
    struct Queues {
        inflate: GuestQueue,
        deflate: GuestQueue,
        stats: GuestQueue,
    }

    fn queues() -> Queues {
        let inflate = GuestQueue::new(16);
        let mem = inflate.mem().clone();
        Queues {
            deflate: GuestQueue::with_memory(mem.clone(), 0x1000 + RING_SPAN, 16),
            stats: GuestQueue::with_memory(mem, 0x1000 + 2 * RING_SPAN, 16),
            inflate,
        }
    }

    fn kick(dev: &mut TestTransport<Balloon>, q: &mut Queues, index: usize) -> QueueSignals {
        let mem = q.inflate.mem().clone();
        let mut set = QueueSet::new();
        set.push(Some(q.inflate.queue_mut()));
        set.push(Some(q.deflate.queue_mut()));
        set.push(Some(q.stats.queue_mut()));
        dev.process_queue(index, &mem, &mut set).unwrap()
    }

    fn pfn_list(pfns: &[u32]) -> Vec<u8> {
        pfns.iter().flat_map(|p| p.to_le_bytes()).collect()
    }

    fn running(stats_interval_s: u16) -> TestTransport<Balloon> {
        let mut dev = TestTransport::new(Balloon::new(16, true, stats_interval_s).unwrap());
        let features = dev.avail_features();
        dev.set_acked_features(features);
        dev.activate().unwrap();
        dev
    }

    #[test]
    fn inflated_pages_are_released_and_read_back_as_zeros() {
        let mut dev = running(0);
        let mut q = queues();
        // Pages 0x300-0x302 hold data; 0x304 too, and is not inflated.
        for pfn in [0x300u64, 0x301, 0x302, 0x304] {
            q.inflate.mem_write(pfn << 12, &[0xab; 4096]);
        }
        // Guest memory is 16 MiB = PFNs below 0x1000: 0x5000 and u32::MAX are outside and must be refused
        // without touching anything else.
        q.inflate
            .mem_write(LIST, &pfn_list(&[0x300, 0x301, 0x302, 0x5000, u32::MAX]));
        let head = q.inflate.add_chain(&[Desc::read(LIST, 20)]);
        assert!(kick(&mut dev, &mut q, INFLATE_QUEUE).contains(INFLATE_QUEUE));
        assert_eq!(q.inflate.take_used(), vec![(head, 0)]);
        let mut page = [0xffu8; 4096];
        for pfn in [0x300u64, 0x301, 0x302] {
            q.inflate.mem().read_slice(&mut page, GuestAddress(pfn << 12)).unwrap();
            assert!(page.iter().all(|b| *b == 0), "page {pfn:#x} was not released");
        }
        q.inflate
            .mem()
            .read_slice(&mut page, GuestAddress(0x304 << 12))
            .unwrap();
        assert!(page.iter().all(|b| *b == 0xab), "a page that was not inflated changed");
        assert_eq!(dev.metrics().released_pages.get(), 3);
        assert_eq!(dev.metrics().bad_ranges.get(), 2);
    }

    #[test]
    fn deflate_returns_buffers_and_the_config_space_has_target_and_actual() {
        let mut dev = running(0);
        let mut q = queues();
        q.deflate.mem_write(LIST, &pfn_list(&[0x300]));
        let head = q.deflate.add_chain(&[Desc::read(LIST, 4)]);
        kick(&mut dev, &mut q, DEFLATE_QUEUE);
        assert_eq!(q.deflate.take_used(), vec![(head, 0)]);

        let mut num_pages = [0u8; 4];
        dev.read_config(0, &mut num_pages);
        assert_eq!(u32::from_le_bytes(num_pages), 16 * 256);
        dev.write_config(4, &1000u32.to_le_bytes());
        dev.write_config(0, &7u32.to_le_bytes()); // num_pages is the host's: ignored
        dev.write_config(4, &[1, 2]); // not a 32-bit write: ignored
        let stats = dev.stats().unwrap_err();
        assert_eq!(stats.to_string(), "Statistics for the balloon device are not enabled");
        assert_eq!(dev.config(), (16, true, 0));
        let mut config = [0u8; 8];
        dev.read_config(0, &mut config);
        assert_eq!(config[4..8], 1000u32.to_le_bytes());
    }

    #[test]
    fn size_updates_need_a_running_driver_and_fit_32_bits() {
        let mut idle = Balloon::new(0, false, 0).unwrap();
        assert_eq!(
            idle.update_size(4).unwrap_err().to_string(),
            "Device is inactive, check if balloon driver is enabled in guest kernel."
        );
        assert_eq!(idle.avail_features() & VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 0);
        assert_eq!(idle.avail_features() & VIRTIO_BALLOON_F_STATS_VQ, 0);
        assert!(matches!(
            Balloon::new(u32::MAX, false, 0),
            Err(BalloonError::TooManyPagesRequested)
        ));
        let mut dev = running(0);
        dev.update_size(64).unwrap();
        let mut num_pages = [0u8; 4];
        dev.read_config(0, &mut num_pages);
        assert_eq!(u32::from_le_bytes(num_pages), 64 * 256);
        assert_eq!(
            dev.update_size(1 << 24).unwrap_err().to_string(),
            "Amount of pages requested is too large."
        );
    }

    #[test]
    fn statistics_are_read_held_and_requested_again_on_the_timer() {
        let mut dev = running(1);
        assert_ne!(dev.avail_features() & VIRTIO_BALLOON_F_STATS_VQ, 0);
        let stats = dev.stats().unwrap();
        assert_eq!((stats.target_mib(), stats.actual_mib(), stats.guest[4]), (16, 0, None));
        let mut q = queues();
        let mut raw = Vec::new();
        for (tag, value) in [(4u16, 123_456u64), (5, 1 << 27)] {
            raw.extend_from_slice(&tag.to_le_bytes());
            raw.extend_from_slice(&value.to_le_bytes());
        }
        q.stats.mem_write(LIST, &raw);
        let head = q.stats.add_chain(&[Desc::read(LIST, 20)]);
        kick(&mut dev, &mut q, STATS_QUEUE);
        // Held, not returned: the device gives it back when it wants fresh numbers.
        assert_eq!(q.stats.take_used(), vec![]);
        let stats = dev.stats().unwrap();
        assert_eq!((stats.guest[4], stats.guest[5]), (Some(123_456), Some(1 << 27)));
        assert_eq!(BalloonStats::TAG_NAMES[4], "free_memory");
        // The timer (1 s) hands the buffer back.
        assert!(readable_within(dev.backend_fd().unwrap(), Duration::from_secs(5)));
        let mem = q.inflate.mem().clone();
        let mut set = QueueSet::new();
        set.push(Some(q.inflate.queue_mut()));
        set.push(Some(q.deflate.queue_mut()));
        set.push(Some(q.stats.queue_mut()));
        assert!(dev.process_backend(&mem, &mut set).unwrap().contains(STATS_QUEUE));
        assert_eq!(q.stats.take_used(), vec![(head, 0)]);
        // Interval changes keep statistics on; turning them off (or on) is refused.
        dev.update_stats_interval(5).unwrap();
        assert_eq!(
            dev.update_stats_interval(0).unwrap_err().to_string(),
            "Cannot enable/disable the statistics after boot."
        );
        let mut off = running(0);
        assert!(matches!(
            off.update_stats_interval(3),
            Err(BalloonError::StatisticsStateChange)
        ));
    }
}
