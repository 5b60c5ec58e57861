//! The threads that follow what runs in the VM and report it to [`Tasks`]:
//!
//! - one per started process: waits for its exit status from the agent, copies the container's read-write
//!   file mounts back to the host, drains its output, then records the exit;
//! - one per VM: when the VM's process ends, every process still running has exited with 137;
//! - one per VM: the agent's OOM events.
//!
//! The guest is not trusted: an exit code no process can have is reported as 255 (never success); exits and
//! OOM kills are recorded only for processes and containers this shim created (an OOM report naming any
//! other id is dropped, and a flood of them is slowed down); a file read back is refused above 1 MiB and
//! written only through the descriptor opened at Create ([`crate::host_file`]); and a broken connection
//! while the VM still runs is retried rather than taken as the process's death.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hull_runtime::agent::Agent;

use crate::process::Proc;
use crate::tasks::Tasks;

/// Exit status reported when the VM died under a process (as for SIGKILL).
pub const VM_GONE: u32 = 137;

/// Follows a started process: its exit status from the agent, after its output is drained.
pub fn process(tasks: &Arc<Tasks>, id: &str, exec: &str, uds: PathBuf) {
    let tasks = tasks.clone();
    let (id, exec) = (id.to_string(), exec.to_string());
    std::thread::spawn(move || {
        // A broken connection while the VM still runs is retried a few times: reporting 137 for a process
        // that still runs would have it restarted next to itself.
        let mut attempts = 0;
        let status = loop {
            let r = Agent::connect(&uds, Duration::from_secs(10)).and_then(|a| a.wait(&id, &exec));
            attempts += 1;
            match r {
                Err(e) if attempts < 5 && tasks.vm_running() => {
                    log::warn!("waiting for {id}/{exec}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                r => break r,
            }
        };
        let status = status.map(|w| {
            if w.oom_killed {
                tasks.oom(&id);
            }
            exit_status(w.exit_code, w.signal)
        });
        if exec.is_empty() && status.is_ok() {
            write_back_files(&tasks, &id, &uds);
        }
        let outputs = tasks
            .lock()
            .process_mut(&id, &exec)
            .map(|p| std::mem::take(&mut p.outputs))
            .unwrap_or_default();
        Proc::drain(outputs, Duration::from_secs(5));
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                log::warn!("waiting for {id}/{exec}: {e}");
                VM_GONE
            }
        };
        tasks.exited(&id, &exec, status);
    });
}

/// Watches the VM: when its process ends, every process still running has exited with 137.
pub fn vm(tasks: &Arc<Tasks>) {
    let tasks = tasks.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        match tasks.vm().as_mut().map(|pod| pod.vm.alive()) {
            None => return,
            Some(true) => continue,
            Some(false) => {}
        }
        let victims = {
            let mut st = tasks.lock();
            let Some(pod) = st.pod.as_mut() else { return };
            pod.dead = true;
            log::warn!("the VM ended; reporting its processes as killed");
            st.running()
        };
        for (id, exec) in victims {
            tasks.exited(&id, &exec, VM_GONE);
        }
        return;
    });
}

/// Watches for OOM kills in the guest.
pub fn oom(tasks: &Arc<Tasks>, uds: PathBuf) {
    let tasks = tasks.clone();
    std::thread::spawn(move || {
        let Ok(agent) = Agent::connect(&uds, Duration::from_secs(10)) else {
            return;
        };
        let mut unknown = 0u64;
        while let Ok(ev) = agent.next_oom() {
            if !tasks.oom(&ev.container_id) {
                unknown += 1;
                if unknown.is_power_of_two() {
                    log::warn!(
                        "the guest reported an OOM kill in {:?}, no container of this pod ({unknown} so far); ignored",
                        crate::pod::printable(&ev.container_id)
                    );
                }
                // A guest that floods them gets one answer per 10 ms at most.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
}

/// Copies the container's read-write file mounts back to their host files (before its exit is reported,
/// so whoever reacts to the exit, like the kubelet reading the termination log, finds them): each through
/// the descriptor opened at Create, at most 1 MiB.
fn write_back_files(tasks: &Tasks, id: &str, uds: &Path) {
    let files = tasks
        .lock()
        .container(id)
        .map(|c| c.write_back.clone())
        .unwrap_or_default();
    if files.is_empty() {
        return;
    }
    let agent = match Agent::connect(uds, Duration::from_secs(10)) {
        Ok(a) => a,
        Err(e) => {
            log::warn!("container {id}: file mounts not written back: {e}");
            return;
        }
    };
    for (name, host) in files {
        match agent.read_file(id, &name) {
            Ok(content) => {
                if let Err(e) = host.write_back(&content) {
                    log::warn!("container {id}: {e}");
                }
            }
            Err(e) => log::warn!("container {id}: reading back {}: {e}", host.path().display()),
        }
    }
}

/// The status containerd gets for the agent's report: 128+N for signal N, else the exit code; a code no
/// process can have (the guest is not trusted) is reported as 255, never as success.
pub fn exit_status(exit_code: i32, signal: i32) -> u32 {
    if signal > 0 {
        128 + signal.min(127) as u32
    } else if (0..=255).contains(&exit_code) {
        exit_code as u32
    } else {
        crate::logging::security_event(
            "bad_guest_reply",
            "",
            &format!("the agent reported exit code {exit_code}; reporting 255"),
        );
        255
    }
}

#[cfg(test)]
mod tests {
    use super::exit_status;

    #[test]
    fn exit_statuses_follow_the_shell_convention_and_bogus_codes_are_not_success() {
        assert_eq!(exit_status(0, 0), 0);
        assert_eq!(exit_status(3, 0), 3);
        assert_eq!(exit_status(0, 9), 137);
        assert_eq!(exit_status(0, 1000), 255);
        assert_eq!(exit_status(-1, 0), 255);
        assert_eq!(exit_status(256, 0), 255);
    }
}
