//! hull-jailer end to end: hull started through it boots a tiny guest through the API socket inside its
//! chroot, as the jail uid/gid, in a mount namespace of its own, with its root at the chroot, in the cgroup
//! `--cgroup` asked for and with the `--resource-limit` it was given; bad `--id`s are refused before anything
//! is created; and one jailed Linux boot reaches `Run /init` (about 1-2 minutes under the software KVM).
//!
//! The jails are prepared as `hull run` and the shim prepare them (`hull_runtime::jail`): the guest's files
//! hard-linked into the chroot, the paths given to hull are the ones inside it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hull_runtime::jail::{Access, Jail, JailConfig};
use hull_tests::{
    guest_images, hull_bin, note, require_kvm, software_kvm, tiny_guest, ApiClient, FileLock, Hull, TempDir,
};
use serde_json::json;

/// The jail uid/gid of these tests: not root, not a user of this machine.
const JAIL_ID: u32 = 64123;
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn jailer_bin() -> PathBuf {
    let jailer = hull_bin().with_file_name("hull-jailer");
    assert!(
        jailer.is_file(),
        "{} was not built: cargo build -p hull-jailer",
        jailer.display()
    );
    jailer
}

/// A jail config whose chroot base is a fresh temporary directory.
fn jail_config(base: &Path) -> JailConfig {
    JailConfig {
        jailer: jailer_bin(),
        uid: JAIL_ID,
        uid_count: 1,
        gid: JAIL_ID,
        base_dir: base.to_path_buf(),
    }
}

/// `hull-jailer` with Firecracker's flags for `jail`'s id and base, then `extra` jailer flags, then `--` and
/// hull's own arguments.
fn jailer_args(id: &str, base: &Path, extra: &[&str], hull_args: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--id".into(),
        id.into(),
        "--exec-file".into(),
        hull_bin().display().to_string(),
        "--uid".into(),
        JAIL_ID.to_string(),
        "--gid".into(),
        JAIL_ID.to_string(),
        "--chroot-base-dir".into(),
        base.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.extend(hull_args.iter().map(|s| s.to_string()));
    args
}

/// The `Uid:`/`Gid:` line of /proc/PID/status: real, effective, saved, filesystem.
fn status_line(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The cgroup `--cgroup pids.max=64` can be tested with here: v1 when a pids hierarchy is mounted, else v2
/// when its root offers the pids controller. `None`: no pids controller, the cgroup part is skipped.
fn pids_cgroup() -> Option<(&'static str, PathBuf)> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 4 && f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids") {
            return Some(("1", PathBuf::from(f[1])));
        }
    }
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 4 && f[2] == "cgroup2" {
            let root = PathBuf::from(f[1]);
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "pids") {
                return Some(("2", root));
            }
        }
    }
    None
}

