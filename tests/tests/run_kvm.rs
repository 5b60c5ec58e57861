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

/// `hull template create DIR` with the test guest, as a user runs it.
fn template_create(dir: &std::path::Path, backend: &str) -> std::process::Output {
    let g = hull_tests::guest_images();
    std::process::Command::new(hull_tests::hull_bin())
        .args(["template", "create"])
        .arg(dir)
        .args(["--backend", backend])
        .arg("--kernel")
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&g.initrd)
        .output()
        .unwrap()
}

/// Restore-based fast start on hardware KVM: a template whose agent answered is made once, and two runs
/// restored from it each run their container in their own clone (entropy reseeded and clock synced by the
/// agent; the rootfs attached after the restore), with the template's kernel.
#[test]
fn runs_restored_from_an_agent_ready_template() {
    if !hardware_kvm() {
        skip(
            "runs_restored_from_an_agent_ready_template",
            "needs hardware KVM: under kvm_pvm no template guest reaches its agent (tests/tests/fast_start.rs \
             proves the restore mechanics with tiny guests)",
        );
        return;
    }
    let work = hull_tests::TempDir::new("template-kvm").unwrap();
    let dir = work.path().join("t");
    let made = template_create(&dir, "kvm");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let t = dir.display().to_string();
    for _ in 0..2 {
        let out = HullRun::spawn(
            command_on(
                "kvm",
                &["--from-snapshot", &t],
                &["sh", "-c", "uname -r; cat /proc/sys/kernel/random/boot_id; date +%s"],
            ),
            None,
        )
        .finish();
        assert_eq!(out.code(), 0, "{}", out.stderr);
        let text = out.out();
        let mut lines = text.lines();
        assert!(lines.next().unwrap_or("").ends_with("-hull"), "{text}");
        lines.next();
        let guest_now: u64 = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
        let host_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            host_now.abs_diff(guest_now) < 5,
            "the clone's clock was synced: guest {guest_now}, host {host_now}"
        );
    }
}

/// Where a template cannot be made or used, hull says why instead of trying: no kvm backend (the software
/// KVM picks qemu), a directory that is not a template, a run that does not fit the template.
#[test]
fn templates_are_refused_clearly_where_they_cannot_work() {
    let work = hull_tests::TempDir::new("template-refusals").unwrap();
    let made = template_create(&work.path().join("t"), "qemu");
    assert_eq!(made.status.code(), Some(1));
    let err = String::from_utf8_lossy(&made.stderr);
    assert!(err.contains("needs the kvm backend"), "{err}");
    assert!(!work.path().join("t").exists(), "nothing made");

    let t = work.path().display().to_string();
    let out = HullRun::spawn(command_on("qemu", &["--from-snapshot", &t], &["true"]), None).finish();
    assert_eq!(out.code(), 125, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--from-snapshot restores a snapshot of the hull VMM"),
        "{}",
        out.stderr
    );
    let out = HullRun::spawn(command_on("kvm", &["--from-snapshot", &t], &["true"]), None).finish();
    assert_eq!(out.code(), 125, "{}", out.stderr);
    assert!(
        out.stderr.contains("is not a template: template.json"),
        "{}",
        out.stderr
    );
    // A template (its files made by hand: the checks come before any restore) that the run does not fit.
    let fake = work.path().join("fake");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(
        fake.join("template.json"),
        serde_json::json!({
            "format": 1, "cpus": 1, "mem_mib": 256, "slots": 2, "rw_slots": 2, "net": false,
            "agent_policy": "none", "hull_version": "0", "key": "k"
        })
        .to_string(),
    )
    .unwrap();
    std::fs::File::create(fake.join("memory.mem"))
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    std::fs::write(fake.join("state.snap"), b"state").unwrap();
    let f = fake.display().to_string();
    let out = HullRun::spawn(
        command_on("kvm", &["--from-snapshot", &f, "--mem", "512"], &["true"]),
        None,
    )
    .finish();
    assert_eq!(out.code(), 125, "{}", out.stderr);
    assert!(
        out.stderr.contains("the template has --mem 256, this run asks for 512"),
        "{}",
        out.stderr
    );
    let vol = work.path().display().to_string();
    let out = HullRun::spawn(
        command_on(
            "kvm",
            &[
                "--from-snapshot",
                &f,
                "-v",
                &format!("{vol}:/a:ro"),
                "-v",
                &format!("{vol}:/b:ro"),
            ],
            &["true"],
        ),
        None,
    )
    .finish();
    assert_eq!(out.code(), 125, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the template has room for 1 read-only and 1 read-write volumes, this run has 2"),
        "{}",
        out.stderr
    );
}
