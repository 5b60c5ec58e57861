//! Snapshots end to end (`PUT /snapshot/create`, `PUT /snapshot/load`): a tiny guest that counts in a
//! register and in guest memory, with a drive and a vsock attached, is paused, snapshotted, killed with
//! its hull, and loaded into a new hull process, where it prints the next count with both numbers and its
//! memory pattern intact; the restored VM is snapshotted again. Also: diff snapshots merged onto their
//! full base with `hull rebase-snap`, Firecracker's ordering rules, and snapshots that are truncated,
//! corrupt, of another format version or with a memory file of the wrong size, each refused with a 400
//! while the process stays usable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_tests::{dec_field, require_kvm, tiny_guest, Hull, TempDir};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A booted snapcount guest with a drive and a vsock, served on an API socket.
fn boot(label: &str, dir: &Path, track_dirty_pages: bool) -> Hull {
    boot_with(label, dir, track_dirty_pages, 1)
}

fn boot_with(label: &str, dir: &Path, track_dirty_pages: bool, vcpus: u8) -> Hull {
    let drive = dir.join("disk.raw");
    std::fs::write(&drive, vec![0u8; 64 * 1024]).unwrap();
    let config = json!({
        "boot-source": { "kernel_image_path": tiny_guest("snapcount.elf"), "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": vcpus, "mem_size_mib": 64, "track_dirty_pages": track_dirty_pages },
        "drives": [{ "drive_id": "data", "path_on_host": drive, "is_root_device": false }],
        "vsock": { "guest_cid": 3, "uds_path": dir.join("v.sock") },
    });
    let cfg = dir.join("vm.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let hull = Hull::with_api(label, &["--config-file", cfg.to_str().unwrap()]);
    hull.expect_output("hull-tiny: snap tick=1 ", TIMEOUT);
    hull
}

fn put(hull: &Hull, uri: &str, body: Value) -> (u16, String) {
    let resp = hull
        .api()
        .request("PUT", uri, Some(&body.to_string()))
        .unwrap_or_else(|e| panic!("PUT {uri}: {e}\n{}", hull.report()));
    (resp.status, resp.body)
}

/// Pauses, writes a snapshot of `kind`, and returns the console output up to the pause (which may end
/// in the middle of a line: the restored guest finishes it).
fn pause_and_snapshot(hull: &Hull, snap: &Path, mem: &Path, kind: &str) -> String {
    hull.api().expect_ok("PATCH", "/vm", &json!({ "state": "Paused" }));
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = put(
        hull,
        "/snapshot/create",
        json!({ "snapshot_path": snap, "mem_file_path": mem, "snapshot_type": kind }),
    );
    assert_eq!(status, 204, "snapshot/create {kind}: {body}\n{}", hull.report());
    hull.stdout()
}

/// The complete tick lines of `out`, checked: consecutive from 0, the register and memory counts equal,
/// the memory pattern intact. Returns the last tick.
fn check_ticks(out: &str) -> u64 {
    let mut next = 0;
    for line in out
        .lines()
        .filter(|l| l.starts_with("hull-tiny: snap tick=") && l.ends_with("check=ok"))
    {
        assert_eq!(
            dec_field(line, "tick"),
            next,
            "ticks must be consecutive: {line:?} in\n{out}"
        );
        assert_eq!(
            dec_field(line, "mem"),
            next,
            "the memory count must follow the register: {line:?}"
        );
        next += 1;
    }
    assert!(!out.contains("check=bad"), "the memory pattern changed:\n{out}");
    assert!(next > 0, "no tick line in\n{out}");
    next - 1
}

/// A new hull that loads the snapshot and resumes; returns it once it printed two more ticks, checked:
/// what the first process printed and what this one prints join into one consecutive count (registers,
/// memory and the console's half-written line all carried over), and the guest did not boot again.
fn restore_and_check(label: &str, snap: &Path, mem: &Path, before: &str) -> Hull {
    let last = check_ticks(before);
    let hull = Hull::with_api(label, &[]);
    let (status, body) = put(
        &hull,
        "/snapshot/load",
        json!({ "snapshot_path": snap, "mem_backend": { "backend_type": "File", "backend_path": mem }, "resume_vm": true }),
    );
    assert_eq!(status, 204, "snapshot/load: {body}\n{}", hull.report());
    hull.expect_output(&format!("hull-tiny: snap tick={} ", last + 3), TIMEOUT);
    let after = hull.stdout();
    assert!(
        !after.contains("snap start"),
        "the restored guest must not boot again:\n{after}"
    );
    assert!(check_ticks(&format!("{before}{after}")) >= last + 2);
    let info = hull.api().get("/").unwrap().json();
    assert_eq!(info["state"], "Running", "{info}");
    hull
}

#[test]
fn a_tiny_guest_continues_in_a_new_process_and_can_be_snapshotted_again() {
    require_kvm!("a_tiny_guest_continues_in_a_new_process_and_can_be_snapshotted_again");
    let dir = TempDir::new("snap-tiny").unwrap();
    let mut first = boot("snap-a", dir.path(), false);
    // Firecracker's rules on a running VM: no snapshot unless paused, no diff without dirty tracking.
    let (status, body) = put(
        &first,
        "/snapshot/create",
        json!({ "snapshot_path": dir.path().join("x"), "mem_file_path": dir.path().join("y") }),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("save/restore unavailable while running"), "{body}");
    first.api().expect_ok("PATCH", "/vm", &json!({ "state": "Paused" }));
    let (status, body) = put(
        &first,
        "/snapshot/create",
        json!({ "snapshot_path": dir.path().join("x"), "mem_file_path": dir.path().join("y"), "snapshot_type": "Diff" }),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("dirty page tracking disabled"), "{body}");
    first.api().expect_ok("PATCH", "/vm", &json!({ "state": "Resumed" }));

    let (snap, mem) = (dir.path().join("snap1"), dir.path().join("mem1"));
    let before = pause_and_snapshot(&first, &snap, &mem, "Full");
    assert_eq!(std::fs::metadata(&mem).unwrap().len(), 64 << 20);
    first.kill();
    let output = std::process::Command::new(hull_tests::hull_bin())
        .arg("--describe-snapshot")
        .arg(&snap)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "v1.0.0");

    let mut second = restore_and_check("snap-b", &snap, &mem, &before);
    second.expect_log("microVM restored from a snapshot", Duration::ZERO);
    // The restored VM is snapshotted again, and that snapshot restores in a third process.
    let (snap2, mem2) = (dir.path().join("snap2"), dir.path().join("mem2"));
    let before2 = format!("{before}{}", pause_and_snapshot(&second, &snap2, &mem2, "Full"));
    second.kill();
    let mut third = restore_and_check("snap-c", &snap2, &mem2, &before2);
    third.kill();
}

