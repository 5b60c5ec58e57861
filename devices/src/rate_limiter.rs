//! Firecracker-style I/O rate limiting for the device cores: token buckets (`bandwidth` in bytes, `ops` in
//! requests or frames), each with a size, a refill time and an optional `one_time_burst` spent first, and
//! the [`RateLimiter`] a device consults before serving a request.
//!
//! A bucket starts full and refills continuously at `size / refill_time`; a bucket whose size or refill
//! time is 0 does not exist (unlimited), as in Firecracker. A request bigger than the whole bucket is let
//! through when the bucket is full and leaves a debt that the refill pays before anything else goes
//! through, so the long-run rate holds even for requests larger than the bucket.
//!
//! When a request does not fit, the limiter arms its timer fd for the moment it would, and reports
//! "blocked" until the device's event loop sees the timer fire ([`RateLimiter::on_timer`]): the device
//! leaves the request in its queue and stops, it never waits or spins. The limiter owns its timer fd for
//! its whole life, so the transport can watch the fd from the start and a limit set after boot needs no
//! new registration.
//!
//! Trusts: its configuration (validated by the VMM's config). Never trusts: request sizes, which come
//! from the guest; any size is accounted for without overflow.

use std::os::unix::io::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

// Reached on the event loop for every throttled request: rate-limited per call site.
use hull_logging::guest_warn as warn;
use vmm_sys_util::timerfd::TimerFd;

/// The shortest wait a throttled device is given (or the bucket's whole refill time, if shorter): waking
/// for every few tokens would cost a wake-up per request, while tokens earned during a longer wait are
/// kept (up to the bucket's size), so the rate does not suffer.
const MIN_WAIT: Duration = Duration::from_millis(1);
/// How soon a limiter whose buckets were updated while it was throttled checks again (a zero duration
/// would disarm the timer).
const RECHECK: Duration = Duration::from_micros(100);

/// One bucket's settings as the API gives them. A `size` or `refill_time_ms` of 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Extra tokens available once, spent before the bucket's own.
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// Whether these settings mean "no bucket" (Firecracker: size or refill time 0).
    pub fn is_unlimited(&self) -> bool {
        self.size == 0 || self.refill_time_ms == 0
    }
}

/// What an update does to one bucket (Firecracker's PATCH semantics: a bucket given replaces the bucket,
/// an omitted one stays as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketUpdate {
    /// Leave the bucket as it is (with its current tokens).
    Keep,
    /// Replace the bucket with a new, full one; unlimited settings remove it.
    Set(BucketConfig),
}

/// A limiter's settings: both buckets, each possibly unlimited (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimiterConfig {
    /// Bytes.
    pub bandwidth: BucketConfig,
    /// Requests (block) or frames (net).
    pub ops: BucketConfig,
}

/// A change to a running limiter, bucket by bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimiterUpdate {
    pub bandwidth: BucketUpdate,
    pub ops: BucketUpdate,
}

impl Default for RateLimiterUpdate {
    fn default() -> Self {
        RateLimiterUpdate {
            bandwidth: BucketUpdate::Keep,
            ops: BucketUpdate::Keep,
        }
    }
}

impl From<RateLimiterConfig> for RateLimiterUpdate {
    /// Sets both buckets (unlimited settings remove them): a whole new configuration.
    fn from(config: RateLimiterConfig) -> Self {
        RateLimiterUpdate {
            bandwidth: BucketUpdate::Set(config.bandwidth),
            ops: BucketUpdate::Set(config.ops),
        }
    }
}

