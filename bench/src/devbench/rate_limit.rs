//! Rate limiters: the virtio-blk and virtio-net cores driven flat out against a limit, the measured rate
//! next to the rate the limit sets (`size / refill_time`). A throttled device leaves requests in its queue
//! and the driver here waits in poll(2) on the device's backend fd (the limiter's timer) and calls
//! `process_backend`, exactly what the VMM's event loop does; nothing sleeps or spins.
//!
//! Each row first drains the bucket (the initial full bucket is a burst, not the rate), then times
//! back-to-back windows, so the bucket never refills to full between them. The buckets hold 200 ms of
//! tokens: a bench process the scheduler leaves off the CPU for less than that loses nothing, it spends
//! the tokens earned meanwhile when it runs again. That can move tokens from one window into the next,
//! so single windows scatter on a loaded machine; the "all windows" row (everything moved over the whole
//! timed span) is the figure that shows the limiter holds the rate, within 5 % being the target.
//!
//! The blk rows use a scratch file in the temp dir (page cache); the net rows a TAP in a network namespace
//! of its own (see `net`), so they need root or CAP_SYS_ADMIN. For RX, a second TAP and the device's are
//! ports of a bridge in that namespace, and a host thread writes frames into the second TAP at three
//! times the limit (paced by the clock, catching up after a stall), which the bridge floods to the
//! device's TAP; the kernel drops what the device leaves unread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::rate_limiter::{BucketConfig, RateLimiterConfig};
use devices::virtio::net::{NetBackend, Tap, VNET_HDR_LEN};
use devices::virtio::Counter;

use super::block::{BlockDriver, ScratchFile, DEPTH};
use super::net::{frame, ip, NetDriver, NetNs, BATCH, RAW_TAP};
use super::{timed, DeviceOptions, Rate};
use crate::error::{fail, BenchError, Result};
use crate::report::Section;

/// The scratch file's size: the offsets wrap within it.
const FILE_BYTES: u64 = 128 << 20;

fn bucket(size: u64, refill_time_ms: u64) -> BucketConfig {
    BucketConfig {
        size,
        one_time_burst: 0,
        refill_time_ms,
    }
}

/// The rate a bucket sets, in tokens per second.
fn per_sec(b: BucketConfig) -> f64 {
    b.size as f64 * 1000.0 / b.refill_time_ms as f64
}

/// One limited row: what is limited, the set rate, and the measured rate per window and over all windows
/// (in the same unit).
struct Row {
    label: String,
    unit: &'static str,
    set: f64,
    measured: Vec<f64>,
    overall: f64,
}

impl Row {
    /// `read` turns a [`Rate`] into the row's unit.
    fn new(label: &str, unit: &'static str, set: f64, rates: &[Rate], read: fn(&Rate) -> f64) -> Row {
        let total = rates.iter().fold(Rate::default(), |t, r| Rate {
            ops: t.ops + r.ops,
            bytes: t.bytes + r.bytes,
            secs: t.secs + r.secs,
        });
        Row {
            label: label.to_string(),
            unit,
            set,
            measured: rates.iter().map(read).collect(),
            overall: read(&total),
        }
    }

    /// Adds the rows; returns how far the overall rate is from the set one (a fraction).
    fn report(&self, s: &mut Section) -> f64 {
        s.metric(format!("{}: set", self.label), self.unit, vec![self.set]);
        s.metric(format!("{}: each window", self.label), self.unit, self.measured.clone());
        s.metric(format!("{}: all windows", self.label), self.unit, vec![self.overall]);
        let ratio = self.overall / self.set;
        s.metric(format!("{}: all windows / set", self.label), "x", vec![ratio]);
        (ratio - 1.0).abs()
    }
}