/// Two vCPUs (the second one waiting for INIT-SIPI, as the guest never starts it): both are saved and
/// restored, and the guest carries on.
#[test]
fn a_two_vcpu_guest_restores() {
    require_kvm!("a_two_vcpu_guest_restores");
    let dir = TempDir::new("snap-smp").unwrap();
    let mut vm = boot_with("snap-smp-a", dir.path(), false, 2);
    let (snap, mem) = (dir.path().join("snap"), dir.path().join("mem"));
    let before = pause_and_snapshot(&vm, &snap, &mem, "Full");
    vm.kill();
    let mut restored = restore_and_check("snap-smp-b", &snap, &mem, &before);
    let config = restored.api().get("/vm/config").unwrap().json();
    assert_eq!(config["machine-config"]["vcpu_count"], 2, "{config}");
    restored.kill();
}

#[test]
fn a_diff_snapshot_merged_onto_its_base_restores() {
    require_kvm!("a_diff_snapshot_merged_onto_its_base_restores");
    let dir = TempDir::new("snap-diff").unwrap();
    let mut vm = boot("snap-diff", dir.path(), true);
    let (full_state, base) = (dir.path().join("full.state"), dir.path().join("base.mem"));
    let first = check_ticks(&pause_and_snapshot(&vm, &full_state, &base, "Full"));
    vm.api().expect_ok("PATCH", "/vm", &json!({ "state": "Resumed" }));
    vm.expect_output(&format!("hull-tiny: snap tick={} ", first + 2), TIMEOUT);
    let (diff_state, diff) = (dir.path().join("diff.state"), dir.path().join("diff.mem"));
    let before = pause_and_snapshot(&vm, &diff_state, &diff, "Diff");
    vm.kill();

    // Same size as the memory, but only the pages written since the full snapshot hold data.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&diff).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        meta.blocks() * 512 < (8 << 20),
        "a diff of a counting guest should be small: {} bytes allocated",
        meta.blocks() * 512
    );
    let merged = std::process::Command::new(hull_tests::hull_bin())
        .args(["rebase-snap", "--base-file"])
        .arg(&base)
        .arg("--diff-file")
        .arg(&diff)
        .output()
        .unwrap();
    assert!(merged.status.success(), "{}", String::from_utf8_lossy(&merged.stderr));
    let mut restored = restore_and_check("snap-diff-r", &diff_state, &base, &before);
    restored.kill();
}

