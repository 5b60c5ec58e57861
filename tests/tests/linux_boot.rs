//! Layers (b) and (c): the project's real guest kernel (ELF vmlinux from `resources/build-guest.sh`) in hull.
//!
//! (b) runs everywhere KVM is usable: the kernel must get through early boot with what hull gave it, which its
//! log proves line by line: the command line, the e820 map for the configured memory, SMP bring-up, the
//! initramfs, and `Run /init`. Under the software kvm_pvm each boot costs about a minute of emulated ring 0
//! (more with 2 vCPUs), so there are only two, one at a time (a file lock, across test processes too), and hull
//! is killed as soon as the last line has been seen.
//!
//! (c) needs hardware KVM (no Linux guest reaches user space under kvm_pvm): the full boot to
//! `hull-agent ready`, the boot timer, and the power-off that ends hull with exit code 0. Elsewhere it is
//! skipped with a loud SKIPPED line.

use std::time::Duration;

use hull_tests::{guest_images, hardware_kvm, note, require_kvm, skip, software_kvm, FileLock, Hull};
use serde_json::json;

/// Per boot, to `Run /init` under kvm_pvm: measured 106-121 s for 1 vCPU and ~140 s for 2 vCPUs (QEMU, same
/// kernel) on a 2-core machine shared with compilers; hardware KVM needs about a second. Override with
/// `HULL_LINUX_BOOT_TIMEOUT_SECS`.
fn linux_timeout() -> Duration {
    let secs = std::env::var("HULL_LINUX_BOOT_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}
const MIB: u64 = 1 << 20;

/// The kernel's `BIOS-e820` line for RAM from 1 MiB to the end of `mem_mib` (below the MMIO hole).
fn e820_high_ram_line(mem_mib: u64) -> String {
    format!("BIOS-e820: [mem 0x{:016x}-0x{:016x}] usable", MIB, mem_mib * MIB - 1)
}

/// Asserts the early-boot lines every boot must show: the configured command line, the e820 map ending at the
/// configured memory size, `vcpus` CPUs brought up, and the initramfs unpacked.
fn assert_early_boot(hull: &Hull, boot_args: &str, mem_mib: u64, vcpus: u8) {
    let cmdline = hull.expect_output("Command line:", Duration::ZERO);
    let given = cmdline
        .split_once("Command line:")
        .map(|(_, c)| c.trim_start())
        .unwrap_or_default();
    assert!(
        given.starts_with(boot_args),
        "kernel command line {given:?} does not start with {boot_args:?}"
    );
    hull.expect_output(&e820_high_ram_line(mem_mib), Duration::ZERO);
    let cpus = if vcpus == 1 {
        "smp: Brought up 1 node, 1 CPU".to_string()
    } else {
        format!("smp: Brought up 1 node, {vcpus} CPUs")
    };
    hull.expect_output(&cpus, Duration::ZERO);
    hull.expect_output("Unpacking initramfs", Duration::ZERO);
    hull.expect_output("Freeing initrd memory", Duration::ZERO);
    // hull's CMOS clock answers at once: no second lost waiting for an RTC update that never ends.
    assert!(
        !hull.stdout().contains("Unable to read current time from RTC"),
        "{}",
        hull.report()
    );
}

#[test]
fn linux_reaches_init_with_one_vcpu_from_a_config_file() {
    require_kvm!("linux_reaches_init_with_one_vcpu_from_a_config_file");
    let images = guest_images();
    let _one_linux_boot_at_a_time = FileLock::acquire("linux-boot");
    let args = "console=ttyS0 reboot=k panic=1 hull.test=config-file";
    let config = json!({
        "boot-source": { "kernel_image_path": images.kernel, "initrd_path": images.initrd, "boot_args": args },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    let mut hull = Hull::with_config("linux-1cpu", &config, &[]);
    hull.expect_output("Run /init as init process", linux_timeout());
    note(&format!(
        "linux_boot: 1 vCPU, 128 MiB: `Run /init` after {:.1} s",
        hull.elapsed().as_secs_f64()
    ));
    hull.kill();
    assert_early_boot(&hull, args, 128, 1);
}

#[test]
fn linux_brings_up_two_vcpus_booted_through_the_api() {
    require_kvm!("linux_brings_up_two_vcpus_booted_through_the_api");
    let images = guest_images();
    let _one_linux_boot_at_a_time = FileLock::acquire("linux-boot");
    let args = "console=ttyS0 reboot=k panic=1 hull.test=api-smp";
    let mut hull = Hull::with_api("linux-2cpu", &[]);
    let api = hull.api();
    api.expect_ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": images.kernel, "initrd_path": images.initrd, "boot_args": args }),
    );
    api.expect_ok(
        "PUT",
        "/machine-config",
        &json!({ "vcpu_count": 2, "mem_size_mib": 512 }),
    );
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "InstanceStart" }));
    if hull
        .wait_for_output("Run /init as init process", linux_timeout())
        .is_none()
    {
        // A known way to hang here: under kvm_pvm a KVM hypercall (VMCALL) is re-executed forever, and Linux
        // uses them for PV IPIs, PV sched-yield and PV spinlock kicks once it has more than one CPU.
        let hint = if software_kvm() && hull.stdout().contains("kvm-guest: setup PV IPIs") {
            "\nhint: the guest enabled KVM PV IPIs (CPUID 0x40000001 EAX bit 11), whose VMCALL loops forever under \
             kvm_pvm; the SoftKvm template should hide PV_UNHALT (bit 7), PV_SEND_IPI (11) and PV_SCHED_YIELD (13)"
        } else {
            ""
        };
        panic!("no `Run /init` within {:?}{hint}\n{}", linux_timeout(), hull.report());
    }
    note(&format!(
        "linux_boot: 2 vCPUs, 512 MiB: `Run /init` after {:.1} s",
        hull.elapsed().as_secs_f64()
    ));
    hull.kill();
    assert_early_boot(&hull, args, 512, 2);
}

#[test]
fn linux_boots_to_the_agent_and_powers_off() {
    let test = "linux_boots_to_the_agent_and_powers_off";
    require_kvm!(test);
    if software_kvm() || !hardware_kvm() {
        skip(
            test,
            "needs hardware KVM: under the software kvm_pvm no Linux guest reaches user space \
             (SYSCALL from guest ring 3 is broken), so hull-agent cannot run",
        );
        return;
    }
    let images = guest_images();
    let _one_linux_boot_at_a_time = FileLock::acquire("linux-boot");
    let config = json!({
        "boot-source": {
            "kernel_image_path": images.kernel,
            "initrd_path": images.initrd,
            "boot_args": "console=ttyS0 reboot=k panic=1 hull.poweroff=1",
        },
        "machine-config": { "vcpu_count": 2, "mem_size_mib": 256 },
    });
    let mut hull = Hull::with_config("linux-agent", &config, &["--boot-timer"]);
    hull.expect_output("hull-agent ready", Duration::from_secs(60));
    let status = hull.expect_exit(Duration::from_secs(60));
    assert_eq!(
        status.code(),
        Some(0),
        "the agent's power-off should end hull with 0\n{}",
        hull.report()
    );
    hull.expect_log("Guest-boot-time", Duration::ZERO);
    assert!(!hull.stdout().contains("boot timer not written"), "{}", hull.report());
}
