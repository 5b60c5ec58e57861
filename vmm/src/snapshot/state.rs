//! What a snapshot state file holds: the machine's configuration (to rebuild the same devices), the
//! VM-wide KVM state (PIC, IO APIC, PIT, clock), every vCPU's state, the serial console, each virtio
//! device's transport and own state at its MMIO address, and how guest memory lies in the memory file.
//!
//! Never trusted when read back: serde refuses unknown or missing fields; sizes and counts are checked
//! against the configuration (`validate`) before any resource is created.

use devices::legacy::serial::SerialSnapshot;
use devices::transport::mmio::MmioTransportState;
use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};
use serde::{Deserialize, Serialize};

use super::vcpu::VcpuState;
use crate::config::{BlockDeviceConfig, EntropyDeviceConfig, MachineConfig, NetworkInterfaceConfig, VsockConfig};

/// The configuration a restore rebuilds the machine from (the boot source is not needed: the kernel is
/// in guest memory already).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedConfig {
    pub machine: MachineConfig,
    pub drives: Vec<BlockDeviceConfig>,
    pub net: Vec<NetworkInterfaceConfig>,
    pub vsock: Option<VsockConfig>,
    /// The entropy device (stateless: it is rebuilt from its configuration).
    #[serde(default)]
    pub entropy: Option<EntropyDeviceConfig>,
    /// Why this microVM cannot be snapshotted (devices whose state hull does not save), if it cannot.
    /// Never written to a state file.
    #[serde(skip)]
    pub unsupported: Option<String>,
}

/// One guest RAM region and where its bytes are in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRegionState {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// The VM-wide in-kernel devices.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmKvmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// A virtio device at its virtio-mmio window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceState {
    pub addr: u64,
    pub irq: u32,
    pub transport: MmioTransportState,
}

/// The whole microVM.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicroVmState {
    /// The hull that wrote it (informational).
    pub vmm_version: String,
    pub config: SavedConfig,
    pub memory: Vec<MemoryRegionState>,
    pub vm: VmKvmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    pub devices: Vec<DeviceState>,
}

impl MicroVmState {
    /// Total bytes of guest RAM (the size the memory file must have).
    pub fn memory_bytes(&self) -> u64 {
        self.memory.iter().map(|r| r.size).sum()
    }

    /// Cross-checks the parts against each other and the configuration.
    pub fn validate(&self) -> Result<(), String> {
        self.config.machine.validate().map_err(|e| e.to_string())?;
        if self.vcpus.len() != usize::from(self.config.machine.vcpu_count) {
            return Err(format!(
                "it has {} vCPU states for a machine of {} vCPUs",
                self.vcpus.len(),
                self.config.machine.vcpu_count
            ));
        }
        if self.vcpus.iter().enumerate().any(|(i, v)| usize::from(v.index) != i) {
            return Err("its vCPU states are not in order".into());
        }
        let expected = crate::memory::ram_ranges((self.config.machine.mem_size_mib as u64) << 20);
        let mut offset = 0u64;
        let fits = self.memory.len() == expected.len()
            && self.memory.iter().zip(&expected).all(|(r, (addr, size))| {
                let ok = r.guest_addr == addr.0 && r.size == *size as u64 && r.file_offset == offset;
                offset += r.size;
                ok
            });
        if !fits {
            return Err(format!(
                "its memory layout does not match a machine of {} MiB",
                self.config.machine.mem_size_mib
            ));
        }
        let devices = self.config.drives.len() + self.config.net.len() + usize::from(self.config.vsock.is_some());
        if self.devices.len() != devices {
            return Err(format!(
                "it has {} device states for {} configured devices",
                self.devices.len(),
                devices
            ));
        }
        Ok(())
    }
}
