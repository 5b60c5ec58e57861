//! Test-only driver side of a split virtqueue: lays out a descriptor table, available and used ring in
//! real guest memory and offers chains the way a driver would, including chains no sane driver would
//! build (loops, wild addresses, wrong directions). Device tests build on it.
//!
//! Trusts nothing it reads back from the device either: the used ring is read through guest memory.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{ActivateError, DeviceError, GuestMemory, QueueSet, QueueSignals, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::transport::NeedsReset;

/// Size of the test guest's memory.
pub const MEM_SIZE: usize = 16 << 20;
/// Ring base of the default queue; a ring occupies `RING_SPAN` bytes from its base.
const DEFAULT_RING_BASE: u64 = 0x1000;
const AVAIL_OFFSET: u64 = 0x5000;
const USED_OFFSET: u64 = 0x7000;
/// Bytes a ring layout occupies (queues up to 1024 entries fit).
pub const RING_SPAN: u64 = 0x10_000;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// One descriptor of a chain to offer: address, length and whether the device may write it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Desc {
    /// A device-readable buffer.
    pub fn read(addr: u64, len: u32) -> Self {
        Desc {
            addr,
            len,
            write: false,
        }
    }
    /// A device-writable buffer.
    pub fn write(addr: u64, len: u32) -> Self {
        Desc { addr, len, write: true }
    }
}

/// A queue plus the guest memory it lives in, driven from the driver side.
pub struct GuestQueue {
    mem: GuestMemory,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    queue: Queue,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl GuestQueue {
    /// A ready queue of `size` entries in a fresh 16 MiB guest.
    pub fn new(size: u16) -> Self {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        Self::with_memory(mem, DEFAULT_RING_BASE, size)
    }

    /// A ready queue of `size` entries whose rings start at `ring_base` of `mem` (shared with other
    /// queues of the same device: `GuestMemory` clones share the mapping).
    pub fn with_memory(mem: GuestMemory, ring_base: u64, size: u16) -> Self {
        let (desc_table, avail_ring, used_ring) = (ring_base, ring_base + AVAIL_OFFSET, ring_base + USED_OFFSET);
        let mut queue = Queue::new(size).unwrap();
        queue.set_size(size);
        queue.set_desc_table_address(Some(desc_table as u32), Some(0));
        queue.set_avail_ring_address(Some(avail_ring as u32), Some(0));
        queue.set_used_ring_address(Some(used_ring as u32), Some(0));
        queue.set_ready(true);
        GuestQueue {
            mem,
            desc_table,
            avail_ring,
            used_ring,
            queue,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// Writes raw bytes into guest memory.
    pub fn mem_write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    }

    pub fn queue_mut(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// Memory and queue at once, for calls that need both.
    pub fn parts(&mut self) -> (&GuestMemory, &mut Queue) {
        (&self.mem, &mut self.queue)
    }

    /// Writes one raw descriptor at table index `index`.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc_table + u64::from(index) * 16);
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&raw, at).unwrap();
    }

    /// Publishes `head` in the available ring.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), GuestAddress(self.avail_ring + 4 + slot * 2))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx.to_le(), GuestAddress(self.avail_ring + 2))
            .unwrap();
    }

    /// Sets the available ring's index directly (to fake a driver that jumps it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .write_obj(idx.to_le(), GuestAddress(self.avail_ring + 2))
            .unwrap();
    }

    fn alloc(&mut self, n: u16) -> u16 {
        let first = self.next_desc;
        self.next_desc = (self.next_desc + n) % self.size;
        first
    }

    /// Offers a well-formed chain; returns its head index.
    pub fn add_chain(&mut self, descs: &[Desc]) -> u16 {
        let n = descs.len() as u16;
        let head = self.alloc(n);
        for (i, d) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let mut flags = if d.write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            let next = if last { 0 } else { (idx + 1) % self.size };
            self.write_desc(idx, d.addr, d.len, flags, next);
        }
        self.publish(head);
        head
    }

    /// Offers a chain written verbatim: (addr, len, flags, next) per descriptor, laid out from the
    /// next free index; `next` values are used as given (so loops and wild indices are possible).
    pub fn add_raw_chain(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.alloc(descs.len() as u16);
        for (i, (addr, len, flags, next)) in descs.iter().enumerate() {
            self.write_desc((head + i as u16) % self.size, *addr, *len, *flags, *next);
        }
        self.publish(head);
        head
    }

    /// Offers a chain whose head is an indirect descriptor pointing at a table at `table` in memory.
    pub fn add_indirect_chain(&mut self, table: u64, descs: &[Desc]) -> u16 {
        for (i, d) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let mut flags = if d.write { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&d.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
            self.mem.write_slice(&raw, GuestAddress(table + i as u64 * 16)).unwrap();
        }
        self.add_raw_chain(&[(table, (descs.len() * 16) as u32, F_INDIRECT, 0)])
    }

    /// Pops the next chain as a device would (for tests of the chain walker itself).
    pub fn pop(&mut self) -> DescriptorChain<&GuestMemory> {
        let mem = &self.mem;
        self.queue.iter(mem).unwrap().next().unwrap()
    }

    /// The used ring's index as the device last published it.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(self.used_ring + 2)).unwrap())
    }

    /// Used entries (head, len) published since the last call.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        let idx = self.used_idx();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % self.size);
            let at = self.used_ring + 4 + slot * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((u32::from_le(id) as u16, u32::from_le(len)));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A device core driven the way a transport drives it: every processing call goes through the
