//! Putting the guest's software in memory: the kernel (ELF vmlinux through its PVH entry or the 64-bit
//! Linux boot protocol, or a bzImage), the initrd, the command line, the e820 memory map, and the boot
//! structure the entry point expects (`boot_params` for Linux, `hvm_start_info` for PVH).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::*;
use crate::memory::{low_ram_end, GuestMemoryMmap};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// A bzImage's 64-bit entry point is 0x200 past the start of its protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel { path: String, source: std::io::Error },
    #[error("kernel {path} is neither a loadable ELF nor a bzImage (ELF: {elf}; bzImage: {bzimage})")]
    LoadKernel { path: String, elf: String, bzimage: String },
    #[error("cannot read initrd {path}: {source}")]
    ReadInitrd { path: String, source: std::io::Error },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooBig { path: String, size: u64 },
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("cannot write boot structures into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 32-bit protected mode, paging off, %ebx = `hvm_start_info`.
    Pvh(GuestAddress),
    /// 64-bit long mode with identity paging, %rsi = `boot_params`.
    Linux64(GuestAddress),
}

impl EntryPoint {
    pub fn addr(&self) -> GuestAddress {
        match self {
            EntryPoint::Pvh(a) | EntryPoint::Linux64(a) => *a,
        }
    }
}

pub struct LoadedKernel {
    pub entry: EntryPoint,
    /// A bzImage's setup header, to copy into `boot_params`.
    pub setup_header: Option<setup_header>,
    /// First guest address after the kernel image.
    pub end: u64,
}

/// Loads an ELF vmlinux (preferring its PVH entry) or a bzImage at 1 MiB and up.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: shown.clone(),
        source,
    })?;
    let elf_err = match Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => {
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh(addr),
                _ => EntryPoint::Linux64(r.kernel_load),
            };
            return Ok(LoadedKernel {
                entry,
                setup_header: None,
                end: r.kernel_load.raw_value() + r.kernel_end,
            });
        }
        Err(e) => e.to_string(),
    };
    file.seek(SeekFrom::Start(0)).map_err(|source| BootError::OpenKernel {
        path: shown.clone(),
        source,
    })?;
    match BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => Ok(LoadedKernel {
            entry: EntryPoint::Linux64(r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET)),
            setup_header: r.setup_header,
            end: r.kernel_load.raw_value() + r.kernel_end,
        }),
        Err(e) => Err(BootError::LoadKernel {
            path: shown,
            elf: elf_err,
            bzimage: e.to_string(),
        }),
    }
}

/// Where the initrd went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdRegion {
    pub addr: GuestAddress,
    pub size: u64,
}

/// Loads the initrd at the top of low RAM, page aligned, above the kernel.
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel_end: u64) -> Result<InitrdRegion, BootError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::ReadInitrd {
        path: shown.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::ReadInitrd {
            path: shown.clone(),
            source,
        })?
        .len();
    let too_big = || BootError::InitrdTooBig {
        path: shown.clone(),
        size,
    };
    let top = low_ram_end(mem);
    let addr = top.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end.max(HIMEM_START) {
        return Err(too_big());
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::ReadInitrd {
            path: shown.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(InitrdRegion {
        addr: GuestAddress(addr),
        size,
    })
}

/// The command line: the user's kernel parameters, then what the machine needs (`extra`), then whatever
/// the user put after ` -- ` (arguments for init, which must stay last).
pub fn build_cmdline(user: &str, extra: &[&str]) -> Result<Cmdline, BootError> {
    let (kernel_part, init_part) = match user.split_once(" -- ") {
        Some((k, i)) => (k, Some(i)),
        None if user.trim_start().starts_with("-- ") => ("", user.trim_start().strip_prefix("-- ")),
        None => (user, None),
    };
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    for part in std::iter::once(kernel_part)
        .chain(extra.iter().copied())
        .filter(|p| !p.trim().is_empty())
    {
        cmdline
            .insert_str(part.trim())
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    if let Some(init_args) = init_part {
        cmdline
            .insert_str("--")
            .map_err(|e| BootError::Cmdline(e.to_string()))?;
        if !init_args.trim().is_empty() {
            cmdline
                .insert_str(init_args.trim())
                .map_err(|e| BootError::Cmdline(e.to_string()))?;
        }
    }
    Ok(cmdline)
}

pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<u32, BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();
    Ok(len as u32)
}

/// One e820 entry: address, size, type.
pub type E820Entry = (u64, u64, u32);

/// The memory map the guest is given: low RAM up to the EBDA, the EBDA..1 MiB legacy area reserved
/// (the MP table lives there), RAM from 1 MiB, and RAM above 4 GiB when the guest is that large.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<E820Entry> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Writes `boot_params` (the zero page) for the 64-bit Linux boot protocol.
pub fn write_linux_boot_params(
    mem: &GuestMemoryMmap,
    header: Option<setup_header>,
    cmdline_len: u32,
    initrd: Option<InitrdRegion>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some(rd) = initrd {
        params.hdr.ramdisk_image = rd.addr.raw_value() as u32;
        params.hdr.ramdisk_size = rd.size as u32;
    }
    let map = e820_map(mem);
    for (slot, (addr, size, kind)) in params.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::Write)
}

