//! Every way a Task API call can fail in the shim, as one enum, and the one place its variants become ttrpc
//! status codes (INVALID_ARGUMENT for what containerd's client sent wrong, NOT_FOUND for unknown ids,
//! ALREADY_EXISTS, FAILED_PRECONDITION for calls in the wrong state or without a VM, INTERNAL otherwise).
//! Each variant names what a person needs to act on: the container, the exec, the path.

use std::path::PathBuf;

use containerd_shim::protos::ttrpc::{self, Code};
use hull_agent_protocol::ids::IdError;
use hull_runtime::agent::AgentError;

use crate::config::ConfigError;
use crate::guest_spec::SpecError;
use crate::pod::PodError;
use crate::process::StdioUriError;
use crate::rootfs::RootfsError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("container id {id:?}: {source}")]
    BadId { id: String, source: IdError },
    #[error("exec id {id:?}: {source}")]
    BadExecId { id: String, source: IdError },
    #[error(transparent)]
    Stdio(#[from] StdioUriError),
    #[error("reading {path}: {source}")]
    Bundle { path: PathBuf, source: std::io::Error },
    #[error("the bundle's config.json ({path}): {source}")]
    SpecJson { path: PathBuf, source: serde_json::Error },
    #[error("container {id}: the OCI spec: {source}")]
    Spec { id: String, source: SpecError },
    #[error("container {id}: {source}")]
    Hook {
        id: String,
        source: crate::hooks::HookError,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("container {id}: {count} directory mounts; a VM takes at most {max} (each is a disk of its own)")]
    TooManyVolumes { id: String, count: usize, max: usize },
    #[error("container {id}: the rootfs: {source}")]
    Rootfs { id: String, source: RootfsError },
    #[error("container {id}: packing volume {destination}: {source}")]
    PackVolume {
        id: String,
        destination: String,
        source: hull_runtime::image::ImageError,
    },
    #[error("container {id}: disk for {what}: {source}")]
    Disk {
        id: String,
        what: String,
        source: Box<PodError>,
    },
    #[error("the VM directory in {path}: {source}")]
    VmDir { path: PathBuf, source: std::io::Error },
    #[error("container {id}: starting the VM: {source}")]
    Boot { id: String, source: Box<PodError> },
    #[error("container {id}: the pod's cgroup: {source}")]
    Cgroup {
        id: String,
        source: crate::cgroup::CgroupError,
    },
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("exec {exec} of container {id} already exists")]
    ExecExists { id: String, exec: String },
    #[error("container {0} not found")]
    NoContainer(String),
    #[error("process {exec} of container {id} not found")]
    NoProcess { id: String, exec: String },
    #[error("no VM")]
    NoVm,
    #[error("the pod's VM is gone")]
    VmGone,
    #[error("exec {exec} of container {id} was started already")]
    AlreadyStarted { id: String, exec: String },
    #[error("{id} is still running")]
    StillRunning { id: String },
    #[error("exec {exec} of container {id}: the process spec: {source}")]
    ExecSpec {
        id: String,
        exec: String,
        source: serde_json::Error,
    },
    #[error("container {id}: the resources are not OCI LinuxResources JSON: {source}")]
    Resources { id: String, source: serde_json::Error },
    #[error("container {id}: {source}")]
    Agent { id: String, source: Box<AgentError> },
    #[error("container {id}: attaching the stdio of {exec:?}: {source}")]
    Attach {
        id: String,
        exec: String,
        source: Box<AgentError>,
    },
    #[error("container {id}: encoding its metrics: {source}")]
    Metrics {
        id: String,
        source: containerd_shim::protos::protobuf::Error,
    },
}

impl ShimError {
    /// The process `exec` of container `id` is unknown ("" is the container's init process).
    pub fn not_found(id: &str, exec: &str) -> ShimError {
        if exec.is_empty() {
            ShimError::NoContainer(id.into())
        } else {
            ShimError::NoProcess {
                id: id.into(),
                exec: exec.into(),
            }
        }
    }

    /// For `map_err`: an agent call about container `id` failed.
    pub fn agent(id: &str) -> impl FnOnce(AgentError) -> ShimError + '_ {
        move |source| ShimError::Agent {
            id: id.into(),
            source: Box::new(source),
        }
    }

    /// The ttrpc status code containerd gets.
    pub fn code(&self) -> Code {
        use ShimError::*;
        match self {
            BadId { .. }
            | BadExecId { .. }
            | Stdio(_)
            | SpecJson { .. }
            | Spec { .. }
            | TooManyVolumes { .. }
            | ExecSpec { .. }
            | Resources { .. } => Code::INVALID_ARGUMENT,
            NoContainer(_) | NoProcess { .. } => Code::NOT_FOUND,
            ContainerExists(_) | ExecExists { .. } => Code::ALREADY_EXISTS,
            NoVm | VmGone | AlreadyStarted { .. } | StillRunning { .. } => Code::FAILED_PRECONDITION,
            Bundle { .. }
            | Config(_)
            | Rootfs { .. }
            | PackVolume { .. }
            | Disk { .. }
            | VmDir { .. }
            | Boot { .. }
            | Cgroup { .. }
            | Agent { .. }
            | Attach { .. }
            | Metrics { .. } => Code::INTERNAL,
            Hook { source, .. } => match source {
                crate::hooks::HookError::Invalid(_) => Code::INVALID_ARGUMENT,
                crate::hooks::HookError::Failed { .. } => Code::FAILED_PRECONDITION,
            },
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> ttrpc::Error {
        // The guest's agent refused a call by its policy: a security event, whoever made the call.
        if let ShimError::Agent { id, source } | ShimError::Attach { id, source, .. } = &e {
            if let Some((call, message)) = source.permission_denied() {
                let reason = format!("the agent refused {call}: {message}");
                crate::logging::security_event("agent_permission_denied", id, &reason);
            }
        }
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_ids_are_not_found_and_bad_input_is_invalid() {
        assert_eq!(ShimError::not_found("c1", "").code(), Code::NOT_FOUND);
        let e = ShimError::not_found("c1", "e1");
        assert_eq!(e.code(), Code::NOT_FOUND);
        assert_eq!(e.to_string(), "process e1 of container c1 not found");
        let bad = ShimError::BadId {
            id: "a/b".into(),
            source: IdError::Empty,
        };
        assert_eq!(bad.code(), Code::INVALID_ARGUMENT);
        match ttrpc::Error::from(ShimError::VmGone) {
            ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), Code::FAILED_PRECONDITION),
            other => panic!("{other:?}"),
        }
    }
}
