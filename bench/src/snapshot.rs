//! The `snapshot` suite: what `PUT /snapshot/create` and `PUT /snapshot/load` cost.
//!
//! Per run, with the tiny `memtouch` guest (64 MiB, dirty-page tracking on) waiting and printing a dot
//! every ~1.6 ms: pause, a Full snapshot (request → response) and its file sizes, resume for ~0.3 s,
//! pause, a Diff snapshot and the bytes it allocates; then a new hull loads the Full snapshot with the
//! File backend and `resume_vm`: load request → response, load request → the guest's first dot (its
//! first instructions after the restore, within one dot period), hull's RSS right after the load, and
//! again once the guest has written every page of its memory; then another new hull loads it with the
//! Uffd backend, its pages served by `hull-uffd-handler` from the same file: load request → response and
//! → the guest's first dot.
//!
//! Every hull runs through `hull_tests::Hull` (killed and cleaned up when dropped); every wait has a
//! deadline; guest output is only searched.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use hull_tests::{tiny_guest, ApiClient, Hull, TempDir};
use serde_json::json;

use crate::error::{fail, BenchError, Result};
use crate::report::{run_section, Section};
use crate::smaps;

const TIMEOUT: Duration = Duration::from_secs(30);
const GUEST_MIB: u64 = 64;

pub fn run(runs: usize) -> Vec<Section> {
    vec![
        run_section(
            "snapshot",
            "tiny guest, 64 MiB, dirty tracking on: create (Full, Diff), sizes, load (File, Uffd) → first guest instruction, RSS",
            |s| measure(s, runs),
        ),
        run_section(
            "template_clones",
            "restore-based fast start through hull_runtime (kvm backend, unjailed): a booted VM against a clone of a template",
            |s| clones(s, runs),
        ),
    ]
}

