//! containerd-shim-hull-v2 end to end, under a real containerd (Debian's 1.6) started by each test with a
//! private root, state and socket: `ctr run` (echo, exit status, `-t`, stdin), a detached task's exec, kill,
//! ps, metrics, pause/resume and delete; a CRI pod of two containers in one VM; CNI pod networking; and the
//! faults (the VMM or the shim killed). Every workload prints the guest kernel's `uname -r` to show it ran in
//! the microVM, and after every test no shim, VM process, mount, image or socket of it is left.
//!
//! The shim starts VMs through the `auto` backend: hull itself on hardware KVM, QEMU TCG with hull's device
//! backends here (software KVM). Needs root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, ContainerdOptions, Footprint, CRI_NAMESPACE, CTR_NAMESPACE, HULL_HANDLER};
use hull_tests::cri::PodNetwork;
use hull_tests::oci_image::{self, BUSYBOX_IMAGE};
use hull_tests::skip;

const RUNTIME: &str = "io.containerd.hull.v2";
const GUEST_RELEASE_SUFFIX: &str = "-hull";

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    ($test:expr) => {
        if !is_root() {
            skip($test, "needs root for containerd, mounts and network namespaces");
            return;
        }
    };
}

/// A containerd whose `hull` handler (and `ctr --runtime-config-path`) use a shim config keeping the image
/// cache and the VMs' directories inside the instance's private directory.
struct Setup {
    ctd: Containerd,
    shim_config: PathBuf,
    footprint: Footprint,
}

fn setup(network: bool) -> Setup {
    hull_tests::ensure_qemu_tools();
    // The guest kernel + initramfs with hull-agent (built by scripts/test.sh through resources/build-guest.sh).
    let cfg_dir = std::env::temp_dir().join(format!("hull-shim-test-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let shim_config = cfg_dir.join("shim.toml");
    let opts = ContainerdOptions {
        network,
        hull_config_path: Some(shim_config.clone()),
        ..Default::default()
    };
    let ctd = Containerd::start(opts);
    // The CRI tests' pods without CNI are hostNetwork pods: let them through as VMs without a NIC (the default
    // refuses them; `cri_host_namespaces_are_refused_by_name`).
    ctd.write_hull_shim_config(&shim_config, "host_network = \"isolated\"\n");
    let footprint = ctd.footprint();
    Setup {
        ctd,
        shim_config,
        footprint,
    }
}

fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Setup {
    fn ctr_run(&self, args: &[&str]) -> hull_tests::containerd::CmdOutput {
        let cfg = self.shim_config.to_string_lossy().to_string();
        let mut full = vec!["run", "--runtime", RUNTIME, "--runtime-config-path", &cfg];
        full.extend_from_slice(args);
        self.ctd.ctr(&full)
    }

    /// `ctr events` from now on, read with [`EventStream::collect`].
    fn events(&self) -> EventStream {
        let child = std::process::Command::new("ctr")
            .arg("--address")
            .arg(self.ctd.socket())
            .arg("events")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        EventStream(child)
    }

    /// PIDs of VM processes (QEMU, hull, hull's device backends) started for this containerd (their sockets
    /// live under its dir).
    fn vm_pids(&self) -> Vec<u32> {
        vm_pids_under(self.ctd.dir())
    }

    /// How many VMs run for this containerd: their VMM processes (QEMU or the hull VMM, not device backends).
    fn vm_count(&self) -> usize {
        self.vm_pids().into_iter().filter(|p| is_vmm(*p)).count()
    }

    /// Stops containerd and checks that nothing of the test is left.
    fn finish(self, shim_ids: &[(&str, &str)]) {
        let dir = self.ctd.dir().to_path_buf();
        let Setup {
            ctd,
            shim_config,
            footprint,
        } = self;
        // Shims end on containerd's Shutdown, a moment after the last delete: give them time to go by
        // themselves (dropping containerd would SIGKILL them, which leaves their sockets behind).
        let t0 = Instant::now();
        while !ctd.shim_pids().is_empty() && t0.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // What containerd said (its `shim delete` calls among it), for a failure below.
        let report = ctd.report();
        drop(ctd);
        // Processes killed a moment ago may still be on their way out: allow them a few seconds.
        let t0 = Instant::now();
        let mut left;
        loop {
            left = footprint.leftovers(shim_ids);
            for pid in vm_pids_under(&dir) {
                left.push(format!("VM process {pid}: {}", cmdline(pid)));
            }
            if left.is_empty() || t0.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(shim_config.parent().unwrap());
        assert!(left.is_empty(), "left behind: {left:#?}\n{report}");
    }
}

struct EventStream(std::process::Child);

impl EventStream {
    /// Everything containerd published so far (after a moment for the last events to arrive).
    fn collect(mut self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let out = self.0.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn vm_pids_under(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if matches!(comm.trim(), "qemu-system-x86" | "hull" | "hull-vmm") && cmd.contains(&needle) {
            pids.push(pid);
        }
    }
    pids.extend(jailed_pids(dir));
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Jailed hull processes (the VMM, the device backends) name only paths inside their chroots: they are found
/// through the PID file hull-jailer writes in each jail, `/srv/jailer/<hull or hull-vmm>/<VM directory name>-<role>/root/
/// <hull or hull-vmm>.pid`, for the VM directories under `dir`. A PID counts while its process is a `hull` (or the `hull-vmm` it execs).
fn jailed_pids(dir: &Path) -> Vec<u32> {
    let vms: Vec<String> = std::fs::read_dir(dir.join("hull-vms"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| format!("{}-", e.file_name().to_string_lossy()))
        .collect();
    let mut pids = Vec::new();
    // The VMM's jail is named after the binary it runs (`hull-vmm`, or `hull`), the backends' `hull`.
    let jails = ["hull", "hull-vmm"].map(|exec| (exec, Path::new(hull_runtime::jail::DEFAULT_BASE_DIR).join(exec)));
    let entries = jails.iter().flat_map(|(exec, dir)| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(move |e| (*exec, e))
    });
    for (exec, e) in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if !vms.iter().any(|vm| name.starts_with(vm.as_str())) {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(e.path().join(format!("root/{exec}.pid")))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if matches!(comm.trim(), "hull" | "hull-vmm") {
            pids.push(pid);
        }
    }
    pids
}

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).replace('\0', " ")
}

fn is_vmm(pid: u32) -> bool {
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    !String::from_utf8_lossy(&cmd).split('\0').any(|a| a == "vhost-user")
}

fn assert_guest_kernel(release: &str, what: &str) {
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert!(
        release.trim().ends_with(GUEST_RELEASE_SUFFIX) && release.trim() != host.trim(),
        "{what}: expected the guest kernel's release (…{GUEST_RELEASE_SUFFIX}), got {release:?} (host {host:?})"
    );
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ctr run --rm IMG id echo hello` prints hello; the exit status propagates; the rootfs image is cached;
/// container writes are private and gone after delete; `--log-uri file://` output lands in the file; stdin
/// reaches the container byte for byte.
#[test]
fn ctr_run_echo_status_and_writes() {
    require_root!("ctr_run_echo_status_and_writes");
    let s = setup(false);
    s.ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let pid = std::process::id();

    let id1 = format!("echo-{pid}");
    let out = s.ctr_run(&["--rm", BUSYBOX_IMAGE, &id1, "echo", "hello"]);
    assert!(out.success(), "{out:?}\n{}", s.ctd.report());
    assert_eq!(out.stdout, "hello\n", "{out:?}");

    let id2 = format!("uname-{pid}");
    let out = s.ctr_run(&[
        "--rm",
        BUSYBOX_IMAGE,
        &id2,
        "sh",
        "-c",
        "uname -r; echo data > /written; cat /written; echo oops >&2; exit 3",
    ]);
    assert_eq!(out.code(), 3, "{out:?}\n{}", s.ctd.report());
    let mut lines = out.stdout.lines();
    assert_guest_kernel(lines.next().unwrap_or_default(), "ctr run");
    assert_eq!(lines.next(), Some("data"));
    assert!(out.stderr.contains("oops"), "{out:?}");

    // A second container of the same image finds its image in the cache and not the first one's write.
    let images = s.ctd.dir().join("hull-images");
    let cached: Vec<_> = std::fs::read_dir(&images).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "one cached image per image: {cached:?}");
    let id3 = format!("fresh-{pid}");
    let out = s.ctr_run(&["--rm", BUSYBOX_IMAGE, &id3, "sh", "-c", "ls /written 2>&1; true"]);
    assert!(out.stdout.contains("No such file"), "{out:?}");
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), 1);

    // `--log-uri file://` sends the output to a file, as with runc.
    let id5 = format!("log-{pid}");
    let log = s.ctd.dir().join(format!("{id5}.log"));
    let uri = format!("file://{}", log.display());
    let out = s.ctr_run(&[
        "--rm",
        "--log-uri",
        &uri,
        BUSYBOX_IMAGE,
        &id5,
        "sh",
        "-c",
        "echo to-the-log",
    ]);
    assert!(out.success(), "{out:?}\n{}", s.ctd.report());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap_or_default(),
        "to-the-log\n",
        "{out:?}"
    );

    // stdin: ctr attaches its own stdin; 1 MiB of every byte value goes through and back, and the end of
    // ctr's stdin (CloseIO) ends the container's `cat`.
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let id4 = format!("stdin-{pid}");
    let cfg = s.shim_config.to_string_lossy().to_string();
    let mut cmd = std::process::Command::new("ctr");
    cmd.arg("--address").arg(s.ctd.socket()).args([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &cfg,
        BUSYBOX_IMAGE,
        &id4,
        "cat",
    ]);
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = data.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.ctd.report()
    );
    assert_eq!(out.stdout.len(), data.len(), "stdin → stdout length");
    assert!(out.stdout == data, "stdin → stdout bytes differ");
    assert!(s.vm_pids().is_empty(), "VMs left after --rm: {:?}", s.vm_pids());
    s.finish(&[
        (CTR_NAMESPACE, &id1),
        (CTR_NAMESPACE, &id2),
        (CTR_NAMESPACE, &id3),
        (CTR_NAMESPACE, &id4),
        (CTR_NAMESPACE, &id5),
    ]);
}