/// Runs `step` until the limiter has throttled once (`throttled` counts it: the initial bucket is spent),
/// then times `opts.runs` back-to-back windows of it.
fn limited_windows(
    opts: &DeviceOptions,
    throttled: &Counter,
    mut step: impl FnMut() -> Result<(u64, u64)>,
) -> Result<Vec<Rate>> {
    while throttled.get() == 0 {
        step()?;
    }
    (0..opts.runs).map(|_| timed(opts.window, &mut step)).collect()
}

/// Reads of `size` bytes, `DEPTH` per notification, from a drive limited by `limits`.
fn block_reads(opts: &DeviceOptions, scratch: &ScratchFile, limits: RateLimiterConfig, size: u32) -> Result<Vec<Rate>> {
    let mut driver = BlockDriver::new(&scratch.path, limits)?;
    let metrics = driver.dev.metrics();
    limited_windows(opts, &metrics.rate_limiter_throttled, || {
        driver.batch(false, size, DEPTH)?;
        Ok((DEPTH as u64, DEPTH as u64 * u64::from(size)))
    })
}

/// The RX row: a bridge from `RAW_TAP` to the device's TAP, a paced writer thread on `RAW_TAP`, and the
/// device under an RX bandwidth limit of `bandwidth`. Returns the windows, the frames written and the
/// frames the device received.
fn net_rx(opts: &DeviceOptions, ns: &NetNs, bandwidth: BucketConfig, bytes: &[u8]) -> Result<(Vec<Rate>, u64, u64)> {
    let mut raw = ns.run_inside(|| Tap::open(RAW_TAP).map_err(fail(format!("opening TAP {RAW_TAP}"))))?;
    let limits = RateLimiterConfig {
        bandwidth,
        ..Default::default()
    };
    let mut driver = NetDriver::in_namespace(ns, limits, RateLimiterConfig::default(), &[])?;
    let bridge = "hbbr0";
    ip(&["-n", &ns.name, "link", "add", bridge, "type", "bridge"])?;
    for port in [RAW_TAP, "hbtap0"] {
        ip(&["-n", &ns.name, "link", "set", port, "master", bridge])?;
    }
    ip(&["-n", &ns.name, "link", "set", RAW_TAP, "up"])?;
    ip(&["-n", &ns.name, "link", "set", bridge, "up"])?;

    let stop = Arc::new(AtomicBool::new(false));
    let frames_per_sec = 3.0 * per_sec(bandwidth) / bytes.len() as f64;
    let frame = bytes.to_vec();
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (t0, mut written) = (Instant::now(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                let due = (t0.elapsed().as_secs_f64() * frames_per_sec) as u64;
                // After a long stall, catch up by at most what the TAP's queue holds.
                written = written.max(due.saturating_sub(1000));
                while written < due {
                    // A full queue drops the frame; the writer goes on.
                    let _ = raw.write_frame(&frame);
                    written += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            written
        })
    };
    let metrics = driver.dev.metrics();
    let rates = limited_windows(opts, &metrics.rx_rate_limiter_throttled, || driver.receive());
    stop.store(true, Ordering::Relaxed);
    let written = writer
        .join()
        .map_err(|_| BenchError::failed("the RX frame writer panicked"))?;
    Ok((rates?, written, metrics.rx_frames.get()))
}

