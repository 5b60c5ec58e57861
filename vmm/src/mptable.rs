//! The Intel MultiProcessor Specification (1.4) table: how a guest without ACPI learns its CPUs, the
//! IO APIC and how ISA interrupts are wired. Written at `MPTABLE_START` (the EBDA), where Linux scans.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{APIC_ADDR, EBDA_START, HIMEM_START, IOAPIC_ADDR, IRQ_MAX, MPTABLE_START};
use crate::memory::GuestMemoryMmap;

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
// Entry types.
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
// Interrupt types.
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("{0} vCPUs do not fit in the MP table")]
    TooManyCpus(u8),
    #[error("cannot write the MP table into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_sub(*b))
}

/// The IO APIC's ID: after every CPU's local APIC ID.
pub fn ioapic_id(num_cpus: u8) -> u8 {
    num_cpus + 1
}

/// Builds the floating pointer and configuration table as the bytes placed at `MPTABLE_START`.
pub fn build(num_cpus: u8) -> Result<Vec<u8>, MpTableError> {
    let ioapic = ioapic_id(num_cpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // CPU signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        // IRQ 0 is the PIC cascade through ExtINT; the rest are ordinary ISA interrupts.
        let kind = if irq == 0 { MP_EXTINT } else { MP_INT };
        entries.extend_from_slice(&[MP_INTSRC, kind, 0, 0, 0, irq, ioapic, irq]);
        count += 1;
    }
    // Every CPU's LINT0 is ExtINT and LINT1 is NMI (destination 0xff: all local APICs).
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE_START as u32 + 16;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(SPEC_REV);
    header.push(0); // checksum, below
    header.extend_from_slice(b"HULL    "); // OEM ID
    header.extend_from_slice(b"MICROVM     "); // product ID
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.push(0); // extended table checksum
    header.push(0);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(SPEC_REV);
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0u8; 5]); // feature bytes: a configuration table is present
    fp[10] = checksum(&fp);

    let mut all = fp;
    all.extend_from_slice(&table);
    if MPTABLE_START + all.len() as u64 > HIMEM_START || MPTABLE_START < EBDA_START {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    Ok(all)
}

/// Writes the MP table for `num_cpus` into guest memory.
pub fn write(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(num_cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_entry_counts_are_right() {
        for cpus in [1u8, 2, 32] {
            let b = build(cpus).unwrap();
            assert_eq!(&b[0..4], b"_MP_");
            assert_eq!(sum(&b[0..16]), 0);
            let table_addr = u32::from_le_bytes(b[4..8].try_into().unwrap()) as u64;
            let t = &b[(table_addr - MPTABLE_START) as usize..];
            assert_eq!(&t[0..4], b"PCMP");
            let len = u16::from_le_bytes([t[4], t[5]]) as usize;
            assert_eq!(len, t.len());
            assert_eq!(sum(t), 0);
            let count = u16::from_le_bytes([t[34], t[35]]);
            assert_eq!(count as usize, cpus as usize + 1 + 1 + 24 + 2);
            // Processor entries: only the first is the bootstrap processor.
            let procs: Vec<&[u8]> = t[44..].chunks(20).take(cpus as usize).collect();
            assert_eq!(procs[0][3], CPU_ENABLED | CPU_BOOTPROCESSOR);
            assert!(procs
                .iter()
                .enumerate()
                .all(|(i, p)| p[0] == MP_PROCESSOR && p[1] == i as u8));
            assert!(procs[1..].iter().all(|p| p[3] == CPU_ENABLED));
        }
    }

    #[test]
    fn fits_below_one_mib_for_the_largest_guest() {
        let b = build(crate::config::MAX_VCPUS).unwrap();
        assert!(MPTABLE_START + b.len() as u64 <= HIMEM_START);
        let mem = crate::memory::create_guest_memory(16, crate::config::HugePages::None).unwrap();
        write(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&sig, b"_MP_");
    }
}
