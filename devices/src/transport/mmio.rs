//! virtio-mmio version 2 (virtio 1.2, section 4.2; no legacy layouts): the register window a driver uses
//! to find, negotiate, configure and kick one device core. The transport owns the device's queues and
//! its interrupt status; the core only sees the queues the driver made ready, lent per call.
//!
//! How a guest reaches it: vCPU MMIO exits through [`BusDevice`], and (the fast path) the event loop calling
//! [`MmioTransport::notify_queue`] when a KVM ioeventfd on [`QUEUE_NOTIFY`] fires. Interrupts go out
//! through an eventfd the VMM registers as a KVM irqfd.
//!
//! Never trusted: every register value the driver writes. Queue sizes and ring addresses are only held as
//! written until `DRIVER_OK`, when they are validated (power-of-two size within the maximum, alignment,
//! rings inside guest memory) before the device sees them; unknown offsets and odd access widths are
//! ignored; a device error puts the device in `DEVICE_NEEDS_RESET` and nothing reaches it until the
//! driver resets it.

use std::os::fd::RawFd;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_debug as debug, guest_info as info, guest_warn as warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

mod persist;

pub use persist::{MmioTransportState, QueueSnapshot, RestoreError};

use super::NeedsReset;
use crate::bus::BusDevice;
use crate::virtio::{
    ActivateError, DeviceError, GuestMemory, QueueSet, QueueSignals, VirtioDevice, DEVICE_NEEDS_RESET, TYPE_BALLOON,
    TYPE_BLOCK, TYPE_NET, TYPE_PMEM, TYPE_RNG, TYPE_VSOCK, VIRTIO_F_VERSION_1,
};

/// "virt" in little-endian: the first register of every virtio-mmio window.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Register layout version 2: virtio 1.x (version 1 is the legacy layout, not offered).
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the driver ("HULL" in little-endian; drivers do not match on it).
pub const VENDOR_ID: u32 = 0x4c4c_5548;
/// Size of a device's register window (registers, then the config space from [`CONFIG_SPACE`]).
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

// Register offsets (virtio 1.2, 4.2.2). All are 32 bits wide.
const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// Offset of the QueueNotify register: the driver writes a queue index here to kick it. The VMM
/// registers one ioeventfd per queue at `base + QUEUE_NOTIFY` with the index as datamatch.
pub const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const SHM_SEL: u64 = 0x0ac;
const SHM_LEN_LOW: u64 = 0x0b0;
const SHM_LEN_HIGH: u64 = 0x0b4;
const SHM_BASE_LOW: u64 = 0x0b8;
const SHM_BASE_HIGH: u64 = 0x0bc;
const CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device-specific config space.
pub const CONFIG_SPACE: u64 = 0x100;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 0x01;
pub const STATUS_DRIVER: u32 = 0x02;
pub const STATUS_DRIVER_OK: u32 = 0x04;
pub const STATUS_FEATURES_OK: u32 = 0x08;
pub const STATUS_FAILED: u32 = 0x80;
/// The bits a driver may set; anything else it writes is dropped.
pub(crate) const DRIVER_STATUS_BITS: u32 =
    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK | STATUS_FEATURES_OK | STATUS_FAILED;

/// InterruptStatus bits: a used buffer was added / the configuration changed (or the device broke).
pub const INT_VRING: u32 = 0x1;
pub const INT_CONFIG: u32 = 0x2;

/// `VIRTIO_RING_F_EVENT_IDX`: if a device offers it and the driver takes it, the queues use it.
pub(crate) const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// Largest queue the split ring allows.
pub(crate) const MAX_QUEUE_SIZE: u16 = 32768;
/// `QueueSignals` has one bit per queue.
pub(crate) const MAX_QUEUES: usize = 64;

/// A device core cannot be wrapped (a bug in the core, not guest input).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("virtio device {device}: it declares no queues")]
    NoQueues { device: String },
    #[error("virtio device {device}: it declares {count} queues; virtio-mmio here carries at most {MAX_QUEUES}")]
    TooManyQueues { device: String, count: usize },
    #[error("virtio device {device}: queue {index} has maximum size {size}; it must be a power of two up to {MAX_QUEUE_SIZE}")]
    QueueMaxSize { device: String, index: usize, size: u16 },
    #[error("virtio device {device}: cannot create its state eventfd: {source}")]
    EventFd {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("virtio device {device}: {source}")]
    PciCapability {
        device: String,
        #[source]
        source: super::pci::config_space::CapabilityFull,
    },
}

/// Why `DRIVER_OK` did not bring the device up (the driver's queue setup, or the device's backend).
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("queue {queue}: size {size} is not a power of two between 1 and {max}")]
    QueueSize { queue: usize, size: u32, max: u16 },
    #[error("queue {queue}: the {ring} address {addr:#x} is not aligned")]
    QueueAlignment {
        queue: usize,
        ring: &'static str,
        addr: u64,
    },
    #[error("queue {queue}: its rings (desc {desc:#x}, avail {avail:#x}, used {used:#x}, size {size}) are not all in guest memory")]
    QueueOutsideMemory {
        queue: usize,
        desc: u64,
        avail: u64,
        used: u64,
        size: u32,
    },
    #[error(transparent)]
    Device(#[from] ActivateError),
}

/// A device type's name, for logs.
pub fn device_type_name(device_type: u32) -> &'static str {
    match device_type {
        TYPE_NET => "net",
        TYPE_BLOCK => "block",
        TYPE_VSOCK => "vsock",
        TYPE_RNG => "rng",
        TYPE_BALLOON => "balloon",
        TYPE_PMEM => "pmem",
        _ => "unknown",
    }
}

/// One queue's registers as the driver wrote them; validated only at `DRIVER_OK` (shared with virtio-pci).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct QueueRegs {
    pub(crate) size: u32,
    pub(crate) ready: bool,
    pub(crate) desc: u64,
    pub(crate) avail: u64,
    pub(crate) used: u64,
}

