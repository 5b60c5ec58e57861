//! virtio-vsock: the device core with its hybrid unix-socket backend (`devices::virtio::vsock::Vsock`),
//! one stream connection opened by the guest to a host listener at `<uds>_<port>`, moving 4 KiB and
//! 64 KiB packets in each direction; against the same bytes through a plain unix socket pair.
//!
//! * guest → host: the driver queues RW packets (header and payload in two descriptors) as far as the
//!   host's advertised credit allows, and takes credit updates from its RX queue; a host thread reads the
//!   unix stream. Raw: this thread writes chunks of the same size into a socket pair, a thread reads.
//! * host → guest: a host thread writes chunks into the unix stream; the driver offers RX buffers of
//!   header + packet size, copies each payload out, and returns credit with CREDIT_UPDATE packets. Raw:
//!   a thread writes into a socket pair, this thread reads chunks of the same size.
//!
//! The driver side checks what the device sends: an RST or SHUTDOWN, or a packet for another
//! connection, is an error. Host threads stop on a flag and read/write with timeouts, so nothing blocks
//! past the window.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::io::RawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::virtio::vsock::packet::{
    PacketHeader, HDR_LEN, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN,
};
use devices::virtio::vsock::{Vsock, VsockConfig, HOST_CID, RX_QUEUE, TX_QUEUE, TYPE_STREAM};
use devices::virtio::{GuestMemory, QueueSet, QueueSignals, VirtioDevice};
use hull_tests::TempDir;
use vm_memory::{Bytes, GuestAddress};

use super::{compare, guest_memory, timed, DeviceOptions, Rate};
use crate::error::{fail, BenchError, Result};
use crate::report::Section;
use crate::virtq::{Buffer, DriverQueue, RingLayout};

const GUEST_CID: u64 = 3;
const HOST_PORT: u32 = 5201;
const GUEST_PORT: u32 = 49152;
/// The guest's receive buffer as it advertises it (Linux's default).
const GUEST_BUF_ALLOC: u32 = 256 * 1024;
const QUEUE_SIZE: u16 = 256;
const MEM_BYTES: usize = 32 << 20;
const RING_BASE: u64 = 0x1000;
/// One packet slot (header, then payload at +HDR_SLOT), for RX buffers and TX packets alike.
const SLOT: u64 = 0x11000;
const HDR_SLOT: u64 = 0x100;
const RX_SLOTS: usize = 64;
const TX_SLOTS: usize = 64;
const RX_BASE: u64 = 0x10_0000;
const TX_BASE: u64 = RX_BASE + SLOT * RX_SLOTS as u64;
/// Packets queued per TX notification.
const TX_BATCH: usize = 32;
/// No progress for this long means the connection is stuck.
const STALL: Duration = Duration::from_secs(5);

/// A guest driver with RX and TX queues and one connection.
struct VsockDriver {
    mem: GuestMemory,
    rx: DriverQueue,
    tx: DriverQueue,
    dev: Vsock,
    /// Payload capacity of each RX buffer.
    rx_payload: u32,
    /// RX slot address per in-flight head.
    rx_slot_of: Vec<Option<u64>>,
    free_rx_slots: Vec<u64>,
    next_tx_slot: usize,
    // Credit, as in virtio 1.2, 5.10.6.3.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    tx_cnt: u32,
    fwd_cnt: u32,
    fwd_cnt_sent: u32,
    /// The host asked for our credit (CREDIT_REQUEST).
    credit_requested: bool,
    /// Where RX payloads are copied out to (the guest's socket buffer).
    sink: Vec<u8>,
}

