//! Snapshots of a microVM, as Firecracker's `/snapshot/create` and `/snapshot/load`: a versioned,
//! checksummed state file (`format.rs`) holding the machine's configuration, KVM's VM-wide and per-vCPU
//! state (`vcpu.rs`), the serial console and every virtio device (`state.rs`), and a memory file
//! (`memory.rs`; full, or with dirty-page tracking a diff of the pages written since the last snapshot).
//!
//! A restore rebuilds the same machine with the builder's own steps (`vmm/src/builder.rs`), maps guest
//! memory privately from the memory file, puts every piece of state back, and starts the vCPUs paused
//! unless `resume_vm`. Never trusted: anything in the two files; a bad snapshot is refused with a
//! message and leaves nothing running.

pub mod format;
pub mod memory;
pub mod state;
pub mod uffd;
pub mod vcpu;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::bus::lock;
use devices::legacy::SerialConsole;
use devices::transport::mmio::MmioTransport;
use kvm_bindings::{
    kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};

pub use state::{MicroVmState, SavedConfig};
pub use vcpu::VcpuState;

use crate::config::{MicroVmConfig, VmmOptions};
use crate::memory::GuestMemoryMmap;
use crate::metrics::{MetricSources, VcpuMetrics};
use crate::microvm::MicroVm;
use crate::vcpu::VcpuControl;

/// `snapshot_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    #[default]
    Full,
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateParams {
    pub snapshot_path: PathBuf,
    pub mem_file_path: PathBuf,
    pub snapshot_type: SnapshotType,
}

/// Where a restored guest's memory comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemBackend {
    /// The memory file, mapped privately.
    File(PathBuf),
    /// A user-space page-fault handler listening on this unix socket.
    Uffd(PathBuf),
}

/// `network_overrides[]`: another TAP for an interface of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `vsock_override`: where the restored vsock device's host socket goes (Firecracker's `uds_path`), and,
/// a hull extension, the guest CID it gets. The guest learns a new CID from the transport reset every
/// restore sends (Linux re-reads the device's configuration then), so clones of one snapshot can each have
/// their own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    pub uds_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_cid: Option<u32>,
}

/// `drive_overrides[]` (a hull extension): another backing file for a drive of the snapshot, of the same
/// size as the snapshot's (the guest already knows the capacity); a different disk goes in with
/// `PATCH /drives/{id}` after the load, which tells the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    pub drive_id: String,
    pub path_on_host: PathBuf,
}

/// `PUT /snapshot/load`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadParams {
    pub snapshot_path: PathBuf,
    pub mem_backend: MemBackend,
    pub track_dirty_pages: bool,
    pub resume_vm: bool,
    pub network_overrides: Vec<NetworkOverride>,
    pub vsock_override: Option<VsockOverride>,
    pub drive_overrides: Vec<DriveOverride>,
}

/// Creating or loading a snapshot failed. Every variant is the client's to fix (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("Cannot save the microVM state: Operation not allowed: save/restore unavailable while running")]
    NotPaused,
    #[error("Diff snapshots are not allowed on uVMs with dirty page tracking disabled.")]
    DiffWithoutTracking,
    #[error("Cannot save the microVM state: {0}")]
    Save(String),
    #[error("Cannot write the snapshot file {path}: {source}")]
    WriteState { path: String, source: std::io::Error },
    #[error("Cannot write the memory file {path}: {source}")]
    WriteMemory { path: String, source: std::io::Error },
    #[error("Failed to restore from snapshot: {0}")]
    Format(#[from] format::FormatError),
    #[error("Failed to restore from snapshot: cannot deserialize the microVM state: {0}")]
    Deserialize(String),
    #[error("Failed to restore from snapshot: the microVM state is inconsistent: {0}")]
    Inconsistent(String),
    #[error("Failed to restore from snapshot: the memory file {path}: {reason}")]
    MemoryFile { path: String, reason: String },
    #[error("Failed to restore from snapshot: {0}")]
    Unsupported(String),
    #[error("Failed to restore from snapshot: the Uffd memory backend: {0}")]
    Uffd(String),
    #[error("Failed to restore from snapshot: invalid network override: {0}")]
    NetworkOverride(String),
    #[error("Failed to restore from snapshot: invalid vsock override: {0}")]
    VsockOverride(String),
    #[error("Failed to restore from snapshot: invalid drive override: {0}")]
    DriveOverride(String),
    #[error("Failed to restore from snapshot: this host cannot run the snapshot: {0}")]
    Host(String),
    #[error("Failed to restore from snapshot: {0}")]
    Restore(String),
}

