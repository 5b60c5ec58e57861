//! The `boot` suite: how fast hull gets a microVM going and what it costs in memory.
//!
//! (a) `hull --api-sock` spawn → the socket accepts a connection (and the RSS of that idle hull);
//! (b) `PUT /actions InstanceStart` → the tiny PVH guest's boot-timer write, both as hull logs it
//!     (`Guest-boot-time`, measured inside hull from the start of the VM build) and as the host sees it
//!     (request sent → log line read from hull's stderr); the same booted with `--no-api --config-file`;
//! (c) hull's resident memory minus the guest's RAM, with the tiny `counter` guest running;
//! (c') `huge_pages` `None` against `2M`: a 256 MiB guest with a 64 MiB initrd that hull copies in, VM build
//!     time (`Guest-boot-time`) and hull's minor page faults (the 2 MiB pool is reserved for the run and
//!     restored after);
//! (d) with `--linux`: hull start → the real kernel's `Run /init` (one boot: about a minute here).
//!
//! Every hull runs through `hull_tests::Hull`, which kills it (SIGKILL, and PR_SET_PDEATHSIG if this
//! process dies) and removes its directory when dropped; every wait has a deadline. Guest output and hull's
//! log are untrusted text, only searched.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_tests::{tiny_guest, ApiClient, FileLock, GuestImages, Hull, TempDir};
use serde_json::json;

use crate::error::{fail, BenchError, Result};
use crate::report::{run_section, Section};
use crate::smaps;

/// hull must have its API socket up well within this.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// A tiny guest boots and resets in milliseconds; this is ample on a loaded machine.
const TINY_TIMEOUT: Duration = Duration::from_secs(30);
/// Polling interval while waiting for the API socket: the resolution of benchmark (a).
const SOCKET_POLL: Duration = Duration::from_micros(100);
/// Linux to `Run /init`: ~65 s for 1 vCPU under kvm_pvm when idle, several minutes on a loaded machine.
const LINUX_TIMEOUT: Duration = Duration::from_secs(600);
/// Building the guest kernel from scratch takes ~10 min on 2 busy cores; cached, seconds.
const GUEST_BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Waiting for another Linux boot (tests hold the same lock) before ours.
const LINUX_LOCK_TIMEOUT: Duration = Duration::from_secs(300);
const GUEST_MIB: u64 = 128;
const TINY_BOOT_ARGS: &str = "console=ttyS0 reboot=k";

pub struct BootOptions {
    pub runs: usize,
    pub linux: bool,
    pub hull_bin: PathBuf,
}

/// Runs every part of the suite; a part that fails is reported in its section and the others still run.
pub fn run(opts: &BootOptions) -> Vec<Section> {
    let mut sections = Vec::new();
    sections.push(run_section(
        "boot.api_ready",
        "hull spawn → API socket accepts a connection",
        |s| api_socket_ready(s, opts.runs),
    ));
    sections.push(run_section(
        "boot.instance_start",
        "PUT /actions InstanceStart → tiny PVH guest's boot-timer write (1 vCPU, 128 MiB)",
        |s| instance_start(s, opts.runs),
    ));
    sections.push(run_section(
        "boot.config_file",
        "hull --no-api --config-file → tiny PVH guest's boot-timer write (1 vCPU, 128 MiB)",
        |s| config_file_boot(s, opts.runs),
    ));
    sections.push(run_section(
        "boot.rss",
        "hull RSS minus guest memory (tiny counter guest running, 128 MiB)",
        |s| rss(s, opts.runs.clamp(1, 5), &opts.hull_bin),
    ));
    sections.push(run_section(
        "boot.huge_pages",
        "huge_pages None vs 2M: Guest-boot-time and hull's minor faults (256 MiB guest, 64 MiB initrd copied in)",
        |s| huge_pages(s, opts.runs.clamp(1, 10)),
    ));
    if opts.linux {
        sections.push(run_section(
            "boot.linux",
            "hull start → Linux `Run /init` (1 vCPU, 128 MiB, one boot)",
            linux,
        ));
    } else {
        let mut s = Section::start("boot.linux", "hull start → Linux `Run /init`");
        s.note("skipped: pass --linux (one boot of the real kernel, 1-2 minutes under kvm_pvm)");
        s.finish();
        sections.push(s);
    }
    sections
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Polls until `sock` accepts a connection; the time from `t0`.
fn wait_for_socket(hull: &Hull, sock: &Path, t0: Instant) -> Result<Duration> {
    loop {
        if UnixStream::connect(sock).is_ok() {
            return Ok(t0.elapsed());
        }
        if let Some(status) = hull.try_status() {
            return Err(BenchError::failed(format!(
                "hull exited ({status}) before its API socket came up\n{}",
                hull.report()
            )));
        }
        if t0.elapsed() > SOCKET_TIMEOUT {
            return Err(BenchError::failed(format!(
                "hull's API socket {} did not accept a connection within {SOCKET_TIMEOUT:?}\n{}",
                sock.display(),
                hull.report()
            )));
        }
        std::thread::sleep(SOCKET_POLL);
    }
}

/// The microseconds of a `Guest-boot-time = <N> us <M> ms` log line.
pub fn parse_boot_time_us(line: &str) -> Option<u64> {
    let rest = line.split_once("Guest-boot-time")?.1;
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        ["=", us, "us", ..] => us.parse().ok(),
        _ => None,
    }
}