/// transport's [`NeedsReset`], and `reset` is the driver's reset (clears it, resets the core). Everything
/// else reaches the core through `Deref`.
pub struct TestTransport<D> {
    dev: D,
    needs_reset: NeedsReset,
}

impl<D: VirtioDevice> TestTransport<D> {
    pub fn new(dev: D) -> Self {
        TestTransport {
            dev,
            needs_reset: NeedsReset::default(),
        }
    }

    pub fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemory,
        queues: &mut QueueSet<'_>,
    ) -> Result<QueueSignals, DeviceError> {
        self.needs_reset.call(|| self.dev.process_queue(index, mem, queues))
    }

    pub fn process_backend(
        &mut self,
        mem: &GuestMemory,
        queues: &mut QueueSet<'_>,
    ) -> Result<QueueSignals, DeviceError> {
        self.needs_reset.call(|| self.dev.process_backend(mem, queues))
    }

    pub fn reset(&mut self) {
        self.needs_reset.clear();
        self.dev.reset();
    }
}

impl<D> Deref for TestTransport<D> {
    type Target = D;
    fn deref(&self) -> &D {
        &self.dev
    }
}

impl<D> DerefMut for TestTransport<D> {
    fn deref_mut(&mut self) -> &mut D {
        &mut self.dev
    }
}

/// The xorshift64 sequence from `seed`: the fuzz tests' source of garbage, reproducible run to run.
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// A device core for transport tests: it declares the queues it is given and does what the test sets.
pub struct StubDevice {
    device_type: u32,
    queue_sizes: Vec<u16>,
    /// `activate` fails, as when a host-side resource is missing.
    pub activate_fails: bool,
    /// Processing calls (queue or backend) fail with a `DeviceError`.
    pub process_fails: bool,
    /// A processing call panics: the transport must not call the device at all.
    pub forbid_processing: bool,
    /// How many processing calls reached the device.
    pub calls: Arc<AtomicUsize>,
}

impl StubDevice {
    pub fn new(device_type: u32, queue_sizes: &[u16]) -> Self {
        StubDevice {
            device_type,
            queue_sizes: queue_sizes.to_vec(),
            activate_fails: false,
            process_fails: false,
            forbid_processing: false,
            calls: Arc::default(),
        }
    }

    fn process(&mut self) -> Result<QueueSignals, DeviceError> {
        assert!(!self.forbid_processing, "an inactive device must not be called");
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.process_fails {
            return Err(DeviceError::Unanswerable {
                queue: 0,
                head: 0,
                reason: "the test said so".into(),
            });
        }
        Ok(QueueSignals::NONE)
    }
}

impl VirtioDevice for StubDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn set_acked_features(&mut self, _features: u64) {}
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self) -> Result<(), ActivateError> {
        if self.activate_fails {
            return Err(ActivateError::Backend {
                device: "stub",
                source: std::io::Error::other("no socket"),
            });
        }
        Ok(())
    }
    fn process_queue(
        &mut self,
        _index: usize,
        _mem: &GuestMemory,
        _queues: &mut QueueSet<'_>,
    ) -> Result<QueueSignals, DeviceError> {
        self.process()
    }
    fn process_backend(&mut self, _mem: &GuestMemory, _queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        self.process()
    }
    fn reset(&mut self) {}
}

/// Waits until `fd` polls readable, at most `limit`; returns whether it did (a device's backend fd, a
/// rate limiter's timer).
pub fn readable_within(fd: std::os::unix::io::RawFd, limit: std::time::Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}
