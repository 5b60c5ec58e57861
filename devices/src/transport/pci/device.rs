//! A virtio device core as a modern (virtio 1.x only) PCI function (virtio 1.2, 4.1): its configuration
//! space with the virtio vendor capabilities and MSI-X, and one 64-bit memory BAR holding the common
//! configuration, the ISR byte, the device config space, the notification area (one 4-byte slot per
//! queue) and the MSI-X table and pending bits. Device status, feature negotiation, queue validation at
//! DRIVER_OK, DEVICE_NEEDS_RESET and config generations behave as on virtio-mmio (`super::super::mmio`).
//!
//! How a guest reaches it: configuration cycles through the root bus (`super::bus`); BAR accesses as vCPU
//! MMIO exits through [`BusDevice`]; queue kicks (the fast path) through a KVM ioeventfd on each queue's
//! notify slot, which the event loop turns into [`VirtioPciDevice::notify_queue`]. Interrupts leave as
//! MSI-X messages through [`MsiVectors`] (in hull, irqfds on KVM MSI routes); the function has no INTx pin.
//!
//! Never trusted: every configuration-space and BAR access (offsets, widths, values), every vector number,
//! and the queue set-up, which is validated only at DRIVER_OK before the core sees any queue.

use std::os::fd::RawFd;

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_debug as debug, guest_info as info, guest_warn as warn};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::common_config::{CommonConfig, Effect, COMMON_CONFIG_LEN, NO_VECTOR};
use super::config_space::{CapabilityFull, ConfigSpace, Identity};
use super::msix::{MsiVectors, MsixTable};
use super::PciFunction;
use crate::bus::BusDevice;
use crate::transport::mmio::{
    activate_queues, device_type_name, negotiate_features, new_queues, next_status, ActivationError, TransportError,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::transport::NeedsReset;
use crate::virtio::{
    DeviceError, GuestMemory, QueueSet, QueueSignals, VirtioDevice, DEVICE_NEEDS_RESET, TYPE_BLOCK, TYPE_NET,
};

pub use crate::transport::mmio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
};

/// Red Hat's virtio vendor id; modern device ids are 0x1040 plus the virtio device type.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;

// The BAR's regions, one page each (virtio 1.2, 4.1.4).
pub const COMMON_OFFSET: u64 = 0x0000;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_SIZE: u64 = 0x1000;
/// Size of the BAR (a power of two covering the regions).
pub const BAR_SIZE: u64 = 0x8000;
/// Bytes between two queues' notification slots.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;

// virtio_pci_cap cfg_type values.
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
/// PCI capability ids.
const CAP_ID_VENDOR: u8 = 0x09;
const CAP_ID_MSIX: u8 = 0x11;

/// ISR bits: a used buffer / a configuration change.
const ISR_QUEUE: u8 = 0x1;
const ISR_CONFIG: u8 = 0x2;

