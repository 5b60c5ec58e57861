//! The virtio-net device core: features, config space (MAC, link status) and the RX/TX pumps between the
//! queues and a `NetBackend`. Transport-agnostic (virtio-mmio in hull, vhost-user for QEMU).
//!
//! Frames are never lost inside the device: a frame read from the TAP waits in `pending` until an RX
//! buffer takes it, and while RX buffers are exhausted the TAP is taken out of the device's epoll (the
//! kernel queues further frames) until the driver kicks the RX queue.
//!
//! Each direction has its own [`RateLimiter`] (a frame costs one op and its length in bytes). A TX frame
//! that does not fit stays in the TX queue; an RX frame that does not fit waits in `pending` and the TAP
//! leaves the epoll. Both limiters' timer fds sit in the device's epoll (its `backend_fd`), so the
//! transport's event loop wakes the device when a throttled direction may go on; the device never waits.
//!
//! With MMDS attached ([`Net::set_mmds`]), every TX frame passes the device's [`MmdsStack`] first: frames for
//! the metadata service are consumed there (never written to the TAP), and its answers go to the guest
//! ahead of the TAP's frames, through the same RX path and limiter.
//!
//! Never trusts: TX chains and RX buffers (see `packet`). A frame too big for the offered buffer is
//! dropped and counted (the driver sized its buffers for the MTU it was told about).

use std::any::Any;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_debug as debug, guest_warn as warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::metrics::NetMetrics;
use super::packet::{prepare_rx_header, read_tx_frame, rx_capacity};
use super::tap::{NetBackend, Tap, TapError};
use super::VNET_HDR_LEN;
use super::{MAX_FRAME_LEN, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP};
use crate::mmds::MmdsStack;
use crate::rate_limiter::{RateLimiter, RateLimiterConfig, RateLimiterUpdate};
use crate::virtio::{
    read_config_bytes, DeviceError, DeviceMetrics, GuestMemory, QueueSet, QueueSignals, VirtioDevice, TYPE_NET,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};

/// Queue size offered to the driver.
pub const QUEUE_SIZE: u16 = 256;

