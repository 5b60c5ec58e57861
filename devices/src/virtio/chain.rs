//! Turns a descriptor chain the driver offered into a validated list of device-readable and
//! device-writable regions, and gives byte-offset access across them (the device must not assume any
//! framing: a header may be split over descriptors, data and status may share one). [`Chains`] is the
//! one loop every device core runs over a queue: pop a chain, check its structure, answer it, return it to
//! the used ring, with ring and chain corruption turned into a `DeviceError` for the transport.
//!
//! Owns: the structural checks every device needs (chain terminates, readable before writable, no
//! overflowing lengths). Never trusts: descriptor addresses, lengths, flags or `next` indices; each region
//! is bounds-checked against guest memory when it is touched, and every access reports a typed error.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory as GuestMemoryT};

use super::{DeviceError, GuestMemory, QueueSignals};

/// Why a chain cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head index named no descriptor, or its table is unreadable.
    #[error("the chain has no readable descriptor")]
    Empty,
    /// The chain loops, runs past the queue size, points at an unreadable descriptor, or its indirect
    /// table is invalid.
    #[error("the chain does not terminate (loop, bad next index or bad indirect table)")]
    Unterminated,
    /// A device-readable descriptor follows a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// An access past the end of the readable (or writable) part.
    #[error("access of {len} bytes at offset {offset} exceeds the {available}-byte {kind} part")]
    OutOfChain {
        kind: &'static str,
        offset: u64,
        len: u64,
        available: u64,
    },
    /// A region lies (partly) outside guest memory.
    #[error("descriptor region {addr:#x}+{len} is outside guest memory")]
    OutOfMemory { addr: u64, len: u64 },
}

/// One descriptor's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A chain whose structure has been checked. Regions are still unverified against guest memory.
#[derive(Debug, Clone)]
pub struct ParsedChain {
    /// Index of the head descriptor (what goes into the used ring).
    pub head: u16,
    readable: Vec<Region>,
    writable: Vec<Region>,
    readable_len: u64,
    writable_len: u64,
}

impl ParsedChain {
    /// Walks `chain` (bounded by the queue size, indirect tables included) and checks its structure.
    pub fn parse<M>(chain: DescriptorChain<M>) -> Result<Self, ChainError>
    where
        M: Deref,
        M::Target: GuestMemoryT,
    {
        let head = chain.head_index();
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut readable_len = 0u64;
        let mut writable_len = 0u64;
        let mut last: Option<Descriptor> = None;
        // The iterator stops silently on a loop (ttl), an out-of-range next index, an unreadable
        // descriptor or a bad indirect table. In every such case the last descriptor it yielded still
        // has NEXT set, which is how a broken chain is told apart from a finished one.
        for desc in chain {
            if desc.is_write_only() {
                writable_len += u64::from(desc.len());
                writable.push(Region {
                    addr: desc.addr(),
                    len: desc.len(),
                });
            } else {
                if !writable.is_empty() {
                    return Err(ChainError::ReadableAfterWritable);
                }
                readable_len += u64::from(desc.len());
                readable.push(Region {
                    addr: desc.addr(),
                    len: desc.len(),
                });
            }
            last = Some(desc);
        }
        match last {
            None => Err(ChainError::Empty),
            Some(d) if d.has_next() => Err(ChainError::Unterminated),
            Some(_) => Ok(ParsedChain {
                head,
                readable,
                writable,
                readable_len,
                writable_len,
            }),
        }
    }

    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Reads `buf.len()` bytes at `offset` of the readable part.
    pub fn read_at(&self, mem: &GuestMemory, offset: u64, buf: &mut [u8]) -> Result<(), ChainError> {
        let mut done = 0usize;
        for (addr, n) in self.span(Part::Readable, offset, buf.len() as u64)? {
            mem.read_slice(&mut buf[done..done + n], addr)
                .map_err(|_| out_of_memory(addr, n))?;
            done += n;
        }
        Ok(())
    }

    /// Writes `buf` at `offset` of the writable part.
    pub fn write_at(&self, mem: &GuestMemory, offset: u64, buf: &[u8]) -> Result<(), ChainError> {
        let mut done = 0usize;
        for (addr, n) in self.span(Part::Writable, offset, buf.len() as u64)? {
            mem.write_slice(&buf[done..done + n], addr)
                .map_err(|_| out_of_memory(addr, n))?;
            crate::dirty_log::mark(addr.0, n);
            done += n;
        }
        Ok(())
    }

