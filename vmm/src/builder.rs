//! Building a microVM, as one readable sequence of named steps. `prepare_vm` does what depends only on
//! the machine, the boot source and the CPU configuration: open KVM, create the VM, map guest memory, load
//! the kernel and initrd, create and configure the vCPUs (the API runs it before `InstanceStart` when it
//! can: `prepared.rs`). `build_microvm` takes that part (or makes it), then creates the legacy devices,
//! attaches the virtio devices, writes the command line and boot structures, and starts the event loop
//! and the vCPU threads. Each step takes what the previous ones produced.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::bus::{Bus, BusDevice};
use devices::legacy::i8042::{I8042_COMMAND_PORT, I8042_DATA_PORT, I8042_KBD_IRQ};
use devices::legacy::serial::{COM1_BASE, COM1_IRQ, COM1_LEN};
use devices::legacy::{BootTimer, IrqLine, SerialConsole, I8042};
use devices::transport::pci::{PciRoot, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN};
use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, EntryPoint, InitrdRegion, LoadedKernel};
use crate::config::{MicroVmConfig, SerialOutput, VmmOptions};
use crate::cpu_config::{self, CustomCpuTemplate};
use crate::cpu_template::{self, CpuTemplate};
use crate::event_loop::{self, SerialInput, Subscriber};
use crate::layout::*;
use crate::memory::{self, GuestMemoryMmap};
use crate::metrics::{MetricSources, VcpuMetrics};
use crate::microvm::{MicroVm, VmmError};
use crate::mptable;
use crate::msi_routing::MsiRouting;
use crate::prepared::{PreparedKey, PreparedVm};
use crate::vcpu::{self, VcpuContext, VcpuControl};
use crate::virtio_devices;