/// The address in guest physical memory of a queue's notification slot, for its ioeventfd.
pub fn notify_address(bar: u64, queue: usize) -> u64 {
    bar + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// A virtio_pci_cap body (after id and next): length, cfg_type, bar, id, padding, offset, length.
fn virtio_cap(cap_len: u8, cfg_type: u8, offset: u64, length: u64) -> Vec<u8> {
    let mut body = vec![cap_len, cfg_type, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body
}

/// A virtio device core behind a virtio-pci function.
pub struct VirtioPciDevice {
    label: String,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    queues: Vec<Queue>,
    config: ConfigSpace,
    common: CommonConfig,
    msix: MsixTable,
    msix_cap: usize,
    /// The VIRTIO_PCI_CAP_PCI_CFG capability: a window onto the BAR through configuration cycles.
    pci_cfg_cap: usize,
    acked_features: u64,
    isr: u8,
    config_generation: u32,
    state_evt: EventFd,
    active: bool,
    needs_reset: NeedsReset,
}

impl VirtioPciDevice {
    /// Wraps `device` as a PCI function whose BAR sits at `bar_addr` (aligned to [`BAR_SIZE`]); its
    /// MSI-X table has one vector per queue plus one for configuration changes, delivered through `vectors`.
    pub fn new(
        label: impl Into<String>,
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        bar_addr: u64,
        vectors: Box<dyn MsiVectors>,
    ) -> Result<Self, TransportError> {
        let label = label.into();
        let (queues, state_evt) = new_queues(&label, device.as_ref())?;
        let sizes = device.queue_max_sizes().to_vec();
        let device_type = device.device_type();
        // Class codes: network controller, mass storage (other), or "other" for the rest.
        let class = match device_type {
            TYPE_NET => [0x02, 0x00, 0x00],
            TYPE_BLOCK => [0x01, 0x80, 0x00],
            _ => [0xff, 0x00, 0x00],
        };
        let mut config = ConfigSpace::new(Identity {
            vendor: VIRTIO_PCI_VENDOR,
            device: VIRTIO_PCI_DEVICE_BASE.wrapping_add(device_type as u16),
            revision: 1,
            class,
            subsystem_vendor: VIRTIO_PCI_VENDOR,
            subsystem: 0x40,
        });
        config.set_bar0(bar_addr, BAR_SIZE);
        let msix = MsixTable::new(label.clone(), queues.len() + 1, vectors);
        let (msix_cap, pci_cfg_cap) = Self::add_capabilities(&mut config, &msix, queues.len()).map_err(|source| {
            TransportError::PciCapability {
                device: label.clone(),
                source,
            }
        })?;
        Ok(VirtioPciDevice {
            common: CommonConfig::new(&sizes),
            label,
            device,
            mem,
            queues,
            config,
            msix,
            msix_cap,
            pci_cfg_cap,
            acked_features: 0,
            isr: 0,
            config_generation: 0,
            state_evt,
            active: false,
            needs_reset: NeedsReset::default(),
        })
    }

    /// The virtio capabilities (common, notify, ISR, device), MSI-X, and the configuration-access window;
    /// returns the offsets of the last two.
    fn add_capabilities(
        config: &mut ConfigSpace,
        msix: &MsixTable,
        queues: usize,
    ) -> Result<(usize, usize), CapabilityFull> {
        config.add_capability(
            CAP_ID_VENDOR,
            &virtio_cap(16, CAP_COMMON, COMMON_OFFSET, COMMON_CONFIG_LEN),
        )?;
        let mut notify = virtio_cap(
            20,
            CAP_NOTIFY,
            NOTIFY_OFFSET,
            queues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER),
        );
        notify.extend_from_slice(&NOTIFY_OFF_MULTIPLIER.to_le_bytes());
        config.add_capability(CAP_ID_VENDOR, &notify)?;
        config.add_capability(CAP_ID_VENDOR, &virtio_cap(16, CAP_ISR, ISR_OFFSET, 1))?;
        config.add_capability(
            CAP_ID_VENDOR,
            &virtio_cap(16, CAP_DEVICE, DEVICE_CONFIG_OFFSET, REGION_SIZE),
        )?;
        // MSI-X: message control, then table and PBA offsets with BAR indicator 0.
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&msix.message_control().to_le_bytes());
        body.extend_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
        body.extend_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
        let cap = config.add_capability(CAP_ID_MSIX, &body)?;
        // Enable and function mask are the driver's; the table size is not.
        config.set_writable(cap + 2, &[0x00, 0xc0]);
        // The window: the driver picks bar, offset and length, then reads or writes pci_cfg_data.
        let mut window = virtio_cap(20, CAP_PCI_CFG, 0, 0);
        window.extend_from_slice(&[0; 4]);
        let pci_cfg = config.add_capability(CAP_ID_VENDOR, &window)?;
        config.set_writable(pci_cfg + 4, &[0xff]);
        config.set_writable(pci_cfg + 8, &[0xff; 12]);
        Ok((cap, pci_cfg))
    }

    /// The name given at creation.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The virtio device id of the core.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// How many queues the device has (one notification slot and ioeventfd each).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// The BAR as assigned: (address, size).
    pub fn bar(&self) -> (u64, u64) {
        self.config.bar0().unwrap_or((0, BAR_SIZE))
    }

    /// The device status as the driver reads it.
    pub fn status(&self) -> u32 {
        self.common.status
    }

    /// Whether the device is serving: activated, not broken, not failed by the driver.
    pub fn is_serving(&self) -> bool {
        self.active && !self.needs_reset.is_set() && self.common.status & STATUS_FAILED == 0
    }

    /// Becomes readable whenever the device starts or stops serving (see the virtio-mmio transport).
    pub fn state_event(&self) -> &EventFd {
        &self.state_evt
    }

    /// The device's host-side fd, while the device is serving.
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

    /// Runs `f` on the device core when it is a `T` (host-side operations such as replacing a disk).
    pub fn with_device<T: 'static, R>(&mut self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.device.as_any_mut()?.downcast_mut::<T>().map(f)
    }

    /// The core as `Any`, for [`crate::transport::VirtioTransport`].
    pub fn device_any(&mut self) -> Option<&mut dyn std::any::Any> {
        self.device.as_any_mut()
    }

    /// The driver kicked queue `index`: let the device consume it (ignored unless serving).
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

    /// The host changed the device's config space: the generation moves on and a running driver gets a
    /// configuration-change interrupt.
    pub fn config_changed(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.common.config_generation = self.config_generation as u8;
        if self.common.status & STATUS_DRIVER_OK != 0 {
            self.raise_config();
        }
        debug!(device = %self.label, generation = self.config_generation, "config space changed");
    }

    /// The configuration generation.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    fn deliver(&mut self, result: Result<QueueSignals, DeviceError>) {
        match result {
            Ok(signals) => {
                for index in signals.iter() {
                    self.isr |= ISR_QUEUE;
                    let vector = self.common.queue_vectors.get(index).copied().unwrap_or(NO_VECTOR);
                    self.send(vector);
                }
            }
            Err(error) => {
                warn!(device = %self.label, %error, "virtio device needs a reset; it is stopped until the driver resets it");
                self.break_device();
            }
        }
    }

    fn send(&mut self, vector: u16) {
        if vector == NO_VECTOR || !self.msix.signal(vector) {
            debug!(device = %self.label, vector, msix = self.msix.enabled(), "interrupt with no MSI-X vector to carry it; dropped");
        }
    }

    fn raise_config(&mut self) {
        self.isr |= ISR_CONFIG;
        self.send(self.common.msix_config);
    }

    fn break_device(&mut self) {
        self.needs_reset.set();
        self.common.status |= DEVICE_NEEDS_RESET;
        self.raise_config();
        self.signal_state_change();
    }

    fn signal_state_change(&self) {
        if let Err(error) = self.state_evt.write(1) {
            warn!(device = %self.label, %error, "cannot signal a virtio device state change");
        }
    }

    /// Status 0: the device goes back to its state after power-on (the MSI-X table is the function's and
    /// stays).
    fn reset(&mut self) {
        let was_serving = self.is_serving();
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.common.reset();
        self.common.config_generation = self.config_generation as u8;
        self.acked_features = 0;
        self.isr = 0;
        self.active = false;
        self.needs_reset.clear();
        debug!(device = %self.label, "virtio-pci device reset");
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
        let Some((new, added)) = next_status(&label, self.common.status, value, |new| {
            let acked = negotiate_features(
                &label,
                self.device.as_mut(),
                new,
                self.common.driver_features,
                self.common.driver_features_unknown,
            );
            if let Some(acked) = acked {
                self.acked_features = acked;
            }
            acked.is_some()
        }) else {
            return;
        };
        self.common.status = new | (self.common.status & DEVICE_NEEDS_RESET);
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

    fn activate(&mut self) {
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let result = activate_queues(&mut self.queues, &self.common.queues, &self.mem, event_idx)
            .and_then(|()| self.device.activate().map_err(ActivationError::from));
        match result {
            Ok(()) => {
                self.active = true;
                let kind = device_type_name(self.device.device_type());
                let queues = self.common.queues.iter().filter(|r| r.ready).count();
                info!(device = %self.label, kind = %kind, queues, features = self.acked_features, msix = self.msix.enabled(), "virtio-pci device activated");
                self.signal_state_change();
            }
            Err(error) => {
                warn!(device = %self.label, %error, "virtio device activation failed");
                self.break_device();
            }
        }
    }

    fn queue_setup_allowed(&self) -> bool {
        self.common.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED) == STATUS_FEATURES_OK
            && !self.needs_reset.is_set()
    }

    fn touches(offset: usize, len: usize, field: usize, field_len: usize) -> bool {
        offset < field + field_len && field < offset.saturating_add(len)
    }

    /// Where the configuration-access window points: (BAR offset, length), if the driver set it to an
    /// aligned 1-, 2- or 4-byte access inside BAR 0.
    fn window(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap;
        let offset = u64::from(self.config.u32_at(cap + 8));
        let len = self.config.u32_at(cap + 12) as usize;
        let ok = self.config.u8_at(cap + 4) == 0
            && matches!(len, 1 | 2 | 4)
            && offset.is_multiple_of(len as u64)
            && offset + len as u64 <= BAR_SIZE;
        ok.then_some((offset, len))
    }
}

