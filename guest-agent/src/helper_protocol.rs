//! What the agent and its helpers (`hull-init`, `hull-exec`; see `init.rs`) say to each other over the
//! private [`Channel`](crate::channel::Channel): the messages and the configurations they carry. Only
//! data lives here, so the channel (transport) and the helpers (the work) both depend on it and not on
//! each other. A helper trusts only the agent; the agent treats what a helper sends as coming from next
//! to container code (the channel bounds and checks every frame).

use std::path::PathBuf;

use oci_spec::runtime::{LinuxSeccomp, Process, Spec};
use serde::{Deserialize, Serialize};

use crate::sys::ExitStatus;

/// What the agent tells a helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToHelper {
    /// `hull-init`: set up the container.
    Init(Box<InitConfig>),
    /// `hull-init`: run the container's program now.
    Start,
    /// `hull-exec`: join the container and run a process.
    Exec(Box<ExecConfig>),
}

/// What a helper tells the agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromHelper {
    /// Set up; a terminal's master side comes with this frame when the process has one.
    Ready,
    /// The process runs; its PID in the guest's root PID namespace (0 if the helper cannot know it).
    Started { pid: i32 },
    /// The container's program ended with this status.
    Exited(ExitStatus),
    /// Setting up failed.
    Error(String),
}

/// `hull-init`'s configuration: the container to build.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    pub spec: Spec,
    /// The prepared rootfs in the agent's mount namespace.
    pub rootfs: PathBuf,
    /// unshare(CLONE_NEWCGROUP) once in the container's cgroup.
    pub cgroup_ns: bool,
    /// `hull-init` runs in a new user namespace (it is root there; its mounts are those a user namespace
    /// allows, see `crate::rootfs`).
    pub user_ns: bool,
    /// A new time namespace with these offsets (the text of `/proc/self/timens_offsets`).
    pub time_offsets: Option<String>,
    /// Install the agent's seccomp vsock filter before anything of the container runs: when the guest
    /// kernel does not honour the cgroup vsock guard, or the process could detach it
    /// (`crate::vsock_guard`), unless the container may use vsock.
    pub vsock_seccomp: bool,
    /// The container's id, its init's PID in the guest and its directory in the guest: what the guest-side
    /// OCI hooks are told.
    pub id: String,
    pub pid: i32,
    pub bundle: String,
    /// Stay the PID namespace's init and run the program as a child (`--init`); otherwise `hull-init` execs
    /// the program, which becomes PID 1 as under runc.
    pub with_init: bool,
}

/// `hull-exec`'s configuration: the process to start in a running container.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExecConfig {
    pub process: Process,
    /// The container's init, whose namespaces are joined.
    pub init_pid: i32,
    /// Namespace names under /proc/PID/ns to join, in order.
    pub namespaces: Vec<String>,
    /// The container's cgroup directory.
    pub cgroup: PathBuf,
    /// The container's seccomp profile, which applies to every process in it.
    pub seccomp: Option<LinuxSeccomp>,
    /// As [`InitConfig::vsock_seccomp`], for this process.
    pub vsock_seccomp: bool,
}
