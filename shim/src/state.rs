//! What the shim knows about its pod: the VM's bookkeeping ([`PodInfo`]: its agent, VMM PID, whether it
//! died) and the containers it runs, each with its init process and execs, plus the ids whose Create is in
//! flight. The VM itself (processes, disks) is not here: it lives behind its own lock in
//! [`crate::tasks::Tasks`], so nothing that waits on the VM or the guest ever holds this state.
//!
//! Lookups by the ids containerd sends answer [`ShimError`]s (NOT_FOUND), never panic: the ids are
//! containerd's client's and are not trusted to exist. Lifecycle facts from containerd 1.6 shape it: the exit
//! status of a process is kept until Delete (Kill and Wait after the exit succeed), and the VM goes with the
//! last container.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use hull_runtime::agent::Agent;

use crate::error::ShimError;
use crate::host_file::HostFile;
use crate::process::Proc;

pub struct Container {
    pub bundle: String,
    pub init: Proc,
    pub execs: HashMap<String, Proc>,
    /// Disk keys this container holds in the pod.
    pub disks: Vec<String>,
    /// Read-write file mounts: the agent's file name and the host file (opened at Create) it goes back to
    /// at exit.
    pub write_back: Vec<(String, Arc<HostFile>)>,
    /// Whether containerd heard of an OOM kill in it already (the agent's OOM watch and a process's wait
    /// status can both tell; containerd hears it once). Kept here, so it goes with the container.
    pub oom_reported: bool,
    /// The host-side OCI hooks still to run (poststart, poststop) and what they are told.
    pub hooks: Arc<crate::hooks::Hooks>,
    pub annotations: serde_json::Value,
}

impl Container {
    /// The init process (`exec` "") or an exec.
    pub fn proc_mut(&mut self, exec: &str) -> Option<&mut Proc> {
        if exec.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec)
        }
    }
}

/// A process as the State call reports it.
pub struct ProcessView {
    pub bundle: String,
    pub pid: u32,
    pub status: Status,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    pub exit: Option<(u32, Timestamp)>,
}

/// What an OOM report from the guest amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomReport {
    /// No container of this shim has that id: dropped.
    Unknown,
    /// Published.
    First,
    /// Published already.
    Repeat,
}

/// The pod's VM as the Task API calls need it; copied out of [`crate::pod::Pod`] at boot.
pub struct PodInfo {
    pub agent: Arc<Agent>,
    pub vmm_pid: u32,
    /// The host end of the VM's hybrid vsock.
    pub uds: PathBuf,
    /// The VM's scratch disk for the containers' writable layers, if it has one.
    pub scratch: Option<hull_runtime::container::GuestDisk>,
    /// The VM's process ended.
    pub dead: bool,
}

#[derive(Default)]
pub struct State {
    pub pod: Option<PodInfo>,
    pub containers: HashMap<String, Container>,
    /// Ids whose Create is in flight (reserved: a second Create of one is refused).
    pub creating: HashSet<String>,
}

impl State {
    pub fn container(&self, id: &str) -> Result<&Container, ShimError> {
        self.containers.get(id).ok_or_else(|| ShimError::not_found(id, ""))
    }

    pub fn container_mut(&mut self, id: &str) -> Result<&mut Container, ShimError> {
        self.containers.get_mut(id).ok_or_else(|| ShimError::not_found(id, ""))
    }

    /// Process `exec` ("" for the init process) of container `id`.
    pub fn process_mut(&mut self, id: &str, exec: &str) -> Result<&mut Proc, ShimError> {
        self.container_mut(id)?
            .proc_mut(exec)
            .ok_or_else(|| ShimError::not_found(id, exec))
    }

    /// The PID containerd sees for every process: the VMM's (the guest's PIDs mean nothing on the host).
    pub fn vmm_pid(&self) -> u32 {
        self.pod.as_ref().map_or(0, |p| p.vmm_pid)
    }

    /// The agent of a VM that still runs.
    pub fn agent(&self) -> Result<Arc<Agent>, ShimError> {
        match &self.pod {
            Some(p) if !p.dead => Ok(p.agent.clone()),
            Some(_) => Err(ShimError::VmGone),
            None => Err(ShimError::NoVm),
        }
    }

    /// The guest reports an OOM kill in container `id`: whether containerd should hear of it now. Only a
    /// container of this shim counts (not one being created, not one deleted), and only once; so what the
    /// guest names cannot grow anything here.
    pub fn note_oom(&mut self, id: &str) -> OomReport {
        match self.containers.get_mut(id) {
            None => OomReport::Unknown,
            Some(c) if c.oom_reported => OomReport::Repeat,
            Some(c) => {
                c.oom_reported = true;
                OomReport::First
            }
        }
    }

    /// Every process (container id, exec id) that has not exited yet.
    pub fn running(&self) -> Vec<(String, String)> {
        self.containers
            .iter()
            .flat_map(|(id, c)| {
                std::iter::once((id.clone(), String::new(), &c.init))
                    .chain(c.execs.iter().map(move |(e, p)| (id.clone(), e.clone(), p)))
            })
            .filter(|(_, _, p)| p.exit.is_none())
            .map(|(id, e, _)| (id, e))
            .collect()
    }

    pub fn view(&mut self, id: &str, exec: &str) -> Result<ProcessView, ShimError> {
        let pid = self.vmm_pid();
        let c = self.container_mut(id)?;
        let bundle = c.bundle.clone();
        let p = c.proc_mut(exec).ok_or_else(|| ShimError::not_found(id, exec))?;
        Ok(ProcessView {
            bundle,
            pid,
            status: p.status,
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit: p.exit.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::StdioAddrs;

    fn container() -> Container {
        Container {
            bundle: "/b".into(),
            init: Proc::new(&StdioAddrs::default()),
            execs: HashMap::new(),
            disks: Vec::new(),
            write_back: Vec::new(),
            oom_reported: false,
            hooks: Arc::default(),
            annotations: serde_json::Value::Null,
        }
    }

    #[test]
    fn oom_reports_count_only_for_this_shims_containers_and_once() {
        let mut st = State::default();
        st.containers.insert("c1".into(), container());
        st.creating.insert("c2".into());
        assert_eq!(st.note_oom("c1"), OomReport::First);
        assert_eq!(st.note_oom("c1"), OomReport::Repeat);
        assert_eq!(st.note_oom("c2"), OomReport::Unknown, "not created yet");
        for i in 0..10_000 {
            assert_eq!(st.note_oom(&format!("guest-made-{i}")), OomReport::Unknown);
        }
        assert_eq!(st.containers.len(), 1, "unknown ids leave nothing behind");
        st.containers.remove("c1");
        assert_eq!(
            st.note_oom("c1"),
            OomReport::Unknown,
            "a deleted container's flag went with it"
        );
        st.containers.insert("c1".into(), container());
        assert_eq!(
            st.note_oom("c1"),
            OomReport::First,
            "a new container of the same id is reported again"
        );
    }
}
