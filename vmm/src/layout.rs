//! The x86_64 guest physical memory map hull builds: where boot structures, the kernel, the command line
//! and the initrd go, and where RAM stops for the 32-bit MMIO hole.

/// Global descriptor table (64-bit boot).
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (empty; 64-bit boot).
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries, right after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Linux `boot_params` (the zero page).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page tables for the 64-bit boot: PML4, PDPTE, PDE.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// MP table (Intel MultiProcessor Specification), in the EBDA.
pub const MPTABLE_START: u64 = 0x9fc00;
/// Start of the EBDA / legacy hole (reserved up to 1 MiB).
pub const EBDA_START: u64 = 0x9fc00;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted (Linux's COMMAND_LINE_SIZE on x86 is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Where kernels are loaded: 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole: RAM stops below it and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_SIZE: u64 = 0x4000_0000;
/// Firecracker's boot-timer MMIO address: a guest write of 123 here marks "booted".
pub const BOOT_TIMER_ADDR: u64 = 0xc000_0000;
/// virtio-mmio devices: one 4 KiB window each, after the boot timer page.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// virtio-pci BARs (`--enable-pci`): one 32 KiB BAR per device from here, assigned by hull (there is no
/// firmware; Linux keeps assigned BARs). Inside the MMIO hole, which the e820 map leaves out of RAM, and
/// below the IO APIC.
pub const PCI_BAR_START: u64 = 0xe000_0000;
/// The local APIC and IO APIC (in the MMIO hole, as hardware has them).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// The first IRQ given to virtio devices (0-4 are legacy: timer, keyboard, cascade, COM2, COM1).
pub const IRQ_BASE: u32 = 5;
pub const IRQ_MAX: u32 = 23;
/// KVM's TSS and identity-map pages (needed on Intel), placed just below the MMIO hole's top part.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;
