//! virtio-pci driven by a hostile driver (`devices/src/transport/pci/`): configuration cycles through
//! ports 0xCF8/0xCFC on bus 0 (the host bridge and a virtio-blk function), accesses of any width to
//! every region of the function's BAR (common configuration, ISR, device config, notifications, MSI-X
//! table and PBA), guest memory the rings live in, and queue kicks, in the order the input says.

use std::sync::{Arc, Mutex};

use devices::bus::{lock, BusDevice};
use devices::transport::pci::{MsiMessage, MsiVectors, PciFunction, PciRoot, VirtioPciDevice};
use devices::virtio::block::Block;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::virtio::MemDisk;
use crate::input::Input;

/// Where the function's BAR is, as hull assigns it.
const BAR: u64 = 0xe000_0000;
/// The test guest's memory.
const MEM_SIZE: u32 = 1 << 20;

/// MSI-X vectors that go nowhere.
struct NoVectors;

impl MsiVectors for NoVectors {
    fn set_route(&self, _: u16, _: MsiMessage) -> std::io::Result<()> {
        Ok(())
    }
    fn trigger(&self, _: u16) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the input's operations against bus 0 and a virtio-blk function (see the seeds for the encoding).
pub fn transport(data: &[u8]) {
    let mut input = Input::new(data);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]) else {
        return;
    };
    let Ok(block) = Block::with_backend(Box::new(MemDisk(vec![0; 8192])), false, "fuzz") else {
        return;
    };
    let Ok(function) = VirtioPciDevice::new("block:fuzz", Box::new(block), mem.clone(), BAR, Box::new(NoVectors))
    else {
        return;
    };
    let function = Arc::new(Mutex::new(function));
    let mut root = PciRoot::new();
    if root.add(function.clone() as Arc<Mutex<dyn PciFunction>>).is_err() {
        return;
    }
    for _ in 0..2000 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 8 {
            // Latch an address on slot 1 (the function), or any address.
            0 => root.write(0, &(0x8000_0800 | u32::from(input.u8() & 0xfc)).to_le_bytes()),
            1 => root.write(0, &input.u32().to_le_bytes()),
            2 => {
                let port = u64::from(input.u8() % 8);
                let len = input.pick(&[1usize, 2, 4, 3, 8]);
                root.write(port, &input.u64().to_le_bytes()[..len]);
            }
            3 => {
                let port = u64::from(input.u8() % 8);
                let mut buf = vec![0u8; input.pick(&[1usize, 2, 4, 3, 8])];
                root.read(port, &mut buf);
            }
            4 => {
                let offset = bar_offset(&mut input);
                let len = input.pick(&[1usize, 2, 4, 8, 3]);
                lock(&function).write(offset, &input.u64().to_le_bytes()[..len]);
            }
            5 => {
                let offset = bar_offset(&mut input);
                let mut buf = vec![0u8; input.pick(&[1usize, 2, 4, 8, 3])];
                lock(&function).read(offset, &mut buf);
            }
            6 => {
                let addr = u64::from(input.below(MEM_SIZE - 64));
                let _ = mem.write_slice(input.chunk(64), GuestAddress(addr));
            }
            _ => {
                let mut f = lock(&function);
                f.notify_queue(input.below(2) as usize);
                f.process_backend();
                if input.bool() {
                    f.config_changed();
                }
            }
        }
    }
}

/// An offset in one of the BAR's regions (or anywhere, past its end included).
fn bar_offset(input: &mut Input) -> u64 {
    let region = input.pick(&[0u64, 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x8000]);
    region + u64::from(input.u8())
}