/// Replaces the low or high half of `addr`.
fn set_half(addr: &mut u64, value: u32, high: bool) {
    *addr = if high {
        (*addr & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*addr & !0xffff_ffff) | u64::from(value)
    };
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    label: String,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    queues: Vec<Queue>,
    regs: Vec<QueueRegs>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    /// The driver wrote a nonzero word into a feature page past bit 63 (never offered).
    driver_features_unknown: bool,
    acked_features: u64,
    status: u32,
    interrupt_status: u32,
    config_generation: u32,
    irq: EventFd,
    state_evt: EventFd,
    active: bool,
    needs_reset: NeedsReset,
}

impl MmioTransport {
    /// Wraps `device`; `label` names it in logs (e.g. `block:rootfs`), `mem` is the guest's memory and
    /// `irq` the eventfd that raises its interrupt (a KVM irqfd in hull, anything in tests).
    pub fn new(
        label: impl Into<String>,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq: EventFd,
    ) -> Result<Self, TransportError> {
        let label = label.into();
        let (queues, state_evt) = new_queues(&label, device.as_ref())?;
        Ok(MmioTransport {
            label,
            device,
            mem,
            regs: vec![QueueRegs::default(); queues.len()],
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            driver_features_unknown: false,
            acked_features: 0,
            status: 0,
            interrupt_status: 0,
            config_generation: 0,
            irq,
            state_evt,
            active: false,
            needs_reset: NeedsReset::default(),
        })
    }

    /// The name given at creation.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The virtio device id of the core.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// How many queues the device has (one ioeventfd each).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The device status register as the driver would read it.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the device is serving: activated, not broken, not failed by the driver.
    pub fn is_serving(&self) -> bool {
        self.active && !self.needs_reset.is_set() && self.status & STATUS_FAILED == 0
    }

    /// Becomes readable whenever the device starts or stops serving, so the event loop can start or stop
    /// watching [`MmioTransport::backend_fd`]. The reader drains it.
    pub fn state_event(&self) -> &EventFd {
        &self.state_evt
    }

    /// The device's host-side fd, while the device is serving (it is not watched otherwise, so a
    /// readable TAP or socket cannot spin the event loop while the driver is away).
    pub fn backend_fd(&self) -> Option<RawFd> {
        if self.is_serving() {
            self.device.backend_fd()
        } else {
            None
        }
    }

    /// The core's counters, if it keeps any.
    pub fn metrics(&self) -> Option<std::sync::Arc<dyn crate::virtio::DeviceMetrics>> {
        self.device.metrics()
    }

    /// The driver kicked queue `index` (through the ioeventfd or a QueueNotify write): let the device
    /// consume it. Ignored unless the device is serving and `index` names one of its queues.
    pub fn notify_queue(&mut self, index: usize) {
        if !self.is_serving() || index >= self.queues.len() {
            debug!(device = %self.label, index, serving = self.is_serving(), "queue notification ignored");
            return;
        }
        let mut set = QueueSet::from_slice(&mut self.queues);
        let result = self
            .needs_reset
            .call(|| self.device.process_queue(index, &self.mem, &mut set));
        self.deliver(result);
    }

