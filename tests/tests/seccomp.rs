//! hull's seccomp filters on a real microVM (issue 11, item 1): every thread of a running tiny guest carries
//! its filter and the guest still runs; `--no-seccomp` leaves the threads unfiltered; `--seccomp-filter FILE`
//! (seccompiler JSON keyed by `api`, `vmm`, `vcpu`) replaces the built-in filters, and a call a filter
//! forbids ends hull with status 148 and a line naming the call. The tries of what the built-in policy
//! forbids live next to it (`hull/src/seccomp/tests.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use hull_tests::{require_kvm, tiny_guest, Hull, TempDir};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Firecracker's exit status for a forbidden system call, which hull uses too.
const EXIT_BAD_SYSCALL: i32 = 148;

fn counter_config(dir: &Path) -> String {
    let cfg = dir.join("vm.json");
    let config = json!({
        "boot-source": { "kernel_image_path": tiny_guest("counter.elf"), "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    std::fs::write(&cfg, config.to_string()).expect("write config");
    cfg.to_str().expect("UTF-8 path").to_string()
}

/// For each thread of `pid`: its name, and the `Seccomp` mode and `Seccomp_filters` count from its status.
fn threads(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("list threads") {
        let dir = entry.expect("thread entry").path();
        let name = std::fs::read_to_string(dir.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(u32::MAX)
        };
        out.push((name, field("Seccomp:"), field("Seccomp_filters:")));
    }
    out.sort();
    out
}

fn started(hull: &Hull) {
    hull.expect_output("tick 2", TIMEOUT);
}

#[test]
fn every_thread_of_a_running_vm_has_its_filter() {
    require_kvm!("every_thread_of_a_running_vm_has_its_filter");
    let dir = TempDir::new("seccomp-on").expect("temp dir");
    let cfg = counter_config(dir.path());
    let hull = Hull::with_api("seccomp-on", &["--config-file", &cfg]);
    started(&hull);
    let threads = threads(hull.pid());
    eprintln!("{threads:?}");
    for (name, mode, filters) in &threads {
        assert_eq!(*mode, 2, "thread {name} is not in seccomp filter mode: {threads:?}");
        // The main thread's filter when they started, plus the thread's own, for the VMM's threads. (KVM's kernel worker,
        // `kvm-nx-lpage-recovery`, runs no user code; it only has to be filtered at all.)
        if name.starts_with("hull_vcpu") || name == "hull_events" {
            assert_eq!(*filters, 2, "thread {name}: {threads:?}");
        } else if name == "hull" || name == "hull-vmm" {
            // The main thread (`hull` execs `hull-vmm`): `api`, then `api-running` once the VM runs.
            assert_eq!(*filters, 2, "thread {name}: {threads:?}");
        } else {
            assert!(*filters >= 1, "thread {name}: {threads:?}");
        }
    }
    assert!(threads.iter().any(|t| t.0 == "hull_vcpu0") && threads.iter().any(|t| t.0 == "hull_events"));
    // Filtered, the guest goes on, and pause/resume (kicks) work.
    let api = hull.api();
    api.expect_ok("PATCH", "/vm", &json!({ "state": "Paused" }));
    api.expect_ok("PATCH", "/vm", &json!({ "state": "Resumed" }));
    let from = hull.stdout_len();
    assert!(
        hull.wait_for_output_after("tick", from, TIMEOUT).is_some(),
        "{}",
        hull.report()
    );
    assert!(!hull.stderr().contains("forbidden system call"), "{}", hull.report());
}

#[test]
fn no_seccomp_leaves_the_threads_unfiltered() {
    require_kvm!("no_seccomp_leaves_the_threads_unfiltered");
    let dir = TempDir::new("seccomp-off").expect("temp dir");
    let cfg = counter_config(dir.path());
    let hull = Hull::with_api("seccomp-off", &["--config-file", &cfg, "--no-seccomp"]);
    started(&hull);
    let threads = threads(hull.pid());
    assert!(threads.iter().all(|t| t.1 == 0), "{threads:?}");
    assert!(hull.stderr().contains("--no-seccomp"), "{}", hull.stderr());
}

/// A filter file in seccompiler's JSON format: each category allows everything except `deny`.
fn filter_file(dir: &Path, deny: &[(&str, &str)], categories: &[&str]) -> String {
    let mut file = serde_json::Map::new();
    for category in categories {
        let denied: Vec<_> = deny
            .iter()
            .filter(|(c, _)| c == category)
            .map(|(_, call)| json!({ "syscall": call }))
            .collect();
        let denied = if denied.is_empty() {
            vec![json!({ "syscall": "execve" })]
        } else {
            denied
        };
        file.insert(
            category.to_string(),
            json!({ "default_action": "allow", "filter_action": "trap", "filter": denied }),
        );
    }
    let path = dir.join("filters.json");
    std::fs::write(&path, serde_json::Value::Object(file).to_string()).expect("write filter file");
    path.to_str().expect("UTF-8 path").to_string()
}

#[test]
fn a_custom_filter_file_is_used_and_a_forbidden_call_is_named() {
    require_kvm!("a_custom_filter_file_is_used_and_a_forbidden_call_is_named");
    // Only execve is denied: the guest runs.
    let dir = TempDir::new("seccomp-file").expect("temp dir");
    let cfg = counter_config(dir.path());
    let file = filter_file(dir.path(), &[], &["api", "vmm", "vcpu"]);
    let hull = Hull::with_api("seccomp-file", &["--config-file", &cfg, "--seccomp-filter", &file]);
    started(&hull);
    assert!(threads(hull.pid()).iter().all(|t| t.1 == 2));
    drop(hull);

    // The vCPU filter denies ioctl: its first KVM_RUN ends hull, and the line names the call (16).
    let dir = TempDir::new("seccomp-file-deny").expect("temp dir");
    let cfg = counter_config(dir.path());
    let file = filter_file(dir.path(), &[("vcpu", "ioctl")], &["api", "vmm", "vcpu"]);
    let mut hull = Hull::with_api("seccomp-file-deny", &["--config-file", &cfg, "--seccomp-filter", &file]);
    let status = hull.expect_exit(TIMEOUT);
    let stderr = hull.stderr();
    assert_eq!(status.code(), Some(EXIT_BAD_SYSCALL), "{stderr}");
    assert!(
        stderr.contains(&format!("made the forbidden system call {} (ioctl);", libc::SYS_ioctl)),
        "{stderr}"
    );
}

#[test]
fn the_api_filter_applies_before_the_first_client() {
    // No VM here: a file whose api filter denies accept4 ends hull at the first connection.
    let dir = TempDir::new("seccomp-api").expect("temp dir");
    let file = filter_file(dir.path(), &[("api", "accept4")], &["api", "vmm", "vcpu"]);
    let mut hull = Hull::spawn_in(dir, ["--api-sock", "api.sock", "--seccomp-filter", &file]);
    let sock = hull.dir().join("api.sock");
    let deadline = Instant::now() + TIMEOUT;
    // The socket's name exists from bind(2), a moment before listen(2): retry until a connection is queued.
    let _client = loop {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(c) => break Some(c),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let status = hull.expect_exit(TIMEOUT);
    let stderr = hull.stderr();
    assert_eq!(status.code(), Some(EXIT_BAD_SYSCALL), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "made the forbidden system call {} (accept4);",
            libc::SYS_accept4
        )),
        "{stderr}"
    );
}

#[test]
fn a_filter_file_without_every_thread_kind_is_refused() {
    let dir = TempDir::new("seccomp-missing").expect("temp dir");
    let file = filter_file(dir.path(), &[], &["api", "vmm"]);
    let mut hull = Hull::spawn_in(dir, ["--api-sock", "api.sock", "--seccomp-filter", &file]);
    let status = hull.expect_exit(TIMEOUT);
    let stderr = hull.stderr();
    assert_eq!(status.code(), Some(152), "{stderr}");
    assert!(stderr.contains("has no filter for `vcpu` threads"), "{stderr}");
}

/// The `Seccomp:` mode of the process `pid`'s main thread.
fn seccomp_mode(pid: u32) -> u32 {
    threads(pid).first().map(|t| t.1).expect("the process has a thread")
}

#[test]
fn vhost_user_backends_are_filtered_unless_told_otherwise() {
    for (extra, expected) in [(None, 2), (Some("--no-seccomp"), 0)] {
        let dir = TempDir::new("seccomp-vhost-user").expect("temp dir");
        let mut args = vec![
            "vhost-user",
            "vsock",
            "--socket",
            "vu.sock",
            "--guest-cid",
            "3",
            "--uds-path",
            "v.sock",
        ];
        args.extend(extra);
        let hull = Hull::spawn_in(dir, &args);
        let sock = hull.dir().join("vu.sock");
        let deadline = Instant::now() + TIMEOUT;
        while !sock.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(sock.exists(), "{}", hull.report());
        assert_eq!(seccomp_mode(hull.pid()), expected, "{extra:?}: {}", hull.report());
    }

    // A filter file must name the backend's kind.
    let dir = TempDir::new("seccomp-vhost-user-file").expect("temp dir");
    let file = filter_file(dir.path(), &[], &["api", "vmm", "vcpu"]);
    let mut hull = Hull::spawn_in(
        dir,
        [
            "vhost-user",
            "vsock",
            "--socket",
            "vu.sock",
            "--guest-cid",
            "3",
            "--uds-path",
            "v.sock",
            "--seccomp-filter",
            &file,
        ],
    );
    assert_eq!(hull.expect_exit(TIMEOUT).code(), Some(1));
    assert!(
        hull.stderr().contains("has no filter for `vhost-user-vsock` threads"),
        "{}",
        hull.stderr()
    );
}
