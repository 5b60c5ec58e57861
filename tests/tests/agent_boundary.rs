//! End to end, through `hull run` (qemu backend): the isolation boundary between a container and the agent.
//!
//! - From inside a container, as root and as uid 1000, `tests/programs/vsock_attack.c` tries the agent's
//!   ports (1024 ttrpc, 1025 stdio) and another port on CID 1 (loopback), on the guest's own CID and on the
//!   host's CID 2. By default the socket call itself fails (EAFNOSUPPORT, the vsock guard on the
//!   container's cgroup) and so does an io_uring IORING_OP_SOCKET request for AF_VSOCK, while no seccomp
//!   filter shows in `/proc/self/status`; a container with CAP_SYS_ADMIN, which could detach the guard, also
//!   gets the seccomp filter (io_uring_setup then fails with ENOSYS); with `--allow-vsock` the socket opens
//!   but nothing connects (the guest kernel has no vsock loopback, and the host has no listener for a guest).
//! - With a guest kernel that has vsock loopback (opt-in, `HULL_LOOPBACK_KERNEL`), a container that
//!   reaches the agent's ports is refused by the agent's peer check: PERMISSION_DENIED, or the stdio
//!   connection closed.
//! - The agent policy: hull run's default refuses ExecProcess (and the other calls hull run does not make)
//!   with PERMISSION_DENIED, and says so on the guest console naming the call and the container; with
//!   `--agent-policy all,-ExecProcess,-AddEntropy` exec and AddEntropy are refused while the rest is served,
//!   and ReadFile of a file not registered for copy-back is refused.
//! - AddEntropy, a host-only call served where SyncClock is (hull run's default): the runtime client's 64
//!   host random bytes reseed the guest kernel's RNG; 1 and 512 bytes are taken, 0 and 513 are
//!   INVALID_ARGUMENT.

mod run_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_agent_protocol::agent::*;
use hull_agent_protocol::agent_ttrpc::AgentClient;
use hull_agent_protocol::ttrpc::{self, context, Code};
use hull_agent_protocol::{AGENT_PORT, GUEST_CID, HOST_CID, STDIO_PORT};
use run_common::*;

/// A port nothing listens on anywhere.
const OTHER_PORT: u32 = 5000;

/// The busybox rootfs plus `/bin/vsock-attack`, in a directory of this test's own.
fn attack_rootfs(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hull-agent-boundary-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let st = Command::new("cp")
        .arg("-a")
        .arg(busybox_rootfs())
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "copying the busybox rootfs");
    let program = Path::new(env!("HULL_TEST_PROGRAMS_DIR")).join("vsock-attack");
    std::fs::copy(&program, dir.join("bin/vsock-attack")).unwrap();
    dir
}

/// Removes the directory when the test ends, passed or not.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn targets() -> Vec<(u32, u32)> {
    let mut t = Vec::new();
    for cid in [1, GUEST_CID, HOST_CID] {
        for port in [AGENT_PORT, STDIO_PORT, OTHER_PORT] {
            t.push((cid, port));
        }
    }
    t
}

/// Runs the attack program in a container (as root, then as uid 1000) and returns its lines.
fn attack(name: &str, opts: &[&str]) -> Vec<String> {
    attack_with_kernel(name, opts, None)
}