    /// Whether `[offset, offset+len)` of the writable part lies in guest memory (writes nothing).
    pub fn check_writable(&self, mem: &GuestMemory, offset: u64, len: u64) -> Result<(), ChainError> {
        self.check(Part::Writable, mem, offset, len)
    }

    /// Whether `[offset, offset+len)` of the readable part lies in guest memory.
    pub fn check_readable(&self, mem: &GuestMemory, offset: u64, len: u64) -> Result<(), ChainError> {
        self.check(Part::Readable, mem, offset, len)
    }

    fn check(&self, part: Part, mem: &GuestMemory, offset: u64, len: u64) -> Result<(), ChainError> {
        for (addr, n) in self.span(part, offset, len)? {
            if !vm_memory::GuestMemoryBackend::check_range(mem, addr, n) {
                return Err(out_of_memory(addr, n));
            }
        }
        Ok(())
    }

    /// The (address, length) pieces covering `[offset, offset+len)` of `regions`.
    fn span(&self, part: Part, offset: u64, len: u64) -> Result<Vec<(GuestAddress, usize)>, ChainError> {
        let (regions, total, kind) = match part {
            Part::Readable => (&self.readable, self.readable_len, "readable"),
            Part::Writable => (&self.writable, self.writable_len, "writable"),
        };
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= total)
            .ok_or(ChainError::OutOfChain {
                kind,
                offset,
                len,
                available: total,
            })?;
        let mut pieces = Vec::new();
        let mut pos = 0u64; // start of the current region within the part
        for r in regions {
            let r_end = pos + u64::from(r.len);
            if r_end > offset && pos < end {
                let from = offset.max(pos);
                let to = end.min(r_end);
                let addr = r.addr.0.checked_add(from - pos).ok_or(ChainError::OutOfMemory {
                    addr: r.addr.0,
                    len: u64::from(r.len),
                })?;
                // `to - from` <= r.len <= u32::MAX, so it fits a usize.
                pieces.push((GuestAddress(addr), (to - from) as usize));
            }
            if r_end >= end {
                break;
            }
            pos = r_end;
        }
        Ok(pieces)
    }
}

/// The chains of one queue during one processing call: what a device core consumes a queue through.
pub struct Chains<'a> {
    queue: &'a mut Queue,
    mem: &'a GuestMemory,
    index: usize,
}

impl<'a> Chains<'a> {
    /// Queue `index` of the device, living in `mem`.
    pub fn new(queue: &'a mut Queue, mem: &'a GuestMemory, index: usize) -> Self {
        Chains { queue, mem, index }
    }

    /// The next chain the driver made available, structurally checked; `None` when the ring is empty.
    pub fn pop(&mut self) -> Result<Option<ParsedChain>, DeviceError> {
        let mut iter = self.queue.iter(self.mem).map_err(|source| DeviceError::InvalidRing {
            queue: self.index,
            source,
        })?;
        let Some(chain) = iter.next() else { return Ok(None) };
        let head = chain.head_index();
        ParsedChain::parse(chain).map(Some).map_err(self.malformed(head))
    }

