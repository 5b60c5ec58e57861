//! The `run` suite: `hull run -- /bin/true` end to end per backend, split into phases, next to
//! `runc run` of the same busybox rootfs.
//!
//! Each hull sample is one `hull run --rootfs R --backend B --timing -- /bin/true`; its `--timing` lines
//! (`hull run: phase NAME SECONDS`, seconds since hull started) give the phases rootfs image, VM start, agent
//! ready, container created, process exit and teardown. The host-side end to end is spawn → exit, measured
//! here. Each backend runs twice: with `--no-image-cache` (the rootfs packed with `mkfs.ext4` in every
//! sample), then as a user runs it a second time (the rootfs image from hull's image cache, which one
//! untimed warm-up run fills).
//! Each runc sample is one `runc --root S run --bundle B <unique id>` of the same rootfs, always followed
//! by `runc delete -f`.
//!
//! hull's stderr is untrusted text: only the phase lines are parsed, strictly, and must be in order.
//! Every child has a deadline (SIGKILL by pid when it passes); every directory is a `TempDir`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_tests::TempDir;

use crate::error::{fail, BenchError, Result};
use crate::report::{run_section, Section};
use crate::stats::Summary;

/// One `hull run` under QEMU TCG boots Linux (~5 s idle); a loaded machine can take several times that.
const HULL_TIMEOUT: Duration = Duration::from_secs(300);
/// `runc run` of /bin/true takes tens of milliseconds.
const RUNC_TIMEOUT: Duration = Duration::from_secs(60);
/// `apt-get install runc`.
const APT_TIMEOUT: Duration = Duration::from_secs(600);

/// How many phases `hull run --timing` reports.
const N_PHASES: usize = 6;

/// The phases `hull run --timing` reports, in order, and how the table names the step that ends at each.
pub const PHASES: [(&str, &str); N_PHASES] = [
    ("rootfs_ready", "rootfs image (hull start → image ready)"),
    ("vm_started", "VM start (image ready → VM and backends started)"),
    ("agent_ready", "agent ready (VM started → agent answers)"),
    ("container_created", "container created (agent → CreateContainer done)"),
    ("process_exited", "process exit (created → /bin/true exited)"),
    ("teardown_done", "teardown (exited → VM gone, files removed)"),
];

pub struct RunOptions {
    pub runs: usize,
    pub hull_bin: PathBuf,
}

/// The phase timestamps of one `hull run --timing`, seconds since hull started.
#[derive(Clone, Debug, PartialEq)]
pub struct HullTiming {
    /// One timestamp per entry of [`PHASES`], in that order.
    pub at: [f64; N_PHASES],
    /// hull's own `end to end` figure and the backend it names.
    pub end_to_end: f64,
    pub backend: String,
}

impl HullTiming {
    /// Durations of the steps, in seconds (each phase minus the one before; the first from 0).
    pub fn steps(&self) -> [f64; N_PHASES] {
        let mut prev = 0.0;
        self.at.map(|t| {
            let d = t - prev;
            prev = t;
            d
        })
    }
}

/// Parses the `--timing` lines of hull run's stderr. Every phase must appear exactly once, with a finite,
/// non-negative time, not earlier than the phase before it; the `end to end` line must be there too.
pub fn parse_timing(stderr: &str) -> std::result::Result<HullTiming, String> {
    let mut at: [Option<f64>; N_PHASES] = [None; N_PHASES];
    let mut end = None;
    for line in stderr.lines() {
        let Some(rest) = line.trim_end().strip_prefix("hull run: ") else {
            continue;
        };
        if let Some(phase) = rest.strip_prefix("phase ") {
            let words: Vec<&str> = phase.split_whitespace().collect();
            let [name, secs] = words.as_slice() else {
                return Err(format!("malformed phase line {line:?}"));
            };
            let i = PHASES
                .iter()
                .position(|(n, _)| n == name)
                .ok_or_else(|| format!("unknown phase {name:?} in {line:?}"))?;
            let secs = seconds(secs).ok_or_else(|| format!("bad time in {line:?}"))?;
            if at[i].replace(secs).is_some() {
                return Err(format!("phase {name} reported twice"));
            }
        } else if let Some(e2e) = rest.strip_prefix("end to end ") {
            // "6.335 s (backend qemu)"
            let words: Vec<&str> = e2e.split_whitespace().collect();
            match words.as_slice() {
                [secs, "s", "(backend", backend] if backend.ends_with(')') => {
                    let secs = seconds(secs).ok_or_else(|| format!("bad time in {line:?}"))?;
                    end = Some((secs, backend.trim_end_matches(')').to_string()));
                }
                _ => return Err(format!("malformed end-to-end line {line:?}")),
            }
        }
    }
    let mut out = [0.0; N_PHASES];
    for (i, (name, _)) in PHASES.iter().enumerate() {
        out[i] = at[i].ok_or_else(|| format!("no `hull run: phase {name}` line (is hull older than this bench?)"))?;
        if i > 0 && out[i] < out[i - 1] {
            return Err(format!(
                "phase {name} ({}) is earlier than {} ({})",
                out[i],
                PHASES[i - 1].0,
                out[i - 1]
            ));
        }
    }
    let (end_to_end, backend) = end.ok_or("no `hull run: end to end` line")?;
    Ok(HullTiming {
        at: out,
        end_to_end,
        backend,
    })
}