impl PciFunction for VirtioPciDevice {
    fn config_read(&mut self, offset: usize, data: &mut [u8]) {
        let window_data = self.pci_cfg_cap + 16;
        if Self::touches(offset, data.len(), window_data, 4) {
            // A read of pci_cfg_data reads the BAR where the window points (virtio 1.2, 4.1.4.9).
            if let Some((bar_offset, len)) = self.window() {
                let mut bytes = [0u8; 4];
                BusDevice::read(self, bar_offset, &mut bytes[..len]);
                self.config.set_bytes(window_data, &bytes);
            }
        }
        self.config.read(offset, data);
    }

    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config.write(offset, data);
        let window_data = self.pci_cfg_cap + 16;
        if Self::touches(offset, data.len(), window_data, 4) {
            if let Some((bar_offset, len)) = self.window() {
                let bytes = self.config.u32_at(window_data).to_le_bytes();
                BusDevice::write(self, bar_offset, &bytes[..len]);
            }
        }
        let control = self.msix_cap + 2;
        if Self::touches(offset, data.len(), control, 2) {
            self.msix.set_message_control(self.config.u16_at(control));
            // Keep the read-only table size as the table has it.
            self.config.set_u16(control, self.msix.message_control());
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFFSET + REGION_SIZE => {
                self.common.read(o - COMMON_OFFSET, data, self.device.avail_features());
            }
            o if (ISR_OFFSET..ISR_OFFSET + REGION_SIZE).contains(&o) => {
                data.fill(0);
                if o == ISR_OFFSET && data.len() == 1 {
                    // Reading the ISR acknowledges it.
                    data[0] = std::mem::take(&mut self.isr);
                }
            }
            o if (DEVICE_CONFIG_OFFSET..DEVICE_CONFIG_OFFSET + REGION_SIZE).contains(&o) => {
                self.device.read_config(o - DEVICE_CONFIG_OFFSET, data);
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + REGION_SIZE).contains(&o) => {
                self.msix.read_table(o - MSIX_TABLE_OFFSET, data);
            }
            o if (MSIX_PBA_OFFSET..MSIX_PBA_OFFSET + REGION_SIZE).contains(&o) => {
                self.msix.read_pba(o - MSIX_PBA_OFFSET, data);
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + REGION_SIZE => {
                let setup = self.queue_setup_allowed();
                let vectors = self.msix.len();
                if let Effect::Status(value) = self.common.write(o - COMMON_OFFSET, data, setup, vectors) {
                    self.write_status(u32::from(value));
                }
            }
            o if (DEVICE_CONFIG_OFFSET..DEVICE_CONFIG_OFFSET + REGION_SIZE).contains(&o) => {
                self.device.write_config(o - DEVICE_CONFIG_OFFSET, data);
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + REGION_SIZE).contains(&o) => {
                let slot = o - NOTIFY_OFFSET;
                if slot.is_multiple_of(u64::from(NOTIFY_OFF_MULTIPLIER)) {
                    self.notify_queue((slot / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_TABLE_OFFSET + REGION_SIZE).contains(&o) => {
                self.msix.write_table(o - MSIX_TABLE_OFFSET, data);
            }
            _ => {
                debug!(device = %self.label, offset, len = data.len(), "write to a read-only or unused part of the virtio-pci BAR; ignored")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::transport::pci::common_config::*;
    use crate::transport::pci::config_space::{BAR0, CAPABILITIES_POINTER, COMMAND};
    use crate::transport::pci::msix::tests::Recorder;
    use crate::transport::pci::msix::{MsiMessage, MSIX_ENABLE};
    use crate::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
    use crate::virtio::block::test_utils::{offer_request, status, MemDisk, DATA, HDR, STATUS as STATUS_BYTE};
    use crate::virtio::block::Block;
    use crate::virtio::test_utils::{Desc, GuestQueue, StubDevice};
    use crate::virtio::{TYPE_VSOCK, VIRTIO_F_VERSION_1};

    const QSIZE: u16 = 16;
    const BAR: u64 = 0xe000_8000;

    struct Rig {
        d: VirtioPciDevice,
        q: GuestQueue,
        disk: MemDisk,
        msi: Recorder,
        /// Where the driver found each region (from the capabilities).
        common: u64,
        notify: u64,
        notify_mult: u64,
        isr: u64,
        device_cfg: u64,
        msix_table: u64,
    }

    fn cfg_read(d: &mut VirtioPciDevice, offset: usize, len: usize) -> u32 {
        let mut b = [0u8; 4];
        d.config_read(offset, &mut b[..len]);
        u32::from_le_bytes(b)
    }

    fn bar_rd(d: &mut VirtioPciDevice, offset: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        d.read(offset, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn bar_wr(d: &mut VirtioPciDevice, offset: u64, len: usize, v: u64) {
        d.write(offset, &v.to_le_bytes()[..len]);
    }

    /// A block device over a 32 KiB disk; the regions are found by walking the capability list the way
    /// Linux's virtio_pci_modern does.
    fn rig() -> Rig {
        let disk = MemDisk::new(64 * 512);
        let dev = Block::with_backend(Box::new(disk.clone()), false, "pci-test").unwrap();
        let q = GuestQueue::new(QSIZE);
        let msi = Recorder::default();
        let mut d =
            VirtioPciDevice::new("block:test", Box::new(dev), q.mem().clone(), BAR, Box::new(msi.clone())).unwrap();
        let (mut common, mut notify, mut notify_mult, mut isr, mut device_cfg, mut msix_table) =
            (None, None, 0, None, None, None);
        let mut p = cfg_read(&mut d, CAPABILITIES_POINTER, 1) as usize;
        let mut hops = 0;
        while p != 0 {
            hops += 1;
            assert!(hops < 48, "capability list loops");
            let id = cfg_read(&mut d, p, 1);
            if id == u32::from(CAP_ID_VENDOR) {
                let cfg_type = cfg_read(&mut d, p + 3, 1) as u8;
                assert_eq!(cfg_read(&mut d, p + 4, 1), 0, "BAR 0");
                let offset = Some(u64::from(cfg_read(&mut d, p + 8, 4)));
                match cfg_type {
                    CAP_COMMON => common = offset,
                    CAP_NOTIFY => {
                        notify = offset;
                        notify_mult = u64::from(cfg_read(&mut d, p + 16, 4));
                    }
                    CAP_ISR => isr = offset,
                    CAP_DEVICE => device_cfg = offset,
                    CAP_PCI_CFG => assert_eq!(cfg_read(&mut d, p + 2, 1), 20, "pci_cfg capability length"),
                    other => panic!("unexpected virtio capability {other}"),
                }
            } else if id == u32::from(CAP_ID_MSIX) {
                assert_eq!(cfg_read(&mut d, p + 2, 2) & 0x7ff, 1, "2 vectors: one queue + config");
                let table = cfg_read(&mut d, p + 4, 4);
                assert_eq!(table & 7, 0, "table in BAR 0");
                msix_table = Some(u64::from(table & !7));
                assert_eq!(u64::from(cfg_read(&mut d, p + 8, 4) & !7), MSIX_PBA_OFFSET);
            }
            p = cfg_read(&mut d, p + 1, 1) as usize;
        }
        Rig {
            d,
            q,
            disk,
            msi,
            common: common.expect("common cap"),
            notify: notify.expect("notify cap"),
            notify_mult,
            isr: isr.expect("isr cap"),
            device_cfg: device_cfg.expect("device cap"),
            msix_table: msix_table.expect("msix cap"),
        }
    }

    fn set_status(r: &mut Rig, s: u32) {
        bar_wr(&mut r.d, r.common + DEVICE_STATUS, 1, u64::from(s));
    }

    fn get_status(r: &mut Rig) -> u32 {
        bar_rd(&mut r.d, r.common + DEVICE_STATUS, 1) as u32
    }

    fn negotiate(r: &mut Rig, features: u64) -> bool {
        set_status(r, 0);
        set_status(r, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        for page in 0..2u64 {
            bar_wr(&mut r.d, r.common + DRIVER_FEATURE_SELECT, 4, page);
            bar_wr(
                &mut r.d,
                r.common + DRIVER_FEATURE,
                4,
                (features >> (32 * page)) & 0xffff_ffff,
            );
        }
        set_status(r, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        get_status(r) & STATUS_FEATURES_OK != 0
    }

    /// MSI-X on: vector 0 for configuration changes, vector 1 for queue 0, both unmasked.
    fn enable_msix(r: &mut Rig) {
        let cap = r.d.msix_cap;
        r.d.config_write(cap + 2, &MSIX_ENABLE.to_le_bytes());
        for v in 0..2u64 {
            let e = r.msix_table + v * 16;
            bar_wr(&mut r.d, e, 4, 0xfee0_0000);
            bar_wr(&mut r.d, e + 4, 4, 0);
            bar_wr(&mut r.d, e + 8, 4, 0x40 + v);
            bar_wr(&mut r.d, e + 12, 4, 0);
        }
    }

    fn bring_up(r: &mut Rig) {
        enable_msix(r);
        assert!(negotiate(r, VIRTIO_F_VERSION_1));
        bar_wr(&mut r.d, r.common + MSIX_CONFIG, 2, 0);
        assert_eq!(bar_rd(&mut r.d, r.common + MSIX_CONFIG, 2), 0);
        let (desc, avail, used) = {
            let q = r.q.queue_mut();
            (q.desc_table(), q.avail_ring(), q.used_ring())
        };
        bar_wr(&mut r.d, r.common + QUEUE_SELECT, 2, 0);
        assert_eq!(
            bar_rd(&mut r.d, r.common + QUEUE_SIZE, 2),
            256,
            "the block queue's maximum"
        );
        bar_wr(&mut r.d, r.common + QUEUE_SIZE, 2, u64::from(QSIZE));
        bar_wr(&mut r.d, r.common + QUEUE_MSIX_VECTOR, 2, 1);
        assert_eq!(bar_rd(&mut r.d, r.common + QUEUE_MSIX_VECTOR, 2), 1);
        // Ring addresses as two 32-bit halves, the way Linux writes them.
        for (field, addr) in [(QUEUE_DESC, desc), (QUEUE_DRIVER, avail), (QUEUE_DEVICE, used)] {
            bar_wr(&mut r.d, r.common + field, 4, addr & 0xffff_ffff);
            bar_wr(&mut r.d, r.common + field + 4, 4, addr >> 32);
        }
        bar_wr(&mut r.d, r.common + QUEUE_ENABLE, 2, 1);
        set_status(
            r,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(r.d.is_serving(), "status {:#x}", r.d.status());
        assert_eq!(r.d.state_event().read().unwrap(), 1);
    }

    fn kick(r: &mut Rig, queue: u64) {
        let off = bar_rd(&mut r.d, r.common + QUEUE_NOTIFY_OFF, 2);
        assert_eq!(off, queue);
        bar_wr(&mut r.d, r.notify + off * r.notify_mult, 2, queue);
    }

    #[test]
    fn identifies_as_a_modern_virtio_block_function() {
        let mut r = rig();
        assert_eq!(cfg_read(&mut r.d, 0, 4), 0x1042_1af4, "vendor 1af4, device 1040 + 2");
        assert_eq!(cfg_read(&mut r.d, 8, 1), 1, "revision 1: modern");
        assert_eq!(cfg_read(&mut r.d, 0x2c, 4), 0x0040_1af4);
        assert_eq!(cfg_read(&mut r.d, 0x3d, 1), 0, "no INTx pin");
        assert_eq!(cfg_read(&mut r.d, BAR0, 4), (BAR as u32) | 4);
        // Sizing the BAR gives BAR_SIZE; the address comes back when restored.
        r.d.config_write(BAR0, &u32::MAX.to_le_bytes());
        r.d.config_write(BAR0 + 4, &u32::MAX.to_le_bytes());
        let size =
            !(u64::from(cfg_read(&mut r.d, BAR0, 4) & !0xf) | (u64::from(cfg_read(&mut r.d, BAR0 + 4, 4)) << 32)) + 1;
        assert_eq!(size, BAR_SIZE);
        r.d.config_write(BAR0, &((BAR as u32) | 4).to_le_bytes());
        r.d.config_write(BAR0 + 4, &0u32.to_le_bytes());
        assert_eq!(r.d.bar(), (BAR, BAR_SIZE));
        r.d.config_write(COMMAND, &0x6u16.to_le_bytes());
        assert_eq!(cfg_read(&mut r.d, COMMAND, 2), 6);
        // Regions inside the BAR.
        for region in [r.common, r.isr, r.device_cfg, r.notify, r.msix_table] {
            assert!(region + 4 <= BAR_SIZE);
        }
        assert_eq!(bar_rd(&mut r.d, r.common + NUM_QUEUES, 2), 1);
        // The device config space: block capacity (64 sectors).
        assert_eq!(bar_rd(&mut r.d, r.device_cfg, 8), 64);
        bar_wr(&mut r.d, r.common + DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(bar_rd(&mut r.d, r.common + DEVICE_FEATURE, 4) & 1, 1, "VERSION_1");
        assert_eq!(notify_address(BAR, 3), BAR + NOTIFY_OFFSET + 12);
    }

    #[test]
    fn block_requests_complete_with_an_msix_interrupt_on_the_queue_vector() {
        let mut r = rig();
        bring_up(&mut r);
        let head = offer_request(&mut r.q, VIRTIO_BLK_T_IN, 2, &[Desc::write(DATA, 512)]);
        kick(&mut r, 0);
        assert_eq!(status(&r.q), VIRTIO_BLK_S_OK);
        assert_eq!(r.q.take_used(), vec![(head, 513)]);
        let mut got = vec![0u8; 512];
        r.q.mem().read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, r.disk.data.lock().unwrap()[1024..1536]);
        assert_eq!(r.msi.take_fired(), vec![1]);
        let routes = r.msi.routes.lock().unwrap().clone();
        assert!(
            routes.contains(&(
                1,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                }
            )),
            "{routes:?}"
        );
        // ISR read acknowledges.
        assert_eq!(bar_rd(&mut r.d, r.isr, 1), u64::from(ISR_QUEUE));
        assert_eq!(bar_rd(&mut r.d, r.isr, 1), 0);
        // The ioeventfd path.
        r.q.mem().write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        offer_request(&mut r.q, VIRTIO_BLK_T_OUT, 5, &[Desc::read(DATA, 512)]);
        r.d.notify_queue(0);
        assert_eq!(status(&r.q), VIRTIO_BLK_S_OK);
        assert!(r.disk.data.lock().unwrap()[5 * 512..6 * 512].iter().all(|b| *b == 0x5a));
        assert_eq!(r.msi.take_fired(), vec![1]);
        // A masked vector holds the interrupt as pending and sends it on unmask.
        bar_wr(&mut r.d, r.msix_table + 16 + 12, 4, 1);
        offer_request(&mut r.q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]);
        r.d.notify_queue(0);
        assert!(r.msi.take_fired().is_empty());
        assert_eq!(bar_rd(&mut r.d, MSIX_PBA_OFFSET, 8), 0b10);
        bar_wr(&mut r.d, r.msix_table + 16 + 12, 4, 0);
        assert_eq!(r.msi.take_fired(), vec![1]);
    }

    #[test]
    fn config_changes_and_device_errors_use_the_config_vector() {
        let mut r = rig();
        r.d.config_changed();
        assert!(r.msi.take_fired().is_empty(), "no interrupt before DRIVER_OK");
        assert_eq!(bar_rd(&mut r.d, r.common + CONFIG_GENERATION, 1), 1);
        bring_up(&mut r);
        r.d.config_changed();
        assert_eq!(r.msi.take_fired(), vec![0]);
        assert_eq!(bar_rd(&mut r.d, r.common + CONFIG_GENERATION, 1), 2);
        assert_eq!(bar_rd(&mut r.d, r.isr, 1), u64::from(ISR_CONFIG));
        // A chain with nowhere to put the status: the device needs a reset.
        crate::virtio::block::test_utils::write_header(&r.q, VIRTIO_BLK_T_IN, 0);
        r.q.add_chain(&[Desc::read(HDR, 16), Desc::read(STATUS_BYTE, 1)]);
        kick(&mut r, 0);
        assert_ne!(get_status(&mut r) & DEVICE_NEEDS_RESET, 0);
        assert_eq!(r.msi.take_fired(), vec![0]);
        assert!(!r.d.is_serving());
        assert_eq!(
            r.d.state_event().read().unwrap(),
            1,
            "the event loop stops watching the backend"
        );
        let used = r.q.used_idx();
        offer_request(&mut r.q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]);
        r.d.notify_queue(0);
        assert_eq!(r.q.used_idx(), used, "not served until reset");
        // Reset clears the status and the queue registers; the MSI-X table stays programmed.
        set_status(&mut r, 0);
        assert_eq!(get_status(&mut r), 0);
        assert_eq!(bar_rd(&mut r.d, r.common + QUEUE_ENABLE, 2), 0);
        assert_eq!(bar_rd(&mut r.d, r.common + QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        assert_eq!(bar_rd(&mut r.d, r.msix_table + 8, 4), 0x40);
        let mut fresh = GuestQueue::new(QSIZE);
        r.d.mem = fresh.mem().clone();
        std::mem::swap(&mut r.q, &mut fresh);
        bring_up(&mut r);
        let head = offer_request(&mut r.q, VIRTIO_BLK_T_IN, 0, &[Desc::write(DATA, 512)]);
        kick(&mut r, 0);
        assert_eq!(r.q.take_used(), vec![(head, 513)]);
    }

    #[test]
    fn the_pci_cfg_window_reaches_the_bar_through_configuration_cycles() {
        let mut r = rig();
        let cap = r.d.pci_cfg_cap;
        assert_eq!(cfg_read(&mut r.d, cap, 1), u32::from(CAP_ID_VENDOR));
        assert_eq!(cfg_read(&mut r.d, cap + 3, 1), u32::from(CAP_PCI_CFG));
        // num_queues (2 bytes at 0x12 of the common configuration).
        r.d.config_write(cap + 4, &[0]);
        r.d.config_write(cap + 8, &((COMMON_OFFSET + NUM_QUEUES) as u32).to_le_bytes());
        r.d.config_write(cap + 12, &2u32.to_le_bytes());
        assert_eq!(cfg_read(&mut r.d, cap + 16, 2), 1);
        // A write through the window: device_feature_select = 1, then device_feature reads page 1.
        r.d.config_write(cap + 8, &((COMMON_OFFSET + DEVICE_FEATURE_SELECT) as u32).to_le_bytes());
        r.d.config_write(cap + 12, &4u32.to_le_bytes());
        r.d.config_write(cap + 16, &1u32.to_le_bytes());
        assert_eq!(
            bar_rd(&mut r.d, r.common + DEVICE_FEATURE, 4) & 1,
            1,
            "VERSION_1 on page 1"
        );
        // Windows outside the BAR, unaligned, of another BAR or another width do nothing.
        for (bar, offset, len) in [
            (0u8, BAR_SIZE as u32, 4u32),
            (0, 0x13, 2),
            (1, 0x12, 2),
            (0, 0x12, 3),
            (0, u32::MAX, 1),
        ] {
            r.d.config_write(cap + 4, &[bar]);
            r.d.config_write(cap + 8, &offset.to_le_bytes());
            r.d.config_write(cap + 12, &len.to_le_bytes());
            r.d.config_write(cap + 16, &0u32.to_le_bytes());
            let _ = cfg_read(&mut r.d, cap + 16, 4);
        }
        assert_eq!(bar_rd(&mut r.d, r.common + DEVICE_FEATURE_SELECT, 4), 1);
    }

    #[test]
    fn negotiation_and_queue_setup_are_validated() {
        let mut r = rig();
        assert!(!negotiate(&mut r, 0), "legacy drivers are refused");
        assert!(!negotiate(&mut r, VIRTIO_F_VERSION_1 | (1 << 27)));
        assert!(negotiate(&mut r, VIRTIO_F_VERSION_1));
        // Queue registers before FEATURES_OK are ignored; a bad size fails activation.
        for bad in [0u64, 3, 24, 512] {
            let mut r = rig();
            bar_wr(&mut r.d, r.common + QUEUE_ENABLE, 2, 1);
            assert_eq!(bar_rd(&mut r.d, r.common + QUEUE_ENABLE, 2), 0);
            assert!(negotiate(&mut r, VIRTIO_F_VERSION_1));
            bar_wr(&mut r.d, r.common + QUEUE_SIZE, 2, bad);
            bar_wr(&mut r.d, r.common + QUEUE_ENABLE, 2, 1);
            set_status(
                &mut r,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
            );
            assert!(!r.d.is_serving(), "size {bad}");
            assert_ne!(get_status(&mut r) & DEVICE_NEEDS_RESET, 0);
        }
        // Rings outside guest memory.
        let mut r = rig();
        assert!(negotiate(&mut r, VIRTIO_F_VERSION_1));
        bar_wr(&mut r.d, r.common + QUEUE_SIZE, 2, u64::from(QSIZE));
        bar_wr(&mut r.d, r.common + QUEUE_DESC, 8, 0xffff_ffff_0000);
        bar_wr(&mut r.d, r.common + QUEUE_ENABLE, 2, 1);
        set_status(
            &mut r,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(!r.d.is_serving());
    }

    #[test]
    fn hostile_config_and_bar_accesses_never_panic() {
        let mut rnd = crate::virtio::test_utils::xorshift(0x5eed_1234_abcd_0001);
        for round in 0..30 {
            let mut r = rig();
            if round % 2 == 0 {
                bring_up(&mut r);
            }
            for _ in 0..500 {
                let len = [1usize, 2, 3, 4, 8, 0][(rnd() % 6) as usize];
                let value = rnd().to_le_bytes();
                if rnd().is_multiple_of(3) {
                    let offset = (rnd() % 300) as usize;
                    r.d.config_write(offset, &value[..len]);
                    let mut b = vec![0u8; len];
                    r.d.config_read(offset, &mut b);
                } else {
                    let offset = match rnd() % 4 {
                        0 => rnd() % 0x40,
                        1 => NOTIFY_OFFSET + rnd() % 0x20,
                        2 => MSIX_TABLE_OFFSET + rnd() % 0x40,
                        _ => rnd() % (BAR_SIZE + 0x100),
                    };
                    r.d.write(offset, &value[..len]);
                    let mut b = vec![0u8; len];
                    r.d.read(offset, &mut b);
                }
                if rnd().is_multiple_of(16) {
                    r.q.publish((rnd() % 20) as u16);
                    r.d.notify_queue((rnd() % 3) as usize);
                }
            }
        }
    }

    #[test]
    fn every_core_gets_one_vector_per_queue_plus_config() {
        let mem = GuestQueue::new(8).mem().clone();
        let d = VirtioPciDevice::new(
            "vsock:test",
            Box::new(StubDevice::new(TYPE_VSOCK, &[8, 8, 8])),
            mem.clone(),
            BAR,
            Box::new(Recorder::default()),
        )
        .unwrap();
        assert_eq!(d.msix.len(), 4);
        assert_eq!(d.config.u16_at(0x02), 0x1040 + 19);
        let bad = VirtioPciDevice::new(
            "net:test",
            Box::new(StubDevice::new(TYPE_NET, &[])),
            mem,
            BAR,
            Box::new(Recorder::default()),
        );
        assert!(matches!(bad, Err(TransportError::NoQueues { .. })));
    }
}