    /// Gives the chain `pop` returned back to the ring: the next call returns it again.
    pub fn put_back(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Returns chain `head` to the used ring with `len` bytes written into it, and records in `signals`
    /// whether the driver wants an interrupt.
    pub fn complete(&mut self, head: u16, len: u32, signals: &mut QueueSignals) -> Result<(), DeviceError> {
        self.queue
            .add_used(self.mem, head, len)
            .map_err(|source| DeviceError::UsedRing {
                queue: self.index,
                source,
            })?;
        match self.queue.needs_notification(self.mem) {
            Ok(true) => signals.set(self.index),
            Ok(false) => {}
            // An unreadable avail->flags/used_event: notify anyway, the used entry is already there.
            Err(_) => signals.set(self.index),
        }
        Ok(())
    }

    /// Answers every available chain with `answer` (which returns the bytes it wrote into the chain) and
    /// completes it; stops at the first fatal error.
    pub fn serve_all(
        &mut self,
        signals: &mut QueueSignals,
        mut answer: impl FnMut(&ParsedChain) -> Result<u32, DeviceError>,
    ) -> Result<(), DeviceError> {
        while let Some(chain) = self.pop()? {
            let written = answer(&chain)?;
            self.complete(chain.head, written, signals)?;
        }
        Ok(())
    }

    /// The error for chain `head` of this queue being structurally broken (`source` says how).
    pub fn malformed(&self, head: u16) -> impl FnOnce(ChainError) -> DeviceError {
        let queue = self.index;
        move |source| DeviceError::MalformedChain { queue, head, source }
    }

    /// The error for chain `head` of this queue giving the device no place for its answer.
    pub fn unanswerable(&self, head: u16, reason: impl std::fmt::Display) -> DeviceError {
        DeviceError::Unanswerable {
            queue: self.index,
            head,
            reason: reason.to_string(),
        }
    }
}

/// The two parts of a chain, in the order the spec requires them.
#[derive(Clone, Copy)]
enum Part {
    Readable,
    Writable,
}

fn out_of_memory(addr: GuestAddress, len: usize) -> ChainError {
    ChainError::OutOfMemory {
        addr: addr.0,
        len: len as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{Desc, GuestQueue};

    #[test]
    fn split_header_is_read_across_descriptors() {
        let mut q = GuestQueue::new(16);
        q.mem().write_slice(&[1, 2, 3], GuestAddress(0x10_000)).unwrap();
        q.mem().write_slice(&[4, 5], GuestAddress(0x20_000)).unwrap();
        let head = q.add_chain(&[
            Desc::read(0x10_000, 3),
            Desc::read(0x20_000, 2),
            Desc::write(0x30_000, 1),
        ]);
        let chain = q.pop();
        let parsed = ParsedChain::parse(chain).unwrap();
        assert_eq!(parsed.head, head);
        assert_eq!(parsed.readable_len(), 5);
        let mut buf = [0u8; 4];
        parsed.read_at(q.mem(), 1, &mut buf).unwrap();
        assert_eq!(buf, [2, 3, 4, 5]);
        assert!(matches!(
            parsed.read_at(q.mem(), 2, &mut buf),
            Err(ChainError::OutOfChain { .. })
        ));
    }

    #[test]
    fn looping_chain_is_unterminated() {
        let mut q = GuestQueue::new(8);
        q.add_raw_chain(&[(0x10_000, 16, 1 /* NEXT */, 1), (0x10_100, 16, 1, 0)]);
        assert_eq!(ParsedChain::parse(q.pop()).unwrap_err(), ChainError::Unterminated);
    }

    #[test]
    fn next_index_past_queue_is_unterminated() {
        let mut q = GuestQueue::new(8);
        q.add_raw_chain(&[(0x10_000, 16, 1, 200)]);
        assert_eq!(ParsedChain::parse(q.pop()).unwrap_err(), ChainError::Unterminated);
    }

    #[test]
    fn readable_after_writable_is_rejected() {
        let mut q = GuestQueue::new(8);
        q.add_chain(&[Desc::write(0x10_000, 4), Desc::read(0x20_000, 4)]);
        assert_eq!(
            ParsedChain::parse(q.pop()).unwrap_err(),
            ChainError::ReadableAfterWritable
        );
    }

    #[test]
    fn region_outside_memory_fails_on_access_only() {
        let mut q = GuestQueue::new(8);
        q.add_chain(&[Desc::read(0xffff_ffff_0000, 16), Desc::write(0x20_000, 1)]);
        let parsed = ParsedChain::parse(q.pop()).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(
            parsed.read_at(q.mem(), 0, &mut buf),
            Err(ChainError::OutOfMemory { .. })
        ));
        parsed.write_at(q.mem(), 0, &[7]).unwrap();
    }

    #[test]
    fn address_overflow_is_out_of_memory() {
        let mut q = GuestQueue::new(8);
        q.add_chain(&[Desc::read(u64::MAX - 4, 16)]);
        let parsed = ParsedChain::parse(q.pop()).unwrap();
        let mut buf = [0u8; 16];
        assert!(parsed.read_at(q.mem(), 0, &mut buf).is_err());
    }
}
