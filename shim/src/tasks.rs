//! The shim's core: the Task API's operations on typed values, over the pod's [`State`], with the events
//! containerd expects. [`crate::service`] only translates ttrpc requests into these calls and their results
//! into replies; creation is in [`crate::create`], the threads that follow processes and the VM in
//! [`crate::watch`].
//!
//! Lifecycle facts from containerd 1.6: Wait may come before Start (it blocks on the process's exit,
//! whatever its state); Kill and Wait after the exit succeed; Shutdown ends the shim only when no container
//! is left, and the VM goes with the last one. Ids come from containerd's client: unknown ones are
//! NOT_FOUND, and exec ids are validated before they reach the guest.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::ExitSignal;
use hull_runtime::agent::Agent;

use crate::error::ShimError;
use crate::events::Events;
use crate::pod::Spawner;
use crate::process::{Proc, StdioAddrs};
use crate::state::{ProcessView, State};
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

pub struct Tasks {
    state: Mutex<State>,
    /// Signalled whenever a process exits or is deleted (Wait sleeps on it).
    changed: Condvar,
    pub events: Events,
    exit: Arc<ExitSignal>,
    pub spawner: Spawner,
    /// Containers whose OOM kill was published (the agent's OOM watch and a process's wait status can both
    /// tell; containerd hears it once).
    oom_reported: Mutex<HashSet<String>>,
}

impl Tasks {
    pub fn new(events: Events, exit: Arc<ExitSignal>) -> Tasks {
        Tasks {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            events,
            exit,
            spawner: Spawner::new(),
            oom_reported: Mutex::new(HashSet::new()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    /// Publishes /tasks/oom for container `id`, once.
    pub fn oom(&self, id: &str) {
        let first = self
            .oom_reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        if first {
            self.events.oom(id);
        }
    }

    /// Starts the init process (`exec` "") or an exec; returns the PID containerd sees.
    pub fn start(self: &Arc<Self>, id: &str, exec: &str) -> Result<u32, ShimError> {
        let agent = self.agent()?;
        let (uds, pid) = {
            let st = self.lock();
            let c = st.container(id)?;
            if !exec.is_empty() && !c.execs.contains_key(exec) {
                return Err(ShimError::not_found(id, exec));
            }
            let pod = st.pod.as_ref().ok_or(ShimError::NoVm)?;
            (pod.vm.vsock_uds().to_path_buf(), pod.vm.vmm_pid())
        };
        if exec.is_empty() {
            agent.start(id).map_err(ShimError::agent(id))?;
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
        let (stdio, process) = {
            let mut st = self.lock();
            let p = st.process_mut(id, exec)?;
            let process = p.exec_spec.take().ok_or_else(|| ShimError::AlreadyStarted {
                id: id.into(),
                exec: exec.into(),
            })?;
            (p.streams().config(), process)
        };
        agent.exec(id, exec, process, stdio).map_err(ShimError::agent(id))?;
        let mut st = self.lock();
        let p = st.process_mut(id, exec)?;
        if let Err(source) = p.attach(agent, uds, id, exec) {
            // The program already runs in the guest: end it and follow it, so Wait and Delete see it go.
            drop(st);
            let _ = agent.signal(id, exec, libc::SIGKILL as u32, false);
            watch::process(self, id, exec, uds.to_path_buf());
            return Err(ShimError::Attach {
                id: id.into(),
                exec: exec.into(),
                source: Box::new(source),
            });
        }
        Ok(())
    }

    /// Forgets an ended process; the init process takes its container along (out of the guest, its disks
    /// released, its VM record removed).
    pub fn delete(&self, id: &str, exec: &str) -> Result<Exited, ShimError> {
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
            let removed = self.lock().remove_container(id);
            if let Some(c) = removed {
                VmRecord::remove(Path::new(&c.bundle));
            }
            self.oom_reported.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
            self.events.deleted(id, pid, status, at.clone());
        } else if let Ok(c) = self.lock().container_mut(id) {
            c.execs.remove(exec);
        }
        // A Wait still pending on what was deleted answers "not found" now instead of hanging.
        self.changed.notify_all();
        Ok(Exited { pid, status, at })
    }

    /// The guest PIDs of the container's processes.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, ShimError> {
        let agent = self.agent()?;
        self.lock().container(id)?;
        let list = agent.list_processes(id).map_err(ShimError::agent(id))?;
        Ok(list.processes.iter().map(|p| p.pid.max(0) as u32).collect())
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

    /// Ends the shim when no container is left: the VM goes first.
    pub fn maybe_finish(&self) {
        let pod = {
            let mut st = self.lock();
            if !st.containers.is_empty() {
                return;
            }
            st.pod.take()
        };
        if let Some(p) = pod {
            p.shutdown();
        }
        self.exit.signal();
    }
}
