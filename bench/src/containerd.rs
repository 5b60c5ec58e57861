//! The `containerd` suite: hull through containerd (Debian's 1.6) next to runc through the same daemon.
//!
//! * `ctr run --rm busybox <id> echo hello` with `--runtime io.containerd.hull.v2 --runtime-config-path
//!   <shim.toml>` and with ctr's default runtime (runc): spawn → ctr exited, one untimed warm-up each (the
//!   first hull run builds the rootfs image cache).
//! * CRI pod start, RunPodSandbox → CreateContainer → StartContainer (the container is then running; checked
//!   untimed with `ctr tasks ls`), handler `hull` vs `runc`; every pod is stopped and removed after it was
//!   measured, untimed, and hull's VM processes must be gone before the next sample.
//! * The host memory of one running hull pod: RSS (and PSS) of its VM processes — QEMU or the hull VMM, and
//!   the `hull vhost-user` device backends — read from /proc, next to the RuntimeClass overhead in
//!   resources/runtimeclass.yaml.
//!
//! The containerd is the private one of `hull_tests::containerd` (own root, state, socket, network namespace
//! with a CNI bridge; everything removed on drop). The shim config is written the way
//! tests/tests/shim_containerd.rs writes it: kernel and initrd from `hull_tests::guest_images()`, image cache
//! and VM directories inside the instance's directory, backend `auto`.
//!
//! Untrusted: whatever ctr, containerd's log and /proc say; all of it is only searched, never unwrapped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_tests::containerd::{
    Containerd, ContainerdOptions, CRI_NAMESPACE, CTR_NAMESPACE, HULL_HANDLER, HULL_RUNTIME_TYPE, RUNC_HANDLER,
};
use hull_tests::cri::{Cri, PodNetwork};
use hull_tests::oci_image::{busybox_image, BUSYBOX_IMAGE};
use hull_tests::TempDir;

use crate::error::{fail, BenchError, Result};
use crate::report::{run_section, Section};
use crate::stats::Summary;

/// One hull `ctr run` or pod start boots Linux under QEMU TCG here (seconds, more on a busy machine).
const HULL_TIMEOUT: Duration = Duration::from_secs(300);
/// runc through containerd takes a fraction of a second.
const RUNC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a hull VM may take to go away after its task or pod was removed.
const VM_GONE_TIMEOUT: Duration = Duration::from_secs(30);
/// The published figure this suite's ctr ratio is read against (not measured here).
pub const KATA_REFERENCE: &str = "Kata Containers 3 is reported at 3-6x runc for the same `ctr run --rm … echo`";

pub struct ContainerdBenchOptions {
    /// Samples of `ctr run` per runtime.
    pub ctr_runs: usize,
    /// Samples of CRI pod start per handler.
    pub pod_runs: usize,
    /// The directory holding `containerd-shim-hull-v2` (put first on containerd's PATH).
    pub shim_dir: PathBuf,
    /// The hull binary the shim starts (its VMM and its vhost-user backends).
    pub hull_bin: PathBuf,
}

/// The two runtimes compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Runtime {
    Runc,
    Hull,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Runtime::Runc => RUNC_HANDLER,
            Runtime::Hull => HULL_HANDLER,
        }
    }

    fn timeout(self) -> Duration {
        match self {
            Runtime::Runc => RUNC_TIMEOUT,
            Runtime::Hull => HULL_TIMEOUT,
        }
    }
}

/// The private containerd, the shim config its `hull` handler uses, and a CRI client.
struct Bench {
    // Dropped in this order: the client, then containerd (which removes its workloads), then the config.
    cri: Cri,
    ctd: Containerd,
    shim_config: PathBuf,
    _config_dir: TempDir,
}

