//! Layer (a): hull boots the tiny test guests from `tests/guests/` and the tests check what the guests report
//! on the serial console about the machine hull built for them: the PVH start info, long mode and
//! boot_params, the bzImage entry, the memory map for the configured size, the boot timer, a triple fault,
//! a second vCPU started by INIT-SIPI, pause/resume, a boot driven entirely through the API socket, the
//! metrics file's vCPU-exit and console counters after `FlushMetrics`, and the pre-build made before
//! `InstanceStart` (remade or dropped when the configuration or the kernel file changes; its failure
//! reported by `InstanceStart` as without it), and standard input reaching the guest's serial console.
//!
//! Each guest runs for well under a second even with ring 0 emulated, so these run on every machine with a
//! usable /dev/kvm (the software kvm_pvm included).

use std::time::{Duration, Instant};

use hull_tests::{dec_field, field, hex_field, require_kvm, tiny_guest, Hull};
use serde_json::{json, Value};

/// Ample for a tiny guest even on a busy 2-core machine with ring 0 emulated.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

/// A Firecracker-style config booting a tiny guest.
fn config(guest: &str, vcpus: u8, mem_mib: u64, boot_args: &str) -> Value {
    json!({
        "boot-source": { "kernel_image_path": tiny_guest(guest), "boot_args": boot_args },
        "machine-config": { "vcpu_count": vcpus, "mem_size_mib": mem_mib },
    })
}

/// Boots `guest` from a config file and waits for hull to exit; asserts exit code 0.
fn boot_to_reset(label: &str, guest: &str, vcpus: u8, mem_mib: u64, boot_args: &str, extra: &[&str]) -> Hull {
    let mut hull = Hull::with_config(label, &config(guest, vcpus, mem_mib, boot_args), extra);
    let status = hull.expect_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "hull should exit 0 after the guest resets\n{}",
        hull.report()
    );
    hull
}

/// The command line the guest saw must start with what was configured (hull may append its own switches).
fn assert_cmdline(line: &str, prefix: &str, configured: &str) {
    let seen = line
        .split_once(prefix)
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no {prefix:?} in {line:?}"));
    assert!(
        seen.starts_with(configured),
        "guest command line {seen:?} does not start with {configured:?}"
    );
}

#[test]
fn pvh_guest_boots_and_exits_cleanly() {
    require_kvm!("pvh_guest_boots_and_exits_cleanly");
    let args = "console=ttyS0 reboot=k hull.test=pvh";
    let hull = boot_to_reset("pvh", "pvh.elf", 1, 128, args, &[]);

    let ok = hull.expect_output("hull-tiny: pvh ", Duration::ZERO);
    assert!(
        ok.starts_with("hull-tiny: pvh ok magic=336ec578 "),
        "bad PVH start info: {ok:?}"
    );
    let cr0 = hex_field(&ok, "cr0");
    assert_eq!(cr0 & 1, 1, "PVH entry must be in protected mode (CR0.PE): cr0={cr0:#x}");
    assert_eq!(
        cr0 & (1 << 31),
        0,
        "PVH entry must have paging off (CR0.PG): cr0={cr0:#x}"
    );
    assert_ne!(hex_field(&ok, "start_info"), 0);

    let cmdline = hull.expect_output("hull-tiny: pvh cmdline=", Duration::ZERO);
    assert_cmdline(&cmdline, "cmdline=", args);
    // No PCI bus in hull: the kernel is told not to probe for one, as Firecracker tells it.
    assert!(cmdline.split_whitespace().any(|w| w == "pci=off"), "{cmdline}");
    let memmap = hull.expect_output("hull-tiny: pvh memmap", Duration::ZERO);
    assert_eq!(hex_field(&memmap, "ram_end"), 128 * MIB, "{memmap}");
    hull.expect_output("hull-tiny: pvh reset", Duration::ZERO);
    assert!(
        !hull.stderr().contains("Guest-boot-time"),
        "boot time logged without --boot-timer\n{}",
        hull.stderr()
    );
}

#[test]
fn boot_timer_logs_the_guest_boot_time() {
    require_kvm!("boot_timer_logs_the_guest_boot_time");
    let hull = boot_to_reset("boot-timer", "pvh.elf", 1, 128, "console=ttyS0", &["--boot-timer"]);
    hull.expect_output("hull-tiny: pvh boot timer written", Duration::ZERO);
    // "Guest-boot-time = <N> us <M> ms"
    let line = hull.expect_log("Guest-boot-time", Duration::ZERO);
    let words: Vec<&str> = line
        .split_once("Guest-boot-time")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert!(
        words.len() >= 5 && words[0] == "=" && words[2] == "us" && words[4] == "ms",
        "{line:?}"
    );
    let us: u64 = words[1]
        .parse()
        .unwrap_or_else(|_| panic!("bad microseconds in {line:?}"));
    let ms: u64 = words[3]
        .parse()
        .unwrap_or_else(|_| panic!("bad milliseconds in {line:?}"));
    assert_eq!(ms, us / 1000, "{line:?}");
    assert!(us > 0 && us < 30_000_000, "implausible boot time {us} us");
}