/// Runs the rate-limited rows into `s`.
pub fn run(s: &mut Section, opts: &DeviceOptions) -> Result<()> {
    let mut rows = Vec::new();
    let scratch = ScratchFile::create(FILE_BYTES)?;

    // Bandwidth: 64 KiB reads against 4 MiB per 200 ms (20 MiB/s).
    let bandwidth = bucket(4 << 20, 200);
    let limits = RateLimiterConfig {
        bandwidth,
        ..Default::default()
    };
    let rates = block_reads(opts, &scratch, limits, 64 << 10)?;
    rows.push(Row::new(
        "blk read 64 KiB, bandwidth 4 MiB / 200 ms",
        "MB/s",
        per_sec(bandwidth) / 1e6,
        &rates,
        Rate::mb_per_sec,
    ));

    // Ops: 4 KiB reads against 200 requests per 200 ms (1000 req/s).
    let ops = bucket(200, 200);
    let limits = RateLimiterConfig {
        ops,
        ..Default::default()
    };
    let rates = block_reads(opts, &scratch, limits, 4096)?;
    rows.push(Row::new(
        "blk read 4 KiB, ops 200 / 200 ms",
        "req/s",
        per_sec(ops),
        &rates,
        Rate::ops_per_sec,
    ));
    drop(scratch);

    // Net TX: 1514-byte frames against 2 MiB per 200 ms (10 MiB/s). The limiter counts what the device
    // writes to the TAP: the 12-byte virtio-net header and the frame.
    let tx = bucket(2 << 20, 200);
    let ns = NetNs::create()?;
    let bytes = frame(1514);
    let len = bytes.len() as u64;
    let limits = RateLimiterConfig {
        bandwidth: tx,
        ..Default::default()
    };
    let mut driver = NetDriver::in_namespace(&ns, RateLimiterConfig::default(), limits, &bytes)?;
    let metrics = driver.dev.metrics();
    let rates = limited_windows(opts, &metrics.tx_rate_limiter_throttled, || {
        driver.batch(len as u32)?;
        Ok((BATCH as u64, BATCH as u64 * len))
    })?;
    let sent = metrics.tx_frames.get();
    drop(driver);
    rows.push(Row::new(
        "net TX 1514 B frames, bandwidth 2 MiB / 200 ms",
        "MB/s",
        per_sec(tx) / 1e6,
        &rates,
        Rate::mb_per_sec,
    ));

    // Net RX: the same frames and limit, the other way.
    let (rates, written, received) = net_rx(opts, &ns, tx, &bytes)?;
    rows.push(Row::new(
        "net RX 1514 B frames, bandwidth 2 MiB / 200 ms",
        "MB/s",
        per_sec(tx) / 1e6,
        &rates,
        Rate::mb_per_sec,
    ));

    let worst = rows.iter().map(|r| r.report(s)).fold(0.0, f64::max);
    s.note(format!(
        "{} windows of {:?} per row after the initial bucket is drained; blk: {DEPTH} requests per notification \
         on a {} MiB file in {} (page cache); net: TAP in namespace {} (TX: {sent} frames sent; RX: {written} \
         frames written to {RAW_TAP}, {received} received; {} bytes each counted: {VNET_HDR_LEN}-byte virtio-net \
         header + 1514-byte frame); MB/s = 10^6 bytes/s; \
         largest deviation of an \"all windows\" rate from the set rate: {:.2} % ({})",
        opts.runs,
        opts.window,
        FILE_BYTES >> 20,
        std::env::temp_dir().display(),
        ns.name,
        len,
        worst * 100.0,
        if worst <= 0.05 { "within 5 %" } else { "NOT within 5 %" },
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn set_rates_are_size_per_refill_time() {
        assert_eq!(per_sec(bucket(4 << 20, 200)), 20_971_520.0);
        assert_eq!(per_sec(bucket(200, 200)), 1000.0);
    }

    #[test]
    fn the_limited_block_rows_hold_their_rate() {
        // A short, real run of the blk rows' machinery: 4 KiB reads at 200 req/s over a 0.5 s window
        // (DEPTH at a time; about 130 reads in all, within the 1 MiB file).
        let scratch = ScratchFile::create(1 << 20).unwrap();
        let ops = bucket(20, 100);
        let limits = RateLimiterConfig {
            ops,
            ..Default::default()
        };
        let opts = DeviceOptions {
            runs: 1,
            window: Duration::from_millis(500),
        };
        let rates = block_reads(&opts, &scratch, limits, 4096).unwrap();
        let ratio = rates[0].ops_per_sec() / per_sec(ops);
        // Loose bounds: a loaded test machine may wake late, but never lets more through than the limit
        // (plus one batch of granularity).
        assert!(ratio > 0.5 && ratio < 1.1, "{ratio}");
    }
}