impl Bench {
    fn start(s: &mut Section, opts: &ContainerdBenchOptions) -> Result<Bench> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(BenchError::env(
                "the containerd suite needs root (containerd, mounts, network namespaces)",
            ));
        }
        hull_tests::ensure_qemu_tools();
        let guest = hull_tests::guest_images();
        let config_dir = TempDir::new("bench-ctd").map_err(fail("creating a temporary directory"))?;
        let shim_config = config_dir.path().join("shim.toml");
        let ctd = Containerd::start(ContainerdOptions {
            // CRI wants a CNI config even for host-network pods.
            network: true,
            path_prepend: vec![opts.shim_dir.clone()],
            hull_config_path: Some(shim_config.clone()),
            log_level: "info".into(),
            ..Default::default()
        });
        let d = ctd.dir().to_path_buf();
        let toml = format!(
            "backend = \"auto\"\nkernel = {}\ninitrd = {}\nimage_cache = {}\nwork_dir = {}\nhull_binary = {}\n",
            toml_path(&guest.kernel),
            toml_path(&guest.initrd),
            toml_path(&d.join("hull-images")),
            toml_path(&d.join("hull-vms")),
            toml_path(&opts.hull_bin),
        );
        std::fs::write(&shim_config, &toml).map_err(fail(format!("writing {}", shim_config.display())))?;
        ctd.import_image(CTR_NAMESPACE, &busybox_image());
        let cri = ctd.cri_with_images();
        let version = Command::new("containerd")
            .arg("--version")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        s.note(format!("containerd: {}", String::from_utf8_lossy(&version).trim()));
        s.note(format!(
            "shim: {}",
            opts.shim_dir.join("containerd-shim-hull-v2").display()
        ));
        s.note(format!("hull: {}", opts.hull_bin.display()));
        s.note(format!(
            "guest: kernel {}, initrd {}",
            guest.kernel.display(),
            guest.initrd.display()
        ));
        for line in toml.lines() {
            s.note(format!("shim.toml: {line}"));
        }
        Ok(Bench {
            cri,
            ctd,
            shim_config,
            _config_dir: config_dir,
        })
    }

    /// One `ctr run --rm busybox <id> echo hello`; its time, spawn → ctr exited.
    fn ctr_run(&self, runtime: Runtime, id: &str) -> Result<Duration> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.ctd.socket())
            .args(["-n", CTR_NAMESPACE, "run", "--rm"]);
        if runtime == Runtime::Hull {
            cmd.args(["--runtime", HULL_RUNTIME_TYPE, "--runtime-config-path"])
                .arg(&self.shim_config);
        }
        cmd.args([BUSYBOX_IMAGE, id, "echo", "hello"]);
        let what = format!("ctr run ({}, {id})", runtime.name());
        let (out, took) = run_timed(cmd, &what, runtime.timeout())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || stdout != "hello\n" {
            return Err(BenchError::failed(format!(
                "{what}: {}, stdout {:?}, stderr {:?}\n{}",
                out.status,
                hull_tests::tail(&stdout, 500),
                hull_tests::tail(&String::from_utf8_lossy(&out.stderr), 2000),
                self.ctd.report()
            )));
        }
        if runtime == Runtime::Hull {
            self.wait_no_vm(&what)?;
        }
        Ok(took)
    }

    /// The `ctr run` samples of one runtime; returns the median in ms.
    fn ctr_runs(&self, s: &mut Section, runtime: Runtime, runs: usize) -> Result<f64> {
        let tag = format!("bench-{}-{}", runtime.name(), std::process::id());
        let warm = self.ctr_run(runtime, &format!("{tag}-warmup"))?;
        s.note(format!("warm-up run (untimed): {:.0} ms", ms(warm)));
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs {
            samples.push(ms(self.ctr_run(runtime, &format!("{tag}-{i}"))?));
        }
        let median = Summary::of(&samples).map(|x| x.median).unwrap_or(f64::NAN);
        s.metric("end to end (spawn → ctr run --rm exited)", "ms", samples);
        s.note("ctr creates, starts, waits for and deletes the container (--rm); stdout checked to be `hello`");
        if runtime == Runtime::Hull {
            s.note(format!("VM backend: {}", self.backend_text()));
            s.note("after each sample the VM's processes are awaited gone (untimed)");
        }
        Ok(median)
    }

    /// One pod: RunPodSandbox → CreateContainer → StartContainer, timed per call; then (untimed) the container
    /// is checked running and the pod stopped and removed. Returns the three call times.
    fn pod_start(&self, runtime: Runtime, name: &str) -> Result<[Duration; 3]> {
        let handler = runtime.name();
        let cri_err = |e: hull_tests::cri::CriError| {
            BenchError::failed(format!("pod {name} ({handler}): {e}\n{}", self.ctd.report()))
        };
        let t0 = Instant::now();
        let pod = self
            .cri
            .run_pod_sandbox(handler, name, PodNetwork::Host)
            .map_err(cri_err)?;
        let guard = PodGuard {
            cri: &self.cri,
            id: pod.id.clone(),
        };
        let t1 = Instant::now();
        let cid = self
            .cri
            .create_container(&pod, "sleeper", BUSYBOX_IMAGE, &["sleep", "3600"])
            .map_err(cri_err)?;
        let t2 = Instant::now();
        self.cri.start_container(&cid).map_err(cri_err)?;
        let t3 = Instant::now();
        let ls = self.ctd.ctr_in(CRI_NAMESPACE, &["tasks", "ls"]);
        if task_status(&ls.stdout, &cid) != Some("RUNNING") {
            return Err(BenchError::failed(format!(
                "pod {name} ({handler}): container {cid} is not RUNNING after StartContainer:\n{}",
                ls.stdout
            )));
        }
        guard.remove().map_err(cri_err)?;
        if runtime == Runtime::Hull {
            self.wait_no_vm(&format!("pod {name}"))?;
        }
        Ok([t1 - t0, t2 - t1, t3 - t2])
    }

    /// The pod-start samples of one handler; returns the median of the totals in ms.
    fn pod_starts(&self, s: &mut Section, runtime: Runtime, runs: usize) -> Result<f64> {
        let tag = format!("bench-{}-{}", runtime.name(), std::process::id());
        let warm = self.pod_start(runtime, &format!("{tag}-warmup"))?;
        s.note(format!("warm-up pod (untimed): {:.0} ms", ms(warm.iter().sum())));
        let mut calls: [Vec<f64>; 3] = Default::default();
        let mut total = Vec::with_capacity(runs);
        for i in 0..runs {
            let t = self.pod_start(runtime, &format!("{tag}-{i}"))?;
            total.push(ms(t.iter().sum()));
            for (v, d) in calls.iter_mut().zip(t) {
                v.push(ms(d));
            }
        }
        let median = Summary::of(&total).map(|x| x.median).unwrap_or(f64::NAN);
        s.metric("pod start (RunPodSandbox → StartContainer returned)", "ms", total);
        for (label, v) in ["  RunPodSandbox", "  CreateContainer", "  StartContainer"]
            .into_iter()
            .zip(calls)
        {
            s.metric(label, "ms", v);
        }
        s.note("host-network pods (containerd's own netns); container `sleep 3600` from the busybox image");
        s.note("checked RUNNING with `ctr -n k8s.io tasks ls`, then StopPodSandbox + RemovePodSandbox (untimed)");
        if runtime == Runtime::Hull {
            s.note(format!("VM backend: {}", self.backend_text()));
        }
        Ok(median)
    }

    /// The host memory of one running hull pod's VM processes.
    fn pod_memory(&self, s: &mut Section, samples: usize) -> Result<()> {
        let name = format!("bench-mem-{}", std::process::id());
        let cri_err = |e: hull_tests::cri::CriError| BenchError::failed(format!("pod {name}: {e}"));
        let pod = self
            .cri
            .run_pod_sandbox(HULL_HANDLER, &name, PodNetwork::Host)
            .map_err(cri_err)?;
        let guard = PodGuard {
            cri: &self.cri,
            id: pod.id.clone(),
        };
        let cid = self
            .cri
            .create_container(&pod, "sleeper", BUSYBOX_IMAGE, &["sleep", "3600"])
            .map_err(cri_err)?;
        self.cri.start_container(&cid).map_err(cri_err)?;
        // Let the guest finish what it does right after the container started.
        std::thread::sleep(Duration::from_secs(3));
        let (mut rss, mut pss, mut outside) = (Vec::new(), Vec::new(), Vec::new());
        let mut last = Vec::new();
        for i in 0..samples {
            if i > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            let procs: Vec<VmProcess> = vm_pids_under(self.ctd.dir())
                .into_iter()
                .filter_map(VmProcess::read)
                .collect();
            if procs.is_empty() {
                return Err(BenchError::failed(format!("no VM process found for pod {name}")));
            }
            rss.push(procs.iter().map(|p| p.rss_kib).sum::<u64>() as f64 / 1024.0);
            pss.push(procs.iter().map(|p| p.pss_kib).sum::<u64>() as f64 / 1024.0);
            outside.push(
                procs
                    .iter()
                    .map(|p| p.rss_kib.saturating_sub(p.guest_rss_kib))
                    .sum::<u64>() as f64
                    / 1024.0,
            );
            last = procs;
        }
        let shim_rss: u64 = self
            .ctd
            .shim_pids()
            .into_iter()
            .filter_map(|p| status_kib(p, "VmRSS"))
            .sum();
        guard.remove().map_err(cri_err)?;
        self.wait_no_vm(&format!("pod {name}"))?;

        let median = |v: &[f64]| Summary::of(v).map(|x| x.median).unwrap_or(f64::NAN);
        let (rss_median, outside_median) = (median(&rss), median(&outside));
        s.metric("VM processes, sum of RSS", "MiB", rss);
        s.metric("VM processes, sum of PSS", "MiB", pss);
        s.metric("VM processes, RSS outside guest RAM", "MiB", outside);
        let vmm = last.iter().find(|p| p.role != Role::Backend);
        s.note(format!(
            "backend: {} (shim log: {})",
            vmm.map(|p| p.role.describe(&p.args))
                .unwrap_or_else(|| "no VMM process found".into()),
            self.backend_text()
        ));
        for p in &last {
            s.note(format!(
                "pid {:>7} {:<28} RSS {:>7.1} MiB  PSS {:>7.1} MiB  of which guest RAM {:>7.1} MiB",
                p.pid,
                p.role.label(),
                p.rss_kib as f64 / 1024.0,
                p.pss_kib as f64 / 1024.0,
                p.guest_rss_kib as f64 / 1024.0
            ));
        }
        s.note(
            "RSS double-counts the guest memory pages that QEMU and the vhost-user backends both map (shared \
                memfd); PSS splits them",
        );
        s.note(format!(
            "not included: the pod's containerd-shim-hull-v2, RSS {:.1} MiB",
            shim_rss as f64 / 1024.0
        ));
        let yaml = hull_tests::repo_root().join("resources/runtimeclass.yaml");
        let guest_mib = last
            .iter()
            .find(|p| p.role == Role::Qemu)
            .and_then(|p| qemu_memory_mib(&p.args));
        match std::fs::read_to_string(&yaml)
            .ok()
            .as_deref()
            .and_then(overhead_memory_mib)
        {
            Some(mib) => {
                let covers = |need: f64| if mib >= need { "covers" } else { "does NOT cover" };
                s.note(format!(
                    "resources/runtimeclass.yaml overhead.podFixed.memory = {mib} MiB: {} the measured RSS sum \
                     (median {rss_median:.1} MiB, {:+.1} MiB of headroom)",
                    covers(rss_median),
                    mib - rss_median
                ));
                if let Some(g) = guest_mib {
                    let worst = g + outside_median;
                    s.note(format!(
                        "with all {g:.0} MiB of guest RAM touched: {g:.0} + {outside_median:.1} (outside guest RAM) = \
                         {worst:.1} MiB, which {mib} MiB {} ({:+.1} MiB)",
                        covers(worst),
                        mib - worst
                    ));
                }
            }
            None => s.note(format!("no overhead.podFixed.memory found in {}", yaml.display())),
        }
        Ok(())
    }

    /// Waits until no VM process of this containerd is left (the task or pod was removed).
    fn wait_no_vm(&self, what: &str) -> Result<()> {
        let t0 = Instant::now();
        loop {
            let left = vm_pids_under(self.ctd.dir());
            if left.is_empty() {
                return Ok(());
            }
            if t0.elapsed() > VM_GONE_TIMEOUT {
                return Err(BenchError::failed(format!(
                    "{what}: VM processes {left:?} still run {VM_GONE_TIMEOUT:?} after removal"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the shim logged about its backend choice, or how `auto` chooses on this machine.
    fn backend_text(&self) -> String {
        let lines = backend_lines(&self.ctd.log());
        if lines.is_empty() {
            let auto = if hull_tests::hardware_kvm() {
                "hull (hardware KVM)"
            } else {
                "qemu"
            };
            format!("auto (not in containerd's log; {auto} on this machine by /dev/kvm and /sys/module/kvm_pvm)")
        } else {
            lines.join("; ")
        }
    }
}

/// Stops and removes a pod when the sample is done (or failed half-way).
struct PodGuard<'a> {
    cri: &'a Cri,
    id: String,
}

impl PodGuard<'_> {
    fn remove(self) -> std::result::Result<(), hull_tests::cri::CriError> {
        let r = self
            .cri
            .stop_pod_sandbox(&self.id)
            .and_then(|()| self.cri.remove_pod_sandbox(&self.id));
        std::mem::forget(self);
        r
    }
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        let _ = self.cri.stop_pod_sandbox(&self.id);
        let _ = self.cri.remove_pod_sandbox(&self.id);
    }
}

/// Runs the suite: setup, ctr run (runc, hull), pod start (runc, hull), one hull pod's memory, the ratios.
pub fn run(opts: &ContainerdBenchOptions) -> Vec<Section> {
    let mut sections = Vec::new();
    let mut bench = None;
    sections.push(run_section(
        "containerd.setup",
        "private containerd, hull shim config, busybox and pause images",
        |s| {
            bench = Some(Bench::start(s, opts)?);
            Ok(())
        },
    ));
    let Some(bench) = bench else { return sections };
    let mut medians = [[None; 2]; 2];
    for (row, kind) in ["ctr", "pod"].into_iter().enumerate() {
        for (col, runtime) in [Runtime::Runc, Runtime::Hull].into_iter().enumerate() {
            let (id, title) = match kind {
                "ctr" => (
                    format!("containerd.ctr_{}", runtime.name()),
                    match runtime {
                        Runtime::Runc => "ctr run --rm busybox echo hello, default runtime (runc)".to_string(),
                        Runtime::Hull => format!("ctr run --rm busybox echo hello, --runtime {HULL_RUNTIME_TYPE}"),
                    },
                ),
                _ => (
                    format!("containerd.pod_{}", runtime.name()),
                    format!(
                        "CRI pod start, handler {}: RunPodSandbox → CreateContainer → StartContainer",
                        runtime.name()
                    ),
                ),
            };
            sections.push(run_section(&id, &title, |s| {
                medians[row][col] = Some(match kind {
                    "ctr" => bench.ctr_runs(s, runtime, opts.ctr_runs)?,
                    _ => bench.pod_starts(s, runtime, opts.pod_runs)?,
                });
                Ok(())
            }));
        }
    }
    sections.push(run_section(
        "containerd.pod_memory",
        "host memory of one running hull pod's VM processes",
        |s| bench.pod_memory(s, 5),
    ));
    sections.push(ratio_section(medians));
    drop(bench);
    sections
}

/// hull/runc of the medians for `ctr run` and pod start, with the Kata reference beside the ctr ratio.
fn ratio_section(medians: [[Option<f64>; 2]; 2]) -> Section {
    let mut s = Section::start(
        "containerd.ratio",
        "hull / runc through containerd, ratio of the medians",
    );
    s.note(format!(
        "{:<36} {:>10} {:>10} {:>10}",
        "", "runc ms", "hull ms", "hull/runc"
    ));
    for (label, [runc, hull]) in ["ctr run --rm … echo hello", "CRI pod start"].into_iter().zip(medians) {
        let show = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
        let r = ratio(runc, hull);
        s.note(format!(
            "{label:<36} {:>10} {:>10} {:>10}",
            show(runc),
            show(hull),
            r.map(|r| format!("{r:.1}x")).unwrap_or_else(|| "-".into())
        ));
        if let Some(r) = r {
            s.metric(format!("{label}: hull / runc"), "x", vec![r]);
        }
    }
    s.note(format!("reference: {KATA_REFERENCE} (published, not measured here)"));
    s.note("hull's figures include booting Linux in the VM; with backend auto that is QEMU TCG on this machine");
    s.finish();
    s
}

/// hull / runc when both are there and runc's is positive.
fn ratio(runc: Option<f64>, hull: Option<f64>) -> Option<f64> {
    match (runc, hull) {
        (Some(r), Some(h)) if r > 0.0 && r.is_finite() && h.is_finite() => Some(h / r),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Processes

/// What a VM process of a hull pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Qemu,
    HullVmm,
    /// `hull vhost-user …`: a device backend for QEMU.
    Backend,
}

impl Role {
    /// From `/proc/PID/comm` and the arguments; `None` for anything that is not a VM process.
    fn of(comm: &str, args: &[String]) -> Option<Role> {
        match comm.trim() {
            c if c.starts_with("qemu-system") => Some(Role::Qemu),
            "hull" if args.iter().any(|a| a == "vhost-user") => Some(Role::Backend),
            "hull" | "hull-vmm" => Some(Role::HullVmm),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Role::Qemu => "qemu (VMM)",
            Role::HullVmm => "hull (VMM)",
            Role::Backend => "hull vhost-user (backend)",
        }
    }

    /// The backend in words, with QEMU's accelerator from its arguments.
    fn describe(self, args: &[String]) -> String {
        match self {
            Role::Qemu => {
                let accel = args
                    .windows(2)
                    .filter(|w| ["-accel", "-machine", "-M"].contains(&w[0].as_str()))
                    .find_map(|w| ["tcg", "kvm"].into_iter().find(|a| w[1].contains(a)))
                    .unwrap_or("accelerator not given");
                format!("qemu, {accel}, with hull vhost-user device backends")
            }
            Role::HullVmm => "hull's own VMM".into(),
            Role::Backend => "hull vhost-user backend".into(),
        }
    }
}

/// One VM process and its memory.
struct VmProcess {
    pid: u32,
    role: Role,
    args: Vec<String>,
    rss_kib: u64,
    pss_kib: u64,
    /// Resident pages of the guest's RAM (the shared memfd QEMU and the backends map).
    guest_rss_kib: u64,
}

impl VmProcess {
    fn read(pid: u32) -> Option<VmProcess> {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let args = cmdline(pid);
        let role = Role::of(&comm, &args)?;
        let rss_kib = status_kib(pid, "VmRSS")?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let pss_kib = kib_field(&rollup, "Pss").unwrap_or(0);
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let guest_rss_kib = guest_memory_rss_kib(&crate::smaps::parse_smaps(&smaps));
        Some(VmProcess {
            pid,
            role,
            args,
            rss_kib,
            pss_kib,
            guest_rss_kib,
        })
    }
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into())
                .collect()
        })
        .unwrap_or_default()
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, key)
}

