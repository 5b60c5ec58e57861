//! The transport-agnostic virtio device model: the `VirtioDevice` trait every device core (block, net,
//! vsock) implements, and what a transport hands it. Three transports drive the same cores: hull's
//! virtio-mmio and virtio-pci (in the VMM) and the vhost-user wrapper in `crate::vhost_user`.
//!
//! Shape of the contract:
//! * the transport owns the virtqueues (their addresses, sizes and ready bits come from the driver) and
//!   lends them to the device for each call through a [`QueueSet`];
//! * the device never raises interrupts itself: every processing call returns the [`QueueSignals`] the
//!   transport must deliver (virtio-mmio: set `INT_VRING` and inject the IRQ; vhost-user: write the
//!   vring's call eventfd);
//! * a device with host-side I/O (TAP, unix sockets) exposes one pollable fd ([`VirtioDevice::backend_fd`]);
//!   the transport watches it for readability and calls [`VirtioDevice::process_backend`];
//! * an `Err(DeviceError)` from a processing call means the device is broken by what the driver did
//!   (a malformed ring or chain). The core keeps no record of it: the transport does
//!   ([`crate::transport::NeedsReset`]), sets `DEVICE_NEEDS_RESET` where it has one (virtio-mmio also
//!   sends a config-change interrupt) and stops calling the device until the driver resets it;
//! * every queue is consumed through [`Chains`] (pop a structurally checked chain, answer it, return it
//!   to the used ring), and counters are [`Counter`]s declared with `metrics::device_metrics!`.
//!
//! Never trusted here or below: anything read from guest memory (rings, descriptors, headers, lengths,
//! offsets) and anything the driver writes into the config space.

pub mod balloon;
pub mod block;
pub mod chain;
pub mod metrics;
pub mod net;
pub mod pmem;
pub mod rng;
#[cfg(test)]
pub mod test_utils;
pub mod vsock;

use std::os::unix::io::RawFd;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

pub use chain::{ChainError, Chains, ParsedChain};
pub use metrics::{Counter, DeviceMetrics, MetricsSnapshot};