/// Waits for a complete `devcfg tick=` line in the VM's console; the time it was seen.
fn devcfg_line(vm: &mut dyn hull_runtime::backend::Vm) -> Result<Instant> {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(vm.console_log()).unwrap_or_default();
        if text.contains("devcfg tick=") && text.ends_with('\n') {
            return Ok(Instant::now());
        }
        if !vm.alive() || t0.elapsed() > TIMEOUT {
            return Err(BenchError::failed(format!("no devcfg line; console:\n{text}")));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A devcfg.elf VM of 64 MiB in `dir`: with `drives`, or (none) with one read-only and one read-write slot.
fn launch<'a>(
    (hull, kernel, initrd): (&'a Path, &'a Path, &'a Path),
    dir: &'a Path,
    drives: &'a [hull_runtime::backend::Drive],
) -> hull_runtime::backend::VmLaunchConfig<'a> {
    hull_runtime::backend::VmLaunchConfig {
        hull,
        kernel,
        initrd,
        cpus: 1,
        mem_mib: GUEST_MIB as u32,
        drives,
        slots: usize::from(drives.is_empty()),
        rw_slots: usize::from(drives.is_empty()),
        tap: None,
        mac: None,
        netns: None,
        cmdline_extra: String::new(),
        jail: None,
        agent_policy: hull_agent_protocol::policy::Policy::hull_run(),
        dir,
    }
}

/// The template-clone section: per run, a VM booted through the kvm backend with a read-only and a
/// read-write disk (start → the guest's first line), and a clone of a template of the same VM (restore:
/// spawn + `/snapshot/load`; then both disks attached and resumed; → the guest's first line after it).
fn clones(s: &mut Section, runs: usize) -> Result<()> {
    use hull_runtime::backend::{self, BackendKind, Drive};
    use hull_runtime::image::RootfsImage;
    use hull_runtime::template::Template;
    let work = TempDir::new("bench-clones").map_err(fail("creating a temporary directory"))?;
    let w = work.path();
    let hull = hull_tests::hull_bin();
    let kernel = tiny_guest("devcfg.elf");
    let initrd = w.join("initrd");
    std::fs::write(&initrd, b"unused").map_err(fail("writing the initrd"))?;
    let disk = |name: &str| -> Result<std::path::PathBuf> {
        let p = w.join(name);
        std::fs::write(&p, vec![0u8; 1 << 20]).map_err(fail("writing a disk image"))?;
        Ok(p)
    };
    let (ro, rw) = (disk("ro.img")?, disk("rw.img")?);
    let files = (hull.as_path(), kernel.as_path(), initrd.as_path());
    let drives = [
        Drive {
            id: "ro".into(),
            image: RootfsImage {
                path: ro.clone(),
                fstype: "ext4",
            },
            read_only: true,
        },
        Drive {
            id: "rw".into(),
            image: RootfsImage {
                path: rw.clone(),
                fstype: "ext4",
            },
            read_only: false,
        },
    ];
    let tdir = w.join("template-vm");
    std::fs::create_dir(&tdir).map_err(fail("creating a directory"))?;
    let template = Template::create(&launch(files, &tdir, &[]), &w.join("template"), &mut |vm| {
        devcfg_line(vm).map(drop).map_err(|e| e.to_string())
    })
    .map_err(fail("making the template"))?;
    let (mut boot, mut restore, mut attach, mut first) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let d = w.join(format!("boot{i}"));
        std::fs::create_dir(&d).map_err(fail("creating a directory"))?;
        let t0 = Instant::now();
        let mut vm = backend::start(BackendKind::Kvm, &launch(files, &d, &drives)).map_err(fail("booting"))?;
        boot.push(ms(devcfg_line(vm.as_mut())?.duration_since(t0)));
        vm.stop(Duration::ZERO);
        drop(vm);

        let d = w.join(format!("clone{i}"));
        std::fs::create_dir(&d).map_err(fail("creating a directory"))?;
        let t0 = Instant::now();
        let mut vm = template
            .restore(&launch(files, &d, &[]), &[])
            .map_err(fail("restoring a clone"))?;
        let restored = t0.elapsed();
        vm.attach_disk("slot0", &ro, true).map_err(fail("attaching"))?;
        vm.attach_disk("wslot0", &rw, false).map_err(fail("attaching"))?;
        vm.resume().map_err(fail("resuming"))?;
        let resumed = t0.elapsed();
        // The clone's console starts empty: its first line is the first after the restore.
        first.push(ms(devcfg_line(vm.as_mut())?.duration_since(t0)));
        restore.push(ms(restored));
        attach.push(ms(resumed - restored));
        vm.stop(Duration::ZERO);
    }
    s.metric(
        "booted: start (spawn, configure, InstanceStart) → guest's first line",
        "ms",
        boot,
    );
    s.metric("clone: spawn + /snapshot/load (restore)", "ms", restore);
    s.metric("clone: 2 disks attached + resumed", "ms", attach);
    s.metric("clone: restore start → guest's first line", "ms", first);
    s.note(
        "the tiny guest boots in milliseconds, so here a clone is no faster than a boot: the figure is what \
         the restore path costs. With Linux the saving is the guest's boot to its agent (about 0.1-0.2 s on \
         hardware KVM, about a minute of emulated ring 0 under kvm_pvm), which only hardware KVM can show \
         with the agent answering",
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn request(api: &ApiClient, method: &str, uri: &str, body: serde_json::Value) -> Result<Duration> {
    let t0 = Instant::now();
    let resp = api
        .request(method, uri, Some(&body.to_string()))
        .map_err(fail(format!("{method} {uri}")))?;
    let took = t0.elapsed();
    if !resp.is_success() {
        return Err(BenchError::failed(format!(
            "{method} {uri} {body} answered {} {}",
            resp.status, resp.body
        )));
    }
    Ok(took)
}

fn rss_mib(hull: &Hull) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", hull.pid())).ok()?;
    smaps::vm_rss_kib(&status).map(|kib| kib as f64 / 1024.0)
}

/// Bytes the file occupies on disk (a diff is sparse).
fn allocated(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(fail(format!("stat {}", path.display())))?;
    Ok(meta.blocks() * 512)
}

#[derive(Default)]
struct Samples {
    full_ms: Vec<f64>,
    diff_ms: Vec<f64>,
    state_kib: Vec<f64>,
    mem_mib: Vec<f64>,
    diff_mib: Vec<f64>,
    load_ms: Vec<f64>,
    first_ms: Vec<f64>,
    rss_before: Vec<f64>,
    rss_after: Vec<f64>,
    uffd_load_ms: Vec<f64>,
    uffd_first_ms: Vec<f64>,
}

fn measure(s: &mut Section, runs: usize) -> Result<()> {
    let mut x = Samples::default();
    for _ in 0..runs {
        one_run(&mut x)?;
    }
    s.metric("PUT /snapshot/create Full (request → response)", "ms", x.full_ms);
    s.metric("PUT /snapshot/create Diff after ~0.3 s running", "ms", x.diff_ms);
    s.metric("state file", "KiB", x.state_kib);
    s.metric("Full memory file (allocated)", "MiB", x.mem_mib);
    s.metric("Diff memory file (allocated; 64 MiB apparent)", "MiB", x.diff_mib);
    s.metric(
        "PUT /snapshot/load File, resume_vm (request → response)",
        "ms",
        x.load_ms,
    );
    s.metric(
        "load request → guest's first output (first instructions)",
        "ms",
        x.first_ms,
    );
    s.metric(
        "PUT /snapshot/load Uffd (hull-uffd-handler), resume_vm (request → response)",
        "ms",
        x.uffd_load_ms,
    );
    s.metric(
        "Uffd: load request → guest's first output (first instructions)",
        "ms",
        x.uffd_first_ms,
    );
    s.metric("restored hull VmRSS right after the load", "MiB", x.rss_before);
    s.metric(
        "restored hull VmRSS after the guest wrote all its RAM",
        "MiB",
        x.rss_after,
    );
    s.note(
        "the guest prints a dot every ~1.6 ms of TSC time, so `first output` is late by up to one dot period; \
         memory is mapped MAP_PRIVATE from the file, so the RSS grows only with what the guest touches",
    );
    Ok(())
}

fn one_run(x: &mut Samples) -> Result<()> {
    let dir = TempDir::new("bench-snap").map_err(fail("creating a temporary directory"))?;
    let config = json!({
        "boot-source": { "kernel_image_path": tiny_guest("memtouch.elf"), "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": GUEST_MIB, "track_dirty_pages": true },
    });
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, config.to_string()).map_err(fail("writing the config"))?;
    let source = Hull::with_api("bench-snap-src", &["--config-file", cfg.to_str().unwrap_or_default()]);
    source
        .wait_for_output("memtouch waiting", TIMEOUT)
        .ok_or_else(|| BenchError::failed(format!("the guest did not start\n{}", source.report())))?;
    std::thread::sleep(Duration::from_millis(200));
    let api = source.api();
    let (state, mem, diff_state, diff) = (
        dir.path().join("snap"),
        dir.path().join("mem"),
        dir.path().join("diff.snap"),
        dir.path().join("diff.mem"),
    );
    request(&api, "PATCH", "/vm", json!({ "state": "Paused" }))?;
    x.full_ms.push(ms(request(
        &api,
        "PUT",
        "/snapshot/create",
        json!({ "snapshot_path": state, "mem_file_path": mem, "snapshot_type": "Full" }),
    )?));
    request(&api, "PATCH", "/vm", json!({ "state": "Resumed" }))?;
    std::thread::sleep(Duration::from_millis(300));
    request(&api, "PATCH", "/vm", json!({ "state": "Paused" }))?;
    x.diff_ms.push(ms(request(
        &api,
        "PUT",
        "/snapshot/create",
        json!({ "snapshot_path": diff_state, "mem_file_path": diff, "snapshot_type": "Diff" }),
    )?));
    drop(source);
    let state_len = std::fs::metadata(&state).map_err(fail("stat the state file"))?.len();
    x.state_kib.push(state_len as f64 / 1024.0);
    x.mem_mib.push(mib(allocated(&mem)?));
    x.diff_mib.push(mib(allocated(&diff)?));

    let (restored, t0, load) = load_into_new_hull("bench-snap-dst", &state, "File", &mem)?;
    x.load_ms.push(ms(load));
    if let Some(rss) = rss_mib(&restored) {
        x.rss_before.push(rss);
    }
    restored
        .wait_for_output(".", TIMEOUT)
        .ok_or_else(|| BenchError::failed(format!("no output after the load\n{}", restored.report())))?;
    x.first_ms.push(ms(t0.elapsed()));
    restored
        .wait_for_output("memtouch touched", TIMEOUT)
        .ok_or_else(|| BenchError::failed(format!("the guest did not touch its memory\n{}", restored.report())))?;
    if let Some(rss) = rss_mib(&restored) {
        x.rss_after.push(rss);
    }
    drop(restored);
    load_with_uffd(dir.path(), &state, &mem, x)
}

