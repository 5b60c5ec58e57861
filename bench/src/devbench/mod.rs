//! The `devices` suite: each virtio device core driven through real queues in guest memory, the way a guest
//! driver drives it, next to the raw host operation it ends in (pread/pwrite on the same file, a write on a
//! unix socket pair, a write on the TAP). The ratio device/raw is the cost of the emulation: descriptor
//! walking, validation, copies through the bounce buffers and the ring bookkeeping.
//!
//! Every measurement is a fixed time window repeated `runs` times, device and raw interleaved so that a
//! change in the machine's load hits both; the ratio is taken per pair of windows.

pub mod block;
pub mod net;
pub mod rate_limit;
pub mod vsock;

use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use devices::virtio::GuestMemory;
use vm_memory::GuestAddress;

use crate::error::{BenchError, Result};
use crate::report::Section;

/// How long and how often.
#[derive(Clone, Copy, Debug)]
pub struct DeviceOptions {
    pub runs: usize,
    pub window: Duration,
}

/// Work done in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rate {
    pub ops: u64,
    pub bytes: u64,
    pub secs: f64,
}

impl Rate {
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    /// Decimal megabytes (10^6 bytes) per second.
    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

/// Calls `step` (which does some operations and returns how many, and how many bytes they moved) until
/// `window` has passed.
pub fn timed(window: Duration, mut step: impl FnMut() -> Result<(u64, u64)>) -> Result<Rate> {
    let t0 = Instant::now();
    let mut rate = Rate::default();
    loop {
        let (ops, bytes) = step()?;
        rate.ops += ops;
        rate.bytes += bytes;
        let elapsed = t0.elapsed();
        if elapsed >= window {
            rate.secs = elapsed.as_secs_f64();
            return Ok(rate);
        }
    }
}

/// Waits (in poll(2), as the VMM's event loop does) until a throttled device's backend fd is readable.
pub fn wait_readable(fd: RawFd, limit: Duration) -> Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    match unsafe { libc::poll(&mut pfd, 1, timeout) } {
        1 => Ok(()),
        0 => Err(BenchError::failed(format!(
            "a throttled device was not woken within {limit:?}"
        ))),
        _ => Err(BenchError::failed(format!("poll: {}", std::io::Error::last_os_error()))),
    }
}

/// A guest of `bytes` RAM at address 0.
pub fn guest_memory(bytes: usize) -> Result<GuestMemory> {
    GuestMemory::from_ranges(&[(GuestAddress(0), bytes)])
        .map_err(|e| BenchError::failed(format!("mapping {bytes} bytes of guest memory: {e}")))
}

/// Adds the five rows comparing a device path with its raw host counterpart; `unit` names one operation
/// ("req", "pkt", "frame").
pub fn compare(s: &mut Section, label: &str, op: &str, device: &[Rate], raw_label: &str, raw: &[Rate]) {
    let unit: &'static str = match op {
        "req" => "req/s",
        "pkt" => "pkt/s",
        "frame" => "frames/s",
        _ => "ops/s",
    };
    s.metric(
        format!("{label}: device"),
        unit,
        device.iter().map(Rate::ops_per_sec).collect(),
    );
    s.metric(
        format!("{label}: device"),
        "MB/s",
        device.iter().map(Rate::mb_per_sec).collect(),
    );
    s.metric(
        format!("{label}: {raw_label}"),
        unit,
        raw.iter().map(Rate::ops_per_sec).collect(),
    );
    s.metric(
        format!("{label}: {raw_label}"),
        "MB/s",
        raw.iter().map(Rate::mb_per_sec).collect(),
    );
    let ratios = device
        .iter()
        .zip(raw)
        .map(|(d, r)| d.mb_per_sec() / r.mb_per_sec())
        .collect();
    s.metric(format!("{label}: device / raw"), "x", ratios);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second() {
        let r = Rate {
            ops: 1000,
            bytes: 4_096_000,
            secs: 2.0,
        };
        assert_eq!(r.ops_per_sec(), 500.0);
        assert_eq!(r.mb_per_sec(), 2.048);
    }

    #[test]
    fn timed_runs_at_least_one_step_and_stops() {
        let mut calls = 0;
        let r = timed(Duration::from_millis(20), || {
            calls += 1;
            std::thread::sleep(Duration::from_millis(5));
            Ok((2, 10))
        })
        .unwrap();
        // Sleeps may run long on a loaded machine: only the lower bounds are certain.
        assert!(calls >= 1 && r.secs >= 0.02);
        assert_eq!((r.ops, r.bytes), (2 * calls, 10 * calls));
        assert!(
            timed(Duration::from_secs(60), || Err::<(u64, u64), _>(BenchError::failed(
                "x"
            )))
            .is_err()
        );
    }
}