/// `ctr run -t`: the container has a terminal, sized by ctr through ResizePty; its output and exit status come
/// back.
#[test]
fn ctr_run_tty() {
    require_root!("ctr_run_tty");
    let s = setup(false);
    s.ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let id = format!("tty-{}", std::process::id());
    let cfg = s.shim_config.to_string_lossy().to_string();
    // ctr -t wants a terminal on its side: `script` gives it one, sized 33x101 so that ctr's ResizePty to its
    // own terminal size shows in the container's `stty size` (the shim's ResizePty reaching the guest pty).
    let ctr = format!(
        "stty rows 33 cols 101; \
         ctr --address {} run --rm -t --runtime {RUNTIME} --runtime-config-path {cfg} {BUSYBOX_IMAGE} {id} \
         sh -c 'tty; uname -r; i=0; while [ \"$(stty size 2>/dev/null)\" != \"33 101\" ] && [ $i -lt 100 ]; do \
         sleep 0.1; i=$((i+1)); done; stty size; exit 4'",
        s.ctd.socket().display()
    );
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &ctr, "/dev/null"])
        .stdin(std::process::Stdio::piped());
    // Keep script's stdin open (no EOF typed into the terminal) while the container runs.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert_eq!(out.status.code(), Some(4), "{text}\n{}", s.ctd.report());
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    assert!(lines.next().unwrap_or_default().starts_with("/dev/pts/"), "{text}");
    assert_guest_kernel(lines.next().unwrap_or_default(), "ctr run -t");
    assert_eq!(
        lines.next().map(str::trim),
        Some("33 101"),
        "terminal size after ResizePty: {text}"
    );
    s.finish(&[(CTR_NAMESPACE, &id)]);
}

