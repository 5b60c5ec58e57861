//! What the balloon's queues carry, parsed from guest memory: the inflate and deflate queues hold arrays of
//! little-endian 32-bit page frame numbers, the statistics queue an array of 10-byte `(u16 tag, u64 value)`
//! entries. Both are bounded here, whatever length the chain claims.

use crate::virtio::chain::{ChainError, ParsedChain};
use crate::virtio::GuestMemory;

/// Most PFNs taken from one chain (the Linux driver sends at most 256 per buffer).
pub const MAX_PFNS_PER_CHAIN: usize = 4096;
/// Size of one statistics entry.
pub const STAT_ENTRY_LEN: u64 = 10;
/// Most statistics entries read from one buffer.
pub const MAX_STAT_ENTRIES: usize = 64;
/// Statistics tags the device knows (virtio spec 5.5.6.3, and Linux 6.12's additions up to 15).
pub const STAT_TAGS: usize = 16;

/// Reads the chain's readable part as PFNs (a trailing partial entry is ignored), at most
/// [`MAX_PFNS_PER_CHAIN`].
pub fn read_pfns(chain: &ParsedChain, mem: &GuestMemory) -> Result<Vec<u32>, ChainError> {
    let count = ((chain.readable_len() / 4) as usize).min(MAX_PFNS_PER_CHAIN);
    let mut raw = vec![0u8; count * 4];
    chain.read_at(mem, 0, &mut raw)?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Groups PFNs into runs of consecutive pages, in the order given: `(first pfn, page count)`.
pub fn page_runs(pfns: &[u32]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &pfn in pfns {
        let pfn = u64::from(pfn);
        match runs.last_mut() {
            Some((first, count)) if *first + *count == pfn => *count += 1,
            _ => runs.push((pfn, 1)),
        }
    }
    runs
}

/// Reads statistics entries from the chain's readable part: `values[tag]` for every known tag present
/// (the last entry of a tag wins; unknown tags are ignored).
pub fn read_stats(chain: &ParsedChain, mem: &GuestMemory) -> Result<[Option<u64>; STAT_TAGS], ChainError> {
    let count = ((chain.readable_len() / STAT_ENTRY_LEN) as usize).min(MAX_STAT_ENTRIES);
    let mut raw = vec![0u8; count * STAT_ENTRY_LEN as usize];
    chain.read_at(mem, 0, &mut raw)?;
    let mut values = [None; STAT_TAGS];
    for entry in raw.chunks_exact(STAT_ENTRY_LEN as usize) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]) as usize;
        let mut value = [0u8; 8];
        value.copy_from_slice(&entry[2..10]);
        if tag < STAT_TAGS {
            values[tag] = Some(u64::from_le_bytes(value));
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::test_utils::{Desc, GuestQueue};

    #[test]
    fn runs_join_consecutive_pages_only() {
        assert_eq!(page_runs(&[5, 6, 7, 9, 10, 3]), vec![(5, 3), (9, 2), (3, 1)]);
        assert_eq!(page_runs(&[]), vec![]);
        assert_eq!(page_runs(&[u32::MAX, 0]), vec![(u64::from(u32::MAX), 1), (0, 1)]);
    }

    #[test]
    fn pfns_and_stats_are_bounded_and_parsed_little_endian() {
        let mut q = GuestQueue::new(8);
        q.mem_write(0x10_000, &[1, 0, 0, 0, 2, 1, 0, 0, 9]);
        q.add_chain(&[Desc::read(0x10_000, 9)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        assert_eq!(read_pfns(&chain, q.mem()).unwrap(), vec![1, 0x102]);

        let mut raw = Vec::new();
        for (tag, value) in [(4u16, 1000u64), (99, 5), (5, 4096), (4, 2000)] {
            raw.extend_from_slice(&tag.to_le_bytes());
            raw.extend_from_slice(&value.to_le_bytes());
        }
        q.mem_write(0x20_000, &raw);
        q.add_chain(&[Desc::read(0x20_000, raw.len() as u32 + 3)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        let stats = read_stats(&chain, q.mem()).unwrap();
        assert_eq!((stats[4], stats[5], stats[0]), (Some(2000), Some(4096), None));

        // A chain claiming 4 GiB of PFNs is read only up to the cap (and fails if that is not in memory).
        q.add_chain(&[Desc::read(0x30_000, u32::MAX)]);
        let chain = ParsedChain::parse(q.pop()).unwrap();
        assert_eq!(read_pfns(&chain, q.mem()).unwrap().len(), MAX_PFNS_PER_CHAIN);
    }
}