/// Guest memory as every device sees it (no dirty-page bitmap).
pub type GuestMemory = GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: the only device model hull offers (no legacy layouts).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_INDIRECT_DESC`: the chain walker follows indirect tables (bounded like direct ones).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

/// Virtio device ids (virtio spec 1.2, section 5).
pub const TYPE_NET: u32 = 1;
/// Block device id.
pub const TYPE_BLOCK: u32 = 2;
/// Memory balloon device id.
pub const TYPE_BALLOON: u32 = 5;
/// Entropy source (virtio-rng) device id.
pub const TYPE_RNG: u32 = 4;
/// Socket device id.
pub const TYPE_VSOCK: u32 = 19;
/// Persistent memory device id.
pub const TYPE_PMEM: u32 = 27;

/// Device status bit a transport sets when a call returned `Err(DeviceError)` (see `transport::NeedsReset`).
pub const DEVICE_NEEDS_RESET: u32 = 0x40;

/// The device met driver input it cannot recover from without a reset.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The available ring is unreadable or its index moved by more than the queue size.
    #[error("queue {queue}: available ring is invalid: {source}")]
    InvalidRing {
        queue: usize,
        #[source]
        source: virtio_queue::Error,
    },
    /// A descriptor chain is structurally broken where the device must answer through it.
    #[error("queue {queue}: descriptor chain {head} is malformed: {source}")]
    MalformedChain {
        queue: usize,
        head: u16,
        #[source]
        source: ChainError,
    },
    /// The chain gives the device no place to put its answer (e.g. no status byte).
    #[error("queue {queue}: descriptor chain {head} cannot be answered: {reason}")]
    Unanswerable { queue: usize, head: u16, reason: String },
    /// The used ring could not be written.
    #[error("queue {queue}: cannot write the used ring: {source}")]
    UsedRing {
        queue: usize,
        #[source]
        source: virtio_queue::Error,
    },
    /// The transport refused the call: an earlier error left the device needing a reset.
    #[error("device needs a reset")]
    NeedsReset,
}

/// Activation failed (host-side resources: a socket, a TAP); the transport fails `DRIVER_OK`.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("activating the {device} device: {source}")]
    Backend {
        device: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Which queues got used buffers and need the driver notified: bit N is queue N.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueSignals(pub u64);

impl QueueSignals {
    /// Nothing to signal.
    pub const NONE: QueueSignals = QueueSignals(0);

    /// Marks queue `index` as needing an interrupt.
    pub fn set(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    /// Whether queue `index` needs an interrupt.
    pub fn contains(&self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }

    /// Whether any queue needs an interrupt (virtio-mmio raises one IRQ for all).
    pub fn any(&self) -> bool {
        self.0 != 0
    }

    /// Runs `step`, which marks the queues it used, and returns what it marked.
    pub fn collect<E>(step: impl FnOnce(&mut QueueSignals) -> Result<(), E>) -> Result<QueueSignals, E> {
        let mut signals = QueueSignals::NONE;
        step(&mut signals)?;
        Ok(signals)
    }

    /// Union of two sets.
    pub fn merge(&mut self, other: QueueSignals) {
        self.0 |= other.0;
    }

    /// The queue indices to signal, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..64).filter(move |i| self.contains(*i))
    }
}

/// The device's queues for the duration of one call. `None` marks a queue the transport does not
/// currently let the device touch (not ready, or disabled by the vhost-user frontend).
pub struct QueueSet<'q> {
    queues: Vec<Option<&'q mut Queue>>,
}

impl<'q> QueueSet<'q> {
    /// An empty set; add queues in index order with [`QueueSet::push`].
    pub fn new() -> Self {
        QueueSet { queues: Vec::new() }
    }

    /// Lends every queue of a transport that stores them in one slice (virtio-mmio); queues whose
    /// ready bit the driver has not set are withheld.
    pub fn from_slice(queues: &'q mut [Queue]) -> Self {
        QueueSet {
            queues: queues
                .iter_mut()
                .map(|q| if q.ready() { Some(q) } else { None })
                .collect(),
        }
    }

    /// Adds the next queue (index = number of queues pushed before).
    pub fn push(&mut self, queue: Option<&'q mut Queue>) {
        self.queues.push(queue);
    }

    /// Queue `index`, if present and usable.
    pub fn get(&mut self, index: usize) -> Option<&mut Queue> {
        match self.queues.get_mut(index) {
            Some(Some(q)) => Some(&mut **q),
            _ => None,
        }
    }

    /// The chains of queue `index` (in `mem`), if the queue is present and usable.
    pub fn chains<'a>(&'a mut self, index: usize, mem: &'a GuestMemory) -> Option<Chains<'a>> {
        self.get(index).map(|queue| Chains::new(queue, mem, index))
    }
}

impl Default for QueueSet<'_> {
    fn default() -> Self {
        Self::new()
    }
}

/// A virtio device core, independent of the transport that carries it.
pub trait VirtioDevice: Send {
    /// Virtio device id (`TYPE_BLOCK`, `TYPE_NET`, `TYPE_VSOCK`).
    fn device_type(&self) -> u32;

    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;

    /// The driver's accepted features (already masked to what was offered by the caller or here).
    fn set_acked_features(&mut self, features: u64);

    /// Reads the device config space at `offset`; bytes past the end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device config space; read-only fields ignore the write.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// The driver set `DRIVER_OK`: acquire host-side resources and start serving. Devices whose
    /// resources exist from creation (block's file, net's TAP, vsock's listener) have nothing to do.
    fn activate(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }

    /// The driver notified queue `index`: consume what it made available.
    fn process_queue(
        &mut self,
        index: usize,
        mem: &GuestMemory,
        queues: &mut QueueSet<'_>,
    ) -> Result<QueueSignals, DeviceError>;

    /// A pollable fd that becomes readable when host-side I/O needs [`VirtioDevice::process_backend`].
    fn backend_fd(&self) -> Option<RawFd> {
        None
    }

    /// Host-side I/O is ready (the `backend_fd` polled readable).
    fn process_backend(&mut self, _mem: &GuestMemory, _queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        Ok(QueueSignals::NONE)
    }

    /// The driver reset the device: drop per-session state (connections, pending packets).
    fn reset(&mut self);

    /// The device's counters, for a reader that does not know the device (the API's metrics).
    fn metrics(&self) -> Option<std::sync::Arc<dyn DeviceMetrics>> {
        None
    }

    /// The device's own state for a snapshot, beyond what the transport keeps (features, queues): JSON
    /// the same device kind reads back in [`VirtioDevice::restore_state`]. `Null` for devices whose state
    /// is all in their configuration (block's file, net's TAP) — the default. Devices added later
    /// implement these two to take part in snapshots.
    fn save_state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Takes back what [`VirtioDevice::save_state`] wrote (from a snapshot file, so untrusted: check it).
    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), String> {
        if state.is_null() {
            Ok(())
        } else {
            Err("this device keeps no state of its own, yet the snapshot has some".into())
        }
    }

    /// Called once after a restore, with the device serving again: what the device must tell the driver
    /// about having moved to a new host (vsock: `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`).
    fn after_restore(&mut self, _mem: &GuestMemory, _queues: &mut QueueSet<'_>) -> Result<QueueSignals, DeviceError> {
        Ok(QueueSignals::NONE)
    }

    /// The concrete device, for host-side operations only one kind has (replacing a block device's
    /// file); `None` for devices that offer none.
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        None
    }
}

/// Copies `src` into the config-space window `[offset, offset + data.len())`, zero past the end.
pub(crate) fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - start);
    data[..n].copy_from_slice(&src[start..start + n]);
}