/// A detached task: exec (output, exit status, stdin), ps, metrics, pause/resume, kill, delete.
#[test]
fn ctr_detached_task_operations() {
    require_root!("ctr_detached_task_operations");
    let s = setup(false);
    s.ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let id = format!("detached-{}", std::process::id());
    // containerd's event stream, to check the shim's task events.
    let events = s.events();
    // The shell is the container's PID 1, which gets SIGTERM only with a handler (as under runc).
    let out = s.ctr_run(&[
        "-d",
        BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "trap 'exit 143' TERM; while true; do sleep 1; done",
    ]);
    assert!(out.success(), "{out:?}\n{}", s.ctd.report());
    let ls = s.ctd.ctr(&["task", "ls"]);
    assert!(ls.stdout.contains("RUNNING"), "{ls:?}");
    assert_eq!(s.vm_count(), 1, "one VM for the task");

    let out = s
        .ctd
        .ctr(&["task", "exec", "--exec-id", "e1", &id, "sh", "-c", "uname -r; exit 5"]);
    assert_eq!(out.code(), 5, "{out:?}\n{}", s.ctd.report());
    assert_guest_kernel(&out.stdout, "ctr task exec");

    let ps = s.ctd.ctr(&["task", "ps", &id]);
    assert!(ps.success(), "{ps:?}");
    assert!(ps.stdout.lines().count() >= 2, "the shell and its sleep: {ps:?}");

    let m = s.ctd.ctr(&["task", "metrics", &id]);
    assert!(m.success(), "{m:?}");
    let usage: u64 = m
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage ")?.trim().parse().ok())
        .unwrap_or(0);
    assert!(usage > 0, "memory.usage from the guest's cgroup: {m:?}");

    assert!(s.ctd.ctr(&["task", "pause", &id]).success());
    assert!(s.ctd.ctr(&["task", "ls"]).stdout.contains("PAUSED"));
    assert!(s.ctd.ctr(&["task", "resume", &id]).success());
    assert!(s.ctd.ctr(&["task", "ls"]).stdout.contains("RUNNING"));

    assert!(s.ctd.ctr(&["task", "kill", &id]).success());
    wait_until("the task to stop", Duration::from_secs(30), || {
        s.ctd.ctr(&["task", "ls"]).stdout.contains("STOPPED")
    });
    // Kill after the exit still succeeds (containerd does it).
    assert!(s.ctd.ctr(&["task", "kill", "-a", "-s", "SIGKILL", &id]).success());
    let del = s.ctd.ctr(&["task", "delete", &id]);
    assert!(del.success(), "{del:?}");
    assert!(
        del.stderr.contains("143") || del.stdout.contains("143"),
        "SIGTERM's status: {del:?}"
    );
    assert!(s.ctd.ctr(&["container", "rm", &id]).success());
    wait_until("the VM to end", Duration::from_secs(10), || s.vm_pids().is_empty());
    let seen = events.collect();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(seen.contains(topic), "no {topic} event from the shim:\n{seen}");
    }
    s.finish(&[(CTR_NAMESPACE, &id)]);
}

/// `kill -9` of the VMM: the task exits with 137 and containerd sees it; nothing is left.
#[test]
fn vmm_killed_task_exits_137() {
    require_root!("vmm_killed_task_exits_137");
    let s = setup(false);
    s.ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let id = format!("vmmkill-{}", std::process::id());
    let out = s.ctr_run(&["-d", BUSYBOX_IMAGE, &id, "sleep", "1000"]);
    assert!(out.success(), "{out:?}\n{}", s.ctd.report());
    let vmm = s
        .vm_pids()
        .into_iter()
        .find(|p| is_vmm(*p))
        .expect("the task's VMM process");
    // SAFETY: kill(2) of a process this test's containerd started.
    unsafe { libc::kill(vmm as i32, libc::SIGKILL) };
    wait_until("containerd to see the exit", Duration::from_secs(30), || {
        s.ctd.ctr(&["task", "ls"]).stdout.contains("STOPPED")
    });
    let del = s.ctd.ctr(&["task", "delete", &id]);
    assert!(del.stderr.contains("137") || del.stdout.contains("137"), "{del:?}");
    assert!(s.ctd.ctr(&["container", "rm", &id]).success());
    wait_until("the VM's processes to end", Duration::from_secs(10), || {
        s.vm_pids().is_empty()
    });
    s.finish(&[(CTR_NAMESPACE, &id)]);
}

/// `kill -9` of the shim: containerd cleans up, and no VM process is left.
#[test]
fn shim_killed_leaves_no_vm() {
    require_root!("shim_killed_leaves_no_vm");
    let s = setup(false);
    s.ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let id = format!("shimkill-{}", std::process::id());
    let out = s.ctr_run(&["-d", BUSYBOX_IMAGE, &id, "sleep", "1000"]);
    assert!(out.success(), "{out:?}\n{}", s.ctd.report());
    assert_eq!(s.vm_count(), 1);
    let shims = s.ctd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    // SAFETY: kill(2) of the shim this test's containerd started.
    unsafe { libc::kill(shims[0] as i32, libc::SIGKILL) };
    wait_until("containerd to drop the task", Duration::from_secs(30), || {
        !s.ctd.ctr(&["task", "ls"]).stdout.contains(&id)
    });
    wait_until("the VM's processes to end", Duration::from_secs(10), || {
        s.vm_pids().is_empty()
    });
    assert!(s.ctd.ctr(&["container", "rm", &id]).success());
    s.finish(&[(CTR_NAMESPACE, &id)]);
}

