//! hull's virtio devices in the VMM: building each device core from its `*Config`, putting it behind a
//! virtio-mmio window on the MMIO bus (one ioeventfd per queue on the QueueNotify register, one irqfd for
//! its interrupt line) or, with `--enable-pci`, behind a virtio-pci function on bus 0 (its BAR on the MMIO
//! bus, one ioeventfd per queue notification slot, an irqfd per MSI-X vector), and the event-loop subscriber that runs the
//! device when a queue is kicked or its host-side fd is readable (a TAP, a socket, or a rate limiter's
//! timer). The running drives and network interfaces stay reachable for post-boot updates (`PATCH`): a new
//! backing file, new rate limits.
//!
//! Owns: the device's eventfds and its place in the event loop. Never trusts: what the guest writes into
//! the window or the queues (the transport and the cores validate it); a device that fails stops alone,
//! never the VMM.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use devices::bus::{lock, Bus, BusDevice};
use devices::transport::mmio::{device_type_name, MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY};
use devices::transport::pci::{notify_address, PciRoot, VirtioPciDevice, BAR_SIZE};
use devices::transport::VirtioTransport;
use devices::virtio::balloon::{Balloon, BalloonError, BalloonStats};
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::net::tap::Tap;
use devices::virtio::net::{Net, NetConfig};
use devices::virtio::vsock::Vsock;
use devices::virtio::VirtioDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_debug as debug, guest_info as info, guest_warn as warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{MicroVmConfig, RateLimiterConfig};
use crate::event_loop::Subscriber;
use crate::memory::GuestMemoryMmap;
use crate::msi_routing::{MsiError, MsiRouting};

