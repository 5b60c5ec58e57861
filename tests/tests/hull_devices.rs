//! End to end: the user-space device tests — virtio-blk (known-pattern checksum, a read-only drive refusing
//! writes, a write + fsync surviving `kill -9`), virtio-vsock (echo both ways, 100 concurrent connections,
//! 100 MiB each way at once, every byte checked) and virtio-net (ping and TCP both ways over a TAP in a
//! network namespace this test creates) — with the busybox guest booted in **hull itself**: virtio-mmio
//! devices configured through the API or `--config-file`, the vsock's host side Firecracker's hybrid unix
//! socket.
//!
//! Each scenario is written once, against [`Vmm`], and runs twice: `hull_*` under hull, which needs hardware
//! KVM (under the software `kvm_pvm` no Linux guest reaches user space, so those tests print a loud SKIPPED
//! line and return), and `qemu_*` under QEMU TCG with hull's vhost-user backends, which runs everywhere. The
//! two differ only in the VMM `guest_devices::boot` starts: same guest scripts and initramfs, same host-side
//! checks. `hull_takes_*` run wherever /dev/kvm opens: hull accepts the scenarios' device configuration (API
//! and config file), attaches every device and binds the vsock socket; they stop before the guest runs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hull_tests::guest_devices::*;
use hull_tests::vhost_user::{ensure_tools, pattern, sha256_bytes, sha256_file, WorkDir, GUEST_TIMEOUT};
use hull_tests::{hardware_kvm, kvm_usable, skip, software_kvm};

/// hull, like Firecracker, takes drive ids of letters, digits and underscores; the guest scripts' dashed
/// serials become these (see `guest_devices::guest_script`).
const DRIVE_RENAMES: &[(&str, &str)] = &[
    ("pattern-drive", "pattern_drive"),
    ("ro-drive", "ro_drive"),
    ("data-drive", "data_drive"),
];
const GUEST_CID: u32 = 7;
const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const TAP: &str = "devtap0";
const GUEST_MAC: &str = "52:54:00:77:00:02";
const G2H_BYTES: usize = 16 * 1024 * 1024;
const H2G_BYTES: usize = 8 * 1024 * 1024;

/// `true` when hull can boot the test guest to user space here; otherwise prints the loud SKIPPED line.
fn hull_runs_linux_guests(test: &str) -> bool {
    if hardware_kvm() {
        return true;
    }
    let why = if software_kvm() {
        "needs hardware KVM: /dev/kvm is kvm_pvm (software KVM), where no Linux guest reaches user space in hull; \
         the same scenario runs under QEMU TCG as the qemu_ test of the same name"
    } else {
        "needs hardware KVM: /dev/kvm is missing or not accessible"
    };
    skip(test, why);
    false
}

fn drive(id: &str, path: PathBuf, read_only: bool) -> DriveSpec {
    DriveSpec {
        id: id.into(),
        path,
        read_only,
    }
}

// ---------------------------------------------------------------------------------------------------------
// virtio-blk

fn blk_reads_pattern_and_read_only_drive_refuses_writes(vmm: Vmm) {
    ensure_tools();
    let dir = WorkDir::new("dev-blk");
    let started = Instant::now();
    // 8 MiB + 512: capacity must come out as 16385 sectors.
    let image = dir.join("pattern.img");
    std::fs::write(&image, pattern(8 * 1024 * 1024 + 512, 42)).unwrap();
    let ro_image = dir.join("ro.img");
    std::fs::write(&ro_image, pattern(1024 * 1024, 7)).unwrap();
    let ro_sha_before = sha256_file(&ro_image);

    let spec = GuestSpec {
        script: guest_script(dir.path(), "blk.sh", DRIVE_RENAMES),
        drives: vec![
            drive("pattern_drive", image.clone(), false),
            drive("ro_drive", ro_image.clone(), true),
        ],
        ..Default::default()
    };
    let mut guest = boot(vmm, dir.path(), &spec);
    guest.expect("HULL-TEST-EXIT", GUEST_TIMEOUT);
    eprintln!("{vmm:?}: blk guest finished in {:?}", started.elapsed());

    let report = guest.report();
    assert_eq!(guest.marker("PATTERN-SECTORS"), "16385", "{report}");
    assert_eq!(guest.marker("PATTERN-SHA"), sha256_file(&image), "{report}");
    assert_eq!(guest.marker("RO-FLAG"), "1", "{report}");
    assert_eq!(guest.marker("RO-SHA"), ro_sha_before, "{report}");
    assert_eq!(guest.marker("RO-WRITE"), "refused", "{report}");
    assert_eq!(guest.marker("LAST-SECTOR"), "ok", "{report}");
    assert_eq!(guest.marker("PAST-END"), "0", "{report}");
    assert_eq!(guest.marker("HULL-TEST-EXIT"), "0", "{report}");
    assert_eq!(sha256_file(&ro_image), ro_sha_before, "the read-only image changed");
    // The guest's reset (reboot=k) ends the VMM: QEMU through -no-reboot, hull by exiting 0.
    let status = guest.console.wait_exit(Duration::from_secs(60));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the VMM did not exit 0 after the reset\n{}",
        guest.report()
    );
}

