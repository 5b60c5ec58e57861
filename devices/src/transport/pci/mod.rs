//! virtio-pci (virtio 1.2, section 4.1; modern devices only): the same device cores as virtio-mmio, each
//! as a function on PCI bus 0 (`bus`: configuration mechanism #1 and the host bridge), with a type-0
//! header and capability list (`config_space`), the virtio common configuration registers
//! (`common_config`), MSI-X (`msix`) and the device that ties them to a core (`device`).
//!
//! Never trusted here: any configuration cycle or BAR access of the guest.

pub mod bus;
pub mod common_config;
pub mod config_space;
pub mod device;
pub mod msix;

pub use bus::{PciRoot, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN};
pub use device::{notify_address, VirtioPciDevice, BAR_SIZE};
pub use msix::{MsiMessage, MsiVectors};

/// A PCI function's configuration space as the root bus reaches it. `offset` is a byte offset in the
/// 256-byte space (it may run past the end: the function answers all ones and ignores writes there).
pub trait PciFunction: Send {
    fn config_read(&mut self, offset: usize, data: &mut [u8]);
    fn config_write(&mut self, offset: usize, data: &[u8]);
}