/// CRI: RunPodSandbox(hull) → CreateContainer ×2 → StartContainer → ExecSync → ContainerStats →
/// StopPodSandbox → RemovePodSandbox; both containers run in the pod's one VM.
#[test]
fn cri_pod_two_containers_one_vm() {
    require_root!("cri_pod_two_containers_one_vm");
    let s = setup(false);
    let cri = s.ctd.cri_with_images();
    let pod = cri
        .run_pod_sandbox(HULL_HANDLER, &format!("pod-{}", std::process::id()), PodNetwork::Host)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    assert_eq!(s.vm_count(), 1, "the sandbox's VM");
    let vms_after_sandbox = s.vm_pids();
    // Both containers mount the same host directory (a hostPath volume): the pod packs it into one disk.
    let shared = s.ctd.dir().join("shared-volume");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("note"), "from the host\n").unwrap();
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let mut config = cri.container_config(
            name,
            BUSYBOX_IMAGE,
            &[
                "sh",
                "-c",
                &format!("echo {name} > /tmp/me; echo out-{name}; echo err-{name} >&2; sleep 1000"),
            ],
        );
        config.mounts.push(k8s_cri::v1::Mount {
            container_path: "/shared".into(),
            host_path: shared.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        });
        let id = cri
            .create_container_with(&pod, config)
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
        ids.push(id);
    }
    assert_eq!(s.vm_pids(), vms_after_sandbox, "the containers joined the sandbox's VM");
    assert_eq!(s.vm_count(), 1, "one VMM process for the pod");
    assert_eq!(s.ctd.shim_pids().len(), 1, "one shim for the pod");
    for (id, name) in ids.iter().zip(["first", "second"]) {
        let out = cri
            .exec_sync(
                id,
                &["sh", "-c", "uname -r; sleep 0.2; cat /tmp/me; cat /shared/note"],
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
        assert_eq!(out.exit_code, 0, "{out:?}");
        let mut lines = out.stdout.lines();
        assert_guest_kernel(lines.next().unwrap_or_default(), "ExecSync");
        assert_eq!(lines.next(), Some(name), "each container has its own rootfs: {out:?}");
        assert_eq!(lines.next(), Some("from the host"), "the hostPath volume: {out:?}");
    }
    assert_eq!(
        volume_images(&s).len(),
        1,
        "one disk image for the volume both containers mount"
    );
    // CRI opened both output FIFOs: the container log has stdout and stderr lines.
    let log_dir = PathBuf::from(&pod.config.log_directory);
    for name in ["first", "second"] {
        let log = log_dir.join(format!("{name}.log"));
        wait_until("the container's log lines", Duration::from_secs(20), || {
            std::fs::read_to_string(&log)
                .is_ok_and(|t| t.contains(&format!("out-{name}")) && t.contains(&format!("err-{name}")))
        });
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(" stdout F out-") && text.contains(" stderr F err-"),
            "{text}"
        );
    }
    // Update: new limits reach the container's cgroup in the guest.
    let mut rt = cri.runtime();
    let req = k8s_cri::v1::UpdateContainerResourcesRequest {
        container_id: ids[0].clone(),
        linux: Some(k8s_cri::v1::LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    cri.block_on(rt.update_container_resources(req))
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}\n{}", s.ctd.report()));
    let out = cri
        .exec_sync(&ids[0], &["cat", "/sys/fs/cgroup/memory.max"], Duration::from_secs(30))
        .unwrap();
    assert_eq!(out.stdout.trim(), (96u64 << 20).to_string(), "{out:?}");
    let stats = cri.container_stats(&ids[0]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .is_some_and(|w| w.value > 0)
            || stats
                .cpu
                .as_ref()
                .and_then(|c| c.usage_core_nano_seconds.as_ref())
                .is_some_and(|u| u.value > 0),
        "stats from the guest: {stats:?}"
    );
    // The volume's image goes when its last user does (the VM, on tmpfs, lives on).
    for (i, id) in ids.iter().enumerate() {
        cri.stop_container(id, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
        cri.remove_container(id)
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
        let expected = if i == 0 { 1 } else { 0 };
        assert_eq!(
            volume_images(&s).len(),
            expected,
            "volume images after removing {} container(s)",
            i + 1
        );
    }
    cri.stop_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    cri.remove_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    wait_until("the pod's VM to end", Duration::from_secs(20), || {
        s.vm_pids().is_empty()
    });
    let pod_id = pod.id.clone();
    drop(cri);
    s.finish(&[(CRI_NAMESPACE, &pod_id)]);
}

/// The volume images (`vol-*.ext4`) in the VM directories of this test's shims.
fn volume_images(s: &Setup) -> Vec<PathBuf> {
    let vms = s.ctd.dir().join("hull-vms");
    std::fs::read_dir(vms)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|vm| std::fs::read_dir(vm.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap_or_default().to_string_lossy();
            n.starts_with("vol-") && n.ends_with(".ext4")
        })
        .collect()
}

/// CNI: containerd runs in a test network namespace with a bridge network; the pod's VM gets the pod's
/// address through a TAP redirected to the pod's veth, and its container reaches a server at the gateway.
#[test]
fn cri_pod_network_reaches_gateway() {
    require_root!("cri_pod_network_reaches_gateway");
    let s = setup(true);
    let cri = s.ctd.cri_with_images();
    let listener = s.ctd.tcp_listener(7077).expect("listen in the test namespace");
    let pod = cri
        .run_pod_sandbox(HULL_HANDLER, &format!("netpod-{}", std::process::id()), PodNetwork::Cni)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    let ip = cri.pod_ip(&pod.id).unwrap();
    assert!(!ip.is_empty(), "CNI gave the pod an address");
    let gw = s.ctd.gateway().to_string();
    let script = format!("uname -r; ip -4 addr show eth0; echo hello-from-$(uname -r) | nc -w 5 {gw} 7077; sleep 1000");
    let id = cri
        .create_container(&pod, "client", BUSYBOX_IMAGE, &["sh", "-c", &script])
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    listener.set_nonblocking(false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        if let Ok((mut conn, peer)) = listener.accept() {
            let mut text = String::new();
            let _ = conn.read_to_string(&mut text);
            let _ = tx.send((peer.ip().to_string(), text));
        }
    });
    let (peer, text) = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("no connection from the pod\n{}", s.ctd.report()));
    assert_eq!(peer, ip, "the connection came from the pod's address");
    assert!(
        text.starts_with("hello-from-") && text.trim().ends_with(GUEST_RELEASE_SUFFIX),
        "{text:?}"
    );
    let out = cri
        .exec_sync(&id, &["ip", "-4", "addr", "show", "eth0"], Duration::from_secs(30))
        .unwrap();
    assert!(
        out.stdout.contains(&ip),
        "the guest's eth0 has the pod's address: {out:?}"
    );
    cri.stop_pod_sandbox(&pod.id).unwrap();
    cri.remove_pod_sandbox(&pod.id).unwrap();
    wait_until("the pod's VM to end", Duration::from_secs(20), || {
        s.vm_pids().is_empty()
    });
    let pod_id = pod.id.clone();
    drop(cri);
    s.finish(&[(CRI_NAMESPACE, &pod_id)]);
}

