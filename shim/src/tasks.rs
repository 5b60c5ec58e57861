//! The shim's core: the Task API's operations on typed values, over the pod's [`State`], with the events
//! containerd expects. [`crate::service`] only translates ttrpc requests into these calls and their results
//! into replies; creation is in [`crate::create`], the threads that follow processes and the VM in
//! [`crate::watch`].
//!
//! Lifecycle facts from containerd 1.6: Wait may come before Start (it blocks on the process's exit,
//! whatever its state); Kill and Wait after the exit succeed; Shutdown ends the shim only when no container
//! is left, and the VM goes with the last one. Ids come from containerd's client: unknown ones are
//! NOT_FOUND, and exec ids are validated before they reach the guest.
//!
//! Locking: the state lock ([`Tasks::lock`]) is held for bookkeeping only, never across a call to the guest
//! (every agent call has its own timeout) nor to the VM's processes. The VM and its disks have their own
//! lock ([`Tasks::vm`]), held while Create boots the VM or attaches disks (host-side calls with their own
//! timeouts) and never taken by State, Kill, Wait or the bookkeeping half of Delete. So a guest that stalls
//! one container's CreateContainer (or any other call) delays only that call: State, Wait and Delete of the
//! pod's other containers answer at once, and Kill answers as soon as its own SignalProcess does (at once
//! when no guest call is needed: the process already exited, the VM is gone). Delete waits at most
//! [`DELETE_GUEST_WAIT`] for the guest to remove the container; the rest of that removal finishes in the
//! background.
//!
//! The guest is not trusted: events and exit statuses are recorded only for containers and execs this shim
//! created (an OOM report for any other id is dropped), and the numbers it returns are bounded
//! ([`guest_pids`]).

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::ExitSignal;
use hull_runtime::agent::Agent;

use crate::error::ShimError;
use crate::events::Events;
use crate::pod::{Pod, Spawner};
use crate::process::{Proc, StdioAddrs};
use crate::state::{OomReport, ProcessView, State};
use crate::vm_record::VmRecord;
use crate::{guest_spec, watch};

/// How a process ended, as Delete reports it.
pub struct Exited {
    pub pid: u32,
    pub status: u32,
    pub at: Timestamp,
}

pub fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// How long Delete waits for the guest to remove a container before answering (the removal, and the
/// release of its disks, then finish in the background).
pub const DELETE_GUEST_WAIT: Duration = Duration::from_millis(500);

/// The most guest PIDs a Pids call reports.
pub const MAX_GUEST_PIDS: usize = 1 << 16;
/// Linux's largest PID (PID_MAX_LIMIT on 64-bit).
const PID_MAX: i32 = 1 << 22;

