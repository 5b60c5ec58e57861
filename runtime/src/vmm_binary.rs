//! Which binary a microVM's VMM process runs: `hull-vmm` (the microVM mode alone, a smaller image: less
//! private relocated data per process and less code to map, and a smaller copy in each jail) when it sits
//! beside the `hull` binary and is of the same build, else `hull` itself, which runs the same mode.
//!
//! "The same build" is read, without running either file, from the ELF note both carry (name `hull`, type 1,
//! the build ID, see `hull::BUILD_NOTE`): a `hull-vmm` left from another build, or a file without the
//! note, is not used. Device backends (`hull vhost-user`) always run `hull`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The name of the lean microVM binary beside `hull`.
pub const LEAN_NAME: &str = "hull-vmm";
/// The ELF note that holds the build ID: its name and type.
const NOTE_NAME: &[u8] = b"hull\0";
const NOTE_TYPE: u32 = 1;
/// Bounds on what is read of a file that may be anything.
const MAX_PHNUM: u16 = 128;
const MAX_NOTE_SEGMENT: u64 = 64 * 1024;

/// The binary the VMM process of a microVM runs, given the `hull` binary.
pub fn for_vmm(hull: &Path) -> PathBuf {
    let lean = hull.with_file_name(LEAN_NAME);
    match (build_id(hull), build_id(&lean)) {
        (Some(a), Some(b)) if a == b => lean,
        _ => hull.to_path_buf(),
    }
}

/// The build ID in `path`'s `hull` ELF note; `None` if the file cannot be read, is not a 64-bit
/// little-endian ELF file, or has no such note.
pub fn build_id(path: &Path) -> Option<Vec<u8>> {
    let file = File::open(path).ok()?;
    let mut head = [0u8; 64];
    file.read_exact_at(&mut head, 0).ok()?;
    if head[..4] != *b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().ok()?);
    let phentsize = u16::from_le_bytes(head[0x36..0x38].try_into().ok()?);
    let phnum = u16::from_le_bytes(head[0x38..0x3a].try_into().ok()?);
    if phentsize < 56 || phnum > MAX_PHNUM {
        return None;
    }
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        let at = phoff.checked_add(i.checked_mul(u64::from(phentsize))?)?;
        file.read_exact_at(&mut ph, at).ok()?;
        const PT_NOTE: u32 = 4;
        if u32::from_le_bytes(ph[0..4].try_into().ok()?) != PT_NOTE {
            continue;
        }
        let offset = u64::from_le_bytes(ph[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(ph[32..40].try_into().ok()?);
        if size > MAX_NOTE_SEGMENT {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        file.read_exact_at(&mut notes, offset).ok()?;
        if let Some(id) = find_note(&notes) {
            return Some(id);
        }
    }
    None
}

/// The descriptor of the `hull` note of type 1 in a note segment, trailing zero bytes removed.
fn find_note(mut notes: &[u8]) -> Option<Vec<u8>> {
    let pad4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let namesz = u32::from_le_bytes(notes[0..4].try_into().ok()?) as usize;
        let descsz = u32::from_le_bytes(notes[4..8].try_into().ok()?) as usize;
        let kind = u32::from_le_bytes(notes[8..12].try_into().ok()?);
        let name_end = 12usize.checked_add(pad4(namesz)?)?;
        let desc_end = name_end.checked_add(pad4(descsz)?)?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NOTE_TYPE && notes.get(12..12 + namesz) == Some(NOTE_NAME) {
            let desc = &notes[name_end..name_end + descsz];
            let len = desc.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            return (len > 0).then(|| desc[..len].to_vec());
        }
        notes = &notes[desc_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((name.len() as u32).to_le_bytes());
        v.extend((desc.len() as u32).to_le_bytes());
        v.extend(kind.to_le_bytes());
        v.extend(name);
        v.resize(v.len().next_multiple_of(4), 0);
        v.extend(desc);
        v.resize(v.len().next_multiple_of(4), 0);
        v
    }

    #[test]
    fn the_hull_note_is_found_among_others_and_hostile_segments_are_refused() {
        let mut seg = note(b"GNU\0", 1, &[1, 2, 3, 4]);
        seg.extend(note(b"hull\0", 2, b"wrong type"));
        seg.extend(note(b"hull\0", 1, b"abc-1\0\0\0"));
        assert_eq!(find_note(&seg), Some(b"abc-1".to_vec()));
        assert_eq!(find_note(&note(b"GNU\0", 1, b"x")), None);
        assert_eq!(find_note(&note(b"hull\0", 1, &[0; 8])), None, "an empty ID is no ID");
        // Sizes past the segment's end, or that overflow, end the search.
        let mut bad = note(b"hull\0", 1, b"abc");
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_note(&bad), None);
        assert_eq!(find_note(&bad[..7]), None);
    }

    #[test]
    fn files_that_are_not_elf_have_no_build_id_and_the_vmm_stays_hull() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-vmm-binary-").unwrap();
        let hull = dir.as_path().join("hull");
        std::fs::write(&hull, b"#!/bin/sh\n").unwrap();
        std::fs::write(dir.as_path().join(LEAN_NAME), vec![0x7f; 4096]).unwrap();
        assert_eq!(build_id(&hull), None);
        assert_eq!(for_vmm(&hull), hull);
        assert_eq!(for_vmm(&dir.as_path().join("missing")), dir.as_path().join("missing"));
    }
}