/// (a) spawn → socket accepts, N times; also the RSS of the idle hull.
fn api_socket_ready(s: &mut Section, runs: usize) -> Result<()> {
    let mut ready = Vec::new();
    let mut idle_rss = Vec::new();
    for _ in 0..runs {
        let dir = TempDir::new("bench-api").map_err(fail("creating a temporary directory"))?;
        let sock = dir.path().join("api.sock");
        let t0 = Instant::now();
        let hull = Hull::spawn("bench-api", [OsArg::from("--api-sock"), sock.as_os_str().into()]);
        let took = wait_for_socket(&hull, &sock, t0)?;
        ready.push(ms(took));
        let status = std::fs::read_to_string(format!("/proc/{}/status", hull.pid())).unwrap_or_default();
        if let Some(kib) = smaps::vm_rss_kib(&status) {
            idle_rss.push(kib as f64 / 1024.0);
        }
    }
    s.metric("spawn → API socket accepts", "ms", ready);
    s.metric("VmRSS of idle hull (API only, no VM)", "MiB", idle_rss);
    s.note(format!(
        "socket polled every {SOCKET_POLL:?} (connect(2) until it succeeds); includes fork+exec"
    ));
    Ok(())
}

type OsArg = std::ffi::OsString;

/// Starts a thread that waits for hull's `Guest-boot-time` line and returns when and what it was.
fn watch_boot_time<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    hull: &'s Hull,
) -> std::thread::ScopedJoinHandle<'s, Option<(Instant, String)>> {
    scope.spawn(move || {
        hull.wait_for_log("Guest-boot-time", TINY_TIMEOUT)
            .map(|line| (Instant::now(), line))
    })
}

struct BootTimes {
    hull_us: u64,
    to_line: Duration,
}

fn boot_time_from(watched: Option<(Instant, String)>, t0: Instant, hull: &Hull) -> Result<BootTimes> {
    let (at, line) = watched.ok_or_else(|| {
        BenchError::failed(format!(
            "no Guest-boot-time line within {TINY_TIMEOUT:?}\n{}",
            hull.report()
        ))
    })?;
    let hull_us = parse_boot_time_us(&line)
        .ok_or_else(|| BenchError::failed(format!("cannot read the boot time in {line:?}")))?;
    Ok(BootTimes {
        hull_us,
        to_line: at.saturating_duration_since(t0),
    })
}

fn expect_clean_exit(hull: &mut Hull) -> Result<()> {
    match hull.wait_exit(TINY_TIMEOUT) {
        Some(status) if status.code() == Some(0) => Ok(()),
        Some(status) => Err(BenchError::failed(format!(
            "hull exited with {status}, expected 0\n{}",
            hull.report()
        ))),
        None => Err(BenchError::failed(format!(
            "hull did not exit within {TINY_TIMEOUT:?}\n{}",
            hull.report()
        ))),
    }
}

fn put_ok(api: &ApiClient, uri: &str, body: &serde_json::Value) -> Result<()> {
    let resp = api.put(uri, body).map_err(fail(format!("PUT {uri}")))?;
    if !resp.is_success() {
        return Err(BenchError::failed(format!(
            "PUT {uri} {body} answered {} {}",
            resp.status, resp.body
        )));
    }
    Ok(())
}

