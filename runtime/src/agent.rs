//! The host's connection to hull-agent: ttrpc over the hybrid vsock (guest port 1024), plus stdio streams
//! (guest port 1025, one connection per stream). Wraps the generated client with timeouts suited to each call
//! and errors that say which call failed.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hull_agent_protocol::agent::*;
use hull_agent_protocol::agent_ttrpc::AgentClient;
use hull_agent_protocol::stdio::{StdioRequest, Stream};
use hull_agent_protocol::ttrpc::{self, context};
use hull_agent_protocol::{hybrid, STDIO_PORT};

/// How long the guest may take to answer a stdio stream request.
const STDIO_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Connect(#[from] hybrid::HybridError),
    #[error(transparent)]
    Client(#[from] hull_agent_protocol::client::ClientError),
    #[error("agent call {call}: {}", describe(.source))]
    Call { call: &'static str, source: ttrpc::Error },
    #[error("reading the host's random bytes: {0}")]
    HostRandom(getrandom::Error),
    #[error("stdio stream {stream}: {source}")]
    Stdio {
        stream: &'static str,
        source: hull_agent_protocol::stdio::StdioError,
    },
}

/// A ttrpc error as a person reads it: the agent's own message and the status code, not the protobuf dump.
fn describe(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => format!("{} ({:?})", s.message(), s.code()),
        other => other.to_string(),
    }
}

impl AgentError {
    /// When the agent refused the call by its policy (ttrpc PERMISSION_DENIED): the call and the agent's
    /// message, for a security event on the host.
    pub fn permission_denied(&self) -> Option<(&'static str, &str)> {
        match self {
            AgentError::Call {
                call,
                source: ttrpc::Error::RpcStatus(status),
            } if status.code() == ttrpc::Code::PERMISSION_DENIED => Some((call, status.message())),
            _ => None,
        }
    }
}

pub struct Agent {
    client: AgentClient,
    uds: PathBuf,
}

const SHORT: Duration = Duration::from_secs(60);

/// How many host random bytes [`Agent::add_entropy`] sends: 512 bits, twice what the guest kernel's CRNG
/// seeds from (the agent takes 1 to 512 bytes).
pub const ENTROPY_BYTES: usize = 64;

/// `len` bytes from the host kernel's getrandom(2).
fn host_random(len: usize) -> Result<Vec<u8>, AgentError> {
    let mut data = vec![0u8; len];
    getrandom::fill(&mut data).map_err(AgentError::HostRandom)?;
    Ok(data)
}

fn ctx(t: Duration) -> context::Context {
    context::with_timeout(t.as_nanos() as i64)
}

macro_rules! call {
    ($self:ident, $method:ident, $name:literal, $req:expr, $t:expr) => {
        $self
            .client
            .$method(ctx($t), &$req)
            .map_err(|source| AgentError::Call { call: $name, source })
    };
}

impl Agent {
    /// Connects, retrying until the agent listens (the guest may still be booting) or `timeout` passes.
    /// Connects, retrying until the agent answers (the guest may still be booting) or `timeout` passes.
    pub fn connect(uds: &Path, timeout: Duration) -> Result<Agent, AgentError> {
        let client = hull_agent_protocol::client::connect(uds, timeout)?;
        Ok(Agent {
            client,
            uds: uds.to_path_buf(),
        })
    }

    pub fn version(&self) -> Result<VersionResponse, AgentError> {
        call!(self, version, "Version", VersionRequest::new(), SHORT)
    }

    pub fn sync_clock(&self) -> Result<(), AgentError> {
        let mut r = SyncClockRequest::new();
        r.unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        call!(self, sync_clock, "SyncClock", r, SHORT).map(drop)
    }

    /// Reseeds the guest kernel's RNG with [`ENTROPY_BYTES`] from the host's getrandom (AddEntropy): a VM
    /// restored from a snapshot shares its RNG state with every other VM restored from it until then.
    pub fn add_entropy(&self) -> Result<(), AgentError> {
        let mut r = AddEntropyRequest::new();
        r.data = host_random(ENTROPY_BYTES)?;
        call!(self, add_entropy, "AddEntropy", r, SHORT).map(drop)
    }

    pub fn configure_network(&self, r: ConfigureNetworkRequest) -> Result<(), AgentError> {
        call!(self, configure_network, "ConfigureNetwork", r, SHORT).map(drop)
    }

    pub fn create(&self, r: CreateContainerRequest) -> Result<(), AgentError> {
        call!(self, create_container, "CreateContainer", r, Duration::from_secs(120)).map(drop)
    }

    pub fn start(&self, id: &str) -> Result<(), AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        call!(self, start_container, "StartContainer", r, SHORT).map(drop)
    }

    /// Starts another process in a running container (`process_json`: an OCI `process` object).
    pub fn exec(&self, id: &str, exec: &str, process_json: Vec<u8>, stdio: StdioConfig) -> Result<(), AgentError> {
        let mut r = ExecProcessRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        r.oci_process_json = process_json;
        r.stdio = Some(stdio).into();
        call!(self, exec_process, "ExecProcess", r, SHORT).map(drop)
    }

    pub fn list_processes(&self, id: &str) -> Result<ListProcessesResponse, AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        call!(self, list_processes, "ListProcesses", r, SHORT)
    }

    pub fn stats(&self, id: &str) -> Result<StatsContainerResponse, AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        call!(self, stats_container, "StatsContainer", r, SHORT)
    }

    /// New cgroup limits (`resources_json`: an OCI LinuxResources object).
    pub fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), AgentError> {
        let mut r = UpdateResourcesRequest::new();
        r.container_id = id.into();
        r.oci_resources_json = resources_json;
        call!(self, update_resources, "UpdateResources", r, SHORT).map(drop)
    }

    pub fn pause(&self, id: &str) -> Result<(), AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        call!(self, pause_container, "PauseContainer", r, SHORT).map(drop)
    }

    pub fn resume(&self, id: &str) -> Result<(), AgentError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.into();
        call!(self, resume_container, "ResumeContainer", r, SHORT).map(drop)
    }

    /// Blocks until some container of the VM records an OOM kill (no timeout).
    pub fn next_oom(&self) -> Result<OomEvent, AgentError> {
        self.client
            .get_oom_event(context::with_timeout(0), &GetOomEventRequest::new())
            .map_err(|source| AgentError::Call {
                call: "GetOomEvent",
                source,
            })
    }

    pub fn signal(&self, id: &str, exec: &str, signal: u32, all: bool) -> Result<(), AgentError> {
        let mut r = SignalProcessRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        r.signal = signal;
        r.all = all;
        call!(self, signal_process, "SignalProcess", r, SHORT).map(drop)
    }

    /// Blocks until the process ends (no timeout).
    pub fn wait(&self, id: &str, exec: &str) -> Result<WaitProcessResponse, AgentError> {
        let mut r = ProcessRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        self.client
            .wait_process(context::with_timeout(0), &r)
            .map_err(|source| AgentError::Call {
                call: "WaitProcess",
                source,
            })
    }

    pub fn close_stdin(&self, id: &str, exec: &str, total: u64) -> Result<(), AgentError> {
        let mut r = CloseStdinRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        r.total_bytes = total;
        call!(self, close_stdin, "CloseStdin", r, SHORT).map(drop)
    }

    pub fn resize(&self, id: &str, exec: &str, rows: u32, cols: u32) -> Result<(), AgentError> {
        let mut r = ResizeTerminalRequest::new();
        r.container_id = id.into();
        r.exec_id = exec.into();
        r.rows = rows;
        r.columns = cols;
        call!(self, resize_terminal, "ResizeTerminal", r, SHORT).map(drop)
    }

    /// A file given at create, as the container has left it.
    pub fn read_file(&self, id: &str, name: &str) -> Result<Vec<u8>, AgentError> {
        let mut r = ReadFileRequest::new();
        r.container_id = id.into();
        r.name = name.into();
        call!(self, read_file, "ReadFile", r, SHORT).map(|r| r.content)
    }

    pub fn remove(&self, id: &str) -> Result<(), AgentError> {
        let mut r = RemoveContainerRequest::new();
        r.container_id = id.into();
        call!(self, remove_container, "RemoveContainer", r, SHORT).map(drop)
    }

    pub fn shutdown(&self) -> Result<(), AgentError> {
        call!(
            self,
            shutdown,
            "Shutdown",
            ShutdownRequest::new(),
            Duration::from_secs(2)
        )
        .map(drop)
    }

    /// Opens one stdio stream of a process.
    pub fn open_stream(&self, id: &str, exec: &str, stream: Stream) -> Result<UnixStream, AgentError> {
        let mut s = hybrid::connect(&self.uds, STDIO_PORT)?;
        let req = StdioRequest {
            container_id: id.into(),
            exec_id: exec.into(),
            stream,
        };
        // The guest answers the stream request at once; one that never does must not hang the caller.
        let _ = s.set_read_timeout(Some(STDIO_ANSWER_TIMEOUT));
        hull_agent_protocol::stdio::open(&mut s, &req).map_err(|source| AgentError::Stdio {
            stream: stream.as_str(),
            source,
        })?;
        let _ = s.set_read_timeout(None);
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_entropy_sends_fresh_host_bytes_the_agent_accepts() {
        let a = host_random(ENTROPY_BYTES).unwrap();
        let b = host_random(ENTROPY_BYTES).unwrap();
        assert_eq!(a.len(), ENTROPY_BYTES);
        // The agent takes 1 to 512 bytes.
        assert!((1..=512).contains(&ENTROPY_BYTES));
        // Two 64-byte draws are equal, or all zero, with probability 2^-512.
        assert_ne!(a, b);
        assert!(a.iter().any(|x| *x != 0));
    }
}