/// Resident KiB of the guest-RAM mappings: QEMU's `memory-backend-memfd` shows as `/memfd:NAME (deleted)` in
/// QEMU and in every vhost-user backend that mapped it. (hull's own VMM keeps guest RAM anonymous: 0 there.)
fn guest_memory_rss_kib(maps: &[crate::smaps::Mapping]) -> u64 {
    maps.iter()
        .filter(|m| m.path.starts_with("/memfd:"))
        .map(|m| m.rss_kib)
        .sum()
}

/// QEMU's `-m SIZE` in MiB (plain MiB, or with an M or G suffix).
fn qemu_memory_mib(args: &[String]) -> Option<f64> {
    let v = args.windows(2).find(|w| w[0] == "-m")?[1]
        .split(',')
        .next()?
        .to_string();
    let (num, mult) = match v.strip_suffix(['G', 'g']) {
        Some(n) => (n, 1024.0),
        None => (v.strip_suffix(['M', 'm']).unwrap_or(&v), 1.0),
    };
    num.parse::<f64>()
        .ok()
        .filter(|m| m.is_finite() && *m > 0.0)
        .map(|m| m * mult)
}

/// `Key:   1234 kB` from /proc's status or smaps_rollup text.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().strip_suffix("kB")?.trim().parse().ok())?
    })
}

