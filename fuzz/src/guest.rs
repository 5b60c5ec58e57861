//! A hostile virtio driver built from fuzz bytes: guest memory and split virtqueues whose descriptor
//! tables, available rings and buffers come from the input. About half the queues are laid out the way a
//! driver would (chains of a few descriptors, readable before writable, some through indirect tables, each
//! chain's first readable buffer holding a device header the target shapes), the rest are raw descriptor
//! tables and rings (loops, wild addresses and lengths, any flags, any head index), and now and then the
//! rings themselves lie outside memory.

use devices::virtio::{GuestMemory, QueueSet};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::input::Input;

/// Guest memory size.
pub const MEM_SIZE: u64 = 1 << 20;
/// Where buffers go; below it are the rings (queue `q` at `q * RING_SPAN`).
pub const DATA: u64 = 0x1_0000;
const RING_SPAN: u64 = 0x3000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// The device header a target wants at the start of a chain's readable part, for queue `queue`.
pub type HeaderFn<'f> = &'f mut dyn FnMut(usize, &mut Input) -> Vec<u8>;

/// Guest memory and the device's queues, as a hostile driver left them.
pub struct Guest {
    pub mem: GuestMemory,
    pub queues: Vec<Queue>,
    avail_idx: Vec<u16>,
}

impl Guest {
    /// Builds one queue per entry of `max_sizes` from `input`.
    pub fn new(input: &mut Input, max_sizes: &[u16], header: HeaderFn<'_>) -> Guest {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory");
        let mut guest = Guest {
            mem,
            queues: Vec::new(),
            avail_idx: Vec::new(),
        };
        // Each queue gets its share of the input, so the last one is not always built from zeros.
        for (q, &max) in max_sizes.iter().enumerate() {
            let share = input.rest().len() / (max_sizes.len() - q);
            let mut part = Input::new(input.bytes(share));
            guest.add_queue(&mut part, q, max, header);
        }
        guest
    }

    fn add_queue(&mut self, input: &mut Input, q: usize, max: u16, header: HeaderFn<'_>) {
        let max_exp = 15 - max.max(1).leading_zeros() as u8;
        // Zero (an exhausted input) gives a 16-entry queue.
        let size: u16 = 1 << (input.u8().wrapping_add(4) % (max_exp + 1));
        let base = q as u64 * RING_SPAN;
        let (desc, avail, used) = (base, base + 0x1000, base + 0x2000);
        let mode = input.u8();
        let mut queue = Queue::new(max).expect("queue");
        queue.set_size(size);
        if mode & 0xf0 == 0xf0 {
            // Rings wherever the driver says, inside memory or not.
            let addr = |input: &mut Input| (input.u32(), input.u32() & 1);
            let (dl, dh) = addr(input);
            let (al, ah) = addr(input);
            let (ul, uh) = addr(input);
            queue.set_desc_table_address(Some(dl), Some(dh));
            queue.set_avail_ring_address(Some(al), Some(ah));
            queue.set_used_ring_address(Some(ul), Some(uh));
        } else {
            queue.set_desc_table_address(Some(desc as u32), Some(0));
            queue.set_avail_ring_address(Some(avail as u32), Some(0));
            queue.set_used_ring_address(Some(used as u32), Some(0));
        }
        queue.set_ready(true);
        let heads = if mode & 1 == 0 {
            self.well_formed_chains(input, q, desc, size, mode & 2 != 0, header)
        } else {
            self.raw_table(input, desc, size)
        };
        for (slot, head) in heads.iter().enumerate() {
            self.write(avail + 4 + 2 * (slot as u64 % u64::from(size)), &head.to_le_bytes());
        }
        let idx = if input.u8() == 0xff {
            input.u16()
        } else {
            heads.len() as u16
        };
        self.write(avail, &(input.u16() & 1).to_le_bytes());
        self.write(avail + 2, &idx.to_le_bytes());
        self.queues.push(queue);
        self.avail_idx.push(idx);
    }

