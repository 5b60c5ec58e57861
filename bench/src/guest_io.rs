//! `devices.qemu_guest`: what a real guest gets from hull's device cores, measured by the guest's own clock.
//! The busybox test guest (`tests/guest-init/bench-io.sh`) boots under QEMU TCG with hull's vhost-user
//! backends — the command lines of the end-to-end tests, through the same code (`hull_tests::guest_devices::boot`
//! in `tests/src/guest_devices.rs`) — and reports, from /proc/uptime around each transfer:
//!
//! - blk: `dd` of a 64 MiB drive in 64 KiB blocks to /dev/null, the guest's page cache dropped before
//!   each run (the host file stays in the host's page cache: this is the device path, not the disk);
//! - vsock: 64 MiB each way at once on one connection (`vsock-tool`'s `XFER`, every byte checked at both
//!   ends), bracketed inside the guest by an echo-client call that the host answers only when the transfer
//!   is done; the host's own clock for the same transfer is reported beside it as a cross-check.
//!
//! TCG emulates the guest CPU, so these figures bound what the guest's side costs under emulation; they
//! are not hardware-KVM numbers. The guest's output is untrusted: only marker lines are parsed, strictly.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_tests::guest_devices::{boot, build_vsock_tool, xfer, DriveSpec, GuestSpec, Vmm, VsockSpec};
use hull_tests::vhost_user::{pattern, WorkDir};

use crate::error::{BenchError, Result};
use crate::report::Section;

/// Bytes of the drive `dd` reads, and of each direction of a vsock transfer.
const BYTES: u64 = 64 << 20;
/// The whole guest run: boot (~3 s) plus `runs` x (read + transfer), generous for a loaded machine.
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);
const GUEST_CID: u32 = 9;

/// How many runs, and which hull serves the vhost-user backends.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    pub runs: usize,
    pub hull: Option<PathBuf>,
}

/// One guest boot: `runs` blk reads, then `runs` vsock transfers.
pub fn run(s: &mut Section, opts: &GuestOptions) -> Result<()> {
    for tool in ["qemu-system-x86_64", "busybox", "gcc"] {
        if !on_path(tool) {
            return Err(BenchError::env(format!(
                "{tool} is missing; run scripts/install-qemu.sh"
            )));
        }
    }
    let hull = crate::find_hull(opts.hull.clone())?;
    // hull_tests::vhost_user::hull() starts `$HULL_BIN`; sections run one at a time on this thread.
    std::env::set_var("HULL_BIN", &hull);
    let runs = opts.runs.clamp(1, 20);
    let dir = WorkDir::new("bench-guest");
    let image = dir.join("bench.img");
    std::fs::write(&image, pattern(BYTES as usize, 5))
        .map_err(|e| BenchError::failed(format!("writing {}: {e}", image.display())))?;
    let uds = dir.join("v.sock");
    let host = HostSide::start(&uds, runs)?;
    let spec = GuestSpec {
        script: "bench-io.sh".into(),
        extra_files: vec![("/bin/vsock-tool".into(), build_vsock_tool(dir.path()))],
        cmdline: format!("hull.runs={runs}"),
        drives: vec![DriveSpec {
            id: "bench_drive".into(),
            path: image,
            read_only: true,
        }],
        net: None,
        vsock: Some(VsockSpec { cid: GUEST_CID, uds }),
        ..Default::default()
    };
    let started = Instant::now();
    let mut guest = boot(Vmm::Qemu, dir.path(), &spec);
    let finished = guest.console.wait_for("HULL-TEST-EXIT", GUEST_TIMEOUT);
    let console = guest.console();
    drop(guest);
    finished.map_err(|e| BenchError::failed(format!("{e}\n--- guest console ---\n{console}")))?;
    let parsed = parse_console(&console, runs).map_err(|e| BenchError::failed(format!("{e}\n{console}")))?;
    let host_secs = host.finish();

    s.metric(
        "blk: dd 64 MiB, bs=64k, guest clock",
        "MB/s",
        parsed.blk.iter().map(|r| mb_per_sec(r.0, r.1)).collect(),
    );
    s.metric(
        "vsock: 64 MiB each way at once, guest clock",
        "MB/s",
        parsed.vsock.iter().map(|secs| mb_per_sec(BYTES, *secs)).collect(),
    );
    s.metric(
        "vsock: the same transfers, host clock",
        "MB/s",
        host_secs.iter().map(|secs| mb_per_sec(BYTES, *secs)).collect(),
    );
    // The guest's bracket holds the host's (request read → RESULT read), so a ratio below 1 is the guest's
    // clock running slow.
    let ratios = parsed.vsock.iter().zip(&host_secs).map(|(g, h)| g / h).collect();
    s.metric("vsock: guest time / host time (>= 1 if clocks agree)", "x", ratios);
    s.note(format!(
        "QEMU {} TCG (1 vCPU, microvm, 256 MiB) with `{} vhost-user blk|vsock` backends; one boot, {runs} runs \
         each, {:.1} s in all",
        qemu_version(),
        hull.display(),
        started.elapsed().as_secs_f64()
    ));
    s.note(format!(
        "guest times are /proc/uptime deltas (10 ms resolution, clocksource {}); MB/s are 10^6 bytes/s, per direction for vsock; \
         guest page cache {} before each read",
        if parsed.clocksource.is_empty() { "unknown" } else { parsed.clocksource.as_str() },
        if parsed.cache_dropped { "dropped" } else { "NOT dropped (no /proc/sys/vm/drop_caches)" }
    ));
    Ok(())
}