/// VM processes (QEMU, hull and its backends) whose arguments name a path under `dir` (the shim puts each VM's
/// sockets and files in its work_dir, inside the containerd directory).
fn vm_pids_under(dir: &Path) -> Vec<u32> {
    // With the trailing slash, `/tmp/x-1` does not match the files of `/tmp/x-10`.
    let needle = format!("{}/", dir.to_string_lossy());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let args = cmdline(pid);
            Role::of(&comm, &args).is_some() && args.iter().any(|a| a.contains(&needle))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Pure helpers

/// The backend lines the shim logged (`VM backend Qemu (why)`), each once, in order.
pub fn backend_lines(log: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in log.lines() {
        let Some(at) = line.find("VM backend ") else { continue };
        let rest = &line[at + "VM backend ".len()..];
        // containerd quotes the message: msg="VM backend Qemu (…)" — stop at the closing quote.
        let text = rest.split('"').next().unwrap_or(rest).trim().replace("\\\"", "");
        if !text.is_empty() && !out.contains(&text) {
            out.push(text);
        }
    }
    out
}

/// The status column of `ctr tasks ls` for task `id` (`TASK PID STATUS` rows).
pub fn task_status<'a>(ls: &'a str, id: &str) -> Option<&'a str> {
    ls.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.as_slice() {
            [task, _pid, status] if *task == id => Some(*status),
            _ => None,
        }
    })
}