/// `resources/install.sh` (no arguments; locations redirected into a temporary directory) places the
/// binaries, the guest kernel and initramfs, the shim config and the containerd handler; run twice, it
/// changes nothing more; the installed shim then runs a container with only its installed config.
#[test]
fn install_script_sets_up_a_working_shim() {
    require_root!("install_script_sets_up_a_working_shim");
    let root = std::env::temp_dir().join(format!("hull-install-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("containerd")).unwrap();
    let ctd_config = root.join("containerd/config.toml");
    std::fs::write(&ctd_config, "version = 2\n").unwrap();
    let run_install = || {
        let out = std::process::Command::new("bash")
            .arg(hull_tests::repo_root().join("resources/install.sh"))
            .env("PREFIX", root.join("usr"))
            .env("HULL_LIB", root.join("lib"))
            .env("HULL_ETC", root.join("etc"))
            .env("CONTAINERD_CONFIG", &ctd_config)
            .env("HULL_PROFILE", "debug")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "install.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run_install();
    for f in [
        "usr/bin/hull",
        "usr/bin/hull-jailer",
        "usr/bin/containerd-shim-hull-v2",
        "lib/vmlinux",
        "lib/initramfs.cpio",
        "etc/shim.toml",
    ] {
        assert!(root.join(f).is_file(), "{f} installed");
    }
    let shim_toml = std::fs::read_to_string(root.join("etc/shim.toml")).unwrap();
    let config_once = std::fs::read_to_string(&ctd_config).unwrap();
    assert_eq!(config_once.matches("runtimes.hull]").count(), 1, "{config_once}");
    assert!(config_once.contains("io.containerd.hull.v2"));
    run_install();
    assert_eq!(
        std::fs::read_to_string(&ctd_config).unwrap(),
        config_once,
        "a second run changes nothing"
    );
    assert_eq!(std::fs::read_to_string(root.join("etc/shim.toml")).unwrap(), shim_toml);

    // The installed shim, found on PATH, with nothing but its installed config.
    let ctd = Containerd::start(ContainerdOptions {
        path_prepend: vec![root.join("usr/bin")],
        ..Default::default()
    });
    let footprint = ctd.footprint();
    ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let id = format!("installed-{}", std::process::id());
    let cfg = root.join("etc/shim.toml").to_string_lossy().to_string();
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &cfg,
        BUSYBOX_IMAGE,
        &id,
        "uname",
        "-r",
    ]);
    assert!(out.success(), "{out:?}\n{}", ctd.report());
    assert_guest_kernel(&out.stdout, "installed shim");
    drop(ctd);
    let left = footprint.leftovers(&[(CTR_NAMESPACE, &id)]);
    assert!(left.is_empty(), "left behind: {left:#?}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A container that outgrows its memory limit is OOM-killed inside the guest: containerd gets the shim's
/// /tasks/oom event and the task's exit status 137.
#[test]
fn oom_kill_is_reported() {
    require_root!("oom_kill_is_reported");
    let s = setup(false);
    s.ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let id = format!("oom-{}", std::process::id());
    let events = s.events();
    // 32 MiB limit; the shell's variable grows until the cgroup's OOM killer ends it.
    let out = s.ctr_run(&[
        "--rm",
        "--memory-limit",
        &(32u64 << 20).to_string(),
        BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "x=a; while true; do x=$x$x; done",
    ]);
    assert_eq!(out.code(), 137, "{out:?}\n{}", s.ctd.report());
    let seen = events.collect();
    assert!(seen.contains("/tasks/oom"), "no /tasks/oom event:\n{seen}");
    s.finish(&[(CTR_NAMESPACE, &id)]);
}

/// Extra OCI mounts reach the container: a host directory (packed into its own disk) and host files
/// (copied), read-only as asked; the host directory is never written; a read-write file mount is copied
/// back to the host when the container exits.
#[test]
fn ctr_run_with_host_mounts() {
    require_root!("ctr_run_with_host_mounts");
    let s = setup(false);
    s.ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let host = s.ctd.dir().join("host-data");
    std::fs::create_dir_all(host.join("sub")).unwrap();
    std::fs::write(host.join("sub/hello.txt"), "from the host\n").unwrap();
    let file = s.ctd.dir().join("host-file.conf");
    std::fs::write(&file, "key=value\n").unwrap();
    let id = format!("mounts-{}", std::process::id());
    let dir_mount = format!("type=bind,src={},dst=/data,options=rbind:ro", host.display());
    let file_mount = format!("type=bind,src={},dst=/etc/app.conf,options=rbind:ro", file.display());
    // A read-write file mount, like Kubernetes' /dev/termination-log: what the container wrote is on the
    // host once the container has exited.
    let log = s.ctd.dir().join("termination-log");
    std::fs::write(&log, "").unwrap();
    let log_mount = format!(
        "type=bind,src={},dst=/dev/termination-log,options=rbind:rw",
        log.display()
    );
    let out = s.ctr_run(&[
        "--rm",
        "--mount",
        &dir_mount,
        "--mount",
        &file_mount,
        "--mount",
        &log_mount,
        BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "cat /data/sub/hello.txt /etc/app.conf; touch /data/x 2>/dev/null && echo writable || echo read-only; uname -r; \
         echo 'last words' > /dev/termination-log",
    ]);
    assert!(out.success(), "{out:?}\n{}", s.ctd.report());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(&lines[..3], &["from the host", "key=value", "read-only"], "{out:?}");
    assert_guest_kernel(lines.get(3).copied().unwrap_or_default(), "mounts");
    assert!(!host.join("x").exists());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "last words\n",
        "the read-write file mount, written back"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "key=value\n");
    s.finish(&[(CTR_NAMESPACE, &id)]);
}

/// Sends SIGCONT to a process on drop, so a test that stopped it never leaves it stopped.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        // SAFETY: kill(2) of a VM process this test's containerd started.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// The shim trusts no guest to answer: in a CRI pod, while the guest's replies are stalled (the vhost-user
/// vsock backend stopped with SIGSTOP) in the middle of a container's CreateContainer, State of the pod's
/// other container (`ctr task ls`, which asks the shim for every task's state) answers within a second, also
/// while a Kill of that container waits for its own (stalled) guest call; once the guest answers again, the
/// stalled Create and the Kill complete and everything ends cleanly.
#[test]
fn cri_stalled_guest_does_not_block_other_containers() {
    require_root!("cri_stalled_guest_does_not_block_other_containers");
    let s = setup(false);
    let cri = s.ctd.cri_with_images();
    let pod = cri
        .run_pod_sandbox(HULL_HANDLER, &format!("stall-{}", std::process::id()), PodNetwork::Host)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    let Some(vsock) = s
        .vm_pids()
        .into_iter()
        .find(|p| cmdline(*p).contains("vhost-user vsock"))
    else {
        hull_tests::skip(
            "cri_stalled_guest_does_not_block_other_containers",
            "the VM has no separate vsock backend to stop (kvm backend)",
        );
        cri.stop_pod_sandbox(&pod.id).unwrap();
        cri.remove_pod_sandbox(&pod.id).unwrap();
        return;
    };
    let first = cri
        .create_container(&pod, "first", BUSYBOX_IMAGE, &["sleep", "1000"])
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    cri.start_container(&first)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    let second = cri
        .create_container(&pod, "second", BUSYBOX_IMAGE, &["sleep", "1000"])
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    let state_of_first = || {
        let t0 = Instant::now();
        let ls = s.ctd.ctr_in(CRI_NAMESPACE, &["task", "ls"]);
        let took = t0.elapsed();
        assert!(ls.success(), "{ls:?}");
        assert!(
            ls.stdout
                .lines()
                .any(|l| l.starts_with(&first) && l.contains("RUNNING")),
            "{ls:?}"
        );
        took
    };

    // Stall the guest's replies, then start the second container: its shim Create (CRI creates the task at
    // StartContainer) attaches its disk and then waits for the agent's CreateContainer reply.
    let stopped = Stopped::stop(vsock);
    let (socket, logs) = (s.ctd.socket().to_path_buf(), s.ctd.dir().join("pod-logs"));
    let second_id = second.clone();
    let starter = std::thread::spawn(move || {
        let cri = hull_tests::cri::Cri::connect(&socket, &logs).unwrap();
        let t0 = Instant::now();
        (cri.start_container(&second_id), t0.elapsed())
    });
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !starter.is_finished(),
        "the second container's start should be waiting on the stalled guest"
    );
    let took = state_of_first();
    assert!(
        took < Duration::from_secs(1),
        "State took {took:?} while a Create waited on the guest"
    );
    let status = cri.container_status(&first).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.state, k8s_cri::v1::ContainerState::ContainerRunning as i32);

    // Kill needs the guest: it waits for its own SignalProcess, and blocks nobody else meanwhile.
    let mut kill = std::process::Command::new("ctr");
    kill.arg("--address")
        .arg(s.ctd.socket())
        .args(["-n", CRI_NAMESPACE, "task", "kill", "-s", "SIGKILL", &first]);
    let mut kill = kill.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let took = state_of_first();
    assert!(
        took < Duration::from_secs(1),
        "State took {took:?} while a Kill and a Create waited on the guest"
    );

    drop(stopped);
    let (started, waited) = starter.join().unwrap();
    started.unwrap_or_else(|e| panic!("{e} (after {waited:?})\n{}", s.ctd.report()));
    assert!(
        kill.wait().unwrap().success(),
        "the Kill went through once the guest answered"
    );
    wait_until("the first container's task to end", Duration::from_secs(30), || {
        !s.ctd
            .ctr_in(CRI_NAMESPACE, &["task", "ls"])
            .stdout
            .lines()
            .any(|l| l.starts_with(&first) && l.contains("RUNNING"))
    });
    let out = cri
        .exec_sync(&second, &["uname", "-r"], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    assert_guest_kernel(&out.stdout, "the container created during the stall");
    cri.stop_container(&second, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    for id in [&first, &second] {
        cri.remove_container(id)
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    }
    cri.stop_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    cri.remove_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    wait_until("the pod's VM to end", Duration::from_secs(20), || {
        s.vm_pids().is_empty()
    });
    let pod_id = pod.id.clone();
    drop(cri);
    s.finish(&[(CRI_NAMESPACE, &pod_id)]);
}

/// The test process's own cgroup (the memory hierarchy's on cgroup v1, the unified one on v2), as a path
/// from the hierarchy's root; pods of the test go below it, so their VMs stay inside what the test runs in.
fn own_cgroup(v2: bool) -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    text.lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, list, path) = (f.next()?, f.next()?, f.next()?);
            let ours = if v2 {
                list.is_empty()
            } else {
                list.split(',').any(|c| c == "memory")
            };
            ours.then(|| path.trim_end_matches('/').to_string())
        })
        .unwrap_or_default()
}