/// A new hull that loads `state` with `resume_vm` and the memory backend `backend` at `path`: the hull,
/// when the load request went out, and how long it took to answer.
fn load_into_new_hull(name: &str, state: &Path, backend: &str, path: &Path) -> Result<(Hull, Instant, Duration)> {
    let restored = Hull::with_api(name, &[]);
    let api = restored.api();
    let t0 = Instant::now();
    let load = request(
        &api,
        "PUT",
        "/snapshot/load",
        json!({ "snapshot_path": state, "mem_backend": { "backend_type": backend, "backend_path": path }, "resume_vm": true }),
    )?;
    Ok((restored, t0, load))
}

/// The same Full snapshot loaded with the Uffd backend: `hull-uffd-handler` serves its pages.
fn load_with_uffd(dir: &Path, state: &Path, mem: &Path, x: &mut Samples) -> Result<()> {
    let handler_bin = hull_tests::hull_bin().with_file_name("hull-uffd-handler");
    let socket = dir.join("uffd.sock");
    let handler = std::process::Command::new(&handler_bin)
        .arg("--socket")
        .arg(&socket)
        .arg("--mem-file")
        .arg(mem)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(fail(format!("starting {}", handler_bin.display())))?;
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _handler = Reap(handler);
    let deadline = Instant::now() + TIMEOUT;
    while !socket.exists() {
        if Instant::now() > deadline {
            return Err(BenchError::failed(
                "hull-uffd-handler did not create its socket".to_string(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (restored, t0, load) = load_into_new_hull("bench-snap-uffd", state, "Uffd", &socket)?;
    x.uffd_load_ms.push(ms(load));
    restored
        .wait_for_output(".", TIMEOUT)
        .ok_or_else(|| BenchError::failed(format!("no output after the Uffd load\n{}", restored.report())))?;
    x.uffd_first_ms.push(ms(t0.elapsed()));
    Ok(())
}