/// The command line tells the guest kernel about PCI as Firecracker's does: `pci=off` without
/// `--enable-pci` (the devices are on virtio-mmio), nothing with it (the kernel scans bus 0).
#[test]
fn pci_off_is_on_the_command_line_unless_pci_is_enabled() {
    require_kvm!("pci_off_is_on_the_command_line_unless_pci_is_enabled");
    let args = "console=ttyS0 reboot=k hull.test=pci";
    for (extra, expect_pci_off) in [(&[][..], true), (&["--enable-pci"][..], false)] {
        let hull = boot_to_reset("pci-cmdline", "pvh.elf", 1, 128, args, extra);
        let cmdline = hull.expect_output("hull-tiny: pvh cmdline=", Duration::ZERO);
        assert_cmdline(&cmdline, "cmdline=", args);
        assert_eq!(
            cmdline.split_whitespace().any(|w| w == "pci=off"),
            expect_pci_off,
            "{extra:?}: {cmdline}"
        );
        assert!(!cmdline.contains("virtio_mmio"), "no devices configured: {cmdline}");
    }
}

#[test]
fn long64_guest_runs_in_long_mode_and_reads_boot_params() {
    require_kvm!("long64_guest_runs_in_long_mode_and_reads_boot_params");
    let args = "console=ttyS0 reboot=k hull.test=long64 with_several=words";
    let hull = boot_to_reset("long64", "long64.elf", 1, 128, args, &[]);

    let ok = hull.expect_output("hull-tiny: long64 ok", Duration::ZERO);
    let efer = hex_field(&ok, "efer");
    assert_ne!(
        efer & (1 << 10),
        0,
        "EFER.LMA must be set in the 64-bit entry: efer={efer:#x}"
    );
    assert_ne!(hex_field(&ok, "cr0") & (1 << 31), 0, "paging must be on: {ok}");
    assert_ne!(hex_field(&ok, "cr4") & (1 << 5), 0, "CR4.PAE must be set: {ok}");
    let bp = hex_field(&ok, "boot_params");
    assert!(bp != 0 && bp < MIB, "boot_params at {bp:#x} should be in low memory");

    assert_cmdline(
        &hull.expect_output("hull-tiny: long64 cmdline=", Duration::ZERO),
        "cmdline=",
        args,
    );
    let e820 = hull.expect_output("hull-tiny: long64 e820 entries=", Duration::ZERO);
    let entries = dec_field(&e820, "entries");
    assert!(entries >= 2, "expected low RAM and RAM above 1 MiB at least: {e820}");
    let listed = hull
        .stdout()
        .lines()
        .filter(|l| l.starts_with("hull-tiny: e820 addr="))
        .count() as u64;
    assert_eq!(listed, entries);
    assert_eq!(hex_field(&e820, "ram_end"), 128 * MIB, "{e820}");
}

#[test]
fn bzimage_guest_boots_through_the_64bit_entry() {
    require_kvm!("bzimage_guest_boots_through_the_64bit_entry");
    let args = "console=ttyS0 hull.test=bzimage";
    let hull = boot_to_reset("bzimage", "tiny.bzImage", 1, 128, args, &[]);
    assert!(
        !hull.stdout().contains("startup_32"),
        "entered at the 32-bit entry point\n{}",
        hull.stdout()
    );
    let ok = hull.expect_output("hull-tiny: bzimage ok", Duration::ZERO);
    // The protected-mode part belongs at code32_start (1 MiB); the 64-bit entry is 0x200 into it.
    assert_eq!(hex_field(&ok, "entry"), 0x10_0200, "{ok}");
    // boot_params.hdr must be the image's setup header (protocol 2.15), as the boot protocol requires.
    assert_eq!(hex_field(&ok, "hdr_version"), 0x20f, "{ok}");
    assert_cmdline(
        &hull.expect_output("hull-tiny: bzimage cmdline=", Duration::ZERO),
        "cmdline=",
        args,
    );
    hull.expect_output("hull-tiny: bzimage reset", Duration::ZERO);
}

#[test]
fn triple_fault_ends_hull_with_an_error() {
    require_kvm!("triple_fault_ends_hull_with_an_error");
    let mut hull = Hull::with_config("triplefault", &config("triplefault.elf", 1, 128, "console=ttyS0"), &[]);
    let status = hull.expect_exit(EXIT_TIMEOUT);
    hull.expect_output("hull-tiny: triple fault next", Duration::ZERO);
    assert!(
        !hull.stdout().contains("still running"),
        "the guest survived its triple fault\n{}",
        hull.report()
    );
    assert!(
        !status.success() && status.code().is_some(),
        "hull should exit non-zero: {status}\n{}",
        hull.report()
    );
    assert!(
        hull.stderr().to_lowercase().contains("triple"),
        "hull did not log the triple fault\n{}",
        hull.report()
    );
}