/// A virtio device's transport at its window (kept by the running microVM for snapshots).
pub struct AttachedDevice {
    pub addr: u64,
    pub irq: u32,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// What a running microVM keeps only for snapshots.
pub struct SnapshotParts {
    pub serial: Arc<Mutex<SerialConsole>>,
    pub devices: Vec<AttachedDevice>,
    pub config: SavedConfig,
    /// The virtio devices are virtio-pci functions (`--enable-pci`): their state is not saved, so such a
    /// microVM is not snapshotted.
    pub pci: bool,
}

impl SavedConfig {
    /// The parts of `config` a restore needs.
    pub fn of(config: &MicroVmConfig) -> SavedConfig {
        SavedConfig {
            machine: config.machine.clone(),
            drives: config.drives.clone(),
            net: config.net.clone(),
            vsock: config.vsock.clone(),
            entropy: config.entropy.clone(),
            unsupported: unsaved_devices(config),
        }
    }

    fn to_config(&self) -> MicroVmConfig {
        MicroVmConfig {
            boot_source: None,
            machine: self.machine.clone(),
            drives: self.drives.clone(),
            net: self.net.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy.clone(),
            cpu_config: None,
            ..Default::default()
        }
    }
}

/// The configured devices whose state a snapshot does not carry: a balloon (its target and the pages
/// the guest gave up), pmem devices (their memory slots) and MMDS (its attachment and data store).
fn unsaved_devices(config: &MicroVmConfig) -> Option<String> {
    let mut what = Vec::new();
    if config.balloon.is_some() {
        what.push("a balloon device");
    }
    if !config.pmem.is_empty() {
        what.push("pmem devices");
    }
    if config.mmds.is_some() {
        what.push("MMDS");
    }
    (!what.is_empty()).then(|| what.join(" and "))
}

/// A paused microVM's pieces, as `create` needs them.
pub(crate) struct LiveVm<'a> {
    pub vm: &'a VmFd,
    pub mem: &'a GuestMemoryMmap,
    pub control: &'a VcpuControl,
    pub vcpu_count: usize,
    pub parts: &'a SnapshotParts,
}

fn get_irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(|e| SnapshotError::Save(format!("KVM_GET_IRQCHIP ({chip_id}): {e}")))?;
    Ok(chip)
}

