//! hull's virtio devices under the project's real guest kernel, in one boot per transport (virtio-mmio, and
//! virtio-pci with `--enable-pci`; each boot costs about a minute of emulated ring 0 under the software
//! kvm_pvm): an ext4 root drive that the kernel mounts, a virtio-net
//! interface on a TAP that gets a DHCP answer from dnsmasq, and a vsock device the guest driver brings up
//! (hull logs `virtio-mmio device activated` or `virtio-pci device activated` with `kind=vsock` when the
//! driver writes DRIVER_OK; the kernel itself prints nothing when virtio-vsock probes). The same boot carries a balloon (the driver's first
//! statistics reach `GET /balloon/statistics`, and a new target is inflated to), an entropy device (the
//! kernel's hwrng core draws from it) and a pmem device (the driver maps it as `/dev/pmem0`).
//!
//! Everything the test touches lives in places it creates: a network namespace with the TAP and dnsmasq (hull
//! is started inside it with `ip netns exec`, since the TAP lives there), and a temporary directory with the
//! disk image and the vsock socket. A guard kills dnsmasq and deletes the namespace (and with it the TAP)
//! even when an assertion fails; hull is killed by its own guard. Needs root (network namespaces), `ip`,
//! `mkfs.ext4` and `dnsmasq` (`scripts/install-test-deps.sh`); without them the test is skipped loudly.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_tests::{hull_bin, repo_root, require_kvm, skip, FileLock, Hull, TempDir};
use serde_json::json;

/// The whole boot to the last line (~65 s idle under kvm_pvm; much more while a build runs).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// TAP, addresses and MAC of the test network; the namespace name carries the PID so runs never collide.
const TAP: &str = "hulltap0";
const HOST_ADDR: &str = "172.30.99.1/24";
const DHCP_RANGE: &str = "172.30.99.10,172.30.99.20,1h";
const GUEST_MAC: &str = "06:00:ac:1e:63:02";

