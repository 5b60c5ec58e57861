//! Guest memory in a snapshot: writing it to the memory file (all of it, or only the pages written since
//! the last snapshot) and mapping it back from the file.
//!
//! The memory file is the guest's RAM regions one after another (`MemoryRegionState::file_offset`).
//! A diff file has the same size with only the dirty pages written (the rest are holes), so it can be
//! laid onto a full file page by page (`merge_diff`). Dirty pages are the union of KVM's dirty log
//! (guest writes) and the pages hull's own devices wrote into guest memory, which KVM does not log
//! (`devices::dirty_log` and the queues' used rings).
//!
//! Restoring maps the file MAP_PRIVATE: pages are read from the file only when touched, and guest
//! writes stay in this process. The file's size must match the snapshot's layout exactly.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use kvm_ioctls::VmFd;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion};

use super::state::MemoryRegionState;
use crate::memory::GuestMemoryMmap;

/// Page size of guest memory (and of the dirty bitmaps).
pub const PAGE_SIZE: u64 = 4096;

/// The regions of `mem` and where each goes in the memory file.
pub fn layout(mem: &GuestMemoryMmap) -> Vec<MemoryRegionState> {
    let mut offset = 0;
    mem.iter()
        .map(|r| {
            let s = MemoryRegionState {
                guest_addr: r.start_addr().0,
                size: r.len(),
                file_offset: offset,
            };
            offset += r.len();
            s
        })
        .collect()
}

/// The bytes of one region, for writing out.
fn region_bytes(region: &GuestRegionMmap) -> &[u8] {
    // SAFETY: the mapping is `len` bytes and lives as long as `region`; the vCPUs are paused and the
    // devices locked while a snapshot is written, so nothing writes it meanwhile.
    unsafe { std::slice::from_raw_parts(region.as_ptr(), region.len() as usize) }
}

fn create_file(path: &Path, truncate: bool) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(truncate)
        .mode(0o600)
        .open(path)
}

/// Writes all of guest memory to `path`.
pub fn write_full(mem: &GuestMemoryMmap, path: &Path) -> std::io::Result<()> {
    let mut file = create_file(path, true)?;
    for region in mem.iter() {
        file.write_all(region_bytes(region))?;
    }
    file.flush()
}

/// Bitmap of pages written since the last call, one bit per page, per region: KVM's dirty log (the guest's
/// writes; reading it also clears it) and `device_pages`, guest page numbers hull's own code wrote
/// (`devices::dirty_log`, plus the used rings).
pub fn dirty_pages(vm: &VmFd, mem: &GuestMemoryMmap, device_pages: &BTreeSet<u64>) -> std::io::Result<Vec<Vec<u64>>> {
    let mut bitmaps = Vec::new();
    for (slot, region) in mem.iter().enumerate() {
        let len = region.len() as usize;
        let mut bitmap = vm
            .get_dirty_log(slot as u32, len)
            .map_err(|e| std::io::Error::other(format!("KVM_GET_DIRTY_LOG on slot {slot}: {e}")))?;
        let first = region.start_addr().0 / PAGE_SIZE;
        let pages = region.len() / PAGE_SIZE;
        for page in device_pages.range(first..first + pages) {
            let i = (page - first) as usize;
            if let Some(word) = bitmap.get_mut(i / 64) {
                *word |= 1 << (i % 64);
            }
        }
        bitmaps.push(bitmap);
    }
    Ok(bitmaps)
}

/// Writes the pages `dirty` marks to `path`, sized like the whole memory, holes elsewhere. Returns how
/// many pages were written.
pub fn write_diff(mem: &GuestMemoryMmap, dirty: &[Vec<u64>], path: &Path) -> std::io::Result<u64> {
    let file = create_file(path, true)?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total)?;
    let mut offset = 0;
    let mut written = 0;
    for (region, bitmap) in mem.iter().zip(dirty) {
        let bytes = region_bytes(region);
        for (w, word) in bitmap.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                let start = page * PAGE_SIZE;
                if start >= region.len() {
                    break;
                }
                let end = (start + PAGE_SIZE).min(region.len());
                file.write_all_at(&bytes[start as usize..end as usize], offset + start)?;
                written += 1;
            }
        }
        offset += region.len();
    }
    Ok(written)
}

/// Lays the data pages of diff file `diff` onto memory file `base` (the holes of a diff are pages it did
/// not write). Both must have the same size. Returns how many bytes were copied.
pub fn merge_diff(diff: &Path, base: &Path) -> std::io::Result<u64> {
    let src = File::open(diff)?;
    let dst = std::fs::OpenOptions::new().write(true).open(base)?;
    let size = src.metadata()?.len();
    if dst.metadata()?.len() != size {
        return Err(std::io::Error::other(format!(
            "{} has {} bytes and {} has {size}: a diff merges only onto a memory file of its own size",
            base.display(),
            dst.metadata()?.len(),
            diff.display()
        )));
    }
    let fd = std::os::fd::AsRawFd::as_raw_fd(&src);
    let mut copied = 0;
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 1 << 20];
    while (pos as u64) < size {
        // SAFETY: lseek on our own open descriptor.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { size as i64 } else { hole };
        let mut at = data as u64;
        while at < hole as u64 {
            let n = ((hole as u64 - at) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], at)?;
            dst.write_all_at(&buf[..n], at)?;
            at += n as u64;
            copied += n as u64;
        }
        pos = hole;
    }
    dst.sync_all()?;
    Ok(copied)
}

/// Maps guest memory privately from `file` as `regions` lay it out.
pub fn map_private(file: &File, regions: &[MemoryRegionState]) -> Result<GuestMemoryMmap, String> {
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let size = usize::try_from(r.size).map_err(|_| format!("region of {} bytes", r.size))?;
        let clone = file.try_clone().map_err(|e| e.to_string())?;
        let mapping = MmapRegion::<()>::build(
            Some(FileOffset::new(clone, r.file_offset)),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        )
        .map_err(|e| format!("cannot map {size} bytes at file offset {:#x}: {e}", r.file_offset))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
            .ok_or_else(|| format!("region at {:#x} overflows the address space", r.guest_addr))?;
        mapped.push(region);
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_lays_only_its_pages_onto_the_base() {
        let dir = std::env::temp_dir().join(format!("hull-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (base, diff) = (dir.join("base"), dir.join("diff"));
        std::fs::write(&base, vec![1u8; 64 * 4096]).unwrap();
        let f = create_file(&diff, true).unwrap();
        f.set_len(64 * 4096).unwrap();
        f.write_all_at(&[7u8; 4096], 40 * 4096).unwrap();
        drop(f);
        merge_diff(&diff, &base).unwrap();
        let merged = std::fs::read(&base).unwrap();
        assert!(merged[..40 * 4096].iter().all(|b| *b == 1));
        assert!(merged[40 * 4096..41 * 4096].iter().all(|b| *b == 7));
        assert!(merged[41 * 4096..].iter().all(|b| *b == 1));
        std::fs::write(&diff, [0u8; 10]).unwrap();
        assert!(merge_diff(&diff, &base).unwrap_err().to_string().contains("own size"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