/// Writes the snapshot of a paused microVM.
pub(crate) fn create(live: &LiveVm<'_>, params: &CreateParams) -> Result<(), SnapshotError> {
    let started = Instant::now();
    let tracking = live.parts.config.machine.track_dirty_pages;
    if params.snapshot_type == SnapshotType::Diff && !tracking {
        return Err(SnapshotError::DiffWithoutTracking);
    }
    if let Some(what) = &live.parts.config.unsupported {
        return Err(SnapshotError::Unsupported(format!(
            "a microVM with {what} cannot be snapshotted by this hull (its state is not saved)"
        )));
    }
    if live.parts.pci {
        return Err(SnapshotError::Unsupported(
            "a microVM with --enable-pci cannot be snapshotted by this hull (virtio-mmio devices only)".into(),
        ));
    }
    let vcpus = live.control.save_vcpus(live.vcpu_count).map_err(SnapshotError::Save)?;
    // Every device stays locked until guest memory is written: the event loop cannot touch the queues
    // or guest memory in between.
    let transports: Vec<_> = live.parts.devices.iter().map(|d| lock(&d.transport)).collect();
    let devices = live
        .parts
        .devices
        .iter()
        .zip(&transports)
        .map(|(d, t)| state::DeviceState {
            addr: d.addr,
            irq: d.irq,
            transport: t.save_state(),
        })
        .collect();
    let serial = lock(&live.parts.serial).save_state();
    let mut clock = live
        .vm
        .get_clock()
        .map_err(|e| SnapshotError::Save(format!("KVM_GET_CLOCK: {e}")))?;
    clock.flags = 0;
    let vm_state = state::VmKvmState {
        pic_master: get_irqchip(live.vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_irqchip(live.vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_irqchip(live.vm, KVM_IRQCHIP_IOAPIC)?,
        pit: live
            .vm
            .get_pit2()
            .map_err(|e| SnapshotError::Save(format!("KVM_GET_PIT2: {e}")))?,
        clock,
    };
    let state = MicroVmState {
        vmm_version: crate::VMM_VERSION.to_string(),
        config: live.parts.config.clone(),
        memory: memory::layout(live.mem),
        vm: vm_state,
        vcpus,
        serial,
        devices,
    };
    let mem_path = &params.mem_file_path;
    let mem_err = |source| SnapshotError::WriteMemory {
        path: mem_path.display().to_string(),
        source,
    };
    let pages = match params.snapshot_type {
        SnapshotType::Full => {
            memory::write_full(live.mem, mem_path).map_err(mem_err)?;
            None
        }
        SnapshotType::Diff => {
            let dirty = memory::dirty_pages(live.vm, live.mem, &device_pages(&state.devices)).map_err(mem_err)?;
            Some(memory::write_diff(live.mem, &dirty, mem_path).map_err(mem_err)?)
        }
    };
    if tracking {
        // The next diff holds what is written from now on.
        if params.snapshot_type == SnapshotType::Full {
            memory::dirty_pages(live.vm, live.mem, &Default::default()).map_err(mem_err)?;
        }
        devices::dirty_log::take();
    }
    drop(transports);
    let payload = serde_json::to_vec(&state).map_err(|e| SnapshotError::Save(e.to_string()))?;
    write_state_file(&params.snapshot_path, &format::encode(&payload))?;
    tracing::info!(
        kind = ?params.snapshot_type,
        snapshot = %params.snapshot_path.display(),
        mem = %mem_path.display(),
        diff_pages = ?pages,
        ms = started.elapsed().as_millis() as u64,
        "snapshot created"
    );
    Ok(())
}

/// The guest pages hull's devices wrote since the last snapshot: the device log, and every live queue's
/// used ring (the ring, its index and `avail_event` are written through virtio-queue, not the log).
fn device_pages(devices: &[state::DeviceState]) -> std::collections::BTreeSet<u64> {
    let mut pages = devices::dirty_log::take();
    for q in devices.iter().flat_map(|d| &d.transport.queues).filter(|q| q.live) {
        let len = 6 + 8 * u64::from(q.size);
        let page = memory::PAGE_SIZE;
        pages.extend(q.used / page..=(q.used.saturating_add(len - 1)) / page);
    }
    pages
}

fn write_state_file(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| SnapshotError::WriteState {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Reads and checks a state file.
pub fn read_state(path: &Path) -> Result<MicroVmState, SnapshotError> {
    let payload = format::read(path)?;
    let state: MicroVmState =
        serde_json::from_slice(&payload).map_err(|e| SnapshotError::Deserialize(e.to_string()))?;
    state.validate().map_err(SnapshotError::Inconsistent)?;
    Ok(state)
}

/// The format version of a state file, as `--describe-snapshot` prints it.
pub fn describe(path: &Path) -> Result<String, SnapshotError> {
    Ok(format::read_version(path)?.to_string())
}

/// Opens the memory file and checks its size against the snapshot's layout.
fn open_memory_file(path: &Path, bytes: u64) -> Result<(String, std::fs::File), SnapshotError> {
    let name = path.display().to_string();
    let err = |reason: String| SnapshotError::MemoryFile {
        path: name.clone(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let size = file.metadata().map_err(|e| err(e.to_string()))?.len();
    if size != bytes {
        return Err(err(format!(
            "it has {size} bytes; the snapshot's guest memory is {bytes} bytes"
        )));
    }
    Ok((name, file))
}

/// Puts the vsock override into the configuration a restore rebuilds its devices from; the result is
/// checked as a `PUT /vsock` body would be (by `validate_devices`).
fn apply_vsock_override(config: &mut SavedConfig, o: Option<&VsockOverride>) -> Result<(), SnapshotError> {
    let Some(o) = o else { return Ok(()) };
    let vsock = config
        .vsock
        .as_mut()
        .ok_or_else(|| SnapshotError::VsockOverride("the snapshot has no vsock device".into()))?;
    vsock.uds_path = o.uds_path.clone();
    if let Some(cid) = o.guest_cid {
        vsock.guest_cid = cid;
    }
    vsock
        .validate()
        .map_err(|e| SnapshotError::VsockOverride(e.to_string()))
}

/// Builds a microVM from a snapshot (see the module doc).
pub(crate) fn restore(params: &LoadParams, options: VmmOptions) -> Result<MicroVm, SnapshotError> {
    let started = Instant::now();
    let mut state = read_state(&params.snapshot_path)?;
    let restore_err = |e: &dyn std::fmt::Display| SnapshotError::Restore(e.to_string());
    if options.enable_pci {
        return Err(SnapshotError::Unsupported(
            "snapshots are restored onto virtio-mmio devices only: start this hull without --enable-pci".into(),
        ));
    }
    if state.config.machine.huge_pages != crate::config::HugePages::None {
        return Err(SnapshotError::Unsupported(
            "a microVM on huge pages cannot be restored by this hull (4 KiB pages only)".into(),
        ));
    }
    for o in &params.network_overrides {
        let iface = state
            .config
            .net
            .iter_mut()
            .find(|n| n.iface_id == o.iface_id)
            .ok_or_else(|| SnapshotError::NetworkOverride(format!("the snapshot has no interface {:?}", o.iface_id)))?;
        iface.host_dev_name = o.host_dev_name.clone();
    }
    apply_vsock_override(&mut state.config, params.vsock_override.as_ref())?;
    for o in &params.drive_overrides {
        let drive = state
            .config
            .drives
            .iter_mut()
            .find(|d| d.drive_id == o.drive_id)
            .ok_or_else(|| SnapshotError::DriveOverride(format!("the snapshot has no drive {:?}", o.drive_id)))?;
        drive.path_on_host = o.path_on_host.clone();
    }
    state.config.machine.track_dirty_pages = params.track_dirty_pages;
    let config = state.config.to_config();
    config
        .validate_devices()
        .map_err(|e| SnapshotError::Inconsistent(e.to_string()))?;

    let (mem_file, uffd_socket) = match &params.mem_backend {
        MemBackend::File(path) => (Some(open_memory_file(path, state.memory_bytes())?), None),
        MemBackend::Uffd(socket) => (None, Some(socket)),
    };

    let kvm = Kvm::new().map_err(|e| restore_err(&format!("cannot open /dev/kvm: {e}")))?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| restore_err(&format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    for v in &state.vcpus {
        vcpu::check_cpuid_fits(&v.cpuid, supported.as_slice())
            .map_err(|e| SnapshotError::Host(format!("vCPU {}: {e}", v.index)))?;
    }
    let vm = crate::builder::create_vm(&kvm).map_err(|e| restore_err(&e))?;
    let (mem, uffd) = match (&mem_file, uffd_socket) {
        (Some((path, file)), _) => {
            let mem = memory::map_private(file, &state.memory).map_err(|reason| SnapshotError::MemoryFile {
                path: path.clone(),
                reason,
            })?;
            (mem, None)
        }
        (None, Some(socket)) => {
            let (mem, fd) = uffd::connect(socket, &state.memory).map_err(SnapshotError::Uffd)?;
            (mem, Some(fd))
        }
        (None, None) => unreachable!("one backend is always chosen"),
    };
    crate::memory::register_memory(&vm, &mem, params.track_dirty_pages).map_err(|e| restore_err(&e))?;
    devices::dirty_log::set_enabled(params.track_dirty_pages);

    let mut legacy = crate::builder::create_legacy_devices(&vm, &options, started).map_err(|e| restore_err(&e))?;
    lock(&legacy.serial)
        .restore_state(&state.serial)
        .map_err(SnapshotError::Inconsistent)?;
    let vcpu_metrics = Arc::new(VcpuMetrics::default());
    let mut metrics = MetricSources::new(legacy.uart_metrics.clone(), vcpu_metrics.clone());
    let attached = crate::builder::attach_virtio_devices(&kvm, &vm, &mem, &config, &mut legacy, &mut metrics)
        .map_err(|e| restore_err(&e))?;
    if attached.all.len() != state.devices.len() {
        return Err(SnapshotError::Inconsistent(format!(
            "the snapshot holds {} devices, its configuration rebuilds {}",
            state.devices.len(),
            attached.all.len()
        )));
    }
    for (device, saved) in attached.all.iter().zip(&state.devices) {
        if (device.addr, device.irq) != (saved.addr, saved.irq) {
            return Err(SnapshotError::Inconsistent(format!(
                "a device saved at {:#x} (IRQ {}) is at {:#x} (IRQ {}) when rebuilt",
                saved.addr, saved.irq, device.addr, device.irq
            )));
        }
        lock(&device.transport)
            .restore_state(&saved.transport)
            .map_err(|e| SnapshotError::Inconsistent(e.to_string()))?;
    }

    let vcpus = (0..state.vcpus.len())
        .map(|i| vm.create_vcpu(i as u64))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| restore_err(&format!("KVM_CREATE_VCPU: {e}")))?;
    let kvm_err = |what: &str, e: kvm_ioctls::Error| SnapshotError::Host(format!("{what}: {e}"));
    vm.set_irqchip(&state.vm.pic_master)
        .map_err(|e| kvm_err("KVM_SET_IRQCHIP (PIC master)", e))?;
    vm.set_irqchip(&state.vm.pic_slave)
        .map_err(|e| kvm_err("KVM_SET_IRQCHIP (PIC slave)", e))?;
    vm.set_irqchip(&state.vm.ioapic)
        .map_err(|e| kvm_err("KVM_SET_IRQCHIP (IO APIC)", e))?;
    vm.set_pit2(&state.vm.pit).map_err(|e| kvm_err("KVM_SET_PIT2", e))?;
    vm.set_clock(&state.vm.clock).map_err(|e| kvm_err("KVM_SET_CLOCK", e))?;
    for (fd, saved) in vcpus.iter().zip(&state.vcpus) {
        saved.restore(fd).map_err(|e| SnapshotError::Host(e.to_string()))?;
    }
    for device in &attached.all {
        lock(&device.transport).resume_after_restore();
    }

    let control = if params.resume_vm {
        VcpuControl::new()
    } else {
        VcpuControl::new_paused()
    }
    .map_err(|e| restore_err(&e))?;
    let cpuids = state.vcpus.iter().map(|v| v.cpuid.clone()).collect();
    let mut microvm = crate::builder::start_threads(
        (kvm, vm, mem),
        (vcpus, cpuids),
        legacy,
        attached,
        (control, vcpu_metrics, metrics),
        &options,
        state.config.clone(),
    )
    .map_err(|e| restore_err(&e))?;
    microvm.keep_uffd(uffd);
    tracing::info!(
        snapshot = %params.snapshot_path.display(),
        resumed = params.resume_vm,
        ms = started.elapsed().as_millis() as u64,
        "microVM restored from a snapshot"
    );
    Ok(microvm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BalloonDeviceConfig, EntropyDeviceConfig, PmemConfig};

    #[test]
    fn devices_whose_state_is_not_saved_make_a_microvm_unsnapshottable() {
        let mut config = MicroVmConfig {
            entropy: Some(EntropyDeviceConfig::default()),
            ..Default::default()
        };
        // The entropy device has no state: it is rebuilt from the configuration the state file carries.
        let saved = SavedConfig::of(&config);
        assert_eq!(saved.unsupported, None);
        assert_eq!(saved.to_config().entropy, config.entropy);
        config.balloon = Some(BalloonDeviceConfig {
            amount_mib: 0,
            deflate_on_oom: false,
            stats_polling_interval_s: 0,
        });
        config.pmem.push(PmemConfig {
            id: "p".into(),
            path_on_host: "/nonexistent".into(),
            root_device: false,
            read_only: true,
        });
        assert_eq!(
            SavedConfig::of(&config).unsupported.as_deref(),
            Some("a balloon device and pmem devices")
        );
    }
}
