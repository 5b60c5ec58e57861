//! A read-only MC146818 CMOS real-time clock on ports 0x70 (index) and 0x71 (data): the host's UTC time in
//! BCD, 24-hour mode, never "update in progress". Linux reads it once at boot; without it, port reads
//! return 0xff, the update-in-progress bit looks stuck, and the kernel waits a full second before giving
//! up ("Unable to read current time from RTC"). Writes (alarms, the NMI-mask bit, CMOS RAM) are ignored.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

pub const CMOS_PORT: u64 = 0x70;
pub const CMOS_LEN: u64 = 2;

const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

#[derive(Default)]
pub struct Cmos {
    index: u8,
}

fn bcd(v: u64) -> u8 {
    let v = (v % 100) as u8;
    ((v / 10) << 4) | (v % 10)
}

/// (year, month, day, weekday 1=Sunday, hour, minute, second) of Unix time `secs`, in UTC.
fn civil(secs: u64) -> (u64, u64, u64, u64, u64, u64, u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil, for days since 1970-01-01 (non-negative here).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u64;
    let weekday = (days + 4) % 7 + 1; // 1970-01-01 was a Thursday (5 with Sunday = 1).
    (year, month, day, weekday, rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Cmos {
    fn register(&self, now: u64) -> u8 {
        let (year, month, day, weekday, hour, minute, second) = civil(now);
        match self.index {
            0x00 => bcd(second),
            0x02 => bcd(minute),
            0x04 => bcd(hour),
            0x06 => bcd(weekday),
            0x07 => bcd(day),
            0x08 => bcd(month),
            0x09 => bcd(year),
            REG_CENTURY => bcd(year / 100),
            // Divider on, 1024 Hz, and bit 7 (update in progress) clear.
            REG_A => 0x26,
            // 24-hour mode, BCD, no interrupts.
            REG_B => 0x02,
            // Valid RAM and time.
            REG_D => 0x80,
            _ => 0,
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = if offset == 1 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            self.register(now)
        } else {
            self.index
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            if let Some(v) = data.first() {
                // Bit 7 of the index port masks NMIs; the register number is the rest.
                self.index = v & 0x7f;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_bcd_utc_and_never_updating() {
        // 2026-11-23 19:45:07 UTC, a Monday.
        let t = 1_795_463_107;
        assert_eq!(civil(t), (2026, 11, 23, 2, 19, 45, 7));
        assert_eq!(civil(0), (1970, 1, 1, 5, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 3, 0, 0, 0));
        let mut c = Cmos::default();
        let read = |c: &mut Cmos, reg: u8| {
            c.write(0, &[reg | 0x80]);
            c.register(t)
        };
        assert_eq!(read(&mut c, 0x00), 0x07);
        assert_eq!(read(&mut c, 0x04), 0x19);
        assert_eq!(read(&mut c, 0x09), 0x26);
        assert_eq!(read(&mut c, REG_CENTURY), 0x20);
        assert_eq!(read(&mut c, REG_A) & 0x80, 0, "never update-in-progress");
        assert_eq!(read(&mut c, REG_B), 0x02);
        let mut b = [0u8; 1];
        c.write(0, &[REG_D]);
        c.read(1, &mut b);
        assert_eq!(b[0], 0x80);
        c.write(1, &[0xff]);
        c.read(0, &mut b);
        assert_eq!(b[0], REG_D);
    }
}
