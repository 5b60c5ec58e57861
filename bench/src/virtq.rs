//! The driver side of a split virtqueue (virtio 1.2, 2.7), as the benchmarks need it: a descriptor table,
//! available ring and used ring laid out in a `GuestMemoryMmap`, chains offered from a free list the way a
//! guest driver does, and used entries collected and their descriptors recycled. The device-side
//! `virtio_queue::Queue` (what a transport would hold after the driver configured it) lives here too, so a
//! benchmark can lend it to a device core through `QueueSet`.
//!
//! Trusts nothing the device wrote: used entries naming a descriptor that is not the head of an in-flight
//! chain, or a used index that moved past what was offered, are errors.

use devices::virtio::GuestMemory;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const DESC_SIZE: u64 = 16;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// One buffer of a chain: guest address, length, and whether the device writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    pub device_writes: bool,
}

impl Buffer {
    /// A buffer the device reads (driver → device).
    pub fn readable(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr,
            len,
            device_writes: false,
        }
    }
    /// A buffer the device writes (device → driver).
    pub fn writable(addr: u64, len: u32) -> Buffer {
        Buffer {
            addr,
            len,
            device_writes: true,
        }
    }
}

/// Where the three parts of a ring of `size` entries go, from a 4 KiB-aligned `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub desc_table: u64,
    pub avail: u64,
    pub used: u64,
    /// First byte after the used ring, rounded up to 4 KiB.
    pub end: u64,
}

impl RingLayout {
    pub fn new(base: u64, size: u16) -> RingLayout {
        let n = u64::from(size);
        let desc_table = base;
        let avail = desc_table + n * DESC_SIZE;
        // flags, idx, ring[n], used_event
        let avail_end = avail + 4 + 2 * n + 2;
        let used = align_up(avail_end, 4096);
        // flags, idx, ring[n] of {id: u32, len: u32}, avail_event
        let used_end = used + 4 + 8 * n + 2;
        RingLayout {
            desc_table,
            avail,
            used,
            end: align_up(used_end, 4096),
        }
    }
}

fn align_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// A chain the device returned: its head and the number of bytes the device says it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    pub len: u32,
}

/// A split virtqueue driven from the driver side.
pub struct DriverQueue {
    layout: RingLayout,
    size: u16,
    /// Descriptor indices not part of any offered chain.
    free: Vec<u16>,
    /// For each head in flight, the descriptor indices of its chain.
    in_flight: Vec<Option<Vec<u16>>>,
    avail_idx: u16,
    used_seen: u16,
    queue: Queue,
}

