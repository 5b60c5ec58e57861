//! End to end: `hull run` through the qemu backend runs a busybox container inside the guest kernel, with
//! the exit status, stdio, environment, user, pid namespace, read-only paths and cgroup limits the spec
//! asks for.

mod run_common;

use run_common::*;

#[test]
fn runs_inside_the_guest_kernel() {
    let out = run(&[], &["uname", "-r"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let release = out.out().trim().to_string();
    assert!(
        release.starts_with("6.1.") && release.ends_with("-hull"),
        "guest release {release:?}\n{}",
        out.stderr
    );
    assert_ne!(release, host_release());
    assert!(
        out.stderr.contains("backend qemu"),
        "hull run must say which backend it chose: {}",
        out.stderr
    );
}

#[test]
fn exit_statuses_and_signals() {
    assert_eq!(run(&[], &["true"]).code(), 0);
    let out = run(&[], &["sh", "-c", "exit 3"]);
    assert_eq!(out.code(), 3, "{}", out.stderr);
    // The program is PID 1 of its namespace, which the kernel guards against its own SIGKILL (as under
    // runc); under an init it is not, and dies of it.
    let out = run(&[], &["sh", "-c", "kill -9 $$; echo survived"]);
    assert_eq!((out.code(), out.out().as_str()), (0, "survived\n"), "{}", out.stderr);
    let out = run(&["--init"], &["sh", "-c", "kill -9 $$; echo survived"]);
    assert_eq!(out.code(), 137, "{}", out.stderr);
    let out = run(&[], &["/no/such/program"]);
    assert_eq!(out.code(), 127, "{}", out.stderr);
    assert!(out.stderr.contains("/no/such/program"), "{}", out.stderr);
}

#[test]
fn stdin_comes_back_byte_exact() {
    let data: Vec<u8> = {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let out = HullRun::spawn(command(&[], &["cat"]), Some(data.clone())).finish();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout.len(), data.len(), "{}", out.stderr);
    assert!(out.stdout == data, "the bytes differ");
    // stdout and stderr stay apart.
    let out = run(&[], &["sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(out.out(), "out\n");
    assert!(out.stderr.contains("err\n"), "{}", out.stderr);
}

#[test]
fn env_cwd_and_user_are_honoured() {
    let out = run(
        &["-e", "GREETING=hello world", "-w", "/tmp", "-u", "1000:1000"],
        &[
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; id -u; id -g; touch /tmp/f && stat -c %u:%g /tmp/f",
        ],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(
        out.out(),
        "hello world\n/tmp\n1000\n1000\n1000:1000\n",
        "{}",
        out.stderr
    );
    // Root keeps the default capabilities; an unprivileged user has none effective.
    let out = run(&["-u", "1000"], &["sh", "-c", "grep CapEff /proc/self/status"]);
    assert!(out.out().contains("0000000000000000"), "{}", out.out());
    let out = run(
        &[],
        &["sh", "-c", "grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/self/status"],
    );
    // Docker's default set: chown, dac_override, fowner, fsetid, kill, setgid, setuid, setpcap,
    // net_bind_service, net_raw, sys_chroot, mknod, audit_write, setfcap = 0xa80425fb.
    assert!(out.out().contains("CapEff:\t00000000a80425fb"), "{}", out.out());
    assert!(out.out().contains("CapBnd:\t00000000a80425fb"), "{}", out.out());
    assert!(out.out().contains("NoNewPrivs:\t1"), "{}", out.out());
}

#[test]
fn only_its_own_processes_and_read_only_paths() {
    let out = run(&[], &["sh", "-c", "ps -o pid,comm | tail -n +2 | wc -l; hostname"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let lines: Vec<&str> = out
        .stdout
        .split(|b| *b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap_or("").trim())
        .collect();
    // sh, ps, tail, wc: nothing of the guest's (the agent, kernel threads).
    let count: usize = lines[0].parse().unwrap();
    assert!(count <= 4, "the container sees {count} processes:\n{}", out.out());
    assert_eq!(lines[1], "hull");
    let out = run(&[], &["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"]);
    assert_ne!(out.code(), 0);
    assert!(out.stderr.contains("Read-only file system"), "{}", out.stderr);
    // The rootfs itself is writable (tmpfs overlay), and masked paths are empty.
    let out = run(
        &[],
        &[
            "sh",
            "-c",
            "echo x > /etc/new && cat /etc/new && wc -c < /proc/timer_list && ls /sys/firmware | wc -l",
        ],
    );
    assert_eq!(out.out(), "x\n0\n0\n", "{}", out.stderr);
}

#[test]
fn pids_limit_stops_a_fork_bomb_and_the_vm_stays_healthy() {
    // The bomb runs in the background while the shell spins on builtins (a fork would fail while the bomb
    // holds every pid), then the shell kills everything it can, with builtins only, until the cgroup counts
    // (almost) only itself (a bomb process forked between two kills survives one round), and reports from
    // the cgroup.
    let script = "(b() { b | b & }; b) 2>/dev/null & \
                  i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
                  n=99; r=0; while [ $n -gt 2 ] && [ $r -lt 100000 ]; do \
                  r=$((r+1)); kill -9 -1 2>/dev/null; read n < /sys/fs/cgroup/pids.current; done; wait; echo rounds=$r; \
                  echo max=$(cat /sys/fs/cgroup/pids.max); grep max /sys/fs/cgroup/pids.events; echo alive";
    let out = run(&["--pids-limit", "32"], &["sh", "-c", script]);
    assert_eq!(out.code(), 0, "{}\n{}", out.out(), out.stderr);
    let text = out.out();
    assert!(text.contains("max=32"), "{text}\n{}", out.stderr);
    let hits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(hits > 0, "the pids limit was never reached:\n{text}");
    assert!(text.contains("alive"), "{text}");
    // The guest stayed healthy: after the bomb the shell forks again (`cat`), and the agent answered Wait,
    // Remove and Shutdown (exit status 0 above).
}

#[test]
fn the_device_cgroup_keeps_the_container_off_the_vms_disks() {
    // Root in the container may make a node for the VM's first disk (mknod is allowed, as under runc), but
    // the device cgroup's filter refuses to open it: no raw reads of the images of the VM's disks.
    let script = "d=$(cat /sys/block/vda/dev); mknod /tmp/disk b ${d%:*} ${d#*:} && echo made; \
                  head -c 512 /tmp/disk | wc -c; head -c 16 /dev/zero | wc -c";
    let out = run(&[], &["sh", "-c", script]);
    assert_eq!(out.out(), "made\n0\n16\n", "{}", out.stderr);
    assert!(out.stderr.contains("Operation not permitted"), "{}", out.stderr);
}

#[test]
fn the_writable_layer_is_on_the_scratch_disk_not_in_ram() {
    // 160 MB is more than a tmpfs in this guest's RAM may hold (half of about 240 MiB); the overlay's upper
    // layer is on the scratch disk, sized by --scratch-size.
    let script = "df -m / | tail -1; head -c 160000000 /dev/zero > /big && wc -c < /big; rm /big; echo done";
    let out = run(&["--scratch-size", "2048"], &["sh", "-c", script]);
    assert_eq!(out.code(), 0, "{}\n{}", out.out(), out.stderr);
    let text = out.out();
    let size_mib: u64 = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        (1900..=2048).contains(&size_mib),
        "/ is not the 2 GiB scratch disk:\n{text}"
    );
    assert!(text.contains("160000000\ndone"), "{text}\n{}", out.stderr);
    // Without a scratch disk the layer is a tmpfs in the guest's RAM, and the same write does not fit.
    let out = run(&["--scratch-size", "0"], &["sh", "-c", script]);
    assert!(
        !out.out().contains("160000000") && out.stderr.contains("head:"),
        "{}\n{}",
        out.out(),
        out.stderr
    );
}

#[test]
fn memory_limit_oom_kill_is_reported() {
    let out = run(
        &["--memory-limit", "24"],
        &[
            "sh",
            "-c",
            "exec dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived",
        ],
    );
    assert_eq!(out.code(), 137, "{}\n{}", out.out(), out.stderr);
    assert!(!out.out().contains("survived"));
    assert!(out.stderr.contains("OOM"), "{}", out.stderr);
}

#[test]
fn tty_mode_gives_a_terminal() {
    let out = run(&["-t"], &["sh", "-c", "tty; stty size"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let text = out.out();
    assert!(
        text.lines().next().unwrap_or("").trim().starts_with("/dev/pts/"),
        "{text:?}"
    );
    // No terminal on the test's side: hull gives the container 24x80.
    assert_eq!(text.lines().nth(1).map(str::trim), Some("24 80"), "{text:?}");
}

#[test]
fn clock_rlimits_and_hostname() {
    let out = run(&[], &["sh", "-c", "date +%s; ulimit -n; hostname"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let text = out.out();
    let mut lines = text.lines();
    let guest_now: u64 = lines.next().unwrap().trim().parse().unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // No RTC, no kvmclock under TCG: the agent's clock comes from the host.
    assert!(
        host_now.abs_diff(guest_now) < 30,
        "guest {guest_now} vs host {host_now}"
    );
    assert_eq!(lines.next(), Some("1048576"));
    assert_eq!(lines.next(), Some("hull"));
}

#[test]
fn volumes_from_a_directory_and_an_image() {
    let dir = hull_tests::TempDir::new("run-volumes").unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("greeting"), "hello-volume\n").unwrap();
    let img = dir.path().join("disk.ext4");
    std::fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    let ro = format!("{}:/data:ro", src.display());
    let rw = format!("{}:/scratch", img.display());
    let out = run(
        &["-v", &ro, "-v", &rw],
        &[
            "sh",
            "-c",
            "cat /data/greeting; touch /data/x 2>/dev/null || echo data-ro; echo kept > /scratch/f; sync",
        ],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.out(), "hello-volume\ndata-ro\n", "{}", out.stderr);
    // The image volume is the host file itself: the write is there after the VM is gone.
    let dump = std::process::Command::new("debugfs")
        .args(["-R", "cat /f"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&dump.stdout), "kept\n");
}

#[test]
fn large_output_arrives_complete_and_in_order() {
    // 8 MiB of numbered lines: any lost, doubled or reordered byte breaks the sequence.
    let out = run(&[], &["sh", "-c", "seq 1 1000000; echo end >&2"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let text = out.out();
    let mut expected = 1u64;
    for line in text.lines() {
        assert_eq!(line.parse::<u64>().ok(), Some(expected), "line {expected} is {line:?}");
        expected += 1;
    }
    assert_eq!(expected, 1_000_001);
    assert!(out.stderr.ends_with("end\n"), "{}", out.stderr);
}

#[test]
fn seccomp_profile_denies_what_it_lists() {
    let dir = hull_tests::TempDir::new("run-seccomp").unwrap();
    let profile = dir.path().join("seccomp.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
            {"names":["socket"],"action":"SCMP_ACT_ERRNO","errnoRet":97,
             "args":[{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]},
            {"names":["a_syscall_nobody_has"],"action":"SCMP_ACT_KILL"}]}"#,
    )
    .unwrap();
    let opt = profile.to_string_lossy().to_string();
    let out = run(
        &["--seccomp", &opt],
        &[
            "sh",
            "-c",
            "mkdir /tmp/d || echo mkdir-denied; touch /tmp/f && echo touch-ok; ping -c 1 127.0.0.1 2>&1 | tail -1",
        ],
    );
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let text = out.out();
    assert!(
        text.contains("mkdir-denied") && text.contains("touch-ok"),
        "{text}\n{}",
        out.stderr
    );
    assert!(text.contains("Address family not supported"), "{text}");
    assert!(out.stderr.contains("Operation not permitted"), "{}", out.stderr);
    // A profile the agent cannot apply is refused, not ignored.
    std::fs::write(&profile, r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap();
    let out = run(&["--seccomp", &opt], &["true"]);
    assert_eq!(out.code(), 125, "{}", out.stderr);
    assert!(out.stderr.contains("SCMP_ACT_NOTIFY"), "{}", out.stderr);
}

#[test]
fn rootfs_from_an_image_file_and_more_cpus_and_memory() {
    let dir = hull_tests::TempDir::new("run-image").unwrap();
    let img = dir.path().join("rootfs.ext4");
    std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
    let st = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(busybox_rootfs())
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    let g = hull_tests::guest_images();
    let mut cmd = std::process::Command::new(hull_tests::hull_bin());
    cmd.args(["run", "--backend", "qemu", "--cpus", "2", "--mem", "384", "--rootfs"])
        .arg(&img);
    cmd.arg("--kernel").arg(&g.kernel).arg("--initrd").arg(&g.initrd);
    cmd.args([
        "--",
        "sh",
        "-c",
        "nproc; grep MemTotal /proc/meminfo; echo changed > /etc/passwd && echo written",
    ]);
    let out = HullRun::spawn(cmd, None).finish();
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let text = out.out();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("2"));
    let kib: u64 = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((300_000..400_000).contains(&kib), "MemTotal {kib} kB");
    assert_eq!(lines.next(), Some("written"));
    // The image is served read-only; writes went to the tmpfs overlay.
    let dump = std::process::Command::new("debugfs")
        .args(["-R", "cat /etc/passwd"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&dump.stdout).starts_with("root:"),
        "the image was modified"
    );
}

#[test]
fn mount_destinations_follow_symlinks_inside_the_rootfs_only() {
    let dir = hull_tests::TempDir::new("run-symlinks").unwrap();
    let root = dir.path().join("rootfs");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(busybox_rootfs())
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    // An absolute symlink in the image must resolve inside the container, never on the guest's root.
    std::os::unix::fs::symlink("/run", root.join("varrun")).unwrap();
    let vol = dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("f"), "inside\n").unwrap();
    let v = format!("{}:/varrun/data:ro", vol.display());
    let out = run_on_rootfs(&root, &["-v", &v], &["sh", "-c", "cat /run/data/f"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.out(), "inside\n");
}

fn run_on_rootfs(rootfs: &std::path::Path, opts: &[&str], cmd: &[&str]) -> RunOutput {
    let g = hull_tests::guest_images();
    let mut c = std::process::Command::new(hull_tests::hull_bin());
    c.args(["run", "--backend", "qemu", "--rootfs"]).arg(rootfs);
    c.arg("--kernel").arg(&g.kernel).arg("--initrd").arg(&g.initrd);
    c.args(opts).arg("--").args(cmd);
    HullRun::spawn(c, None).finish()
}