/// (b) InstanceStart → boot timer through the API.
fn instance_start(s: &mut Section, runs: usize) -> Result<()> {
    let kernel = tiny_guest("pvh.elf");
    let (mut hull_ms, mut line_ms, mut resp_ms, mut exit_ms, mut cycle_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = TempDir::new("bench-start").map_err(fail("creating a temporary directory"))?;
        let sock = dir.path().join("api.sock");
        let t_spawn = Instant::now();
        let mut hull = Hull::spawn(
            "bench-start",
            [
                OsArg::from("--api-sock"),
                sock.as_os_str().into(),
                "--boot-timer".into(),
            ],
        );
        wait_for_socket(&hull, &sock, t_spawn)?;
        let api = ApiClient::new(&sock);
        put_ok(
            &api,
            "/boot-source",
            &json!({ "kernel_image_path": kernel, "boot_args": TINY_BOOT_ARGS }),
        )?;
        put_ok(
            &api,
            "/machine-config",
            &json!({ "vcpu_count": 1, "mem_size_mib": GUEST_MIB }),
        )?;
        let (times, resp, t0) = std::thread::scope(|scope| {
            let watcher = watch_boot_time(scope, &hull);
            let t0 = Instant::now();
            let resp = api
                .put("/actions", &json!({ "action_type": "InstanceStart" }))
                .map(|r| (r, t0.elapsed()));
            let watched = watcher.join().unwrap_or(None);
            (boot_time_from(watched, t0, &hull), resp, t0)
        });
        let (resp, resp_took) = resp.map_err(fail("PUT /actions InstanceStart"))?;
        if !resp.is_success() {
            return Err(BenchError::failed(format!(
                "InstanceStart answered {} {}",
                resp.status, resp.body
            )));
        }
        let times = times?;
        expect_clean_exit(&mut hull)?;
        exit_ms.push(ms(t0.elapsed()));
        cycle_ms.push(ms(t_spawn.elapsed()));
        hull_ms.push(times.hull_us as f64 / 1e3);
        line_ms.push(ms(times.to_line));
        resp_ms.push(ms(resp_took));
    }
    s.metric("Guest-boot-time (hull's own figure)", "ms", hull_ms);
    s.metric("InstanceStart sent → boot-time line read", "ms", line_ms);
    s.metric("InstanceStart sent → HTTP response read", "ms", resp_ms);
    s.metric("InstanceStart sent → hull exited 0 (guest reset)", "ms", exit_ms);
    s.metric("hull spawn → hull exited 0 (whole cycle)", "ms", cycle_ms);
    s.note(
        "hull's figure runs from the start of its VM build to the guest's MMIO write; the host-side figure \
            adds the API request, the log write and the pipe to this process; exits are seen by polling every \
            5 ms (hull_tests::Hull::wait_exit)",
    );
    Ok(())
}

/// (b') the same guest booted from a config file, no API.
fn config_file_boot(s: &mut Section, runs: usize) -> Result<()> {
    let kernel = tiny_guest("pvh.elf");
    let config = json!({
        "boot-source": { "kernel_image_path": kernel, "boot_args": TINY_BOOT_ARGS },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": GUEST_MIB },
    });
    let (mut hull_ms, mut line_ms, mut exit_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let dir = TempDir::new("bench-cfg").map_err(fail("creating a temporary directory"))?;
        let file = dir.path().join("vm.json");
        std::fs::write(&file, config.to_string()).map_err(fail(format!("writing {}", file.display())))?;
        let args = [
            OsArg::from("--no-api"),
            "--config-file".into(),
            file.as_os_str().into(),
            "--boot-timer".into(),
        ];
        let t0 = Instant::now();
        let mut hull = Hull::spawn("bench-cfg", args);
        let watched = hull
            .wait_for_log("Guest-boot-time", TINY_TIMEOUT)
            .map(|line| (Instant::now(), line));
        let times = boot_time_from(watched, t0, &hull)?;
        expect_clean_exit(&mut hull)?;
        hull_ms.push(times.hull_us as f64 / 1e3);
        line_ms.push(ms(times.to_line));
        exit_ms.push(ms(t0.elapsed()));
    }
    s.metric("Guest-boot-time (hull's own figure)", "ms", hull_ms);
    s.metric("hull spawn → boot-time line read", "ms", line_ms);
    s.metric("hull spawn → hull exited 0", "ms", exit_ms);
    s.note("exits are seen by polling every 5 ms (hull_tests::Hull::wait_exit)");
    Ok(())
}