/// The VM is the pod's: a CRI pod with a cgroup parent and pod-level resources (memory limit, CPU quota)
/// gets its VM's processes (QEMU or the VMM, and the device backends) into the sandbox's cgroup, whose
/// memory limit and CPU quota are the pod's; the cgroup goes with the pod.
#[test]
fn cri_pod_vm_runs_in_the_pods_cgroup() {
    require_root!("cri_pod_vm_runs_in_the_pods_cgroup");
    let root = Path::new("/sys/fs/cgroup");
    let v2 = root.join("cgroup.controllers").exists();
    let s = setup(false);
    let cri = s.ctd.cri_with_images();
    let parent = format!("{}/hull-test-pods-{}-{}", own_cgroup(v2), std::process::id(), unique());
    let limit: i64 = 768 << 20;
    let mut config = cri.pod_config(&format!("cg-{}", std::process::id()), PodNetwork::Host);
    if let Some(linux) = config.linux.as_mut() {
        linux.cgroup_parent = parent.clone();
        linux.resources = Some(k8s_cri::v1::LinuxContainerResources {
            memory_limit_in_bytes: limit,
            cpu_period: 100_000,
            cpu_quota: 150_000,
            ..Default::default()
        });
    }
    let pod = cri
        .run_pod_sandbox_with(HULL_HANDLER, config)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    let rel = format!("{}/{}", parent.trim_start_matches('/'), pod.id);
    let (mem_dir, cpu_dir) = if v2 {
        (root.join(&rel), root.join(&rel))
    } else {
        (root.join("memory").join(&rel), root.join("cpu").join(&rel))
    };
    let vm = s.vm_pids();
    assert!(vm.len() >= 2, "the VMM and its backends: {vm:?}");
    let procs = std::fs::read_to_string(mem_dir.join("cgroup.procs"))
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", mem_dir.display(), s.ctd.report()));
    for pid in &vm {
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "VM process {pid} ({}) is not in {}: {procs}",
            cmdline(*pid),
            mem_dir.display()
        );
    }
    let read = |f: &Path| std::fs::read_to_string(f).unwrap_or_default().trim().to_string();
    if v2 {
        assert_eq!(read(&mem_dir.join("memory.max")), limit.to_string());
        assert_eq!(read(&cpu_dir.join("cpu.max")), "150000 100000");
    } else {
        assert_eq!(read(&mem_dir.join("memory.limit_in_bytes")), limit.to_string());
        assert_eq!(read(&cpu_dir.join("cpu.cfs_quota_us")), "150000");
        let cpu_procs = read(&cpu_dir.join("cgroup.procs"));
        assert!(
            vm.iter().all(|p| cpu_procs.lines().any(|l| l == p.to_string())),
            "cpu: {cpu_procs}"
        );
    }
    // The pod works inside its limit.
    let id = cri
        .create_container(&pod, "inside", BUSYBOX_IMAGE, &["sleep", "1000"])
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    let out = cri
        .exec_sync(&id, &["uname", "-r"], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    assert_guest_kernel(&out.stdout, "a container of the limited pod");
    cri.stop_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    cri.remove_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    wait_until("the pod's VM to end", Duration::from_secs(20), || {
        s.vm_pids().is_empty()
    });
    wait_until("the pod's cgroup to go", Duration::from_secs(10), || !mem_dir.exists());
    let parent_rel = parent.trim_start_matches('/');
    let parents: Vec<PathBuf> = if v2 {
        vec![root.join(parent_rel)]
    } else {
        ["memory", "cpu", "cpuacct", "pids"]
            .iter()
            .map(|c| root.join(c).join(parent_rel))
            .collect()
    };
    for p in &parents {
        assert!(!p.exists(), "the shim made {} and removes it with the pod", p.display());
    }
    let pod_id = pod.id.clone();
    drop(cri);
    s.finish(&[(CRI_NAMESPACE, &pod_id)]);
}

