//! The containerd harness proved with runc (`io.containerd.runc.v2`): a private containerd, the locally built
//! busybox and pause images, `ctr run`, the CRI pod lifecycle, CNI networking in a test network namespace,
//! and nothing left behind afterwards. These are the baseline the hull shim's tests (runtime handler `hull`)
//! are compared to.
//!
//! Needs root (containerd, mounts, network namespaces); skipped otherwise.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, ContainerdOptions, CRI_NAMESPACE, CTR_NAMESPACE, RUNC_HANDLER};
use hull_tests::cri::PodNetwork;
use hull_tests::oci_image::{self, BUSYBOX_IMAGE};
use hull_tests::skip;

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

#[test]
fn images_are_cached_by_content() {
    let a = oci_image::busybox_image();
    let b = oci_image::busybox_image();
    assert_eq!(a.tar, b.tar);
    assert!(a.tar.is_file());
    let pause = oci_image::pause_image();
    assert_ne!(a.manifest_digest, pause.manifest_digest);
}

/// (a) `ctr run --rm` prints what the container prints and returns its exit code.
#[test]
fn ctr_run_with_runc() {
    require_root!("ctr_run_with_runc");
    let ctd = Containerd::start(ContainerdOptions::default());
    let footprint = ctd.footprint();
    ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());

    let id = format!("echo-{}", std::process::id());
    let started = Instant::now();
    let out = ctd.ctr(&["run", "--rm", BUSYBOX_IMAGE, &id, "echo", "hello"]);
    assert!(out.success(), "ctr run failed: {out:?}\n{}", ctd.report());
    assert_eq!(out.stdout.trim(), "hello", "{out:?}");
    hull_tests::note(&format!("ctr run --rm echo (runc): {:?}", started.elapsed()));

    let id3 = format!("exit3-{}", std::process::id());
    let out = ctd.ctr(&["run", "--rm", BUSYBOX_IMAGE, &id3, "sh", "-c", "exit 3"]);
    assert_eq!(out.code(), 3, "{out:?}\n{}", ctd.report());

    // The image's config gives PATH and the /etc files.
    // runc's output through `ctr run` once came back cut after its first line (a CI run, 2026-12-04; runc's
    // side, no hull in the path): a second run tells such a loss from a wrong PATH, which fails both.
    let (idw1, idw2) = (
        format!("whoami-{}-1", std::process::id()),
        format!("whoami-{}-2", std::process::id()),
    );
    let whoami = |idw: &str| {
        ctd.ctr(&[
            "run",
            "--rm",
            BUSYBOX_IMAGE,
            idw,
            "sh",
            "-c",
            "id -un; echo $PATH; ls -d /tmp",
        ])
    };
    let mut out = whoami(&idw1);
    if out.success() && out.stdout == "root\n" {
        hull_tests::note(&format!(
            "ctr run (runc) lost output after the first line: {out:?}; running it again"
        ));
        out = whoami(&idw2);
    }
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.starts_with("root\n/usr/local/sbin:"), "{out:?}");

    assert!(
        ctd.shim_pids().is_empty(),
        "shims still running after --rm: {:?}",
        ctd.shim_pids()
    );
    drop(ctd);
    let left = footprint.leftovers(&[
        (CTR_NAMESPACE, &id),
        (CTR_NAMESPACE, &id3),
        (CTR_NAMESPACE, &idw1),
        (CTR_NAMESPACE, &idw2),
    ]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// (b) the CRI pod lifecycle on a host-network pod: RunPodSandbox → CreateContainer ×2 → StartContainer ×2 →
/// ExecSync → ContainerStats → StopPodSandbox → RemovePodSandbox.
#[test]
fn cri_pod_lifecycle_with_runc() {
    require_root!("cri_pod_lifecycle_with_runc");
    let ctd = Containerd::start(ContainerdOptions::default());
    let footprint = ctd.footprint();
    let cri = ctd.cri_with_images();
    let version = cri.version().expect("CRI Version");
    assert_eq!(version.runtime_name, "containerd");

    let pod = cri
        .run_pod_sandbox(RUNC_HANDLER, "lifecycle", PodNetwork::Host)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    // The shim socket is where the harness computes it (what `leftovers` checks after drop).
    assert!(
        ctd.shim_socket(CRI_NAMESPACE, &pod.id).exists(),
        "no shim socket {} for the sandbox",
        ctd.shim_socket(CRI_NAMESPACE, &pod.id).display()
    );
    let mut containers = Vec::new();
    for name in ["first", "second"] {
        let id = cri
            .create_container(&pod, name, BUSYBOX_IMAGE, &["sleep", "3600"])
            .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
        containers.push(id);
    }
    for id in &containers {
        cri.start_container(id)
            .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    }
    let out = cri
        .exec_sync(&containers[0], &["echo", "hi"], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "hi\n"), "{out:?}");
    let out = cri
        .exec_sync(
            &containers[1],
            &["sh", "-c", "echo oops >&2; exit 7"],
            Duration::from_secs(30),
        )
        .expect("ExecSync");
    assert_eq!((out.exit_code, out.stderr.as_str()), (7, "oops\n"), "{out:?}");

    let stats = cri
        .container_stats(&containers[0])
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    let memory = stats.memory.and_then(|m| m.working_set_bytes).map(|v| v.value);
    assert!(
        memory.is_some_and(|m| m > 0),
        "no memory working set in {:?}",
        stats.attributes
    );
    assert!(stats.cpu.is_some(), "no CPU stats");

    cri.stop_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    cri.remove_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    let left = ctd.ctr_ok(CRI_NAMESPACE, &["containers", "ls", "-q"]);
    assert!(left.trim().is_empty(), "containers left after RemovePodSandbox: {left}");
    assert!(
        ctd.shim_pids().is_empty(),
        "shims left after RemovePodSandbox: {:?}",
        ctd.shim_pids()
    );

    drop(cri);
    drop(ctd);
    let left = footprint.leftovers(&[(CRI_NAMESPACE, &pod.id)]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// (c) CNI: containerd runs in a test network namespace; a pod gets an address on the bridge's subnet and
/// reaches a TCP server the test runs at the bridge gateway.
#[test]
fn cni_pod_reaches_gateway_with_runc() {
    require_root!("cni_pod_reaches_gateway_with_runc");
    let ctd = Containerd::start(ContainerdOptions {
        network: true,
        ..Default::default()
    });
    let footprint = ctd.footprint();
    let network = ctd.network().expect("network").clone();
    let cri = ctd.cri_with_images();

    let listener = ctd.tcp_listener(0).expect("listen at the gateway in the netns");
    let port = listener.local_addr().expect("local addr").port();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = String::new();
        let _ = conn.read_to_string(&mut got);
        let _ = conn.write_all(b"");
        (peer, got)
    });

    let pod = cri
        .run_pod_sandbox(RUNC_HANDLER, "net", PodNetwork::Cni)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    let ip = cri.pod_ip(&pod.id).expect("PodSandboxStatus");
    let prefix = network.subnet.trim_end_matches("0/24");
    assert!(ip.starts_with(prefix), "pod IP {ip:?} not in {}", network.subnet);

    let c = cri
        .create_container(&pod, "client", BUSYBOX_IMAGE, &["sleep", "3600"])
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    cri.start_container(&c)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    let script = format!("echo hello-from-pod | nc -w 5 {} {port}", network.gateway);
    let out = cri
        .exec_sync(&c, &["sh", "-c", &script], Duration::from_secs(60))
        .expect("ExecSync");
    assert_eq!(out.exit_code, 0, "{out:?}");
    let (peer, got) = server.join().expect("server thread");
    assert_eq!(got, "hello-from-pod\n");
    assert_eq!(peer.ip().to_string(), ip, "the connection came from the pod's address");

    // The pod's address lives in the test namespace, not on the machine's interfaces.
    let host_addrs = std::process::Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .expect("ip addr");
    assert!(!String::from_utf8_lossy(&host_addrs.stdout).contains(&network.gateway.to_string()));
    let ns_addrs = ctd
        .netns_command("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .expect("ip addr in netns");
    assert!(String::from_utf8_lossy(&ns_addrs.stdout).contains(&network.gateway.to_string()));

    cri.stop_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    cri.remove_pod_sandbox(&pod.id)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    drop(cri);
    drop(ctd);
    let left = footprint.leftovers(&[(CRI_NAMESPACE, &pod.id)]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// (d) a test that stops half-way (a running pod and a detached task) still leaves nothing behind.
#[test]
fn drop_cleans_up_running_work() {
    require_root!("drop_cleans_up_running_work");
    let ctd = Containerd::start(ContainerdOptions {
        network: true,
        ..Default::default()
    });
    let footprint = ctd.footprint();
    ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let id = format!("detached-{}", std::process::id());
    ctd.ctr_ok(CTR_NAMESPACE, &["run", "-d", BUSYBOX_IMAGE, &id, "sleep", "3600"]);
    let cri = ctd.cri_with_images();
    let pod = cri
        .run_pod_sandbox(RUNC_HANDLER, "abandoned", PodNetwork::Cni)
        .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    let c = cri
        .create_container(&pod, "sleeper", BUSYBOX_IMAGE, &["sleep", "3600"])
        .expect("create");
    cri.start_container(&c).expect("start");
    assert_eq!(ctd.shim_pids().len(), 2, "one shim for the task, one for the pod");
    assert!(!hull_tests::containerd::mounts_under(&footprint.dir).is_empty());

    drop(cri);
    drop(ctd);
    let left = footprint.leftovers(&[(CTR_NAMESPACE, &id), (CRI_NAMESPACE, &pod.id)]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// The `hull` runtime handler is configured as a shim test needs it: runtime type `io.containerd.hull.v2`, the
/// shim config path in its options, extra runtime keys, and the profile directory first on containerd's PATH.
#[test]
fn hull_handler_is_configured() {
    require_root!("hull_handler_is_configured");
    let shim_config = std::env::temp_dir().join("hull-shim-config-for-test.toml");
    let ctd = Containerd::start(ContainerdOptions {
        hull_config_path: Some(shim_config.clone()),
        hull_runtime_toml: "pod_annotations = [\"io.hull.*\"]".into(),
        ..Default::default()
    });
    let cri = ctd.cri();
    let info = cri.status_info().expect("CRI Status");
    let config: serde_json::Value = serde_json::from_str(info.get("config").expect("config in Status info")).unwrap();
    let hull = &config["containerd"]["runtimes"]["hull"];
    assert_eq!(hull["runtimeType"], "io.containerd.hull.v2", "{hull}");
    assert_eq!(
        hull["options"]["ConfigPath"],
        shim_config.to_string_lossy().as_ref(),
        "{hull}"
    );
    assert_eq!(hull["PodAnnotations"][0], "io.hull.*", "{hull}");
    assert_eq!(
        config["containerd"]["runtimes"]["runc"]["runtimeType"],
        "io.containerd.runc.v2"
    );
    assert_eq!(config["sandboxImage"], "hull.test/pause:1");
    assert_eq!(config["restrictOOMScoreAdj"], true);

    let environ = containerd_environ(&ctd);
    let path = environ
        .iter()
        .find_map(|v| v.strip_prefix("PATH="))
        .expect("PATH in containerd's environment");
    let first = path.split(':').next().unwrap_or_default();
    assert_eq!(
        Some(std::path::PathBuf::from(first)),
        hull_tests::containerd::profile_dir()
    );

    let footprint = ctd.footprint();
    drop(cri);
    drop(ctd);
    let left = footprint.leftovers(&[]);
    assert!(left.is_empty(), "left behind: {left:#?}");
}

fn containerd_environ(ctd: &Containerd) -> Vec<String> {
    let pid = ctd.pid().expect("containerd runs");
    std::fs::read(format!("/proc/{pid}/environ"))
        .expect("read environ")
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}
