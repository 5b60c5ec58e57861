//! The `density` suite: N microVMs with the tiny halting guest started at once, per VMM (hull, QEMU always,
//! Firecracker and Cloud Hypervisor when given), one VMM after the other.
//!
//! For each VMM: `MemAvailable` before; N processes spawned back to back, each booting from its config file
//! or command line and serving its control socket (hull and Firecracker `--api-sock` + `--config-file`, QEMU
//! `-qmp`, Cloud Hypervisor `--api-socket`), standard output to a file in its own temporary directory; the
//! start rate is N over the time from the first spawn until the last guest's line has appeared in those files
//! (polled every [`POLL`] by a second thread while the first spawns); then each VMM's PSS and RSS
//! (`/proc/PID/smaps_rollup`) and `MemAvailable` with all N up. Directories, config files and commands are
//! prepared before the clock starts. Teardown sends SIGTERM to every VMM (SIGKILL after [`TERM_GRACE`]), removes the directories, and
//! checks that nothing is left: no process, no control socket, no temporary directory. `MemAvailable` is
//! read once more after it.
//!
//! Spawning stops, and the whole batch is torn down, when `MemAvailable` falls below [`MIN_AVAILABLE_KIB`]:
//! the machine is shared. Every child also gets SIGKILL if this process dies (PR_SET_PDEATHSIG), and a batch
//! dropped half-way kills what it started.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hull_tests::TempDir;

use crate::compare::markdown_table;
use crate::error::{fail, BenchError, Result};
use crate::report::Section;
use crate::stats::{format_value, Summary};
use crate::vmms::{mem_available_kib, Launch, ProcessFootprint, Vmm, VmmKind, GUEST_LINE, GUEST_MIB};

/// How often the batch's output files are checked for the guest's line: the resolution of "all up".
const POLL: Duration = Duration::from_millis(5);
/// The whole batch must be up within this plus [`UP_TIMEOUT_PER_VM`] per VM.
const UP_TIMEOUT_BASE: Duration = Duration::from_secs(60);
const UP_TIMEOUT_PER_VM: Duration = Duration::from_millis(500);
/// How long the VMMs get to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// Spawning stops below this much available memory (1 GiB).
const MIN_AVAILABLE_KIB: u64 = 1024 * 1024;
/// Label of the temporary directories (`hull-test-<label>-XXXXXX`), searched for leftovers after teardown.
const DIR_LABEL: &str = "bench-density";

/// One VMM's batch, as the summary table needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchFigures {
    pub kind: VmmKind,
    pub vms: usize,
    pub all_up_s: f64,
    pub pss_kib: Vec<f64>,
    pub rss_kib: Vec<f64>,
    pub mem_drop_per_vm_kib: f64,
    pub left_behind: Leftovers,
}

impl BatchFigures {
    pub fn start_rate(&self) -> f64 {
        self.vms as f64 / self.all_up_s
    }
}

/// What a teardown left behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    pub processes: usize,
    pub sockets: usize,
    pub dirs: usize,
}

impl Leftovers {
    pub fn is_clean(&self) -> bool {
        *self == Leftovers::default()
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} process(es), {} socket(s), {} temporary dir(s)",
            self.processes, self.sockets, self.dirs
        )
    }
}

/// One VMM process of a batch: prepared (directory, config, output files, command) before the clock starts,
/// then spawned. Dropping it kills and reaps the process if that has not happened yet.
struct BatchVm {
    cmd: Command,
    child: Option<Child>,
    reaped: bool,
    dir: Option<TempDir>,
    sock: PathBuf,
    stdout: PathBuf,
    /// When it was spawned, from the batch's start.
    spawned_at: Option<Duration>,
}

