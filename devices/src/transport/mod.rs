//! Transports that carry a [`crate::virtio::VirtioDevice`] core to a guest inside hull. `mmio` is
//! virtio-mmio version 2 (virtio 1.x): a 4 KiB register window on the MMIO bus per device. `pci` is
//! virtio-pci (modern only): a function on PCI bus 0 with one memory BAR and MSI-X. The VMM drives both
//! through [`VirtioTransport`]. (The other transport, vhost-user, serves the same cores to another VMM and
//! lives in `crate::vhost_user`.)
//!
//! [`NeedsReset`] is the one place that remembers a device is broken: device cores only report a fatal
//! error; every transport records it here, stops calling the core and forgets it when the driver resets
//! the device.
//!
//! Never trusted here: any value the driver writes into a register window.

pub mod mmio;
pub mod pci;

pub use mmio::{MmioTransport, TransportError};
pub use pci::VirtioPciDevice;

use std::os::fd::RawFd;

use vmm_sys_util::eventfd::EventFd;

use crate::virtio::{DeviceError, DeviceMetrics, QueueSignals};

/// What the VMM's event loop and host-side updates need of a transport, whichever it is.
pub trait VirtioTransport: Send {
    /// The name given at creation (`block:rootfs`).
    fn label(&self) -> &str;
    /// The virtio device id of the core.
    fn device_type(&self) -> u32;
    /// How many queues the core has.
    fn queue_count(&self) -> usize;
    /// The driver set DRIVER_OK and the core was activated (and no reset since).
    fn is_serving(&self) -> bool;
    /// The core's counters, if it keeps any.
    fn metrics(&self) -> Option<std::sync::Arc<dyn DeviceMetrics>>;
    /// The driver kicked queue `index`.
    fn notify_queue(&mut self, index: usize);
    /// The core's backend fd polled readable.
    fn process_backend(&mut self);
    /// Readable when the device starts or stops serving.
    fn state_event(&self) -> &EventFd;
    /// The core's host-side fd while the device serves.
    fn backend_fd(&self) -> Option<RawFd>;
    /// The host changed the config space: new generation, and an interrupt for a running driver.
    fn config_changed(&mut self);
    /// The config generation (as the transport counts it).
    fn config_generation(&self) -> u32;
    /// The core as `Any`, for host-side operations one kind of device has.
    fn device_any(&mut self) -> Option<&mut dyn std::any::Any>;
}

impl dyn VirtioTransport {
    /// Runs `f` on the core when it is a `T`; `None` otherwise.
    pub fn with_device<T: 'static, R>(&mut self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        self.device_any()?.downcast_mut::<T>().map(f)
    }
}

macro_rules! impl_virtio_transport {
    ($t:ty) => {
        impl VirtioTransport for $t {
            fn label(&self) -> &str {
                <$t>::label(self)
            }
            fn device_type(&self) -> u32 {
                <$t>::device_type(self)
            }
            fn queue_count(&self) -> usize {
                <$t>::queue_count(self)
            }
            fn is_serving(&self) -> bool {
                <$t>::is_serving(self)
            }
            fn metrics(&self) -> Option<std::sync::Arc<dyn DeviceMetrics>> {
                <$t>::metrics(self)
            }
            fn notify_queue(&mut self, index: usize) {
                <$t>::notify_queue(self, index)
            }
            fn process_backend(&mut self) {
                <$t>::process_backend(self)
            }
            fn state_event(&self) -> &EventFd {
                <$t>::state_event(self)
            }
            fn backend_fd(&self) -> Option<RawFd> {
                <$t>::backend_fd(self)
            }
            fn config_changed(&mut self) {
                <$t>::config_changed(self)
            }
            fn config_generation(&self) -> u32 {
                <$t>::config_generation(self)
            }
            fn device_any(&mut self) -> Option<&mut dyn std::any::Any> {
                <$t>::device_any(self)
            }
        }
    };
}

impl_virtio_transport!(MmioTransport);
impl_virtio_transport!(VirtioPciDevice);

/// A transport's `DEVICE_NEEDS_RESET` state. A core's processing call that returns `Err(DeviceError)` sets
/// it; while set, the core is not called (the call answers `DeviceError::NeedsReset`); a driver reset
/// clears it. virtio-mmio also sets it when activation fails, and shows it in the status register.
#[derive(Debug, Default)]
pub struct NeedsReset(bool);

impl NeedsReset {
    /// Whether the device is broken until the driver resets it.
    pub fn is_set(&self) -> bool {
        self.0
    }

    /// The device is broken (a failed activation, or an error from a processing call).
    pub fn set(&mut self) {
        self.0 = true;
    }

    /// The driver reset the device.
    pub fn clear(&mut self) {
        self.0 = false;
    }

    /// Runs one processing call of the core unless the device is broken; an error breaks it.
    pub fn call(
        &mut self,
        process: impl FnOnce() -> Result<QueueSignals, DeviceError>,
    ) -> Result<QueueSignals, DeviceError> {
        if self.0 {
            return Err(DeviceError::NeedsReset);
        }
        let result = process();
        self.0 = result.is_err();
        result
    }
}