/// `overhead: podFixed: memory: "300Mi"` of a RuntimeClass, in MiB (Mi, Gi, M, G and plain bytes).
pub fn overhead_memory_mib(yaml: &str) -> Option<f64> {
    let mut in_pod_fixed = false;
    for line in yaml.lines() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.starts_with("podFixed:") {
            in_pod_fixed = true;
        } else if in_pod_fixed {
            if let Some(v) = l.strip_prefix("memory:") {
                return quantity_mib(v.trim().trim_matches('"').trim_matches('\''));
            }
        }
    }
    None
}

/// A Kubernetes memory quantity in MiB.
fn quantity_mib(q: &str) -> Option<f64> {
    const MI: f64 = 1024.0 * 1024.0;
    let units: [(&str, f64); 6] = [
        ("Ki", 1024.0),
        ("Mi", MI),
        ("Gi", MI * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| q.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((q, 1.0));
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v * mult / MI)
}

fn toml_path(p: &Path) -> String {
    serde_json::Value::String(p.to_string_lossy().into_owned()).to_string()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `cmd` (stdin null, stdout and stderr captured) to completion or `timeout`; on timeout the child is
/// killed by pid. The time is spawn → exited and its output read.
fn run_timed(mut cmd: Command, what: &str, timeout: Duration) -> Result<(Output, Duration)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(fail(format!("starting {what}")))?;
    let pid = child.id() as libc::pid_t;
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        let status = child.wait();
        let _ = tx.send((status, v, t0.elapsed()));
    });
    let got = rx.recv_timeout(timeout);
    if got.is_err() {
        // SAFETY: kill(2) on our own child, not yet reaped (the waiter would have sent its result).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let _ = waiter.join();
    let stderr = err_reader.join().unwrap_or_default();
    match got {
        Ok((Ok(status), stdout, took)) => Ok((Output { status, stdout, stderr }, took)),
        Ok((Err(e), _, _)) => Err(BenchError::failed(format!("waiting for {what}: {e}"))),
        Err(_) => Err(BenchError::failed(format!(
            "{what} did not finish within {timeout:?} (killed)\nstderr tail:\n{}",
            hull_tests::tail(&String::from_utf8_lossy(&stderr), 2000)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_lines_come_from_the_shim_log_once_each() {
        let log = "\
time=\"t1\" level=info msg=\"starting containerd\"
time=\"t2\" level=info msg=\"VM backend Qemu (/dev/kvm is kvm_pvm: no guest user space)\" runtime=io.containerd.hull.v2
time=\"t3\" level=info msg=\"VM backend Qemu (/dev/kvm is kvm_pvm: no guest user space)\" runtime=io.containerd.hull.v2
[INFO] VM backend Hull (hardware KVM)
";
        assert_eq!(
            backend_lines(log),
            ["Qemu (/dev/kvm is kvm_pvm: no guest user space)", "Hull (hardware KVM)"]
        );
        assert!(backend_lines("nothing here\n").is_empty());
    }

    #[test]
    fn task_status_reads_the_row_of_the_task() {
        let ls = "TASK        PID     STATUS\nabc123      4242    RUNNING\nabc         17      STOPPED\n";
        assert_eq!(task_status(ls, "abc123"), Some("RUNNING"));
        assert_eq!(task_status(ls, "abc"), Some("STOPPED"));
        assert_eq!(task_status(ls, "ab"), None);
        assert_eq!(task_status("", "abc"), None);
    }

    #[test]
    fn runtimeclass_overhead_memory_is_read_in_mib() {
        let yaml = "# memory: \"1Gi\" in a comment\nkind: RuntimeClass\nhandler: hull\noverhead:\n  podFixed:\n    \
                    memory: \"300Mi\"\n    cpu: \"250m\"\n";
        assert_eq!(overhead_memory_mib(yaml), Some(300.0));
        assert_eq!(
            overhead_memory_mib("overhead:\n  podFixed:\n    memory: 1Gi\n"),
            Some(1024.0)
        );
        assert_eq!(overhead_memory_mib("overhead:\n  podFixed:\n    cpu: 1\n"), None);
        assert_eq!(quantity_mib("524288Ki"), Some(512.0));
        assert_eq!(quantity_mib("1048576"), Some(1.0));
        assert_eq!(quantity_mib("-1Mi"), None);
        assert_eq!(quantity_mib("lots"), None);
    }

    #[test]
    fn kib_fields_and_roles_are_read_from_proc_text() {
        let status = "Name:\thull\nVmRSS:\t   12345 kB\nVmHWM:\t 20000 kB\n";
        assert_eq!(kib_field(status, "VmRSS"), Some(12345));
        assert_eq!(kib_field(status, "VmSwap"), None);
        assert_eq!(kib_field("Pss:   77 kB\nPss_Anon: 5 kB\n", "Pss"), Some(77));
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Role::of("hull\n", &args(&["hull", "vhost-user", "blk"])),
            Some(Role::Backend)
        );
        assert_eq!(
            Role::of("hull", &args(&["hull", "--api-sock", "x"])),
            Some(Role::HullVmm)
        );
        assert_eq!(Role::of("qemu-system-x86", &args(&["qemu"])), Some(Role::Qemu));
        assert_eq!(Role::of("bash", &args(&["bash"])), None);
        let qemu = args(&["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg"]);
        assert!(Role::Qemu.describe(&qemu).contains("tcg"));
    }

    #[test]
    fn guest_ram_is_the_memfd_mappings_and_qemu_m_is_read() {
        let smaps = "\
7f0000000000-7f0010000000 rw-s 00000000 00:01 1234    /memfd:mem (deleted)
Size:             262144 kB
Rss:               90000 kB
7f0010000000-7f0010100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 512 kB
";
        assert_eq!(guest_memory_rss_kib(&crate::smaps::parse_smaps(smaps)), 90000);
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(qemu_memory_mib(&args(&["qemu", "-smp", "1", "-m", "256"])), Some(256.0));
        assert_eq!(qemu_memory_mib(&args(&["qemu", "-m", "1G"])), Some(1024.0));
        assert_eq!(qemu_memory_mib(&args(&["qemu", "-m", "512M,slots=2"])), Some(512.0));
        assert_eq!(qemu_memory_mib(&args(&["qemu", "-m"])), None);
        assert_eq!(qemu_memory_mib(&args(&["qemu", "-m", "x"])), None);
    }

    #[test]
    fn ratio_needs_both_medians() {
        assert_eq!(ratio(Some(100.0), Some(450.0)), Some(4.5));
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(0.0), Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), Some(f64::NAN)), None);
    }
}