/// The guest's process list, bounded: only PIDs Linux can have, each once, at most [`MAX_GUEST_PIDS`].
pub fn guest_pids(pids: impl IntoIterator<Item = i32>) -> Vec<u32> {
    let mut out: Vec<u32> = pids
        .into_iter()
        .filter(|p| (1..=PID_MAX).contains(p))
        .map(|p| p as u32)
        .take(MAX_GUEST_PIDS)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

pub struct Tasks {
    state: Mutex<State>,
    /// The pod's VM (processes, disks, cgroup); never locked while `state` is.
    vm: Mutex<Option<Pod>>,
    /// Signalled whenever a process exits or is deleted (Wait sleeps on it).
    changed: Condvar,
    pub events: Events,
    exit: Arc<ExitSignal>,
    pub spawner: Spawner,
}

impl Tasks {
    pub fn new(events: Events, exit: Arc<ExitSignal>) -> Tasks {
        Tasks {
            state: Mutex::new(State::default()),
            vm: Mutex::new(None),
            changed: Condvar::new(),
            events,
            exit,
            spawner: Spawner::new(),
        }
    }

    /// The bookkeeping; never held across a guest call.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM itself; never taken while [`Tasks::lock`] is held.
    pub fn vm(&self) -> MutexGuard<'_, Option<Pod>> {
        self.vm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the pod's VM still runs.
    pub fn vm_running(&self) -> bool {
        let dead = self.lock().pod.as_ref().is_none_or(|p| p.dead);
        !dead && self.vm().as_mut().is_some_and(|p| p.vm.alive())
    }

    fn agent(&self) -> Result<Arc<Agent>, ShimError> {
        self.lock().agent()
    }

    pub fn vmm_pid(&self) -> u32 {
        self.lock().vmm_pid()
    }

    /// Records an exit (once), wakes waiters, publishes TaskExit.
    pub fn exited(&self, id: &str, exec: &str, status: u32) {
        let (pid, at) = {
            let mut st = self.lock();
            let pid = st.vmm_pid();
            let Ok(p) = st.process_mut(id, exec) else {
                return;
            };
            if p.exit.is_some() {
                return;
            }
            let at = now();
            p.exit = Some((status, at.clone()));
            p.status = Status::STOPPED;
            (pid, at)
        };
        self.changed.notify_all();
        self.events.exited(id, exec, pid, status, at);
    }

    /// Publishes /tasks/oom for container `id`, once, if it is one of this shim's containers (the id comes
    /// from the guest); returns whether it is.
    pub fn oom(&self, id: &str) -> bool {
        let report = self.lock().note_oom(id);
        if report == OomReport::First {
            self.events.oom(id);
        }
        report != OomReport::Unknown
    }

    /// Starts the init process (`exec` "") or an exec; returns the PID containerd sees.
    pub fn start(self: &Arc<Self>, id: &str, exec: &str) -> Result<u32, ShimError> {
        let agent = self.agent()?;
        let (uds, pid, hooks) = {
            let st = self.lock();
            let c = st.container(id)?;
            if !exec.is_empty() && !c.execs.contains_key(exec) {
                return Err(ShimError::not_found(id, exec));
            }
            let pod = st.pod.as_ref().ok_or(ShimError::NoVm)?;
            let hooks = (c.hooks.clone(), c.annotations.clone(), c.bundle.clone());
            (pod.uds.clone(), pod.vmm_pid, hooks)
        };
        if exec.is_empty() {
            agent.start(id).map_err(ShimError::agent(id))?;
            // poststart hooks; as runc, one failing fails Start and ends the container.
            let (hooks, annotations, bundle) = hooks;
            let state = crate::hooks::state(id, "running", pid, &bundle, &annotations);
            if let Err(source) = crate::hooks::run(&hooks.poststart, &state) {
                let _ = agent.signal(id, "", libc::SIGKILL as u32, true);
                watch::process(self, id, exec, uds);
                return Err(ShimError::Hook { id: id.into(), source });
            }
        } else {
            self.start_exec(&agent, &uds, id, exec)?;
        }
        if let Ok(p) = self.lock().process_mut(id, exec) {
            if p.exit.is_none() {
                p.status = Status::RUNNING;
            }
        }
        watch::process(self, id, exec, uds);
        self.events.started(id, exec, pid);
        Ok(pid)
    }

    /// The agent starts an exec's program as soon as it is asked to, so Exec only records the process spec
    /// and the request goes out here, at Start.
    fn start_exec(self: &Arc<Self>, agent: &Agent, uds: &Path, id: &str, exec: &str) -> Result<(), ShimError> {
        let (stdio, process, plan) = {
            let mut st = self.lock();
            let p = st.process_mut(id, exec)?;
            let process = p.exec_spec.take().ok_or_else(|| ShimError::AlreadyStarted {
                id: id.into(),
                exec: exec.into(),
            })?;
            (p.streams().config(), process, p.stdio_plan())
        };
        agent.exec(id, exec, process, stdio).map_err(ShimError::agent(id))?;
        // The streams are opened without the state locked (each is a guest call), then recorded.
        let outputs = match plan.attach(agent, uds, id, exec) {
            Ok(outputs) => outputs,
            Err(source) => {
                // The program already runs in the guest: end it and follow it, so Wait and Delete see it go.
                let _ = agent.signal(id, exec, libc::SIGKILL as u32, false);
                watch::process(self, id, exec, uds.to_path_buf());
                return Err(ShimError::Attach {
                    id: id.into(),
                    exec: exec.into(),
                    source: Box::new(source),
                });
            }
        };
        if let Ok(p) = self.lock().process_mut(id, exec) {
            p.outputs.extend(outputs);
        }
        Ok(())
    }

    /// Forgets an ended process; the init process takes its container along (out of the guest, its disks
    /// released, its VM record removed). The bookkeeping is done at once; the guest's removal is waited for
    /// at most [`DELETE_GUEST_WAIT`] (a stalled guest must not hold up containerd), then finishes in the
    /// background.
    pub fn delete(self: &Arc<Self>, id: &str, exec: &str) -> Result<Exited, ShimError> {
        let (status, at, pid) = {
            let mut st = self.lock();
            let pid = st.vmm_pid();
            let p = st.process_mut(id, exec)?;
            if p.status == Status::RUNNING || p.status == Status::PAUSED {
                return Err(ShimError::StillRunning { id: id.into() });
            }
            let (status, at) = p.exit.clone().unwrap_or((0, now()));
            (status, at, pid)
        };
        if exec.is_empty() {
            let (removed, agent) = {
                let mut st = self.lock();
                let agent = st.agent().ok();
                (st.containers.remove(id), agent)
            };
            if let Some(c) = removed {
                VmRecord::remove(Path::new(&c.bundle));
                let (hooks, annotations, bundle) = (c.hooks.clone(), c.annotations.clone(), c.bundle.clone());
                self.remove_from_vm(id, agent, c.disks);
                // poststop hooks, the container gone; as runc, a failing one is a warning.
                let state = crate::hooks::state(id, "stopped", pid, &bundle, &annotations);
                if let Err(e) = crate::hooks::run(&hooks.poststop, &state) {
                    log::warn!("container {id}: {e}");
                }
            }
            self.events.deleted(id, pid, status, at.clone());
        } else if let Ok(c) = self.lock().container_mut(id) {
            c.execs.remove(exec);
        }
        // A Wait still pending on what was deleted answers "not found" now instead of hanging.
        self.changed.notify_all();
        Ok(Exited { pid, status, at })
    }

    /// The guest removes container `id` (while the VM runs), then its disks lose a user; waits for that at
    /// most [`DELETE_GUEST_WAIT`].
    fn remove_from_vm(self: &Arc<Self>, id: &str, agent: Option<Arc<Agent>>, disks: Vec<String>) {
        let tasks = self.clone();
        let id = id.to_string();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Some(agent) = agent {
                if let Err(e) = agent.remove(&id) {
                    log::warn!("removing {id} in the guest: {e}");
                }
            }
            if let Some(pod) = tasks.vm().as_mut() {
                for k in &disks {
                    pod.release_disk(k);
                }
            }
            let _ = done_tx.send(());
        });
        let _ = done_rx.recv_timeout(DELETE_GUEST_WAIT);
    }

    /// The guest PIDs of the container's processes.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, ShimError> {
        let agent = self.agent()?;
        self.lock().container(id)?;
        let list = agent.list_processes(id).map_err(ShimError::agent(id))?;
        Ok(guest_pids(list.processes.iter().map(|p| p.pid)))
    }

    pub fn pause(&self, id: &str) -> Result<(), ShimError> {
        let agent = self.agent()?;
        self.lock().container(id)?;
        agent.pause(id).map_err(ShimError::agent(id))?;
        if let Ok(c) = self.lock().container_mut(id) {
            c.init.status = Status::PAUSED;
        }
        self.events.paused(id);
        Ok(())
    }

    pub fn resume(&self, id: &str) -> Result<(), ShimError> {
        let agent = self.agent()?;
        self.lock().container(id)?;
        agent.resume(id).map_err(ShimError::agent(id))?;
        if let Ok(c) = self.lock().container_mut(id) {
            if c.init.exit.is_none() {
                c.init.status = Status::RUNNING;
            }
        }
        self.events.resumed(id);
        Ok(())
    }

    /// Signals a process (`all`: every process of the container). Killing what already ended succeeds
    /// (containerd kills after exits, and again with `all`).
    pub fn kill(&self, id: &str, exec: &str, signal: u32, all: bool) -> Result<(), ShimError> {
        let (exited, dead) = {
            let mut st = self.lock();
            let dead = st.pod.as_ref().is_none_or(|p| p.dead);
            (st.process_mut(id, exec)?.exit.is_some(), dead)
        };
        if (exited && !all) || dead {
            return Ok(());
        }
        let agent = self.agent()?;
        if let Err(e) = agent.signal(id, exec, signal, all) {
            let gone = self.lock().process_mut(id, exec).map_or(true, |p| p.exit.is_some());
            if !gone {
                return Err(ShimError::agent(id)(e));
            }
        }
        Ok(())
    }

    /// Records an exec (its OCI process, JSON) until Start.
    pub fn add_exec(&self, id: &str, exec: &str, process_json: &[u8], stdio: &StdioAddrs) -> Result<(), ShimError> {
        hull_agent_protocol::ids::validate_exec_id(exec).map_err(|source| ShimError::BadExecId {
            id: exec.into(),
            source,
        })?;
        let mut process: serde_json::Value =
            serde_json::from_slice(process_json).map_err(|source| ShimError::ExecSpec {
                id: id.into(),
                exec: exec.into(),
                source,
            })?;
        guest_spec::strip_process_labels(&mut process);
        stdio.check()?;
        {
            let mut st = self.lock();
            let c = st.container_mut(id)?;
            if c.execs.contains_key(exec) {
                return Err(ShimError::ExecExists {
                    id: id.into(),
                    exec: exec.into(),
                });
            }
            let mut p = Proc::new(stdio);
            p.exec_spec = Some(process.to_string().into_bytes());
            c.execs.insert(exec.into(), p);
        }
        self.events.exec_added(id, exec);
        Ok(())
    }

    pub fn resize_pty(&self, id: &str, exec: &str, height: u32, width: u32) -> Result<(), ShimError> {
        let agent = self.agent()?;
        agent.resize(id, exec, height, width).map_err(ShimError::agent(id))
    }

    /// CloseIO: with `stdin`, the process's stdin ends after what was written so far.
    pub fn close_io(&self, id: &str, exec: &str, stdin: bool) -> Result<(), ShimError> {
        let mut st = self.lock();
        let p = st.process_mut(id, exec)?;
        if stdin {
            p.stdin_closed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// New resources (OCI LinuxResources JSON) for the container's cgroup in the guest.
    pub fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), ShimError> {
        let agent = self.agent()?;
        self.lock().container(id)?;
        serde_json::from_slice::<serde_json::Value>(&resources_json)
            .map_err(|source| ShimError::Resources { id: id.into(), source })?;
        agent.update(id, resources_json).map_err(ShimError::agent(id))
    }

    /// Blocks until the process has exited; its status and when.
    pub fn wait(&self, id: &str, exec: &str) -> Result<(u32, Timestamp), ShimError> {
        let mut st = self.lock();
        loop {
            if let Some(exit) = &st.process_mut(id, exec)?.exit {
                return Ok(exit.clone());
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The container's cgroup v2 metrics, for the Stats call.
    pub fn stats(&self, id: &str) -> Result<Any, ShimError> {
        let agent = self.agent()?;
        self.lock().container(id)?;
        let s = agent.stats(id).map_err(ShimError::agent(id))?;
        crate::stats::metrics_any(&s).map_err(|source| ShimError::Metrics { id: id.into(), source })
    }

    pub fn state(&self, id: &str, exec: &str) -> Result<ProcessView, ShimError> {
        self.lock().view(id, exec)
    }

    /// Ends the shim when no container is left (and none is being created): the VM goes first.
    pub fn maybe_finish(&self) {
        {
            let mut st = self.lock();
            if !st.containers.is_empty() || !st.creating.is_empty() {
                return;
            }
            st.pod = None;
        }
        let pod = self.vm().take();
        if let Some(p) = pod {
            p.shutdown();
        }
        self.exit.signal();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_pids_are_bounded() {
        assert_eq!(guest_pids([5, 1, 5, 0, -3, i32::MAX, 1 << 22]), vec![1, 5, 1 << 22]);
        let flood = guest_pids((1..=(MAX_GUEST_PIDS as i32 + 100)).rev());
        assert_eq!(flood.len(), MAX_GUEST_PIDS);
    }
}
