//! Guest RAM: how much goes below the 32-bit MMIO hole and how much above 4 GiB, the anonymous
//! mappings behind it (vm-memory; 4 KiB pages, or 2 MiB hugetlb pages with `huge_pages: "2M"`), and
//! their registration as KVM memory slots.

use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::config::HugePages;
use crate::layout::{MMIO_HOLE_SIZE, MMIO_HOLE_START};

/// The guest's physical memory.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {mib} MiB of guest memory: {reason}")]
    Mmap { mib: usize, reason: String },
    #[error(
        "cannot map {mib} MiB of guest memory on 2 MiB huge pages ({reason}): the host has {free} free; \
         reserve more with vm.nr_hugepages (/proc/sys/vm/nr_hugepages)"
    )]
    NoHugePages { mib: usize, free: u64, reason: String },
    #[error("KVM refused memory slot {slot} ({size:#x} bytes at {addr:#x}): {source}")]
    KvmSlot {
        slot: u32,
        addr: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
}

/// RAM ranges for a guest of `mem_bytes`: up to the MMIO hole, then the rest from 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, usize)> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if mem_bytes > MMIO_HOLE_START {
        ranges.push((
            GuestAddress(MMIO_HOLE_START + MMIO_HOLE_SIZE),
            (mem_bytes - MMIO_HOLE_START) as usize,
        ));
    }
    ranges
}

/// Maps the guest's RAM in this process.
pub fn create_guest_memory(mem_mib: usize, huge_pages: HugePages) -> Result<GuestMemoryMmap, MemoryError> {
    let bytes = (mem_mib as u64) << 20;
    match huge_pages {
        HugePages::None => GuestMemoryMmap::from_ranges(&ram_ranges(bytes)).map_err(|e| MemoryError::Mmap {
            mib: mem_mib,
            reason: e.to_string(),
        }),
        HugePages::Hugetlbfs2M => create_hugetlb_memory(mem_mib, bytes),
    }
}

/// Private anonymous MAP_HUGETLB mappings of 2 MiB pages. Without MAP_NORESERVE the kernel reserves every
/// page at mmap time, so a host short of huge pages fails here, with a message, rather than the guest
/// dying of SIGBUS later. (hull's own devices read guest memory in this process; nothing needs its fd.)
fn create_hugetlb_memory(mem_mib: usize, bytes: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
    let mut regions = Vec::new();
    for (addr, size) in ram_ranges(bytes) {
        let mapping = vm_memory::MmapRegion::<()>::build(None, size, libc::PROT_READ | libc::PROT_WRITE, flags)
            .map_err(|e| MemoryError::NoHugePages {
                mib: mem_mib,
                free: free_huge_pages_2m(),
                reason: e.to_string(),
            })?;
        let region = vm_memory::GuestRegionMmap::new(mapping, addr).ok_or_else(|| MemoryError::Mmap {
            mib: mem_mib,
            reason: format!("region at {:#x} overflows the address space", addr.raw_value()),
        })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Mmap {
        mib: mem_mib,
        reason: e.to_string(),
    })
}

/// Free 2 MiB huge pages on the host (0 when unknown).
pub fn free_huge_pages_2m() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Tells KVM about every RAM region, one slot each; with `track_dirty` KVM logs the pages the guest
/// writes (KVM_MEM_LOG_DIRTY_PAGES), for diff snapshots.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, track_dirty: bool) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let entry = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: if track_dirty {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region's mapping lives as long as `mem`, which the VM keeps until it is dropped.
        unsafe { vm.set_user_memory_region(entry) }.map_err(|source| MemoryError::KvmSlot {
            slot,
            addr: entry.guest_phys_addr,
            size: entry.memory_size,
            source,
        })?;
    }
    Ok(())
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    mem.iter()
        .next()
        .map(|r| r.start_addr().raw_value() + r.len())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_stay_below_the_hole_and_big_ones_continue_at_4g() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START as usize));
        assert_eq!(r[1], (GuestAddress(1 << 32), ((4u64 << 30) - MMIO_HOLE_START) as usize));
        let mem = create_guest_memory(64, HugePages::None).unwrap();
        assert_eq!(low_ram_end(&mem), 64 << 20);
    }

    /// With no free huge pages the mapping fails with a message naming vm.nr_hugepages; with them, the
    /// guest memory is hugetlb-backed (the end-to-end test reserves pages and checks smaps).
    #[test]
    fn hugetlb_memory_needs_reserved_pages() {
        if free_huge_pages_2m() >= 8 {
            let mem = create_guest_memory(16, HugePages::Hugetlbfs2M).unwrap();
            assert_eq!(low_ram_end(&mem), 16 << 20);
            return;
        }
        let e = create_guest_memory(16, HugePages::Hugetlbfs2M).unwrap_err().to_string();
        assert!(e.contains("vm.nr_hugepages"), "{e}");
    }
}
