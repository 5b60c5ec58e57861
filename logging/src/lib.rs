//! What every host-side hull process (the VMM, `hull vhost-user`, `hull run`, the shim) shares for its logs,
//! so that nothing a guest does can fill the host's disk or memory through them:
//!
//! - [`ratelimit`]: a per-call-site token bucket for every log line a guest can trigger (the `guest_*!`
//!   macros), with one "N more suppressed" security event when a flooded site logs again;
//! - [`rotating`]: a file that keeps at most a configured size (`console.log` plus one rotated
//!   `console.log.1`), for guest consoles and the logs of the VM's processes;
//! - [`security`]: the one shape of security events (target `security`, fields `event`, `vm_id`,
//!   `container_id`, `reason`) and the process's identity they carry;
//! - [`rfc3339_now`]: the timestamp of JSON log lines.
//!
//! It trusts nothing it is given to write: line content and sizes come from the guest.

pub mod ratelimit;
pub mod rotating;
pub mod security;

/// Re-exported for the macros, so their users need no `tracing` import of their own.
pub use tracing;

/// The current UTC time as RFC 3339 with microseconds (`2026-12-03T08:07:54.123456Z`).
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_micros())
}

fn rfc3339(secs: u64, micros: u32) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(super::rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(super::rfc3339(1_796_281_674, 123_456), "2026-12-03T07:07:54.123456Z");
    }
}
