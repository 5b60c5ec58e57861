//! A PCI type-0 configuration header (256 bytes) with its capability list: the bytes a function shows
//! through configuration mechanism #1, which of their bits the driver may change, and one 64-bit memory
//! BAR whose sizing works the way firmware and Linux probe it (write all ones, read the size mask back).
//!
//! The BAR's address is assigned by the VMM and never moves: a driver may write the register (sizing, or
//! restoring the value it read), but the function keeps decoding at the assigned address. Linux keeps
//! the addresses it finds, so it never asks for a move. Likewise the command register's memory-space and
//! bus-master bits are stored for the driver to read back but gate nothing: the BAR always decodes and
//! the device always reaches guest memory (as virtio-mmio devices do).
//!
//! Never trusted: every offset, width and value a driver writes. Accesses outside the 256 bytes read as
//! all ones and are not written; read-only bits keep their value whatever is written.

/// Size of the configuration space (no PCIe extended space).
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Where the first capability goes (right after the type-0 header).
const FIRST_CAPABILITY: usize = 0x40;

// Type-0 header offsets.
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_CODE: usize = 0x09;
pub const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
pub const SUBSYSTEM_ID: usize = 0x2e;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
pub const INTERRUPT_PIN: usize = 0x3d;

/// Command bits a driver may set: I/O space, memory space, bus master, INTx disable.
const COMMAND_WRITABLE: u16 = 0x1 | 0x2 | 0x4 | 0x400;
/// Status bit 4: the function has a capability list.
const STATUS_CAP_LIST: u16 = 0x10;
/// BAR flags: memory space, 64-bit.
const BAR_MEM_64: u32 = 0x4;

/// The identity a function shows in its header.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub vendor: u16,
    pub device: u16,
    pub revision: u8,
    /// Base class, subclass, programming interface.
    pub class: [u8; 3],
    pub subsystem_vendor: u16,
    pub subsystem: u16,
}

/// A capability did not fit (a bug in the function, not guest input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("PCI capability of {len} bytes does not fit in the configuration space")]
pub struct CapabilityFull {
    pub len: usize,
}

/// One function's configuration space.
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    writable: [u8; CONFIG_SPACE_SIZE],
    /// The assigned BAR0 (address, size), if the function has one.
    bar: Option<(u64, u64)>,
    /// Offset of the last capability's next pointer (the header's pointer before the first).
    last_link: usize,
    next_free: usize,
}

impl ConfigSpace {
    /// A type-0 header with `identity`, no BAR and no capabilities.
    pub fn new(identity: Identity) -> Self {
        let mut cs = ConfigSpace {
            bytes: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
            bar: None,
            last_link: CAPABILITIES_POINTER,
            next_free: FIRST_CAPABILITY,
        };
        cs.set_u16(VENDOR_ID, identity.vendor);
        cs.set_u16(DEVICE_ID, identity.device);
        cs.bytes[REVISION_ID] = identity.revision;
        // The class code register holds programming interface, subclass, base class (low to high).
        cs.bytes[CLASS_CODE] = identity.class[2];
        cs.bytes[CLASS_CODE + 1] = identity.class[1];
        cs.bytes[CLASS_CODE + 2] = identity.class[0];
        cs.set_u16(SUBSYSTEM_VENDOR_ID, identity.subsystem_vendor);
        cs.set_u16(SUBSYSTEM_ID, identity.subsystem);
        cs.set_writable(COMMAND, &COMMAND_WRITABLE.to_le_bytes());
        cs.set_writable(INTERRUPT_LINE, &[0xff]);
        cs
    }

    /// Gives the function BAR0: 64-bit memory, non-prefetchable, `size` bytes (a power of two, at least
    /// 16) at `addr` (aligned to `size`).
    pub fn set_bar0(&mut self, addr: u64, size: u64) {
        debug_assert!(size.is_power_of_two() && size >= 16 && addr.is_multiple_of(size));
        let value = addr | u64::from(BAR_MEM_64);
        self.set_u32(BAR0, value as u32);
        self.set_u32(BAR0 + 4, (value >> 32) as u32);
        let mask = !(size - 1) & !0xf;
        self.set_writable(BAR0, &(mask as u32).to_le_bytes());
        self.set_writable(BAR0 + 4, &((mask >> 32) as u32).to_le_bytes());
        self.bar = Some((addr, size));
    }

