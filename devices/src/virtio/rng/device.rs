//! The virtio-rng device core: one request queue whose chains are device-writable buffers, each returned
//! filled with host random bytes (at most [`MAX_BYTES_PER_REQUEST`] per chain). No config space, no
//! device-specific features.
//!
//! Every request costs one op and its byte count from the device's [`RateLimiter`] (Firecracker's entropy
//! `rate_limiter`). A request that does not fit stays in the queue and the queue is left alone until the
//! limiter's timer fires: the timer fd is the device's `backend_fd`, so the transport wakes the device.
//!
//! Owns: the entropy source, a bounce buffer, the limiter and the metrics. Never trusts: the chains (a
//! buffer outside guest memory is answered with 0 bytes, a chain with no writable part likewise).

use std::any::Any;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::guest_debug as debug;

use super::metrics::RngMetrics;
use super::source::{EntropySource, HostRandom};
use super::MAX_BYTES_PER_REQUEST;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterUpdate};
use crate::virtio::chain::ParsedChain;
use crate::virtio::{
    DeviceError, DeviceMetrics, GuestMemory, QueueSet, QueueSignals, VirtioDevice, TYPE_RNG, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_INDIRECT_DESC,
};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

/// Building the device failed.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("creating the entropy device's rate limiter timer: {0}")]
    RateLimiter(#[source] std::io::Error),
}

/// A virtio-rng device.
pub struct Rng {
    source: Box<dyn EntropySource>,
    acked_features: u64,
    bounce: Vec<u8>,
    limiter: RateLimiter,
    metrics: Arc<RngMetrics>,
}

impl Rng {
    /// A device reading the host's getrandom, limited by `rate_limiter`.
    pub fn new(rate_limiter: &RateLimiterConfig) -> Result<Self, RngError> {
        let mut rng = Self::with_source(Box::new(HostRandom))?;
        rng.limiter.update(&(*rate_limiter).into());
        Ok(rng)
    }

    /// A device over any source (tests use failing ones), without rate limits.
    pub fn with_source(source: Box<dyn EntropySource>) -> Result<Self, RngError> {
        Ok(Rng {
            source,
            acked_features: 0,
            bounce: vec![0; MAX_BYTES_PER_REQUEST as usize],
            limiter: RateLimiter::unlimited().map_err(RngError::RateLimiter)?,
            metrics: Arc::new(RngMetrics::default()),
        })
    }

    /// Replaces or keeps each bucket of the rate limiter.
    pub fn update_rate_limiter(&mut self, update: &RateLimiterUpdate) {
        self.limiter.update(update);
    }

    /// The device's rate limiter.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Counters for the API.
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    /// Fills one chain; returns the bytes written, or `None` when the limiter holds it back.
    fn answer(&mut self, chain: &ParsedChain, mem: &GuestMemory) -> Option<u32> {
        // The chain's writable length is the driver's claim; only the bounded prefix is ever touched.
        let len = chain.writable_len().min(u64::from(MAX_BYTES_PER_REQUEST)) as usize;
        if !self.limiter.consume(1, len as u64) {
            self.metrics.entropy_rate_limiter_throttled.inc();
            return None;
        }
        if len == 0 {
            return Some(0);
        }
        let buf = &mut self.bounce[..len];
        if let Err(error) = self.source.fill(buf) {
            self.metrics.host_rng_fails.inc();
            debug!(%error, "host getrandom failed; entropy request answered empty");
            return Some(0);
        }
        match chain.write_at(mem, 0, buf) {
            Ok(()) => {
                self.metrics.entropy_bytes.add(len as u64);
                Some(len as u32)
            }
            Err(error) => {
                debug!(head = chain.head, %error, "entropy buffer outside guest memory; answered empty");
                Some(0)
            }
        }
    }