#[test]
fn jailed_hull_boots_a_tiny_guest_through_the_api_socket_in_its_chroot() {
    require_kvm!("jailed_hull_boots_a_tiny_guest_through_the_api_socket_in_its_chroot");
    let base = TempDir::new("jail-base").expect("temp dir");
    let id = format!("tiny-{}", std::process::id());
    let jail = Jail::prepare(&jail_config(base.path()), &hull_bin(), &id).expect("prepare the jail");
    let kernel = jail
        .link_in(&tiny_guest("pvh.elf"), "pvh.elf", Access::Read)
        .expect("link the guest");
    let cgroup = pids_cgroup();
    let mut extra = vec!["--resource-limit", "no-file=256"];
    if let Some((version, _)) = &cgroup {
        extra.extend(["--cgroup-version", version, "--cgroup", "pids.max=64"]);
    } else {
        note("jailer: no pids cgroup controller here; the --cgroup part is not tested");
    }
    let args = jailer_args(
        &id,
        base.path(),
        &extra,
        &["--api-sock", "/run/api.sock", "--boot-timer"],
    );
    let mut hull = Hull::spawn_binary_in(&jailer_bin(), TempDir::new("jailer").expect("temp dir"), &args);

    let sock = jail.host_path("/run/api.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            hull.try_status().is_none() && std::time::Instant::now() < deadline,
            "the jailed hull's API socket {} never answered\n{}",
            sock.display(),
            hull.report()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Without --new-pid-ns the jailer execs hull: the jailer's PID is hull's, and so says the PID file.
    let pid = hull.pid();
    let pid_file = std::fs::read_to_string(jail.host_path("/hull.pid")).expect("hull.pid in the jail");
    assert_eq!(pid_file.trim(), pid.to_string());

    let ids = format!("{JAIL_ID} {JAIL_ID} {JAIL_ID} {JAIL_ID}");
    assert_eq!(status_line(pid, "Uid:"), ids, "real, effective, saved and fs uid");
    assert_eq!(status_line(pid, "Gid:"), ids, "real, effective, saved and fs gid");
    assert_eq!(status_line(pid, "Groups:"), "", "no supplementary groups");
    assert_eq!(status_line(pid, "NoNewPrivs:"), "1");
    // hull installs its own seccomp filters after the exec: the jailed process has them (mode 2, filter).
    // It binds the API socket just before (clients may connect at once; nothing is read until the filter
    // is on), so on a loaded machine the socket can answer a moment before the filter shows.
    let filtered_by = std::time::Instant::now() + Duration::from_secs(10);
    while status_line(pid, "Seccomp:") != "2" && std::time::Instant::now() < filtered_by {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        status_line(pid, "Seccomp:"),
        "2",
        "the jailed hull runs without its seccomp filter"
    );
    // /proc/PID/root leads to the chroot (readlink shows "/": it names it in hull's own mount namespace).
    let root = std::fs::metadata(format!("/proc/{pid}/root")).expect("stat /proc/PID/root");
    let chroot = std::fs::metadata(jail.root()).expect("stat the chroot");
    assert_eq!(
        (root.dev(), root.ino()),
        (chroot.dev(), chroot.ino()),
        "hull's root is not the chroot"
    );
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).expect("read the mount namespace");
    assert_ne!(
        ns(&pid.to_string()),
        ns("self"),
        "hull must have a mount namespace of its own"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    assert_eq!(nofile.split_whitespace().nth(3), Some("256"), "{nofile}");
    if let Some((version, _)) = &cgroup {
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup");
        let wanted = format!("/hull/{id}");
        let line = own
            .lines()
            .find(|l| {
                if *version == "1" {
                    l.contains(":pids:")
                } else {
                    l.starts_with("0::")
                }
            })
            .unwrap_or_default();
        assert!(line.ends_with(&wanted), "hull is not in {wanted}: {own}");
    }
    // Only the device nodes a VM needs, owned by the jail, with their real numbers.
    for (dev, major, minor) in [("/dev/kvm", 10, 232), ("/dev/net/tun", 10, 200)] {
        let m = std::fs::metadata(jail.host_path(dev)).unwrap_or_else(|e| panic!("{dev} in the jail: {e}"));
        assert!(m.file_type().is_char_device(), "{dev}");
        let rdev = m.rdev();
        assert_eq!((libc::major(rdev), libc::minor(rdev)), (major, minor), "{dev}");
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (JAIL_ID, JAIL_ID, 0o600), "{dev}");
    }
    let dev: Vec<String> = std::fs::read_dir(jail.host_path("/dev"))
        .expect("list the jail's /dev")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        dev.iter().all(|d| ["kvm", "net", "userfaultfd"].contains(&d.as_str())),
        "{dev:?}"
    );

    let api = ApiClient::new(&sock);
    api.expect_ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": kernel, "boot_args": "console=ttyS0" }),
    );
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "InstanceStart" }));
    hull.expect_output("hull-tiny: pvh reset", EXIT_TIMEOUT);
    let status = hull.expect_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", hull.report());
    hull.expect_log("Guest-boot-time", Duration::ZERO);
    if let Some((_, root)) = cgroup {
        // The jailer leaves its cgroup behind (as Firecracker's does); this test cleans up.
        let _ = std::fs::remove_dir(root.join("hull").join(&id));
    }
}