    /// BAR0 as assigned: (address, size).
    pub fn bar0(&self) -> Option<(u64, u64)> {
        self.bar
    }

    /// What the BAR0 registers hold now (during sizing, the size mask).
    pub fn bar0_register(&self) -> u64 {
        (u64::from(self.u32_at(BAR0)) | (u64::from(self.u32_at(BAR0 + 4)) << 32)) & !0xf
    }

    /// Sets the interrupt pin (0: none; the function uses MSI-X only).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.bytes[INTERRUPT_PIN] = pin;
    }

    /// Appends a capability with id `id`; `body` is what follows the id and next-pointer bytes. Returns
    /// the capability's offset.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, CapabilityFull> {
        let len = body.len() + 2;
        let offset = self.next_free;
        if offset + len > CONFIG_SPACE_SIZE {
            return Err(CapabilityFull { len });
        }
        self.bytes[offset] = id;
        self.bytes[offset + 1] = 0;
        self.bytes[offset + 2..offset + len].copy_from_slice(body);
        self.bytes[self.last_link] = offset as u8;
        self.last_link = offset + 1;
        self.next_free = (offset + len + 3) & !3;
        let status = self.u16_at(STATUS) | STATUS_CAP_LIST;
        self.set_u16(STATUS, status);
        Ok(offset)
    }

    /// Marks bits the driver may write, from `offset` on (`mask` bytes; out-of-range bytes are dropped).
    pub fn set_writable(&mut self, offset: usize, mask: &[u8]) {
        for (i, m) in mask.iter().enumerate() {
            if let Some(w) = self.writable.get_mut(offset + i) {
                *w = *m;
            }
        }
    }

    /// Sets a byte range as the function (not the driver): any bits.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = self.bytes.get_mut(offset + i) {
                *slot = *b;
            }
        }
    }

    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// A byte, 0 outside the space.
    pub fn u8_at(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0)
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.u8_at(offset), self.u8_at(offset + 1)])
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes([
            self.u8_at(offset),
            self.u8_at(offset + 1),
            self.u8_at(offset + 2),
            self.u8_at(offset + 3),
        ])
    }

    /// The driver reads `data.len()` bytes at `offset`; all ones past the end.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        match offset.checked_add(data.len()).filter(|end| *end <= CONFIG_SPACE_SIZE) {
            Some(end) => data.copy_from_slice(&self.bytes[offset..end]),
            None => data.fill(0xff),
        }
    }

    /// The driver writes `data` at `offset`: only writable bits change; past the end nothing does.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let Some(end) = offset.checked_add(data.len()).filter(|end| *end <= CONFIG_SPACE_SIZE) else {
            return;
        };
        for (i, value) in (offset..end).zip(data) {
            let mask = self.writable[i];
            self.bytes[i] = (self.bytes[i] & !mask) | (value & mask);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            vendor: 0x1af4,
            device: 0x1042,
            revision: 1,
            class: [0x01, 0x80, 0x00],
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    fn rd32(cs: &ConfigSpace, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        cs.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr32(cs: &mut ConfigSpace, offset: usize, v: u32) {
        cs.write(offset, &v.to_le_bytes());
    }

    #[test]
    fn header_fields_read_as_set_and_are_read_only() {
        let mut cs = ConfigSpace::new(identity());
        assert_eq!(rd32(&cs, 0), 0x1042_1af4);
        assert_eq!(rd32(&cs, 8), 0x0180_0001, "class 01 80 00, revision 1");
        assert_eq!(rd32(&cs, 0x2c), 0x0040_1af4);
        wr32(&mut cs, 0, 0);
        wr32(&mut cs, 8, 0);
        assert_eq!(rd32(&cs, 0), 0x1042_1af4);
        assert_eq!(rd32(&cs, 8), 0x0180_0001);
        // Only the command bits a driver owns change; status stays.
        wr32(&mut cs, COMMAND, 0xffff_ffff);
        assert_eq!(rd32(&cs, COMMAND), u32::from(COMMAND_WRITABLE));
    }

    #[test]
    fn bar0_sizes_like_firmware_expects_and_keeps_its_address() {
        let mut cs = ConfigSpace::new(identity());
        cs.set_bar0(0xe000_8000, 0x8000);
        assert_eq!(rd32(&cs, BAR0), 0xe000_8004, "memory, 64-bit, non-prefetchable");
        assert_eq!(rd32(&cs, BAR0 + 4), 0);
        // Sizing: all ones in, size mask out (flags kept), then the value restored.
        wr32(&mut cs, BAR0, 0xffff_ffff);
        wr32(&mut cs, BAR0 + 4, 0xffff_ffff);
        assert_eq!(rd32(&cs, BAR0), 0xffff_8004);
        assert_eq!(rd32(&cs, BAR0 + 4), 0xffff_ffff);
        let size = !(cs.bar0_register()) + 1;
        assert_eq!(size, 0x8000);
        wr32(&mut cs, BAR0, 0xe000_8004);
        wr32(&mut cs, BAR0 + 4, 0);
        assert_eq!(cs.bar0_register(), 0xe000_8000);
        assert_eq!(cs.bar0(), Some((0xe000_8000, 0x8000)));
        // Low bits below the size cannot be set.
        wr32(&mut cs, BAR0, 0x1234_5678);
        assert_eq!(rd32(&cs, BAR0) & 0x7fff, 0x4);
        // The other BARs are not implemented: they read 0 whatever is written.
        for bar in 2..6 {
            wr32(&mut cs, BAR0 + bar * 4, 0xffff_ffff);
            assert_eq!(rd32(&cs, BAR0 + bar * 4), 0);
        }
    }

    #[test]
    fn capabilities_form_a_linked_list() {
        let mut cs = ConfigSpace::new(identity());
        assert_eq!(cs.u16_at(STATUS) & STATUS_CAP_LIST, 0);
        let a = cs
            .add_capability(0x09, &[14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        let b = cs.add_capability(0x11, &[0; 10]).unwrap();
        assert_eq!((a, b), (0x40, 0x50));
        assert_ne!(cs.u16_at(STATUS) & STATUS_CAP_LIST, 0);
        assert_eq!(cs.u8_at(CAPABILITIES_POINTER), 0x40);
        assert_eq!(cs.u8_at(0x41), 0x50);
        assert_eq!(cs.u8_at(0x51), 0);
        // Walking from the pointer visits both and ends.
        let mut seen = vec![];
        let mut p = cs.u8_at(CAPABILITIES_POINTER) as usize;
        while p != 0 {
            seen.push(cs.u8_at(p));
            p = cs.u8_at(p + 1) as usize;
        }
        assert_eq!(seen, vec![0x09, 0x11]);
        // Filling the space fails cleanly.
        let mut full = ConfigSpace::new(identity());
        while full.add_capability(0x09, &[0; 30]).is_ok() {}
        assert_eq!(full.add_capability(0x09, &[0; 250]), Err(CapabilityFull { len: 252 }));
    }

    #[test]
    fn out_of_range_accesses_read_ones_and_write_nothing() {
        let mut cs = ConfigSpace::new(identity());
        for offset in [250usize, 253, 255, 256, 1000, usize::MAX] {
            for len in [1usize, 2, 4, 8] {
                let mut b = vec![0u8; len];
                cs.read(offset, &mut b);
                if offset.checked_add(len).is_none_or(|e| e > CONFIG_SPACE_SIZE) {
                    assert!(b.iter().all(|x| *x == 0xff), "{offset} {len}");
                }
                cs.write(offset, &vec![0xff; len]);
            }
        }
        assert_eq!(cs.u8_at(255), 0);
    }
}