#[test]
fn two_vcpus_both_report() {
    require_kvm!("two_vcpus_both_report");
    let hull = boot_to_reset("smp", "smp.elf", 2, 128, "console=ttyS0", &[]);
    let bsp = hull.expect_output("hull-tiny: cpu 0 alive", Duration::ZERO);
    assert_eq!(bsp, "hull-tiny: cpu 0 alive cpuid_apic_id=0 bsp");
    let ap = hull.expect_output("hull-tiny: cpu 1 alive", Duration::ZERO);
    assert_eq!(ap, "hull-tiny: cpu 1 alive cpuid_apic_id=1 ap");
    hull.expect_output("hull-tiny: smp 2 cpus alive", Duration::ZERO);
    // The guest serialises its lines with a spinlock: none may be interleaved.
    for line in hull.stdout().lines().filter(|l| l.contains("hull-tiny")) {
        assert!(
            line.starts_with("hull-tiny: ") && line.matches("hull-tiny").count() == 1,
            "mangled line {line:?}"
        );
    }
}

#[test]
fn one_vcpu_has_no_application_processor() {
    require_kvm!("one_vcpu_has_no_application_processor");
    // The same guest with one vCPU: its INIT-SIPI reaches nobody, so it reports only itself.
    let hull = boot_to_reset("smp1", "smp.elf", 1, 128, "console=ttyS0", &[]);
    hull.expect_output("hull-tiny: smp 1 cpus alive", Duration::ZERO);
    assert!(!hull.stdout().contains("cpu 1 alive"), "{}", hull.stdout());
}

/// Boots the PVH and the 64-bit guests with `mem_mib` of RAM and checks both memory maps end there.
fn check_memory_size(mem_mib: u64) {
    let hull = boot_to_reset(&format!("mem{mem_mib}"), "long64.elf", 1, mem_mib, "console=ttyS0", &[]);
    let e820 = hull.expect_output("hull-tiny: long64 e820 entries=", Duration::ZERO);
    assert_eq!(
        hex_field(&e820, "ram_end"),
        mem_mib * MIB,
        "e820 for {mem_mib} MiB: {e820}\n{}",
        hull.stdout()
    );
    let hull = boot_to_reset(&format!("pvhmem{mem_mib}"), "pvh.elf", 1, mem_mib, "console=ttyS0", &[]);
    let memmap = hull.expect_output("hull-tiny: pvh memmap", Duration::ZERO);
    assert_eq!(
        hex_field(&memmap, "ram_end"),
        mem_mib * MIB,
        "PVH memmap for {mem_mib} MiB: {memmap}"
    );
}

#[test]
fn memory_map_ends_at_128_mib() {
    require_kvm!("memory_map_ends_at_128_mib");
    check_memory_size(128);
}

#[test]
fn memory_map_ends_at_512_mib() {
    require_kvm!("memory_map_ends_at_512_mib");
    check_memory_size(512);
}

#[test]
fn memory_above_3_gib_skips_the_mmio_hole() {
    require_kvm!("memory_above_3_gib_skips_the_mmio_hole");
    // 4 GiB of RAM: 3 GiB below the MMIO hole at 0xc000_0000, the last GiB from 4 GiB on.
    let hull = boot_to_reset("mem4096", "long64.elf", 1, 4096, "console=ttyS0", &[]);
    let e820 = hull.expect_output("hull-tiny: long64 e820 entries=", Duration::ZERO);
    assert_eq!(hex_field(&e820, "ram_end"), 0x1_4000_0000, "{}", hull.stdout());
    let mut ram = 0;
    for line in hull.stdout().lines().filter(|l| l.starts_with("hull-tiny: e820 addr=")) {
        let (addr, size, kind) = (
            hex_field(line, "addr"),
            hex_field(line, "size"),
            dec_field(line, "type"),
        );
        if kind == 1 {
            assert!(
                addr + size <= 0xc000_0000 || addr >= 0x1_0000_0000,
                "RAM over the MMIO hole: {line}"
            );
            ram += size;
        }
    }
    // All of it is usable except the legacy hole (0x9fc00..1 MiB) below 1 MiB.
    assert!(
        ram <= 4096 * MIB && ram > 4096 * MIB - MIB,
        "usable RAM {ram:#x}\n{}",
        hull.stdout()
    );
}

