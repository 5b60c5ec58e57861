//! What the shim knows about its pod: the VM ([`Pod`], booted at the first Create) and the containers it
//! runs, each with its init process and execs. Lookups by the ids containerd sends answer
//! [`ShimError`]s (NOT_FOUND), never panic: the ids are containerd's client's and are not trusted to exist.
//!
//! Lifecycle facts from containerd 1.6 shape it: the exit status of a process is kept until Delete (Kill and
//! Wait after the exit succeed), and the VM goes with the last container.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use hull_runtime::agent::Agent;

use crate::error::ShimError;
use crate::pod::Pod;
use crate::process::Proc;

pub struct Container {
    pub bundle: String,
    pub init: Proc,
    pub execs: HashMap<String, Proc>,
    /// Disk keys this container holds in the pod.
    pub disks: Vec<String>,
    /// Read-write file mounts: the agent's file name and the host file it goes back to at exit.
    pub write_back: Vec<(String, PathBuf)>,
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

#[derive(Default)]
pub struct State {
    pub pod: Option<Pod>,
    pub containers: HashMap<String, Container>,
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
        self.pod.as_ref().map_or(0, |p| p.vm.vmm_pid())
    }

    /// The agent of a VM that still runs.
    pub fn agent(&self) -> Result<Arc<Agent>, ShimError> {
        match &self.pod {
            Some(p) if !p.dead => Ok(p.agent.clone()),
            Some(_) => Err(ShimError::VmGone),
            None => Err(ShimError::NoVm),
        }
    }

    /// Whether the pod's VM still runs.
    pub fn vm_running(&mut self) -> bool {
        self.pod.as_mut().is_some_and(|p| !p.dead && p.vm.alive())
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

    /// Forgets container `id`: the guest removes it (while the VM runs) and its disks lose a user.
    pub fn remove_container(&mut self, id: &str) -> Option<Container> {
        let c = self.containers.remove(id);
        if let (Some(c), Some(pod)) = (&c, self.pod.as_mut()) {
            if !pod.dead {
                if let Err(e) = pod.agent.remove(id) {
                    log::warn!("removing {id} in the guest: {e}");
                }
            }
            for k in &c.disks {
                pod.release_disk(k);
            }
        }
        c
    }
}