impl VsockDriver {
    fn new(uds: &std::path::Path, rx_payload: u32) -> Result<VsockDriver> {
        let mem = guest_memory(MEM_BYTES)?;
        let rx = DriverQueue::new(&mem, RING_BASE, QUEUE_SIZE).map_err(BenchError::failed)?;
        let tx_base = RingLayout::new(RING_BASE, QUEUE_SIZE).end;
        let tx = DriverQueue::new(&mem, tx_base, QUEUE_SIZE).map_err(BenchError::failed)?;
        if RingLayout::new(tx_base, QUEUE_SIZE).end > RX_BASE {
            return Err(BenchError::failed("vsock rings overlap the packet slots"));
        }
        let mut dev = Vsock::new(&VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.to_path_buf(),
        })
        .map_err(fail("creating the virtio-vsock device"))?;
        dev.set_acked_features(dev.avail_features());
        dev.activate().map_err(fail("activating the virtio-vsock device"))?;
        // Payloads to send: any bytes will do, but not zeros.
        for i in 0..TX_SLOTS as u64 {
            let pattern: Vec<u8> = (0..64 * 1024u32).map(|b| (b % 253) as u8).collect();
            mem.write_slice(&pattern, GuestAddress(TX_BASE + i * SLOT + HDR_SLOT))
                .map_err(fail("writing guest memory"))?;
        }
        Ok(VsockDriver {
            mem,
            rx,
            tx,
            dev,
            rx_payload,
            rx_slot_of: vec![None; usize::from(QUEUE_SIZE)],
            free_rx_slots: (0..RX_SLOTS as u64).map(|i| RX_BASE + i * SLOT).collect(),
            next_tx_slot: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            credit_requested: false,
            sink: vec![0; 64 * 1024],
        })
    }

    fn kick(&mut self, index: usize) -> Result<QueueSignals> {
        let mut set = queue_set(&mut self.rx, &mut self.tx);
        let signals = self
            .dev
            .process_queue(index, &self.mem, &mut set)
            .map_err(fail("virtio-vsock process_queue"))?;
        // The device consumes TX packets synchronously; recycle their descriptors.
        self.tx.take_used(&self.mem).map_err(BenchError::failed)?;
        Ok(signals)
    }

    /// Waits up to `timeout` for host-side readiness and lets the device handle it.
    fn backend(&mut self, timeout: Duration) -> Result<()> {
        let fd = self
            .dev
            .backend_fd()
            .ok_or_else(|| BenchError::failed("the vsock device has no backend fd"))?;
        if poll_readable(fd, timeout)? {
            let mut set = queue_set(&mut self.rx, &mut self.tx);
            self.dev
                .process_backend(&self.mem, &mut set)
                .map_err(fail("virtio-vsock process_backend"))?;
        }
        Ok(())
    }

    /// Offers every free RX slot.
    fn post_rx(&mut self) -> Result<()> {
        while let Some(slot) = self.free_rx_slots.pop() {
            let head = self
                .rx
                .offer(&self.mem, &[Buffer::writable(slot, HDR_LEN as u32 + self.rx_payload)])
                .map_err(BenchError::failed)?;
            self.rx_slot_of[usize::from(head)] = Some(slot);
        }
        Ok(())
    }

    fn header(&self, op: u16, len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port: HOST_PORT,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Queues one TX packet (header, and the payload in a second descriptor); does not notify.
    fn queue_tx(&mut self, op: u16, len: u32) -> Result<()> {
        let slot = TX_BASE + (self.next_tx_slot % TX_SLOTS) as u64 * SLOT;
        self.next_tx_slot += 1;
        let hdr = self.header(op, len);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(slot))
            .map_err(fail("writing guest memory"))?;
        let mut bufs = vec![Buffer::readable(slot, HDR_LEN as u32)];
        if len > 0 {
            bufs.push(Buffer::readable(slot + HDR_SLOT, len));
        }
        self.tx.offer(&self.mem, &bufs).map_err(BenchError::failed)?;
        if op == OP_RW {
            self.tx_cnt = self.tx_cnt.wrapping_add(len);
        }
        self.fwd_cnt_sent = self.fwd_cnt;
        self.credit_requested = false;
        Ok(())
    }

    /// Bytes the host can still take.
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Takes every packet the device delivered: updates credit, copies payloads out, frees the slots.
    /// Returns (RW packets, payload bytes).
    fn drain_rx(&mut self) -> Result<(u64, u64)> {
        let used = self.rx.take_used(&self.mem).map_err(BenchError::failed)?;
        let (mut pkts, mut bytes) = (0, 0);
        for u in used {
            let slot = self.rx_slot_of[usize::from(u.head)]
                .take()
                .ok_or_else(|| BenchError::failed(format!("RX head {} has no buffer", u.head)))?;
            self.free_rx_slots.push(slot);
            let mut raw = [0u8; HDR_LEN];
            self.mem
                .read_slice(&mut raw, GuestAddress(slot))
                .map_err(fail("reading guest memory"))?;
            let hdr = PacketHeader::from_bytes(&raw);
            if (hdr.src_port, hdr.dst_port, hdr.dst_cid) != (HOST_PORT, GUEST_PORT, GUEST_CID) {
                return Err(BenchError::failed(format!("packet for another connection: {hdr:?}")));
            }
            let payload = u.len.saturating_sub(HDR_LEN as u32);
            if payload != if hdr.op == OP_RW { hdr.len } else { 0 } {
                return Err(BenchError::failed(format!(
                    "used length {} disagrees with the header {hdr:?}",
                    u.len
                )));
            }
            self.peer_buf_alloc = hdr.buf_alloc;
            self.peer_fwd_cnt = hdr.fwd_cnt;
            match hdr.op {
                OP_RW => {
                    let sink = &mut self.sink[..payload as usize];
                    self.mem
                        .read_slice(sink, GuestAddress(slot + HDR_LEN as u64))
                        .map_err(fail("reading guest memory"))?;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(payload);
                    pkts += 1;
                    bytes += u64::from(payload);
                }
                OP_RESPONSE | OP_CREDIT_UPDATE => {}
                OP_CREDIT_REQUEST => self.credit_requested = true,
                OP_RST | OP_SHUTDOWN => {
                    return Err(BenchError::failed(format!("the device closed the connection: {hdr:?}")))
                }
                other => return Err(BenchError::failed(format!("unexpected packet op {other}: {hdr:?}"))),
            }
        }
        Ok((pkts, bytes))
    }

    /// Opens the connection to the host listener; returns the host end.
    fn connect(&mut self, listener: &UnixListener) -> Result<UnixStream> {
        self.post_rx()?;
        self.kick(RX_QUEUE)?;
        self.queue_tx(OP_REQUEST, 0)?;
        self.kick(TX_QUEUE)?;
        listener.set_nonblocking(true).map_err(fail("listener"))?;
        let deadline = Instant::now() + STALL;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    self.backend(Duration::from_millis(10))?
                }
                Err(e) => {
                    return Err(BenchError::failed(format!(
                        "the device did not connect to the listener: {e}"
                    )))
                }
            }
        };
        while self.peer_buf_alloc == 0 {
            self.drain_rx()?;
            self.post_rx()?;
            if Instant::now() > deadline {
                return Err(BenchError::failed("no RESPONSE to the guest's connection request"));
            }
            self.backend(Duration::from_millis(10))?;
        }
        stream.set_nonblocking(false).map_err(fail("host stream"))?;
        Ok(stream)
    }
}

