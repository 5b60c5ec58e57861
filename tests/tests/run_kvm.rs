//! End to end: `hull run` on the `kvm` backend (the hull VMM in its own process, configured through its API)
//! where hardware KVM exists — skipped loudly elsewhere, e.g. under the software `kvm_pvm`, where no Linux
//! guest reaches user space — and `--backend auto` choosing and naming its backend.

mod run_common;

use hull_tests::{hardware_kvm, skip, software_kvm};
use run_common::*;

fn kvm_run(cmd: &[&str]) -> RunOutput {
    HullRun::spawn(command_on("kvm", &[], cmd), None).finish()
}

#[test]
fn kvm_backend_runs_the_container_in_the_guest_kernel() {
    if !hardware_kvm() {
        skip(
            "kvm_backend_runs_the_container_in_the_guest_kernel",
            "needs hardware KVM (/dev/kvm missing, or kvm_pvm)",
        );
        return;
    }
    let out = kvm_run(&["uname", "-r"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(out.out().trim().ends_with("-hull"), "{}", out.out());
    let out = kvm_run(&["sh", "-c", "exit 3"]);
    assert_eq!(out.code(), 3, "{}", out.stderr);
}

#[test]
fn auto_backend_names_its_choice() {
    let out = HullRun::spawn(command_on("auto", &[], &["true"]), None).finish();
    let expected = if hardware_kvm() { "backend kvm" } else { "backend qemu" };
    assert!(out.stderr.contains(expected), "{}", out.stderr);
    if software_kvm() {
        assert!(
            out.stderr.contains("kvm_pvm"),
            "the reason must be given: {}",
            out.stderr
        );
    }
    assert_eq!(out.code(), 0, "{}", out.stderr);
}
