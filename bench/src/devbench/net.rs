//! virtio-net, transmit path: the device core (`devices::virtio::net::Net` over a TAP) sending 60-byte and
//! 1514-byte Ethernet frames that the driver queues 32 at a time (virtio-net header and frame in one
//! descriptor, as Linux lays out a linear skb), against raw writes of the same bytes to a second TAP
//! opened the same way (`Tap::write_frame`: one write(2) per frame).
//!
//! The TAPs live in a network namespace this benchmark creates (`ip netns add hull-bench-<pid>`) and
//! deletes when done, also on error; namespaces left by a killed earlier run (its PID gone) are deleted
//! at start. No address is configured: the frames are addressed to a MAC nobody has, so the namespace's
//! kernel drops them on receipt, and nothing leaves the namespace. Every frame the device takes must be
//! counted as sent in its metrics (a TAP refusal is an error, not a silent drop).

use std::process::Command;

use devices::rate_limiter::RateLimiterConfig;
use devices::virtio::net::{Net, NetBackend, NetConfig, Tap, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use devices::virtio::{GuestMemory, QueueSet, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

use super::{compare, guest_memory, timed, wait_readable, DeviceOptions, Rate};
use crate::error::{fail, BenchError, Result};
use crate::report::Section;
use crate::virtq::{Buffer, DriverQueue};

const NETNS_PREFIX: &str = "hull-bench-";
const DEVICE_TAP: &str = "hbtap0";
pub(super) const RAW_TAP: &str = "hbtap1";
/// Frames queued per TX notification.
pub(super) const BATCH: usize = 32;
const QUEUE_SIZE: u16 = 256;
const MEM_BYTES: usize = 8 << 20;
const RING_BASE: u64 = 0x1000;
const FRAME_BASE: u64 = 0x10_0000;
const FRAME_SLOT: u64 = 0x800;
/// The RX ring, after the TX ring's 3 pages.
const RX_RING_BASE: u64 = 0x8000;
/// RX buffers: one per descriptor, each big enough for the header and a 1514-byte frame.
const RX_BASE: u64 = 0x20_0000;
const RX_SLOT: u64 = 0x800;

/// A network namespace created by this process, deleted on drop.
pub(super) struct NetNs {
    pub(super) name: String,
}

pub(super) fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        BenchError::env(format!(
            "cannot run `ip` ({e}); install iproute2 (scripts/install-test-deps.sh does)"
        ))
    })?;
    if !out.status.success() {
        return Err(BenchError::env(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl NetNs {
    pub(super) fn create() -> Result<NetNs> {
        remove_stale_namespaces();
        let name = format!("{NETNS_PREFIX}{}", std::process::id());
        ip(&["netns", "add", &name]).map_err(|e| {
            BenchError::env(format!(
                "{e} (creating a network namespace needs root or CAP_SYS_ADMIN)"
            ))
        })?;
        Ok(NetNs { name })
    }

    /// Runs `f` on a thread that has joined this namespace (the thread, and only it, moves).
    pub(super) fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).map_err(fail(format!("opening {path}")))?;
            // SAFETY: setns(2) on a namespace fd we own; it affects only the calling thread.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0 {
                return Err(BenchError::env(format!(
                    "setns({path}): {}",
                    std::io::Error::last_os_error()
                )));
            }
            f()
        })
        .join()
        .map_err(|_| BenchError::failed("the thread inside the network namespace panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("hull-bench: could not delete network namespace {}: {e}", self.name);
        }
    }
}