impl BatchVm {
    fn prepare(vmm: &Vmm, guest: &Path) -> Result<BatchVm> {
        let dir = TempDir::new(DIR_LABEL).map_err(fail("creating a temporary directory"))?;
        let args = vmm.args(Launch::DirectWithSocket, dir.path(), guest)?;
        let stdout = dir.path().join("stdout.txt");
        let out = File::create(&stdout).map_err(fail(format!("creating {}", stdout.display())))?;
        let err_path = dir.path().join("stderr.txt");
        let err = File::create(&err_path).map_err(fail(format!("creating {}", err_path.display())))?;
        let mut cmd = Command::new(&vmm.bin);
        cmd.args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2), which is
        // async-signal-safe; it touches no memory of the parent. PR_SET_PDEATHSIG follows the spawning thread:
        // batches are spawned from the thread that also tears them down.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(BatchVm {
            cmd,
            child: None,
            reaped: false,
            sock: vmm.socket(dir.path()),
            dir: Some(dir),
            stdout,
            spawned_at: None,
        })
    }

    fn spawn(&mut self, t0: Instant) -> Result<()> {
        let child = self.cmd.spawn().map_err(|e| {
            BenchError::env(format!(
                "cannot start {}: {e}",
                self.cmd.get_program().to_string_lossy()
            ))
        })?;
        self.spawned_at = Some(t0.elapsed());
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The output so far, for failure messages.
    fn report(&self) -> String {
        let read = |name: &str| {
            self.dir
                .as_ref()
                .and_then(|d| std::fs::read(d.path().join(name)).ok())
                .map(|b| hull_tests::tail(&String::from_utf8_lossy(&b), 2000).to_string())
                .unwrap_or_default()
        };
        let pid = self.pid().map_or("not started".to_string(), |p| p.to_string());
        format!(
            "pid {pid}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            read("stdout.txt"),
            read("stderr.txt")
        )
    }

    fn signal(&self, signal: libc::c_int) {
        if let (Some(pid), false) = (self.pid(), self.reaped) {
            // SAFETY: kill(2) on our own unreaped child's PID, which cannot have been reused; no memory involved.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }

    /// Whether the process has ended (and is now reaped); `false` for one not spawned.
    fn try_reap(&mut self) -> bool {
        if let (Some(child), false) = (self.child.as_mut(), self.reaped) {
            self.reaped = matches!(child.try_wait(), Ok(Some(_)));
        }
        self.reaped
    }

    fn kill_and_reap(&mut self) {
        if let (Some(child), false) = (self.child.as_mut(), self.reaped) {
            let _ = child.kill();
            let _ = child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for BatchVm {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// Temporary directories of this suite still present under the system temp dir.
fn leftover_dirs() -> usize {
    let prefix = format!("hull-test-{DIR_LABEL}-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .count()
        })
        .unwrap_or(0)
}

/// Polls the batch's output files until each holds the guest's line, `stop` is set or `deadline` passes;
/// when each was first seen, from `t0`.
fn watch_for_guest_lines(
    paths: &[PathBuf],
    t0: Instant,
    deadline: Duration,
    stop: &AtomicBool,
) -> Vec<Option<Duration>> {
    let mut up: Vec<Option<Duration>> = vec![None; paths.len()];
    let mut seen_len = vec![0u64; paths.len()];
    while up.iter().any(Option::is_none) && !stop.load(Ordering::Relaxed) && t0.elapsed() < deadline {
        for (i, path) in paths.iter().enumerate() {
            if up[i].is_some() {
                continue;
            }
            let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if len != seen_len[i] {
                seen_len[i] = len;
                let text = std::fs::read(path).unwrap_or_default();
                if String::from_utf8_lossy(&text).contains(GUEST_LINE) {
                    up[i] = Some(t0.elapsed());
                }
            }
        }
        std::thread::sleep(POLL);
    }
    up
}

/// Spawns every prepared VM, back to back, stopping at the memory floor.
fn spawn_all(batch: &mut [BatchVm], t0: Instant) -> Result<()> {
    let vms = batch.len();
    for (i, vm) in batch.iter_mut().enumerate() {
        if i % 10 == 0 {
            let available = mem_available_kib()?;
            if available < MIN_AVAILABLE_KIB {
                return Err(BenchError::failed(format!(
                    "stopped after {i} of {vms} VMs: MemAvailable is down to {} MiB (the floor is {} MiB)",
                    available / 1024,
                    MIN_AVAILABLE_KIB / 1024
                )));
            }
        }
        vm.spawn(t0)?;
    }
    Ok(())
}

/// Runs one VMM's batch into `s`.
pub fn batch(s: &mut Section, vmm: &Vmm, vms: usize, guest: &Path) -> Result<BatchFigures> {
    let dirs_before = leftover_dirs();
    let mut batch: Vec<BatchVm> = (0..vms).map(|_| BatchVm::prepare(vmm, guest)).collect::<Result<_>>()?;
    let paths: Vec<PathBuf> = batch.iter().map(|vm| vm.stdout.clone()).collect();
    let deadline = UP_TIMEOUT_BASE + UP_TIMEOUT_PER_VM * vms as u32;
    let stop = AtomicBool::new(false);
    let mem_before = mem_available_kib()?;
    let t0 = Instant::now();
    // This thread spawns (PR_SET_PDEATHSIG is per thread) and watches for early exits; another polls the output.
    let (ups, spawned, failure) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| watch_for_guest_lines(&paths, t0, deadline, &stop));
        let mut failure = spawn_all(&mut batch, t0).err();
        let spawned = t0.elapsed();
        while failure.is_none() && !poller.is_finished() {
            if let Some(vm) = batch.iter_mut().find_map(|vm| vm.try_reap().then_some(vm)) {
                failure = Some(BenchError::failed(format!(
                    "a {} exited before all guests were up (the guest halts: it should stay up)\n{}",
                    vmm.name(),
                    vm.report()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        (poller.join().unwrap_or_default(), spawned, failure)
    });
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(i) = ups.iter().position(Option::is_none) {
        return Err(BenchError::failed(format!(
            "{} of {vms} guests had not printed `{GUEST_LINE}` after {deadline:?}; the first of them:\n{}",
            ups.iter().filter(|u| u.is_none()).count(),
            batch[i].report()
        )));
    }
    let ups: Vec<Duration> = ups.into_iter().flatten().collect();
    let all_up = ups.iter().copied().max().unwrap_or_default();
    let mem_up = mem_available_kib()?;
    let up_ms: Vec<f64> = ups
        .iter()
        .zip(&batch)
        .map(|(up, vm)| up.saturating_sub(vm.spawned_at.unwrap_or_default()).as_secs_f64() * 1e3)
        .collect();
    let mut footprints = Vec::with_capacity(vms);
    for pid in batch.iter().filter_map(BatchVm::pid) {
        footprints.push(ProcessFootprint::read(pid)?);
    }

    // Teardown: SIGTERM, a grace period, SIGKILL for the rest.
    let t_term = Instant::now();
    batch.iter().for_each(|vm| vm.signal(libc::SIGTERM));
    while !batch.iter_mut().all(|vm| vm.try_reap()) && t_term.elapsed() < TERM_GRACE {
        std::thread::sleep(Duration::from_millis(2));
    }
    let term_took = t_term.elapsed();
    let mut hard_killed = 0;
    for vm in batch.iter_mut().filter(|vm| !vm.reaped) {
        vm.kill_and_reap();
        hard_killed += 1;
    }
    let mut sockets_left_by_vmm = 0;
    let mut left = Leftovers::default();
    let pids: Vec<u32> = batch.iter().filter_map(BatchVm::pid).collect();
    for vm in batch.iter_mut() {
        if vm.sock.exists() {
            sockets_left_by_vmm += 1;
        }
        if let Some(dir) = vm.dir.take() {
            let path = dir.path().to_path_buf();
            drop(dir);
            if path.exists() {
                left.dirs += 1;
            }
        }
        if vm.sock.exists() {
            left.sockets += 1;
        }
    }
    drop(batch);
    left.processes = pids
        .iter()
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .count();
    left.dirs = left.dirs.max(leftover_dirs().saturating_sub(dirs_before));
    std::thread::sleep(Duration::from_millis(200));
    let mem_after = mem_available_kib()?;

    let figures = BatchFigures {
        kind: vmm.kind,
        vms,
        all_up_s: all_up.as_secs_f64(),
        pss_kib: footprints.iter().map(|f| f.pss_kib as f64).collect(),
        rss_kib: footprints.iter().map(|f| f.rss_kib as f64).collect(),
        // Signed: with few VMs the drop is within the noise of other processes and can come out negative.
        mem_drop_per_vm_kib: (mem_before as f64 - mem_up as f64) / vms as f64,
        left_behind: left,
    };
    s.metric(
        "start rate (N / time until all N guests up)",
        "VMs/s",
        vec![figures.start_rate()],
    );
    s.metric("time until all N up", "s", vec![figures.all_up_s]);
    s.metric("time to spawn all N processes", "s", vec![spawned.as_secs_f64()]);
    s.metric("per-VM its spawn → its guest's line", "ms", up_ms);
    s.metric("per-VM PSS (smaps_rollup), all up", "KiB", figures.pss_kib.clone());
    s.metric(
        "  of which Pss_Anon",
        "KiB",
        footprints.iter().map(|f| f.pss_anon_kib as f64).collect(),
    );
    s.metric(
        "  of which Pss_File",
        "KiB",
        footprints.iter().map(|f| f.pss_file_kib as f64).collect(),
    );
    s.metric("per-VM RSS (smaps_rollup), all up", "KiB", figures.rss_kib.clone());
    s.metric(
        "per-VM threads",
        "threads",
        footprints.iter().map(|f| f.threads as f64).collect(),
    );
    s.metric("MemAvailable before", "MiB", vec![mem_before as f64 / 1024.0]);
    s.metric("MemAvailable with all N up", "MiB", vec![mem_up as f64 / 1024.0]);
    s.metric("MemAvailable after teardown", "MiB", vec![mem_after as f64 / 1024.0]);
    s.metric(
        "MemAvailable drop per VM (before − all up)",
        "KiB",
        vec![figures.mem_drop_per_vm_kib],
    );
    s.metric(
        "teardown: SIGTERM → all exited",
        "ms",
        vec![term_took.as_secs_f64() * 1e3],
    );
    s.note(format!(
        "{vms} x {} ({}), guest {} (1 vCPU, {GUEST_MIB} MiB, halts after its line); output polled every {POLL:?}",
        vmm.name(),
        vmm.bin.display(),
        guest.display()
    ));
    s.note(format!(
        "teardown: {} of {vms} exited on SIGTERM within {TERM_GRACE:?}, {hard_killed} needed SIGKILL; {} of {vms} \
         left their control socket behind (removed with their directory)",
        vms - hard_killed,
        sockets_left_by_vmm
    ));
    s.note(format!("left behind after teardown: {left}"));
    s.note(
        "MemAvailable is machine-wide: other processes' memory moves it too, so with small per-VM costs its drop \
         is noise; the per-VM PSS is the figure to compare",
    );
    if !left.is_clean() {
        return Err(BenchError::failed(format!("teardown left {left}")));
    }
    Ok(figures)
}

/// The cross-VMM table: start rate, time until all up, median per-VM PSS, MemAvailable drop per VM, and the
/// hull/peer ratios (hull is the first batch).
pub fn render_summary(batches: &[BatchFigures]) -> String {
    let Some(hull) = batches.first() else {
        return String::new();
    };
    let mut header = vec!["metric".to_string(), "unit".to_string()];
    header.extend(batches.iter().map(|b| b.kind.name().to_string()));
    header.extend(batches.iter().skip(1).map(|b| format!("hull/{}", b.kind.name())));
    let median = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |s| s.median);
    type Row<'a> = (&'a str, &'a str, &'a dyn Fn(&BatchFigures) -> f64);
    let rows_spec: [Row; 4] = [
        ("start rate", "VMs/s", &|b| b.start_rate()),
        ("time until all up", "s", &|b| b.all_up_s),
        ("per-VM PSS, median", "KiB", &|b| median(&b.pss_kib)),
        ("MemAvailable drop per VM", "KiB", &|b| b.mem_drop_per_vm_kib),
    ];
    let mut rows = Vec::new();
    for (name, unit, value) in rows_spec {
        let mut row = vec![format!("{name} ({} VMs)", hull.vms), unit.to_string()];
        row.extend(batches.iter().map(|b| format_value(value(b))));
        row.extend(batches.iter().skip(1).map(|b| {
            let (h, p) = (value(hull), value(b));
            // A MemAvailable drop can come out negative when other processes free memory meanwhile.
            if p > 0.0 && h > 0.0 && h.is_finite() {
                format!("{:.2}", h / p)
            } else {
                "n/a".into()
            }
        }));
        rows.push(row);
    }
    let mut row = vec!["left behind after teardown".to_string(), "proc/sock/dir".to_string()];
    row.extend(batches.iter().map(|b| {
        let l = b.left_behind;
        format!("{}/{}/{}", l.processes, l.sockets, l.dirs)
    }));
    row.extend(batches.iter().skip(1).map(|_| String::new()));
    rows.push(row);
    markdown_table(&header, &rows)
}

pub fn summary_json(batches: &[BatchFigures]) -> serde_json::Value {
    let items: Vec<serde_json::Value> = batches
        .iter()
        .map(|b| {
            let pss = Summary::of(&b.pss_kib);
            serde_json::json!({
                "vmm": b.kind.id(),
                "vms": b.vms,
                "start_rate_vms_per_s": b.start_rate(),
                "all_up_s": b.all_up_s,
                "pss_kib_median": pss.map(|s| s.median),
                "pss_kib_p10": pss.map(|s| s.p10),
                "pss_kib_p90": pss.map(|s| s.p90),
                "mem_available_drop_per_vm_kib": b.mem_drop_per_vm_kib,
                "left_behind": { "processes": b.left_behind.processes, "sockets": b.left_behind.sockets,
                                 "dirs": b.left_behind.dirs },
            })
        })
        .collect();
    serde_json::Value::Array(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(kind: VmmKind, all_up_s: f64, pss: f64) -> BatchFigures {
        BatchFigures {
            kind,
            vms: 100,
            all_up_s,
            pss_kib: vec![pss; 100],
            rss_kib: vec![pss * 2.0; 100],
            mem_drop_per_vm_kib: pss * 1.5,
            left_behind: Leftovers::default(),
        }
    }

    #[test]
    fn the_summary_has_rates_pss_and_ratios() {
        let table = render_summary(&[figures(VmmKind::Hull, 2.0, 400.0), figures(VmmKind::Qemu, 4.0, 16000.0)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + 5);
        assert!(lines[0].contains("hull/QEMU"));
        let rate = lines.iter().find(|l| l.contains("start rate (100 VMs)")).unwrap();
        assert!(
            rate.contains("50.00") && rate.contains("25.00") && rate.contains("2.00"),
            "{rate}"
        );
        let pss = lines.iter().find(|l| l.contains("PSS")).unwrap();
        assert!(
            pss.contains("400.0") && pss.contains("16000") && pss.contains("0.03"),
            "{pss}"
        );
        assert!(lines.last().unwrap().contains("0/0/0"));
        assert_eq!(render_summary(&[]), "");
        let json = summary_json(&[figures(VmmKind::Hull, 2.0, 400.0)]);
        assert_eq!(json[0]["start_rate_vms_per_s"], 50.0);
        assert_eq!(json[0]["left_behind"]["sockets"], 0);
    }

    #[test]
    fn leftovers_describe_themselves() {
        assert!(Leftovers::default().is_clean());
        let l = Leftovers {
            processes: 1,
            sockets: 0,
            dirs: 2,
        };
        assert!(!l.is_clean());
        assert_eq!(l.to_string(), "1 process(es), 0 socket(s), 2 temporary dir(s)");
    }
}