    /// Runs `f` on the device core when it is a `T`: host-side operations one kind of device has (replacing
    /// a block device's file). It runs under the same `&mut self` that serves the queues, so never in the
    /// middle of a request. `None` when the core is something else.
    pub fn with_device<T: 'static, R>(&mut self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.device.as_any_mut()?.downcast_mut::<T>().map(f)
    }

    /// The core as `Any`, for [`super::VirtioTransport`].
    pub fn device_any(&mut self) -> Option<&mut dyn std::any::Any> {
        self.device.as_any_mut()
    }

    /// The host changed the device's config space (a new disk capacity): ConfigGeneration moves on, and a
    /// driver that has the device running (DRIVER_OK) gets a configuration-change interrupt, on which
    /// Linux's virtio drivers re-read the config space.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & STATUS_DRIVER_OK != 0 {
            self.raise(INT_CONFIG);
        }
        debug!(device = %self.label, generation = self.config_generation, "config space changed");
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// The device's backend fd polled readable.
    pub fn process_backend(&mut self) {
        if !self.is_serving() {
            return;
        }
        let mut set = QueueSet::from_slice(&mut self.queues);
        let result = self
            .needs_reset
            .call(|| self.device.process_backend(&self.mem, &mut set));
        self.deliver(result);
    }

    fn deliver(&mut self, result: Result<QueueSignals, DeviceError>) {
        match result {
            Ok(signals) => {
                if signals.any() {
                    self.raise(INT_VRING);
                }
            }
            Err(error) => {
                warn!(device = %self.label, %error, "virtio device needs a reset; it is stopped until the driver resets it");
                self.break_device();
            }
        }
    }

    /// Sets DEVICE_NEEDS_RESET, tells the driver through a config-change interrupt and stops serving.
    fn break_device(&mut self) {
        self.needs_reset.set();
        self.status |= DEVICE_NEEDS_RESET;
        self.raise(INT_CONFIG);
        self.signal_state_change();
    }

    fn raise(&mut self, bits: u32) {
        self.interrupt_status |= bits;
        if let Err(error) = self.irq.write(1) {
            warn!(device = %self.label, %error, "cannot raise the virtio-mmio interrupt");
        }
    }

    fn signal_state_change(&self) {
        if let Err(error) = self.state_evt.write(1) {
            warn!(device = %self.label, %error, "cannot signal a virtio device state change");
        }
    }

    /// Status 0: back to the state after power-on, device state included.
    fn reset(&mut self) {
        let was_serving = self.is_serving();
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.regs.iter_mut().for_each(|r| *r = QueueRegs::default());
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.driver_features_unknown = false;
        self.acked_features = 0;
        self.status = 0;
        self.interrupt_status = 0;
        self.active = false;
        self.needs_reset.clear();
        debug!(device = %self.label, "virtio-mmio device reset");
        if was_serving {
            self.signal_state_change();
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let label = self.label.clone();
        let Some((new, added)) = next_status(&label, self.status, value, |new| {
            let acked = negotiate_features(
                &label,
                self.device.as_mut(),
                new,
                self.driver_features,
                self.driver_features_unknown,
            );
            if let Some(acked) = acked {
                self.acked_features = acked;
            }
            acked.is_some()
        }) else {
            return;
        };
        self.status = new | (self.status & DEVICE_NEEDS_RESET);
        if added & STATUS_FAILED != 0 {
            info!(device = %self.label, "the driver gave up on the virtio device (FAILED)");
            if self.active {
                self.signal_state_change();
            }
        }
        if new & STATUS_DRIVER_OK != 0 && added & STATUS_DRIVER_OK != 0 && !self.needs_reset.is_set() {
            self.activate();
        }
    }

    /// DRIVER_OK: validate the queues the driver set up, hand them over and start the device.
    fn activate(&mut self) {
        match self.try_activate() {
            Ok(()) => {
                self.active = true;
                let kind = device_type_name(self.device.device_type());
                let queues = self.regs.iter().filter(|r| r.ready).count();
                info!(device = %self.label, kind = %kind, queues, features = self.acked_features, "virtio-mmio device activated");
                self.signal_state_change();
            }
            Err(error) => {
                warn!(device = %self.label, %error, "virtio device activation failed");
                self.break_device();
            }
        }
    }

    fn try_activate(&mut self) -> Result<(), ActivationError> {
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        activate_queues(&mut self.queues, &self.regs, &self.mem, event_idx)?;
        self.device.activate()?;
        Ok(())
    }

    /// The queue QueueSel points at, if it names one.
    fn selected(&mut self) -> Option<&mut QueueRegs> {
        usize::try_from(self.queue_select)
            .ok()
            .and_then(|i| self.regs.get_mut(i))
    }

    /// Queue registers may change between FEATURES_OK and DRIVER_OK only.
    fn queue_setup_allowed(&self) -> bool {
        self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED) == STATUS_FEATURES_OK
            && !self.needs_reset.is_set()
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let sel = usize::try_from(self.queue_select).ok();
        match offset {
            MAGIC_VALUE => MMIO_MAGIC,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device.device_type(),
            VENDOR => VENDOR_ID,
            DEVICE_FEATURES => {
                let features = self.device.avail_features();
                match self.device_features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            QUEUE_NUM_MAX => sel
                .and_then(|i| self.queues.get(i))
                .map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => sel.and_then(|i| self.regs.get(i)).map_or(0, |r| u32::from(r.ready)),
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            // No shared memory regions: a length (and base) of all ones says "no such region".
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!(device = %self.label, offset, "read of a write-only or unknown virtio-mmio register");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_select = value,
            DRIVER_FEATURES_SEL => self.driver_features_select = value,
            DRIVER_FEATURES => {
                if self.status & (STATUS_DRIVER | STATUS_FEATURES_OK) != STATUS_DRIVER {
                    debug!(device = %self.label, status = self.status, "DriverFeatures written outside negotiation; ignored");
                    return;
                }
                match self.driver_features_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
                    _ => self.driver_features_unknown |= value != 0,
                }
            }
            QUEUE_SEL => self.queue_select = value,
            QUEUE_NUM | QUEUE_READY | QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH
            | QUEUE_DEVICE_LOW | QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, value),
            QUEUE_NOTIFY => match usize::try_from(value) {
                Ok(index) => self.notify_queue(index),
                Err(_) => debug!(device = %self.label, value, "QueueNotify for no queue"),
            },
            INTERRUPT_ACK => self.interrupt_status &= !value,
            STATUS => self.write_status(value),
            SHM_SEL => {}
            _ => debug!(device = %self.label, offset, value, "write to a read-only or unknown virtio-mmio register"),
        }
    }

    fn write_queue_reg(&mut self, offset: u64, value: u32) {
        // Disabling a queue is always allowed (Linux does it when tearing queues down).
        if offset == QUEUE_READY && value == 0 {
            let sel = usize::try_from(self.queue_select).ok();
            if let Some(regs) = self.selected() {
                regs.ready = false;
            }
            if let Some(q) = sel.and_then(|i| self.queues.get_mut(i)) {
                q.set_ready(false);
            }
            return;
        }
        if !self.queue_setup_allowed() {
            debug!(device = %self.label, offset, status = self.status, "queue register written outside queue setup; ignored");
            return;
        }
        let label = self.label.clone();
        let Some(regs) = self.selected() else {
            debug!(device = %label, offset, "queue register written with QueueSel naming no queue; ignored");
            return;
        };
        match offset {
            QUEUE_NUM => regs.size = value,
            QUEUE_READY => regs.ready = value == 1,
            QUEUE_DESC_LOW => set_half(&mut regs.desc, value, false),
            QUEUE_DESC_HIGH => set_half(&mut regs.desc, value, true),
            QUEUE_DRIVER_LOW => set_half(&mut regs.avail, value, false),
            QUEUE_DRIVER_HIGH => set_half(&mut regs.avail, value, true),
            QUEUE_DEVICE_LOW => set_half(&mut regs.used, value, false),
            QUEUE_DEVICE_HIGH => set_half(&mut regs.used, value, true),
            _ => {}
        }
    }
}

/// The queues `device` asks for, each checked (at least one, at most `MAX_QUEUES`, sizes within
/// `MAX_QUEUE_SIZE`), and the eventfd the transport signals its state changes on: what both transports
/// build first.
pub(crate) fn new_queues(label: &str, device: &dyn VirtioDevice) -> Result<(Vec<Queue>, EventFd), TransportError> {
    let sizes = device.queue_max_sizes();
    if sizes.is_empty() {
        return Err(TransportError::NoQueues { device: label.into() });
    }
    if sizes.len() > MAX_QUEUES {
        return Err(TransportError::TooManyQueues {
            device: label.into(),
            count: sizes.len(),
        });
    }
    let mut queues = Vec::with_capacity(sizes.len());
    for (index, &size) in sizes.iter().enumerate() {
        match Queue::new(size) {
            Ok(q) if size <= MAX_QUEUE_SIZE => queues.push(q),
            _ => {
                return Err(TransportError::QueueMaxSize {
                    device: label.into(),
                    index,
                    size,
                })
            }
        }
    }
    let state_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| TransportError::EventFd {
        device: label.into(),
        source,
    })?;
    Ok((queues, state_evt))
}