fn blk_write_with_fsync_survives_kill_9(vmm: Vmm) {
    ensure_tools();
    let dir = WorkDir::new("dev-blk-kill");
    let started = Instant::now();
    let image = dir.join("data.img");
    std::fs::write(&image, vec![0u8; 16 * 1024 * 1024]).unwrap();
    let seed = std::process::id();
    let spec = GuestSpec {
        script: guest_script(dir.path(), "blk-write.sh", DRIVE_RENAMES),
        cmdline: format!("hull.seed={seed}"),
        drives: vec![drive("data_drive", image.clone(), false)],
        ..Default::default()
    };
    let mut guest = boot(vmm, dir.path(), &spec);
    let line = guest.expect("WRITTEN", GUEST_TIMEOUT);
    guest.kill9();
    eprintln!(
        "{vmm:?}: write acknowledged after {:?}; killed the VMM (and any backend)",
        started.elapsed()
    );

    let expected: Vec<u8> = format!("hull-durable-{seed}\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(1024 * 1024)
        .collect();
    let disk = std::fs::read(&image).unwrap();
    assert_eq!(
        marker(&line, "WRITTEN"),
        sha256_bytes(&expected),
        "guest wrote something else"
    );
    assert!(
        disk[4 * 1024 * 1024..5 * 1024 * 1024] == expected[..],
        "the fsynced write is not in the image after kill -9"
    );
    assert!(
        disk[..4 * 1024 * 1024].iter().all(|b| *b == 0),
        "bytes before the write changed"
    );
}

#[test]
fn hull_blk_reads_pattern_and_read_only_drive_refuses_writes() {
    if hull_runs_linux_guests("hull_blk_reads_pattern_and_read_only_drive_refuses_writes") {
        blk_reads_pattern_and_read_only_drive_refuses_writes(Vmm::HullConfigFile);
    }
}

#[test]
fn hull_blk_write_with_fsync_survives_kill_9() {
    if hull_runs_linux_guests("hull_blk_write_with_fsync_survives_kill_9") {
        blk_write_with_fsync_survives_kill_9(Vmm::HullApi);
    }
}

#[test]
fn qemu_blk_reads_pattern_and_read_only_drive_refuses_writes() {
    blk_reads_pattern_and_read_only_drive_refuses_writes(Vmm::Qemu);
}

#[test]
fn qemu_blk_write_with_fsync_survives_kill_9() {
    blk_write_with_fsync_survives_kill_9(Vmm::Qemu);
}

// ---------------------------------------------------------------------------------------------------------
// virtio-vsock

struct VsockGuest {
    guest: Guest,
    uds: PathBuf,
    _dir: WorkDir,
}

/// Boots `vsock.sh` (serve port 52, echo to the host's port 5000) and waits for `VSOCK-READY`.
fn boot_vsock(vmm: Vmm, name: &str) -> VsockGuest {
    ensure_tools();
    let dir = WorkDir::new(name);
    let tool = build_vsock_tool(dir.path());
    let uds = dir.join("v.sock");
    // Host listener for the guest's echo client (guest → host port 5000).
    let echo = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = echo.accept() {
            let mut data = Vec::new();
            let _ = c.read_to_end(&mut data);
            let _ = c.write_all(&data);
        }
    });
    let spec = GuestSpec {
        script: "vsock.sh".into(),
        extra_files: vec![("/bin/vsock-tool".into(), tool)],
        vsock: Some(VsockSpec {
            cid: GUEST_CID,
            uds: uds.clone(),
        }),
        ..Default::default()
    };
    let mut guest = boot(vmm, dir.path(), &spec);
    guest.expect("VSOCK-READY", GUEST_TIMEOUT);
    VsockGuest { guest, uds, _dir: dir }
}