/// The device's queues as a transport lends them: RX, TX, and no event queue.
fn queue_set<'q>(rx: &'q mut DriverQueue, tx: &'q mut DriverQueue) -> QueueSet<'q> {
    let mut set = QueueSet::new();
    set.push(Some(rx.device_queue()));
    set.push(Some(tx.device_queue()));
    set.push(None);
    set
}

/// poll(2) for readability.
fn poll_readable(fd: RawFd, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd on the stack, its count is 1.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(BenchError::failed(format!("poll: {e}")));
    }
    Ok(n > 0)
}

/// A host thread that reads a stream until told to stop (or EOF), counting bytes.
fn spawn_reader(mut stream: UnixStream, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) -> Result<JoinHandle<()>> {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(fail("set_read_timeout"))?;
    Ok(std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while !stop.load(Ordering::Relaxed) {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
    }))
}

/// A host thread that writes `chunk`-sized pieces into a stream until told to stop.
fn spawn_writer(mut stream: UnixStream, chunk: usize, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>> {
    stream
        .set_write_timeout(Some(Duration::from_millis(50)))
        .map_err(fail("set_write_timeout"))?;
    Ok(std::thread::spawn(move || {
        let data: Vec<u8> = (0..chunk).map(|i| (i % 241) as u8).collect();
        let mut off = 0;
        while !stop.load(Ordering::Relaxed) {
            match stream.write(&data[off..]) {
                Ok(n) => off = (off + n) % chunk,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
    }))
}

/// Stops and joins host threads when dropped, also on an error path.
struct HostThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HostThreads {
    fn new() -> HostThreads {
        HostThreads {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }
}

impl Drop for HostThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A fresh device socket path in `dir` and the host listener the guest will connect to (`<uds>_<port>`).
fn bind_listener(dir: &TempDir, what: &str) -> Result<(std::path::PathBuf, UnixListener)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let uds = dir
        .path()
        .join(format!("{what}-{}.sock", NEXT.fetch_add(1, Ordering::Relaxed)));
    let path = format!("{}_{HOST_PORT}", uds.display());
    let listener = UnixListener::bind(&path).map_err(fail(format!("binding the host listener {path}")))?;
    Ok((uds, listener))
}

/// Guest → host through the device: windows of RW packets of `size`.
fn device_g2h(opts: &DeviceOptions, dir: &TempDir, size: u32) -> Result<Vec<Rate>> {
    let (uds, listener) = bind_listener(dir, "g2h")?;
    let mut drv = VsockDriver::new(&uds, 4096)?;
    let stream = drv.connect(&listener)?;
    let mut host = HostThreads::new();
    let received = Arc::new(AtomicU64::new(0));
    host.threads
        .push(spawn_reader(stream, host.stop.clone(), received.clone())?);
    let mut rates = Vec::new();
    let mut last_progress = Instant::now();
    for _ in 0..opts.runs {
        rates.push(timed(opts.window, || {
            let mut n = 0u64;
            while n < TX_BATCH as u64 && drv.credit() >= size && drv.tx.free_descriptors() >= 2 {
                drv.queue_tx(OP_RW, size)?;
                n += 1;
            }
            if n > 0 {
                drv.kick(TX_QUEUE)?;
                last_progress = Instant::now();
            } else {
                // Out of credit: the host end has to drain; the device tells us with a CREDIT_UPDATE.
                drv.backend(Duration::from_millis(20))?;
                if last_progress.elapsed() > STALL {
                    return Err(BenchError::failed(format!(
                        "guest → host stalled: no credit for {STALL:?}"
                    )));
                }
            }
            drv.drain_rx()?;
            drv.post_rx()?;
            if drv.credit_requested {
                drv.queue_tx(OP_CREDIT_UPDATE, 0)?;
                drv.kick(TX_QUEUE)?;
            }
            Ok((n, n * u64::from(size)))
        })?);
    }
    drop(host);
    if received.load(Ordering::Relaxed) == 0 {
        return Err(BenchError::failed("the host end received nothing"));
    }
    Ok(rates)
}

/// Host → guest through the device: RX buffers of `size` payload bytes.
fn device_h2g(opts: &DeviceOptions, dir: &TempDir, size: u32) -> Result<Vec<Rate>> {
    let (uds, listener) = bind_listener(dir, "h2g")?;
    let mut drv = VsockDriver::new(&uds, size)?;
    let stream = drv.connect(&listener)?;
    let mut host = HostThreads::new();
    host.threads
        .push(spawn_writer(stream, size as usize, host.stop.clone())?);
    let mut rates = Vec::new();
    let mut last_progress = Instant::now();
    for _ in 0..opts.runs {
        rates.push(timed(opts.window, || {
            // Buffers back to the device, which fills them from what the host end already wrote.
            drv.post_rx()?;
            drv.kick(RX_QUEUE)?;
            let (mut pkts, mut bytes) = drv.drain_rx()?;
            // Return credit once a quarter of our buffer is consumed (or when asked).
            if drv.credit_requested || drv.fwd_cnt.wrapping_sub(drv.fwd_cnt_sent) >= GUEST_BUF_ALLOC / 4 {
                drv.queue_tx(OP_CREDIT_UPDATE, 0)?;
                drv.kick(TX_QUEUE)?;
                let (p, b) = drv.drain_rx()?;
                pkts += p;
                bytes += b;
            }
            if pkts > 0 {
                last_progress = Instant::now();
            } else {
                // Nothing pending in the device: wait for the host end's data to arrive.
                drv.backend(Duration::from_millis(20))?;
                let (p, b) = drv.drain_rx()?;
                pkts += p;
                bytes += b;
                if pkts == 0 && last_progress.elapsed() > STALL {
                    return Err(BenchError::failed(format!(
                        "host → guest stalled: nothing for {STALL:?}"
                    )));
                }
            }
            Ok((pkts, bytes))
        })?);
    }
    Ok(rates)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// write_all that rides out socket timeouts (the peer thread may be descheduled on a loaded machine) for up to
/// `STALL`.
fn write_patiently(stream: &mut UnixStream, mut data: &[u8]) -> Result<()> {
    let deadline = Instant::now() + STALL;
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => return Err(BenchError::failed("the socket pair closed")),
            Ok(n) => data = &data[n..],
            Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
            Err(e) => return Err(BenchError::failed(format!("write to the socket pair: {e}"))),
        }
    }
    Ok(())
}

/// One read that rides out socket timeouts for up to `STALL`.
fn read_patiently(stream: &mut UnixStream, buf: &mut [u8]) -> Result<usize> {
    let deadline = Instant::now() + STALL;
    loop {
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
            Err(e) => return Err(BenchError::failed(format!("read from the socket pair: {e}"))),
        }
    }
}

/// Raw unix socket pair, this thread writing `size` chunks, a thread reading.
fn raw_write(opts: &DeviceOptions, size: usize) -> Result<Vec<Rate>> {
    let (mut ours, theirs) = UnixStream::pair().map_err(fail("socketpair"))?;
    ours.set_write_timeout(Some(Duration::from_millis(100)))
        .map_err(fail("set_write_timeout"))?;
    let mut host = HostThreads::new();
    host.threads
        .push(spawn_reader(theirs, host.stop.clone(), Arc::new(AtomicU64::new(0)))?);
    let data = vec![0x3cu8; size];
    let mut rates = Vec::new();
    for _ in 0..opts.runs {
        rates.push(timed(opts.window, || {
            for _ in 0..TX_BATCH {
                write_patiently(&mut ours, &data)?;
            }
            Ok((TX_BATCH as u64, (TX_BATCH * size) as u64))
        })?);
    }
    Ok(rates)
}

/// Raw unix socket pair, a thread writing, this thread reading `size` chunks.
fn raw_read(opts: &DeviceOptions, size: usize) -> Result<Vec<Rate>> {
    let (mut ours, theirs) = UnixStream::pair().map_err(fail("socketpair"))?;
    ours.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(fail("set_read_timeout"))?;
    let mut host = HostThreads::new();
    host.threads.push(spawn_writer(theirs, size, host.stop.clone())?);
    let mut buf = vec![0u8; size];
    let mut rates = Vec::new();
    for _ in 0..opts.runs {
        rates.push(timed(opts.window, || {
            let (mut reads, mut bytes) = (0u64, 0u64);
            for _ in 0..TX_BATCH {
                let n = read_patiently(&mut ours, &mut buf)?;
                if n == 0 {
                    return Err(BenchError::failed("the socket pair closed"));
                }
                reads += 1;
                bytes += n as u64;
            }
            Ok((reads, bytes))
        })?);
    }
    Ok(rates)
}

/// Runs the virtio-vsock comparisons into `s`.
pub fn run(s: &mut Section, opts: &DeviceOptions) -> Result<()> {
    let dir = TempDir::new("bench-vsock").map_err(fail("creating a temporary directory"))?;
    // One window of each per row, alternating device and raw, as the block benchmark does.
    let one = DeviceOptions {
        runs: 1,
        window: opts.window,
    };
    for size in [4096u32, 64 << 10] {
        let (mut dev, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            dev.extend(device_g2h(&one, &dir, size)?);
            raw.extend(raw_write(&one, size as usize)?);
        }
        let label = format!("vsock guest→host {} KiB", size / 1024);
        compare(s, &label, "pkt", &dev, "socketpair write", &raw);
        let (mut dev, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            dev.extend(device_h2g(&one, &dir, size)?);
            raw.extend(raw_read(&one, size as usize)?);
        }
        let label = format!("vsock host→guest {} KiB", size / 1024);
        compare(s, &label, "pkt", &dev, "socketpair read", &raw);
    }
    s.note(format!(
        "one stream connection, guest credit {} KiB, host credit as the backend advertises it; packets of header + \
         payload in 2 descriptors (TX, {TX_BATCH} per notification) or 1 RX buffer of header + size; each window \
         sets up a fresh device and connection; {} windows of {:?} per row, device and raw alternating; host → \
         guest raw reads return up to `size` bytes each",
        GUEST_BUF_ALLOC / 1024,
        opts.runs,
        opts.window
    ));
    Ok(())
}