/// (c) RSS of a hull running the counter guest, split into guest RAM and the rest.
fn rss(s: &mut Section, runs: usize, hull_bin: &Path) -> Result<()> {
    let config = json!({
        "boot-source": { "kernel_image_path": tiny_guest("counter.elf"), "boot_args": TINY_BOOT_ARGS },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": GUEST_MIB },
    });
    let exe = std::fs::canonicalize(hull_bin).unwrap_or_else(|_| hull_bin.to_path_buf());
    let (mut vmrss, mut guest, mut rest) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_split = None;
    for _ in 0..runs {
        let dir = TempDir::new("bench-rss").map_err(fail("creating a temporary directory"))?;
        let file = dir.path().join("vm.json");
        std::fs::write(&file, config.to_string()).map_err(fail(format!("writing {}", file.display())))?;
        let hull = Hull::spawn(
            "bench-rss",
            [OsArg::from("--no-api"), "--config-file".into(), file.into_os_string()],
        );
        if hull.wait_for_output("tick 2", TINY_TIMEOUT).is_none() {
            return Err(BenchError::failed(format!(
                "the counter guest did not reach `tick 2`\n{}",
                hull.report()
            )));
        }
        let pid = hull.pid();
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(fail("reading /proc/PID/status"))?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).map_err(fail("reading /proc/PID/smaps"))?;
        let split = smaps::split_rss(&smaps::parse_smaps(&maps), GUEST_MIB * 1024, &exe.to_string_lossy())
            .map_err(BenchError::failed)?;
        let kib = smaps::vm_rss_kib(&status).ok_or_else(|| BenchError::failed("no VmRSS in /proc/PID/status"))?;
        vmrss.push(kib as f64 / 1024.0);
        guest.push(split.guest_rss_kib as f64 / 1024.0);
        rest.push(split.rest_rss_kib as f64 / 1024.0);
        last_split = Some(split);
    }
    s.metric("VmRSS (/proc/PID/status)", "MiB", vmrss);
    s.metric("resident guest RAM (the 128 MiB mapping)", "MiB", guest);
    s.metric("hull RSS minus guest memory (smaps)", "MiB", rest);
    if let Some(split) = last_split {
        let parts: Vec<String> = split
            .rest_by_kind
            .iter()
            .filter(|(_, kib)| *kib >= 32)
            .map(|(k, kib)| format!("{k} {:.2} MiB", *kib as f64 / 1024.0))
            .collect();
        s.note(format!(
            "last run, the rest by kind (32 KiB and more): {}",
            parts.join("; ")
        ));
        if let Some(w) = split.warning {
            s.note(w);
        }
    }
    s.note(
        "measured after the guest printed `tick 2`; the guest touches little of its RAM, so the guest \
            figure is mostly what hull wrote (the kernel image, boot structures)",
    );
    Ok(())
}

/// Sets `vm.nr_hugepages` and restores the old value on drop.
struct HugePagePool(String);

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

impl HugePagePool {
    fn reserve(pages: u64) -> Result<HugePagePool> {
        let old = std::fs::read_to_string(NR_HUGEPAGES).map_err(fail("reading vm.nr_hugepages"))?;
        std::fs::write(NR_HUGEPAGES, pages.to_string()).map_err(fail("writing vm.nr_hugepages"))?;
        Ok(HugePagePool(old.trim().to_string()))
    }
}

impl Drop for HugePagePool {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.0);
    }
}