fn vsock_echo_both_directions_and_guest_cid(vmm: Vmm) {
    let vm = boot_vsock(vmm, "dev-vsock-echo");
    let report = vm.guest.report();
    assert_eq!(vm.guest.marker("GUEST-CID"), GUEST_CID.to_string(), "{report}");
    assert_eq!(vm.guest.marker("ECHO-G2H"), "hello-from-guest", "{report}");

    let mut s = connect_guest(&vm.uds, GUEST_VSOCK_PORT);
    s.write_all(b"ECHO\nhello-from-host").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    assert_eq!(back, "hello-from-host");

    // A CONNECT to a port nobody listens on is closed without an OK.
    let mut s = UnixStream::connect(&vm.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"CONNECT 999\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "got {:?}", String::from_utf8_lossy(&rest));
}

fn vsock_100_concurrent_connections(vmm: Vmm) {
    let vm = boot_vsock(vmm, "dev-vsock-many");
    let start = Instant::now();
    let threads: Vec<_> = (0..100u32)
        .map(|i| {
            let uds = vm.uds.clone();
            std::thread::spawn(move || xfer(&uds, 256 * 1024, i * 7))
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), "RESULT OK", "connection {i}\n{}", vm.guest.report());
    }
    eprintln!("{vmm:?}: 100 connections x 256 KiB each way: {:?}", start.elapsed());
}

fn vsock_100_mib_each_way_at_once(vmm: Vmm) {
    let vm = boot_vsock(vmm, "dev-vsock-bulk");
    let start = Instant::now();
    assert_eq!(
        xfer(&vm.uds, 100 * 1024 * 1024, 12345),
        "RESULT OK",
        "{}",
        vm.guest.report()
    );
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{vmm:?}: 100 MiB each way in {secs:.1} s ({:.1} MiB/s per direction)",
        100.0 / secs
    );
}

#[test]
fn hull_vsock_echo_both_directions_and_guest_cid() {
    if hull_runs_linux_guests("hull_vsock_echo_both_directions_and_guest_cid") {
        vsock_echo_both_directions_and_guest_cid(Vmm::HullApi);
    }
}

#[test]
fn hull_vsock_100_concurrent_connections() {
    if hull_runs_linux_guests("hull_vsock_100_concurrent_connections") {
        vsock_100_concurrent_connections(Vmm::HullApi);
    }
}

#[test]
fn hull_vsock_100_mib_each_way_at_once() {
    if hull_runs_linux_guests("hull_vsock_100_mib_each_way_at_once") {
        vsock_100_mib_each_way_at_once(Vmm::HullConfigFile);
    }
}

#[test]
fn qemu_vsock_echo_both_directions_and_guest_cid() {
    vsock_echo_both_directions_and_guest_cid(Vmm::Qemu);
}

#[test]
fn qemu_vsock_100_concurrent_connections() {
    vsock_100_concurrent_connections(Vmm::Qemu);
}

#[test]
fn qemu_vsock_100_mib_each_way_at_once() {
    vsock_100_mib_each_way_at_once(Vmm::Qemu);
}

// ---------------------------------------------------------------------------------------------------------
// virtio-net

fn accept_with_deadline(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                return s;
            }
            Err(_) if start.elapsed() < GUEST_TIMEOUT => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("no connection from the guest: {e}"),
        }
    }
}

/// `net.sh`: ping the host end of the TAP, 16 MiB guest → host, 8 MiB host → guest. Every address lives in
/// the namespace this creates; the VMM (hull) or its net backend (QEMU) runs inside it, next to the TAP.
fn net_ping_and_tcp_both_ways_over_tap_in_netns(vmm: Vmm) {
    ensure_tools();
    let dir = WorkDir::new("dev-net");
    let ns = Netns::new(if vmm.is_hull() { "hull" } else { "qemu" });
    ns.add_tap(TAP, &format!("{HOST_IP}/24"));

    // Host ends of the two TCP streams, inside the namespace.
    let (ready_tx, ready_rx) = mpsc::channel();
    let h2g_data = pattern(H2G_BYTES, 99);
    let h2g_sha = sha256_bytes(&h2g_data);
    let server = ns.spawn(move || {
        let g2h = TcpListener::bind((HOST_IP, 5001)).unwrap();
        let h2g = TcpListener::bind((HOST_IP, 5002)).unwrap();
        ready_tx.send(()).unwrap();
        let mut s = accept_with_deadline(&g2h);
        let mut got = vec![0u8; G2H_BYTES];
        s.read_exact(&mut got).unwrap();
        drop(s);
        let mut s = accept_with_deadline(&h2g);
        s.write_all(&h2g_data).unwrap();
        got.iter().all(|b| *b == 0)
    });
    ready_rx.recv().unwrap();

    let spec = GuestSpec {
        script: "net.sh".into(),
        cmdline: format!("hull.ip={GUEST_IP} hull.host={HOST_IP}"),
        net: Some(NetSpec {
            tap: TAP.into(),
            mac: GUEST_MAC.into(),
            netns: ns.0.clone(),
        }),
        ..Default::default()
    };
    let start = Instant::now();
    let mut guest = boot(vmm, dir.path(), &spec);
    guest.expect("HULL-TEST-EXIT", GUEST_TIMEOUT);
    eprintln!("{vmm:?}: net guest finished in {:?}", start.elapsed());

    let report = guest.report();
    assert_eq!(guest.marker("GUEST-MAC"), GUEST_MAC, "{report}");
    assert_eq!(guest.marker("PING"), "ok", "{report}");
    assert!(guest.console().contains("SENT-G2H"), "{report}");
    assert_eq!(guest.marker("RECV-H2G"), h2g_sha, "{report}");
    assert!(server.join().unwrap(), "the guest's stream was corrupted");
    drop(guest);
    drop(ns);
}

