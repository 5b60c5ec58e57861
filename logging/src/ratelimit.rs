//! Rate limits for log lines a guest can trigger (a register write, a malformed queue, a vsock packet):
//! each call site gets its own token bucket of [`BURST`] lines refilled at [`LINES_PER_SEC`], so a guest
//! that hammers one site gets a few lines a second out of it, however fast it loops. The lines a site drops
//! are counted; the next line it logs is preceded by one security event `log_flood_suppressed` saying how
//! many were dropped ("N more suppressed"), as Firecracker's logger does.
//!
//! The check is lock-free and allocation-free (two atomics per site, a `static` the macro declares), and is
//! only made when the line's level is enabled, so a disabled `debug` line on a hot path costs what
//! `tracing` costs. Use the macros: [`guest_error!`](crate::guest_error), [`guest_warn!`](crate::guest_warn),
//! [`guest_info!`](crate::guest_info), [`guest_debug!`](crate::guest_debug); they take `tracing`'s fields and
//! message syntax.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines a site may log per second once its burst is spent.
pub const LINES_PER_SEC: u64 = 10;
/// Lines a quiet site may log at once.
pub const BURST: u64 = 50;

/// Tokens are counted in thousandths; `rate` tokens a second is then `rate` thousandths a millisecond.
const MILLI: u64 = 1000;
/// The state word: the time of the last refill (ms) above, thousandths of tokens in the low bits.
const TOKEN_BITS: u32 = 20;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;

/// One call site's token bucket and its count of dropped lines.
pub struct RateLimit {
    /// `last_refill_ms << TOKEN_BITS | milli_tokens`; 0 before the first line (a full bucket).
    state: AtomicU64,
    suppressed: AtomicU64,
    per_sec: u64,
    burst: u64,
}

impl RateLimit {
    /// A bucket of `burst` lines refilled at `per_sec` lines a second (`burst` at most 1000).
    pub const fn new(per_sec: u64, burst: u64) -> RateLimit {
        assert!(burst >= 1 && burst * MILLI <= TOKEN_MASK, "burst must be 1..=1000");
        RateLimit {
            state: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            per_sec,
            burst,
        }
    }

    /// The limit of every guest-triggered call site.
    pub const fn per_site() -> RateLimit {
        RateLimit::new(LINES_PER_SEC, BURST)
    }

    /// Whether a line may go out now: `Some(n)` with the number of lines dropped since the last one that went
    /// out (to be reported first), or `None` when it is dropped (and counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(now_ms())
    }

    /// [`admit`](Self::admit) at `now_ms` milliseconds of a monotonic clock (from 1).
    pub fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let full = self.burst * MILLI;
        let now_ms = now_ms.max(1);
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let (tokens, last) = match state {
                0 => (full, now_ms),
                s => (s & TOKEN_MASK, s >> TOKEN_BITS),
            };
            // Another thread may have refilled at a later time than ours: then nothing accrues.
            let accrued = now_ms.saturating_sub(last).saturating_mul(self.per_sec);
            let tokens = tokens.saturating_add(accrued).min(full);
            if tokens < MILLI {
                // Dropped. The stored state stays as it is: refilling is linear below the cap, so storing
                // the accrual now would change nothing, and a flood then writes no shared cache line.
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            let next = (now_ms.max(last) << TOKEN_BITS) | (tokens - MILLI);
            match self
                .state
                .compare_exchange_weak(state, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::AcqRel)),
                Err(current) => state = current,
            }
        }
    }
}

/// Milliseconds since the first rate-limited line of the process, from 1.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX >> TOKEN_BITS) + 1
}

/// The security event a flooded site logs before its next line: how many lines it dropped.
pub fn report_suppressed(suppressed: u64, site: &'static str) {
    crate::security_event!(
        tracing::Level::WARN,
        event = "log_flood_suppressed",
        reason = "a log line the guest can trigger exceeded its rate limit",
        site,
        suppressed,
        "{suppressed} more suppressed"
    );
}

/// Logs through a per-site [`RateLimit`] at `level` (a `tracing::Level` constant), with `tracing`'s fields
/// and message syntax. Prefer [`guest_warn!`](crate::guest_warn) and its siblings.
#[macro_export]
macro_rules! rate_limited {
    ($level:expr, $($arg:tt)+) => {{
        static SITE: $crate::ratelimit::RateLimit = $crate::ratelimit::RateLimit::per_site();
        if $crate::tracing::enabled!($level) {
            if let ::core::option::Option::Some(suppressed) = SITE.admit() {
                if suppressed > 0 {
                    $crate::ratelimit::report_suppressed(suppressed, ::core::concat!(::core::file!(), ":", ::core::line!()));
                }
                $crate::tracing::event!($level, $($arg)+);
            }
        }
    }};
}

/// `tracing::error!` for a line the guest can trigger, rate-limited per call site.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => { $crate::rate_limited!($crate::tracing::Level::ERROR, $($arg)+) };
}

/// `tracing::warn!` for a line the guest can trigger, rate-limited per call site.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => { $crate::rate_limited!($crate::tracing::Level::WARN, $($arg)+) };
}

/// `tracing::info!` for a line the guest can trigger, rate-limited per call site.
#[macro_export]
macro_rules! guest_info {
    ($($arg:tt)+) => { $crate::rate_limited!($crate::tracing::Level::INFO, $($arg)+) };
}

/// `tracing::debug!` for a line the guest can trigger, rate-limited per call site.
#[macro_export]
macro_rules! guest_debug {
    ($($arg:tt)+) => { $crate::rate_limited!($crate::tracing::Level::DEBUG, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_and_the_dropped_count() {
        let limit = RateLimit::new(10, 50);
        let t = 1_000;
        // A full bucket: 50 lines at once, then nothing.
        for _ in 0..50 {
            assert_eq!(limit.admit_at(t), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limit.admit_at(t), None);
        }
        // 10 lines a second: one token after 100 ms, not before; the first line carries the dropped count.
        assert_eq!(limit.admit_at(t + 99), None);
        assert_eq!(limit.admit_at(t + 100), Some(1001));
        assert_eq!(limit.admit_at(t + 100), None);
        assert_eq!(limit.admit_at(t + 200), Some(1));
        // A long quiet spell refills the burst, not more.
        let later = t + 3_600_000;
        for _ in 0..50 {
            assert!(limit.admit_at(later).is_some());
        }
        assert_eq!(limit.admit_at(later), None);
    }

    #[test]
    fn a_flood_from_many_threads_gets_the_burst_and_counts_every_drop() {
        let limit = std::sync::Arc::new(RateLimit::new(10, 50));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let limit = limit.clone();
                std::thread::spawn(move || (0..10_000).filter(|_| limit.admit_at(5).is_some()).count())
            })
            .collect();
        let passed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(passed, 50);
        assert_eq!(limit.admit_at(105), Some(40_000 - 50));
    }

    #[test]
    fn time_going_backwards_between_threads_grants_nothing() {
        let limit = RateLimit::new(10, 1);
        assert_eq!(limit.admit_at(500), Some(0));
        assert_eq!(limit.admit_at(400), None);
        assert_eq!(limit.admit_at(599), None);
        assert_eq!(limit.admit_at(600), Some(2));
    }

    #[test]
    fn the_macros_expand_with_fields_and_messages() {
        for i in 0..100 {
            crate::guest_warn!(i, port = 0x99, "unhandled port");
            crate::guest_debug!("plain {i}");
            crate::guest_error!(error = %"e", "with display");
            crate::guest_info!(?i, "with debug");
        }
    }
}