/// Writes `hvm_start_info`, its memory map and the initrd module entry for the PVH entry point.
pub fn write_pvh_start_info(mem: &GuestMemoryMmap, initrd: Option<InitrdRegion>) -> Result<(), BootError> {
    let map = e820_map(mem);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *kind,
            reserved: 0,
        };
        mem.write_obj(e, GuestAddress(PVH_MEMMAP_START + i as u64 * entry_size))
            .map_err(BootError::Write)?;
    }
    if let Some(rd) = initrd {
        let modlist = PVH_MEMMAP_START + map.len() as u64 * entry_size;
        let module = hvm_modlist_entry {
            paddr: rd.addr.raw_value(),
            size: rd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(modlist)).map_err(BootError::Write)?;
        info.nr_modules = 1;
        info.modlist_paddr = modlist;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(BootError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn e820_reserves_the_legacy_area_and_follows_the_memory_size() {
        let mem = create_guest_memory(128, crate::config::HugePages::None).unwrap();
        let map = e820_map(&mem);
        assert_eq!(map[0], (0, EBDA_START, E820_RAM));
        assert_eq!(map[1], (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED));
        assert_eq!(map[2], (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM));
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn e820_continues_above_4g_for_large_guests() {
        let mem = create_guest_memory(4096, crate::config::HugePages::None).unwrap();
        let map = e820_map(&mem);
        assert_eq!(map[2], (HIMEM_START, MMIO_HOLE_START - HIMEM_START, E820_RAM));
        assert_eq!(map[3], (1 << 32, (4096u64 << 20) - MMIO_HOLE_START, E820_RAM));
    }

    #[test]
    fn linux_boot_params_carry_cmdline_initrd_and_e820() {
        let mem = create_guest_memory(64, crate::config::HugePages::None).unwrap();
        let rd = InitrdRegion {
            addr: GuestAddress(0x300_0000),
            size: 0x1234,
        };
        let cmdline = build_cmdline("console=ttyS0", &["reboot=k", ""]).unwrap();
        let len = write_cmdline(&mem, &cmdline).unwrap();
        assert_eq!(len as usize, "console=ttyS0 reboot=k".len());
        write_linux_boot_params(&mem, None, len, Some(rd)).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        assert_eq!(({ last.addr }, { last.size }), (HIMEM_START, (64 << 20) - HIMEM_START));
        let mut text = vec![0u8; len as usize + 1];
        mem.read_slice(&mut text, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&text, b"console=ttyS0 reboot=k\0");
    }

    #[test]
    fn machine_parameters_go_before_the_init_arguments() {
        let c = build_cmdline("console=ttyS0 -- --verbose x", &["reboot=k"]).unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 reboot=k -- --verbose x"
        );
        let c = build_cmdline("-- single", &["reboot=k"]).unwrap();
        assert_eq!(c.as_cstring().unwrap().to_str().unwrap(), "reboot=k -- single");
        let c = build_cmdline("quiet", &["a=1", "b=2"]).unwrap();
        assert_eq!(c.as_cstring().unwrap().to_str().unwrap(), "quiet a=1 b=2");
    }

    #[test]
    fn pvh_start_info_points_at_memmap_and_module() {
        let mem = create_guest_memory(32, crate::config::HugePages::None).unwrap();
        let rd = InitrdRegion {
            addr: GuestAddress(0x100_0000),
            size: 4096,
        };
        write_pvh_start_info(&mem, Some(rd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x100_0000, 4096));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(info.memmap_paddr + 2 * 24)).unwrap();
        assert_eq!(
            (e.addr, e.size, e.type_),
            (HIMEM_START, (32 << 20) - HIMEM_START, E820_RAM)
        );
        // The module list must not overlap the start info or run into the zero page.
        assert!(info.modlist_paddr + 32 <= ZERO_PAGE_START);
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory_and_too_big_is_refused() {
        let dir = std::env::temp_dir().join(format!("hull-initrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small");
        std::fs::write(&small, vec![7u8; 5000]).unwrap();
        let mem = create_guest_memory(32, crate::config::HugePages::None).unwrap();
        let rd = load_initrd(&mem, &small, 0x20_0000).unwrap();
        assert_eq!(rd.size, 5000);
        assert_eq!(rd.addr.raw_value() & 0xfff, 0);
        assert!(rd.addr.raw_value() + 5000 <= 32 << 20);
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, rd.addr.unchecked_add(4999)).unwrap();
        assert_eq!(b[0], 7);
        let big = dir.join("big");
        std::fs::write(&big, vec![0u8; 33 << 20]).unwrap();
        assert!(matches!(
            load_initrd(&mem, &big, 0x20_0000),
            Err(BootError::InitrdTooBig { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_kernel_is_refused_with_both_reasons() {
        let p = std::env::temp_dir().join(format!("hull-garbage-kernel-{}", std::process::id()));
        std::fs::write(&p, vec![0x41u8; 8192]).unwrap();
        let mem = create_guest_memory(16, crate::config::HugePages::None).unwrap();
        let e = load_kernel(&mem, &p).err().unwrap().to_string();
        assert!(e.contains("neither a loadable ELF nor a bzImage"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
