//! The policy's own checks, and tries of what it forbids: each try runs in a forked child that installs a
//! filter and makes one call, so the test runner survives the SIGSYS.

use super::policy::{self, Table, VhostUserDevice};
use super::*;

fn all_kinds() -> Vec<ThreadKind> {
    vec![
        ThreadKind::Api,
        ThreadKind::ApiRunning,
        ThreadKind::EventLoop,
        ThreadKind::Vcpu,
        ThreadKind::VhostUser(VhostUserDevice::Blk),
        ThreadKind::VhostUser(VhostUserDevice::Vsock),
        ThreadKind::VhostUser(VhostUserDevice::Net),
        ThreadKind::VhostUser(VhostUserDevice::Rng),
    ]
}

#[test]
fn every_table_compiles() {
    for kind in all_kinds() {
        let table = kind.table();
        let program = compile(&table, kind.category()).unwrap();
        assert!(!program.is_empty());
        eprintln!("{:>16}: {} system calls", kind.category(), table.len());
    }
}

/// The programs the build script compiled into the binary are exactly what the tables compile to now.
#[test]
fn built_in_programs_are_the_tables_compiled() {
    for kind in all_kinds() {
        let program = compile(&kind.table(), kind.category()).unwrap();
        assert_eq!(builtin(kind), program.as_slice(), "{}", kind.category());
    }
}

/// The values the policy writes out (the build script compiles it without `vmm` and `devices`).
#[test]
fn written_out_constants_match_their_sources() {
    assert_eq!(policy::SOCKET_FILE_MODE, devices::stale_socket::SOCKET_FILE_MODE);
    assert_eq!(policy::UFFDIO_API, vmm::snapshot::uffd::UFFDIO_API_IOCTL);
    assert_eq!(policy::UFFDIO_REGISTER, vmm::snapshot::uffd::UFFDIO_REGISTER_IOCTL);
}

#[test]
fn system_call_names_match_their_numbers() {
    assert_eq!(super::syscall_names::name(libc::SYS_read), "read");
    assert_eq!(super::syscall_names::name(libc::SYS_execve), "execve");
    assert_eq!(super::syscall_names::name(libc::SYS_io_uring_setup), "io_uring_setup");
    assert_eq!(super::syscall_names::name(-1), "unknown");
    assert_eq!(super::syscall_names::name(100_000), "unknown");
    for kind in all_kinds() {
        for (nr, name, _) in kind.table().entries {
            assert_eq!(super::syscall_names::name(nr), name);
        }
    }
}

#[test]
fn the_kick_signal_in_the_policy_is_the_vmms() {
    assert_eq!(policy::KICK_SIGNAL as i32, vmm::vcpu::kick_signal());
}

/// Threads inherit the main thread's filter, so it must allow everything the event loop and vCPUs do.
#[test]
fn the_api_table_covers_the_threads_it_starts() {
    let api = policy::api();
    for (child, name) in [(policy::event_loop(), "vmm"), (policy::vcpu(), "vcpu")] {
        for (nr, call, rules) in &child.entries {
            let (_, _, api_rules) = api
                .entries
                .iter()
                .find(|(n, _, _)| n == nr)
                .unwrap_or_else(|| panic!("{name} allows {call}, api does not"));
            match (rules, api_rules) {
                (_, None) => {}
                (None, Some(_)) => panic!("{name} allows {call} with any arguments, api only some"),
                (Some(child_rules), Some(api_rules)) => {
                    for r in child_rules {
                        assert!(api_rules.contains(r), "{name} allows {call} with {r:?}, api does not");
                    }
                }
            }
        }
    }
}

#[test]
fn rate_limiter_timers_are_allowed_where_they_are_used() {
    // Created while the VM is built (and in each vhost-user backend), armed by the event loop when a
    // device is throttled and by the API thread when a PATCH re-arms one; never by a vCPU.
    assert!(policy::api().allows("timerfd_create"));
    assert!(!policy::api_running().allows("timerfd_create"));
    for table in [policy::event_loop(), policy::api_running()] {
        assert!(table.allows("timerfd_settime"));
    }
    assert!(!policy::vcpu().allows("timerfd_settime"));
}

#[test]
fn what_no_thread_may_do() {
    for kind in all_kinds() {
        let table: Table = kind.table();
        for call in [
            "execve",
            "execveat",
            "fork",
            "vfork",
            "ptrace",
            "process_vm_writev",
            "mount",
            "setns",
        ] {
            assert!(!table.allows(call), "{} allows {call}", kind.category());
        }
    }
    assert!(!policy::vcpu().allows("openat") && !policy::vcpu().allows("socket"));
    assert!(!policy::event_loop().allows("openat"));
    let running = policy::api_running();
    for call in [
        "clone3", "socket", "bind", "listen", "connect", "seccomp", "prctl", "eventfd2", "dup",
    ] {
        assert!(!running.allows(call), "api-running allows {call}");
    }
}