#[test]
fn hull_net_ping_and_tcp_both_ways_over_tap_in_netns() {
    if hull_runs_linux_guests("hull_net_ping_and_tcp_both_ways_over_tap_in_netns") {
        net_ping_and_tcp_both_ways_over_tap_in_netns(Vmm::HullConfigFile);
    }
}

#[test]
fn qemu_net_ping_and_tcp_both_ways_over_tap_in_netns() {
    net_ping_and_tcp_both_ways_over_tap_in_netns(Vmm::Qemu);
}

// ---------------------------------------------------------------------------------------------------------
// What runs of the hull path on any KVM

/// Starts hull with every device of the scenarios above (two drives, one read-only; a TAP in a namespace;
/// vsock) the way `guest_devices::boot` does, and checks hull attached all four and bound the hybrid vsock
/// socket. The guest is killed right after: on the software KVM it would take a minute to reach /init and
/// then fail there.
fn hull_takes_the_scenario_devices(vmm: Vmm, test: &str) {
    if !kvm_usable() {
        skip(test, "/dev/kvm is missing or not accessible");
        return;
    }
    ensure_tools();
    let dir = WorkDir::new("dev-config");
    let image = dir.join("pattern.img");
    std::fs::write(&image, pattern(1024 * 1024, 1)).unwrap();
    let ro_image = dir.join("ro.img");
    std::fs::write(&ro_image, pattern(1024 * 1024, 2)).unwrap();
    let ns = Netns::new(if vmm == Vmm::HullApi { "cfg-api" } else { "cfg-file" });
    ns.add_tap(TAP, &format!("{HOST_IP}/24"));
    let uds = dir.join("v.sock");
    let spec = GuestSpec {
        script: guest_script(dir.path(), "blk.sh", DRIVE_RENAMES),
        extra_files: vec![],
        cmdline: format!("hull.ip={GUEST_IP} hull.host={HOST_IP}"),
        drives: vec![drive("pattern_drive", image, false), drive("ro_drive", ro_image, true)],
        net: Some(NetSpec {
            tap: TAP.into(),
            mac: GUEST_MAC.into(),
            netns: ns.0.clone(),
        }),
        vsock: Some(VsockSpec {
            cid: GUEST_CID,
            uds: uds.clone(),
        }),
        ..Default::default()
    };
    let mut guest = boot(vmm, dir.path(), &spec);
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = [
        "device=block:pattern_drive",
        "device=block:ro_drive",
        "device=net:eth0",
        "device=vsock:",
    ];
    loop {
        let log = guest.hull_log();
        let attached = |w: &&str| {
            log.lines()
                .any(|l| l.contains("virtio-mmio device attached") && l.contains(*w))
        };
        if wanted.iter().all(attached) && log.contains("microVM started") && uds.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline && guest.console.wait_exit(Duration::ZERO).is_none(),
            "hull did not attach {wanted:?}, start the microVM and bind {}\n{}",
            uds.display(),
            guest.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let cmdline = hull_vm_config(&spec, &dir.join("initramfs.cpio"))["boot-source"]["boot_args"].clone();
    eprintln!("{vmm:?}: hull attached the four devices; boot_args {cmdline}");
    guest.kill9();
    drop(ns);
}

#[test]
fn hull_takes_the_scenario_devices_through_the_api() {
    hull_takes_the_scenario_devices(Vmm::HullApi, "hull_takes_the_scenario_devices_through_the_api");
}

#[test]
fn hull_takes_the_scenario_devices_from_a_config_file() {
    hull_takes_the_scenario_devices(
        Vmm::HullConfigFile,
        "hull_takes_the_scenario_devices_from_a_config_file",
    );
}
