//! Pmem devices in the VMM: where each backing file goes in guest physical memory, one after another from
//! the end of RAM (never below 4 GiB, so never in the 32-bit MMIO hole), each 2 MiB-aligned; the file's
//! mapping (`devices::virtio::pmem::PmemBacking`) becomes a KVM memory slot there, and the device core
//! tells the guest driver the address and size. The root pmem device goes first and is `/dev/pmem0`.
//!
//! The regions are not RAM: they stay out of the e820 map, the guest's pmem driver claims them.

use devices::virtio::pmem::{BackingError, Pmem, PmemBacking, PMEM_ALIGN};
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::config::MicroVmConfig;
use crate::layout::{MMIO_HOLE_SIZE, MMIO_HOLE_START};
use crate::memory::GuestMemoryMmap;
use crate::virtio_devices::DeviceCore;

/// Putting a pmem device into the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum PmemError {
    #[error("pmem device {id}: {source}")]
    Backing {
        id: String,
        #[source]
        source: BackingError,
    },
    #[error("pmem device {id}: KVM refused memory slot {slot} ({size:#x} bytes at {addr:#x}): {source}")]
    KvmSlot {
        id: String,
        slot: u32,
        addr: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
}

/// The first guest physical address for pmem: the end of RAM, or 4 GiB for a guest whose RAM ends below
/// the MMIO hole, rounded up to 2 MiB.
pub fn base_address(mem: &GuestMemoryMmap) -> u64 {
    let ram_end = mem
        .iter()
        .map(|r| r.start_addr().raw_value() + r.len())
        .max()
        .unwrap_or(0);
    ram_end
        .max(MMIO_HOLE_START + MMIO_HOLE_SIZE)
        .next_multiple_of(PMEM_ALIGN)
}

/// Maps every configured pmem file, gives each a KVM slot after the RAM slots, and returns the device
/// cores in attachment order (the root device first) and the `root=` entry when one is the root device.
pub fn attach_slots(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &MicroVmConfig,
) -> Result<(Vec<DeviceCore>, Option<String>), PmemError> {
    let mut next = base_address(mem);
    let mut cores = Vec::new();
    let mut root = None;
    for (index, pmem) in config.pmem_in_attach_order().enumerate() {
        let backing = PmemBacking::map(&pmem.path_on_host, pmem.read_only).map_err(|source| PmemError::Backing {
            id: pmem.id.clone(),
            source,
        })?;
        let slot = (mem.num_regions() + index) as u32;
        let entry = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: next,
            memory_size: backing.len(),
            userspace_addr: backing.host_addr(),
        };
        // SAFETY: the mapping lives in the device core, which the VM keeps until its vCPUs have stopped.
        unsafe { vm.set_user_memory_region(entry) }.map_err(|source| PmemError::KvmSlot {
            id: pmem.id.clone(),
            slot,
            addr: next,
            size: entry.memory_size,
            source,
        })?;
        tracing::info!(id = %pmem.id, addr = format_args!("{next:#x}"), size = backing.len(), read_only = pmem.read_only, "pmem device mapped");
        if pmem.root_device {
            let mode = if pmem.read_only { "ro" } else { "rw" };
            root = Some(format!("root=/dev/pmem{index} {mode} rootflags=dax"));
        }
        let len = backing.len();
        cores.push(DeviceCore {
            label: format!("pmem:{}", pmem.id),
            core: Box::new(Pmem::new(backing, next, pmem.read_only)),
            drive: None,
            iface: None,
        });
        next += len;
    }
    Ok((cores, root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HugePages;

    #[test]
    fn pmem_starts_above_ram_and_the_mmio_hole() {
        let small = crate::memory::create_guest_memory(64, HugePages::None).unwrap();
        assert_eq!(base_address(&small), 1 << 32);
    }
}