/// The tick number on a `tick N` line.
fn tick_number(line: &str) -> u64 {
    line.trim()
        .strip_prefix("tick ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad tick {line:?}"))
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    require_kvm!("pause_stops_the_guest_and_resume_continues_it");
    let dir = hull_tests::TempDir::new("counter-cfg").unwrap();
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, config("counter.elf", 1, 128, "console=ttyS0").to_string()).unwrap();
    let hull = Hull::with_api("counter", &["--config-file", cfg.to_str().unwrap()]);
    let api = hull.api();
    hull.expect_output("tick 2", Duration::from_secs(30));

    api.expect_ok("PATCH", "/vm", &json!({ "state": "Paused" }));
    let paused_at = Instant::now();
    if let Ok(info) = api.get("/") {
        assert_eq!(info.json()["state"], "Paused", "GET / while paused: {}", info.body);
    }
    // Let the reader thread drain what hull wrote before the pause took effect, then watch for 2 s.
    std::thread::sleep(Duration::from_millis(200));
    let before = hull.stdout();
    std::thread::sleep(Duration::from_secs(2));
    let after = hull.stdout();
    assert_eq!(
        before.len(),
        after.len(),
        "the guest printed while paused (for {:?}): {:?}",
        paused_at.elapsed(),
        &after[before.len()..]
    );
    let last = before
        .lines()
        .rev()
        .find(|l| l.starts_with("tick "))
        .map(tick_number)
        .expect("a tick line");

    api.expect_ok("PATCH", "/vm", &json!({ "state": "Resumed" }));
    let next = hull
        .wait_for_output_after(&format!("tick {}", last + 1), before.len(), Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no tick {} after resume\n{}", last + 1, hull.report()));
    assert_eq!(tick_number(&next), last + 1, "the count must continue where it stopped");
    hull.expect_output(&format!("tick {}", last + 3), Duration::from_secs(30));
}

#[test]
fn pvh_boot_through_the_api_socket() {
    require_kvm!("pvh_boot_through_the_api_socket");
    let mut hull = Hull::with_api("api-pvh", &[]);
    let api = hull.api();
    let sock = hull.api_sock().unwrap().to_path_buf();
    let args = "console=ttyS0 reboot=k hull.test=api";
    api.expect_ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": tiny_guest("pvh.elf"), "boot_args": args }),
    );
    api.expect_ok(
        "PUT",
        "/machine-config",
        &json!({ "vcpu_count": 1, "mem_size_mib": 256 }),
    );
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "InstanceStart" }));

    let status = hull.expect_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", hull.report());
    let ok = hull.expect_output("hull-tiny: pvh ", Duration::ZERO);
    assert!(ok.starts_with("hull-tiny: pvh ok magic=336ec578 "), "{ok}");
    assert_cmdline(
        &hull.expect_output("hull-tiny: pvh cmdline=", Duration::ZERO),
        "cmdline=",
        args,
    );
    let memmap = hull.expect_output("hull-tiny: pvh memmap", Duration::ZERO);
    assert_eq!(hex_field(&memmap, "ram_end"), 256 * MIB, "{memmap}");
    assert!(!sock.exists(), "hull left its API socket {} behind", sock.display());
    assert!(field(&ok, "magic").is_some());
}

#[test]
fn put_serial_sends_the_console_to_serial_out_path_from_the_api_and_a_config_file() {
    require_kvm!("put_serial_sends_the_console_to_serial_out_path_from_the_api_and_a_config_file");
    let dir = hull_tests::TempDir::new("serial-out").unwrap();
    let args = "console=ttyS0 reboot=k hull.test=serial";
    let check = |hull: &Hull, path: &std::path::Path| {
        let console = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            console.contains("hull-tiny: pvh ok magic=336ec578"),
            "{}: {console:?}\n{}",
            path.display(),
            hull.report()
        );
        assert!(console.contains("hull-tiny: pvh reset"), "{console:?}");
        assert!(
            !hull.stdout().contains("hull-tiny:"),
            "the console still reached stdout\n{}",
            hull.report()
        );
    };

    let through_api = dir.path().join("api.log");
    let mut hull = Hull::with_api("serial-api", &[]);
    let api = hull.api();
    api.expect_ok("PUT", "/serial", &json!({ "serial_out_path": through_api }));
    api.expect_ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": tiny_guest("pvh.elf"), "boot_args": args }),
    );
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "InstanceStart" }));
    assert_eq!(hull.expect_exit(EXIT_TIMEOUT).code(), Some(0), "{}", hull.report());
    check(&hull, &through_api);

    let from_file = dir.path().join("file.log");
    let mut cfg = config("pvh.elf", 1, 128, args);
    cfg["serial"] = json!({ "serial_out_path": from_file });
    let hull = {
        let mut hull = Hull::with_config("serial-file", &cfg, &[]);
        assert_eq!(hull.expect_exit(EXIT_TIMEOUT).code(), Some(0), "{}", hull.report());
        hull
    };
    check(&hull, &from_file);
}