/// Runs `call` in a forked child under `kind`'s filter; returns the child's exit status and what it wrote
/// to stderr.
fn try_in_child(kind: ThreadKind, call: fn() -> i64) -> (i32, String) {
    let program = compile(&kind.table(), kind.category()).unwrap();
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child makes only system calls (sigaction, dup2, prctl, seccomp, the call tried, _exit)
    // on memory prepared before fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: see above; the child never returns into the test harness.
        unsafe {
            libc::dup2(pipe[1], libc::STDERR_FILENO);
            if sigsys::install().is_err() || seccompiler::apply_filter(&program).is_err() {
                libc::_exit(99);
            }
            let rc = call();
            libc::_exit(if rc >= 0 { 0 } else { 1 });
        }
    }
    // SAFETY: closing our copy of the write end, then waiting for our own child.
    unsafe { libc::close(pipe[1]) };
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let mut out = Vec::new();
    // SAFETY: the read end is ours; File takes it over.
    let mut reader = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(pipe[0]) };
    std::io::Read::read_to_end(&mut reader, &mut out).unwrap();
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    (libc::WEXITSTATUS(status), String::from_utf8_lossy(&out).into_owned())
}

fn execve() -> i64 {
    let path = c"/bin/true".as_ptr();
    let argv = [path, std::ptr::null()];
    // SAFETY: valid NUL-terminated path and argv; environment empty.
    unsafe { libc::syscall(libc::SYS_execve, path, argv.as_ptr(), [std::ptr::null::<i8>()].as_ptr()) }
}

fn inet_socket() -> i64 {
    // SAFETY: plain socket creation.
    unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) }
}

fn unix_socket() -> i64 {
    // SAFETY: plain socket creation.
    unsafe { libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_STREAM, 0) }
}

fn exec_mapping() -> i64 {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    // SAFETY: a fresh anonymous mapping that nothing uses.
    unsafe { libc::syscall(libc::SYS_mmap, 0, 4096, libc::PROT_READ | libc::PROT_EXEC, flags, -1, 0) }
}

fn kvm_create_vm_on_stdin() -> i64 {
    // SAFETY: an ioctl on stdin fails with ENOTTY if the filter lets it through.
    unsafe { libc::syscall(libc::SYS_ioctl, 0, policy::KVM_CREATE_VM, 0) }
}

fn kvm_run_on_stdin() -> i64 {
    // SAFETY: as above; allowed for vCPUs, so it fails with an errno instead of trapping.
    let rc = unsafe { libc::syscall(libc::SYS_ioctl, 0, policy::KVM_RUN, 0) };
    if rc < 0 {
        0
    } else {
        rc
    }
}

#[test]
fn a_vcpu_thread_that_calls_execve_or_opens_an_inet_socket_is_stopped_and_named() {
    for (call, nr, name) in [
        (execve as fn() -> i64, libc::SYS_execve, "execve"),
        (inet_socket, libc::SYS_socket, "socket"),
    ] {
        let (status, stderr) = try_in_child(ThreadKind::Vcpu, call);
        assert_eq!(status, EXIT_BAD_SYSCALL, "{stderr}");
        assert!(
            stderr.contains(&format!("made the forbidden system call {nr} ({name}); exiting")),
            "{stderr}"
        );
    }
}

#[test]
fn argument_rules_decide() {
    // AF_UNIX sockets are the event loop's (vsock), AF_INET ones nobody's.
    assert_eq!(try_in_child(ThreadKind::EventLoop, unix_socket).0, 0);
    assert_eq!(try_in_child(ThreadKind::EventLoop, inet_socket).0, EXIT_BAD_SYSCALL);
    // No executable mappings, even for the main thread.
    assert_eq!(try_in_child(ThreadKind::Api, exec_mapping).0, EXIT_BAD_SYSCALL);
    // A vCPU may KVM_RUN but not create a VM.
    assert_eq!(try_in_child(ThreadKind::Vcpu, kvm_run_on_stdin).0, 0);
    assert_eq!(
        try_in_child(ThreadKind::Vcpu, kvm_create_vm_on_stdin).0,
        EXIT_BAD_SYSCALL
    );
    assert_eq!(try_in_child(ThreadKind::Api, execve).0, EXIT_BAD_SYSCALL);
    assert_eq!(
        try_in_child(ThreadKind::VhostUser(VhostUserDevice::Blk), inet_socket).0,
        EXIT_BAD_SYSCALL
    );
}
