//! End to end: a second client of a running `hull run` container's agent (through the same hybrid vsock
//! socket) execs a process in the running container, reads its stdio, waits for it, lists processes, reads
//! cgroup stats, pauses and resumes; and signals reach the container (hull forwards SIGTERM; the agent's
//! SignalProcess kills with SIGKILL → 137). These VMs boot with `--agent-policy all`: hull run's own default
//! serves only the calls hull run makes, not a second client's exec, stats or updates.

mod run_common;

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hull_agent_protocol::agent::*;
use hull_agent_protocol::agent_ttrpc::AgentClient;
use hull_agent_protocol::stdio::{StdioRequest, Stream};
use hull_agent_protocol::ttrpc::{self, context};
use hull_agent_protocol::{hybrid, STDIO_PORT};
use run_common::*;

/// Every agent call served, for this file's second client.
const ALL_CALLS: &[&str] = &["--agent-policy", "all"];

/// The hybrid vsock socket of `hull run` process `pid`.
fn vsock_of(pid: u32) -> PathBuf {
    let dirs = leftover_dirs(pid);
    assert_eq!(dirs.len(), 1, "run directories of {pid}: {dirs:?}");
    dirs[0].join("vsock.sock")
}

fn client(uds: &std::path::Path) -> AgentClient {
    hull_agent_protocol::client::connect(uds, Duration::from_secs(30)).unwrap()
}

fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

fn stream(uds: &std::path::Path, exec: &str, which: Stream) -> std::os::unix::net::UnixStream {
    let mut s = hybrid::connect(uds, STDIO_PORT).unwrap();
    let req = StdioRequest {
        container_id: "run".into(),
        exec_id: exec.into(),
        stream: which,
    };
    hull_agent_protocol::stdio::open(&mut s, &req).unwrap();
    s
}