/// A driver's write of `value` (not 0: that is a reset) to a device status of `status`, checked against
/// the order the virtio spec gives the bits. `None`: the write is ignored (it clears bits without a
/// reset, or sets DRIVER without ACKNOWLEDGE). Otherwise the driver's new bits and those it added;
/// FEATURES_OK is dropped when `negotiate` refuses the features, DRIVER_OK without FEATURES_OK. Shared by
/// both transports.
pub(crate) fn next_status(
    label: &str,
    status: u32,
    value: u32,
    negotiate: impl FnOnce(u32) -> bool,
) -> Option<(u32, u32)> {
    let old = status & DRIVER_STATUS_BITS;
    let mut new = value & DRIVER_STATUS_BITS;
    if new & old != old {
        debug!(device = %label, old, new, "status write clears bits without a reset; ignored");
        return None;
    }
    let added = new & !old;
    if added & STATUS_DRIVER != 0 && new & STATUS_ACKNOWLEDGE == 0 {
        debug!(device = %label, new, "DRIVER without ACKNOWLEDGE; ignored");
        return None;
    }
    if added & STATUS_FEATURES_OK != 0 && !negotiate(new) {
        // The driver reads the status back and sees FEATURES_OK missing: negotiation failed.
        new &= !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }
    if added & STATUS_DRIVER_OK != 0 && new & STATUS_FEATURES_OK == 0 {
        debug!(device = %label, new, "DRIVER_OK without FEATURES_OK; ignored");
        new &= !STATUS_DRIVER_OK;
    }
    Some((new, added))
}

/// FEATURES_OK: the driver's features are accepted (and given to the core) when DRIVER is set, every
/// word it wrote was one the transport knows, they are within what the core offered and include
/// VERSION_1. Returns the acked set.
pub(crate) fn negotiate_features(
    label: &str,
    device: &mut dyn VirtioDevice,
    status: u32,
    acked: u64,
    unknown_word_written: bool,
) -> Option<u64> {
    let offered = device.avail_features();
    let ok = status & STATUS_DRIVER != 0
        && !unknown_word_written
        && acked & !offered == 0
        && acked & VIRTIO_F_VERSION_1 != 0;
    if ok {
        device.set_acked_features(acked);
        debug!(device = %label, features = acked, "features negotiated");
        Some(acked)
    } else {
        warn!(
            device = %label,
            offered,
            acked,
            "feature negotiation refused: the driver needs VERSION_1 and only offered features"
        );
        None
    }
}