/// (c') The same boot with 4 KiB and with 2 MiB pages; hull copies the initrd into guest memory, so the
/// page size shows in its faults and build time (the tiny guest itself touches one page).
fn huge_pages(s: &mut Section, runs: usize) -> Result<()> {
    const MEM_MIB: u64 = 256;
    const INITRD_MIB: usize = 64;
    let _pool = HugePagePool::reserve(MEM_MIB / 2 + 8)?;
    let dir = TempDir::new("bench-huge").map_err(fail("creating a temporary directory"))?;
    let initrd = dir.path().join("initrd.bin");
    let bytes: Vec<u8> = (0..INITRD_MIB << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
    std::fs::write(&initrd, bytes).map_err(fail("writing the initrd"))?;
    for huge in ["None", "2M"] {
        let config = json!({
            "boot-source": { "kernel_image_path": tiny_guest("halt.elf"), "boot_args": TINY_BOOT_ARGS,
                             "initrd_path": initrd },
            "machine-config": { "vcpu_count": 1, "mem_size_mib": MEM_MIB, "huge_pages": huge },
        });
        let file = dir.path().join(format!("vm-{huge}.json"));
        std::fs::write(&file, config.to_string()).map_err(fail(format!("writing {}", file.display())))?;
        let (mut boot_ms, mut faults) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let args = [
                OsArg::from("--no-api"),
                "--config-file".into(),
                file.as_os_str().into(),
                "--boot-timer".into(),
            ];
            let hull = Hull::spawn("bench-huge", args);
            let line = hull.wait_for_log("Guest-boot-time", TINY_TIMEOUT).ok_or_else(|| {
                BenchError::failed(format!("no boot-timer line with huge_pages {huge}\n{}", hull.report()))
            })?;
            let us = parse_boot_time_us(&line).ok_or_else(|| BenchError::failed(format!("bad line {line:?}")))?;
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", hull.pid()))
                .map_err(fail("reading /proc/PID/stat"))?;
            // Field 10 (minflt) counts after the command name, which ends at the last ')'.
            let minflt = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(7))
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| BenchError::failed("no minflt in /proc/PID/stat"))?;
            boot_ms.push(us as f64 / 1e3);
            faults.push(minflt);
        }
        s.metric(format!("Guest-boot-time, huge_pages {huge}"), "ms", boot_ms);
        s.metric(format!("hull minor page faults, huge_pages {huge}"), "faults", faults);
    }
    s.note("vm.nr_hugepages is raised for this section and put back after it");
    Ok(())
}

/// The guest kernel and initramfs: `$HULL_KERNEL`/`$HULL_INITRD`, else `resources/build-guest.sh` run
/// with a deadline (its progress goes to our stderr).
fn guest_images() -> Result<GuestImages> {
    if let (Some(kernel), Some(initrd)) = (std::env::var_os("HULL_KERNEL"), std::env::var_os("HULL_INITRD")) {
        return Ok(GuestImages {
            kernel: kernel.into(),
            initrd: initrd.into(),
        });
    }
    let root = hull_tests::repo_root();
    let script = root.join("resources/build-guest.sh");
    eprintln!(
        "[hull-bench] running {} (set HULL_KERNEL and HULL_INITRD to skip it)",
        script.display()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| BenchError::env(format!("cannot run {}: {e}", script.display())))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::failed("build-guest.sh stdout not piped"))?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let deadline = Instant::now() + GUEST_BUILD_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(None) | Err(_) => {
                // The script runs make and cargo: end its whole process group, which we created.
                // SAFETY: kill(2) on the process group this process created for the child; no memory involved.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(BenchError::failed(format!(
                    "{} did not finish within {GUEST_BUILD_TIMEOUT:?}; killed it",
                    script.display()
                )));
            }
        }
    };
    let text = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(BenchError::failed(format!("{} failed ({status})", script.display())));
    }
    hull_tests::parse_build_guest_output(&text)
        .ok_or_else(|| BenchError::failed(format!("{} printed no kernel=/initrd= lines", script.display())))
}

/// Takes the lock the Linux boot tests use, giving up after `LINUX_LOCK_TIMEOUT`.
fn linux_boot_lock() -> Result<FileLock> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(FileLock::acquire("linux-boot"));
    });
    rx.recv_timeout(LINUX_LOCK_TIMEOUT).map_err(|_| {
        BenchError::failed(format!(
            "another Linux boot (a test?) held the linux-boot lock for {LINUX_LOCK_TIMEOUT:?}; not booting a second \
             one beside it"
        ))
    })
}

