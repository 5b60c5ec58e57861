//! hull-agent: PID 1 in the guest's initramfs, and the container helpers it re-executes itself as.
//!
//! As PID 1 it brings the guest to a known state ([`pid1`]: mounts, clock, hostname, `lo`), marks the
//! boot-timer MMIO address, writes `hull-agent ready` to /dev/console, and then either powers the VM off
//! (when the kernel command line carries `hull.poweroff=1`) or serves the agent protocol: ttrpc on vsock port
//! 1024 ([`server`]) and process stdio on port 1025 ([`stdio`]), reaping every child ([`reaper`]). Both serve
//! the host alone ([`peer`]) and the server only the calls of the policy on the kernel command line.
//! Started as `hull-init` or `hull-exec` (argv[0]; the kernel never sets that for /init), it is one of the
//! container helpers in [`init`].
//!
//! Nothing here may panic or exit as PID 1: PID 1 ending is a kernel panic. Every failure is logged on the
//! console and the agent carries on. It trusts nothing but the kernel; the host's requests are validated.

mod bpf;
mod cgroup;
mod channel;
mod console;
mod containers;
mod device_filter;
mod forward;
mod guest_hooks;
mod helper_protocol;
mod init;
mod net;
mod peer;
mod pid1;
mod process;
mod reaper;
mod rootfs;
mod seccomp;
mod server;
mod stdio;
mod sys;
mod vsock_guard;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use console::log;
use hull_agent_protocol::policy::Policy;

/// The line hosts wait for.
const READY_LINE: &str = "hull-agent ready";

fn main() {
    let argv0 = std::env::args_os()
        .next()
        .map(|a| a.to_string_lossy().to_string())
        .unwrap_or_default();
    match argv0.as_str() {
        init::INIT_ARGV0 => init::init_main(),
        init::EXEC_ARGV0 => init::exec_main(),
        _ => {}
    }
    // Mounting, rebooting and reaping are PID 1's business; run anywhere else (a developer's shell), do nothing.
    if std::process::id() != 1 {
        eprintln!("hull-agent: not PID 1, refusing to run (this is the guest's init)");
        std::process::exit(1);
    }
    pid1::switch_root_to_tmpfs();
    // Before any thread exists, so every thread inherits the blocked mask.
    reaper::block_sigchld();
    pid1::mount_early();
    // Reopen the console now that devtmpfs is there.
    console::reopen();

    match pid1::write_boot_timer() {
        Ok(()) => log("boot timer written"),
        Err(e) => log(&format!("boot timer not written: {e}")),
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| {
        log(&format!("cannot read /proc/cmdline: {e}"));
        String::new()
    });
    if pid1::wants_poweroff(&cmdline) {
        console::line(READY_LINE);
        log("powering off");
        pid1::power_off();
    }
    pid1::clock_from_cmdline(&cmdline);
    pid1::set_hostname(pid1::cmdline_value(&cmdline, "hull.hostname").unwrap_or("hull"));
    if let Err(e) = net::link_up("lo") {
        log(&format!("lo: {e}"));
    }
    cgroup::init();

    let reaper = match reaper::Reaper::start() {
        Ok(r) => r,
        Err(e) => {
            // Without threads nothing can be served; PID 1 must still live and reap.
            log(&format!("cannot start the reaper thread, serving nothing: {e}"));
            console::line(READY_LINE);
            reaper::Reaper::default().run();
        }
    };
    let policy = agent_policy(&cmdline);
    let agent = containers::Agent::new(reaper);
    forward::start(policy);
    let _server = match server::serve(agent.clone(), policy) {
        Ok(s) => Some(s),
        Err(e) => {
            log(&format!(
                "cannot serve the agent protocol on vsock port {}: {e}",
                hull_agent_protocol::AGENT_PORT
            ));
            None
        }
    };
    start_stdio_listener(agent);
    console::line(READY_LINE);
    loop {
        std::thread::park();
    }
}

/// The agent policy from the kernel command line (`hull.policy=`), read once here and never again: what the
/// host fixed at boot. Absent: the default (every call). Malformed: no call at all, so a mistake fails closed
/// and loudly (the host's first call is refused) instead of serving more than the host meant.
fn agent_policy(cmdline: &str) -> Policy {
    let key = hull_agent_protocol::policy::CMDLINE_PARAM;
    let policy = match pid1::cmdline_value(cmdline, key) {
        None => Policy::default(),
        Some(text) => Policy::parse(text).unwrap_or_else(|e| {
            log(&format!("{e}; serving no call"));
            Policy::none()
        }),
    };
    log(&format!("agent policy: {policy}"));
    policy
}

fn start_stdio_listener(agent: Arc<containers::Agent>) {
    let listener = match stdio::listen(hull_agent_protocol::STDIO_PORT) {
        Ok(l) => l,
        Err(e) => {
            log(&format!(
                "cannot listen on vsock port {}: {e}",
                hull_agent_protocol::STDIO_PORT
            ));
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("stdio-accept".into())
        .spawn(move || loop {
            match stdio::accept(&listener) {
                // Only the host may attach a process's stdio.
                Ok(conn) if !peer::admit(conn.as_raw_fd(), "a stdio connection") => drop(conn),
                Ok(conn) => {
                    let agent = agent.clone();
                    let _ = std::thread::Builder::new()
                        .name("stdio".into())
                        .spawn(move || stdio::serve_connection(conn, |req| agent.attach(req)));
                }
                Err(e) => {
                    log(&format!("stdio accept: {e}"));
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        });
    if let Err(e) = spawned {
        log(&format!("cannot start the stdio listener: {e}"));
    }
}
