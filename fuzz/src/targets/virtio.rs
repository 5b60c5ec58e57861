//! Virtio devices driven by a hostile driver ([`crate::guest::Guest`]): the chain walker
//! (`devices/src/virtio/chain.rs`) and the block, net, vsock, balloon, rng and pmem cores with their request
//! parsing (`devices/src/virtio/{block,net,vsock,balloon,rng,pmem}`), each over in-memory backends the input
//! also controls.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use devices::rate_limiter::{BucketConfig, RateLimiterConfig};
use devices::virtio::balloon::Balloon;
use devices::virtio::block::{Block, DiskBackend, SECTOR_SIZE};
use devices::virtio::net::{Net, NetBackend};
use devices::virtio::vsock::packet::{PacketHeader, HDR_LEN, OP_RW};
use devices::virtio::vsock::{Vsock, VsockBackend, VsockMetrics};
use devices::virtio::{Chains, QueueSignals, VirtioDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest::Guest;
use crate::input::Input;

/// Walks every available chain of one queue and touches its parts at offsets the input picks.
pub fn chain(data: &[u8]) {
    let mut input = Input::new(data);
    // What to do with each chain comes first; the queue layout takes the rest.
    let mut ops = Input::new(input.bytes(128));
    let mut guest = Guest::new(&mut input, &[256], &mut |_, input| input.chunk(64).to_vec());
    let Guest { mem, queues, .. } = &mut guest;
    let mut chains = Chains::new(&mut queues[0], mem, 0);
    let mut signals = QueueSignals::NONE;
    for _ in 0..300 {
        let chain = match chains.pop() {
            Ok(Some(chain)) => chain,
            Ok(None) | Err(_) => break,
        };
        if !ops.is_empty() {
            let mut buf = vec![0u8; ops.below(8192) as usize];
            let offset = if ops.bool() { u64::from(ops.u16()) } else { ops.u64() };
            if chain.read_at(mem, offset, &mut buf).is_ok() {
                assert!(offset + buf.len() as u64 <= chain.readable_len());
            }
            if chain.write_at(mem, offset, &buf).is_ok() {
                assert!(offset + buf.len() as u64 <= chain.writable_len());
            }
            let _ = chain.check_readable(mem, offset, ops.u64());
            let _ = chain.check_writable(mem, ops.u64(), buf.len() as u64);
            if ops.u8() == 1 {
                chains.put_back();
                continue;
            }
        }
        if chains.complete(chain.head, ops.u32(), &mut signals).is_err() {
            break;
        }
    }
}

/// Kicks `queues` of `device` in the order the input says, as a transport would (it stops calling a
/// device that reported a fatal error, until the driver resets it).
fn drive(target: &'static str, device: &mut dyn VirtioDevice, guest: &mut Guest, input: &mut Input, backend: bool) {
    let n = guest.queues.len();
    for _ in 0..1 + input.below(6) {
        let step = input.u8();
        let result = if backend && step % 4 == 3 {
            let (mem, mut queues) = guest.parts();
            device.process_backend(mem, &mut queues)
        } else {
            let (mem, mut queues) = guest.parts();
            device.process_queue(step as usize % n, mem, &mut queues)
        };
        if let Err(e) = &result {
            if std::env::var_os("HULL_FUZZ_DEBUG").is_some() {
                eprintln!("{target}: the device stopped: {e}");
            }
            device.reset();
            break;
        }
        let q = input.below(n as u32) as usize;
        let more = input.below(4) as u16;
        guest.publish_more(q, more);
    }
    let mut config = [0u8; 64];
    device.read_config(u64::from(input.u8()), &mut config[..input.below(65) as usize]);
    device.write_config(u64::from(input.u8()), input.chunk(16));
    crate::stats::record(target, device.metrics());
}

/// A disk in memory; its size comes from the input.
pub(crate) struct MemDisk(pub(crate) Vec<u8>);

impl DiskBackend for MemDisk {
    fn capacity_bytes(&self) -> u64 {
        self.0.len() as u64 - self.0.len() as u64 % SECTOR_SIZE
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let src = self
            .0
            .get(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let dst = self
            .0
            .get_mut(start..start + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        dst.copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// virtio-blk: request headers (type, sector) shaped by the input, data and status wherever the chain says.
pub fn block(data: &[u8]) {
    let mut input = Input::new(data);
    let size = input.pick(&[0usize, 512, 4096, 64 << 10, 1000]);
    let read_only = input.u8() & 3 == 0;
    let Ok(mut device) = Block::with_backend(Box::new(MemDisk(vec![0; size])), read_only, "fuzz") else {
        return;
    };
    device.set_acked_features(device.avail_features());
    // Half the inputs run under a rate limiter small enough to throttle mid-queue (guest-sized requests
    // against tiny buckets, including ones they overdraw).
    let limit = input.u8();
    if limit & 1 == 1 {
        let bucket = |size: u8| BucketConfig {
            size: u64::from(size),
            one_time_burst: u64::from(size & 3),
            refill_time_ms: 1,
        };
        let limits = RateLimiterConfig {
            bandwidth: bucket((limit >> 1) & 7),
            ops: bucket(limit >> 4),
        };
        device.update_rate_limiter(&limits.into());
    }
    let sectors = size as u64 / SECTOR_SIZE;
    let mut header = |_: usize, input: &mut Input| {
        let kind = match input.u8() % 8 {
            0 | 1 => 0,
            2 | 3 => 1,
            4 => 4,
            5 => 8,
            _ => input.u32(),
        };
        let sector = match input.u8() % 4 {
            0 => u64::from(input.u8()) % (sectors + 1),
            1 => sectors.saturating_sub(u64::from(input.u8() % 4)),
            2 => u64::MAX - u64::from(input.u8()),
            _ => input.u64(),
        };
        let mut h = Vec::with_capacity(16);
        h.extend_from_slice(&kind.to_le_bytes());
        h.extend_from_slice(&input.u32().to_le_bytes());
        h.extend_from_slice(&sector.to_le_bytes());
        h.extend_from_slice(input.chunk(64));
        h
    };
    // What the driver does with the queues comes first, so it is never starved by the layouts.
    let ops = input.bytes(24);
    let mut guest = Guest::new(&mut input, device.queue_max_sizes(), &mut header);
    drive("virtio_block", &mut device, &mut guest, &mut Input::new(ops), true);
}

/// Frames the host side hands the device, and a readiness eventfd.
struct FakeTap {
    inbound: VecDeque<Vec<u8>>,
    ready: EventFd,
}

impl NetBackend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.inbound.pop_front() {
            Some(f) => {
                // A TAP never returns more than the buffer holds.
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                Ok(Some(n))
            }
            None => {
                let _ = self.ready.read();
                Ok(None)
            }
        }
    }
    fn write_frame(&mut self, _frame: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

/// virtio-net: TX frames from guest chains, RX frames of any size from the host into guest buffers.
pub fn net(data: &[u8]) {
    let mut input = Input::new(data);
    let mut inbound = VecDeque::new();
    for _ in 0..input.below(4) {
        let len = match input.u8() % 4 {
            0 => input.below(devices::virtio::net::MAX_FRAME_LEN as u32 + 1) as usize,
            _ => input.below(128) as usize,
        };
        let mut frame = input.bytes(len).to_vec();
        frame.resize(len, 0);
        inbound.push_back(frame);
    }
    let ready = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let _ = ready.write(1);
    let mac = if input.bool() { Some([2, 0, 0, 0, 0, 1]) } else { None };
    let Ok(mut device) = Net::with_backend(FakeTap { inbound, ready }, mac) else {
        return;
    };
    device.set_acked_features(device.avail_features());
    let mut header = |_: usize, input: &mut Input| input.chunk(128).to_vec();
    // What the driver does with the queues comes first, so it is never starved by the layouts.
    let ops = input.bytes(24);
    let mut guest = Guest::new(&mut input, device.queue_max_sizes(), &mut header);
    drive("virtio_net", &mut device, &mut guest, &mut Input::new(ops), true);
}

/// Packets the host side hands the device: headers and payload lengths from the input.
struct FakeVsock {
    rx: VecDeque<(PacketHeader, usize)>,
    event: EventFd,
}

impl VsockBackend for FakeVsock {
    fn send_pkt(&mut self, hdr: &PacketHeader, payload: &[u8]) {
        if hdr.op == OP_RW {
            assert_eq!(
                payload.len(),
                hdr.len as usize,
                "OP_RW payload length must match the header"
            );
        } else {
            assert!(payload.is_empty(), "only OP_RW carries a payload");
        }
    }
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<(PacketHeader, usize)> {
        let (hdr, len) = self.rx.pop_front()?;
        let len = len.min(buf.len());
        buf[..len].fill(0x5a);
        Some((hdr, len))
    }
    fn has_pending_rx(&self) -> bool {
        !self.rx.is_empty()
    }
    fn event_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
    fn process_events(&mut self) {}
    fn reset(&mut self) {
        self.rx.clear();
    }
}

fn vsock_header(input: &mut Input, payload_len: usize) -> PacketHeader {
    PacketHeader {
        src_cid: if input.u8() < 240 { 3 } else { input.u64() },
        dst_cid: if input.u8() < 240 { 2 } else { input.u64() },
        src_port: input.u32(),
        dst_port: input.u32(),
        len: if input.u8() < 200 {
            payload_len as u32
        } else {
            input.u32()
        },
        type_: if input.u8() < 240 { 1 } else { input.u16() },
        op: 1 + input.below(8) as u16,
        flags: input.u32(),
        buf_alloc: input.u32(),
        fwd_cnt: input.u32(),
    }
}

/// virtio-vsock: TX packet headers and payloads from guest chains; RX packets into guest buffers.
pub fn vsock(data: &[u8]) {
    let mut input = Input::new(data);
    let mut rx = VecDeque::new();
    for _ in 0..input.below(4) {
        let len = if input.bool() {
            input.below(70_000)
        } else {
            input.below(64)
        } as usize;
        rx.push_back((vsock_header(&mut input, len), len));
    }
    let backend = FakeVsock {
        rx,
        event: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    };
    let mut device = Vsock::with_backend(3, backend, Arc::new(VsockMetrics::default()));
    device.set_acked_features(device.avail_features());
    let mut header = |_: usize, input: &mut Input| {
        let payload = input.chunk(256).to_vec();
        let mut bytes = vsock_header(input, payload.len()).to_bytes().to_vec();
        debug_assert_eq!(bytes.len(), HDR_LEN);
        bytes.extend_from_slice(&payload);
        bytes
    };
    // What the driver does with the queues comes first, so it is never starved by the layouts.
    let ops = input.bytes(24);
    let mut guest = Guest::new(&mut input, device.queue_max_sizes(), &mut header);
    drive("virtio_vsock", &mut device, &mut guest, &mut Input::new(ops), true);
}

/// A guest buffer of random-ish words: PFN lists, statistics entries, pmem request types.
fn words(_: usize, input: &mut Input) -> Vec<u8> {
    input.chunk(96).to_vec()
}

/// virtio-balloon: PFN lists naming any page (inside guest memory, past it, overflowing), statistics
/// buffers of any shape, config writes; inflated pages are really released from the fuzzer's memory.
pub fn balloon(data: &[u8]) {
    let mut input = Input::new(data);
    let Ok(mut device) = Balloon::new(u32::from(input.u8()), input.bool(), u16::from(input.u8() & 1)) else {
        return;
    };
    device.set_acked_features(device.avail_features());
    let _ = device.activate();
    let ops = input.bytes(24);
    let mut guest = Guest::new(&mut input, device.queue_max_sizes(), &mut words);
    drive("virtio_balloon", &mut device, &mut guest, &mut Input::new(ops), false);
}

/// virtio-rng: writable buffers of any size and place, under a rate limiter half the time.
pub fn rng(data: &[u8]) {
    let mut input = Input::new(data);
    let limit = input.u8();
    let limits = RateLimiterConfig {
        bandwidth: BucketConfig {
            size: u64::from(limit & 0x7f) * 64,
            one_time_burst: 0,
            refill_time_ms: 1,
        },
        ops: BucketConfig::default(),
    };
    let Ok(mut device) = devices::virtio::rng::Rng::new(&limits) else {
        return;
    };
    device.set_acked_features(device.avail_features());
    let ops = input.bytes(24);
    let mut guest = Guest::new(&mut input, device.queue_max_sizes(), &mut words);
    drive("virtio_rng", &mut device, &mut guest, &mut Input::new(ops), true);
}

/// virtio-pmem: flush and other requests, status buffers of any size, over a 2 MiB scratch file.
pub fn pmem(data: &[u8]) {
    use std::sync::OnceLock;
    // One scratch file per process, unlinked at once and reached through /proc/self/fd, so nothing is
    // left behind.
    static FILE: OnceLock<(std::fs::File, std::path::PathBuf)> = OnceLock::new();
    let (_, path) = FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("hull-fuzz-pmem-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("pmem scratch file");
        let _ = std::fs::remove_file(&path);
        file.set_len(2 << 20).expect("pmem scratch size");
        let fd_path = std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        (file, fd_path)
    });
    let mut input = Input::new(data);
    let read_only = input.bool();
    let Ok(backing) = devices::virtio::pmem::PmemBacking::map(path, read_only) else {
        return;
    };
    let mut device = devices::virtio::pmem::Pmem::new(backing, 1 << 32, read_only);
    device.set_acked_features(device.avail_features());
    let ops = input.bytes(24);
    let mut guest = Guest::new(&mut input, device.queue_max_sizes(), &mut words);
    drive("virtio_pmem", &mut device, &mut guest, &mut Input::new(ops), false);
}