impl DriverQueue {
    /// Lays out a ring of `size` entries (a power of two) at `base` in `mem`, zeroes it, and configures the
    /// device-side queue as a driver's register writes would.
    pub fn new(mem: &GuestMemory, base: u64, size: u16) -> Result<DriverQueue, String> {
        if !size.is_power_of_two() {
            return Err(format!("queue size {size} is not a power of two"));
        }
        let layout = RingLayout::new(base, size);
        let zeros = vec![0u8; (layout.end - base) as usize];
        mem.write_slice(&zeros, GuestAddress(base))
            .map_err(|e| format!("ring at {base:#x} is outside guest memory: {e}"))?;
        let mut queue = Queue::new(size).map_err(|e| format!("virtio_queue::Queue::new({size}): {e}"))?;
        queue.set_size(size);
        queue
            .try_set_desc_table_address(GuestAddress(layout.desc_table))
            .map_err(|e| format!("descriptor table: {e}"))?;
        queue
            .try_set_avail_ring_address(GuestAddress(layout.avail))
            .map_err(|e| format!("available ring: {e}"))?;
        queue
            .try_set_used_ring_address(GuestAddress(layout.used))
            .map_err(|e| format!("used ring: {e}"))?;
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            return Err("virtio_queue rejects the ring layout".into());
        }
        Ok(DriverQueue {
            layout,
            size,
            free: (0..size).rev().collect(),
            in_flight: vec![None; usize::from(size)],
            avail_idx: 0,
            used_seen: 0,
            queue,
        })
    }

    #[cfg(test)]
    pub fn layout(&self) -> RingLayout {
        self.layout
    }

    /// The device-side queue, to lend to a device core.
    pub fn device_queue(&mut self) -> &mut Queue {
        &mut self.queue
    }

    /// Descriptors available for new chains.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains offered and not yet returned.
    #[cfg(test)]
    pub fn chains_in_flight(&self) -> usize {
        self.in_flight.iter().filter(|c| c.is_some()).count()
    }

    /// Writes `bufs` as one chain and publishes its head in the available ring. Returns the head.
    pub fn offer(&mut self, mem: &GuestMemory, bufs: &[Buffer]) -> Result<u16, String> {
        if bufs.is_empty() {
            return Err("an empty chain cannot be offered".into());
        }
        if bufs.len() > self.free.len() {
            return Err(format!("{} descriptors needed, {} free", bufs.len(), self.free.len()));
        }
        let split = self.free.len() - bufs.len();
        let mut indices: Vec<u16> = self.free.split_off(split);
        indices.reverse();
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = if b.device_writes { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = match indices.get(i + 1) {
                Some(&n) => {
                    flags |= VIRTQ_DESC_F_NEXT;
                    n
                }
                None => 0,
            };
            let mut raw = [0u8; DESC_SIZE as usize];
            raw[0..8].copy_from_slice(&b.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&b.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            let at = self.layout.desc_table + u64::from(indices[i]) * DESC_SIZE;
            mem.write_slice(&raw, GuestAddress(at))
                .map_err(|e| format!("writing descriptor: {e}"))?;
        }
        let head = indices[0];
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(self.layout.avail + 4 + 2 * slot))
            .map_err(|e| format!("writing the available ring: {e}"))?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The index goes last: the device may only see the entry once it is complete.
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.layout.avail + 2))
            .map_err(|e| format!("writing the available index: {e}"))?;
        self.in_flight[usize::from(head)] = Some(indices);
        Ok(head)
    }

    /// Collects every used entry the device published since the last call and frees their descriptors.
    pub fn take_used(&mut self, mem: &GuestMemory) -> Result<Vec<Used>, String> {
        let idx = u16::from_le(
            mem.read_obj::<u16>(GuestAddress(self.layout.used + 2))
                .map_err(|e| format!("reading used index: {e}"))?,
        );
        let new = idx.wrapping_sub(self.used_seen);
        let offered = self.avail_idx.wrapping_sub(self.used_seen);
        if new > offered {
            return Err(format!(
                "device moved the used index by {new}, only {offered} chains were in flight"
            ));
        }
        let mut out = Vec::with_capacity(usize::from(new));
        for _ in 0..new {
            let slot = u64::from(self.used_seen % self.size);
            let at = self.layout.used + 4 + 8 * slot;
            let id = u32::from_le(
                mem.read_obj::<u32>(GuestAddress(at))
                    .map_err(|e| format!("reading used ring: {e}"))?,
            );
            let len = u32::from_le(
                mem.read_obj::<u32>(GuestAddress(at + 4))
                    .map_err(|e| format!("reading used ring: {e}"))?,
            );
            let chain = usize::try_from(id)
                .ok()
                .and_then(|i| self.in_flight.get_mut(i))
                .and_then(Option::take)
                .ok_or_else(|| format!("used entry names descriptor {id}, which heads no chain in flight"))?;
            self.free.extend(chain.into_iter().rev());
            out.push(Used { head: id as u16, len });
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueOwnedT;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn layout_is_aligned_and_disjoint() {
        let l = RingLayout::new(0x1000, 256);
        assert_eq!(l.desc_table, 0x1000);
        assert_eq!(l.avail, 0x1000 + 256 * 16);
        assert!(l.used >= l.avail + 4 + 2 * 256 + 2);
        assert_eq!(l.used % 4096, 0);
        assert!(l.end >= l.used + 4 + 8 * 256 + 2);
        assert_eq!(l.end % 4096, 0);
    }

    #[test]
    fn offered_chains_are_seen_by_the_device_side_queue() {
        let mem = mem();
        let mut q = DriverQueue::new(&mem, 0x1000, 16).unwrap();
        let bufs = [
            Buffer::readable(0x8_0000, 16),
            Buffer::writable(0x9_0000, 4096),
            Buffer::writable(0xa_0000, 1),
        ];
        let head = q.offer(&mem, &bufs).unwrap();
        assert_eq!(q.free_descriptors(), 13);

        let chain = q
            .device_queue()
            .iter(&mem)
            .unwrap()
            .next()
            .expect("one chain available");
        assert_eq!(chain.head_index(), head);
        let seen: Vec<Buffer> = chain
            .map(|d| Buffer {
                addr: d.addr().0,
                len: d.len(),
                device_writes: d.is_write_only(),
            })
            .collect();
        assert_eq!(seen, bufs);
    }

    #[test]
    fn used_entries_free_their_descriptors() {
        let mem = mem();
        let mut q = DriverQueue::new(&mem, 0, 8).unwrap();
        // Fill the table: 4 chains of 2.
        let heads: Vec<u16> = (0..4)
            .map(|i| {
                q.offer(
                    &mem,
                    &[Buffer::readable(0x8_0000, 1), Buffer::writable(0x9_0000 + i, 1)],
                )
                .unwrap()
            })
            .collect();
        assert_eq!(q.free_descriptors(), 0);
        assert!(q.offer(&mem, &[Buffer::readable(0, 1)]).is_err());

        // The device completes the second and the first chains, in that order.
        let dq = q.device_queue();
        let mut popped = Vec::new();
        while let Some(c) = dq.iter(&mem).unwrap().next() {
            popped.push(c.head_index());
        }
        assert_eq!(popped, heads);
        dq.add_used(&mem, heads[1], 7).unwrap();
        dq.add_used(&mem, heads[0], 9).unwrap();
        let used = q.take_used(&mem).unwrap();
        assert_eq!(
            used,
            vec![Used { head: heads[1], len: 7 }, Used { head: heads[0], len: 9 }]
        );
        assert_eq!(q.free_descriptors(), 4);
        assert_eq!(q.chains_in_flight(), 2);
        assert!(q.take_used(&mem).unwrap().is_empty());
        // The freed descriptors make new chains.
        q.offer(
            &mem,
            &[
                Buffer::readable(0, 1),
                Buffer::readable(0, 1),
                Buffer::readable(0, 1),
                Buffer::readable(0, 1),
            ],
        )
        .unwrap();
    }

    #[test]
    fn a_lying_device_is_caught() {
        let mem = mem();
        let mut q = DriverQueue::new(&mem, 0, 8).unwrap();
        let head = q.offer(&mem, &[Buffer::readable(0x8_0000, 1)]).unwrap();
        // Used index jumps by 2 with one chain in flight.
        let used = q.layout().used;
        mem.write_obj(2u16.to_le(), GuestAddress(used + 2)).unwrap();
        assert!(q.take_used(&mem).is_err());
        // A used entry naming a descriptor that heads nothing.
        let mut q = DriverQueue::new(&mem, 0, 8).unwrap();
        q.offer(&mem, &[Buffer::readable(0x8_0000, 1)]).unwrap();
        mem.write_obj(((head + 3) as u32).to_le(), GuestAddress(used + 4))
            .unwrap();
        mem.write_obj(1u16.to_le(), GuestAddress(used + 2)).unwrap();
        assert!(q.take_used(&mem).is_err());
    }

    #[test]
    fn indices_wrap_past_u16() {
        let mem = mem();
        let mut q = DriverQueue::new(&mem, 0, 4).unwrap();
        for round in 0..70_000u32 {
            let head = q.offer(&mem, &[Buffer::writable(0x8_0000, 4)]).unwrap();
            let dq = q.device_queue();
            let c = dq
                .iter(&mem)
                .unwrap()
                .next()
                .unwrap_or_else(|| panic!("round {round}: no chain"));
            assert_eq!(c.head_index(), head);
            dq.add_used(&mem, head, 4).unwrap();
            assert_eq!(q.take_used(&mem).unwrap(), vec![Used { head, len: 4 }]);
        }
    }
}