/// Kernel log lines whose first appearance marks a stage of the boot, in order.
const LINUX_MILESTONES: &[(&str, &str)] = &[
    ("Linux version", "first kernel line (`Linux version`)"),
    ("smp: Brought up", "`smp: Brought up`"),
    ("Unpacking initramfs", "`Unpacking initramfs`"),
    ("Freeing unused kernel", "`Freeing unused kernel image`"),
    ("Run /init", "`Run /init`"),
];

/// The printk timestamp of a kernel log line, `[   45.123456] ...`, in seconds.
pub fn printk_seconds(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (stamp, _) = rest.split_once(']')?;
    stamp.trim().parse().ok()
}

/// (d) hull start → `Run /init` with the real kernel.
fn linux(s: &mut Section) -> Result<()> {
    let images = guest_images()?;
    let _one_linux_boot_at_a_time = linux_boot_lock()?;
    s.load_start = crate::machine::Load::now();
    let boot_args = "console=ttyS0 reboot=k panic=1";
    let config = json!({
        "boot-source": { "kernel_image_path": images.kernel, "initrd_path": images.initrd, "boot_args": boot_args },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": GUEST_MIB },
    });
    let dir = TempDir::new("bench-linux").map_err(fail("creating a temporary directory"))?;
    let file = dir.path().join("vm.json");
    std::fs::write(&file, config.to_string()).map_err(fail(format!("writing {}", file.display())))?;
    let t0 = Instant::now();
    let mut hull = Hull::spawn(
        "bench-linux",
        [OsArg::from("--no-api"), "--config-file".into(), file.into_os_string()],
    );
    let mut seen: Vec<Option<(Duration, String)>> = vec![None; LINUX_MILESTONES.len()];
    let last = LINUX_MILESTONES.len() - 1;
    let mut failure = None;
    loop {
        let text = hull.stdout();
        for (i, (pattern, _)) in LINUX_MILESTONES.iter().enumerate() {
            if seen[i].is_none() {
                if let Some(line) = text.lines().find(|l| l.contains(pattern)) {
                    seen[i] = Some((t0.elapsed(), line.to_string()));
                }
            }
        }
        if seen[last].is_some() {
            break;
        }
        if let Some(status) = hull.try_status() {
            failure = Some(format!("hull exited ({status}) before `Run /init`\n{}", hull.report()));
            break;
        }
        if t0.elapsed() > LINUX_TIMEOUT {
            let kernel_time = text.lines().rev().find_map(printk_seconds);
            failure = Some(format!(
                "no `Run /init` within {LINUX_TIMEOUT:?} (the kernel's own clock had reached {}); the stages it \
                 reached are above\n{}",
                kernel_time.map(|k| format!("{k:.1} s")).unwrap_or_else(|| "?".into()),
                hull.report()
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    hull.kill();
    // Report every stage reached, also when the boot did not get to the end.
    for (i, (_, label)) in LINUX_MILESTONES.iter().enumerate() {
        match &seen[i] {
            Some((at, line)) => {
                s.metric(
                    format!("hull start → {label} (host clock)"),
                    "s",
                    vec![at.as_secs_f64()],
                );
                if let Some(k) = printk_seconds(line) {
                    s.metric(format!("  kernel's printk time at {label}"), "s", vec![k]);
                }
            }
            None => s.note(format!("{label} never appeared in the kernel log")),
        }
    }
    if let Some(f) = failure {
        return Err(BenchError::failed(f));
    }
    s.note(format!(
        "kernel {}, boot args `{boot_args}`; output polled every 100 ms",
        images.kernel.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_lines_are_parsed() {
        let line = "2025-01-01T00:00:00.000000Z  INFO devices::legacy::boot_timer: Guest-boot-time = 8123 us 8 ms";
        assert_eq!(parse_boot_time_us(line), Some(8123));
        assert_eq!(parse_boot_time_us("Guest-boot-time = x us"), None);
        assert_eq!(parse_boot_time_us("nothing here"), None);
    }

    #[test]
    fn printk_timestamps_are_parsed() {
        assert_eq!(
            printk_seconds("[   45.123456] Run /init as init process"),
            Some(45.123456)
        );
        assert_eq!(printk_seconds("Run /init as init process"), None);
        assert_eq!(printk_seconds("[garbage] x"), None);
    }
}
