//! Snapshot and restore of a virtio-mmio transport: its registers, each queue's position and rings, the
//! negotiated features and the core's own state ([`VirtioDevice::save_state`]), as a serde struct the
//! VMM writes into its snapshot file.
//!
//! Never trusted: a state read back. It comes from a file; the device type and queue count must match
//! the core it is restored into, each ready queue is rebuilt through virtio-queue's checks (size a power
//! of two within the maximum, aligned rings) and its rings must lie in guest memory, status and features
//! must be ones a driver could have reached. A refused state leaves an error, never a panic.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{MmioTransport, QueueRegs, DRIVER_STATUS_BITS, MAX_QUEUE_SIZE};
use crate::virtio::{QueueSet, DEVICE_NEEDS_RESET};

/// One queue: the registers the driver wrote and, once activated, the device's position in the rings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub size: u32,
    pub ready: bool,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    /// The device's position in the rings (meaningful when `live`).
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx: bool,
    /// The transport had validated the queue and lent it to the device (activated and ready).
    pub live: bool,
}

/// Everything a virtio-mmio transport needs to carry on where it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    pub device_type: u32,
    pub queues: Vec<QueueSnapshot>,
    pub queue_select: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub driver_features: u64,
    pub driver_features_unknown: bool,
    pub acked_features: u64,
    pub status: u32,
    pub interrupt_status: u32,
    pub config_generation: u32,
    pub active: bool,
    pub needs_reset: bool,
    /// The core's own state.
    pub device: serde_json::Value,
}

/// A saved transport state does not fit the device it is restored into.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{device}: the snapshot holds a device of type {saved}, this one is of type {actual}")]
    DeviceType { device: String, saved: u32, actual: u32 },
    #[error("{device}: the snapshot holds {saved} queues, the device has {actual}")]
    QueueCount {
        device: String,
        saved: usize,
        actual: usize,
    },
    #[error("{device}: queue {queue} in the snapshot is invalid: {reason}")]
    Queue {
        device: String,
        queue: usize,
        reason: String,
    },
    #[error("{device}: the snapshot's status {status:#x} or features {features:#x} are not ones a driver could reach")]
    Negotiation { device: String, status: u32, features: u64 },
    #[error("{device}: its own state in the snapshot is refused: {reason}")]
    Device { device: String, reason: String },
    #[error("{device}: activating it again failed: {reason}")]
    Activate { device: String, reason: String },
}

impl MmioTransport {
    /// The transport's state for a snapshot. Call with the vCPUs paused, under the lock that serves the
    /// queues, so nothing moves while it is read.
    pub fn save_state(&self) -> MmioTransportState {
        let queues = self
            .queues
            .iter()
            .zip(&self.regs)
            .map(|(q, r)| {
                let live = q.ready();
                QueueSnapshot {
                    size: r.size,
                    ready: r.ready,
                    desc: r.desc,
                    avail: r.avail,
                    used: r.used,
                    next_avail: q.next_avail(),
                    next_used: q.next_used(),
                    event_idx: q.event_idx_enabled(),
                    live,
                }
            })
            .collect();
        MmioTransportState {
            device_type: self.device.device_type(),
            queues,
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            driver_features_unknown: self.driver_features_unknown,
            acked_features: self.acked_features,
            status: self.status,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            active: self.active,
            needs_reset: self.needs_reset.is_set(),
            device: self.device.save_state(),
        }
    }

    /// Puts a freshly created transport (same device kind, same configuration) back in `state`: registers,
    /// queues, features, the core's own state. Nothing reaches the driver until
    /// [`MmioTransport::resume_after_restore`].
    pub fn restore_state(&mut self, state: &MmioTransportState) -> Result<(), RestoreError> {
        let device = self.label.clone();
        let actual = self.device.device_type();
        if state.device_type != actual {
            return Err(RestoreError::DeviceType {
                device,
                saved: state.device_type,
                actual,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount {
                device,
                saved: state.queues.len(),
                actual: self.queues.len(),
            });
        }
        let offered = self.device.avail_features();
        let status_ok = state.status & !(DRIVER_STATUS_BITS | DEVICE_NEEDS_RESET) == 0;
        let features_ok = state.acked_features & !offered == 0;
        if !status_ok || !features_ok || (state.active && state.acked_features == 0) {
            return Err(RestoreError::Negotiation {
                device,
                status: state.status,
                features: state.acked_features,
            });
        }
        let mut queues = Vec::with_capacity(state.queues.len());
        let mut regs = Vec::with_capacity(state.queues.len());
        for (index, (saved, current)) in state.queues.iter().zip(&self.queues).enumerate() {
            let invalid = |reason: String| RestoreError::Queue {
                device: device.clone(),
                queue: index,
                reason,
            };
            let max = current.max_size();
            let queue = if saved.live {
                let size = u16::try_from(saved.size)
                    .ok()
                    .filter(|s| *s <= MAX_QUEUE_SIZE)
                    .ok_or_else(|| invalid(format!("size {}", saved.size)))?;
                let q = Queue::try_from(QueueState {
                    max_size: max,
                    next_avail: saved.next_avail,
                    next_used: saved.next_used,
                    event_idx_enabled: saved.event_idx,
                    size,
                    ready: true,
                    desc_table: saved.desc,
                    avail_ring: saved.avail,
                    used_ring: saved.used,
                })
                .map_err(|e| invalid(e.to_string()))?;
                if !q.is_valid(&self.mem) {
                    return Err(invalid("its rings are not all in guest memory".into()));
                }
                q
            } else {
                Queue::new(max).map_err(|e| invalid(e.to_string()))?
            };
            queues.push(queue);
            regs.push(QueueRegs {
                size: saved.size,
                ready: saved.ready,
                desc: saved.desc,
                avail: saved.avail,
                used: saved.used,
            });
        }
        if state.acked_features != 0 {
            self.device.set_acked_features(state.acked_features);
        }
        self.device
            .restore_state(&state.device)
            .map_err(|reason| RestoreError::Device {
                device: device.clone(),
                reason,
            })?;
        if state.active {
            self.device.activate().map_err(|e| RestoreError::Activate {
                device: device.clone(),
                reason: e.to_string(),
            })?;
        }
        self.queues = queues;
        self.regs = regs;
        self.queue_select = state.queue_select;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.driver_features_unknown = state.driver_features_unknown;
        self.acked_features = state.acked_features;
        self.status = state.status;
        self.interrupt_status = state.interrupt_status;
        self.config_generation = state.config_generation;
        self.active = state.active;
        if state.needs_reset {
            self.needs_reset.set();
        }
        Ok(())
    }

    /// Second half of a restore, once the interrupt controllers and vCPUs hold their restored state (an
    /// interrupt raised before would be overwritten): a serving device is watched again and tells the
    /// driver what it must about the move ([`VirtioDevice::after_restore`](crate::virtio::VirtioDevice::after_restore)).
    pub fn resume_after_restore(&mut self) {
        if self.is_serving() {
            self.signal_state_change();
            let mut set = QueueSet::from_slice(&mut self.queues);
            let result = self.needs_reset.call(|| self.device.after_restore(&self.mem, &mut set));
            self.deliver(result);
        }
    }
}
