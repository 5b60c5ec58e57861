//! Each VM's jailed processes run as a uid of their own (`runtime/src/jail_uid.rs`): two `hull run`s at
//! once get different uids, and a process with one VM's uid (what a guest that broke out of its VMM, QEMU
//! or device backend would be) can neither signal the other VM's processes nor enter its jail. Each
//! backend also carries its VM's id (`--vm-id`), which its security events name.

mod run_common;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use run_common::*;

const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// `pid` and its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// The real uid of `pid`, if it still runs.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The chroots of the jails `hull run` `run_pid` made (`/srv/jailer/<exec>/hull-run-<pid>-<tag>-<role>/root`,
/// `<exec>` being `hull-vmm` for the VMM when it runs that binary, else `hull`).
fn jail_roots(run_pid: u32) -> Vec<CString> {
    let prefix = format!("hull-run-{run_pid}-");
    ["/srv/jailer/hull", "/srv/jailer/hull-vmm"]
        .into_iter()
        .flat_map(std::fs::read_dir)
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| CString::new(e.path().join("root").as_os_str().as_bytes()).unwrap())
        .collect()
}

/// As `uid` (and gid 64000, no supplementary groups), in a forked child: kill(pid, 0) on each of `pids`
/// and open(O_PATH is not enough: O_RDONLY|O_DIRECTORY) on each of `dirs`; each attempt's errno (0: it
/// worked).
fn attempts_as(uid: u32, pids: &[u32], dirs: &[CString]) -> Vec<i32> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only makes system calls on memory prepared before the fork, and ends with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::close(fds[0]);
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(64000) != 0 || libc::setuid(uid) != 0 {
                libc::_exit(100);
            }
            let errno = || *libc::__errno_location();
            for p in pids {
                let e: i32 = if libc::kill(*p as i32, 0) == 0 { 0 } else { errno() };
                libc::write(fds[1], (&e as *const i32).cast(), 4);
            }
            for d in dirs {
                let fd = libc::open(d.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
                let e: i32 = if fd >= 0 { 0 } else { errno() };
                libc::write(fds[1], (&e as *const i32).cast(), 4);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: our copy of the write end; reading into a buffer we own; reaping our child.
    unsafe { libc::close(fds[1]) };
    let mut out = Vec::new();
    let mut buf = [0u8; 4];
    // SAFETY: reading 4 bytes into `buf`.
    while unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), 4) } == 4 {
        out.push(i32::from_ne_bytes(buf));
    }
    let mut status = 0;
    // SAFETY: our descriptor and our child.
    unsafe {
        libc::close(fds[0]);
        libc::waitpid(pid, &mut status, 0);
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the probe failed: {status:#x}"
    );
    out
}

#[test]
fn two_vms_run_as_different_uids_and_cannot_reach_each_other() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        hull_tests::skip(
            "two_vms_run_as_different_uids_and_cannot_reach_each_other",
            "jails need root",
        );
        return;
    }
    let script = ["sh", "-c", "echo ready; exec sleep 600"];
    let mut runs: Vec<HullRun> = (0..2)
        .map(|_| HullRun::spawn(command_on("auto", &["--init"], &script), None))
        .collect();
    for r in &mut runs {
        r.wait_stdout("ready", READY_TIMEOUT);
    }
    // Each VM's processes (QEMU and its device backends here; the VMM on hardware KVM) that are not root.
    let vms: Vec<(Vec<u32>, BTreeSet<u32>)> = runs
        .iter()
        .map(|r| {
            let pids: Vec<u32> = process_tree(r.pid())
                .into_iter()
                .filter(|p| uid_of(*p).is_some_and(|u| u != 0))
                .collect();
            let uids = pids.iter().filter_map(|p| uid_of(*p)).collect();
            (pids, uids)
        })
        .collect();
    for (pids, uids) in &vms {
        assert!(
            pids.len() >= 2,
            "a VM runs QEMU and device backends unprivileged: {pids:?}"
        );
        assert_eq!(uids.len(), 1, "one uid for all of a VM's processes: {uids:?}");
        let uid = *uids.iter().next().unwrap();
        assert!((64000..65000).contains(&uid), "the uid {uid} is from the default range");
    }
    // Each device backend is told which VM it serves, so its security events name it (`vm_id`).
    for (run, (pids, _)) in runs.iter().zip(&vms) {
        let backends: Vec<Vec<String>> = pids
            .iter()
            .filter_map(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
            .map(|c| {
                c.split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .filter(|args: &Vec<String>| args.iter().any(|a| a == "vhost-user"))
            .collect();
        assert!(!backends.is_empty(), "no hull vhost-user among {pids:?}");
        let prefix = format!("hull-run-{}-", run.pid());
        for args in backends {
            let vm_id = args.iter().skip_while(|a| *a != "--vm-id").nth(1);
            assert!(vm_id.is_some_and(|v| v.starts_with(&prefix)), "{args:?}");
        }
    }
    let (a_pids, a_uids) = &vms[0];
    let (b_pids, b_uids) = &vms[1];
    assert!(a_uids.is_disjoint(b_uids), "two VMs share a uid: {a_uids:?} {b_uids:?}");
    let (a_uid, b_uid) = (*a_uids.iter().next().unwrap(), *b_uids.iter().next().unwrap());
    let (a_jails, b_jails) = (jail_roots(runs[0].pid()), jail_roots(runs[1].pid()));
    assert!(
        !a_jails.is_empty() && !b_jails.is_empty(),
        "the device backends are jailed"
    );

    // The probe works: as A's uid, A's own processes and jails are reachable.
    assert!(
        attempts_as(a_uid, a_pids, &a_jails).iter().all(|e| *e == 0),
        "A reaches its own"
    );
    // As A's uid, nothing of B's; and the other way round.
    for (uid, pids, jails) in [(a_uid, b_pids, &b_jails), (b_uid, a_pids, &a_jails)] {
        let errnos = attempts_as(uid, pids, jails);
        let (signals, opens) = errnos.split_at(pids.len());
        assert!(
            signals.iter().all(|e| *e == libc::EPERM),
            "uid {uid} signals the other VM: {signals:?}"
        );
        assert!(
            opens.iter().all(|e| *e == libc::EACCES),
            "uid {uid} enters the other jail: {opens:?}"
        );
    }
    for r in runs {
        r.signal(libc::SIGTERM);
        let out = r.finish();
        assert_eq!(out.code(), 143, "{}", out.stderr);
    }
}