/// How to build a net device.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// TAP interface name.
    pub tap: String,
    /// MAC address for the guest (`VIRTIO_NET_F_MAC`); `None` lets the driver pick one.
    pub mac: Option<[u8; 6]>,
    /// Limits on frames the guest receives (unlimited by default).
    pub rx_rate_limiter: RateLimiterConfig,
    /// Limits on frames the guest sends.
    pub tx_rate_limiter: RateLimiterConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("creating the net epoll: {0}")]
    Epoll(#[source] std::io::Error),
    #[error("creating a rate limiter timer: {0}")]
    RateLimiter(#[source] std::io::Error),
}

/// Epoll data of the TAP and of the two limiters' timers in the device's epoll (informational: every
/// wake-up checks all three).
const TAP_TOKEN: u64 = 0;
const RX_TIMER_TOKEN: u64 = 1;
const TX_TIMER_TOKEN: u64 = 2;

/// A virtio-net device.
pub struct Net<B: NetBackend = Tap> {
    backend: B,
    mac: Option<[u8; 6]>,
    acked_features: u64,
    epoll: Epoll,
    backend_registered: bool,
    rx_frame: Vec<u8>,
    /// Length of a frame in `rx_frame` that no RX buffer has taken yet.
    pending: Option<usize>,
    tx_frame: Vec<u8>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    metrics: Arc<NetMetrics>,
    /// The metadata service's endpoint on this interface, when MMDS is attached to it.
    mmds: Option<MmdsStack>,
}

impl Net<Tap> {
    /// Opens the TAP named in `cfg`.
    pub fn new(cfg: &NetConfig) -> Result<Self, NetError> {
        let mut net = Self::with_backend(Tap::open(&cfg.tap)?, cfg.mac)?;
        net.update_rate_limiters(&cfg.rx_rate_limiter.into(), &cfg.tx_rate_limiter.into());
        Ok(net)
    }
}

impl<B: NetBackend> Net<B> {
    pub fn with_backend(backend: B, mac: Option<[u8; 6]>) -> Result<Self, NetError> {
        let epoll = Epoll::new().map_err(NetError::Epoll)?;
        let rx_limiter = RateLimiter::unlimited().map_err(NetError::RateLimiter)?;
        let tx_limiter = RateLimiter::unlimited().map_err(NetError::RateLimiter)?;
        for (limiter, token) in [(&rx_limiter, RX_TIMER_TOKEN), (&tx_limiter, TX_TIMER_TOKEN)] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    limiter.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(NetError::Epoll)?;
        }
        let mut net = Net {
            backend,
            mac,
            acked_features: 0,
            epoll,
            backend_registered: false,
            rx_frame: vec![0; MAX_FRAME_LEN],
            pending: None,
            tx_frame: Vec::with_capacity(MAX_FRAME_LEN),
            rx_limiter,
            tx_limiter,
            metrics: Arc::new(NetMetrics::default()),
            mmds: None,
        };
        net.watch_backend(true).map_err(NetError::Epoll)?;
        Ok(net)
    }

    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// Replaces or keeps each bucket of the RX and TX rate limiters (`PATCH /network-interfaces/{id}`).
    /// Runs under the same `&mut Net` that serves the queues, so between two frames.
    pub fn update_rate_limiters(&mut self, rx: &RateLimiterUpdate, tx: &RateLimiterUpdate) {
        self.rx_limiter.update(rx);
        self.tx_limiter.update(tx);
    }

    /// Serves MMDS on this interface: its frames stop here instead of reaching the TAP.
    pub fn set_mmds(&mut self, stack: MmdsStack) {
        self.mmds = Some(stack);
    }

    /// The RX (guest-bound) rate limiter.
    pub fn rx_rate_limiter(&self) -> &RateLimiter {
        &self.rx_limiter
    }

    /// The TX (guest-sent) rate limiter.
    pub fn tx_rate_limiter(&self) -> &RateLimiter {
        &self.tx_limiter
    }

    /// Adds or removes the TAP from the device's epoll.
    fn watch_backend(&mut self, on: bool) -> std::io::Result<()> {
        if on == self.backend_registered {
            return Ok(());
        }
        let op = if on {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        self.epoll
            .ctl(op, self.backend.raw_fd(), EpollEvent::new(EventSet::IN, TAP_TOKEN))?;
        self.backend_registered = on;
        Ok(())
    }

    fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac.unwrap_or_default());
        c[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        c
    }

    fn process_tx(
        &mut self,
        mem: &GuestMemory,
        queues: &mut QueueSet<'_>,
        signals: &mut QueueSignals,
    ) -> Result<(), DeviceError> {
        if self.tx_limiter.is_blocked() {
            return Ok(());
        }
        let Some(mut txq) = queues.chains(TX_QUEUE, mem) else {
            return Ok(());
        };
        while let Some(chain) = txq.pop()? {
            let frame = read_tx_frame(&chain, mem, &mut self.tx_frame);
            // A malformed frame is dropped, but still costs its op.
            let bytes = if frame.is_ok() { self.tx_frame.len() as u64 } else { 0 };
            if !self.tx_limiter.consume(1, bytes) {
                self.metrics.tx_rate_limiter_throttled.inc();
                txq.put_back();
                break;
            }
            if let Err(e) = frame {
                debug!(head = chain.head, error = %e, "virtio-net TX frame dropped");
                self.metrics.tx_dropped.inc();
            } else if !self.consumed_by_mmds() {
                self.transmit();
            }
            txq.complete(chain.head, 0, signals)?;
        }
        if self.mmds.as_ref().is_some_and(MmdsStack::has_frames) {
            // MMDS answered: deliver now rather than at the next RX kick or TAP frame.
            self.process_rx(mem, queues, signals)?;
        }
        Ok(())
    }

    /// Hands the frame in `tx_frame` to MMDS; `true` when it was MMDS's (it must not reach the TAP).
    fn consumed_by_mmds(&mut self) -> bool {
        let Some(stack) = self.mmds.as_mut() else {
            return false;
        };
        self.tx_frame.len() > VNET_HDR_LEN && stack.handle_tx_frame(&self.tx_frame[VNET_HDR_LEN..])
    }

    /// Puts MMDS's next answer frame into `rx_frame` behind a virtio-net header; its length.
    fn mmds_frame(&mut self) -> Option<usize> {
        let frame = self.mmds.as_mut()?.pop_frame()?;
        let len = VNET_HDR_LEN + frame.len();
        // Our own frames are far below MAX_FRAME_LEN; the check only keeps that a fact.
        let slot = self.rx_frame.get_mut(VNET_HDR_LEN..len)?;
        slot.copy_from_slice(&frame);
        Some(len)
    }

    /// Sends the frame in `tx_frame` to the TAP, or drops it (counted) if the TAP refuses it.
    fn transmit(&mut self) {
        match self.backend.write_frame(&self.tx_frame) {
            Ok(()) => {
                self.metrics.tx_frames.inc();
                self.metrics.tx_bytes.add(self.tx_frame.len() as u64);
            }
            Err(e) => {
                debug!(error = %e, "TAP refused a frame");
                self.metrics.tx_dropped.inc();
            }
        }
    }

    fn process_rx(
        &mut self,
        mem: &GuestMemory,
        queues: &mut QueueSet<'_>,
        signals: &mut QueueSignals,
    ) -> Result<(), DeviceError> {
        if self.rx_limiter.is_blocked() {
            // The limiter's timer resumes RX; until then the kernel queues frames in the TAP.
            let _ = self.watch_backend(false);
            return Ok(());
        }
        let Some(mut rxq) = queues.chains(RX_QUEUE, mem) else {
            // No usable RX queue: stop watching the TAP so its frames do not wake us in a loop.
            let _ = self.watch_backend(false);
            return Ok(());
        };
        loop {
            let len = match self.pending.or_else(|| self.mmds_frame()) {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.rx_frame) {
                    Ok(Some(len)) => len,
                    Ok(None) => {
                        // Drained: wait for the TAP again.
                        let _ = self.watch_backend(true);
                        return Ok(());
                    }
                    Err(e) => {
                        warn!(error = %e, "reading the TAP failed");
                        let _ = self.watch_backend(true);
                        return Ok(());
                    }
                },
            };
            self.pending = Some(len);
            let Some(chain) = rxq.pop()? else {
                // No buffer: keep the frame, stop watching the TAP until the driver adds buffers.
                let _ = self.watch_backend(false);
                return Ok(());
            };
            let cap = rx_capacity(&chain).map_err(|e| rxq.unanswerable(chain.head, e))?;
            if (len as u64) > cap {
                // The frame fits no buffer of this size: drop the frame, keep the buffer.
                self.metrics.rx_dropped.inc();
                self.pending = None;
                rxq.put_back();
                continue;
            }
            if !self.rx_limiter.consume(1, len as u64) {
                // The frame waits in `pending`, the buffer in the queue, the TAP out of the epoll.
                self.metrics.rx_rate_limiter_throttled.inc();
                rxq.put_back();
                let _ = self.watch_backend(false);
                return Ok(());
            }
            let frame = &mut self.rx_frame[..len];
            prepare_rx_header(frame);
            chain.write_at(mem, 0, frame).map_err(rxq.malformed(chain.head))?;
            self.pending = None;
            self.metrics.rx_frames.inc();
            self.metrics.rx_bytes.add(len as u64);
            rxq.complete(chain.head, len as u32, signals)?;
        }
    }
}