#[test]
fn balloon_and_entropy_attach_and_answer_as_firecracker_does_for_a_guest_without_drivers() {
    require_kvm!("balloon_and_entropy_attach_and_answer_as_firecracker_does_for_a_guest_without_drivers");
    let dir = hull_tests::TempDir::new("balloon-cfg").unwrap();
    let cfg = dir.path().join("vm.json");
    let mut vm = config("counter.elf", 1, 128, "console=ttyS0");
    vm["balloon"] = json!({ "amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1 });
    vm["entropy"] = json!({ "rate_limiter": { "bandwidth": { "size": 4096, "refill_time": 100 } } });
    std::fs::write(&cfg, vm.to_string()).unwrap();
    let hull = Hull::with_api("balloon", &["--config-file", cfg.to_str().unwrap()]);
    let api = hull.api();
    hull.expect_output("tick 1", Duration::from_secs(30));
    expect_log(&hull, "kind=balloon");
    expect_log(&hull, "kind=rng");

    let expect_fault = |method: &str, path: &str, body: Value, fault: &str| {
        let r = api.request(method, path, Some(&body.to_string())).unwrap();
        assert_eq!(
            (r.status, r.json()["fault_message"].as_str()),
            (400, Some(fault)),
            "{method} {path}: {}",
            r.body
        );
    };
    let get = |path: &str| {
        let r = api.get(path).unwrap();
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    };
    assert_eq!(
        get("/balloon"),
        json!({ "amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1 })
    );
    // The tiny guest has no balloon driver: Firecracker refuses a new target, and its statistics hold
    // only the sizes (the guest never sent any).
    expect_fault(
        "PATCH",
        "/balloon",
        json!({ "amount_mib": 32 }),
        "Device is inactive, check if balloon driver is enabled in guest kernel.",
    );
    expect_fault(
        "PATCH",
        "/balloon",
        json!({ "amount_mib": 129 }),
        "Amount of pages requested is too large.",
    );
    assert_eq!(
        get("/balloon/statistics"),
        json!({ "target_pages": 4096, "actual_pages": 0, "target_mib": 16, "actual_mib": 0 })
    );
    api.expect_ok(
        "PATCH",
        "/balloon/statistics",
        &json!({ "stats_polling_interval_s": 5 }),
    );
    assert_eq!(get("/balloon")["stats_polling_interval_s"], 5);
    expect_fault(
        "PATCH",
        "/balloon/statistics",
        json!({ "stats_polling_interval_s": 0 }),
        "Cannot enable/disable the statistics after boot.",
    );
    let late = "The requested operation is not supported after starting the microVM.";
    expect_fault(
        "PUT",
        "/balloon",
        json!({ "amount_mib": 1, "deflate_on_oom": false }),
        late,
    );
    expect_fault("PUT", "/entropy", json!({}), late);
    expect_fault("PUT", "/serial", json!({}), late);
    // The guest runs on.
    let ticks = hull.stdout_len();
    hull.wait_for_output_after("tick ", ticks, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the guest stopped\n{}", hull.report()));
}

#[test]
fn a_root_pmem_device_is_mapped_above_ram_and_named_on_the_command_line() {
    require_kvm!("a_root_pmem_device_is_mapped_above_ram_and_named_on_the_command_line");
    let dir = hull_tests::TempDir::new("pmem").unwrap();
    let image = dir.path().join("root.img");
    std::fs::File::create(&image).unwrap().set_len(4 << 20).unwrap();
    let args = "console=ttyS0 reboot=k hull.test=pmem";
    let mut vm = config("pvh.elf", 1, 128, args);
    vm["pmem"] = json!([
        { "id": "data", "path_on_host": image },
        { "id": "root", "path_on_host": image, "root_device": true, "read_only": true },
    ]);
    let mut hull = Hull::with_config("pmem", &vm, &[]);
    assert_eq!(hull.expect_exit(EXIT_TIMEOUT).code(), Some(0), "{}", hull.report());
    let cmdline = hull.expect_output("hull-tiny: pvh cmdline=", Duration::ZERO);
    assert!(cmdline.contains("root=/dev/pmem0 ro rootflags=dax"), "{cmdline}");
    // The root device is attached first (pmem0), right at 4 GiB; the other follows 4 MiB later.
    expect_log(
        &hull,
        "pmem device mapped id=root addr=0x100000000 size=4194304 read_only=true",
    );
    expect_log(
        &hull,
        "pmem device mapped id=data addr=0x100400000 size=4194304 read_only=false",
    );
    expect_log(&hull, "kind=pmem");
    // The pmem regions are not RAM: the memory map still ends at 128 MiB.
    let memmap = hull.expect_output("hull-tiny: pvh memmap", Duration::ZERO);
    assert_eq!(hex_field(&memmap, "ram_end"), 128 * MIB, "{memmap}");
}

#[test]
fn send_ctrl_alt_del_reaches_the_guest_keyboard() {
    require_kvm!("send_ctrl_alt_del_reaches_the_guest_keyboard");
    let dir = hull_tests::TempDir::new("keyboard-cfg").unwrap();
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, config("keyboard.elf", 1, 128, "console=ttyS0").to_string()).unwrap();
    let mut hull = Hull::with_api("keyboard", &["--config-file", cfg.to_str().unwrap()]);
    let api = hull.api();
    hull.expect_output("hull-tiny: keyboard waiting", Duration::from_secs(30));
    assert!(
        !hull.stdout().contains("key "),
        "no key before SendCtrlAltDel\n{}",
        hull.report()
    );

    api.expect_ok("PUT", "/actions", &json!({ "action_type": "SendCtrlAltDel" }));
    hull.expect_output("hull-tiny: ctrl-alt-del", Duration::from_secs(30));
    let keys: Vec<String> = hull
        .stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("key ").map(str::to_string))
        .collect();
    assert_eq!(
        keys,
        ["14", "11", "e0", "71"],
        "set-2 scan codes of Ctrl, Alt, Delete\n{}",
        hull.report()
    );
    let status = hull.expect_exit(EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(0),
        "the guest resets after the keys\n{}",
        hull.report()
    );
}

/// Waits until hull's log has `line` (it reaches the harness through a reader thread: give it a moment).
fn expect_log(hull: &Hull, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hull.stderr().contains(line) {
        assert!(
            Instant::now() < deadline,
            "hull did not log {line:?}\n{}",
            hull.report()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn patch_drive_on_a_running_microvm_swaps_the_backing_file() {
    require_kvm!("patch_drive_on_a_running_microvm_swaps_the_backing_file");
    let dir = hull_tests::TempDir::new("patch-drive").unwrap();
    let empty = dir.path().join("slot0.empty");
    std::fs::write(&empty, b"").unwrap();
    let image = dir.path().join("image.raw");
    std::fs::write(&image, vec![0x5a; 64 * 1024]).unwrap();
    // The counter guest runs until stopped; it never touches the drive, which hull attaches regardless.
    let mut vm = config("counter.elf", 1, 128, "console=ttyS0");
    vm["drives"] = json!([{ "drive_id": "slot0", "path_on_host": empty, "is_root_device": false }]);
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, vm.to_string()).unwrap();
    let hull = Hull::with_api("patch-drive", &["--config-file", cfg.to_str().unwrap()]);
    let api = hull.api();
    hull.expect_output("tick 1", Duration::from_secs(30));

    api.expect_ok(
        "PATCH",
        "/drives/slot0",
        &json!({ "drive_id": "slot0", "path_on_host": image }),
    );
    let config = api.get("/vm/config").unwrap().json();
    assert_eq!(config["drives"][0]["path_on_host"], json!(image), "{config}");
    expect_log(&hull, "drive backing file replaced");

    // Refused updates on the running microVM change nothing.
    for (path, body, expected) in [
        (
            "/drives/slot0",
            json!({ "drive_id": "slot0", "path_on_host": dir.path().join("missing") }),
            "missing",
        ),
        (
            "/drives/nope",
            json!({ "drive_id": "nope", "path_on_host": image }),
            "no drive with this id",
        ),
    ] {
        let resp = api.patch(path, &body).unwrap();
        assert_eq!(resp.status, 400, "{path} {body}: {}", resp.body);
        assert!(resp.body.contains(expected), "{path} {body}: {}", resp.body);
    }
    let config = api.get("/vm/config").unwrap().json();
    assert_eq!(config["drives"][0]["path_on_host"], json!(image));
    // Rate limits on the running drive: the buckets given replace, the others stay.
    api.expect_ok(
        "PATCH",
        "/drives/slot0",
        &json!({ "drive_id": "slot0", "rate_limiter": {
            "bandwidth": { "size": 1048576, "refill_time": 100 },
            "ops": { "size": 100, "one_time_burst": 10, "refill_time": 1000 } } }),
    );
    api.expect_ok(
        "PATCH",
        "/drives/slot0",
        &json!({ "drive_id": "slot0", "rate_limiter": { "ops": { "size": 0, "refill_time": 0 } } }),
    );
    let config = api.get("/vm/config").unwrap().json();
    assert_eq!(
        config["drives"][0]["rate_limiter"],
        json!({ "bandwidth": { "size": 1048576, "refill_time": 100 }, "ops": { "size": 0, "refill_time": 0 } }),
        "{config}"
    );
    expect_log(&hull, "drive rate limiter updated");
    let resp = api
        .patch(
            "/network-interfaces/eth0",
            &json!({ "iface_id": "eth0", "rx_rate_limiter": { "ops": { "size": 1, "refill_time": 1 } } }),
        )
        .unwrap();
    assert_eq!(resp.status, 400, "{}", resp.body);
    assert!(resp.body.contains("no network interface with this id"), "{}", resp.body);
    // Back to the empty placeholder; the guest keeps running throughout.
    api.expect_ok(
        "PATCH",
        "/drives/slot0",
        &json!({ "drive_id": "slot0", "path_on_host": empty }),
    );
    let seen = hull.stdout().len();
    assert!(
        hull.wait_for_output_after("tick ", seen, Duration::from_secs(30))
            .is_some(),
        "the guest stopped after the drive updates\n{}",
        hull.report()
    );
}

/// The metrics file after `FlushMetrics`: the halt guest writes the boot timer (one MMIO write) and prints
/// one line on COM1 (one port write a byte), then halts; the line must report exactly that under
/// Firecracker's keys, and the next line only what happened since.
#[test]
fn flush_metrics_reports_the_guests_exits_and_console_bytes_under_firecrackers_keys() {
    require_kvm!("flush_metrics_reports_the_guests_exits_and_console_bytes_under_firecrackers_keys");
    const PRINTED: &str = "hull-tiny: halt booted\n";
    let dir = hull_tests::TempDir::new("metrics").unwrap();
    let metrics = dir.path().join("metrics.json");
    let disk = dir.path().join("data.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let hull = Hull::with_api("metrics", &[]);
    let api = hull.api();
    api.expect_ok("PUT", "/metrics", &json!({ "metrics_path": metrics }));
    let flush = json!({ "action_type": "FlushMetrics" }).to_string();
    let refused = hull.request("PUT", "/actions", Some(&flush));
    assert_eq!(refused.status, 400, "FlushMetrics before boot: {}", refused.body);
    api.expect_ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": tiny_guest("halt.elf"), "boot_args": "console=ttyS0" }),
    );
    api.expect_ok(
        "PUT",
        "/machine-config",
        &json!({ "vcpu_count": 1, "mem_size_mib": 128 }),
    );
    api.expect_ok(
        "PUT",
        "/drives/data",
        &json!({ "drive_id": "data", "path_on_host": disk, "is_root_device": false, "is_read_only": true }),
    );
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "InstanceStart" }));
    hull.expect_output("hull-tiny: halt booted", EXIT_TIMEOUT);
    // The test reads the console as the UART's writer delivers it, which can run a few bytes ahead of the
    // UART's counter (a CI run caught 21 of 23): the guest prints nothing more once halted, so give the
    // counter time to catch up.
    std::thread::sleep(std::time::Duration::from_millis(200));

    let lines = |n: usize| -> Vec<Value> {
        let text = std::fs::read_to_string(&metrics).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        assert_eq!(lines.len(), n, "{text}");
        lines
    };
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "FlushMetrics" }));
    let line = lines(1).remove(0);
    let printed = PRINTED.len() as u64;
    assert_eq!(line["uart"]["write_count"], printed, "{line}");
    assert_eq!(line["uart"]["missed_write_count"], 0, "{line}");
    let vcpu = &line["vcpu"];
    assert!(vcpu["exit_io_out"].as_u64().unwrap() >= printed, "{line}");
    assert!(vcpu["exit_mmio_write"].as_u64().unwrap() >= 1, "{line}");
    assert_eq!(vcpu["failures"], 0, "{line}");
    // The drive has its section under its id (the guest never touches it), and `block` sums the drives.
    assert_eq!(line["block_data"]["read_count"], 0, "{line}");
    assert_eq!(line["block"]["read_count"], 0, "{line}");
    assert!(line["net"].is_object() && line["vsock"].is_object(), "{line}");
    // PUT /metrics, /boot-source, /machine-config, /drives and two /actions so far (one refused).
    assert_eq!(line["put_api_requests"]["actions_count"], 3, "{line}");
    assert_eq!(line["put_api_requests"]["actions_fails"], 1, "{line}");
    assert_eq!(line["put_api_requests"]["drive_count"], 1, "{line}");
    assert!(line["utc_timestamp_ms"].as_u64().unwrap() > 0, "{line}");

    // The halted guest does nothing more: the next line's counters are all zero.
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "FlushMetrics" }));
    let line = lines(2).remove(1);
    assert_eq!(line["uart"]["write_count"], 0, "{line}");
    assert_eq!(line["vcpu"]["exit_mmio_write"], 0, "{line}");
    assert_eq!(line["put_api_requests"]["actions_count"], 1, "{line}");
}