/// Kernel switches for the i8042: no mouse port, no multiplexer, no PnP probing, and a keyboard
/// that is not asked for its ID — what hull's minimal controller provides, and faster to boot.
const I8042_CMDLINE: &str = "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
/// No PCI bus: every device is on virtio-mmio.
const NO_PCI_CMDLINE: &str = "pci=off";

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM: {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error("cannot set up the legacy devices: {0}")]
    Devices(String),
    #[error("cannot open the serial output file {path}: {source}")]
    SerialOutput { path: String, source: std::io::Error },
    #[error("cannot start the event loop: {0}")]
    EventLoop(std::io::Error),
    #[error("Invalid CPU configuration: {0}")]
    CpuConfig(#[from] cpu_config::CpuConfigError),
    #[error("Failed to get CPU template: {0}")]
    CpuTemplate(#[from] cpu_template::TemplateError),
    #[error("cannot attach a virtio device: {0}")]
    Virtio(#[from] virtio_devices::AttachError),
    #[error("cannot attach a pmem device: {0}")]
    Pmem(#[from] crate::pmem::PmemError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> BuildError {
    move |source| BuildError::Kvm { what, source }
}

/// Builds the VM described by `config` and starts it, finishing `prepared` when it still fits `config`
/// (see `prepared.rs`; a stale one is dropped first and everything is built here).
pub(crate) fn build_microvm(
    config: &MicroVmConfig,
    options: VmmOptions,
    prepared: Option<PreparedVm>,
) -> Result<MicroVm, VmmError> {
    let started = Instant::now();
    config.validate()?;
    let boot_source = config
        .boot_source
        .as_ref()
        .ok_or(crate::config::ConfigError::MissingBootSource)?;
    let machine = &config.machine;

    let reused = prepared.as_ref().is_some_and(|p| p.fits(config));
    let prepared = match prepared {
        Some(prepared) if reused => prepared,
        stale => {
            drop(stale);
            prepare_vm(config)?
        }
    };
    let PreparedVm {
        template,
        kvm,
        vm,
        mem,
        kernel,
        initrd,
        vcpus,
        cpuids,
        ..
    } = prepared;
    // Diff snapshots also need the pages hull's devices write (KVM logs only the guest's).
    devices::dirty_log::set_enabled(machine.track_dirty_pages);
    let mut legacy = create_legacy_devices(&vm, &options, started)?;
    let vcpu_metrics = Arc::new(VcpuMetrics::default());
    let mut metrics = MetricSources::new(legacy.uart_metrics.clone(), vcpu_metrics.clone());
    let attached = attach_virtio_devices(&kvm, &vm, &mem, config, &mut legacy, &mut metrics)?;
    let cmdline_len = write_cmdline(
        &mem,
        boot_source.boot_args_or_default(),
        template,
        &attached.cmdline,
        options.enable_pci,
    )?;
    write_boot_structures(&mem, &kernel, cmdline_len, initrd, machine.vcpu_count)?;

    let control = VcpuControl::new().map_err(BuildError::EventLoop)?;
    let saved = crate::snapshot::SavedConfig::of(config);
    let entry = kernel.entry;
    let vm = start_threads(
        (kvm, vm, mem),
        (vcpus, cpuids),
        legacy,
        attached,
        (control, vcpu_metrics, metrics),
        &options,
        saved,
    )?;
    tracing::info!(
        vcpus = machine.vcpu_count,
        mem_mib = machine.mem_size_mib,
        entry = ?entry,
        pre_built = reused,
        build_ms = started.elapsed().as_millis() as u64,
        "microVM started"
    );
    Ok(vm)
}

/// The first steps, which depend only on the machine configuration, the boot source's files and the CPU
/// configuration: run by `build_microvm`, or earlier through `PreparedVm::new` as soon as those are known.
/// Choose the CPU template, open KVM and check the capabilities a custom template asks for, create the VM
/// and map and register guest memory, load the kernel and initrd, create and configure the vCPUs.
pub(crate) fn prepare_vm(config: &MicroVmConfig) -> Result<PreparedVm, VmmError> {
    let started = Instant::now();
    // Taken before the files are read: a file written from here on makes the pre-build stale.
    let key = PreparedKey::of(config)?;
    let boot_source = config
        .boot_source
        .as_ref()
        .ok_or(crate::config::ConfigError::MissingBootSource)?;
    let machine = &config.machine;
    machine.validate()?;

    let template = choose_cpu_template(machine.cpu_template)?;
    let kvm = Kvm::new().map_err(BuildError::OpenKvm)?;
    cpu_config::check_capabilities(&kvm, config.cpu_config.as_ref()).map_err(BuildError::CpuConfig)?;
    let vm = create_vm(&kvm)?;
    let mem = memory::create_guest_memory(machine.mem_size_mib, machine.huge_pages).map_err(BuildError::from)?;
    memory::register_memory(&vm, &mem, machine.track_dirty_pages).map_err(BuildError::from)?;
    let kernel = boot::load_kernel(&mem, &boot_source.kernel_image_path).map_err(BuildError::Boot)?;
    let initrd = match &boot_source.initrd_path {
        Some(path) => Some(boot::load_initrd(&mem, path, kernel.end).map_err(BuildError::Boot)?),
        None => None,
    };
    let (vcpus, cpuids) = create_vcpus(
        &kvm,
        &vm,
        &mem,
        machine.vcpu_count,
        (template, config.cpu_config.as_ref()),
        kernel.entry,
    )?;
    tracing::debug!(
        prepare_ms = started.elapsed().as_millis() as u64,
        "VM, memory, kernel and vCPUs prepared"
    );
    Ok(PreparedVm {
        key,
        template,
        kvm,
        vm,
        mem,
        kernel,
        initrd,
        vcpus,
        cpuids,
    })
}

/// Last step, shared with a restore: one thread per vCPU, then the event loop, and the handle over it all.
/// The vCPUs go first so the guest runs while the event loop thread starts (a queue kick before then waits
/// in its ioeventfd); on a busy host each new thread can wait milliseconds for a CPU.
pub(crate) fn start_threads(
    (kvm, vm, mem): (Kvm, VmFd, GuestMemoryMmap),
    (vcpus, cpuids): (Vec<VcpuFd>, Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>),
    legacy: LegacyDevices,
    attached: AttachedDevices,
    (control, vcpu_metrics, metrics): (Arc<VcpuControl>, Arc<VcpuMetrics>, MetricSources),
    options: &VmmOptions,
    saved: crate::snapshot::SavedConfig,
) -> Result<MicroVm, VmmError> {
    let msr_list = kvm
        .get_msr_index_list()
        .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec();
    let ctx = Arc::new(VcpuContext {
        pio: legacy.pio,
        mmio: Arc::new(legacy.mmio),
        control: control.clone(),
        reset_evt: legacy.reset_evt,
        metrics: vcpu_metrics,
        msr_list,
        cpuids,
    });
    let vcpu_count = vcpus.len();
    let mut threads = Vec::with_capacity(vcpu_count);
    for (index, fd) in vcpus.into_iter().enumerate() {
        match vcpu::spawn_vcpu(index as u8, fd, ctx.clone(), options.seccomp.vcpu.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                control.request_exit(crate::exit::ExitReason::VcpuError(e.to_string()));
                return Err(BuildError::Vcpu(e).into());
            }
        }
    }
    let event_thread = match event_loop::spawn(legacy.subscribers, control.clone(), options.seccomp.event_loop.clone())
    {
        Ok(thread) => thread,
        Err(e) => {
            control.request_exit(crate::exit::ExitReason::VcpuError(format!(
                "cannot start the event loop: {e}"
            )));
            for thread in threads {
                let _ = thread.join();
            }
            return Err(BuildError::EventLoop(e).into());
        }
    };
    let snapshot = crate::snapshot::SnapshotParts {
        pci: legacy.pci.is_some(),
        serial: legacy.serial,
        devices: attached.all,
        config: saved,
    };
    Ok(MicroVm::new(
        kvm,
        vm,
        mem,
        control,
        threads,
        event_thread,
        legacy.i8042,
        vcpu_count,
        attached.drives,
        attached.nets,
        attached.balloon,
        metrics,
        snapshot,
    ))
}

/// Step: the CPU template, chosen automatically on a software KVM.
pub(crate) fn choose_cpu_template(name: crate::config::CpuTemplateName) -> Result<CpuTemplate, BuildError> {
    let software = cpu_template::software_kvm_detected();
    let template = cpu_template::resolve(name, software, cpu_template::host_vendor())?;
    if software && template != CpuTemplate::PassThrough {
        tracing::info!(
            "software KVM (kvm_pvm) detected: CPU template SoftKvm hides cmpxchg16b, popcnt, xsave, AVX, SSE4 \
             and more from the guest, and the kernel command line gets: {}",
            cpu_template::cmdline_switches(template).unwrap_or_default()
        );
    }
    Ok(template)
}

/// Step: the VM with its in-kernel interrupt controllers (PIC, IO APIC, LAPICs) and PIT.
pub(crate) fn create_vm(kvm: &Kvm) -> Result<VmFd, BuildError> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

pub(crate) struct LegacyDevices {
    pub(crate) pio: Arc<Bus>,
    /// Still open: the virtio devices join it before the vCPUs share it.
    pub(crate) mmio: Bus,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) serial: Arc<Mutex<SerialConsole>>,
    pub(crate) reset_evt: EventFd,
    pub(crate) subscribers: Vec<Subscriber>,
    pub(crate) uart_metrics: Arc<dyn devices::virtio::DeviceMetrics>,
    /// PCI bus 0 on ports 0xCF8-0xCFF, with `--enable-pci`: the virtio devices become its functions.
    pub(crate) pci: Option<Arc<Mutex<PciRoot>>>,
}

fn serial_writer(output: &SerialOutput) -> Result<Box<dyn Write + Send>, BuildError> {
    Ok(match output {
        SerialOutput::Stdout => {
            // Unbuffered: every byte the guest sends is visible at once, like a real console.
            // SAFETY: dup returns a new descriptor (or -1, checked) that we own from here on.
            let fd = unsafe { libc::dup(libc::STDOUT_FILENO) };
            if fd < 0 {
                return Err(BuildError::SerialOutput {
                    path: "stdout".into(),
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: fd is a fresh descriptor owned by nobody else.
            Box::new(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
        }
        // The guest's console can carry secrets: a file hull creates is owner-only, whatever the umask.
        SerialOutput::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| BuildError::SerialOutput {
                    path: path.display().to_string(),
                    source,
                })?,
        ),
        SerialOutput::CappedFile { path, max_bytes } => Box::new(
            hull_logging::rotating::RotatingFile::open(path, *max_bytes).map_err(|source| {
                BuildError::SerialOutput {
                    path: path.display().to_string(),
                    source,
                }
            })?,
        ),
        SerialOutput::Sink => Box::new(std::io::sink()),
    })
}

/// Step: COM1, the i8042, the CMOS clock and the boot timer on their buses, with their interrupt lines.
pub(crate) fn create_legacy_devices(
    vm: &VmFd,
    options: &VmmOptions,
    started: Instant,
) -> Result<LegacyDevices, BuildError> {
    let dev_err = |e: std::io::Error| BuildError::Devices(e.to_string());
    let serial_irq = IrqLine::new().map_err(dev_err)?;
    vm.register_irqfd(&serial_irq.0, COM1_IRQ)
        .map_err(kvm_err("KVM_IRQFD (COM1)"))?;
    let serial = SerialConsole::new(serial_irq, serial_writer(&options.serial)?);
    let uart_metrics = serial.metrics();
    let serial = Arc::new(Mutex::new(serial));

    let kbd_irq = IrqLine::new().map_err(dev_err)?;
    vm.register_irqfd(&kbd_irq.0, I8042_KBD_IRQ)
        .map_err(kvm_err("KVM_IRQFD (i8042)"))?;
    let reset_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(dev_err)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(kbd_irq, reset_evt.try_clone().map_err(dev_err)?)));

    let bus_err = |e: devices::bus::BusError| BuildError::Devices(e.to_string());
    let mut pio = Bus::new();
    pio.insert(serial.clone() as Arc<Mutex<dyn BusDevice>>, COM1_BASE, COM1_LEN)
        .map_err(bus_err)?;
    // The controller decodes 0x60 and 0x64 only; offsets on the bus are relative to 0x60.
    pio.insert(
        i8042.clone() as Arc<Mutex<dyn BusDevice>>,
        I8042_DATA_PORT,
        I8042_COMMAND_PORT - I8042_DATA_PORT + 1,
    )
    .map_err(bus_err)?;
    // Without a clock at 0x70, Linux waits a second for an update that never ends.
    pio.insert(
        Arc::new(Mutex::new(devices::legacy::Cmos::default())) as Arc<Mutex<dyn BusDevice>>,
        devices::legacy::cmos::CMOS_PORT,
        devices::legacy::cmos::CMOS_LEN,
    )
    .map_err(bus_err)?;
    let mut mmio = Bus::new();
    if options.boot_timer {
        mmio.insert(Arc::new(Mutex::new(BootTimer::new(started))), BOOT_TIMER_ADDR, 0x1000)
            .map_err(bus_err)?;
    }
    let pci = if options.enable_pci {
        let root = Arc::new(Mutex::new(PciRoot::new()));
        pio.insert(
            root.clone() as Arc<Mutex<dyn BusDevice>>,
            PCI_CONFIG_PORT,
            PCI_CONFIG_PORT_LEN,
        )
        .map_err(bus_err)?;
        Some(root)
    } else {
        None
    };
    let subscribers: Vec<Subscriber> = vec![Arc::new(Mutex::new(SerialInput::new(serial.clone())))];
    Ok(LegacyDevices {
        pci,
        pio: Arc::new(pio),
        mmio,
        i8042,
        serial,
        reset_evt,
        subscribers,
        uart_metrics,
    })
}

/// Step: the virtio devices (root drive first, other drives, network interfaces, vsock, balloon, entropy,
/// then the pmem devices, whose files get KVM memory slots above RAM), each behind a
/// 4 KiB virtio-mmio window from `VIRTIO_MMIO_START` with the next IRQ from `IRQ_BASE`, its queues kicked
/// through ioeventfds and its interrupt an irqfd, served by the event loop. With `--enable-pci` each is a
/// virtio-pci function on bus 0 instead, its BAR from `PCI_BAR_START`, its interrupts MSI-X vectors.
/// Returns the command-line entries that declare them (`virtio_mmio.device=4K@0x<addr>:<irq>`, or nothing
/// for PCI, which the kernel scans) and mount the root drive, and the
/// drives and network interfaces, for `PATCH /drives` and `PATCH /network-interfaces`. Each device's
/// counters join `metrics`.
pub(crate) fn attach_virtio_devices(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &MicroVmConfig,
    legacy: &mut LegacyDevices,
    metrics: &mut MetricSources,
) -> Result<AttachedDevices, BuildError> {
    let (pmem_cores, pmem_root) = crate::pmem::attach_slots(vm, mem, config)?;
    let mut cmdline: Vec<String> = virtio_devices::root_cmdline(config)
        .into_iter()
        .chain(pmem_root)
        .collect();
    let mut drives = virtio_devices::Drives::default();
    let mut nets = virtio_devices::NetInterfaces::default();
    let mut balloon = None;
    let routing = match legacy.pci {
        Some(_) => Some(MsiRouting::new(kvm, vm).map_err(|e| BuildError::Devices(e.to_string()))?),
        None => None,
    };
    let mut all = Vec::new();
    let cores = virtio_devices::create_cores(config)?.into_iter().chain(pmem_cores);
    for (slot, device) in cores.enumerate() {
        let drive = device.drive.clone();
        let iface = device.iface.clone();
        let (subscriber, transport) = match (&legacy.pci, &routing) {
            (Some(root), Some(routing)) => {
                let bar = PCI_BAR_START + slot as u64 * devices::transport::pci::BAR_SIZE;
                virtio_devices::attach_pci(vm, mem, &mut legacy.mmio, root, routing, device, bar)?
            }
            _ => {
                let addr = VIRTIO_MMIO_START + slot as u64 * VIRTIO_MMIO_SIZE;
                let irq = IRQ_BASE + slot as u32;
                cmdline.push(virtio_devices::mmio_cmdline(addr, irq));
                let (subscriber, transport) =
                    virtio_devices::attach_mmio(vm, mem, &mut legacy.mmio, device, addr, irq)?;
                all.push(crate::snapshot::AttachedDevice {
                    addr,
                    irq,
                    transport: transport.clone(),
                });
                (
                    subscriber,
                    transport as Arc<Mutex<dyn devices::transport::VirtioTransport>>,
                )
            }
        };
        let (counters, kind) = {
            let t = devices::bus::lock(&transport);
            (t.metrics(), t.device_type())
        };
        if let Some((id, read_only)) = drive {
            metrics.drives.extend(counters.map(|c| (id.clone(), c)));
            drives.add(id, read_only, transport);
        } else if let Some(id) = iface {
            metrics.nets.extend(counters.map(|c| (id.clone(), c)));
            nets.add(id, transport);
        } else if kind == devices::virtio::TYPE_VSOCK {
            metrics.vsock = counters;
        } else if kind == devices::virtio::TYPE_BALLOON {
            metrics.balloon = counters;
            balloon = Some(virtio_devices::BalloonHandle::new(transport));
        } else if kind == devices::virtio::TYPE_RNG {
            metrics.entropy = counters;
        }
        legacy.subscribers.push(subscriber);
    }
    if let Some(mmds) = &config.mmds {
        let counters = devices::bus::lock(&mmds.mmds).metrics();
        metrics.mmds = Some(counters);
    }
    Ok(AttachedDevices {
        cmdline,
        drives,
        nets,
        balloon,
        all,
    })
}

/// The attached virtio devices: their command-line entries, the drives and interfaces `PATCH` reaches,
/// and every transport at its address (for snapshots).
pub(crate) struct AttachedDevices {
    pub(crate) cmdline: Vec<String>,
    pub(crate) drives: virtio_devices::Drives,
    pub(crate) nets: virtio_devices::NetInterfaces,
    pub(crate) balloon: Option<virtio_devices::BalloonHandle>,
    pub(crate) all: Vec<crate::snapshot::AttachedDevice>,
}

/// Step: the command line, the user's first, then what the machine needs.
fn write_cmdline(
    mem: &GuestMemoryMmap,
    user: &str,
    template: CpuTemplate,
    devices: &[String],
    enable_pci: bool,
) -> Result<u32, BuildError> {
    let mut extra: Vec<&str> = devices.iter().map(String::as_str).collect();
    // Without `--enable-pci` hull's devices are on virtio-mmio: with no PCI bus to find, the kernel is told
    // not to probe one (Firecracker appends the same), so a PCI-capable guest kernel boots as fast.
    if !enable_pci && !user.split_whitespace().any(|arg| arg.starts_with("pci=")) {
        extra.push(NO_PCI_CMDLINE);
    }
    if !user.contains("i8042.") {
        extra.push(I8042_CMDLINE);
    }
    if let Some(switches) = cpu_template::cmdline_switches(template) {
        extra.push(switches);
    }
    let cmdline = boot::build_cmdline(user, &extra)?;
    Ok(boot::write_cmdline(mem, &cmdline)?)
}

/// Step: the MP table, and `boot_params` or `hvm_start_info` for the entry point.
fn write_boot_structures(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: u32,
    initrd: Option<InitrdRegion>,
    vcpus: u8,
) -> Result<(), BuildError> {
    mptable::write(mem, vcpus)?;
    match kernel.entry {
        EntryPoint::Pvh(_) => boot::write_pvh_start_info(mem, initrd)?,
        EntryPoint::Linux64(_) => boot::write_linux_boot_params(mem, kernel.setup_header, cmdline_len, initrd)?,
    }
    Ok(())
}

/// Step: the vCPUs, each with its CPUID and boot state. Returns them with the CPUID each was given.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    count: u8,
    (template, custom): (CpuTemplate, Option<&CustomCpuTemplate>),
    entry: EntryPoint,
) -> Result<(Vec<VcpuFd>, Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>), BuildError> {
    let supported: CpuId = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let mut fds = Vec::with_capacity(usize::from(count));
    let mut cpuids = Vec::with_capacity(usize::from(count));
    let builtin = template.builtin();
    for index in 0..count {
        let fd = vm.create_vcpu(u64::from(index)).map_err(kvm_err("KVM_CREATE_VCPU"))?;
        let mut cpuid = cpu_template::vcpu_cpuid(&supported, index, count, template)?;
        if let Some(custom) = custom {
            custom.apply_cpuid(&mut cpuid)?;
        }
        vcpu::configure_vcpu(&fd, index, mem, &cpuid, entry)?;
        // A static template's MSR bits (T2S, T2CL: IA32_ARCH_CAPABILITIES), then the custom ones.
        if let Some(builtin) = &builtin {
            builtin.apply_msrs(&fd, index)?;
        }
        if let Some(custom) = custom {
            custom.apply_msrs(&fd, index)?;
        }
        cpuids.push(cpuid.as_slice().to_vec());
        fds.push(fd);
    }
    Ok((fds, cpuids))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the legacy-device and virtio steps for a VM with one vsock device; `None` without /dev/kvm.
    fn attach(enable_pci: bool, dir: &std::path::Path) -> Option<(Vec<String>, LegacyDevices)> {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("skipped: no /dev/kvm");
            return None;
        };
        let vm = create_vm(&kvm).unwrap();
        let mem = memory::create_guest_memory(64, Default::default()).unwrap();
        memory::register_memory(&vm, &mem, false).unwrap();
        let options = VmmOptions {
            serial: SerialOutput::Sink,
            enable_pci,
            ..Default::default()
        };
        let mut legacy = create_legacy_devices(&vm, &options, Instant::now()).unwrap();
        let mut metrics = MetricSources::new(legacy.uart_metrics.clone(), Arc::new(VcpuMetrics::default()));
        let config = MicroVmConfig {
            vsock: Some(crate::config::VsockConfig {
                vsock_id: None,
                guest_cid: 3,
                uds_path: dir.join(format!("v{enable_pci}.sock")),
            }),
            ..Default::default()
        };
        let devices = attach_virtio_devices(&kvm, &vm, &mem, &config, &mut legacy, &mut metrics)
            .unwrap()
            .cmdline;
        // What the guest reads at the command-line address.
        let len = write_cmdline(&mem, "console=ttyS0", CpuTemplate::PassThrough, &devices, enable_pci).unwrap();
        let mut bytes = vec![0u8; len as usize];
        vm_memory::Bytes::read_slice(&mem, &mut bytes, vm_memory::GuestAddress(CMDLINE_START)).unwrap();
        let cmdline = String::from_utf8(bytes).unwrap();
        Some((
            cmdline.trim_end_matches('\0').split(' ').map(String::from).collect(),
            legacy,
        ))
    }

    fn config_read32(pio: &Bus, slot: u32, register: u32) -> Option<u32> {
        let address = 0x8000_0000u32 | (slot << 11) | register;
        assert!(pio.write(PCI_CONFIG_PORT, &address.to_le_bytes()));
        let mut b = [0u8; 4];
        pio.read(PCI_CONFIG_PORT + 4, &mut b).then(|| u32::from_le_bytes(b))
    }

    #[test]
    fn without_pci_devices_are_on_virtio_mmio_and_the_kernel_is_told_pci_off() {
        let dir = std::env::temp_dir().join(format!("hull-builder-mmio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let Some((cmdline, legacy)) = attach(false, &dir) else {
            return;
        };
        assert!(cmdline.contains(&"pci=off".to_string()), "{cmdline:?}");
        assert!(
            cmdline.contains(&"virtio_mmio.device=4K@0xd0000000:5".to_string()),
            "{cmdline:?}"
        );
        assert!(legacy.pci.is_none());
        let mut b = [0u8; 4];
        assert!(
            !legacy.pio.read(PCI_CONFIG_PORT + 4, &mut b),
            "no PCI configuration ports"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_pci_option_of_the_user_wins() {
        let Ok(mem) = memory::create_guest_memory(64, Default::default()) else {
            return;
        };
        let len = write_cmdline(&mem, "console=ttyS0 pci=nomsi", CpuTemplate::PassThrough, &[], false).unwrap();
        let mut bytes = vec![0u8; len as usize];
        vm_memory::Bytes::read_slice(&mem, &mut bytes, vm_memory::GuestAddress(CMDLINE_START)).unwrap();
        let cmdline = String::from_utf8(bytes).unwrap();
        assert!(
            cmdline.contains("pci=nomsi") && !cmdline.contains("pci=off"),
            "{cmdline}"
        );
    }

    #[test]
    fn with_pci_devices_are_pci_functions_with_assigned_bars_and_no_cmdline_entries() {
        let dir = std::env::temp_dir().join(format!("hull-builder-pci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let Some((cmdline, legacy)) = attach(true, &dir) else {
            return;
        };
        assert!(
            !cmdline
                .iter()
                .any(|c| c.starts_with("pci=") || c.starts_with("virtio_mmio")),
            "{cmdline:?}"
        );
        // 00:00.0 is the host bridge; 00:01.0 the vsock device (0x1040 + 19) with its BAR assigned.
        assert_eq!(config_read32(&legacy.pio, 0, 0x08).map(|c| c >> 16), Some(0x0600));
        assert_eq!(config_read32(&legacy.pio, 1, 0), Some(0x1053_1af4));
        assert_eq!(config_read32(&legacy.pio, 1, 0x10), Some(PCI_BAR_START as u32 | 4));
        assert_eq!(config_read32(&legacy.pio, 2, 0), Some(u32::MAX), "empty slot");
        // The BAR answers on the MMIO bus: the common configuration's num_queues (3 for vsock).
        let mut q = [0u8; 2];
        assert!(legacy.mmio.read(PCI_BAR_START + 0x12, &mut q));
        assert_eq!(u16::from_le_bytes(q), 3);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