fn seconds(text: &str) -> Option<f64> {
    let v: f64 = text.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A finished child: how it ended, how long it ran, what it wrote on stderr.
struct Finished {
    status: ExitStatus,
    took: Duration,
    stderr: String,
}

/// Runs `cmd` (stdin and stdout null, stderr captured) to completion or `timeout`, whichever is first;
/// on timeout the child is killed by pid and reaped. The time is spawn → wait(2) returned.
fn run_bounded(mut cmd: Command, what: &str, timeout: Duration) -> Result<Finished> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(fail(format!("starting {what}")))?;
    let pid = child.id() as libc::pid_t;
    let mut err_pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(p) = err_pipe.as_mut() {
            let mut bytes = Vec::new();
            let _ = p.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    });
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = child.wait();
        let _ = tx.send((r, t0.elapsed()));
    });
    let outcome = match rx.recv_timeout(timeout) {
        Ok(got) => Ok(got),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which the waiter thread has not reaped yet
            // (it would have sent its result).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(())
        }
    };
    let _ = waiter.join();
    let stderr = reader.join().unwrap_or_default();
    match outcome {
        Ok((Ok(status), took)) => Ok(Finished { status, took, stderr }),
        Ok((Err(e), _)) => Err(BenchError::failed(format!("waiting for {what}: {e}"))),
        Err(()) => Err(BenchError::failed(format!(
            "{what} did not finish within {timeout:?} (killed)\nstderr tail:\n{}",
            hull_tests::tail(&stderr, 2000)
        ))),
    }
}

/// Runs the suite: the rootfs once, then runc, then each hull backend, then the ratio table.
pub fn run(opts: &RunOptions) -> Vec<Section> {
    let mut sections = Vec::new();
    let rootfs = match build_rootfs() {
        Ok(r) => r,
        Err(e) => {
            let mut s = Section::start("run.rootfs", "busybox rootfs for hull run and runc");
            s.error = Some(e.message);
            s.finish();
            return vec![s];
        }
    };
    let mut runc_e2e = None;
    sections.push(run_section(
        "run.runc",
        "runc run of /bin/true, same busybox rootfs (host, no VM)",
        |s| {
            let samples = runc_runs(s, rootfs.1.as_path(), opts.runs)?;
            runc_e2e = Summary::of(&samples).map(|x| x.median);
            s.metric("end to end (spawn → runc exited)", "ms", samples);
            s.note("includes `runc run` only; `runc delete -f` after each sample is not timed");
            Ok(())
        },
    ));
    let mut hull_medians: Vec<(String, Option<Medians>)> = Vec::new();
    for (backend, variant) in [
        // Uncached first: by the time it is done, the just-built rootfs has been still for longer than hull's
        // image cache asks before it keeps an image.
        ("qemu", Variant::Uncached),
        ("qemu", Variant::Cached),
        ("kvm", Variant::Uncached),
        ("kvm", Variant::Cached),
    ] {
        let id = format!("run.hull_{backend}{}", variant.id_suffix());
        let title = format!(
            "hull run --backend {backend}{} -- /bin/true, busybox rootfs",
            variant.flag().map(|f| format!(" {f}")).unwrap_or_default()
        );
        let row = format!("{backend}{}", variant.row_suffix());
        if backend == "kvm" && !hull_tests::hardware_kvm() {
            let mut s = Section::start(&id, &title);
            s.note(if hull_tests::software_kvm() {
                "skipped: needs hardware KVM (this /dev/kvm is the software kvm_pvm, no guest user space)"
            } else {
                "skipped: needs hardware KVM (/dev/kvm missing or not accessible)"
            });
            s.finish();
            sections.push(s);
            hull_medians.push((row, None));
            continue;
        }
        let mut medians = None;
        sections.push(run_section(&id, &title, |s| {
            medians = Some(hull_runs(s, &opts.hull_bin, backend, variant, &rootfs.1, opts.runs)?);
            Ok(())
        }));
        hull_medians.push((row, medians));
    }
    sections.push(ratio_section(runc_e2e, &hull_medians));
    drop(rootfs);
    sections
}