/// As [`attack`], booting `kernel` instead of the test guest's.
fn attack_with_kernel(name: &str, opts: &[&str], kernel: Option<&Path>) -> Vec<String> {
    let rootfs = attack_rootfs(name);
    let _cleanup = Cleanup(rootfs.clone());
    let mut args = vec!["/bin/vsock-attack".to_string(), "-u".into(), "1000".into()];
    args.extend(targets().iter().map(|(c, p)| format!("{c}:{p}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = hull_tests::guest_images();
    let mut cmd = Command::new(hull_tests::hull_bin());
    cmd.args(["run", "--backend", "qemu", "--rootfs"]).arg(&rootfs);
    cmd.arg("--kernel")
        .arg(kernel.unwrap_or(&g.kernel))
        .arg("--initrd")
        .arg(&g.initrd);
    cmd.args(opts).arg("--").args(&args);
    let out = HullRun::spawn(cmd, None).finish();
    assert_eq!(out.code(), 0, "stdout:\n{}\nstderr:\n{}", out.out(), out.stderr);
    let lines: Vec<String> = out.out().lines().map(str::to_string).collect();
    eprintln!("{}", out.out());
    lines
}

/// The line for one attempt; there must be exactly one.
fn line(lines: &[String], uid: u32, cid: u32, port: u32) -> &str {
    let prefix = format!("uid={uid} cid={cid} port={port} ");
    let found: Vec<&String> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
    assert_eq!(found.len(), 1, "{prefix}in {lines:#?}");
    found[0]
}

#[test]
fn containers_get_no_vsock_socket_at_all() {
    let lines = attack("default", &[]);
    for uid in [0, 1000] {
        for (cid, port) in targets() {
            assert_eq!(
                line(&lines, uid, cid, port),
                format!("uid={uid} cid={cid} port={port} socket=EAFNOSUPPORT connect=-")
            );
        }
        // The cgroup's vsock guard, not seccomp: no filter shows, io_uring works, and its socket request for
        // AF_VSOCK is refused as the system call is.
        for expected in ["seccomp=0", "io_uring=OK", "io_uring_socket=EAFNOSUPPORT"] {
            assert!(
                lines.contains(&format!("uid={uid} {expected}")),
                "uid={uid} {expected} in {lines:#?}"
            );
        }
    }
}

/// A container whose root holds CAP_SYS_ADMIN could detach its cgroup's guard, so it also gets the seccomp
/// vsock filter: still no vsock socket, by either path, for root or any other user.
#[test]
fn a_container_that_could_detach_the_guard_also_gets_the_seccomp_filter() {
    let lines = attack("sysadmin", &["--cap-add", "SYS_ADMIN"]);
    for uid in [0, 1000] {
        for (cid, port) in targets() {
            assert_eq!(
                line(&lines, uid, cid, port),
                format!("uid={uid} cid={cid} port={port} socket=EAFNOSUPPORT connect=-")
            );
        }
        for expected in ["seccomp=2", "io_uring=ENOSYS"] {
            assert!(
                lines.contains(&format!("uid={uid} {expected}")),
                "uid={uid} {expected} in {lines:#?}"
            );
        }
    }
}

#[test]
fn with_allow_vsock_the_socket_opens_but_nothing_in_the_guest_answers() {
    let lines = attack("allowed", &["--allow-vsock"]);
    for uid in [0, 1000] {
        for (cid, port) in targets() {
            let l = line(&lines, uid, cid, port);
            assert!(l.contains(" socket=OK "), "{l}");
            assert!(
                !l.ends_with("connect=OK"),
                "a container reached vsock {cid}:{port}: {l}"
            );
        }
        for expected in ["seccomp=0", "io_uring=OK", "io_uring_socket=OK"] {
            assert!(
                lines.contains(&format!("uid={uid} {expected}")),
                "uid={uid} {expected} in {lines:#?}"
            );
        }
    }
}

/// The peer check, end to end: only a guest kernel with vsock loopback lets a container connect to the
/// agent at all, so this needs one, named by `HULL_LOOPBACK_KERNEL` (build one with `# CONFIG_VSOCKETS_LOOPBACK
/// is not set` removed from the fragment). The connections then succeed, and the agent refuses them: a
/// ttrpc Version call gets PERMISSION_DENIED (7), a stdio handshake gets its connection closed.
#[test]
fn the_agent_refuses_a_container_that_reaches_it_over_loopback() {
    let Some(kernel) = std::env::var_os("HULL_LOOPBACK_KERNEL") else {
        eprintln!("SKIPPED: set HULL_LOOPBACK_KERNEL to a guest kernel with CONFIG_VSOCKETS_LOOPBACK=y");
        return;
    };
    let lines = attack_with_kernel("loopback", &["--allow-vsock"], Some(Path::new(&kernel)));
    let mut reached = 0;
    for uid in [0, 1000] {
        for cid in [1, GUEST_CID] {
            let l = line(&lines, uid, cid, AGENT_PORT);
            if l.contains("connect=OK") {
                reached += 1;
                assert!(l.ends_with("answer=rpc-7"), "the agent served a container: {l}");
            }
            let l = line(&lines, uid, cid, STDIO_PORT);
            if l.contains("connect=OK") {
                reached += 1;
                let answer = l.rsplit("answer=").next().unwrap();
                assert!(
                    ["closed", "write-EPIPE", "write-ECONNRESET", "ECONNRESET"].contains(&answer),
                    "{l}"
                );
            }
        }
    }
    assert!(reached > 0, "HULL_LOOPBACK_KERNEL has no vsock loopback: {lines:#?}");
}

fn vsock_of(pid: u32) -> PathBuf {
    let dirs = leftover_dirs(pid);
    assert_eq!(dirs.len(), 1, "run directories of {pid}: {dirs:?}");
    dirs[0].clone()
}

fn client(uds: &Path) -> AgentClient {
    hull_agent_protocol::client::connect(uds, Duration::from_secs(30)).unwrap()
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

fn code_of<T: std::fmt::Debug>(r: Result<T, ttrpc::Error>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

fn exec_request() -> ExecProcessRequest {
    let process = serde_json::json!({
        "args": ["sh", "-c", "echo should-not-run"], "env": ["PATH=/bin"], "cwd": "/", "user": { "uid": 0, "gid": 0 }
    });
    let mut req = ExecProcessRequest::new();
    req.container_id = "run".into();
    req.exec_id = "e1".into();
    req.oci_process_json = process.to_string().into_bytes();
    req
}

/// Waits until the guest console (in the run directory) holds `needle`.
fn console_shows(dir: &Path, needle: &str) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {needle:?} on the guest console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn hull_runs_default_policy_refuses_exec_and_what_hull_run_does_not_call() {
    // --init: the test ends the container with SIGTERM, which a PID-1 sleep would not get.
    let mut run = HullRun::spawn(command(&["--init"], &["sh", "-c", "echo ready; exec sleep 600"]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    let dir = vsock_of(run.pid());
    let agent = client(&dir.join("vsock.sock"));
    assert!(agent.version(ctx(), &VersionRequest::new()).is_ok());
    assert_eq!(
        code_of(agent.exec_process(ctx(), &exec_request())),
        Code::PERMISSION_DENIED
    );
    let mut c = ContainerRequest::new();
    c.container_id = "run".into();
    assert_eq!(code_of(agent.list_processes(ctx(), &c)), Code::PERMISSION_DENIED);
    assert_eq!(code_of(agent.pause_container(ctx(), &c)), Code::PERMISSION_DENIED);
    let mut u = UpdateResourcesRequest::new();
    u.container_id = "run".into();
    u.oci_resources_json = br#"{"pids":{"limit":1}}"#.to_vec();
    assert_eq!(code_of(agent.update_resources(ctx(), &u)), Code::PERMISSION_DENIED);
    console_shows(
        &dir,
        "refused ExecProcess (container run): the agent policy does not serve it",
    );
    // The container was left alone: it still runs and ends as asked.
    run.signal(libc::SIGTERM);
    let out = run.finish();
    assert_eq!(out.code(), 143, "{}", out.stderr);
}

fn add_entropy(agent: &AgentClient, len: usize) -> Result<Empty, ttrpc::Error> {
    let mut r = AddEntropyRequest::new();
    r.data = vec![0x5a; len];
    agent.add_entropy(ctx(), &r)
}

/// Under hull run's default policy the real agent takes host bytes into its kernel's RNG, first from the
/// runtime's own client: an answer of OK means the guest kernel accepted both RNDADDENTROPY and RNDRESEEDCRNG
/// on /dev/random (a wrong ioctl number, struct or privilege comes back as an error). Sizes outside 1 to
/// 512 bytes are INVALID_ARGUMENT, and the agent goes on serving. A policy without it: the next test.
#[test]
fn add_entropy_reseeds_the_guest_rng_with_1_to_512_host_bytes() {
    let mut run = HullRun::spawn(command(&["--init"], &["sh", "-c", "echo ready; exec sleep 600"]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    let dir = vsock_of(run.pid());
    let uds = dir.join("vsock.sock");
    let host = hull_runtime::agent::Agent::connect(&uds, Duration::from_secs(30)).unwrap();
    host.add_entropy().unwrap();
    let agent = client(&uds);
    for len in [1, 512] {
        add_entropy(&agent, len).unwrap_or_else(|e| panic!("{len} bytes: {e:?}"));
    }
    for len in [0, 513] {
        assert_eq!(code_of(add_entropy(&agent, len)), Code::INVALID_ARGUMENT, "{len} bytes");
    }
    console_shows(&dir, "AddEntropy: 513 bytes given, at most 512 are taken");
    assert!(host.version().is_ok());
    run.signal(libc::SIGTERM);
    assert_eq!(run.finish().code(), 143);
}

#[test]
fn a_policy_without_exec_refuses_exec_and_unregistered_files() {
    let mut run = HullRun::spawn(
        command(
            &["--init", "--agent-policy", "all,-ExecProcess,-AddEntropy"],
            &["sh", "-c", "echo ready; exec sleep 600"],
        ),
        None,
    );
    run.wait_stdout("ready", RUN_TIMEOUT);
    let dir = vsock_of(run.pid());
    let agent = client(&dir.join("vsock.sock"));
    assert_eq!(
        code_of(agent.exec_process(ctx(), &exec_request())),
        Code::PERMISSION_DENIED
    );
    // AddEntropy is refused before its request is looked at: 64 bytes as 0 bytes.
    assert_eq!(code_of(add_entropy(&agent, 64)), Code::PERMISSION_DENIED);
    assert_eq!(code_of(add_entropy(&agent, 0)), Code::PERMISSION_DENIED);
    // Served: the policy refuses ExecProcess and AddEntropy only.
    let mut c = ContainerRequest::new();
    c.container_id = "run".into();
    // `echo ready` comes just before the shell execs sleep: give the exec a moment to happen.
    let deadline = Instant::now() + Duration::from_secs(10);
    let ps = loop {
        let ps = agent.list_processes(ctx(), &c).unwrap();
        if ps.processes.iter().any(|p| p.command.contains("sleep")) || Instant::now() > deadline {
            break ps;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(ps.processes.iter().any(|p| p.command.contains("sleep")), "{ps:?}");
    assert!(
        !ps.processes.iter().any(|p| p.command.contains("should-not-run")),
        "{ps:?}"
    );
    // ReadFile is served, but only for files registered for copy-back: hull run registers none.
    let mut r = ReadFileRequest::new();
    r.container_id = "run".into();
    r.name = "f0".into();
    assert_eq!(code_of(agent.read_file(ctx(), &r)), Code::PERMISSION_DENIED);
    console_shows(&dir, "refused ExecProcess (container run)");
    console_shows(&dir, "refused AddEntropy: the agent policy does not serve it");
    console_shows(
        &dir,
        "refused ReadFile (container run): \"f0\" is not registered for copy-back",
    );
    run.signal(libc::SIGTERM);
    assert_eq!(run.finish().code(), 143);
}
