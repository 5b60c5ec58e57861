//! End to end under a real containerd: a task whose spec carries the annotation `io.hull.policy.exec=false`
//! boots its VM with an agent policy that refuses ExecProcess, so `ctr task exec` fails with the agent's
//! PERMISSION_DENIED, while the task itself runs, stops and is deleted as usual. (A task without the
//! annotation execs: `shim_containerd.rs`'s detached task.) The shim config also asks for `fast_start`,
//! which needs the kvm backend: where the backend is qemu the pod boots all the same and the shim's log
//! says why. Needs root.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, ContainerdOptions, CTR_NAMESPACE};
use hull_tests::oci_image::{self, BUSYBOX_IMAGE};

const RUNTIME: &str = "io.containerd.hull.v2";

#[test]
fn a_task_annotated_without_exec_refuses_ctr_task_exec() {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        hull_tests::skip(
            "a_task_annotated_without_exec_refuses_ctr_task_exec",
            "needs root for containerd",
        );
        return;
    }
    hull_tests::ensure_qemu_tools();
    let cfg_dir = std::env::temp_dir().join(format!("hull-policy-shim-test-{}", std::process::id()));
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let shim_config: PathBuf = cfg_dir.join("shim.toml");
    let ctd = Containerd::start(ContainerdOptions {
        hull_config_path: Some(shim_config.clone()),
        ..Default::default()
    });
    let templates = cfg_dir.join("templates");
    ctd.write_hull_shim_config(
        &shim_config,
        &format!("fast_start = true\ntemplate_dir = \"{}\"\n", templates.display()),
    );
    ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let id = format!("noexec-{}", std::process::id());
    let cfg = shim_config.to_string_lossy().to_string();
    let run = ctd.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--runtime-config-path",
        &cfg,
        "-d",
        "--annotation",
        "io.hull.policy.exec=false",
        BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "while true; do sleep 1; done",
    ]);
    assert!(run.success(), "{run:?}\n{}", ctd.report());

    let exec = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo should-not-run",
    ]);
    assert!(!exec.success(), "exec ran despite the policy: {exec:?}");
    assert!(!exec.stdout.contains("should-not-run"), "{exec:?}");
    let said = format!("{}{}", exec.stdout, exec.stderr);
    eprintln!("ctr task exec: {}", said.trim());
    assert!(
        said.contains("PERMISSION_DENIED") && said.contains("ExecProcess is refused by the agent policy"),
        "the refusal names the call: {exec:?}\n{}",
        ctd.report()
    );

    if !hull_tests::hardware_kvm() {
        assert!(
            ctd.log().contains("fast_start needs the kvm backend"),
            "the shim says why the pod booted instead:\n{}",
            ctd.report()
        );
    }

    // The task is unharmed: it still runs, then stops and goes as usual.
    assert!(ctd.ctr(&["task", "ls"]).stdout.contains("RUNNING"));
    assert!(ctd.ctr(&["task", "kill", "-s", "SIGKILL", &id]).success());
    let t0 = Instant::now();
    while !ctd.ctr(&["task", "ls"]).stdout.contains("STOPPED") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the task did not stop\n{}",
            ctd.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ctd.ctr(&["task", "delete", &id]).success());
    assert!(ctd.ctr(&["container", "rm", &id]).success());
    // Shims end on containerd's Shutdown, a moment after the last delete.
    let t0 = Instant::now();
    while !ctd.shim_pids().is_empty() && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(ctd);
    let _ = std::fs::remove_dir_all(&cfg_dir);
}