/// Deletes `hull-bench-<pid>` namespaces whose process no longer exists.
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("[hull-bench] deleting stale network namespace {name}");
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// A virtio-net header (zero: no offloads) and an Ethernet frame of `len` bytes to a MAC nobody has.
pub(super) fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    let eth = &mut f[VNET_HDR_LEN..];
    eth[0..6].copy_from_slice(&[0x02, 0x68, 0x75, 0x6c, 0x6c, 0x02]); // destination
    eth[6..12].copy_from_slice(&[0x02, 0x68, 0x75, 0x6c, 0x6c, 0x01]); // source
    eth[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // IEEE local experimental EtherType
    for (i, b) in eth[14..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// Lends both queues to the device, in its order (RX, TX).
fn both_queues<'q>(rx: &'q mut DriverQueue, tx: &'q mut DriverQueue) -> QueueSet<'q> {
    let mut set = QueueSet::new();
    set.push(Some(rx.device_queue()));
    set.push(Some(tx.device_queue()));
    set
}

/// The guest side: a TX queue and `BATCH` frame slots, and an RX queue with a buffer per descriptor.
pub(super) struct NetDriver {
    mem: GuestMemory,
    tx: DriverQueue,
    rx: DriverQueue,
    /// Buffers offered to RX so far (picks the next buffer's slot).
    rx_offered: u64,
    pub(super) dev: Net,
}

impl NetDriver {
    /// A device on TAP `DEVICE_TAP` in `ns` (brought up) with the given RX and TX limits, activated, with
    /// `frame` in every TX slot (empty: the caller fills them).
    pub(super) fn in_namespace(
        ns: &NetNs,
        rx_rate_limiter: RateLimiterConfig,
        tx_rate_limiter: RateLimiterConfig,
        frame: &[u8],
    ) -> Result<NetDriver> {
        let dev = ns.run_inside(move || {
            Net::new(&NetConfig {
                tap: DEVICE_TAP.into(),
                mac: Some([0x02, 0x68, 0x75, 0x6c, 0x6c, 0x01]),
                rx_rate_limiter,
                tx_rate_limiter,
            })
            .map_err(fail(format!("creating the virtio-net device on TAP {DEVICE_TAP}")))
        })?;
        ip(&["-n", &ns.name, "link", "set", DEVICE_TAP, "up"])?;
        let mem = guest_memory(MEM_BYTES)?;
        let tx = DriverQueue::new(&mem, RING_BASE, QUEUE_SIZE).map_err(BenchError::failed)?;
        let rx = DriverQueue::new(&mem, RX_RING_BASE, QUEUE_SIZE).map_err(BenchError::failed)?;
        let mut driver = NetDriver {
            mem,
            tx,
            rx,
            rx_offered: 0,
            dev,
        };
        driver.dev.set_acked_features(driver.dev.avail_features());
        driver
            .dev
            .activate()
            .map_err(fail("activating the virtio-net device"))?;
        driver.fill(frame)?;
        Ok(driver)
    }

    /// Gives every free RX descriptor a buffer and kicks the RX queue, then waits (in poll(2), as the
    /// VMM's event loop does) until the device's backend fd is readable (frames on the TAP, or the RX
    /// limiter's timer) and lets the device deliver. Returns the frames and bytes (virtio-net header
    /// included) the guest received.
    pub(super) fn receive(&mut self) -> Result<(u64, u64)> {
        while self.rx.free_descriptors() > 0 {
            let slot = self.rx_offered % u64::from(QUEUE_SIZE);
            self.rx
                .offer(&self.mem, &[Buffer::writable(RX_BASE + slot * RX_SLOT, RX_SLOT as u32)])
                .map_err(BenchError::failed)?;
            self.rx_offered += 1;
        }
        self.dev
            .process_queue(RX_QUEUE, &self.mem, &mut both_queues(&mut self.rx, &mut self.tx))
            .map_err(fail("virtio-net process_queue (RX)"))?;
        let fd = self
            .dev
            .backend_fd()
            .ok_or_else(|| BenchError::failed("no backend fd"))?;
        wait_readable(fd, std::time::Duration::from_secs(10))?;
        self.dev
            .process_backend(&self.mem, &mut both_queues(&mut self.rx, &mut self.tx))
            .map_err(fail("virtio-net process_backend"))?;
        let used = self.rx.take_used(&self.mem).map_err(BenchError::failed)?;
        Ok((used.len() as u64, used.iter().map(|u| u64::from(u.len)).sum()))
    }

    /// Writes `frame` into every slot.
    pub(super) fn fill(&mut self, frame: &[u8]) -> Result<()> {
        for slot in 0..BATCH as u64 {
            self.mem
                .write_slice(frame, GuestAddress(FRAME_BASE + slot * FRAME_SLOT))
                .map_err(fail("guest memory"))?;
        }
        Ok(())
    }

    /// Queues `BATCH` frames of `len` bytes, notifies the device once and waits until all are sent; a
    /// rate-limited device that holds frames back is woken through its backend fd (its epoll, where the
    /// TX limiter's timer sits), as the VMM's event loop would.
    pub(super) fn batch(&mut self, len: u32) -> Result<()> {
        for slot in 0..BATCH as u64 {
            self.tx
                .offer(&self.mem, &[Buffer::readable(FRAME_BASE + slot * FRAME_SLOT, len)])
                .map_err(BenchError::failed)?;
        }
        let mut set = QueueSet::new();
        set.push(None); // RX: not exercised
        set.push(Some(self.tx.device_queue()));
        self.dev
            .process_queue(TX_QUEUE, &self.mem, &mut set)
            .map_err(fail("virtio-net process_queue"))?;
        let mut used = self.tx.take_used(&self.mem).map_err(BenchError::failed)?;
        while used.len() < BATCH && self.dev.tx_rate_limiter().is_blocked() {
            let fd = self
                .dev
                .backend_fd()
                .ok_or_else(|| BenchError::failed("no backend fd"))?;
            wait_readable(fd, std::time::Duration::from_secs(10))?;
            let mut set = QueueSet::new();
            set.push(None);
            set.push(Some(self.tx.device_queue()));
            self.dev
                .process_backend(&self.mem, &mut set)
                .map_err(fail("virtio-net process_backend"))?;
            used.extend(self.tx.take_used(&self.mem).map_err(BenchError::failed)?);
        }
        if used.len() != BATCH {
            return Err(BenchError::failed(format!(
                "{BATCH} frames offered, {} completed",
                used.len()
            )));
        }
        Ok(())
    }
}

/// Runs the virtio-net comparison into `s`.
pub fn run(s: &mut Section, opts: &DeviceOptions) -> Result<()> {
    let ns = NetNs::create()?;
    let mut raw_tap = ns.run_inside(|| Tap::open(RAW_TAP).map_err(fail(format!("opening TAP {RAW_TAP}"))))?;
    ip(&["-n", &ns.name, "link", "set", RAW_TAP, "up"])?;
    let mut driver = NetDriver::in_namespace(&ns, RateLimiterConfig::default(), RateLimiterConfig::default(), &[])?;
    let metrics = driver.dev.metrics();

    for eth_len in [60usize, 1514] {
        let bytes = frame(eth_len);
        driver.fill(&bytes)?;
        let len = bytes.len() as u32;
        let (mut dev_rates, mut raw_rates) = (Vec::<Rate>::new(), Vec::<Rate>::new());
        for _ in 0..opts.runs {
            let sent_before = metrics.tx_frames.get();
            let rate = timed(opts.window, || {
                driver.batch(len)?;
                Ok((BATCH as u64, (BATCH * eth_len) as u64))
            })?;
            let sent = metrics.tx_frames.get() - sent_before;
            let dropped = metrics.tx_dropped.get();
            if sent != rate.ops || dropped != 0 {
                return Err(BenchError::failed(format!(
                    "the device took {} frames but sent {sent} ({dropped} dropped in total)",
                    rate.ops
                )));
            }
            dev_rates.push(rate);
            raw_rates.push(timed(opts.window, || {
                for _ in 0..BATCH {
                    raw_tap
                        .write_frame(&bytes)
                        .map_err(fail(format!("write to TAP {RAW_TAP}")))?;
                }
                Ok((BATCH as u64, (BATCH * eth_len) as u64))
            })?);
        }
        compare(
            s,
            &format!("net TX {eth_len} B frames"),
            "frame",
            &dev_rates,
            "TAP write",
            &raw_rates,
        );
    }
    drop(driver);
    drop(raw_tap);
    s.note(format!(
        "TAPs {DEVICE_TAP} (device) and {RAW_TAP} (raw) in namespace {} (deleted afterwards), no offloads, \
         12-byte virtio-net header; frames to an unknown MAC are dropped by the namespace's kernel on receipt; \
         MB/s counts Ethernet bytes; {BATCH} frames per notification; {} windows of {:?}; RX not measured",
        ns.name, opts.runs, opts.window
    ));
    Ok(())
}
