//! Firecracker's boot timer: a guest write of the byte 123 to the first byte of an MMIO page marks
//! "the guest has booted", and the VMM logs the time since it began building the VM. Anything else the
//! guest writes or reads there is ignored.

use std::time::Instant;

use crate::bus::BusDevice;

/// The magic value a guest writes when its boot is complete.
pub const BOOT_COMPLETE_MAGIC: u8 = 123;

pub struct BootTimer {
    start: Instant,
    reported: Option<u128>,
}

impl BootTimer {
    pub fn new(start: Instant) -> Self {
        BootTimer { start, reported: None }
    }

    /// Microseconds from start to the guest's boot-complete write, once it happened.
    pub fn boot_time_us(&self) -> Option<u128> {
        self.reported
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_COMPLETE_MAGIC) {
            return;
        }
        let us = self.start.elapsed().as_micros();
        self.reported.get_or_insert(us);
        hull_logging::guest_info!("Guest-boot-time = {} us {} ms", us, us / 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_at_offset_zero_counts() {
        let mut t = BootTimer::new(Instant::now());
        t.write(1, &[123]);
        t.write(0, &[122]);
        t.write(0, &[]);
        assert_eq!(t.boot_time_us(), None);
        t.write(0, &[123, 0, 0, 0]);
        assert!(t.boot_time_us().is_some());
    }
}