/// Copies `from` to a new file under `dir` after `damage` changed its bytes.
fn damaged(dir: &Path, name: &str, from: &Path, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(from).unwrap();
    damage(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn bad_snapshots_are_refused_and_the_process_stays_usable() {
    require_kvm!("bad_snapshots_are_refused_and_the_process_stays_usable");
    let dir = TempDir::new("snap-bad").unwrap();
    let mut vm = boot("snap-src", dir.path(), false);
    let (snap, mem) = (dir.path().join("snap"), dir.path().join("mem"));
    let before = pause_and_snapshot(&vm, &snap, &mem, "Full");
    let last = check_ticks(&before);
    vm.kill();

    // Loading after configuring anything boot-specific is refused, as in Firecracker.
    let configured = Hull::with_api("snap-configured", &[]);
    configured.api().expect_ok(
        "PUT",
        "/machine-config",
        &json!({ "vcpu_count": 1, "mem_size_mib": 64 }),
    );
    let load = |snap: &Path, mem: &Path| json!({ "snapshot_path": snap, "mem_backend": { "backend_type": "File", "backend_path": mem } });
    let (status, body) = put(&configured, "/snapshot/load", load(&snap, &mem));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("Loading a microVM snapshot not allowed after configuring boot-specific resources."),
        "{body}"
    );

    let d = dir.path();
    let truncated = damaged(d, "truncated", &snap, |b| b.truncate(b.len() / 2));
    let corrupt = damaged(d, "corrupt", &snap, |b| {
        let i = b.len() / 2;
        b[i] ^= 0x20;
    });
    let newer = damaged(d, "newer", &snap, |b| b[8] = 2);
    let garbage = damaged(d, "garbage", &snap, |b| {
        *b = b"not a snapshot at all, just text".to_vec()
    });
    // A state this host's KVM cannot run: leaf 7's EBX asks for every feature (each CPUID entry is 40 bytes:
    // function, index, flags, eax, ebx, ...), re-encoded with a valid header and checksum.
    let cpuid_bits = {
        let payload = vmm::snapshot::format::read(&snap).unwrap();
        let mut state: Value = serde_json::from_slice(&payload).unwrap();
        let mut changed = 0;
        for entry in state["vcpus"][0]["cpuid"].as_array_mut().unwrap() {
            let e = entry.as_array_mut().unwrap();
            let word =
                |e: &[Value], at: usize| (0..4).fold(0u64, |acc, i| acc | (e[at + i].as_u64().unwrap() << (8 * i)));
            if word(e, 0) == 7 && word(e, 4) == 0 {
                for b in &mut e[16..20] {
                    *b = 255.into();
                }
                changed += 1;
            }
        }
        assert_eq!(changed, 1, "the state has one CPUID leaf 7.0");
        let path = d.join("cpuid");
        std::fs::write(
            &path,
            vmm::snapshot::format::encode(&serde_json::to_vec(&state).unwrap()),
        )
        .unwrap();
        path
    };
    let short_mem = dir.path().join("short.mem");
    std::fs::write(&short_mem, vec![0u8; 32 << 20]).unwrap();
    let hull = Hull::with_api("snap-bad-load", &[]);
    for (state, memory, says) in [
        (&truncated, &mem, "truncated"),
        (&corrupt, &mem, "corrupt: checksum"),
        (&newer, &mem, "snapshot format v2.0.0"),
        (&garbage, &mem, "bad magic"),
        (&snap, &short_mem, "the snapshot's guest memory is 67108864 bytes"),
        (&snap, &d.join("missing.mem"), "No such file"),
        (&d.join("missing.state"), &mem, "cannot read the snapshot file"),
        (
            &cpuid_bits,
            &mem,
            "this host cannot run the snapshot: vCPU 0: the snapshot's CPUID leaf 0x7.0 ebx",
        ),
    ] {
        let (status, body) = put(&hull, "/snapshot/load", load(state, memory));
        assert_eq!(status, 400, "{}: {body}", state.display());
        assert!(
            body.contains(says),
            "{} / {}: expected {says:?} in {body}",
            state.display(),
            memory.display()
        );
    }
    let (status, body) = put(&hull, "/snapshot/load", json!({ "snapshot_path": snap }));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("either `mem_backend` or `mem_file_path` is required"),
        "{body}"
    );
    // Overrides that do not fit the snapshot.
    for (extra, says) in [
        (
            json!({ "drive_overrides": [{ "drive_id": "nope", "path_on_host": mem }] }),
            "invalid drive override: the snapshot has no drive",
        ),
        (
            json!({ "vsock_override": { "uds_path": d.join("no/such/dir/v.sock") } }),
            "the directory of uds_path",
        ),
        (
            json!({ "vsock_override": { "uds_path": d.join("v2.sock"), "guest_cid": 2 } }),
            "guest_cid 2 is reserved",
        ),
        (
            json!({ "vsock_override": { "uds_path": d.join("v2.sock"), "cid": 9 } }),
            "unknown field",
        ),
    ] {
        let mut body = load(&snap, &mem);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, reply) = put(&hull, "/snapshot/load", body);
        assert_eq!(status, 400, "{extra}: {reply}");
        assert!(reply.contains(says), "{extra}: expected {says:?} in {reply}");
    }
    let info = hull.api().get("/").unwrap().json();
    assert_eq!(info["state"], "Not started", "{info}");

    // The same process then loads the good snapshot (paused), and resumes it.
    let (status, body) = put(&hull, "/snapshot/load", load(&snap, &mem));
    assert_eq!(status, 204, "{body}\n{}", hull.report());
    assert_eq!(hull.api().get("/").unwrap().json()["state"], "Paused");
    let (status, body) = put(&hull, "/snapshot/load", load(&snap, &mem));
    assert_eq!(status, 400, "a second load: {body}");
    hull.api().expect_ok("PATCH", "/vm", &json!({ "state": "Resumed" }));
    hull.expect_output(&format!("hull-tiny: snap tick={} ", last + 2), TIMEOUT);
    assert!(check_ticks(&format!("{before}{}", hull.stdout())) > last);
}