/// OCI hooks run where runc runs them: prestart and createRuntime at Create, poststart after Start and
/// poststop after Delete on the host; createContainer and startContainer in the container's namespaces (in
/// the guest, with the container's binaries), each with the container's state on stdin; a failing prestart
/// hook fails Create and leaves no VM. `ctr run --config` passes a whole spec with a rootfs directory.
#[test]
fn oci_hooks_run_on_the_host_with_the_state() {
    require_root!("oci_hooks_run_on_the_host_with_the_state");
    let s = setup(false);
    let dir = s.ctd.dir().join("hooks-test");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&dir).unwrap();
    hull_tests::build_busybox_rootfs(&rootfs);
    let spec_of = |hooks: serde_json::Value| -> PathBuf {
        let out = s.ctd.ctr(&["oci", "spec"]);
        let mut spec: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        spec["process"]["args"] = serde_json::json!([
            "sh",
            "-c",
            "uname -r; cat /tmp/createContainer.json; echo; cat /tmp/startContainer.json"
        ]);
        spec["process"]["terminal"] = false.into();
        // ctr's default spec has no environment: without PATH only programs named by a path are found (runc).
        spec["process"]["env"] = serde_json::json!(["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
        spec["root"] = serde_json::json!({ "path": rootfs.to_string_lossy() });
        // A cgroup of its own, as `ctr run` gives without --config (the default spec says "/default", the
        // parent of every ctr container's).
        spec["linux"]["cgroupsPath"] = format!("/default/hooks-{}-{}", std::process::id(), unique()).into();
        spec["hooks"] = hooks;
        let path = dir.join(format!("spec-{}.json", unique()));
        std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
        path
    };
    let record = |kind: &str| {
        serde_json::json!([{
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("cat > {}/{kind}.json", dir.display())],
        }])
    };
    let spec = spec_of(serde_json::json!({
        "prestart": record("prestart"),
        "createRuntime": record("createRuntime"),
        "poststart": record("poststart"),
        "poststop": record("poststop"),
        // In the guest: /bin/sh is the container's, and /tmp is the container's.
        "createContainer": [{ "path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/createContainer.json"] }],
        // A hook whose binary the container does not have is skipped.
        "startContainer": [
            { "path": "/no/such/hook" },
            { "path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/startContainer.json"] },
        ],
    }));
    let id = format!("hooks-{}", std::process::id());
    let cfg = s.shim_config.to_string_lossy().to_string();
    let spec_arg = spec.to_string_lossy().to_string();
    let run = |id: &str, spec: &str| {
        s.ctd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--runtime-config-path",
            &cfg,
            "--config",
            spec,
            id,
        ])
    };
    let out = run(&id, &spec_arg);
    assert!(out.success(), "{out:?}\n{}", s.ctd.report());
    let mut lines = out.stdout.lines();
    assert_guest_kernel(lines.next().unwrap_or(""), "the container with hooks");
    for kind in ["createContainer", "startContainer"] {
        let state: serde_json::Value = serde_json::from_str(lines.next().unwrap_or(""))
            .unwrap_or_else(|e| panic!("the {kind} hook's record: {e}\n{out:?}"));
        assert_eq!(
            (state["id"].as_str(), state["status"].as_str()),
            (Some(id.as_str()), Some("created")),
            "{kind}"
        );
        assert!(
            state["pid"].as_u64().is_some_and(|p| p > 1),
            "{kind}: the init's PID in the guest: {state}"
        );
    }
    for (kind, status) in [
        ("prestart", "created"),
        ("createRuntime", "created"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let text = std::fs::read_to_string(dir.join(format!("{kind}.json")))
            .unwrap_or_else(|e| panic!("the {kind} hook did not run: {e}\n{}", s.ctd.report()));
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(state["id"], id.as_str(), "{kind}: {state}");
        assert_eq!(state["status"], status, "{kind}: {state}");
        assert!(state["pid"].as_u64().is_some_and(|p| p > 0), "{kind}: {state}");
        assert!(
            state["bundle"].as_str().is_some_and(|b| b.ends_with(&id)),
            "{kind}: {state}"
        );
    }

    // A failing prestart hook fails Create with its message, and nothing of the container stays.
    let failing = spec_of(serde_json::json!({
        "prestart": [{ "path": "/bin/sh", "args": ["sh", "-c", "echo no-you-dont >&2; exit 3"] }],
    }));
    let id2 = format!("hooks-fail-{}", std::process::id());
    let out = run(&id2, &failing.to_string_lossy());
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("prestart hook /bin/sh") && out.stderr.contains("no-you-dont"),
        "{out:?}"
    );
    let _ = s.ctd.ctr(&["container", "rm", &id2]);
    wait_until("the failed container's VM to end", Duration::from_secs(20), || {
        s.vm_pids().is_empty()
    });
    s.finish(&[(CTR_NAMESPACE, &id), (CTR_NAMESPACE, &id2)]);
}

