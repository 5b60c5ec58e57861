//! Transports that carry a [`crate::virtio::VirtioDevice`] core to a guest inside hull. `mmio` is
//! virtio-mmio version 2 (virtio 1.x): a 4 KiB register window on the MMIO bus per device. (The other
//! transport, vhost-user, serves the same cores to another VMM and lives in `crate::vhost_user`.)
//!
//! [`NeedsReset`] is the one place that remembers a device is broken: device cores only report a fatal
//! error; every transport records it here, stops calling the core and forgets it when the driver resets
//! the device.
//!
//! Never trusted here: any value the driver writes into a register window.

pub mod mmio;

pub use mmio::{MmioTransport, TransportError};

use crate::virtio::{DeviceError, QueueSignals};

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