/// Linux paused mid-boot (its virtio-blk and virtio-vsock drivers have set up their devices, so the
/// transports hold live queues) is snapshotted, killed, and restored in a new hull, where the vsock device
/// sends the driver a transport reset and the kernel finishes booting to `Run /init`. About a minute under
/// the software KVM, one boot split over two processes.
#[test]
fn linux_paused_mid_boot_finishes_booting_in_a_new_process() {
    require_kvm!("linux_paused_mid_boot_finishes_booting_in_a_new_process");
    let images = hull_tests::guest_images();
    let _one_linux_boot_at_a_time = hull_tests::FileLock::acquire("linux-boot");
    let dir = TempDir::new("snap-linux").unwrap();
    let drive = dir.path().join("data.raw");
    std::fs::write(&drive, vec![0u8; 1 << 20]).unwrap();
    let config = json!({
        "boot-source": { "kernel_image_path": images.kernel, "initrd_path": images.initrd,
                         "boot_args": "console=ttyS0 reboot=k panic=1" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        "drives": [{ "drive_id": "data", "path_on_host": drive, "is_root_device": false }],
        "vsock": { "guest_cid": 3, "uds_path": dir.path().join("v.sock") },
    });
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let timeout = Duration::from_secs(300);
    let mut first = Hull::with_api("snap-linux-a", &["--config-file", cfg.to_str().unwrap()]);
    // Both drivers are up: the drive's (its queue in use) and the vsock's. Its probe posts the event
    // buffers just after DRIVER_OK, so wait for a later line of the boot (a few seconds before init).
    first.expect_output("[vda]", timeout);
    first.expect_log("virtio-mmio device activated device=vsock", timeout);
    first.expect_output("Freeing unused kernel image (initmem)", timeout);
    let (snap, mem) = (dir.path().join("linux.snap"), dir.path().join("linux.mem"));
    let before = pause_and_snapshot(&first, &snap, &mem, "Full");
    assert!(
        !before.contains("Run /init"),
        "the boot ended before the pause:\n{before}"
    );
    first.kill();
    hull_tests::note(&format!(
        "snapshot: Linux paused {:.1} s into its boot",
        first.elapsed().as_secs_f64()
    ));

    let second = Hull::with_api("snap-linux-b", &[]);
    let (status, body) = put(
        &second,
        "/snapshot/load",
        json!({ "snapshot_path": snap, "mem_backend": { "backend_type": "File", "backend_path": mem }, "resume_vm": true }),
    );
    assert_eq!(status, 204, "snapshot/load: {body}\n{}", second.report());
    second.expect_output("Run /init as init process", timeout);
    // The guest's vsock driver was up: the restored device told it its connections are gone.
    second.expect_log("vsock transport reset sent to the driver", Duration::ZERO);
    let after = second.stdout();
    assert!(
        !after.contains("Linux version"),
        "the restored kernel must not boot again:\n{after}"
    );
    hull_tests::note(&format!(
        "snapshot: restored Linux reached `Run /init` {:.1} s after the load",
        second.elapsed().as_secs_f64()
    ));
}

/// The `Uffd` memory backend: `hull-uffd-handler` (built with hull) serves the restored guest's pages from
/// the memory file over a userfaultfd; the guest continues as with the `File` backend.
#[test]
fn the_uffd_backend_serves_a_restored_guest_through_the_example_handler() {
    require_kvm!("the_uffd_backend_serves_a_restored_guest_through_the_example_handler");
    let dir = TempDir::new("snap-uffd").unwrap();
    let mut vm = boot("snap-uffd-src", dir.path(), false);
    let (snap, mem) = (dir.path().join("snap"), dir.path().join("mem"));
    let before = pause_and_snapshot(&vm, &snap, &mem, "Full");
    vm.kill();
    let last = check_ticks(&before);

    let handler_bin = hull_tests::hull_bin().with_file_name("hull-uffd-handler");
    let socket = dir.path().join("uffd.sock");
    let mut handler = KillOnDrop(
        std::process::Command::new(&handler_bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--mem-file")
            .arg(&mem)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", handler_bin.display())),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut hull = Hull::with_api("snap-uffd-dst", &[]);
    let (status, body) = put(
        &hull,
        "/snapshot/load",
        json!({ "snapshot_path": snap, "mem_backend": { "backend_type": "Uffd", "backend_path": socket }, "resume_vm": true }),
    );
    assert_eq!(status, 204, "snapshot/load: {body}\n{}", hull.report());
    hull.expect_output(&format!("hull-tiny: snap tick={} ", last + 3), TIMEOUT);
    assert!(check_ticks(&format!("{before}{}", hull.stdout())) >= last + 2);
    hull.kill();
    // The handler ends when hull goes away, having served only the pages the guest touched.
    let out = handler.0.wait_with_output_timeout();
    assert!(out.contains("hull went away after"), "{out}");
    let pages: u64 = out
        .split("after ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(pages > 0 && pages < (64 << 20) / 4096 / 2, "pages served: {pages}");
}

/// A child process killed (by its PID) when the test ends, failed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

trait WaitWithTimeout {
    fn wait_with_output_timeout(&mut self) -> String;
}

impl WaitWithTimeout for std::process::Child {
    /// Waits up to 10 s for the process to end, then returns its standard output.
    fn wait_with_output_timeout(&mut self) -> String {
        use std::io::Read;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        if self.try_wait().ok().flatten().is_some() {
            if let Some(stdout) = self.stdout.as_mut() {
                let _ = stdout.read_to_string(&mut out);
            }
        }
        out
    }
}

/// A TAP device, deleted (by name) on drop.
struct Tap(String);

impl Tap {
    fn create(name: &str) -> Option<Tap> {
        let ok = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        let _ = std::process::Command::new("ip").args(["link", "del", name]).output();
        if !ok(&["tuntap", "add", "dev", name, "mode", "tap"]) {
            return None;
        }
        Some(Tap(name.to_string()))
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// `network_overrides` moves a snapshot's interface to another TAP; an override naming an interface the
/// snapshot does not have is refused.
#[test]
fn network_overrides_move_an_interface_to_another_tap() {
    require_kvm!("network_overrides_move_an_interface_to_another_tap");
    let id = std::process::id() % 100_000;
    let (Some(first_tap), Some(second_tap)) = (Tap::create(&format!("hsa{id}")), Tap::create(&format!("hsb{id}")))
    else {
        hull_tests::skip(
            "network_overrides_move_an_interface_to_another_tap",
            "cannot create TAP devices (needs CAP_NET_ADMIN and ip)",
        );
        return;
    };
    let dir = TempDir::new("snap-net").unwrap();
    let config = json!({
        "boot-source": { "kernel_image_path": tiny_guest("snapcount.elf"), "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
        "network-interfaces": [{ "iface_id": "eth0", "host_dev_name": first_tap.0, "guest_mac": "06:00:ac:10:00:02" }],
    });
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let mut vm = Hull::with_api("snap-net-a", &["--config-file", cfg.to_str().unwrap()]);
    vm.expect_output("hull-tiny: snap tick=1 ", TIMEOUT);
    let (snap, mem) = (dir.path().join("snap"), dir.path().join("mem"));
    let before = pause_and_snapshot(&vm, &snap, &mem, "Full");
    vm.kill();
    let last = check_ticks(&before);

    let hull = Hull::with_api("snap-net-b", &[]);
    let load = |overrides: Value| {
        json!({ "snapshot_path": snap, "mem_backend": { "backend_type": "File", "backend_path": mem },
                "resume_vm": true, "network_overrides": overrides })
    };
    let (status, body) = put(
        &hull,
        "/snapshot/load",
        load(json!([{ "iface_id": "eth9", "host_dev_name": second_tap.0 }])),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("invalid network override") && body.contains("eth9"),
        "{body}"
    );
    let (status, body) = put(
        &hull,
        "/snapshot/load",
        load(json!([{ "iface_id": "eth0", "host_dev_name": second_tap.0 }])),
    );
    assert_eq!(status, 204, "{body}\n{}", hull.report());
    hull.expect_output(&format!("hull-tiny: snap tick={} ", last + 2), TIMEOUT);
    // The restored machine's configuration, with the override.
    let config = hull.api().get("/vm/config").unwrap().json();
    assert_eq!(config["machine-config"]["mem_size_mib"], 64, "{config}");
    assert_eq!(
        config["network-interfaces"][0]["host_dev_name"],
        json!(second_tap.0),
        "{config}"
    );
    // hull has the second TAP open, not the first.
    let tun = std::fs::read_dir(format!("/proc/{}/fdinfo", hull.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .find(|info| info.contains("iff:"))
        .unwrap_or_default();
    assert!(tun.contains(&second_tap.0), "the TAP hull holds: {tun:?}");
}
