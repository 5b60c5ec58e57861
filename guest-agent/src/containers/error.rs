//! The agent's error type for container and process requests (mapped to ttrpc codes in `server.rs`), and
//! the helper that names what an I/O error was doing.

use std::io;
use std::time::Duration;

use hull_agent_protocol::ids::IdError;

use crate::cgroup::CgroupError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    BadId(#[from] IdError),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("no container {0}")]
    NoContainer(String),
    #[error("no process {exec:?} in container {container}")]
    NoProcess { container: String, exec: String },
    #[error("process {0:?} already exists")]
    ProcessExists(String),
    #[error("container {0} is not in a state that allows this ({1})")]
    BadState(String, &'static str),
    #[error("invalid OCI document: {0}")]
    BadSpec(String),
    #[error("block device {0:?} not found or not acceptable")]
    BadDevice(String),
    #[error("block device {device} is still empty (size 0) after {waited:?}: no disk was attached to its slot")]
    EmptyDevice { device: String, waited: Duration },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("container setup failed: {0}")]
    Helper(String),
    #[error("container {container}: file {name:?} was not registered for copy-back at create")]
    NotRegistered { container: String, name: String },
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}
