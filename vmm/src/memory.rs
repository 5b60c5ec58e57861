//! Guest RAM: how much goes below the 32-bit MMIO hole and how much above 4 GiB, the anonymous
//! mappings behind it (vm-memory), and their registration as KVM memory slots.

use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{MMIO_HOLE_SIZE, MMIO_HOLE_START};

/// The guest's physical memory.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {mib} MiB of guest memory: {reason}")]
    Mmap { mib: usize, reason: String },
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
pub fn create_guest_memory(mem_mib: usize) -> Result<GuestMemoryMmap, MemoryError> {
    let bytes = (mem_mib as u64) << 20;
    GuestMemoryMmap::from_ranges(&ram_ranges(bytes)).map_err(|e| MemoryError::Mmap {
        mib: mem_mib,
        reason: e.to_string(),
    })
}

/// Tells KVM about every RAM region, one slot each.
pub fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let entry = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
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
        let mem = create_guest_memory(64).unwrap();
        assert_eq!(low_ram_end(&mem), 64 << 20);
    }
}
