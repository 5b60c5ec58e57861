//! End to end: `hull run` leaves nothing behind — no process (QEMU, vhost-user backends), no socket, image
//! or run directory, no TAP — after 10 runs in a row, and after Ctrl-C (SIGINT, forwarded to the container,
//! which ends it with 128+2).

mod run_common;

use std::collections::BTreeSet;
use std::time::Duration;

use run_common::*;

/// TAP/TUN devices on the host.
fn taps() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("tun_flags").exists())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_nothing_left(pid: u32) {
    // Processes are killed and reaped before hull exits; give the kernel a moment to drop /proc entries.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        leftover_processes(pid),
        Vec::<String>::new(),
        "processes left by hull run {pid}"
    );
    assert_eq!(
        leftover_dirs(pid),
        Vec::<std::path::PathBuf>::new(),
        "run directory left by hull run {pid}"
    );
}

#[test]
fn ten_runs_in_a_row_leave_nothing_behind() {
    let taps_before = taps();
    for i in 0..10 {
        let run = HullRun::spawn(command(&[], &["sh", "-c", &format!("echo run-{i}")]), None);
        let pid = run.pid();
        let out = run.finish();
        assert_eq!(out.code(), 0, "run {i}: {}", out.stderr);
        assert_eq!(out.out(), format!("run-{i}\n"));
        assert_nothing_left(pid);
    }
    assert_eq!(taps(), taps_before, "TAP devices changed");
}

#[test]
fn ctrl_c_tears_everything_down() {
    // Under an init, the first Ctrl-C reaches the program and ends it.
    let mut run = HullRun::spawn(command(&["--init"], &["sh", "-c", "echo ready; exec sleep 600"]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    let pid = run.pid();
    run.signal(libc::SIGINT);
    let out = run.finish();
    assert_eq!(out.code(), 130, "{}", out.stderr);
    assert_nothing_left(pid);

    // A PID-1 sleep has no SIGINT handler, so the first Ctrl-C does nothing (as under runc); the second is
    // SIGKILL.
    let mut run = HullRun::spawn(command(&[], &["sh", "-c", "echo ready; exec sleep 600"]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    // "ready" comes from the shell, which catches SIGINT itself until it has exec'd sleep: give the exec
    // time, or a loaded machine can deliver the Ctrl-C to the shell.
    std::thread::sleep(Duration::from_secs(1));
    let pid = run.pid();
    run.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_secs(3));
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = state.rsplit(')').next().unwrap_or("").trim_start();
    assert!(
        !state.is_empty() && !state.starts_with('Z'),
        "hull run ended on the first Ctrl-C: {}",
        run.stderr_now()
    );
    run.signal(libc::SIGINT);
    let out = run.finish();
    assert_eq!(out.code(), 137, "{}", out.stderr);
    assert_nothing_left(pid);
}

#[test]
fn a_failing_boot_leaves_nothing_either() {
    let g = hull_tests::guest_images();
    let mut cmd = std::process::Command::new(hull_tests::hull_bin());
    // The kernel as initrd: the guest never gets an agent; hull must give up and clean up.
    cmd.args(["run", "--backend", "qemu", "--boot-timeout", "8", "--rootfs"])
        .arg(busybox_rootfs());
    cmd.arg("--kernel")
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&g.kernel)
        .args(["--", "true"]);
    let run = HullRun::spawn(cmd, None);
    let pid = run.pid();
    let out = run.finish();
    assert_eq!(out.code(), 125, "{}", out.stderr);
    assert_nothing_left(pid);
}

#[test]
fn sigkill_of_hull_takes_the_vm_along_and_the_next_run_sweeps_its_directory() {
    let mut run = HullRun::spawn(command(&[], &["sh", "-c", "echo ready; exec sleep 600"]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    let pid = run.pid();
    assert!(
        !leftover_processes(pid).is_empty(),
        "the VM's processes should be visible while it runs"
    );
    run.signal(libc::SIGKILL);
    let _ = run.finish();
    // PR_SET_PDEATHSIG: QEMU and the vhost-user backends die with hull.
    let start = std::time::Instant::now();
    while !leftover_processes(pid).is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            leftover_processes(pid)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // No clean-up survives SIGKILL; the next hull run removes the directory.
    let out = run_common::run(&[], &["true"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(leftover_dirs(pid), Vec::<std::path::PathBuf>::new());
}
