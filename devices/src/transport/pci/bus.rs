//! PCI bus 0 as a guest finds it through configuration mechanism #1: the address register at port 0xCF8
//! and the data window at 0xCFC-0xCFF, a host bridge at 00:00.0 (which Linux's probe looks for before it
//! trusts mechanism #1), and one single-function device per slot after it.
//!
//! Never trusted: the address the driver latches (bus, device, function, register) and every access
//! width. Cycles to other buses, functions other than 0, empty slots or the extended-register bits read
//! as all ones ("no device") and are not written.

use std::sync::{Arc, Mutex};

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::guest_debug as debug;

use super::config_space::{ConfigSpace, Identity};
use super::PciFunction;
use crate::bus::{lock, BusDevice};

/// First port of mechanism #1 (address register; the data window follows at +4).
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
/// Ports the root bus decodes: 0xCF8-0xCFF.
pub const PCI_CONFIG_PORT_LEN: u64 = 8;
/// Slots on bus 0 (slot 0 is the host bridge).
pub const PCI_SLOTS: usize = 32;
/// Address register: enable bit.
const CONFIG_ENABLE: u32 = 1 << 31;

/// The host bridge: a header only (class 06 00 00), no BARs, no capabilities.
pub struct HostBridge(ConfigSpace);

impl Default for HostBridge {
    fn default() -> Self {
        // Red Hat's id for a generic host bridge: no Linux quirk keys on it.
        HostBridge(ConfigSpace::new(Identity {
            vendor: 0x1b36,
            device: 0x0008,
            revision: 0,
            class: [0x06, 0x00, 0x00],
            subsystem_vendor: 0,
            subsystem: 0,
        }))
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        self.0.read(offset, data);
    }
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.0.write(offset, data);
    }
}

/// Adding a device to the bus failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("PCI bus 0 is full ({PCI_SLOTS} slots)")]
pub struct BusFull;

/// Bus 0 behind ports 0xCF8-0xCFF.
pub struct PciRoot {
    slots: Vec<Option<Arc<Mutex<dyn PciFunction>>>>,
    address: u32,
}

impl Default for PciRoot {
    fn default() -> Self {
        let mut slots: Vec<Option<Arc<Mutex<dyn PciFunction>>>> = vec![None; PCI_SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(HostBridge::default())));
        PciRoot { slots, address: 0 }
    }
}

impl PciRoot {
    /// A bus with only the host bridge.
    pub fn new() -> Self {
        PciRoot::default()
    }

    /// Puts `function` in the first free slot; returns the slot number (its device number on bus 0).
    pub fn add(&mut self, function: Arc<Mutex<dyn PciFunction>>) -> Result<usize, BusFull> {
        let slot = self.slots.iter().position(Option::is_none).ok_or(BusFull)?;
        self.slots[slot] = Some(function);
        Ok(slot)
    }

    /// The function and register the latched address names, if it names one that exists.
    fn target(&self) -> Option<(&Arc<Mutex<dyn PciFunction>>, usize)> {
        let a = self.address;
        let bus = (a >> 16) & 0xff;
        let device = ((a >> 11) & 0x1f) as usize;
        let function = (a >> 8) & 0x7;
        let extended = (a >> 24) & 0x7f;
        if a & CONFIG_ENABLE == 0 || bus != 0 || function != 0 || extended != 0 {
            return None;
        }
        let register = (a & 0xfc) as usize;
        self.slots.get(device)?.as_ref().map(|f| (f, register))
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.address.to_le_bytes()),
            4..=7 => match self.target() {
                Some((function, register)) => lock(function).config_read(register + (offset - 4) as usize, data),
                None => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                // Bits 1:0 are reserved (type 0 cycles) and read back as 0.
                self.address = u32::from_le_bytes(b) & !0x3;
            }
            4..=7 => {
                if let Some((function, register)) = self.target() {
                    lock(function).config_write(register + (offset - 4) as usize, data);
                }
            }
            _ => debug!(
                offset,
                len = data.len(),
                "PCI configuration port access that is not mechanism #1; ignored"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(device: u32, register: u32) -> u32 {
        CONFIG_ENABLE | (device << 11) | register
    }

    fn read32(root: &mut PciRoot, a: u32) -> u32 {
        root.write(0, &a.to_le_bytes());
        let mut b = [0u8; 4];
        root.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn mechanism_1_finds_the_host_bridge_as_linux_probes_it() {
        let mut root = PciRoot::new();
        // pci_check_type1: a byte write to 0xCFB, then the address register reads back what was written.
        root.write(3, &[1]);
        root.write(0, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 4];
        root.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
        // pci_sanity_check: the class of 00:00.0 (2 bytes at 0x0a) is a host bridge.
        root.write(0, &addr(0, 0x08).to_le_bytes());
        let mut class = [0u8; 2];
        root.read(6, &mut class);
        assert_eq!(u16::from_le_bytes(class), 0x0600);
        assert_eq!(read32(&mut root, addr(0, 0)), 0x0008_1b36);
        // Empty slots, other functions, other buses, or the enable bit off: no device.
        assert_eq!(read32(&mut root, addr(1, 0)), u32::MAX);
        assert_eq!(read32(&mut root, addr(0, 0) | (1 << 8)), u32::MAX);
        assert_eq!(read32(&mut root, addr(0, 0) | (1 << 16)), u32::MAX);
        assert_eq!(read32(&mut root, addr(0, 0) & !CONFIG_ENABLE), u32::MAX);
        assert_eq!(read32(&mut root, addr(0, 0) | (1 << 24)), u32::MAX);
    }

    #[test]
    fn devices_take_the_next_slots_until_the_bus_is_full() {
        let mut root = PciRoot::new();
        for expected in 1..PCI_SLOTS {
            let slot = root.add(Arc::new(Mutex::new(HostBridge::default()))).unwrap();
            assert_eq!(slot, expected);
        }
        assert_eq!(root.add(Arc::new(Mutex::new(HostBridge::default()))), Err(BusFull));
        assert_eq!(read32(&mut root, addr(31, 0)), 0x0008_1b36);
    }

    #[test]
    fn odd_port_accesses_never_panic() {
        let mut root = PciRoot::new();
        for a in [0u32, u32::MAX, addr(0, 0xfc), addr(31, 0xff)] {
            root.write(0, &a.to_le_bytes());
            for offset in 0..8u64 {
                for len in [0usize, 1, 2, 3, 4, 8] {
                    let mut b = vec![0u8; len];
                    root.read(offset, &mut b);
                    root.write(offset, &vec![0xff; len]);
                }
            }
        }
    }
}