/// A token bucket. All arithmetic on request sizes saturates; nothing the guest sends can overflow it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    /// The refill time in nanoseconds (u128: milliseconds up to `u64::MAX` do not overflow).
    refill_ns: u128,
    budget: u64,
    /// What is left of `one_time_burst`; never refilled.
    burst: u64,
    /// Tokens taken beyond the budget by an over-sized request; refills pay it back first.
    debt: u64,
    /// The instant up to which refills have been credited.
    last_refill: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` for unlimited settings.
    pub fn new(config: BucketConfig, now: Instant) -> Option<Self> {
        if config.is_unlimited() {
            return None;
        }
        Some(TokenBucket {
            size: config.size,
            refill_ns: u128::from(config.refill_time_ms) * 1_000_000,
            budget: config.size,
            burst: config.one_time_burst,
            debt: 0,
            last_refill: now,
        })
    }

    /// Tokens available now without waiting (burst plus budget; 0 while in debt).
    pub fn available(&self) -> u64 {
        if self.debt > 0 {
            0
        } else {
            self.burst.saturating_add(self.budget)
        }
    }

    /// What is left of the one-time burst.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Credits the tokens earned between the last refill and `now`, keeping the remainder of a token for
    /// the next call (so many small refills add up to the exact rate).
    fn refill(&mut self, now: Instant) {
        if self.debt == 0 && self.budget >= self.size {
            // Full: time spent full earns nothing.
            self.last_refill = now;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last_refill).as_nanos();
        let size = u128::from(self.size);
        let earned = elapsed.checked_mul(size).map(|t| t / self.refill_ns);
        let tokens = match earned {
            Some(0) => return,
            Some(t) => u64::try_from(t).unwrap_or(u64::MAX),
            None => u64::MAX,
        };
        let paid = tokens.min(self.debt);
        self.debt -= paid;
        self.budget = self.budget.saturating_add(tokens - paid).min(self.size);
        if self.debt == 0 && self.budget == self.size {
            self.last_refill = now;
        } else {
            // tokens * refill / size <= elapsed, so this stays at or before `now`.
            let credited = u128::from(tokens) * self.refill_ns / size;
            self.last_refill += Duration::from_nanos(u64::try_from(credited).unwrap_or(u64::MAX));
        }
    }

    /// Whether `tokens` can be taken now: they fit in burst plus budget, or the bucket is full (a request
    /// bigger than the bucket then goes through and leaves a debt).
    fn can_take(&self, tokens: u64) -> bool {
        self.debt == 0 && (tokens <= self.burst.saturating_add(self.budget) || self.budget >= self.size)
    }

    /// Takes `tokens`: the burst first, then the budget, then (over-consumption) as debt.
    fn take(&mut self, tokens: u64) {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let rest = tokens - from_burst;
        if rest <= self.budget {
            self.budget -= rest;
        } else {
            self.debt = self.debt.saturating_add(rest - self.budget);
            self.budget = 0;
        }
    }

    /// The shortest wait worth a wake-up: [`MIN_WAIT`], or the refill time if that is shorter (waiting
    /// longer than a whole refill would lose tokens).
    fn min_wait(&self) -> Duration {
        let refill = Duration::from_nanos(u64::try_from(self.refill_ns).unwrap_or(u64::MAX));
        MIN_WAIT.min(refill)
    }

    /// How long from `now` until `tokens` can be taken (the bucket refilled to `min(tokens, size)`, after
    /// paying its debt).
    fn wait_for(&self, tokens: u64, now: Instant) -> Duration {
        let target = tokens.saturating_sub(self.burst).min(self.size);
        let missing = u128::from(self.debt) + u128::from(target.saturating_sub(self.budget));
        let size = u128::from(self.size);
        let from_last = (missing * self.refill_ns).div_ceil(size);
        let since_last = now.saturating_duration_since(self.last_refill).as_nanos();
        let ns = from_last.saturating_sub(since_last);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }
}

/// The rate limiter of one device direction (a drive, a network interface's RX or TX): an optional
/// bandwidth bucket (bytes), an optional ops bucket (requests), and the timer that ends a throttle.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// A request did not fit and the timer is armed; cleared by [`RateLimiter::on_timer`].
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with the given buckets (unlimited settings mean no bucket).
    pub fn new(bandwidth: BucketConfig, ops: BucketConfig) -> std::io::Result<Self> {
        let timer = TimerFd::new()?;
        let fd = timer.as_raw_fd();
        // SAFETY: fcntl on a descriptor this function owns; reads and writes no memory of ours.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let now = Instant::now();
        Ok(RateLimiter {
            bandwidth: TokenBucket::new(bandwidth, now),
            ops: TokenBucket::new(ops, now),
            timer,
            blocked: false,
        })
    }

    /// A limiter without buckets (everything goes through) that can take buckets later.
    pub fn unlimited() -> std::io::Result<Self> {
        Self::new(BucketConfig::default(), BucketConfig::default())
    }

    /// A limiter with the buckets of `config`.
    pub fn from_config(config: &RateLimiterConfig) -> std::io::Result<Self> {
        Self::new(config.bandwidth, config.ops)
    }

    /// Whether neither bucket exists.
    pub fn is_unlimited(&self) -> bool {
        self.bandwidth.is_none() && self.ops.is_none()
    }

    /// Whether the device must leave its queue alone until the timer fires.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The bandwidth bucket, if any.
    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    /// The ops bucket, if any.
    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }

    /// Takes one request of `ops` operations and `bytes` bytes if both buckets allow it now; otherwise
    /// takes nothing, arms the timer for when they will, and returns false (the limiter is then blocked).
    pub fn consume(&mut self, ops: u64, bytes: u64) -> bool {
        self.consume_at(ops, bytes, Instant::now())
    }

    /// [`RateLimiter::consume`] at a given instant (tests drive the clock with it).
    pub fn consume_at(&mut self, ops: u64, bytes: u64, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        let mut wait = Duration::ZERO;
        for (bucket, tokens) in [(&mut self.ops, ops), (&mut self.bandwidth, bytes)] {
            if let Some(bucket) = bucket {
                bucket.refill(now);
                if !bucket.can_take(tokens) {
                    wait = wait.max(bucket.wait_for(tokens, now).max(bucket.min_wait()));
                }
            }
        }
        if wait.is_zero() {
            for (bucket, tokens) in [(&mut self.ops, ops), (&mut self.bandwidth, bytes)] {
                if let Some(bucket) = bucket {
                    bucket.take(tokens);
                }
            }
            return true;
        }
        match self.timer.reset(wait, None) {
            Ok(()) => {
                self.blocked = true;
                false
            }
            Err(error) => {
                // Without a timer nothing would wake the device: let the request through instead of
                // stalling the guest's I/O for good.
                warn!(%error, "cannot arm the rate limiter's timer; request not throttled");
                true
            }
        }
    }

    /// The timer fd became readable: drains it and lifts the block. Returns whether the timer had fired
    /// (false for a spurious wake-up, which changes nothing).
    pub fn on_timer(&mut self) -> bool {
        match self.timer.wait() {
            Ok(_) => {
                self.blocked = false;
                true
            }
            Err(_) => false,
        }
    }

    /// Replaces or keeps each bucket (a replaced bucket starts full). A blocked limiter re-checks at once:
    /// its timer is re-armed to fire now, so a lifted or loosened limit takes effect without waiting out
    /// the old one.
    pub fn update(&mut self, update: &RateLimiterUpdate) {
        let now = Instant::now();
        if let BucketUpdate::Set(config) = update.bandwidth {
            self.bandwidth = TokenBucket::new(config, now);
        }
        if let BucketUpdate::Set(config) = update.ops {
            self.ops = TokenBucket::new(config, now);
        }
        if self.blocked {
            if let Err(error) = self.timer.reset(RECHECK, None) {
                warn!(%error, "cannot re-arm the rate limiter's timer; unblocking now");
                self.blocked = false;
            }
        }
    }
}

impl AsRawFd for RateLimiter {
    /// The timer fd: readable when a throttled device may go on.
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, one_time_burst: u64, refill_time_ms: u64) -> BucketConfig {
        BucketConfig {
            size,
            one_time_burst,
            refill_time_ms,
        }
    }

    const NONE: BucketConfig = BucketConfig {
        size: 0,
        one_time_burst: 0,
        refill_time_ms: 0,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn timer_fires_within(limiter: &RateLimiter, limit: Duration) -> bool {
        crate::virtio::test_utils::readable_within(limiter.as_raw_fd(), limit)
    }

    #[test]
    fn consume_takes_tokens_until_the_bucket_is_empty() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(bucket(1000, 0, 1000), NONE).unwrap();
        assert!(rl.consume_at(1, 600, t0));
        assert!(rl.consume_at(1, 400, t0));
        assert_eq!(rl.bandwidth().unwrap().available(), 0);
        assert!(!rl.consume_at(1, 1, t0));
        assert!(rl.is_blocked());
        // Blocked: nothing is checked or taken until the timer fires.
        assert!(!rl.consume_at(1, 0, t0 + ms(5000)));
    }

    #[test]
    fn buckets_refill_over_time_at_size_per_refill_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bucket(1000, 0, 100), t0).unwrap();
        b.refill(t0);
        b.take(1000);
        b.refill(t0 + ms(10));
        assert_eq!(b.available(), 100);
        // Fractions of a token are kept: 100 refills of 0.1 ms earn exactly 100 tokens.
        for i in 1..=100u64 {
            b.refill(t0 + ms(10) + Duration::from_micros(100 * i));
        }
        assert_eq!(b.available(), 200);
        // Never more than the size.
        b.refill(t0 + ms(10_000));
        assert_eq!(b.available(), 1000);
        // The wait for 300 tokens from empty is 30 ms.
        b.take(1000);
        assert_eq!(b.wait_for(300, t0 + ms(10_000)), ms(30));
    }

    #[test]
    fn one_time_burst_is_spent_first_and_never_refills() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(NONE, bucket(10, 5, 1000)).unwrap();
        assert!(rl.consume_at(3, 0, t0));
        let ops = rl.ops().unwrap();
        assert_eq!((ops.burst(), ops.available()), (2, 12));
        assert!(rl.consume_at(12, 0, t0));
        assert!(!rl.consume_at(1, 0, t0));
        rl.blocked = false;
        // A full refill brings the budget back, not the burst.
        assert!(rl.consume_at(10, 0, t0 + ms(1000)));
        assert_eq!(rl.ops().unwrap().burst(), 0);
        assert!(!rl.consume_at(1, 0, t0 + ms(1000)));
    }

    #[test]
    fn zero_size_or_zero_refill_time_means_unlimited() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(bucket(0, 100, 1000), bucket(100, 0, 0)).unwrap();
        assert!(rl.is_unlimited());
        for _ in 0..1000 {
            assert!(rl.consume_at(1_000, u64::MAX, t0));
        }
        assert!(!rl.is_blocked());
    }

    #[test]
    fn a_request_must_fit_both_buckets_and_takes_from_neither_otherwise() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(bucket(1000, 0, 1000), bucket(2, 0, 1000)).unwrap();
        assert!(rl.consume_at(1, 100, t0));
        assert!(rl.consume_at(1, 100, t0));
        // Bytes would fit, ops do not: the bytes stay.
        assert!(!rl.consume_at(1, 100, t0));
        assert_eq!(rl.bandwidth().unwrap().available(), 800);
        assert_eq!(rl.ops().unwrap().available(), 0);
    }

    #[test]
    fn requests_bigger_than_the_bucket_pass_when_full_and_leave_a_debt() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(bucket(1000, 0, 100), NONE).unwrap();
        assert!(rl.consume_at(1, 3000, t0));
        // 2000 tokens of debt: 200 ms before the next byte, 300 ms before a full bucket.
        let b = rl.bandwidth().unwrap();
        assert_eq!(b.wait_for(1, t0), ms(201) - Duration::from_micros(900));
        assert_eq!(b.wait_for(5000, t0), ms(300));
        assert!(!rl.consume_at(1, 1, t0 + ms(150)));
        rl.blocked = false;
        assert!(rl.consume_at(1, 1, t0 + ms(201)));
        // Huge guest-given sizes neither overflow nor panic.
        let mut rl = RateLimiter::new(bucket(u64::MAX, u64::MAX, u64::MAX), bucket(1, 0, 1)).unwrap();
        assert!(rl.consume_at(u64::MAX, u64::MAX, t0));
        assert!(!rl.consume_at(u64::MAX, u64::MAX, t0));
    }

    #[test]
    fn a_throttled_limiter_is_woken_by_its_timer_fd() {
        let mut rl = RateLimiter::new(NONE, bucket(1, 0, 30)).unwrap();
        assert!(rl.consume(1, 0));
        assert!(!rl.on_timer(), "no timer armed yet: a spurious wake-up changes nothing");
        let start = Instant::now();
        assert!(!rl.consume(1, 0));
        assert!(rl.is_blocked());
        assert!(timer_fires_within(&rl, Duration::from_secs(5)));
        let waited = start.elapsed();
        assert!(waited >= ms(25), "woken after {waited:?}");
        assert!(rl.on_timer());
        assert!(!rl.is_blocked());
        assert!(rl.consume(1, 0));
    }

    #[test]
    fn update_replaces_given_buckets_keeps_the_others_and_wakes_a_blocked_limiter() {
        let mut rl = RateLimiter::new(bucket(100, 0, 60_000), bucket(1, 0, 60_000)).unwrap();
        assert!(rl.consume(1, 100));
        assert!(!rl.consume(1, 1));
        // The ops bucket is lifted; the (empty) bandwidth bucket is kept.
        rl.update(&RateLimiterUpdate {
            bandwidth: BucketUpdate::Keep,
            ops: BucketUpdate::Set(NONE),
        });
        assert!(rl.ops().is_none());
        assert_eq!(rl.bandwidth().unwrap().available(), 0);
        // The old wait was a minute; the update re-arms the timer to fire now.
        assert!(timer_fires_within(&rl, Duration::from_secs(5)));
        assert!(rl.on_timer());
        assert!(!rl.consume(1, 1));
        rl.update(&RateLimiterUpdate {
            bandwidth: BucketUpdate::Set(bucket(10, 0, 1000)),
            ..Default::default()
        });
        assert!(timer_fires_within(&rl, Duration::from_secs(5)));
        rl.on_timer();
        assert!(rl.consume(1, 10));
        assert!(rl.ops().is_none());
    }
}