/// Attaching a virtio device failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("drive {id}: {source}")]
    Drive {
        id: String,
        #[source]
        source: devices::virtio::block::BlockError,
    },
    #[error("network interface {id}: {source}")]
    Net {
        id: String,
        #[source]
        source: devices::virtio::net::device::NetError,
    },
    #[error("vsock: {0}")]
    Vsock(#[source] devices::virtio::vsock::unix::UnixBackendError),
    #[error("entropy device: {0}")]
    Entropy(#[source] devices::virtio::rng::RngError),
    #[error("balloon device: {0}")]
    Balloon(#[source] devices::virtio::balloon::BalloonError),
    #[error(transparent)]
    Transport(#[from] devices::transport::TransportError),
    #[error("{device}: cannot create its interrupt eventfd: {source}")]
    EventFd {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: KVM_IRQFD for IRQ {irq} failed: {source}")]
    Irqfd {
        device: String,
        irq: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{device}: MSI-X vectors: {source}")]
    Msi {
        device: String,
        #[source]
        source: MsiError,
    },
    #[error("{device}: {source}")]
    PciSlot {
        device: String,
        #[source]
        source: devices::transport::pci::bus::BusFull,
    },
    #[error("{device}: cannot map its registers at {addr:#x}: {source}")]
    Bus {
        device: String,
        addr: u64,
        #[source]
        source: devices::bus::BusError,
    },
}

/// A device core ready to be attached, with the name it is logged under (`block:rootfs`).
pub struct DeviceCore {
    pub label: String,
    pub core: Box<dyn VirtioDevice>,
    /// For drives: the `drive_id` and whether it was configured read-only.
    pub drive: Option<(String, bool)>,
    /// For network interfaces: the `iface_id`.
    pub iface: Option<String>,
}

/// Updating a running network interface failed.
#[derive(Debug, thiserror::Error)]
pub enum NetUpdateError {
    #[error("no network interface {0:?} is attached to the microVM")]
    NotFound(String),
}

/// Updating a running drive (its backing file or its rate limiter) failed; the drive is as it was.
#[derive(Debug, thiserror::Error)]
pub enum DriveUpdateError {
    #[error("no drive {0:?} is attached to the microVM")]
    NotFound(String),
    #[error("drive {id:?}: {source}")]
    Backing {
        id: String,
        #[source]
        source: devices::virtio::block::BlockError,
    },
}

/// One attached drive: its id, its configured read-only flag and its transport.
struct DriveHandle {
    id: String,
    read_only: bool,
    transport: Arc<Mutex<dyn VirtioTransport>>,
}

/// The running microVM's drives, for `PATCH /drives/{id}`.
#[derive(Default)]
pub struct Drives(Vec<DriveHandle>);

impl Drives {
    /// Remembers an attached drive.
    pub fn add(&mut self, id: String, read_only: bool, transport: Arc<Mutex<dyn VirtioTransport>>) {
        self.0.push(DriveHandle {
            id,
            read_only,
            transport,
        });
    }

    /// Swaps drive `id`'s backing file for `path` (its read-only flag stays as configured) and tells the
    /// driver through a config-change interrupt. Runs under the transport's lock, the one queue
    /// processing takes, so no request is split between the two files. Returns the new capacity in
    /// sectors.
    pub fn update(&self, id: &str, path: &Path) -> Result<u64, DriveUpdateError> {
        let drive = self
            .0
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| DriveUpdateError::NotFound(id.to_string()))?;
        let mut transport = lock(&drive.transport);
        let attached = transport
            .with_device(|block: &mut Block| block.attach(path, drive.read_only))
            .ok_or_else(|| DriveUpdateError::NotFound(id.to_string()))?;
        let capacity = attached.map_err(|source| DriveUpdateError::Backing {
            id: id.to_string(),
            source,
        })?;
        transport.config_changed();
        info!(drive_id = id, path = %path.display(), capacity, "drive backing file replaced");
        Ok(capacity)
    }

    /// Replaces the buckets `patch` gives of drive `id`'s rate limiter (omitted ones stay), between two
    /// requests (under the transport's lock). A throttled drive re-checks at once.
    pub fn update_rate_limiter(&self, id: &str, patch: &RateLimiterConfig) -> Result<(), DriveUpdateError> {
        let drive = self
            .0
            .iter()
            .find(|d| d.id == id)
            .ok_or_else(|| DriveUpdateError::NotFound(id.to_string()))?;
        lock(&drive.transport)
            .with_device(|block: &mut Block| block.update_rate_limiter(&patch.to_update()))
            .ok_or_else(|| DriveUpdateError::NotFound(id.to_string()))?;
        info!(drive_id = id, ?patch, "drive rate limiter updated");
        Ok(())
    }
}

/// The running microVM's network interfaces, for `PATCH /network-interfaces/{id}`.
#[derive(Default)]
pub struct NetInterfaces(Vec<(String, Arc<Mutex<dyn VirtioTransport>>)>);

impl NetInterfaces {
    /// Remembers an attached network interface.
    pub fn add(&mut self, id: String, transport: Arc<Mutex<dyn VirtioTransport>>) {
        self.0.push((id, transport));
    }

    /// Replaces the buckets the patches give of interface `id`'s RX and TX rate limiters (omitted
    /// buckets and limiters stay), between two frames.
    pub fn update_rate_limiters(
        &self,
        id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), NetUpdateError> {
        let not_found = || NetUpdateError::NotFound(id.to_string());
        let (_, transport) = self.0.iter().find(|(i, _)| i == id).ok_or_else(not_found)?;
        let update = |patch: Option<&RateLimiterConfig>| patch.map(|p| p.to_update()).unwrap_or_default();
        lock(transport)
            .with_device(|net: &mut Net<Tap>| net.update_rate_limiters(&update(rx), &update(tx)))
            .ok_or_else(not_found)?;
        info!(iface_id = id, ?rx, ?tx, "network interface rate limiters updated");
        Ok(())
    }
}

/// The running microVM's balloon, for `PATCH /balloon`, `GET|PATCH /balloon/statistics`. Every call takes
/// the transport's lock, the one queue processing takes, so it falls between two notifications.
pub struct BalloonHandle(Arc<Mutex<dyn VirtioTransport>>);

impl BalloonHandle {
    pub fn new(transport: Arc<Mutex<dyn VirtioTransport>>) -> Self {
        BalloonHandle(transport)
    }

    /// Runs `f` on the balloon core (`None` only if the transport held another device, which `attach`
    /// never makes).
    fn with<R>(&self, f: impl FnOnce(&mut Balloon) -> R) -> Option<R> {
        lock(&self.0).with_device(f)
    }

    /// A new target size; the driver is told through a config-change interrupt.
    pub fn update_size(&self, amount_mib: u32) -> Result<(), BalloonError> {
        let mut transport = lock(&self.0);
        transport
            .with_device(|balloon: &mut Balloon| balloon.update_size(amount_mib))
            .unwrap_or(Err(BalloonError::DeviceNotActive))?;
        transport.config_changed();
        info!(amount_mib, "balloon target updated");
        Ok(())
    }

    /// A new statistics polling interval.
    pub fn update_stats_interval(&self, interval_s: u16) -> Result<(), BalloonError> {
        self.with(|balloon| balloon.update_stats_interval(interval_s))
            .unwrap_or(Err(BalloonError::DeviceNotActive))
    }

    /// The latest statistics.
    pub fn stats(&self) -> Result<BalloonStats, BalloonError> {
        self.with(|balloon| balloon.stats())
            .unwrap_or(Err(BalloonError::DeviceNotActive))
    }

    /// The current target (MiB), deflate-on-OOM and statistics interval.
    pub fn config(&self) -> Option<(u32, bool, u16)> {
        self.with(|balloon| balloon.config())
    }
}

/// Builds every configured device core, in attachment order: the root drive first (so it is always
/// `/dev/vda`), the other drives as configured, the network interfaces, the vsock, then the entropy device.
pub fn create_cores(config: &MicroVmConfig) -> Result<Vec<DeviceCore>, AttachError> {
    let mut cores = Vec::new();
    for drive in config.drives_in_attach_order() {
        let cfg = BlockConfig {
            path: drive.path_on_host.clone(),
            read_only: drive.is_read_only,
            id: Some(drive.drive_id.clone()),
            rate_limiter: drive.rate_limiter.unwrap_or_default().to_device(),
        };
        let block = Block::new(&cfg).map_err(|source| AttachError::Drive {
            id: drive.drive_id.clone(),
            source,
        })?;
        cores.push(DeviceCore {
            label: format!("block:{}", drive.drive_id),
            core: Box::new(block),
            drive: Some((drive.drive_id.clone(), drive.is_read_only)),
            iface: None,
        });
    }
    for iface in &config.net {
        let cfg = NetConfig {
            tap: iface.host_dev_name.clone(),
            mac: iface.guest_mac.as_deref().and_then(crate::config::parse_mac),
            rx_rate_limiter: iface.rx_rate_limiter.unwrap_or_default().to_device(),
            tx_rate_limiter: iface.tx_rate_limiter.unwrap_or_default().to_device(),
        };
        let mut net = Net::new(&cfg).map_err(|source| AttachError::Net {
            id: iface.iface_id.clone(),
            source,
        })?;
        if let Some(mmds) = config
            .mmds
            .as_ref()
            .filter(|m| m.network_interfaces.contains(&iface.iface_id))
        {
            net.set_mmds(devices::mmds::MmdsStack::new(mmds.mmds.clone(), mmds.ipv4_address));
            info!(iface_id = %iface.iface_id, ipv4 = %mmds.ipv4_address, "MMDS served on this interface");
        }
        cores.push(DeviceCore {
            label: format!("net:{}", iface.iface_id),
            core: Box::new(net),
            drive: None,
            iface: Some(iface.iface_id.clone()),
        });
    }
    if let Some(vsock) = &config.vsock {
        let cfg = devices::virtio::vsock::VsockConfig {
            guest_cid: u64::from(vsock.guest_cid),
            uds_path: vsock.uds_path.clone(),
        };
        let core = Vsock::new(&cfg).map_err(AttachError::Vsock)?;
        let label = format!("vsock:{}", vsock.vsock_id.as_deref().unwrap_or("vsock"));
        cores.push(DeviceCore {
            label,
            core: Box::new(core),
            drive: None,
            iface: None,
        });
    }
    if let Some(balloon) = &config.balloon {
        let core = Balloon::new(
            balloon.amount_mib,
            balloon.deflate_on_oom,
            balloon.stats_polling_interval_s,
        )
        .map_err(AttachError::Balloon)?;
        cores.push(DeviceCore {
            label: "balloon".into(),
            core: Box::new(core),
            drive: None,
            iface: None,
        });
    }
    if let Some(entropy) = &config.entropy {
        let limiter = entropy.rate_limiter.unwrap_or_default().to_device();
        let core = devices::virtio::rng::Rng::new(&limiter).map_err(AttachError::Entropy)?;
        cores.push(DeviceCore {
            label: "rng:entropy".into(),
            core: Box::new(core),
            drive: None,
            iface: None,
        });
    }
    Ok(cores)
}

/// What the kernel needs to mount the root drive: `root=/dev/vda` (or `root=PARTUUID=...`), then `rw`
/// or `ro` (Firecracker's behaviour). Empty without a root device.
pub fn root_cmdline(config: &MicroVmConfig) -> Option<String> {
    let root = config.drives.iter().find(|d| d.is_root_device)?;
    let device = match &root.partuuid {
        Some(uuid) => format!("root=PARTUUID={uuid}"),
        None => "root=/dev/vda".to_string(),
    };
    Some(format!("{device} {}", if root.is_read_only { "ro" } else { "rw" }))
}

/// The kernel command-line entry that declares a virtio-mmio device.
pub fn mmio_cmdline(addr: u64, irq: u32) -> String {
    format!("virtio_mmio.device={}K@{addr:#x}:{irq}", MMIO_WINDOW_SIZE >> 10)
}

/// One ioeventfd per queue, at the address (and, if given, with the value) that `notify` names for it. A
/// queue KVM refuses one for is left out: its kicks take the MMIO-exit path.
fn queue_ioeventfds(
    vm: &VmFd,
    label: &str,
    queues: usize,
    notify: impl Fn(usize) -> (IoEventAddress, Option<u32>),
) -> Vec<(usize, EventFd)> {
    let mut ioeventfds = Vec::with_capacity(queues);
    for index in 0..queues {
        let (addr, value) = notify(index);
        let registered = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| e.to_string())
            .and_then(|evt| {
                let result = match value {
                    Some(value) => vm.register_ioevent(&evt, &addr, value),
                    None => vm.register_ioevent(&evt, &addr, NoDatamatch),
                };
                result.map(|()| evt).map_err(|e| e.to_string())
            });
        match registered {
            Ok(evt) => ioeventfds.push((index, evt)),
            Err(error) => {
                warn!(device = %label, index, %error, "no ioeventfd for this queue; its notifications take the MMIO-exit path");
            }
        }
    }
    ioeventfds
}

/// Puts `core` behind a virtio-mmio window at `addr` with interrupt line `irq`: the transport goes on the
/// MMIO bus, its interrupt eventfd becomes a KVM irqfd, each queue gets an ioeventfd on QueueNotify (the
/// MMIO-exit path stays as the fallback when KVM refuses one). Returns the event-loop subscriber and the
/// transport (kept for host-side updates such as `PATCH /drives`).
pub fn attach_mmio(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    device: DeviceCore,
    addr: u64,
    irq: u32,
) -> Result<(Subscriber, Arc<Mutex<MmioTransport>>), AttachError> {
    let label = device.label;
    let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| AttachError::EventFd {
        device: label.clone(),
        source,
    })?;
    vm.register_irqfd(&irq_evt, irq).map_err(|source| AttachError::Irqfd {
        device: label.clone(),
        irq,
        source,
    })?;
    let transport = MmioTransport::new(label.clone(), device.core, mem.clone(), irq_evt)?;
    let kind = device_type_name(transport.device_type());

    // Queue i's kicks are QueueNotify writes of i.
    let ioeventfds = queue_ioeventfds(vm, &label, transport.queue_count(), |index| {
        (IoEventAddress::Mmio(addr + QUEUE_NOTIFY), Some(index as u32))
    });

    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(transport.clone() as Arc<Mutex<dyn BusDevice>>, addr, MMIO_WINDOW_SIZE)
        .map_err(|source| AttachError::Bus {
            device: label.clone(),
            addr,
            source,
        })?;
    info!(device = %label, kind = %kind, addr = format_args!("{addr:#x}"), irq, ioeventfds = ioeventfds.len(), "virtio-mmio device attached");
    let handler = Arc::new(Mutex::new(DeviceHandler::new(
        transport.clone() as Arc<Mutex<dyn VirtioTransport>>,
        ioeventfds,
    )));
    Ok((handler, transport))
}

/// Puts `core` behind a virtio-pci function on `root` with its BAR at `bar` (on the MMIO bus): one GSI
/// and irqfd per MSI-X vector from `routing` (a route is set when the guest unmasks the vector), one
/// ioeventfd per queue on its notification slot (the MMIO-exit path stays as the fallback). Returns the
/// event-loop subscriber and the transport, as [`attach_mmio`] does.
#[allow(clippy::too_many_arguments)]
pub fn attach_pci(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    root: &Mutex<PciRoot>,
    routing: &Arc<MsiRouting>,
    device: DeviceCore,
    bar: u64,
) -> Result<(Subscriber, Arc<Mutex<dyn VirtioTransport>>), AttachError> {
    let label = device.label;
    let queues = device.core.queue_max_sizes().len();
    let vectors = routing.vectors(vm, queues + 1).map_err(|source| AttachError::Msi {
        device: label.clone(),
        source,
    })?;
    let function = VirtioPciDevice::new(label.clone(), device.core, mem.clone(), bar, Box::new(vectors))?;
    let kind = device_type_name(function.device_type());
    // Queue i has its own notification slot: any write there is a kick.
    let ioeventfds = queue_ioeventfds(vm, &label, function.queue_count(), |index| {
        (IoEventAddress::Mmio(notify_address(bar, index)), None)
    });
    let function = Arc::new(Mutex::new(function));
    mmio.insert(function.clone() as Arc<Mutex<dyn BusDevice>>, bar, BAR_SIZE)
        .map_err(|source| AttachError::Bus {
            device: label.clone(),
            addr: bar,
            source,
        })?;
    let slot = lock(root)
        .add(function.clone() as Arc<Mutex<dyn devices::transport::pci::PciFunction>>)
        .map_err(|source| AttachError::PciSlot {
            device: label.clone(),
            source,
        })?;
    info!(device = %label, kind = %kind, slot, bar = format_args!("{bar:#x}"), vectors = queues + 1, ioeventfds = ioeventfds.len(), "virtio-pci device attached");
    let transport: Arc<Mutex<dyn VirtioTransport>> = function;
    let handler = Arc::new(Mutex::new(DeviceHandler::new(transport.clone(), ioeventfds)));
    Ok((handler, transport))
}

/// Event token of the transport's state eventfd (queue tokens are the queue indices).
const STATE_TOKEN: u32 = u32::MAX;
/// Event token of the device's host-side fd.
const BACKEND_TOKEN: u32 = u32::MAX - 1;

/// The event-loop side of one virtio device, on either transport.
pub struct DeviceHandler {
    transport: Arc<Mutex<dyn VirtioTransport>>,
    ioeventfds: Vec<(usize, EventFd)>,
    state_fd: RawFd,
    label: String,
    /// The backend fd currently watched (only while the device is serving).
    watched_backend: Option<RawFd>,
    /// The transport was serving at the last state change.
    was_serving: bool,
}

impl DeviceHandler {
    fn new(transport: Arc<Mutex<dyn VirtioTransport>>, ioeventfds: Vec<(usize, EventFd)>) -> Self {
        let (state_fd, label) = {
            let t = lock(&transport);
            (t.state_event().as_raw_fd(), t.label().to_string())
        };
        DeviceHandler {
            transport,
            ioeventfds,
            state_fd,
            label,
            watched_backend: None,
            was_serving: false,
        }
    }

    /// Watches the device's host-side fd exactly while the device is serving.
    fn sync_backend(&mut self, ops: &mut EventOps) {
        let wanted = lock(&self.transport).backend_fd();
        if wanted == self.watched_backend {
            return;
        }
        if let Some(fd) = self.watched_backend.take() {
            if let Err(error) = ops.remove(Events::with_data_raw(fd, BACKEND_TOKEN, EventSet::IN)) {
                debug!(device = %self.label, fd, ?error, "could not stop watching the backend fd");
            }
        }
        if let Some(fd) = wanted {
            match ops.add(Events::with_data_raw(fd, BACKEND_TOKEN, EventSet::IN)) {
                Ok(()) => self.watched_backend = Some(fd),
                Err(error) => warn!(device = %self.label, fd, ?error, "cannot watch the device's backend fd"),
            }
        }
    }
}

impl MutEventSubscriber for DeviceHandler {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in &self.ioeventfds {
            if let Err(error) = ops.add(Events::with_data(evt, *index as u32, EventSet::IN)) {
                warn!(device = %self.label, index, ?error, "cannot watch a queue's ioeventfd");
            }
        }
        if let Err(error) = ops.add(Events::with_data_raw(self.state_fd, STATE_TOKEN, EventSet::IN)) {
            warn!(device = %self.label, ?error, "cannot watch the device state eventfd; its backend will not be polled");
        }
        self.sync_backend(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STATE_TOKEN => {
                // Drained through the transport, which owns the eventfd.
                let mut transport = lock(&self.transport);
                let _ = transport.state_event().read();
                let serving = transport.is_serving();
                if serving && !self.was_serving {
                    // A driver may queue buffers and kick before DRIVER_OK (Linux's balloon does with its
                    // first statistics buffer); the device only serves from DRIVER_OK on, so it takes one
                    // pass over every queue now instead of waiting for a kick that already came.
                    for index in 0..transport.queue_count() {
                        transport.notify_queue(index);
                    }
                }
                self.was_serving = serving;
                drop(transport);
                self.sync_backend(ops);
            }
            BACKEND_TOKEN => {
                if !events.event_set().contains(EventSet::IN) {
                    // Hang-up or error without data: the device cannot make progress on it.
                    warn!(device = %self.label, events = ?events.event_set(), "backend fd hung up; no longer watched");
                    let _ = ops.remove(events);
                    self.watched_backend = None;
                    return;
                }
                lock(&self.transport).process_backend();
                self.sync_backend(ops);
            }
            token => {
                let index = token as usize;
                if let Some((_, evt)) = self.ioeventfds.iter().find(|(i, _)| *i == index) {
                    // The count says how many kicks arrived; one pass over the queue serves them all.
                    let kicks = evt.read().unwrap_or(0);
                    debug!(device = %self.label, index, kicks, "queue kicked through its ioeventfd");
                }
                lock(&self.transport).notify_queue(index);
                self.sync_backend(ops);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drive transport over `path`, as `attach_mmio` builds it (without KVM: a plain eventfd for the IRQ).
    fn drive_transport(path: &Path, read_only: bool) -> (Arc<Mutex<MmioTransport>>, EventFd) {
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let block = Block::new(&BlockConfig {
            path: path.to_owned(),
            read_only,
            id: Some("slot0".into()),
            rate_limiter: Default::default(),
        })
        .unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new("block:slot0", Box::new(block), mem, irq.try_clone().unwrap()).unwrap();
        (Arc::new(Mutex::new(t)), irq)
    }

    fn capacity(t: &Arc<Mutex<MmioTransport>>) -> u64 {
        let mut b = [0u8; 8];
        lock(t).read(devices::transport::mmio::CONFIG_SPACE, &mut b);
        u64::from_le_bytes(b)
    }

    #[test]
    fn drive_update_swaps_the_file_and_moves_the_config_generation() {
        let dir = std::env::temp_dir().join(format!("hull-vmm-drives-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (empty, image) = (dir.join("empty"), dir.join("image"));
        std::fs::write(&empty, b"").unwrap();
        std::fs::write(&image, vec![1u8; 4096]).unwrap();
        let (transport, _irq) = drive_transport(&empty, false);
        let (ro_transport, _ro_irq) = drive_transport(&empty, true);
        let mut drives = Drives::default();
        drives.add("slot0".into(), false, transport.clone());
        drives.add("ro_slot".into(), true, ro_transport.clone());
        assert_eq!(capacity(&transport), 0);

        assert_eq!(drives.update("slot0", &image).unwrap(), 8);
        assert_eq!(capacity(&transport), 8);
        assert_eq!(lock(&transport).config_generation(), 1);
        // The configured read-only flag is kept: a read-only drive takes the file read-only.
        assert_eq!(drives.update("ro_slot", &image).unwrap(), 8);
        assert_eq!(
            lock(&ro_transport).with_device(|b: &mut Block| b.is_read_only()),
            Some(true)
        );

        // Failures change nothing.
        let e = drives.update("nope", &image).unwrap_err().to_string();
        assert_eq!(e, "no drive \"nope\" is attached to the microVM");
        let e = drives.update("slot0", &dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        let e = drives
            .update("slot0", Path::new("relative.img"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute"), "{e}");
        assert_eq!((capacity(&transport), lock(&transport).config_generation()), (8, 1));
        // Back to the empty placeholder.
        assert_eq!(drives.update("slot0", &empty).unwrap(), 0);
        assert_eq!((capacity(&transport), lock(&transport).config_generation()), (0, 2));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rate_limiter_patches_reach_the_running_drive_bucket_by_bucket() {
        let dir = std::env::temp_dir().join(format!("hull-vmm-rl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("image");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let (transport, _irq) = drive_transport(&image, false);
        let mut drives = Drives::default();
        drives.add("data".into(), false, transport.clone());
        let bucket = |size| crate::config::TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time: 1000,
        };
        let limits = |t: &Arc<Mutex<MmioTransport>>| {
            lock(t)
                .with_device(|b: &mut Block| {
                    let rl = b.rate_limiter();
                    (rl.bandwidth().map(|b| b.available()), rl.ops().map(|b| b.available()))
                })
                .unwrap()
        };
        assert_eq!(limits(&transport), (None, None));
        let both = RateLimiterConfig {
            bandwidth: Some(bucket(4096)),
            ops: Some(bucket(8)),
        };
        drives.update_rate_limiter("data", &both).unwrap();
        assert_eq!(limits(&transport), (Some(4096), Some(8)));
        // Only the ops bucket is given: it is replaced (size 0 lifts it), bandwidth stays.
        let ops_only = RateLimiterConfig {
            bandwidth: None,
            ops: Some(bucket(0)),
        };
        drives.update_rate_limiter("data", &ops_only).unwrap();
        assert_eq!(limits(&transport), (Some(4096), None));
        let e = drives.update_rate_limiter("nope", &both).unwrap_err().to_string();
        assert_eq!(e, "no drive \"nope\" is attached to the microVM");
        // A transport holding something other than a net device is not an interface.
        let mut nets = NetInterfaces::default();
        nets.add("eth0".into(), transport.clone());
        let e = nets
            .update_rate_limiters("eth0", Some(&both), None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "no network interface \"eth0\" is attached to the microVM");
        assert!(nets.update_rate_limiters("eth1", None, None).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// MSI-X vectors that only count what is sent.
    #[derive(Clone, Default)]
    struct CountingVectors(Arc<Mutex<Vec<u16>>>);

    impl devices::transport::pci::MsiVectors for CountingVectors {
        fn set_route(&self, _: u16, _: devices::transport::pci::MsiMessage) -> std::io::Result<()> {
            Ok(())
        }
        fn trigger(&self, vector: u16) -> std::io::Result<()> {
            lock(&self.0).push(vector);
            Ok(())
        }
    }

    #[test]
    fn drive_updates_work_the_same_over_virtio_pci() {
        use devices::transport::pci::device::DEVICE_CONFIG_OFFSET;
        let dir = std::env::temp_dir().join(format!("hull-vmm-drives-pci-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (empty, image) = (dir.join("empty"), dir.join("image"));
        std::fs::write(&empty, b"").unwrap();
        std::fs::write(&image, vec![1u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let block = Block::new(&BlockConfig {
            path: empty.clone(),
            read_only: false,
            id: Some("data".into()),
            rate_limiter: Default::default(),
        })
        .unwrap();
        let vectors = CountingVectors::default();
        let function = VirtioPciDevice::new(
            "block:data",
            Box::new(block),
            mem,
            0xe000_0000,
            Box::new(vectors.clone()),
        )
        .unwrap();
        let function = Arc::new(Mutex::new(function));
        let mut drives = Drives::default();
        drives.add("data".into(), false, function.clone());
        assert_eq!(drives.update("data", &image).unwrap(), 16);
        let mut capacity = [0u8; 8];
        lock(&function).read(DEVICE_CONFIG_OFFSET, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 16);
        assert_eq!(lock(&function).config_generation(), 1);
        assert!(lock(&vectors.0).is_empty(), "no driver yet: no interrupt");
        let e = drives.update("data", &dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        assert_eq!(lock(&function).config_generation(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn command_line_entries_look_like_firecrackers() {
        assert_eq!(mmio_cmdline(0xd000_0000, 5), "virtio_mmio.device=4K@0xd0000000:5");
        let mut config = MicroVmConfig::default();
        assert_eq!(root_cmdline(&config), None);
        let drive = |id: &str, root: bool, ro: bool, partuuid: Option<&str>| crate::config::BlockDeviceConfig {
            drive_id: id.into(),
            path_on_host: "/x".into(),
            is_root_device: root,
            is_read_only: ro,
            partuuid: partuuid.map(Into::into),
            cache_type: Default::default(),
            io_engine: Default::default(),
            rate_limiter: None,
            socket: None,
        };
        config.drives = vec![drive("data", false, false, None), drive("rootfs", true, false, None)];
        assert_eq!(root_cmdline(&config).as_deref(), Some("root=/dev/vda rw"));
        config.drives[1] = drive("rootfs", true, true, Some("0eaa91a0-01"));
        assert_eq!(root_cmdline(&config).as_deref(), Some("root=PARTUUID=0eaa91a0-01 ro"));
    }
}