#[test]
fn exec_a_second_process_and_use_the_other_calls() {
    let mut run = HullRun::spawn(command(ALL_CALLS, &["sh", "-c", "echo ready; exec sleep 600"]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    let uds = vsock_of(run.pid());
    let agent = client(&uds);

    let version = agent.version(ctx(), &VersionRequest::new()).unwrap();
    assert!(version.kernel_release.ends_with("-hull"), "{version:?}");

    // 'ready' comes just before the container's sh execs sleep: wait (up to 10 s) until ps shows it.
    let process = serde_json::json!({
        "args": ["sh", "-c", "echo in-exec $(hostname); i=0; until ps -o comm | grep -q sleep || [ $i -ge 100 ]; do i=$((i+1)); sleep 0.1; done; ps -o comm | grep -c sleep; echo oops >&2; exit 5"],
        "env": ["PATH=/bin"], "cwd": "/", "user": { "uid": 0, "gid": 0 }
    });
    let mut req = ExecProcessRequest::new();
    req.container_id = "run".into();
    req.exec_id = "e1".into();
    req.oci_process_json = process.to_string().into_bytes();
    let mut stdio = StdioConfig::new();
    stdio.stdout = true;
    stdio.stderr = true;
    req.stdio = Some(stdio).into();
    agent.exec_process(ctx(), &req).unwrap();
    let mut out = String::new();
    stream(&uds, "e1", Stream::Stdout).read_to_string(&mut out).unwrap();
    let mut err = String::new();
    stream(&uds, "e1", Stream::Stderr).read_to_string(&mut err).unwrap();
    let mut w = ProcessRequest::new();
    w.container_id = "run".into();
    w.exec_id = "e1".into();
    let status = agent.wait_process(ctx(), &w).unwrap();
    assert_eq!((status.exit_code, status.signal), (5, 0));
    // Same UTS and PID namespaces as the container's sleep.
    assert_eq!(out, "in-exec hull\n1\n");
    assert_eq!(err, "oops\n");
    // Waiting again gives the same answer.
    assert_eq!(agent.wait_process(ctx(), &w).unwrap().exit_code, 5);

    let mut c = ContainerRequest::new();
    c.container_id = "run".into();
    let procs = agent.list_processes(ctx(), &c).unwrap();
    assert!(
        procs.processes.iter().any(|p| p.command.starts_with("sleep 600")),
        "{procs:?}"
    );
    let stats = agent.stats_container(ctx(), &c).unwrap();
    // The container's one process: sleep, its PID 1.
    assert!(stats.memory.current > 0 && stats.pids.current == 1, "{stats:?}");
    agent.pause_container(ctx(), &c).unwrap();
    agent.resume_container(ctx(), &c).unwrap();
    let mut bad = ContainerRequest::new();
    bad.container_id = "../etc".into();
    assert!(agent.stats_container(ctx(), &bad).is_err());

    // SIGKILL through the agent ends the container; hull run reports 137.
    let mut s = SignalProcessRequest::new();
    s.container_id = "run".into();
    s.signal = 9;
    agent.signal_process(ctx(), &s).unwrap();
    let out = run.finish();
    assert_eq!(out.code(), 137, "{}", out.stderr);
}

#[test]
fn hull_forwards_sigterm_to_the_container() {
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 1; done";
    let mut run = HullRun::spawn(command(&[], &["sh", "-c", script]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    let start = Instant::now();
    run.signal(libc::SIGTERM);
    let out = run.finish();
    assert_eq!(out.code(), 7, "{}\n{}", out.out(), out.stderr);
    assert!(out.out().contains("got-term"), "{}", out.out());
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn the_program_is_pid_1_and_gets_only_the_signals_it_handles() {
    // As under runc: the program is PID 1 of its PID namespace; with --init (as `docker run --init`) an init
    // is, and the program is its child.
    let out = run(&[], &["sh", "-c", "echo $$"]);
    assert_eq!(out.out().trim(), "1", "{}", out.stderr);
    let out = run(
        &["--init"],
        &["sh", "-c", "echo $$; ps -o pid,args | grep -c [h]ull-init"],
    );
    assert_eq!(out.out(), "2\n1\n", "{}", out.stderr);

    // A PID-1 shell without a SIGTERM handler: the kernel drops the signal (the agent's kill comes from the
    // guest's root PID namespace), so the shell carries on and ends on its own.
    let script = "echo ready; sleep 3; echo still-here";
    let mut run = HullRun::spawn(command(&[], &["sh", "-c", script]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    run.signal(libc::SIGTERM);
    let out = run.finish();
    assert_eq!(out.code(), 0, "{}\n{}", out.out(), out.stderr);
    assert!(out.out().contains("still-here"), "{}", out.out());

    // The same program under an init: the init forwards SIGTERM to it, and it dies of it.
    let mut run = HullRun::spawn(command(&["--init"], &["sh", "-c", script]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    run.signal(libc::SIGTERM);
    let out = run.finish();
    assert_eq!(out.code(), 143, "{}\n{}", out.out(), out.stderr);
    assert!(!out.out().contains("still-here"), "{}", out.out());
}

fn exec(agent: &AgentClient, id: &str, process: serde_json::Value, stdout: bool) {
    let mut req = ExecProcessRequest::new();
    req.container_id = "run".into();
    req.exec_id = id.into();
    req.oci_process_json = process.to_string().into_bytes();
    let mut stdio = StdioConfig::new();
    stdio.stdout = stdout;
    req.stdio = Some(stdio).into();
    agent.exec_process(ctx(), &req).unwrap();
}

fn wait(agent: &AgentClient, id: &str) -> WaitProcessResponse {
    let mut w = ProcessRequest::new();
    w.container_id = "run".into();
    w.exec_id = id.into();
    agent.wait_process(ctx(), &w).unwrap()
}

#[test]
fn terminal_exec_resource_updates_and_oom_events() {
    let mut run = HullRun::spawn(
        command(
            &["--memory-limit", "32", ALL_CALLS[0], ALL_CALLS[1]],
            &["sh", "-c", "echo ready; exec sleep 600"],
        ),
        None,
    );
    run.wait_stdout("ready", RUN_TIMEOUT);
    let uds = vsock_of(run.pid());
    let agent = client(&uds);

    // A process with a terminal from the container's own devpts.
    exec(
        &agent,
        "tty",
        serde_json::json!({ "terminal": true, "args": ["sh", "-c", "tty; stty size"], "env": ["PATH=/bin"], "cwd": "/",
                            "user": { "uid": 0, "gid": 0 } }),
        false,
    );
    let mut r = ResizeTerminalRequest::new();
    r.container_id = "run".into();
    r.exec_id = "tty".into();
    r.rows = 33;
    r.columns = 99;
    let _ = agent.resize_terminal(ctx(), &r);
    let mut text = String::new();
    let _ = stream(&uds, "tty", Stream::Terminal).read_to_string(&mut text);
    assert_eq!(wait(&agent, "tty").exit_code, 0);
    assert!(text.contains("/dev/pts/"), "{text:?}");

    // New limits apply to the running container.
    let mut u = UpdateResourcesRequest::new();
    u.container_id = "run".into();
    u.oci_resources_json = br#"{"pids": {"limit": 50}}"#.to_vec();
    agent.update_resources(ctx(), &u).unwrap();
    let mut c = ContainerRequest::new();
    c.container_id = "run".into();
    assert_eq!(agent.stats_container(ctx(), &c).unwrap().pids.max, 50);

    // An exec'd memory hog is OOM-killed: the event names the container, the wait says so.
    let oom_client = client(&uds);
    let events = std::thread::spawn(move || oom_client.get_oom_event(ctx(), &GetOomEventRequest::new()));
    exec(
        &agent,
        "hog",
        serde_json::json!({ "args": ["dd", "if=/dev/zero", "of=/dev/null", "bs=80M", "count=1"],
                            "env": ["PATH=/bin"], "cwd": "/", "user": { "uid": 0, "gid": 0 } }),
        false,
    );
    let hog = wait(&agent, "hog");
    let event = events.join().unwrap().expect("GetOomEvent");
    assert_eq!(event.container_id, "run");
    assert!(agent.stats_container(ctx(), &c).unwrap().memory.oom_kill >= 1);
    if hog.signal == 9 {
        assert!(hog.oom_killed, "{hog:?}");
    }
    // The container itself lives on.
    assert!(agent
        .list_processes(ctx(), &c)
        .unwrap()
        .processes
        .iter()
        .any(|p| p.command.starts_with("sleep")));
    let mut s = SignalProcessRequest::new();
    s.container_id = "run".into();
    s.signal = 9;
    agent.signal_process(ctx(), &s).unwrap();
    assert_eq!(run.finish().code(), 137);
}

#[test]
fn the_container_seccomp_profile_covers_exec_processes_too() {
    let dir = hull_tests::TempDir::new("exec-seccomp").unwrap();
    let profile = dir.path().join("seccomp.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .unwrap();
    let opt = profile.to_string_lossy().to_string();
    let mut run = HullRun::spawn(
        command(
            &["--seccomp", &opt, ALL_CALLS[0], ALL_CALLS[1]],
            &["sh", "-c", "echo ready; exec sleep 600"],
        ),
        None,
    );
    run.wait_stdout("ready", RUN_TIMEOUT);
    let uds = vsock_of(run.pid());
    let agent = client(&uds);
    exec(
        &agent,
        "mk",
        serde_json::json!({ "args": ["sh", "-c", "mkdir /tmp/x 2>&1 || echo denied"], "env": ["PATH=/bin"], "cwd": "/",
                            "user": { "uid": 0, "gid": 0 } }),
        true,
    );
    let mut out = String::new();
    stream(&uds, "mk", Stream::Stdout).read_to_string(&mut out).unwrap();
    assert_eq!(wait(&agent, "mk").exit_code, 0);
    assert!(
        out.contains("Operation not permitted") && out.contains("denied"),
        "{out}"
    );
    let mut s = SignalProcessRequest::new();
    s.container_id = "run".into();
    s.signal = 9;
    agent.signal_process(ctx(), &s).unwrap();
    assert_eq!(run.finish().code(), 137);
}

/// The spec `hull run` would send, for a second container created directly through the protocol.
fn spec_json(args: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": args, "env": ["PATH=/bin"], "cwd": "/", "user": { "uid": 0, "gid": 0 } },
        "root": { "path": "rootfs" },
        "hostname": "second",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"] }
        ],
        "linux": { "namespaces": [ { "type": "pid" }, { "type": "mount" }, { "type": "uts" }, { "type": "ipc" } ] }
    })
    .to_string()
    .into_bytes()
}

fn create_request(id: &str, spec: Vec<u8>, device: &str) -> CreateContainerRequest {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.oci_spec_json = spec;
    let mut rootfs = Storage::new();
    rootfs.device = device.into();
    rootfs.fstype = "ext4".into();
    rootfs.read_only = true;
    rootfs.writable_overlay = true;
    req.rootfs = Some(rootfs).into();
    let mut stdio = StdioConfig::new();
    stdio.stdout = true;
    req.stdio = Some(stdio).into();
    req
}

fn code_of(e: ttrpc::Error) -> ttrpc::Code {
    match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not a status: {other:?}"),
    }
}

#[test]
fn a_second_container_in_the_same_vm_and_the_error_codes() {
    let mut run = HullRun::spawn(command(ALL_CALLS, &["sh", "-c", "echo ready; exec sleep 600"]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    let uds = vsock_of(run.pid());
    let agent = client(&uds);

    // Same read-only image, its own overlay, namespaces and cgroup.
    agent
        .create_container(
            ctx(),
            &create_request(
                "c2",
                spec_json(&["sh", "-c", "hostname; ps -o comm | wc -l"]),
                "serial:rootfs",
            ),
        )
        .unwrap();
    let mut out_stream = {
        let mut s = hybrid::connect(&uds, STDIO_PORT).unwrap();
        let req = StdioRequest {
            container_id: "c2".into(),
            exec_id: String::new(),
            stream: Stream::Stdout,
        };
        hull_agent_protocol::stdio::open(&mut s, &req).unwrap();
        s
    };
    let mut c2 = ContainerRequest::new();
    c2.container_id = "c2".into();
    agent.start_container(ctx(), &c2).unwrap();
    let mut out = String::new();
    out_stream.read_to_string(&mut out).unwrap();
    let mut w = ProcessRequest::new();
    w.container_id = "c2".into();
    assert_eq!(agent.wait_process(ctx(), &w).unwrap().exit_code, 0);
    // hostname "second"; its processes: sh, ps, wc (and the header line) — not the first container's.
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"second"), "{out}");
    assert!(
        lines
            .get(1)
            .and_then(|n| n.trim().parse::<u32>().ok())
            .is_some_and(|n| n <= 4),
        "{out}"
    );

    // Error codes a shim can act on.
    let again = agent.start_container(ctx(), &c2).unwrap_err();
    assert_eq!(code_of(again), ttrpc::Code::FAILED_PRECONDITION);
    let dup = agent
        .create_container(ctx(), &create_request("run", spec_json(&["true"]), "serial:rootfs"))
        .unwrap_err();
    assert_eq!(code_of(dup), ttrpc::Code::ALREADY_EXISTS);
    let bad_id = agent
        .create_container(ctx(), &create_request("a/b", spec_json(&["true"]), "serial:rootfs"))
        .unwrap_err();
    assert_eq!(code_of(bad_id), ttrpc::Code::INVALID_ARGUMENT);
    let bad_spec = agent
        .create_container(ctx(), &create_request("c3", b"{not json".to_vec(), "serial:rootfs"))
        .unwrap_err();
    assert_eq!(code_of(bad_spec), ttrpc::Code::INVALID_ARGUMENT);
    let bad_dev = agent
        .create_container(ctx(), &create_request("c4", spec_json(&["true"]), "../../dev/mem"))
        .unwrap_err();
    assert_eq!(code_of(bad_dev), ttrpc::Code::INVALID_ARGUMENT);
    let mut stray = hybrid::connect(&uds, STDIO_PORT).unwrap();
    let req = StdioRequest {
        container_id: "nope".into(),
        exec_id: String::new(),
        stream: Stream::Stdout,
    };
    assert!(hull_agent_protocol::stdio::open(&mut stray, &req).is_err());

    agent
        .remove_container(
            ctx(),
            &RemoveContainerRequest {
                container_id: "c2".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        code_of(agent.stats_container(ctx(), &c2).unwrap_err()),
        ttrpc::Code::NOT_FOUND
    );
    // The failed creations left nothing: the id is free again.
    agent
        .create_container(ctx(), &create_request("c3", spec_json(&["true"]), "serial:rootfs"))
        .unwrap();
    agent
        .remove_container(
            ctx(),
            &RemoveContainerRequest {
                container_id: "c3".into(),
                ..Default::default()
            },
        )
        .unwrap();

    let mut s = SignalProcessRequest::new();
    s.container_id = "run".into();
    s.signal = 9;
    agent.signal_process(ctx(), &s).unwrap();
    assert_eq!(run.finish().code(), 137);
}

/// The output of container `id`'s program, from its start to its exit (status 0 asserted).
fn run_to_end(agent: &AgentClient, uds: &std::path::Path, id: &str) -> String {
    let mut out_stream = {
        let mut s = hybrid::connect(uds, STDIO_PORT).unwrap();
        let req = StdioRequest {
            container_id: id.into(),
            exec_id: String::new(),
            stream: Stream::Stdout,
        };
        hull_agent_protocol::stdio::open(&mut s, &req).unwrap();
        s
    };
    let mut c = ContainerRequest::new();
    c.container_id = id.into();
    agent.start_container(ctx(), &c).unwrap();
    let mut out = String::new();
    out_stream.read_to_string(&mut out).unwrap();
    let mut w = ProcessRequest::new();
    w.container_id = id.into();
    assert_eq!(agent.wait_process(ctx(), &w).unwrap().exit_code, 0, "{id}: {out}");
    out
}

/// Namespaces from the spec beyond new ones: a second container joins the first one's PID namespace by the
/// agent's name for it (`/run/hull/ns/<container>/pid`, what the shim makes of CRI's shared PID namespace)
/// and has a time namespace of its own with the boot-time clock 1000 days ahead. A host path, an unknown
/// container, or a user namespace without maps are refused with INVALID_ARGUMENT and a message naming them.
#[test]
fn a_container_joins_another_ones_pid_namespace_and_gets_a_time_namespace() {
    let mut run = HullRun::spawn(command(ALL_CALLS, &["sh", "-c", "echo ready; exec sleep 600"]), None);
    run.wait_stdout("ready", RUN_TIMEOUT);
    let uds = vsock_of(run.pid());
    let agent = client(&uds);
    let spec = |namespaces: serde_json::Value, extra: serde_json::Value| {
        let mut s: serde_json::Value = serde_json::from_slice(&spec_json(&[
            "sh",
            "-c",
            "echo \"pid1=$(tr '\\0' ' ' < /proc/1/cmdline)\"; read up _ < /proc/uptime; echo \"uptime=${up%%.*}\"",
        ]))
        .unwrap();
        s["linux"] = extra;
        s["linux"]["namespaces"] = namespaces;
        serde_json::to_vec(&s).unwrap()
    };
    let joined = spec(
        serde_json::json!([{ "type": "pid", "path": "/run/hull/ns/run/pid" }, { "type": "mount" }, { "type": "time" }]),
        serde_json::json!({ "timeOffsets": { "boottime": { "secs": 86_400_000u64 } } }),
    );
    agent
        .create_container(ctx(), &create_request("joins", joined, "serial:rootfs"))
        .unwrap();
    let out = run_to_end(&agent, &uds, "joins");
    assert!(
        out.contains("pid1=sleep 600 "),
        "PID 1 is the first container's program: {out}"
    );
    let up: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("uptime="))
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("no uptime: {out}"));
    assert!((86_400_000..86_500_000).contains(&up), "uptime {up}: {out}");

    for (name, namespaces, extra, says) in [
        (
            "host-path",
            serde_json::json!([{ "type": "pid" }, { "type": "mount" }, { "type": "network", "path": "/proc/1/ns/net" }]),
            serde_json::json!({}),
            "not inside this VM",
        ),
        (
            "no-such",
            serde_json::json!([{ "type": "pid", "path": "/run/hull/ns/nosuch/pid" }, { "type": "mount" }]),
            serde_json::json!({}),
            "no container nosuch",
        ),
        (
            "no-maps",
            serde_json::json!([{ "type": "pid" }, { "type": "mount" }, { "type": "user" }]),
            serde_json::json!({}),
            "needs uidMappings",
        ),
    ] {
        let e = agent
            .create_container(ctx(), &create_request(name, spec(namespaces, extra), "serial:rootfs"))
            .unwrap_err();
        let text = format!("{e:?}");
        assert!(text.contains(says), "{name}: {text}");
        assert_eq!(code_of(e), ttrpc::Code::INVALID_ARGUMENT, "{name}");
    }
    let mut s = SignalProcessRequest::new();
    s.container_id = "run".into();
    s.signal = 9;
    agent.signal_process(ctx(), &s).unwrap();
    assert_eq!(run.finish().code(), 137);
}