impl<B: NetBackend + 'static> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_NET_F_STATUS;
        if self.mac.is_some() {
            f |= VIRTIO_NET_F_MAC;
        }
        f
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
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
        QueueSignals::collect(|signals| match index {
            TX_QUEUE => self.process_tx(mem, queues, signals),
            RX_QUEUE => self.process_rx(mem, queues, signals),
            _ => Ok(()),
        })
        .inspect_err(|_| self.metrics.fatal_chains.inc())
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.epoll.as_raw_fd())
    }

    /// The TAP has frames, or a rate limiter's timer fired (each timer is drained here: the device's
    /// epoll stays readable until it is).
    fn process_backend(&mut self, mem: &GuestMemory, queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        QueueSignals::collect(|signals| {
            if self.tx_limiter.on_timer() {
                self.process_tx(mem, queues, signals)?;
            }
            self.rx_limiter.on_timer();
            self.process_rx(mem, queues, signals)
        })
        .inspect_err(|_| self.metrics.fatal_chains.inc())
    }

    fn reset(&mut self) {
        self.pending = None;
        if let Some(stack) = self.mmds.as_mut() {
            stack.forget_all();
        }
        self.acked_features = 0;
        let _ = self.watch_backend(true);
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
    use crate::virtio::net::test_utils::{queues, FakeTap};
    use crate::virtio::net::VNET_HDR_LEN;
    use crate::virtio::test_utils::readable_within;
    use crate::virtio::test_utils::{xorshift, Desc, GuestQueue, TestTransport};

    /// A net device over `tap`, driven as a transport drives it.
    fn net(tap: &FakeTap) -> TestTransport<Net<FakeTap>> {
        TestTransport::new(Net::with_backend(tap.clone(), None).unwrap())
    }

    fn run(
        dev: &mut TestTransport<Net<FakeTap>>,
        rx: &mut GuestQueue,
        tx: &mut GuestQueue,
        index: Option<usize>,
    ) -> Result<QueueSignals, DeviceError> {
        let mem = rx.mem().clone();
        let mut set = QueueSet::new();
        set.push(Some(rx.queue_mut()));
        set.push(Some(tx.queue_mut()));
        match index {
            Some(i) => dev.process_queue(i, &mem, &mut set),
            None => dev.process_backend(&mem, &mut set),
        }
    }

    fn frame(n: usize) -> Vec<u8> {
        (0..n).map(|i| i as u8).collect()
    }

    #[test]
    fn mac_and_link_in_config() {
        let dev = Net::with_backend(FakeTap::new(), Some([2, 0, 0, 0, 0, 1])).unwrap();
        let mut c = [0u8; 8];
        dev.read_config(0, &mut c);
        assert_eq!(c, [2, 0, 0, 0, 0, 1, 1, 0]);
        assert_ne!(dev.avail_features() & VIRTIO_NET_F_MAC, 0);
    }

    #[test]
    fn tx_frame_reaches_tap_with_zeroed_header() {
        let tap = FakeTap::new();
        let mut dev = net(&tap);
        let (mut rx, mut tx) = queues();
        let mut f = vec![0x55u8; VNET_HDR_LEN];
        f.extend(frame(60));
        tx.mem_write(0x40_000, &f);
        tx.add_chain(&[
            Desc::read(0x40_000, VNET_HDR_LEN as u32),
            Desc::read(0x40_000 + VNET_HDR_LEN as u64, 60),
        ]);
        assert!(run(&mut dev, &mut rx, &mut tx, Some(TX_QUEUE))
            .unwrap()
            .contains(TX_QUEUE));
        let out = tap.outbound.lock().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&out[0][VNET_HDR_LEN..], &frame(60)[..]);
    }

    #[test]
    fn mmds_frames_never_reach_the_tap_and_answers_come_back_through_rx() {
        use crate::mmds::{Mmds, MmdsStack, DEFAULT_IPV4};
        let tap = FakeTap::new();
        let mut core = Net::with_backend(tap.clone(), None).unwrap();
        core.set_mmds(MmdsStack::new(Mmds::new(1024).shared(), DEFAULT_IPV4));
        let mut dev = TestTransport::new(core);
        let (mut rx, mut tx) = queues();
        rx.add_chain(&[Desc::write(0x80_000, 1526)]);
        // An ARP request for 169.254.169.254, then an ordinary frame.
        let mut arp = vec![0u8; VNET_HDR_LEN];
        arp.extend_from_slice(&[0xff; 6]);
        arp.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2, 169, 254, 0, 2, 0, 0, 0, 0, 0, 0]);
        arp.extend_from_slice(&DEFAULT_IPV4.octets());
        tx.mem_write(0x40_000, &arp);
        tx.add_chain(&[Desc::read(0x40_000, arp.len() as u32)]);
        let mut other = vec![0u8; VNET_HDR_LEN];
        other.extend(frame(60));
        tx.mem_write(0x50_000, &other);
        tx.add_chain(&[Desc::read(0x50_000, other.len() as u32)]);
        let signals = run(&mut dev, &mut rx, &mut tx, Some(TX_QUEUE)).unwrap();
        assert!(signals.contains(TX_QUEUE) && signals.contains(RX_QUEUE));
        let out = tap.outbound.lock().unwrap();
        assert_eq!(out.len(), 1, "only the ordinary frame reaches the TAP");
        assert_eq!(&out[0][VNET_HDR_LEN..], &frame(60)[..]);
        let used = rx.take_used();
        assert_eq!(used, vec![(0, (VNET_HDR_LEN + 42) as u32)]);
        let mut reply = [0u8; VNET_HDR_LEN + 42];
        rx.mem().read_slice(&mut reply, GuestAddress(0x80_000)).unwrap();
        assert_eq!(&reply[10..12], &[1, 0], "num_buffers = 1");
        assert_eq!(&reply[VNET_HDR_LEN + 20..VNET_HDR_LEN + 22], &[0, 2], "an ARP reply");
        assert_eq!(&reply[VNET_HDR_LEN + 28..VNET_HDR_LEN + 32], &DEFAULT_IPV4.octets());
    }

    #[test]
    fn rx_frames_wait_for_buffers_and_none_is_lost() {
        let tap = FakeTap::new();
        let mut dev = net(&tap);
        let (mut rx, mut tx) = queues();
        for i in 0..5 {
            tap.push(&frame(60 + i));
        }
        // No buffers yet: nothing consumed, and the TAP is no longer watched.
        run(&mut dev, &mut rx, &mut tx, None).unwrap();
        assert!(!dev.backend_registered);
        for i in 0..5u64 {
            rx.add_chain(&[Desc::write(0x80_000 + i * 0x1000, 1526)]);
        }
        run(&mut dev, &mut rx, &mut tx, Some(RX_QUEUE)).unwrap();
        let used = rx.take_used();
        assert_eq!(used.len(), 5);
        for (i, (head, len)) in used.iter().enumerate() {
            assert_eq!(*len as usize, VNET_HDR_LEN + 60 + i);
            let at = 0x80_000 + u64::from(*head) * 0x1000;
            let mut hdr = [0u8; VNET_HDR_LEN];
            rx.mem().read_slice(&mut hdr, GuestAddress(at)).unwrap();
            assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
        }
        assert!(dev.backend_registered);
    }

    fn frames_per(frames: u64, refill_time_ms: u64) -> RateLimiterUpdate {
        RateLimiterConfig {
            ops: BucketConfig {
                size: frames,
                one_time_burst: 0,
                refill_time_ms,
            },
            ..Default::default()
        }
        .into()
    }

    fn woken_within_5s(dev: &TestTransport<Net<FakeTap>>) -> bool {
        readable_within(dev.backend_fd().unwrap(), std::time::Duration::from_secs(5))
    }

    #[test]
    fn tx_limiter_keeps_frames_in_the_queue_until_its_timer_fires() {
        let tap = FakeTap::new();
        let mut dev = net(&tap);
        dev.update_rate_limiters(&RateLimiterUpdate::default(), &frames_per(1, 50));
        let (mut rx, mut tx) = queues();
        tx.mem_write(0x40_000, &[0u8; VNET_HDR_LEN + 60]);
        for _ in 0..2 {
            tx.add_chain(&[Desc::read(0x40_000, (VNET_HDR_LEN + 60) as u32)]);
        }
        run(&mut dev, &mut rx, &mut tx, Some(TX_QUEUE)).unwrap();
        assert_eq!((tap.outbound.lock().unwrap().len(), tx.take_used().len()), (1, 1));
        assert!(dev.tx_rate_limiter().is_blocked());
        assert!(!dev.rx_rate_limiter().is_blocked());
        assert_eq!(dev.metrics().tx_rate_limiter_throttled.get(), 1);
        // A kick while throttled sends nothing; the timer in the device's epoll resumes TX.
        run(&mut dev, &mut rx, &mut tx, Some(TX_QUEUE)).unwrap();
        assert_eq!(tap.outbound.lock().unwrap().len(), 1);
        assert!(woken_within_5s(&dev));
        assert!(run(&mut dev, &mut rx, &mut tx, None).unwrap().contains(TX_QUEUE));
        assert_eq!((tap.outbound.lock().unwrap().len(), tx.take_used().len()), (2, 1));
    }

    #[test]
    fn rx_limiter_holds_frames_and_unwatches_the_tap_until_its_timer_fires() {
        let tap = FakeTap::new();
        let mut dev = net(&tap);
        // 100 bytes per 50 ms: one 100-byte frame (header included) at a time.
        let bandwidth = RateLimiterConfig {
            bandwidth: BucketConfig {
                size: (VNET_HDR_LEN + 88) as u64,
                one_time_burst: 0,
                refill_time_ms: 50,
            },
            ..Default::default()
        };
        dev.update_rate_limiters(&bandwidth.into(), &RateLimiterUpdate::default());
        let (mut rx, mut tx) = queues();
        for i in 0..2u64 {
            tap.push(&frame(88));
            rx.add_chain(&[Desc::write(0x80_000 + i * 0x1000, 1526)]);
        }
        run(&mut dev, &mut rx, &mut tx, None).unwrap();
        assert_eq!(rx.take_used().len(), 1);
        assert!(dev.rx_rate_limiter().is_blocked());
        assert!(!dev.backend_registered, "the TAP is not watched while RX is throttled");
        // An RX kick does not bypass the limiter.
        run(&mut dev, &mut rx, &mut tx, Some(RX_QUEUE)).unwrap();
        assert_eq!(rx.take_used().len(), 0);
        assert!(woken_within_5s(&dev));
        assert!(run(&mut dev, &mut rx, &mut tx, None).unwrap().contains(RX_QUEUE));
        assert_eq!(rx.take_used().len(), 1);
        assert!(dev.backend_registered);
        assert_eq!(dev.metrics().rx_rate_limiter_throttled.get(), 1);
    }

    #[test]
    fn oversized_frame_is_dropped_buffer_kept() {
        let tap = FakeTap::new();
        let mut dev = net(&tap);
        let (mut rx, mut tx) = queues();
        tap.push(&frame(3000));
        tap.push(&frame(100));
        rx.add_chain(&[Desc::write(0x80_000, 1526)]);
        run(&mut dev, &mut rx, &mut tx, None).unwrap();
        let used = rx.take_used();
        assert_eq!(used, vec![(0, (VNET_HDR_LEN + 100) as u32)]);
        assert_eq!(dev.metrics().rx_dropped.get(), 1);
    }

    #[test]
    fn malformed_tx_dropped_device_survives() {
        let tap = FakeTap::new();
        let mut dev = net(&tap);
        let (mut rx, mut tx) = queues();
        tx.add_chain(&[Desc::read(0x40_000, 4)]);
        tx.add_chain(&[Desc::write(0x40_000, 100)]);
        tx.add_chain(&[Desc::read(0xffff_0000_0000, 100)]);
        tx.add_chain(&[Desc::read(0x40_000, u32::MAX)]);
        run(&mut dev, &mut rx, &mut tx, Some(TX_QUEUE)).unwrap();
        assert_eq!(dev.metrics().tx_dropped.get(), 4);
        assert!(tap.outbound.lock().unwrap().is_empty());
        assert_eq!(tx.take_used().len(), 4);
    }

    #[test]
    fn rx_buffer_too_small_for_header_needs_reset() {
        let tap = FakeTap::new();
        let mut dev = net(&tap);
        let (mut rx, mut tx) = queues();
        tap.push(&frame(60));
        rx.add_chain(&[Desc::write(0x80_000, 4)]);
        assert!(matches!(
            run(&mut dev, &mut rx, &mut tx, None),
            Err(DeviceError::Unanswerable { .. })
        ));
        assert!(matches!(
            run(&mut dev, &mut rx, &mut tx, Some(RX_QUEUE)),
            Err(DeviceError::NeedsReset)
        ));
    }

    #[test]
    fn looping_rx_chain_needs_reset() {
        let tap = FakeTap::new();
        let mut dev = net(&tap);
        let (mut rx, mut tx) = queues();
        tap.push(&frame(60));
        rx.add_raw_chain(&[(0x80_000, 100, 3, 0)]);
        assert!(matches!(
            run(&mut dev, &mut rx, &mut tx, None),
            Err(DeviceError::MalformedChain { .. })
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rnd = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..200 {
            let tap = FakeTap::new();
            let mut dev = net(&tap);
            let (mut rx, mut tx) = queues();
            for _ in 0..(rnd() % 4) {
                tap.push(&frame((rnd() % 3000) as usize));
            }
            for q in [&mut rx, &mut tx] {
                for i in 0..16u16 {
                    let addr = if rnd() % 2 == 0 {
                        rnd()
                    } else {
                        0x40_000 + rnd() % 0x100_000
                    };
                    q.write_desc(
                        i,
                        addr,
                        (rnd() % 70_000) as u32,
                        (rnd() % 8) as u16,
                        (rnd() % 20) as u16,
                    );
                }
                for _ in 0..(rnd() % 6) {
                    q.publish((rnd() % 18) as u16);
                }
            }
            let _ = run(&mut dev, &mut rx, &mut tx, Some(TX_QUEUE));
            let _ = run(&mut dev, &mut rx, &mut tx, None);
        }
    }
}