/// How a hull section treats the rootfs image.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// As `hull run` does by default: packed once, then taken from hull's image cache.
    Cached,
    /// `--no-image-cache`: packed with `mkfs.ext4` in every sample.
    Uncached,
}

impl Variant {
    fn flag(self) -> Option<&'static str> {
        (self == Variant::Uncached).then_some("--no-image-cache")
    }
    fn id_suffix(self) -> &'static str {
        if self == Variant::Uncached {
            "_uncached"
        } else {
            ""
        }
    }
    fn row_suffix(self) -> &'static str {
        if self == Variant::Uncached {
            " (uncached)"
        } else {
            ""
        }
    }
}

/// Medians (ms) of one hull section: the host's end to end, then each step of [`PHASES`].
type Medians = [f64; N_PHASES + 1];

/// `tests/rootfs/busybox.sh` into a temporary directory (kept, with it, until the suite ends).
fn build_rootfs() -> Result<(TempDir, PathBuf)> {
    let dir = TempDir::new("bench-run").map_err(fail("creating a temporary directory"))?;
    let rootfs = dir.path().join("rootfs");
    let script = hull_tests::repo_root().join("tests/rootfs/busybox.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&rootfs)
        .stdin(Stdio::null())
        .output()
        .map_err(fail(format!("running {}", script.display())))?;
    if !out.status.success() {
        return Err(BenchError::env(format!(
            "{} failed ({}): {}; run scripts/install-qemu.sh for busybox-static",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if !rootfs.join("bin/true").exists() {
        return Err(BenchError::failed(format!(
            "{} has no bin/true applet",
            rootfs.display()
        )));
    }
    Ok((dir, rootfs))
}

/// N x `hull run`; records each step and both end-to-end figures. Returns the medians (ms) of the host
/// end to end and of the steps.
fn hull_runs(
    s: &mut Section,
    hull: &Path,
    backend: &str,
    variant: Variant,
    rootfs: &Path,
    runs: usize,
) -> Result<Medians> {
    let mut host = Vec::new();
    let mut own = Vec::new();
    let mut steps: [Vec<f64>; N_PHASES] = Default::default();
    // With the cache, one untimed run first puts the image in it (or finds it there).
    let warm_up = usize::from(variant == Variant::Cached);
    for i in 0..runs + warm_up {
        let mut cmd = Command::new(hull);
        cmd.arg("run").arg("--rootfs").arg(rootfs).args(["--backend", backend]);
        cmd.args(variant.flag()).args(["--timing", "--", "/bin/true"]);
        let what = if i < warm_up {
            format!("hull run (backend {backend}, warm-up)")
        } else {
            format!("hull run (backend {backend}, sample {})", i + 1 - warm_up)
        };
        let done = run_bounded(cmd, &what, HULL_TIMEOUT)?;
        let tail = || hull_tests::tail(&done.stderr, 2000).to_string();
        if !done.status.success() {
            return Err(BenchError::failed(format!(
                "{what} exited with {}\nstderr tail:\n{}",
                done.status,
                tail()
            )));
        }
        let timing = parse_timing(&done.stderr)
            .map_err(|e| BenchError::failed(format!("{what}: {e}\nstderr tail:\n{}", tail())))?;
        if timing.backend != backend {
            return Err(BenchError::failed(format!(
                "{what} ran backend {}, not {backend}",
                timing.backend
            )));
        }
        if i < warm_up {
            continue;
        }
        host.push(ms(done.took));
        own.push(timing.end_to_end * 1e3);
        for (v, d) in steps.iter_mut().zip(timing.steps()) {
            v.push(d * 1e3);
        }
    }
    let median = |v: &[f64]| Summary::of(v).map(|x| x.median).unwrap_or(f64::NAN);
    let mut medians = [0.0; N_PHASES + 1];
    medians[0] = median(&host);
    for (m, v) in medians[1..].iter_mut().zip(&steps) {
        *m = median(v);
    }
    s.metric("end to end (spawn → hull exited)", "ms", host);
    s.metric("end to end (hull's own figure)", "ms", own);
    for ((_, label), v) in PHASES.iter().zip(steps) {
        s.metric(*label, "ms", v);
    }
    s.note("phases from `hull run --timing` (`hull run: phase NAME SECONDS`); they add up to hull's own figure");
    s.note(match variant {
        Variant::Cached => "rootfs image from hull's image cache, filled by one untimed warm-up run",
        Variant::Uncached => "--no-image-cache: the rootfs is packed with mkfs.ext4 in every sample",
    });
    if backend == "qemu" {
        s.note("qemu backend: QEMU TCG (software CPU emulation) here, so the guest's boot dominates");
    }
    Ok(medians)
}

/// The runc binary, installing Debian's package if it is missing and we may.
fn ensure_runc() -> Result<PathBuf> {
    let find = || {
        std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("runc"))
                    .find(|p| crate::machine::is_executable(p))
            })
            .unwrap_or(None)
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BenchError::env(
            "runc is missing; install it with `sudo apt-get install runc`",
        ));
    }
    eprintln!("[hull-bench] runc is missing: installing Debian's runc (apt-get install -y runc)");
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "--no-install-recommends", "runc"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    let done = run_bounded(cmd, "apt-get install runc", APT_TIMEOUT)?;
    if !done.status.success() {
        return Err(BenchError::env(format!(
            "apt-get install runc failed ({}): {}",
            done.status,
            hull_tests::tail(&done.stderr, 1000)
        )));
    }
    find().ok_or_else(|| BenchError::env("apt-get installed runc, but it is not on PATH"))
}

/// The OCI bundle: `runc spec`'s default, running /bin/true on the read-only rootfs, no terminal.
fn make_bundle(runc: &Path, bundle: &Path, rootfs: &Path) -> Result<()> {
    let out = Command::new(runc)
        .args(["spec", "--bundle"])
        .arg(bundle)
        .stdin(Stdio::null())
        .output()
        .map_err(fail("running runc spec"))?;
    if !out.status.success() {
        return Err(BenchError::failed(format!(
            "runc spec failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(fail(format!("reading {}", path.display())))?;
    let mut spec: serde_json::Value =
        serde_json::from_str(&text).map_err(fail(format!("{} is not JSON", path.display())))?;
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    std::fs::write(&path, spec.to_string()).map_err(fail(format!("writing {}", path.display())))
}

/// Removes a runc container whatever happened to its run.
struct RuncContainer<'a> {
    runc: &'a Path,
    state: &'a Path,
    id: String,
}

impl Drop for RuncContainer<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.runc)
            .arg("--root")
            .arg(self.state)
            .args(["delete", "-f", &self.id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// N x `runc run` end to end, in ms.
fn runc_runs(s: &mut Section, rootfs: &Path, runs: usize) -> Result<Vec<f64>> {
    let runc = ensure_runc()?;
    let version = Command::new(&runc)
        .arg("--version")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    if let Some(first) = String::from_utf8_lossy(&version).lines().next() {
        s.note(format!("{first} ({})", runc.display()));
    }
    let dir = TempDir::new("bench-runc").map_err(fail("creating a temporary directory"))?;
    let (bundle, state) = (dir.path().join("bundle"), dir.path().join("state"));
    for d in [&bundle, &state] {
        std::fs::create_dir_all(d).map_err(fail(format!("creating {}", d.display())))?;
    }
    make_bundle(&runc, &bundle, rootfs)?;
    let mut samples = Vec::new();
    for i in 0..runs {
        let container = RuncContainer {
            runc: &runc,
            state: &state,
            id: format!("hull-bench-{}-{i}", std::process::id()),
        };
        let mut cmd = Command::new(&runc);
        cmd.arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&container.id);
        let what = format!("runc run (sample {})", i + 1);
        let done = run_bounded(cmd, &what, RUNC_TIMEOUT)?;
        if !done.status.success() {
            return Err(BenchError::failed(format!(
                "{what} exited with {}: {}",
                done.status,
                hull_tests::tail(&done.stderr, 2000)
            )));
        }
        samples.push(ms(done.took));
        drop(container);
    }
    Ok(samples)
}

/// hull/runc of the medians, end to end, per backend; the phase medians beside them for reference.
fn ratio_section(runc: Option<f64>, hull: &[(String, Option<Medians>)]) -> Section {
    let mut s = Section::start("run.ratio", "hull run / runc run, ratio of the end-to-end medians");
    let runc_text = runc.map(|r| format!("{r:.2} ms")).unwrap_or_else(|| "no figure".into());
    let mut table = vec![format!(
        "{:<16} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "backend", "hull ms", "runc ms", "hull/runc", "rootfs", "vm", "agent", "created", "exit", "teardown"
    )];
    for (backend, medians) in hull {
        match (medians, runc) {
            (Some(m), Some(r)) if r > 0.0 => {
                let steps: Vec<String> = m[1..].iter().map(|v| format!("{v:>8.1}")).collect();
                table.push(format!(
                    "{:<16} {:>9.1} {:>9.2} {:>8.0}x {}",
                    backend,
                    m[0],
                    r,
                    m[0] / r,
                    steps.join(" ")
                ))
            }
            (Some(m), _) => table.push(format!("{backend:<16} {:>9.1} {runc_text:>9} {:>9}", m[0], "-")),
            (None, _) if backend.starts_with("kvm") && !hull_tests::hardware_kvm() => {
                table.push(format!("{backend:<16} skipped: needs hardware KVM"))
            }
            (None, _) => table.push(format!("{backend:<16} no figure (see its section)")),
        }
        if let (Some(m), Some(r)) = (medians, runc) {
            if r > 0.0 {
                s.metric(
                    format!("hull {backend} / runc, end-to-end medians"),
                    "x",
                    vec![m[0] / r],
                );
            }
        }
    }
    for line in table {
        s.note(line);
    }
    s.note("medians in ms; the phase columns are hull's steps (they sum to hull's own end to end, not the host's)");
    s.finish();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const STDERR: &str = "\
hull run: backend qemu (chosen: /dev/kvm is kvm_pvm)
hull run: phase rootfs_ready 0.012000
hull run: phase vm_started 0.412000
hull run: phase agent_ready 3.896123
hull run: phase container_created 4.100000
hull run: phase process_exited 5.700000
hull run: agent answered after 3.896 s, container exited after 5.870 s
hull run: phase teardown_done 6.300000
hull run: end to end 6.335 s (backend qemu)
";

    #[test]
    fn timing_lines_are_parsed_into_steps() {
        let t = parse_timing(STDERR).unwrap();
        assert_eq!(t.at, [0.012, 0.412, 3.896123, 4.1, 5.7, 6.3]);
        assert_eq!((t.end_to_end, t.backend.as_str()), (6.335, "qemu"));
        let steps = t.steps();
        assert!((steps[0] - 0.012).abs() < 1e-9 && (steps[1] - 0.4).abs() < 1e-9 && (steps[5] - 0.6).abs() < 1e-9);
        assert!((steps.iter().sum::<f64>() - 6.3).abs() < 1e-9);
        // Unrelated lines, guest output and trailing whitespace are ignored.
        let noisy = format!("some guest text\nhull run: other\n{}", STDERR.replace('\n', "  \n"));
        assert_eq!(parse_timing(&noisy).unwrap(), t);
    }

    #[test]
    fn bad_timing_is_rejected() {
        let missing = STDERR.replace("hull run: phase agent_ready 3.896123\n", "");
        assert!(parse_timing(&missing).unwrap_err().contains("agent_ready"));
        let twice = format!("{STDERR}hull run: phase vm_started 0.5\n");
        assert!(parse_timing(&twice).unwrap_err().contains("twice"));
        let backwards = STDERR.replace("container_created 4.100000", "container_created 3.0");
        assert!(parse_timing(&backwards).unwrap_err().contains("earlier"));
        for bad in ["-1", "NaN", "inf", "1e400", "x"] {
            let t = STDERR.replace("vm_started 0.412000", &format!("vm_started {bad}"));
            assert!(parse_timing(&t).is_err(), "{bad}");
        }
        assert!(parse_timing(&STDERR.replace("phase vm_started", "phase vm_begun")).is_err());
        assert!(parse_timing(&STDERR.replace("0.412000", "0.4 s")).is_err());
        assert!(parse_timing(&STDERR.replace("end to end 6.335 s (backend qemu)\n", "")).is_err());
        assert!(parse_timing(&STDERR.replace("(backend qemu)", "backend qemu")).is_err());
        assert!(parse_timing("").is_err());
    }
}