/// The pre-build (the VM, memory, kernel and vCPUs made once boot source and machine configuration are both
/// set) is remade when the machine configuration changes after it, and dropped at `InstanceStart` when the
/// kernel file was written since: either way the guest boots on the configuration as it stands.
#[test]
fn a_tiny_guest_boots_when_the_machine_or_the_kernel_changes_after_the_pre_build() {
    require_kvm!("a_tiny_guest_boots_when_the_machine_or_the_kernel_changes_after_the_pre_build");
    let dir = hull_tests::TempDir::new("prebuild").unwrap();
    let kernel = dir.path().join("pvh.elf");
    std::fs::copy(tiny_guest("pvh.elf"), &kernel).unwrap();
    let args = "console=ttyS0 reboot=k hull.test=prebuild";
    let boot = |label: &str, rewrite_kernel: bool| {
        let mut hull = Hull::with_api(label, &[]);
        let api = hull.api();
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
        // A different memory size after the pre-build: it must be remade for 256 MiB.
        api.expect_ok("PATCH", "/machine-config", &json!({ "mem_size_mib": 256 }));
        if rewrite_kernel {
            let bytes = std::fs::read(&kernel).unwrap();
            std::fs::write(&kernel, bytes).unwrap();
        }
        api.expect_ok("PUT", "/actions", &json!({ "action_type": "InstanceStart" }));
        let status = hull.expect_exit(EXIT_TIMEOUT);
        assert_eq!(status.code(), Some(0), "{}", hull.report());
        let ok = hull.expect_output("hull-tiny: pvh ", Duration::ZERO);
        assert!(ok.starts_with("hull-tiny: pvh ok magic=336ec578 "), "{ok}");
        let memmap = hull.expect_output("hull-tiny: pvh memmap", Duration::ZERO);
        assert_eq!(hex_field(&memmap, "ram_end"), 256 * MIB, "{memmap}");
        assert_cmdline(
            &hull.expect_output("hull-tiny: pvh cmdline=", Duration::ZERO),
            "cmdline=",
            args,
        );
        hull
    };
    let hull = boot("prebuild-kept", false);
    assert_eq!(
        hull.stderr().matches("VM pre-built for InstanceStart").count(),
        2,
        "one pre-build for 128 MiB, one for 256 MiB\n{}",
        hull.report()
    );
    expect_log(&hull, "pre_built=true");
    let hull = boot("prebuild-stale", true);
    expect_log(&hull, "pre_built=false");
}