fn mb_per_sec(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(0.01) / 1e6
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn qemu_version() -> String {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(3)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

/// The host end of the vsock runs: a listener on the hybrid socket's port 5000. Each guest call there
/// ("xfer-N") makes the host run one `XFER` of [`BYTES`] each way to the guest's port 52, then answer with
/// the guest's `RESULT` line (or `HOST-FAILED`) and close, which ends the guest's timed bracket.
struct HostSide {
    times: mpsc::Receiver<f64>,
    runs: usize,
}

impl HostSide {
    fn start(uds: &Path, runs: usize) -> Result<HostSide> {
        let listener = UnixListener::bind(format!("{}_5000", uds.display()))
            .map_err(|e| BenchError::failed(format!("binding {}_5000: {e}", uds.display())))?;
        let uds = uds.to_path_buf();
        let (tx, times) = mpsc::channel();
        std::thread::spawn(move || {
            for n in 0..runs {
                let Ok((mut conn, _)) = listener.accept() else { return };
                let mut request = Vec::new();
                let _ = conn.read_to_end(&mut request);
                let t0 = Instant::now();
                let uds = uds.clone();
                let outcome = std::panic::catch_unwind(move || xfer(&uds, BYTES, 1000 + n as u32));
                let secs = t0.elapsed().as_secs_f64();
                let reply = match outcome {
                    Ok(line) => {
                        let _ = tx.send(secs);
                        line
                    }
                    Err(_) => "HOST-FAILED".to_string(),
                };
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        Ok(HostSide { times, runs })
    }

    /// The host-measured seconds of every transfer that completed.
    fn finish(self) -> Vec<f64> {
        self.times.try_iter().take(self.runs).collect()
    }
}

/// What the guest reported.
#[derive(Debug, PartialEq)]
struct GuestFigures {
    /// (bytes, seconds) per read.
    blk: Vec<(u64, f64)>,
    /// Seconds per transfer.
    vsock: Vec<f64>,
    cache_dropped: bool,
    /// The guest kernel's clocksource (the guest's word for it, only ever printed).
    clocksource: String,
}

/// Parses `bench-io.sh`'s marker lines; every run must be there, every vsock transfer `RESULT OK`.
fn parse_console(console: &str, runs: usize) -> std::result::Result<GuestFigures, String> {
    let mut figures = GuestFigures {
        blk: Vec::new(),
        vsock: Vec::new(),
        cache_dropped: false,
        clocksource: String::new(),
    };
    let number = |w: Option<&str>, what: &str, line: &str| -> std::result::Result<f64, String> {
        w.and_then(|w| w.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("bad {what} in {line:?}"))
    };
    for line in console.lines().map(str::trim_end) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("CLOCKSOURCE") => {
                let name = words.next().unwrap_or_default();
                figures.clocksource = name
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .take(32)
                    .collect();
            }
            Some("BLK-CACHE") => figures.cache_dropped = words.next() == Some("dropped"),
            Some("BLK-READ") => {
                let _run = words.next();
                let bytes = number(words.next(), "byte count", line)? as u64;
                let (t0, t1) = (number(words.next(), "t0", line)?, number(words.next(), "t1", line)?);
                if bytes != BYTES {
                    return Err(format!("the guest's drive has {bytes} bytes, not {BYTES}: {line:?}"));
                }
                figures.blk.push((bytes, t1 - t0));
            }
            Some("VSOCK-XFER") => {
                let _run = words.next();
                let (t0, t1) = (number(words.next(), "t0", line)?, number(words.next(), "t1", line)?);
                let reply: Vec<&str> = words.collect();
                if reply != ["RESULT", "OK"] {
                    return Err(format!("a vsock transfer failed: {line:?}"));
                }
                figures.vsock.push(t1 - t0);
            }
            _ => {}
        }
    }
    if figures.blk.len() != runs || figures.vsock.len() != runs {
        return Err(format!(
            "expected {runs} blk and {runs} vsock runs, the guest reported {} and {}",
            figures.blk.len(),
            figures.vsock.len()
        ));
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_markers_are_parsed_strictly() {
        let console = "noise\nCLOCKSOURCE tsc\nBLK-CACHE dropped\nBLK-READ 0 67108864 3.10 3.60\r\n\
                       VSOCK-XFER 0 4.00 8.00 RESULT OK\nHULL-TEST-EXIT 0\n";
        let f = parse_console(console, 1).unwrap();
        assert!(f.cache_dropped);
        assert_eq!(f.clocksource, "tsc");
        assert_eq!(f.blk.len(), 1);
        assert!((f.blk[0].1 - 0.5).abs() < 1e-9 && (f.vsock[0] - 4.0).abs() < 1e-9);
        assert!(parse_console(console, 2).unwrap_err().contains("expected 2"));
        assert!(parse_console("BLK-READ 0 12 1 2\n", 1)
            .unwrap_err()
            .contains("not 67108864"));
        assert!(parse_console("VSOCK-XFER 0 1 2 RESULT BAD 7\n", 1)
            .unwrap_err()
            .contains("failed"));
        assert!(parse_console("BLK-READ 0 67108864 x 2\n", 1)
            .unwrap_err()
            .contains("bad t0"));
    }

    #[test]
    fn rates_are_decimal_megabytes_and_never_divide_by_zero() {
        assert_eq!(mb_per_sec(2_000_000, 2.0), 1.0);
        assert!(mb_per_sec(BYTES, 0.0).is_finite());
    }
}