/// Validates the queues the driver made ready (power-of-two size within the maximum, aligned rings inside
/// guest memory) and hands their registers to the `Queue`s; the others are left reset. Used at
/// `DRIVER_OK` by both transports.
pub(crate) fn activate_queues(
    queues: &mut [Queue],
    regs: &[QueueRegs],
    mem: &GuestMemory,
    event_idx: bool,
) -> Result<(), ActivationError> {
    for (index, (queue, regs)) in queues.iter_mut().zip(regs).enumerate() {
        queue.reset();
        if !regs.ready {
            continue;
        }
        let max = queue.max_size();
        let size = u16::try_from(regs.size)
            .ok()
            .filter(|s| *s != 0 && s.is_power_of_two() && *s <= max)
            .ok_or(ActivationError::QueueSize {
                queue: index,
                size: regs.size,
                max,
            })?;
        queue.try_set_size(size).map_err(|_| ActivationError::QueueSize {
            queue: index,
            size: regs.size,
            max,
        })?;
        let align = |ring, addr| ActivationError::QueueAlignment {
            queue: index,
            ring,
            addr,
        };
        queue
            .try_set_desc_table_address(GuestAddress(regs.desc))
            .map_err(|_| align("descriptor table", regs.desc))?;
        queue
            .try_set_avail_ring_address(GuestAddress(regs.avail))
            .map_err(|_| align("available ring", regs.avail))?;
        queue
            .try_set_used_ring_address(GuestAddress(regs.used))
            .map_err(|_| align("used ring", regs.used))?;
        queue.set_event_idx(event_idx);
        queue.set_ready(true);
        if !queue.is_valid(mem) {
            queue.reset();
            return Err(ActivationError::QueueOutsideMemory {
                queue: index,
                desc: regs.desc,
                avail: regs.avail,
                used: regs.used,
                size: regs.size,
            });
        }
    }
    Ok(())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            debug!(device = %self.label, offset, len = data.len(), "virtio-mmio register read that is not 32-bit aligned");
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!(device = %self.label, offset, len = data.len(), "virtio-mmio register write that is not 32 bits; ignored");
            return;
        };
        if offset & 3 != 0 {
            debug!(device = %self.label, offset, "unaligned virtio-mmio register write; ignored");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use crate::virtio::block::test_utils::{offer_request, status, MemDisk, DATA, HDR, STATUS as STATUS_BYTE};
    use crate::virtio::block::Block;
    use crate::virtio::test_utils::{Desc, GuestQueue, StubDevice};

    const QSIZE: u32 = 16;

    fn rd(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    struct Rig {
        t: MmioTransport,
        q: GuestQueue,
        disk: MemDisk,
        irq: EventFd,
    }

    /// A block device over a 32 KiB in-memory disk, in the 16 MiB test guest of `GuestQueue`.
    fn rig() -> Rig {
        let disk = MemDisk::new(64 * 512);
        let dev = Block::with_backend(Box::new(disk.clone()), false, "mmio-test").unwrap();
        let q = GuestQueue::new(QSIZE as u16);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new("block:test", Box::new(dev), q.mem().clone(), irq.try_clone().unwrap()).unwrap();
        Rig { t, q, disk, irq }
    }

    /// Linux's probe sequence up to FEATURES_OK; returns what FEATURES_OK read back as.
    fn negotiate(t: &mut MmioTransport, features: u64) -> bool {
        wr(t, STATUS, 0);
        wr(t, STATUS, STATUS_ACKNOWLEDGE);
        wr(t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(t, DRIVER_FEATURES_SEL, 1);
        wr(t, DRIVER_FEATURES, (features >> 32) as u32);
        wr(t, DRIVER_FEATURES_SEL, 0);
        wr(t, DRIVER_FEATURES, features as u32);
        wr(t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        rd(t, STATUS) & STATUS_FEATURES_OK != 0
    }

    /// Queue 0 set up at the rings `GuestQueue` laid out, then DRIVER_OK.
    fn setup_queue_and_go(r: &mut Rig, size: u32) {
        let (desc, avail, used) = {
            let q = r.q.queue_mut();
            (q.desc_table(), q.avail_ring(), q.used_ring())
        };
        let t = &mut r.t;
        wr(t, QUEUE_SEL, 0);
        assert_eq!(rd(t, QUEUE_READY), 0);
        assert_eq!(rd(t, QUEUE_NUM_MAX), 256);
        wr(t, QUEUE_NUM, size);
        wr(t, QUEUE_DESC_LOW, desc as u32);
        wr(t, QUEUE_DESC_HIGH, (desc >> 32) as u32);
        wr(t, QUEUE_DRIVER_LOW, avail as u32);
        wr(t, QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        wr(t, QUEUE_DEVICE_LOW, used as u32);
        wr(t, QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        wr(t, QUEUE_READY, 1);
        assert_eq!(rd(t, QUEUE_READY), 1);
        wr(
            t,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
    }

    fn bring_up(r: &mut Rig) {
        assert!(negotiate(&mut r.t, VIRTIO_F_VERSION_1));
        setup_queue_and_go(r, QSIZE);
        assert!(r.t.is_serving(), "status {:#x}", r.t.status());
        assert_eq!(r.t.state_event().read().unwrap(), 1);
    }

    /// A transport saved mid-use and restored into a fresh one over the same memory and disk serves the
    /// next request where the first left off; hostile states are refused.
    #[test]
    fn a_saved_transport_restores_into_a_fresh_one_and_bad_states_are_refused() {
        let mut r = rig();
        bring_up(&mut r);
        let first = offer_request(&mut r.q, VIRTIO_BLK_T_IN, 1, &[Desc::write(DATA, 512)]);
        r.t.notify_queue(0);
        assert_eq!(r.q.take_used(), vec![(first, 513)]);
        let saved = r.t.save_state();
        assert!(saved.active && saved.queues[0].live && saved.queues[0].next_used == 1);

        let fresh = |r: &Rig| {
            let dev = Block::with_backend(Box::new(r.disk.clone()), false, "mmio-test").unwrap();
            MmioTransport::new(
                "block:restored",
                Box::new(dev),
                r.q.mem().clone(),
                r.irq.try_clone().unwrap(),
            )
            .unwrap()
        };
        let mut restored = fresh(&r);
        restored.restore_state(&saved).unwrap();
        restored.resume_after_restore();
        assert!(restored.is_serving());
        assert_eq!(restored.save_state(), saved);
        r.disk.data.lock().unwrap()[3 * 512..4 * 512].fill(0x77);
        let second = offer_request(&mut r.q, VIRTIO_BLK_T_IN, 3, &[Desc::write(DATA, 512)]);
        restored.notify_queue(0);
        assert_eq!(status(&r.q), VIRTIO_BLK_S_OK);
        assert_eq!(r.q.take_used(), vec![(second, 513)]);
        let mut got = [0u8; 512];
        r.q.mem().read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got.iter().all(|b| *b == 0x77));

        let refused = |change: &dyn Fn(&mut MmioTransportState), says: &str| {
            let mut bad = saved.clone();
            change(&mut bad);
            let e = fresh(&r).restore_state(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        };
        refused(&|s| s.queues[0].size = 3, "queue 0");
        refused(&|s| s.queues[0].used = 1 << 40, "not all in guest memory");
        refused(&|s| s.device_type = TYPE_NET, "type 1");
        refused(&|s| s.acked_features |= 1 << 60, "not ones a driver could reach");
        refused(&|s| s.queues.push(s.queues[0].clone()), "2 queues");
        refused(&|s| s.device = serde_json::json!({ "x": 1 }), "own state");
    }

    #[test]
    fn identifies_as_a_version_2_device() {
        let mut r = rig();
        assert_eq!(rd(&mut r.t, MAGIC_VALUE), MMIO_MAGIC);
        assert_eq!(rd(&mut r.t, VERSION), 2);
        assert_eq!(rd(&mut r.t, DEVICE_ID), TYPE_BLOCK);
        assert_eq!(rd(&mut r.t, VENDOR), VENDOR_ID);
        // Feature pages: VERSION_1 is bit 32, i.e. bit 0 of page 1; pages past 1 are empty.
        wr(&mut r.t, DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut r.t, DEVICE_FEATURES) & 1, 1);
        wr(&mut r.t, DEVICE_FEATURES_SEL, 0);
        assert_ne!(rd(&mut r.t, DEVICE_FEATURES), 0);
        wr(&mut r.t, DEVICE_FEATURES_SEL, 7);
        assert_eq!(rd(&mut r.t, DEVICE_FEATURES), 0);
        // Config space: capacity (64 sectors) at 0x100, readable at any width.
        assert_eq!(rd(&mut r.t, CONFIG_SPACE), 64);
        let mut b = [0u8; 8];
        r.t.read(CONFIG_SPACE, &mut b);
        assert_eq!(u64::from_le_bytes(b), 64);
        let mut one = [0u8; 1];
        r.t.read(CONFIG_SPACE, &mut one);
        assert_eq!(one[0], 64);
        assert_eq!(rd(&mut r.t, SHM_LEN_LOW), u32::MAX);
        assert_eq!(rd(&mut r.t, CONFIG_GENERATION), 0);
    }

    #[test]
    fn block_request_through_the_registers_like_a_driver() {
        let mut r = rig();
        bring_up(&mut r);
        let head = offer_request(&mut r.q, VIRTIO_BLK_T_IN, 2, &[Desc::write(DATA, 512)]);
        // The MMIO-exit path of QueueNotify (no ioeventfd).
        wr(&mut r.t, QUEUE_NOTIFY, 0);
        assert_eq!(status(&r.q), VIRTIO_BLK_S_OK);
        assert_eq!(r.q.take_used(), vec![(head, 513)]);
        let mut got = vec![0u8; 512];
        r.q.mem().read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, r.disk.data.lock().unwrap()[1024..1536]);
        // Interrupt raised and reported as a used-buffer notification; the driver acks it.
        assert_eq!(r.irq.read().unwrap(), 1);
        assert_eq!(rd(&mut r.t, INTERRUPT_STATUS), INT_VRING);
        wr(&mut r.t, INTERRUPT_ACK, INT_VRING);
        assert_eq!(rd(&mut r.t, INTERRUPT_STATUS), 0);

        // A write through the ioeventfd path (the event loop calls notify_queue).
        r.q.mem().write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        offer_request(&mut r.q, VIRTIO_BLK_T_OUT, 5, &[Desc::read(DATA, 512)]);
        r.t.notify_queue(0);
        assert_eq!(status(&r.q), VIRTIO_BLK_S_OK);
        assert!(r.disk.data.lock().unwrap()[5 * 512..6 * 512].iter().all(|b| *b == 0x5a));
        assert_eq!(rd(&mut r.t, INTERRUPT_STATUS), INT_VRING);
    }

    #[test]
    fn the_core_counters_are_read_through_the_transport() {
        let mut r = rig();
        bring_up(&mut r);
        offer_request(&mut r.q, VIRTIO_BLK_T_IN, 2, &[Desc::write(DATA, 512)]);
        r.t.notify_queue(0);
        let snap = r.t.metrics().expect("block keeps counters").snapshot();
        assert_eq!(snap.get("read_requests"), Some(1));
        assert_eq!(snap.get("read_bytes"), Some(512));
        assert_eq!(snap.get("fatal_chains"), Some(0));
    }

    #[test]
    fn replacing_the_disk_bumps_config_generation_and_raises_a_config_interrupt() {
        let mut r = rig();
        // Before the driver runs the device: the generation moves, no interrupt.
        let replaced = r.t.with_device(|b: &mut Block| {
            b.replace_backend(Box::new(MemDisk::new(8 * 512)), false);
            b.capacity_sectors()
        });
        assert_eq!(replaced, Some(8));
        r.t.config_changed();
        assert_eq!(rd(&mut r.t, CONFIG_GENERATION), 1);
        assert_eq!(rd(&mut r.t, INTERRUPT_STATUS), 0);
        assert!(r.irq.read().is_err(), "no interrupt before DRIVER_OK");
        assert_eq!(rd(&mut r.t, CONFIG_SPACE), 8);

        bring_up(&mut r);
        let bigger = MemDisk::new(128 * 512);
        r.t.with_device(|b: &mut Block| b.replace_backend(Box::new(bigger.clone()), false))
            .unwrap();
        r.t.config_changed();
        assert_eq!(r.irq.read().unwrap(), 1);
        assert_eq!(rd(&mut r.t, INTERRUPT_STATUS), INT_CONFIG);
        assert_eq!(rd(&mut r.t, CONFIG_GENERATION), 2);
        assert_eq!(rd(&mut r.t, CONFIG_SPACE), 128);
        wr(&mut r.t, INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(rd(&mut r.t, INTERRUPT_STATUS), 0);
        // The queue keeps working and reads the new disk; a past-the-old-end sector is now fine.
        offer_request(&mut r.q, VIRTIO_BLK_T_IN, 100, &[Desc::write(DATA, 512)]);
        r.t.notify_queue(0);
        assert_eq!(status(&r.q), VIRTIO_BLK_S_OK);
        let mut got = vec![0u8; 512];
        r.q.mem().read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, bigger.data.lock().unwrap()[100 * 512..101 * 512]);
        // Asking for another kind of device gets nothing.
        assert!(r.t.with_device(|_: &mut crate::virtio::vsock::Vsock| ()).is_none());
    }

    #[test]
    fn feature_negotiation_refuses_unoffered_bits_and_missing_version_1() {
        let mut r = rig();
        assert!(
            !negotiate(&mut r.t, 0),
            "a legacy driver (no VERSION_1) must be refused"
        );
        assert!(
            !negotiate(&mut r.t, VIRTIO_F_VERSION_1 | (1 << 27)),
            "unoffered bit 27 must be refused"
        );
        // A nonzero word in a feature page nobody offered.
        wr(&mut r.t, STATUS, 0);
        wr(&mut r.t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut r.t, DRIVER_FEATURES_SEL, 1);
        wr(&mut r.t, DRIVER_FEATURES, 1);
        wr(&mut r.t, DRIVER_FEATURES_SEL, 2);
        wr(&mut r.t, DRIVER_FEATURES, 1);
        wr(
            &mut r.t,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(rd(&mut r.t, STATUS) & STATUS_FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK does not activate.
        wr(&mut r.t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
        assert!(!r.t.is_serving());
        assert!(negotiate(&mut r.t, VIRTIO_F_VERSION_1));
    }

    #[test]
    fn features_cannot_change_after_features_ok() {
        let mut r = rig();
        assert!(negotiate(&mut r.t, VIRTIO_F_VERSION_1));
        wr(&mut r.t, DRIVER_FEATURES_SEL, 0);
        wr(&mut r.t, DRIVER_FEATURES, u32::MAX);
        assert_eq!(r.t.driver_features, VIRTIO_F_VERSION_1);
    }

    #[test]
    fn reset_clears_everything_and_the_device_comes_back() {
        let mut r = rig();
        bring_up(&mut r);
        offer_request(&mut r.q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]);
        r.t.notify_queue(0);
        wr(&mut r.t, STATUS, 0);
        assert_eq!(rd(&mut r.t, STATUS), 0);
        assert_eq!(rd(&mut r.t, INTERRUPT_STATUS), 0);
        assert_eq!(rd(&mut r.t, QUEUE_READY), 0);
        assert!(!r.t.is_serving());
        assert_eq!(
            r.t.state_event().read().unwrap(),
            1,
            "the event loop is told to stop watching"
        );
        // Notifications after reset do nothing.
        let used = r.q.used_idx();
        offer_request(&mut r.q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]);
        r.t.notify_queue(0);
        assert_eq!(r.q.used_idx(), used);
        // The driver sets the device up again on fresh rings; the device serves them from index 0.
        let mut fresh = GuestQueue::new(QSIZE as u16);
        r.t.mem = fresh.mem().clone();
        std::mem::swap(&mut r.q, &mut fresh);
        bring_up(&mut r);
        let head = offer_request(&mut r.q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]);
        r.t.notify_queue(0);
        assert_eq!(status(&r.q), VIRTIO_BLK_S_OK);
        assert_eq!(r.q.take_used(), vec![(head, 513)]);
    }

    #[test]
    fn queue_sizes_must_be_powers_of_two_within_the_maximum() {
        for bad in [0u32, 3, 24, 512, 65536, u32::MAX] {
            let mut r = rig();
            assert!(negotiate(&mut r.t, VIRTIO_F_VERSION_1));
            setup_queue_and_go(&mut r, bad);
            assert!(!r.t.is_serving(), "size {bad} accepted");
            assert_ne!(rd(&mut r.t, STATUS) & DEVICE_NEEDS_RESET, 0, "size {bad}");
            assert_eq!(rd(&mut r.t, INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
            // Notifications are ignored, and a reset recovers.
            r.t.notify_queue(0);
            wr(&mut r.t, STATUS, 0);
            assert_eq!(rd(&mut r.t, STATUS), 0);
        }
    }

    #[test]
    fn rings_outside_memory_or_misaligned_fail_activation() {
        let cases: [(u64, u32); 6] = [
            (QUEUE_DESC_HIGH, 0xffff_ffff),
            (QUEUE_DRIVER_LOW, 0xfff_fff0),
            (QUEUE_DEVICE_HIGH, 1),
            (QUEUE_DESC_LOW, 0x1001),
            (QUEUE_DRIVER_LOW, 0x6001),
            (QUEUE_DEVICE_LOW, 0x8002),
        ];
        for (reg, value) in cases {
            let mut r = rig();
            assert!(negotiate(&mut r.t, VIRTIO_F_VERSION_1));
            setup_queue_and_go(&mut r, QSIZE);
            assert!(r.t.is_serving());
            // Redo with the one bad register written just before QueueReady.
            let mut r = rig();
            assert!(negotiate(&mut r.t, VIRTIO_F_VERSION_1));
            let (desc, avail, used) = {
                let q = r.q.queue_mut();
                (q.desc_table(), q.avail_ring(), q.used_ring())
            };
            wr(&mut r.t, QUEUE_SEL, 0);
            wr(&mut r.t, QUEUE_NUM, QSIZE);
            wr(&mut r.t, QUEUE_DESC_LOW, desc as u32);
            wr(&mut r.t, QUEUE_DRIVER_LOW, avail as u32);
            wr(&mut r.t, QUEUE_DEVICE_LOW, used as u32);
            wr(&mut r.t, reg, value);
            wr(&mut r.t, QUEUE_READY, 1);
            wr(
                &mut r.t,
                STATUS,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
            );
            assert!(!r.t.is_serving(), "register {reg:#x} = {value:#x} accepted");
            assert_ne!(r.t.status() & DEVICE_NEEDS_RESET, 0);
        }
    }

    #[test]
    fn queue_registers_are_locked_outside_setup() {
        let mut r = rig();
        // Before FEATURES_OK: ignored.
        wr(&mut r.t, QUEUE_NUM, 4);
        wr(&mut r.t, QUEUE_READY, 1);
        assert_eq!(rd(&mut r.t, QUEUE_READY), 0);
        bring_up(&mut r);
        // After DRIVER_OK: the ring cannot be moved under the device.
        wr(&mut r.t, QUEUE_DESC_LOW, 0x40_0000);
        assert_eq!(r.t.regs[0].desc, r.q.queue_mut().desc_table());
        // Out-of-range QueueSel reads as "no queue".
        wr(&mut r.t, QUEUE_SEL, 5);
        assert_eq!(rd(&mut r.t, QUEUE_NUM_MAX), 0);
        assert_eq!(rd(&mut r.t, QUEUE_READY), 0);
        wr(&mut r.t, QUEUE_SEL, u32::MAX);
        wr(&mut r.t, QUEUE_READY, 0);
        assert_eq!(rd(&mut r.t, QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn device_error_sets_needs_reset_and_stops_processing_until_reset() {
        let mut r = rig();
        bring_up(&mut r);
        // All-readable chain: the device has nowhere to put the status -> DeviceError.
        crate::virtio::block::test_utils::write_header(&r.q, VIRTIO_BLK_T_IN, 0);
        r.q.add_chain(&[Desc::read(HDR, 16), Desc::read(STATUS_BYTE, 1)]);
        wr(&mut r.t, QUEUE_NOTIFY, 0);
        assert_ne!(rd(&mut r.t, STATUS) & DEVICE_NEEDS_RESET, 0);
        assert_eq!(rd(&mut r.t, INTERRUPT_STATUS) & INT_CONFIG, INT_CONFIG);
        assert_eq!(r.irq.read().unwrap(), 1);
        assert!(!r.t.is_serving());
        assert!(r.t.backend_fd().is_none());
        assert_eq!(r.t.state_event().read().unwrap(), 1);
        // Good requests now go unanswered: the device is not called until reset.
        let used = r.q.used_idx();
        offer_request(&mut r.q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]);
        r.t.notify_queue(0);
        assert_eq!(r.q.used_idx(), used);
        // The driver writing status back (with FAILED) keeps NEEDS_RESET, and DRIVER_OK again does nothing.
        let s = rd(&mut r.t, STATUS);
        wr(&mut r.t, STATUS, s | STATUS_FAILED);
        assert_ne!(rd(&mut r.t, STATUS) & DEVICE_NEEDS_RESET, 0);
        wr(&mut r.t, STATUS, 0);
        assert_eq!(rd(&mut r.t, STATUS), 0);
    }

    #[test]
    fn status_writes_cannot_clear_bits_or_skip_steps() {
        let mut r = rig();
        wr(&mut r.t, STATUS, STATUS_DRIVER);
        assert_eq!(rd(&mut r.t, STATUS), 0, "DRIVER without ACKNOWLEDGE");
        wr(&mut r.t, STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut r.t, STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(rd(&mut r.t, STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // Bits a driver does not own are dropped.
        wr(
            &mut r.t,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | DEVICE_NEEDS_RESET | 0x30,
        );
        assert_eq!(rd(&mut r.t, STATUS), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        // Everything at once still goes through negotiation first.
        wr(&mut r.t, DRIVER_FEATURES_SEL, 1);
        wr(&mut r.t, DRIVER_FEATURES, 1);
        wr(&mut r.t, STATUS, DRIVER_STATUS_BITS & !STATUS_FAILED);
        assert!(r.t.is_serving(), "no queue is ready, which is allowed");
    }

    #[test]
    fn odd_widths_and_offsets_never_panic() {
        let mut r = rig();
        bring_up(&mut r);
        for offset in 0..0x1000u64 {
            for len in [0usize, 1, 2, 3, 4, 5, 8, 16] {
                let mut buf = vec![0xa5u8; len];
                r.t.read(offset, &mut buf);
                if offset < CONFIG_SPACE && (len != 4 || offset % 4 != 0) {
                    assert!(buf.iter().all(|b| *b == 0), "offset {offset:#x} len {len}");
                }
                // Skip a status write of 0 (reset) or odd bits: it is covered elsewhere; everything else
                // is written with garbage.
                if offset != STATUS {
                    r.t.write(offset, &buf);
                }
            }
        }
    }

    #[test]
    fn random_register_writes_never_panic() {
        let mut rnd = crate::virtio::test_utils::xorshift(0x9e37_79b9_7f4a_7c15);
        let regs = [
            DEVICE_FEATURES_SEL,
            DRIVER_FEATURES,
            DRIVER_FEATURES_SEL,
            QUEUE_SEL,
            QUEUE_NUM,
            QUEUE_READY,
            QUEUE_NOTIFY,
            INTERRUPT_ACK,
            STATUS,
            QUEUE_DESC_LOW,
            QUEUE_DESC_HIGH,
            QUEUE_DRIVER_LOW,
            QUEUE_DRIVER_HIGH,
            QUEUE_DEVICE_LOW,
            QUEUE_DEVICE_HIGH,
            SHM_SEL,
            CONFIG_SPACE,
        ];
        for _ in 0..50 {
            let mut r = rig();
            for _ in 0..400 {
                let reg = regs[(rnd() % regs.len() as u64) as usize];
                let value = match rnd() % 4 {
                    0 => rnd() as u32,
                    1 => (rnd() % 16) as u32,
                    2 => 1 << (rnd() % 32),
                    _ => 0x1000 * (rnd() % 16) as u32,
                };
                wr(&mut r.t, reg, value);
                if rnd() % 8 == 0 {
                    let raw: Vec<u8> = (0..64).map(|_| rnd() as u8).collect();
                    r.q.mem()
                        .write_slice(&raw, GuestAddress(0x1000 + (rnd() % 0x8000)))
                        .unwrap();
                    r.q.publish((rnd() % 20) as u16);
                }
                let _ = rd(&mut r.t, (rnd() % 0x100) & !3);
            }
        }
    }

    #[test]
    fn activation_error_from_the_device_sets_needs_reset() {
        let mut failing = StubDevice::new(TYPE_VSOCK, &[8, 8, 8]);
        failing.activate_fails = true;
        failing.forbid_processing = true;
        let q = GuestQueue::new(8);
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t = MmioTransport::new("vsock:test", Box::new(failing), q.mem().clone(), irq).unwrap();
        assert!(negotiate(&mut t, VIRTIO_F_VERSION_1));
        wr(
            &mut t,
            STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_ne!(t.status() & DEVICE_NEEDS_RESET, 0);
        assert!(!t.is_serving());
        wr(&mut t, QUEUE_NOTIFY, 1);
        t.process_backend();
    }

    #[test]
    fn cores_with_bad_queue_declarations_are_refused() {
        let mem = GuestQueue::new(8).mem().clone();
        let new = |sizes: Vec<u16>| {
            MmioTransport::new(
                "net:test",
                Box::new(StubDevice::new(TYPE_NET, &sizes)),
                mem.clone(),
                EventFd::new(0).unwrap(),
            )
        };
        assert!(matches!(new(vec![]), Err(TransportError::NoQueues { .. })));
        assert!(matches!(
            new(vec![256, 100]),
            Err(TransportError::QueueMaxSize { index: 1, .. })
        ));
        assert!(matches!(new(vec![0]), Err(TransportError::QueueMaxSize { .. })));
        assert!(matches!(new(vec![8; 65]), Err(TransportError::TooManyQueues { .. })));
        assert!(new(vec![256, 256]).is_ok());
    }
}