/// Polls `GET path` until `done` accepts the JSON (at most BOOT_TIMEOUT); returns it.
fn wait_for_json(
    api: &hull_tests::ApiClient,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(r) = api.get(path) {
            let json = r.json();
            if r.status == 200 && done(&json) {
                return Some(json);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    None
}

/// Runs a command to completion; panics with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A network namespace with a TAP at `HOST_ADDR` and dnsmasq serving DHCP on it. Drop kills dnsmasq (by PID)
/// and deletes the namespace, which removes the TAP.
struct TestNetwork {
    netns: String,
    dnsmasq: Option<Child>,
}

impl TestNetwork {
    fn create(dir: &Path) -> TestNetwork {
        let netns = format!("hull-virtio-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &netns])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &netns]));
        // From here on, the guard cleans up whatever follows.
        let mut net = TestNetwork { netns, dnsmasq: None };
        let ns = net.netns.clone();
        run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        run(Command::new("ip").args(["-n", &ns, "tuntap", "add", "dev", TAP, "mode", "tap"]));
        run(Command::new("ip").args(["-n", &ns, "addr", "add", HOST_ADDR, "dev", TAP]));
        run(Command::new("ip").args(["-n", &ns, "link", "set", TAP, "up"]));
        let log = std::fs::File::create(dir.join("dnsmasq.log")).expect("create dnsmasq log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--log-dhcp",
            ])
            .arg(format!("--interface={TAP}"))
            .arg("--bind-interfaces")
            .arg(format!("--dhcp-range={DHCP_RANGE}"))
            .arg("--port=0")
            .arg(format!("--dhcp-leasefile={}", dir.join("dnsmasq.leases").display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start dnsmasq");
        net.dnsmasq = Some(child);
        net
    }

    /// What dnsmasq said so far (for failure reports).
    fn dnsmasq_log(dir: &Path) -> String {
        std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default()
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        if let Some(mut child) = self.dnsmasq.take() {
            // `ip netns exec` execs dnsmasq, so this PID is dnsmasq itself.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

/// The guest kernel: `$HULL_KERNEL`, else what `resources/build-guest.sh --kernel-only` prints as `kernel=`
/// (it waits for a build in progress, and builds when nothing is cached).
fn guest_kernel() -> PathBuf {
    if let Some(kernel) = std::env::var_os("HULL_KERNEL") {
        return kernel.into();
    }
    let script = repo_root().join("resources/build-guest.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--kernel-only")
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} --kernel-only failed: {}",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kernel = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("kernel="))
        .map(|k| PathBuf::from(k.trim()));
    kernel.unwrap_or_else(|| panic!("{} printed no kernel= line:\n{stdout}", script.display()))
}

/// A 32 MiB ext4 image holding a marker file.
fn make_rootfs(dir: &Path) -> PathBuf {
    let tree = dir.join("rootfs-tree");
    std::fs::create_dir_all(tree.join("etc")).expect("create rootfs tree");
    std::fs::write(
        tree.join("etc/hull-virtio-test"),
        "root drive for tests/tests/virtio_boot.rs\n",
    )
    .expect("write");
    let image = dir.join("rootfs.ext4");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("32M"));
    image
}

/// A script that runs the real hull inside `netns` (`ip netns exec` execs it, so the PID stays hull's).
fn hull_in_netns(dir: &Path, netns: &str) -> PathBuf {
    let real = hull_bin();
    let wrapper = dir.join("hull-in-netns");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec ip netns exec {netns} {} \"$@\"\n", real.display()),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod wrapper");
    wrapper
}

/// Which transport hull puts the devices on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Mmio,
    Pci,
}

#[test]
fn linux_mounts_a_virtio_root_gets_dhcp_over_virtio_net_and_brings_up_virtio_vsock() {
    boot_with_virtio_devices(
        "linux_mounts_a_virtio_root_gets_dhcp_over_virtio_net_and_brings_up_virtio_vsock",
        Transport::Mmio,
    );
}

/// The same boot with `--enable-pci`: the kernel finds the three devices by scanning PCI bus 0 (no
/// command-line entries) and its virtio-pci driver runs them with MSI-X interrupts.
#[test]
fn linux_finds_the_same_devices_on_virtio_pci_with_enable_pci() {
    boot_with_virtio_devices(
        "linux_finds_the_same_devices_on_virtio_pci_with_enable_pci",
        Transport::Pci,
    );
}

fn boot_with_virtio_devices(name: &str, transport: Transport) {
    require_kvm!(name);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(name, "network namespaces and TAP devices need root");
        return;
    }
    for tool in ["ip", "mkfs.ext4", "dnsmasq"] {
        if !have(tool) {
            skip(name, &format!("{tool} is missing; run scripts/install-test-deps.sh"));
            return;
        }
    }
    let kernel = guest_kernel();
    let _one_linux_boot_at_a_time = FileLock::acquire("linux-boot");

    let dir = TempDir::new("virtio-boot").expect("create temp dir");
    let rootfs = make_rootfs(dir.path());
    let net = TestNetwork::create(dir.path());
    // The wrapper starts hull inside the namespace, where the TAP lives.
    let wrapper = hull_in_netns(dir.path(), &net.netns);
    let hull_dir = TempDir::new("virtio-boot-hull").expect("create temp dir");
    let sock = hull_dir.path().join("api.sock");
    let mut args = vec!["--api-sock".to_string(), sock.display().to_string()];
    if transport == Transport::Pci {
        args.push("--enable-pci".into());
    }
    let mut hull = Hull::spawn_binary_in(&wrapper, hull_dir, &args);
    hull.wait_for_api(Duration::from_secs(10));
    let api = hull.api();
    let uds = dir.path().join("v.sock");

    let args = "console=ttyS0 reboot=k panic=1 ip=dhcp";
    api.expect_ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": kernel, "boot_args": args }),
    );
    api.expect_ok(
        "PUT",
        "/machine-config",
        &json!({ "vcpu_count": 1, "mem_size_mib": 128 }),
    );
    api.expect_ok(
        "PUT",
        "/drives/rootfs",
        &json!({ "drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true, "is_read_only": false }),
    );
    api.expect_ok(
        "PUT",
        "/network-interfaces/eth0",
        &json!({ "iface_id": "eth0", "host_dev_name": TAP, "guest_mac": GUEST_MAC }),
    );
    api.expect_ok("PUT", "/vsock", &json!({ "guest_cid": 3, "uds_path": uds }));
    api.expect_ok(
        "PUT",
        "/balloon",
        &json!({ "amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1 }),
    );
    api.expect_ok("PUT", "/entropy", &json!({}));
    let metrics_path = dir.path().join("metrics.json");
    api.expect_ok("PUT", "/metrics", &json!({ "metrics_path": metrics_path }));
    let pmem_image = dir.path().join("pmem.img");
    std::fs::File::create(&pmem_image).unwrap().set_len(4 << 20).unwrap();
    api.expect_ok(
        "PUT",
        "/pmem/scratch",
        &json!({ "id": "scratch", "path_on_host": pmem_image }),
    );
    let started = Instant::now();
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "InstanceStart" }));

    // Configuration after start is refused like Firecracker does.
    let late = api
        .put(
            "/drives/late",
            &json!({ "drive_id": "late", "path_on_host": rootfs, "is_root_device": false }),
        )
        .expect("PUT /drives after start");
    assert_eq!(late.status, 400, "{}", late.body);
    assert!(
        late.body.contains("not supported after starting the microVM"),
        "{}",
        late.body
    );

    let report = |hull: &Hull| {
        format!(
            "{}\n--- dnsmasq ---\n{}",
            hull.report(),
            TestNetwork::dnsmasq_log(dir.path())
        )
    };
    let kind = match transport {
        Transport::Mmio => "virtio-mmio",
        Transport::Pci => "virtio-pci",
    };
    match transport {
        Transport::Mmio => {
            // hull declared the three devices on the command line the kernel saw, root drive first, and the
            // kernel registered them. (The wait ends on a complete line; the command line is long printed by then.)
            hull.wait_for_output("virtio-mmio.2 at 0xd0002000-0xd0002fff, IRQ 7.", BOOT_TIMEOUT)
                .unwrap_or_else(|| {
                    panic!(
                        "the kernel did not register the third virtio-mmio device\n{}",
                        report(&hull)
                    )
                });
            let serial = hull.stdout();
            let cmdline = serial.lines().find(|l| l.contains("Command line:")).unwrap_or_default();
            for expected in [
                "root=/dev/vda rw",
                "pci=off",
                "virtio_mmio.device=4K@0xd0000000:5",
                "virtio_mmio.device=4K@0xd0001000:6",
                "virtio_mmio.device=4K@0xd0002000:7",
            ] {
                assert!(cmdline.contains(expected), "{expected:?} missing from {cmdline:?}");
            }
        }
        Transport::Pci => {
            // The kernel scanned bus 0 and found the three functions hull put there, in attachment order:
            // block (1af4:1042), net (1af4:1041), vsock (1af4:1053), each with the BAR hull assigned.
            for (slot, id) in [(1, "1af4:1042"), (2, "1af4:1041"), (3, "1af4:1053")] {
                let line = format!("pci 0000:00:0{slot}.0: [{id}] type 00");
                hull.wait_for_output(&line, BOOT_TIMEOUT)
                    .unwrap_or_else(|| panic!("the kernel did not find {line:?}\n{}", report(&hull)));
            }
            // Linux read the BARs hull assigned (this kernel prints them as `BAR 0 [mem ...]`) ...
            for (slot, base) in [
                (1, "0xe0000000-0xe0007fff"),
                (2, "0xe0008000-0xe000ffff"),
                (3, "0xe0010000-0xe0017fff"),
            ] {
                let bar = format!("pci 0000:00:0{slot}.0: BAR 0 [mem {base} 64bit]");
                hull.wait_for_output(&bar, BOOT_TIMEOUT)
                    .unwrap_or_else(|| panic!("{bar:?} missing\n{}", report(&hull)));
            }
            let serial = hull.stdout();
            let cmdline = serial.lines().find(|l| l.contains("Command line:")).unwrap_or_default();
            assert!(cmdline.contains("root=/dev/vda rw"), "{cmdline:?}");
            assert!(
                !cmdline.contains("virtio_mmio") && !cmdline.contains("pci=off"),
                "{cmdline:?}"
            );
        }
    }

    let mut timings = Vec::new();
    for (what, pattern) in [
        // In the order the kernel probes them.
        ("virtio-blk activated", "device activated device=block:"),
        ("virtio-net activated", "device activated device=net:"),
        ("virtio-vsock activated", "device activated device=vsock:"),
        ("virtio-balloon activated", "device activated device=balloon"),
        ("virtio-rng activated", "device activated device=rng:entropy"),
        ("virtio-pmem activated", "device activated device=pmem:scratch"),
    ] {
        let pattern = format!("{kind} {pattern}");
        let line = hull
            .wait_for_log(&pattern, BOOT_TIMEOUT)
            .unwrap_or_else(|| panic!("no {what}\n{}", report(&hull)));
        eprintln!("{line}");
        if transport == Transport::Pci {
            // The driver took MSI-X: interrupts go through the vectors' KVM routes.
            assert!(line.contains("msix=true"), "{line}");
        }
        timings.push((what, started.elapsed()));
    }
    // Right away, while the guest runs (with no init on the root image it panics and resets a few seconds
    // after mounting it): the balloon driver sent its first statistics when it probed, and inflates to a
    // new target.
    let stats = wait_for_json(&api, "/balloon/statistics", |j| j.get("total_memory").is_some())
        .unwrap_or_else(|| panic!("no guest statistics\n{}", report(&hull)));
    let total = stats["total_memory"].as_u64().unwrap_or(0);
    assert!(total > 64 << 20 && total <= 128 << 20, "{stats}");
    api.expect_ok("PATCH", "/balloon", &json!({ "amount_mib": 4 }));
    let stats = wait_for_json(&api, "/balloon/statistics", |j| j["actual_mib"] == 4)
        .unwrap_or_else(|| panic!("the balloon did not reach 4 MiB\n{}", report(&hull)));
    assert_eq!(
        (stats["target_pages"].as_u64(), stats["actual_pages"].as_u64()),
        (Some(1024), Some(1024))
    );
    eprintln!(
        "balloon inflated to 4 MiB {:.1} s after InstanceStart",
        started.elapsed().as_secs_f64()
    );
    // The kernel's hwrng core drew bytes from the entropy device when the driver registered it, and the
    // balloon inflated through its queue: both show in Firecracker's metrics sections.
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "FlushMetrics" }));
    // Lines hold deltas and the 60 s periodic flush may have written one already: sum over all lines.
    let metrics = std::fs::read_to_string(&metrics_path).unwrap_or_default();
    let total = |section: &str, key: &str| -> u64 {
        metrics
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|line| line[section][key].as_u64())
            .sum()
    };
    assert!(total("entropy", "entropy_bytes") > 0, "{metrics}");
    assert!(total("balloon", "inflate_count") > 0, "{metrics}");
    for (what, pattern) in [
        ("DHCP answer", "IP-Config: Got DHCP answer"),
        ("ext4 root mounted", "VFS: Mounted root (ext4 filesystem)"),
    ] {
        hull.wait_for_output(pattern, BOOT_TIMEOUT)
            .unwrap_or_else(|| panic!("no {what}\n{}", report(&hull)));
        timings.push((what, started.elapsed()));
    }
    for (what, at) in &timings {
        eprintln!("{what}: {:.1} s after InstanceStart", at.as_secs_f64());
    }
    if transport == Transport::Pci {
        // ... and kept them: a BAR it could not claim would be "assigned" elsewhere.
        let serial = hull.stdout();
        for line in serial.lines().filter(|l| l.contains("PCI") || l.contains("pci ")) {
            eprintln!("{line}");
        }
        assert!(
            !serial.contains(": assigned") && !serial.contains("can't claim"),
            "{}",
            report(&hull)
        );
    }
    // The guest got an address from our range.
    let complete = hull.expect_output("IP-Config: Complete", Duration::ZERO);
    let addr = hull.expect_output("device=eth0", Duration::ZERO);
    assert!(
        addr.contains(&format!("hwaddr={GUEST_MAC}")) && addr.contains("ipaddr=172.30.99."),
        "{complete}\n{addr}"
    );
    // The pmem driver attached the namespace the virtio-pmem region holds (it becomes /dev/pmem0). It warns
    // that it cannot flush through DIMM hints: a virtio-pmem region has none, fsync goes through the
    // device's flush queue instead.
    let serial = hull.stdout();
    assert!(
        serial.lines().any(|l| l.contains("nd_pmem namespace0.0")),
        "the pmem namespace was not attached\n{}",
        report(&hull)
    );
    // The driver kept its devices: none needed a reset.
    assert!(!hull.stderr().contains("needs a reset"), "{}", report(&hull));
    hull.kill();
    drop(net);
}