    /// Serves the queue until it is empty or the limiter holds a request back.
    fn serve(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        self.metrics.entropy_event_count.inc();
        if self.limiter.is_blocked() {
            return Ok(QueueSignals::NONE);
        }
        let Some(mut queue) = queues.chains(0, mem) else {
            return Ok(QueueSignals::NONE);
        };
        QueueSignals::collect(|signals| {
            while let Some(chain) = queue.pop()? {
                match self.answer(&chain, mem) {
                    Some(written) => queue.complete(chain.head, written, signals)?,
                    None => {
                        queue.put_back();
                        break;
                    }
                }
            }
            Ok(())
        })
        .inspect_err(|_| self.metrics.entropy_event_fails.inc())
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    /// virtio-rng has no config space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
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
    use std::time::Duration;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::rate_limiter::BucketConfig;
    use crate::virtio::test_utils::{readable_within, Desc, GuestQueue, TestTransport};

    const BUF: u64 = 0x10_0000;

    fn run(dev: &mut TestTransport<Rng>, q: &mut GuestQueue) -> Result<QueueSignals, DeviceError> {
        let (mem, queue) = q.parts();
        let mut set = QueueSet::new();
        set.push(Some(queue));
        dev.process_queue(0, mem, &mut set)
    }

    fn device() -> TestTransport<Rng> {
        TestTransport::new(Rng::with_source(Box::new(HostRandom)).unwrap())
    }

    struct Failing;
    impl EntropySource for Failing {
        fn fill(&mut self, _buf: &mut [u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("no entropy"))
        }
    }

    #[test]
    fn buffers_come_back_filled_split_over_descriptors() {
        let mut dev = device();
        let mut q = GuestQueue::new(16);
        let head = q.add_chain(&[Desc::write(BUF, 100), Desc::write(BUF + 0x1000, 28)]);
        let signals = run(&mut dev, &mut q).unwrap();
        assert!(signals.contains(0));
        assert_eq!(q.take_used(), vec![(head, 128)]);
        let mut a = [0u8; 100];
        let mut b = [0u8; 28];
        q.mem().read_slice(&mut a, GuestAddress(BUF)).unwrap();
        q.mem().read_slice(&mut b, GuestAddress(BUF + 0x1000)).unwrap();
        // 128 random bytes all zero has probability 2^-1024.
        assert!(a.iter().chain(b.iter()).any(|x| *x != 0));
        assert_eq!(dev.metrics().entropy_bytes.get(), 128);
    }

    #[test]
    fn a_huge_chain_gets_at_most_the_per_request_cap() {
        let mut dev = device();
        let mut q = GuestQueue::new(16);
        // Claims 3 GiB in a 16 MiB guest: only the first 64 KiB are written (and they are in memory).
        let head = q.add_chain(&[
            Desc::write(BUF, 1 << 30),
            Desc::write(BUF, 1 << 30),
            Desc::write(BUF, 1 << 30),
        ]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(q.take_used(), vec![(head, MAX_BYTES_PER_REQUEST)]);
    }

    #[test]
    fn bad_buffers_and_a_failing_host_are_answered_empty_not_fatal() {
        let mut dev = TestTransport::new(Rng::with_source(Box::new(Failing)).unwrap());
        let mut q = GuestQueue::new(16);
        let h1 = q.add_chain(&[Desc::write(BUF, 64)]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(q.take_used(), vec![(h1, 0)]);
        assert_eq!(dev.metrics().host_rng_fails.get(), 1);

        let mut dev = device();
        let h2 = q.add_chain(&[Desc::write(0xffff_ffff_0000, 64)]);
        let h3 = q.add_chain(&[Desc::read(BUF, 64)]);
        let h4 = q.add_chain(&[Desc::write(BUF, 8)]);
        run(&mut dev, &mut q).unwrap();
        assert_eq!(q.take_used(), vec![(h2, 0), (h3, 0), (h4, 8)]);
    }

    #[test]
    fn a_looping_chain_is_a_device_error() {
        let mut dev = device();
        let mut q = GuestQueue::new(8);
        q.add_raw_chain(&[(BUF, 16, 1 | 2, 1), (BUF, 16, 1 | 2, 0)]);
        assert!(matches!(run(&mut dev, &mut q), Err(DeviceError::MalformedChain { .. })));
        assert_eq!(dev.metrics().entropy_event_fails.get(), 1);
    }

    #[test]
    fn rate_limited_bytes_wait_for_the_timer() {
        let mut dev = device();
        // 256 bytes per 100 ms.
        dev.update_rate_limiter(
            &RateLimiterConfig {
                bandwidth: BucketConfig {
                    size: 256,
                    one_time_burst: 0,
                    refill_time_ms: 100,
                },
                ops: BucketConfig::default(),
            }
            .into(),
        );
        let mut q = GuestQueue::new(16);
        let heads: Vec<u16> = (0..3).map(|_| q.add_chain(&[Desc::write(BUF, 128)])).collect();
        run(&mut dev, &mut q).unwrap();
        assert_eq!(q.take_used(), vec![(heads[0], 128), (heads[1], 128)]);
        assert!(dev.rate_limiter().is_blocked());
        assert_eq!(dev.metrics().entropy_rate_limiter_throttled.get(), 1);
        assert!(readable_within(dev.backend_fd().unwrap(), Duration::from_secs(5)));
        let (mem, queue) = q.parts();
        let mut set = QueueSet::new();
        set.push(Some(queue));
        assert!(dev.process_backend(mem, &mut set).unwrap().contains(0));
        assert_eq!(q.take_used(), vec![(heads[2], 128)]);
    }
}