#[test]
fn bad_ids_are_refused_before_anything_is_made() {
    let base = TempDir::new("jail-bad-id").expect("temp dir");
    let long = "a".repeat(65);
    for (id, why) in [
        ("../escape", "Invalid char (.) at position 0"),
        ("vm_1", "Invalid char (_) at position 2"),
        ("", "Invalid len (0)"),
        (long.as_str(), "Invalid len (65)"),
    ] {
        let out = Command::new(jailer_bin())
            .args(jailer_args(id, base.path(), &[], &["--api-sock", "/run/api.sock"]))
            .output()
            .expect("run hull-jailer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "--id {id:?}: {stderr}");
        assert!(
            stderr.contains("Invalid instance ID") && stderr.contains(why),
            "--id {id:?}: {stderr}"
        );
        let made: Vec<_> = std::fs::read_dir(base.path()).expect("list the base").collect();
        assert!(made.is_empty(), "--id {id:?} created {made:?}");
    }
    // A resource limit it does not know is refused as clearly.
    let out = Command::new(jailer_bin())
        .args(jailer_args("ok-id", base.path(), &["--resource-limit", "nproc=1"], &[]))
        .output()
        .expect("run hull-jailer");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid resource argument: nproc"));
}

#[test]
fn a_jailed_linux_kernel_reaches_run_init() {
    require_kvm!("a_jailed_linux_kernel_reaches_run_init");
    let images = guest_images();
    let _one_linux_boot_at_a_time = FileLock::acquire("linux-boot");
    let base = TempDir::new("jail-linux").expect("temp dir");
    let id = format!("linux-{}", std::process::id());
    let jail = Jail::prepare(&jail_config(base.path()), &hull_bin(), &id).expect("prepare the jail");
    let kernel = jail
        .link_in(&images.kernel, "vmlinux", Access::Read)
        .expect("link the kernel");
    let initrd = jail
        .link_in(&images.initrd, "initrd", Access::Read)
        .expect("link the initramfs");
    let args = jailer_args(&id, base.path(), &[], &["--api-sock", "/run/api.sock"]);
    let mut hull = Hull::spawn_binary_in(&jailer_bin(), TempDir::new("jailer-linux").expect("temp dir"), &args);
    let sock = jail.host_path("/run/api.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(std::time::Instant::now() < deadline, "no API socket\n{}", hull.report());
        std::thread::sleep(Duration::from_millis(10));
    }
    let api = ApiClient::new(&sock);
    let boot_args = "console=ttyS0 reboot=k panic=1 hull.test=jailed";
    api.expect_ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": kernel, "initrd_path": initrd, "boot_args": boot_args }),
    );
    // Inside its chroot hull cannot see /sys/module/kvm_pvm, so it cannot pick the software KVM's CPU
    // template by itself: whoever starts it (here the test, in hull run and the shim the runtime) names it.
    let template = if software_kvm() { "SoftKvm" } else { "None" };
    api.expect_ok(
        "PUT",
        "/machine-config",
        &json!({ "vcpu_count": 1, "mem_size_mib": 128, "cpu_template": template }),
    );
    api.expect_ok("PUT", "/actions", &json!({ "action_type": "InstanceStart" }));
    let timeout = std::env::var("HULL_LINUX_BOOT_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(300));
    hull.expect_output("Run /init as init process", timeout);
    note(&format!(
        "jailer: jailed Linux, 1 vCPU: `Run /init` after {:.1} s",
        hull.elapsed().as_secs_f64()
    ));
    assert_eq!(
        status_line(hull.pid(), "Uid:"),
        format!("{JAIL_ID} {JAIL_ID} {JAIL_ID} {JAIL_ID}")
    );
    hull.kill();
}

/// `--daemonize --new-pid-ns`: the jailer returns at once (status 0), hull runs detached as PID 1 of a PID
/// namespace of its own, still jailed, and its PID (as this namespace sees it) is in `/hull.pid`.
#[test]
fn daemonized_hull_runs_as_pid_1_of_its_own_pid_namespace() {
    require_kvm!("daemonized_hull_runs_as_pid_1_of_its_own_pid_namespace");
    let base = TempDir::new("jail-daemon").expect("temp dir");
    let id = format!("daemon-{}", std::process::id());
    let jail = Jail::prepare(&jail_config(base.path()), &hull_bin(), &id).expect("prepare the jail");
    let args = jailer_args(
        &id,
        base.path(),
        &["--daemonize", "--new-pid-ns"],
        &["--api-sock", "/run/api.sock"],
    );
    let status = Command::new(jailer_bin())
        .args(&args)
        .status()
        .expect("run hull-jailer");
    assert!(status.success(), "hull-jailer --daemonize: {status}");
    // The PID file is written by the process that forked hull into the new namespace, just before it exits.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(jail.host_path("/hull.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "no /hull.pid in the jail");
        std::thread::sleep(Duration::from_millis(10));
    };
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            // SAFETY: kill(2) of the hull this test started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _hull = KillOnDrop(pid);
    let sock = jail.host_path("/run/api.sock");
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemonized hull's API socket never answered"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = pid as u32;
    // NSpid: its PID here, then 1 in its own namespace.
    assert_eq!(
        status_line(pid, "NSpid:").split(' ').next_back(),
        Some("1"),
        "{}",
        status_line(pid, "NSpid:")
    );
    assert_eq!(
        status_line(pid, "Uid:"),
        format!("{JAIL_ID} {JAIL_ID} {JAIL_ID} {JAIL_ID}")
    );
    // setsid: it leads a session of its own, away from this test's terminal.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let session = fields[3];
    // SAFETY: getsid(0) only reads this process's session.
    assert_ne!(
        session,
        unsafe { libc::getsid(0) }.to_string(),
        "still in the test's session"
    );
    let api = ApiClient::new(&sock);
    let resp = api.request("GET", "/", None).expect("GET /");
    assert!(resp.is_success() && resp.body.contains(&id), "{}", resp.body);
}