/// A kernel that passes `PUT /boot-source`'s checks but cannot be loaded fails the pre-build silently: the
/// requests succeed, and `InstanceStart` answers the same 400 as a hull that never pre-built.
#[test]
fn a_bad_kernel_set_before_machine_config_fails_instance_start_as_without_a_pre_build() {
    require_kvm!("a_bad_kernel_set_before_machine_config_fails_instance_start_as_without_a_pre_build");
    let dir = hull_tests::TempDir::new("prebuild-bad").unwrap();
    let kernel = dir.path().join("not-a-kernel");
    std::fs::write(&kernel, vec![0x41u8; 8192]).unwrap();
    let start_error = |label: &str, put_machine: bool| {
        let hull = Hull::with_api(label, &[]);
        let api = hull.api();
        api.expect_ok(
            "PUT",
            "/boot-source",
            &json!({ "kernel_image_path": kernel, "boot_args": "console=ttyS0" }),
        );
        if put_machine {
            api.expect_ok(
                "PUT",
                "/machine-config",
                &json!({ "vcpu_count": 1, "mem_size_mib": 128 }),
            );
        }
        let body = json!({ "action_type": "InstanceStart" }).to_string();
        let resp = api.request("PUT", "/actions", Some(&body)).unwrap();
        assert_eq!(resp.status, 400, "{}\n{}", resp.body, hull.report());
        let info = api.get("/").unwrap();
        assert_eq!(info.json()["state"], "Not started", "{}", info.body);
        resp.json()["fault_message"].as_str().unwrap_or_default().to_string()
    };
    let with_pre_build = start_error("prebuild-bad", true);
    let without = start_error("prebuild-none", false);
    assert!(
        with_pre_build.contains("neither a loadable ELF nor a bzImage"),
        "{with_pre_build}"
    );
    assert_eq!(with_pre_build, without);
}

/// hull's standard input is the guest's serial console input: bytes written to it reach the guest's UART
/// one by one (the echo guest answers each upper-cased), and the guest's answer comes back on stdout.
#[test]
fn standard_input_reaches_the_guest_serial_console() {
    require_kvm!("standard_input_reaches_the_guest_serial_console");
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let dir = hull_tests::TempDir::new("tiny-echo").expect("temp dir");
    let cfg = dir.path().join("vm.json");
    std::fs::write(&cfg, config("echo.elf", 1, 64, "").to_string()).unwrap();
    let mut child = Command::new(hull_tests::hull_bin())
        .args(["--no-api", "--config-file"])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start hull");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "hull-tiny: echo ready\n");
    child.stdin.take().unwrap().write_all(b"ping pong.").unwrap();
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the echo guest did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "PING PONG\nhull-tiny: echo done\n");
    assert_eq!(status.code(), Some(0), "hull exits 0 after the guest's reset");
}