    /// Chains a driver could have written; returns their heads.
    fn well_formed_chains(
        &mut self,
        input: &mut Input,
        q: usize,
        table: u64,
        size: u16,
        indirect: bool,
        header: HeaderFn<'_>,
    ) -> Vec<u16> {
        let mut heads = Vec::new();
        let mut next_free = 0u16;
        for _ in 0..1 + input.below(6) {
            if input.is_empty() && !heads.is_empty() {
                break;
            }
            let through_table = indirect && input.bool();
            let room = if through_table { 4 } else { size - next_free };
            let n = input.pick(&[2u16, 3, 2, 3, 4, 2, 3, 1]).min(room);
            if n == 0 {
                break;
            }
            // Mostly the shape requests have: something to read first, something to write last.
            let readable = if n > 1 && input.u8() < 240 {
                1 + input.below(u32::from(n) - 1) as u16
            } else {
                input.below(u32::from(n) + 1) as u16
            };
            let used_slots = if through_table { 1 } else { n };
            if next_free + used_slots > size {
                break;
            }
            let mut descs = Vec::new();
            for i in 0..n {
                let addr = DATA + (u64::from(input.u16()) * 16) % (MEM_SIZE - DATA);
                let len = match input.u8() % 12 {
                    0 => 16,
                    1 => 2,
                    2 | 3 => u32::from(input.u8()),
                    4 => 1,
                    5 => input.u32(),
                    6 => 44,
                    7 => 512,
                    8 => 12,
                    _ => u32::from(input.u16() % 0x2000),
                };
                let write = i >= readable;
                if i == 0 && !write {
                    let hdr = header(q, input);
                    self.write(addr, &hdr);
                } else if !write {
                    let payload = input.chunk(512).to_vec();
                    self.write(addr, &payload);
                }
                descs.push((addr, len, if write { F_WRITE } else { 0 }));
            }
            let head = next_free;
            if through_table {
                let at = DATA + (u64::from(input.u16()) * 16) % (MEM_SIZE - DATA - 0x100);
                for (i, (addr, len, flags)) in descs.iter().enumerate() {
                    let last = i + 1 == descs.len();
                    let flags = flags | if last { 0 } else { F_NEXT };
                    self.write_desc(at + i as u64 * 16, *addr, *len, flags, i as u16 + 1);
                }
                self.write_desc(table + u64::from(head) * 16, at, n as u32 * 16, F_INDIRECT, 0);
            } else {
                for (i, (addr, len, flags)) in descs.iter().enumerate() {
                    let idx = head + i as u16;
                    let last = i + 1 == descs.len();
                    let flags = flags | if last { 0 } else { F_NEXT };
                    self.write_desc(table + u64::from(idx) * 16, *addr, *len, flags, idx + 1);
                }
            }
            next_free += used_slots;
            heads.push(head);
        }
        heads
    }

    /// A descriptor table written verbatim from the input; returns the heads put in the ring.
    fn raw_table(&mut self, input: &mut Input, table: u64, size: u16) -> Vec<u16> {
        for i in 0..u64::from(size).min(64) {
            let addr = match input.u8() % 8 {
                0 => input.u64(),
                1 => MEM_SIZE - u64::from(input.u8()),
                _ => DATA + (u64::from(input.u16()) * 8) % (MEM_SIZE - DATA),
            };
            let len = if input.u8() & 3 == 0 {
                input.u32()
            } else {
                u32::from(input.u16() % 0x1000)
            };
            let flags = input.u16() & if input.u8() == 0 { 0xffff } else { 0x7 };
            let next = input.u16() % (size * 2);
            self.write_desc(table + i * 16, addr, len, flags, next);
            let fill = input.chunk(256).to_vec();
            self.write(DATA + (u64::from(input.u16()) * 8) % (MEM_SIZE - DATA), &fill);
        }
        (0..input.below(u32::from(size) + 1))
            .map(|_| {
                if input.u8() == 0 {
                    input.u16()
                } else {
                    input.u16() % size
                }
            })
            .collect()
    }

    /// Makes `n` more entries available on queue `q` (whatever the ring holds there).
    pub fn publish_more(&mut self, q: usize, n: u16) {
        let Some(size) = self.queues.get(q).map(|queue| queue.size()) else {
            return;
        };
        let n = n.min(size);
        let Some(idx) = self.avail_idx.get_mut(q) else { return };
        *idx = idx.wrapping_add(n);
        let idx = *idx;
        let base = q as u64 * RING_SPAN + 0x1000;
        self.write(base + 2, &idx.to_le_bytes());
    }

    /// Writes into guest memory, clipped at its end.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        let room = MEM_SIZE.saturating_sub(addr) as usize;
        let _ = self
            .mem
            .write_slice(&bytes[..bytes.len().min(room)], GuestAddress(addr));
    }

    fn write_desc(&self, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.write(at, &raw);
    }

    /// The memory and every queue, lent the way a transport lends them.
    pub fn parts(&mut self) -> (&GuestMemory, QueueSet<'_>) {
        (&self.mem, QueueSet::from_slice(&mut self.queues))
    }
}