/// A pod with a shared PID namespace (Kubernetes' `shareProcessNamespace`, CRI's `pid: POD`): as under runc,
/// every container is in the sandbox's PID namespace, whose PID 1 is the pause process, and sees the other
/// containers' processes. CRI names that namespace by a host path (`/proc/<sandbox pid>/ns/pid`); the shim
/// turns it into the sandbox container's namespace in the VM, which the agent joins. A container with a PID
/// namespace of its own (the default) sees none of that. The sandbox's UTS and IPC namespaces are joined the
/// same way: every container has the pod's hostname and the pod's IPC sysctl.
#[test]
fn cri_shared_pid_namespace_is_the_sandboxs() {
    require_root!("cri_shared_pid_namespace_is_the_sandboxs");
    use k8s_cri::v1::{LinuxContainerConfig, LinuxContainerSecurityContext, NamespaceMode, NamespaceOption};
    let s = setup(true);
    let cri = s.ctd.cri_with_images();
    let mut config = cri.pod_config(&format!("sharedpid-{}", std::process::id()), PodNetwork::Cni);
    let shared = NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    };
    if let Some(linux) = config.linux.as_mut() {
        // A pod-level IPC sysctl: set in the sandbox's IPC namespace, which every container shares.
        linux.sysctls = HashMap::from([("kernel.shm_rmid_forced".to_string(), "1".to_string())]);
        if let Some(ctx) = linux.security_context.as_mut() {
            ctx.namespace_options = Some(shared.clone());
        }
    }
    let hostname = config.hostname.clone();
    let pod = cri
        .run_pod_sandbox_with(HULL_HANDLER, config)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    let start = |name: &str, pid_mode: NamespaceMode| {
        let mut c = cri.container_config(name, BUSYBOX_IMAGE, &["sleep", "1000"]);
        c.linux = Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: pid_mode as i32,
                    ..shared.clone()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let id = cri
            .create_container_with(&pod, c)
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
        id
    };
    let first = start("first", NamespaceMode::Pod);
    let second = start("second", NamespaceMode::Pod);
    let own = start("own", NamespaceMode::Container);
    // PID 1's command line, then how many `sleep 1000` (the test's containers) are visible. The test's pause
    // image runs `sleep 2147483647`.
    let look = "echo \"pid1=$(tr '\\0' ' ' < /proc/1/cmdline)\"; \
                for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '^sleep 1000 '";
    let seen = |id: &str| {
        let out = cri
            .exec_sync(id, &["sh", "-c", look], Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()))
            .stdout;
        let mut lines = out.lines();
        let pid1 = lines.next().unwrap_or_default().trim().to_string();
        let sleeps = lines.next().unwrap_or_default().trim().to_string();
        (pid1, sleeps)
    };
    for id in [&first, &second] {
        let (pid1, sleeps) = seen(id);
        assert_eq!(
            pid1, "pid1=sleep 2147483647",
            "PID 1 of the shared namespace is the pause process"
        );
        assert_eq!(sleeps, "2", "both sharing containers' processes are visible");
    }
    let (pid1, sleeps) = seen(&own);
    assert_eq!(pid1, "pid1=sleep 1000", "a PID namespace of its own");
    assert_eq!(sleeps, "1");
    // The sandbox's UTS and IPC namespaces are every container's: the pod's hostname and its IPC sysctl.
    for id in [&first, &own] {
        let out = cri
            .exec_sync(
                id,
                &["sh", "-c", "hostname; cat /proc/sys/kernel/shm_rmid_forced"],
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()))
            .stdout;
        assert_eq!(out, format!("{hostname}\n1\n"), "{id}");
    }
    cri.stop_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    cri.remove_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    let pod_id = pod.id.clone();
    drop(cri);
    s.finish(&[(CRI_NAMESPACE, &pod_id)]);
}

/// hostPID, hostIPC and hostNetwork pods ask for the host's namespaces, which are outside the pod's VM: with
/// the shim's default config RunPodSandbox fails with an error naming the field, and nothing is left behind
/// (`host_network = "isolated"`, which the other CRI tests use, lets only hostNetwork through, without a NIC).
#[test]
fn cri_host_namespaces_are_refused_by_name() {
    require_root!("cri_host_namespaces_are_refused_by_name");
    use k8s_cri::v1::NamespaceMode;
    let s = setup(false);
    s.ctd.write_hull_shim_config(&s.shim_config, "");
    let cri = s.ctd.cri_with_images();
    type Edit = fn(&mut k8s_cri::v1::NamespaceOption);
    let cases: [(&str, Edit); 3] = [
        ("hostNetwork", |_| {}),
        ("hostPID", |o| o.pid = NamespaceMode::Node as i32),
        ("hostIPC", |o| o.ipc = NamespaceMode::Node as i32),
    ];
    for (field, edit) in cases {
        let mut config = cri.pod_config(
            &format!("host-{}-{}", field.to_lowercase(), std::process::id()),
            PodNetwork::Host,
        );
        if let Some(o) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|c| c.namespace_options.as_mut())
        {
            edit(o);
        }
        match cri.run_pod_sandbox_with(HULL_HANDLER, config) {
            Ok(pod) => panic!("{field}: pod {} started\n{}", pod.id, s.ctd.report()),
            Err(e) => assert!(
                e.to_string().contains(&format!("{field}: the pod asks for the host's")),
                "{field}: {e}"
            ),
        }
    }
    assert!(s.vm_pids().is_empty(), "no VM for a refused pod");
    drop(cri);
    s.finish(&[]);
}

/// CRI PortForward: containerd serves `kubectl port-forward` by dialing `localhost:<port>` inside the pod's
/// network namespace (as it does for runc). The test does the same from that namespace (the VM's processes
/// live in it) and reaches a server that listens only on the guest's 127.0.0.1; a port nothing listens on
/// in the guest is reset.
#[test]
fn cri_port_forward_reaches_the_guests_loopback() {
    require_root!("cri_port_forward_reaches_the_guests_loopback");
    use std::io::{Read, Write};
    let s = setup(true);
    let cri = s.ctd.cri_with_images();
    let pod = cri
        .run_pod_sandbox(HULL_HANDLER, &format!("fwdpod-{}", std::process::id()), PodNetwork::Cni)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    let script = "mkdir -p /tmp/www && echo hello-from-$(uname -r) > /tmp/www/index.html && \
                  exec httpd -f -p 127.0.0.1:8080 -h /tmp/www";
    let id = cri
        .create_container(&pod, "server", BUSYBOX_IMAGE, &["sh", "-c", script])
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("{e}\n{}", s.ctd.report()));
    // The VM's processes run in the pod's network namespace.
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let netns = s
        .vm_pids()
        .iter()
        .map(|p| PathBuf::from(format!("/proc/{p}/ns/net")))
        .find(|n| std::fs::read_link(n).is_ok_and(|l| l != ours))
        .unwrap_or_else(|| panic!("no VM process in the pod's network namespace\n{}", s.ctd.report()));
    // What containerd does: a thread in the pod's network namespace dials localhost.
    let in_pod = move |port: u16| -> std::io::Result<String> {
        let netns = netns.clone();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(&netns)?;
            // SAFETY: setns on this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port))?;
            c.set_read_timeout(Some(Duration::from_secs(30)))?;
            c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut answer = String::new();
            c.read_to_string(&mut answer)?;
            Ok(answer)
        })
        .join()
        .unwrap()
    };
    let t0 = Instant::now();
    let answer = loop {
        match in_pod(8080) {
            Ok(a) if a.contains("hello-from-") => break a,
            other if t0.elapsed() > Duration::from_secs(60) => {
                panic!("no answer through port-forward: {other:?}\n{}", s.ctd.report())
            }
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );
    assert!(
        answer.trim_end().ends_with(GUEST_RELEASE_SUFFIX),
        "served from the guest: {answer}"
    );
    let closed = in_pod(8081);
    assert!(
        closed
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
            || closed.as_ref().is_ok_and(|a| a.is_empty()),
        "a port nothing listens on: {closed:?}"
    );
    cri.stop_pod_sandbox(&pod.id).unwrap();
    cri.remove_pod_sandbox(&pod.id).unwrap();
    wait_until("the pod's VM to end", Duration::from_secs(20), || {
        s.vm_pids().is_empty()
    });
    let pod_id = pod.id.clone();
    drop(cri);
    s.finish(&[(CRI_NAMESPACE, &pod_id)]);
}
