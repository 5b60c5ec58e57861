//! The ttrpc service: maps each call of `hull.agent.v1.Agent` onto [`crate::containers::Agent`] and the
//! guest-wide duties in [`crate::pid1`], turning errors into ttrpc statuses (INVALID_ARGUMENT for bad input,
//! NOT_FOUND for unknown ids, FAILED_PRECONDITION for wrong states, PERMISSION_DENIED for what the boundary
//! refuses, INTERNAL otherwise).
//!
//! Every call passes [`admit`] first: the connection's peer must be the host (vsock CID 2, checked with
//! `getpeername` on the connection ttrpc hands the call; anything else is refused and its connection shut),
//! and the call must be in the agent policy the host fixed at boot (`hull.policy=` on the kernel command
//! line, parsed once in `main.rs`, held here, changed by nothing). Requests are then validated by the layer
//! below before anything acts on them.

use std::sync::Arc;

use hull_agent_protocol::agent::*;
use hull_agent_protocol::agent_ttrpc;
use hull_agent_protocol::policy::{Call, Policy};
use hull_agent_protocol::ttrpc::{self, Code, TtrpcContext};

use crate::containers::{Agent, AgentError};

pub struct Service {
    pub agent: Arc<Agent>,
    /// Fixed at start; no call changes it.
    pub policy: Policy,
}

fn denied(msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(Code::PERMISSION_DENIED, msg))
}

/// The boundary, once per call: the peer of the connection (`fd`, which ttrpc keeps open while the call
/// runs: the call's context holds the connection's response channel) must be the host, and `call` must be
/// in `policy`. A refusal is logged, naming the call and the container if any.
fn admit(policy: &Policy, fd: std::os::fd::RawFd, call: Call, container: &str) -> R<()> {
    if !crate::peer::admit(fd, call.name()) {
        return Err(denied(format!("{call}: only the host is served")));
    }
    admit_call(policy, call, container)
}

/// The policy half of [`admit`].
fn admit_call(policy: &Policy, call: Call, container: &str) -> R<()> {
    if policy.allows(call) {
        return Ok(());
    }
    let id: String = container.chars().take(64).collect();
    let on = if id.is_empty() {
        String::new()
    } else {
        format!(" (container {id})")
    };
    crate::console::log(&format!("refused {call}{on}: the agent policy does not serve it"));
    Err(denied(format!("{call} is refused by the agent policy")))
}

fn status(e: AgentError) -> ttrpc::Error {
    let code = match &e {
        AgentError::BadId(_) | AgentError::BadSpec(_) | AgentError::BadDevice(_) => Code::INVALID_ARGUMENT,
        AgentError::NoContainer(_) | AgentError::NoProcess { .. } => Code::NOT_FOUND,
        AgentError::Exists(_) | AgentError::ProcessExists(_) => Code::ALREADY_EXISTS,
        AgentError::BadState(..) => Code::FAILED_PRECONDITION,
        AgentError::NotRegistered { .. } => Code::PERMISSION_DENIED,
        _ => Code::INTERNAL,
    };
    crate::console::log(&format!("request failed: {e}"));
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

/// INVALID_ARGUMENT for a request outside 1 to 512 bytes, INTERNAL when the guest kernel refused the bytes.
fn entropy_status(e: crate::pid1::EntropyError) -> ttrpc::Error {
    let code = if e.is_bad_request() {
        Code::INVALID_ARGUMENT
    } else {
        Code::INTERNAL
    };
    crate::console::log(&format!("request failed: {e}"));
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

fn invalid(msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INVALID_ARGUMENT, msg))
}

type R<T> = ttrpc::Result<T>;

impl agent_ttrpc::Agent for Service {
    fn version(&self, ctx: &TtrpcContext, _: VersionRequest) -> R<VersionResponse> {
        admit(&self.policy, ctx.fd, Call::Version, "")?;
        let mut r = VersionResponse::new();
        r.agent_version = env!("CARGO_PKG_VERSION").into();
        r.protocol_revision = hull_agent_protocol::PROTOCOL_REVISION;
        r.kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into();
        Ok(r)
    }

    fn health(&self, ctx: &TtrpcContext, _: HealthRequest) -> R<HealthResponse> {
        admit(&self.policy, ctx.fd, Call::Health, "")?;
        let mut r = HealthResponse::new();
        r.serving = true;
        r.uptime_ms = self.agent.started.elapsed().as_millis() as u64;
        Ok(r)
    }

    fn sync_clock(&self, ctx: &TtrpcContext, req: SyncClockRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::SyncClock, "")?;
        crate::pid1::set_clock(req.unix_nanos).map_err(invalid)?;
        Ok(Empty::new())
    }

    fn add_entropy(&self, ctx: &TtrpcContext, req: AddEntropyRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::AddEntropy, "")?;
        crate::pid1::add_entropy(&req.data).map_err(entropy_status)?;
        Ok(Empty::new())
    }

    fn configure_network(&self, ctx: &TtrpcContext, req: ConfigureNetworkRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::ConfigureNetwork, "")?;
        crate::net::configure(&req).map_err(|e| ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, e)))?;
        Ok(Empty::new())
    }

    fn create_container(&self, ctx: &TtrpcContext, req: CreateContainerRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::CreateContainer, &req.container_id)?;
        let rootfs = req.rootfs.as_ref().ok_or_else(|| invalid("no rootfs"))?;
        let stdio = req.stdio.clone().unwrap_or_default();
        self.agent
            .create(
                &req.container_id,
                &req.oci_spec_json,
                rootfs,
                &req.mounts,
                &req.files,
                &stdio,
            )
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn start_container(&self, ctx: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::StartContainer, &req.container_id)?;
        self.agent.start(&req.container_id).map_err(status)?;
        Ok(Empty::new())
    }

    fn exec_process(&self, ctx: &TtrpcContext, req: ExecProcessRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::ExecProcess, &req.container_id)?;
        let stdio = req.stdio.clone().unwrap_or_default();
        self.agent
            .exec(&req.container_id, &req.exec_id, &req.oci_process_json, &stdio)
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn signal_process(&self, ctx: &TtrpcContext, req: SignalProcessRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::SignalProcess, &req.container_id)?;
        self.agent
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn wait_process(&self, ctx: &TtrpcContext, req: ProcessRequest) -> R<WaitProcessResponse> {
        admit(&self.policy, ctx.fd, Call::WaitProcess, &req.container_id)?;
        let e = self.agent.wait(&req.container_id, &req.exec_id).map_err(status)?;
        let mut r = WaitProcessResponse::new();
        r.exit_code = e.status.code;
        r.signal = e.status.signal;
        r.oom_killed = e.oom_killed;
        r.exited_at_unix_nanos = e.at_unix_nanos;
        Ok(r)
    }

    fn close_stdin(&self, ctx: &TtrpcContext, req: CloseStdinRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::CloseStdin, &req.container_id)?;
        self.agent
            .close_stdin(&req.container_id, &req.exec_id, req.total_bytes)
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn resize_terminal(&self, ctx: &TtrpcContext, req: ResizeTerminalRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::ResizeTerminal, &req.container_id)?;
        self.agent
            .resize(&req.container_id, &req.exec_id, req.rows, req.columns)
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn list_processes(&self, ctx: &TtrpcContext, req: ContainerRequest) -> R<ListProcessesResponse> {
        admit(&self.policy, ctx.fd, Call::ListProcesses, &req.container_id)?;
        let mut r = ListProcessesResponse::new();
        for (pid, command) in self.agent.list(&req.container_id).map_err(status)? {
            let mut p = ProcessInfo::new();
            p.pid = pid;
            p.command = command;
            r.processes.push(p);
        }
        Ok(r)
    }

    fn stats_container(&self, ctx: &TtrpcContext, req: ContainerRequest) -> R<StatsContainerResponse> {
        admit(&self.policy, ctx.fd, Call::StatsContainer, &req.container_id)?;
        self.agent.stats(&req.container_id).map_err(status)
    }

    fn update_resources(&self, ctx: &TtrpcContext, req: UpdateResourcesRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::UpdateResources, &req.container_id)?;
        self.agent
            .update(&req.container_id, &req.oci_resources_json)
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn pause_container(&self, ctx: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::PauseContainer, &req.container_id)?;
        self.agent.pause(&req.container_id, true).map_err(status)?;
        Ok(Empty::new())
    }

    fn resume_container(&self, ctx: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::ResumeContainer, &req.container_id)?;
        self.agent.pause(&req.container_id, false).map_err(status)?;
        Ok(Empty::new())
    }

    fn get_oom_event(&self, ctx: &TtrpcContext, _: GetOomEventRequest) -> R<OomEvent> {
        admit(&self.policy, ctx.fd, Call::GetOomEvent, "")?;
        let mut r = OomEvent::new();
        r.container_id = self.agent.next_oom();
        Ok(r)
    }

    fn read_file(&self, ctx: &TtrpcContext, req: ReadFileRequest) -> R<ReadFileResponse> {
        admit(&self.policy, ctx.fd, Call::ReadFile, &req.container_id)?;
        let mut r = ReadFileResponse::new();
        r.content = self.agent.read_file(&req.container_id, &req.name).map_err(status)?;
        Ok(r)
    }

    fn remove_container(&self, ctx: &TtrpcContext, req: RemoveContainerRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::RemoveContainer, &req.container_id)?;
        self.agent.remove(&req.container_id).map_err(status)?;
        Ok(Empty::new())
    }

    fn shutdown(&self, ctx: &TtrpcContext, _: ShutdownRequest) -> R<Empty> {
        admit(&self.policy, ctx.fd, Call::Shutdown, "")?;
        let agent = self.agent.clone();
        // Answer first; power off a moment later from another thread.
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            agent.remove_all();
            crate::pid1::power_off();
        });
        Ok(Empty::new())
    }
}

/// Builds and starts the ttrpc server on guest vsock port 1024.
pub fn serve(agent: Arc<Agent>, policy: Policy) -> Result<ttrpc::Server, ttrpc::Error> {
    let service: Arc<dyn agent_ttrpc::Agent + Send + Sync> = Arc::new(Service { agent, policy });
    let mut server = ttrpc::Server::new()
        .bind(&format!("vsock://-1:{}", hull_agent_protocol::AGENT_PORT))?
        .register_service(agent_ttrpc::create_agent(service))
        // Per connection: blocking calls (WaitProcess, GetOomEvent) each hold a thread.
        .set_thread_count_min(2)
        .set_thread_count_default(4)
        .set_thread_count_max(32);
    server.start()?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: R<()>) -> Option<Code> {
        match r {
            Ok(()) => None,
            Err(ttrpc::Error::RpcStatus(s)) => Some(s.code()),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn every_call_the_policy_refuses_is_permission_denied() {
        for &call in Call::ALL {
            assert_eq!(
                code(admit_call(&Policy::none(), call, "c1")),
                Some(Code::PERMISSION_DENIED),
                "{call}"
            );
            assert_eq!(code(admit_call(&Policy::all(), call, "c1")), None, "{call}");
            let mut p = Policy::all();
            p.deny(call);
            assert_eq!(code(admit_call(&p, call, "")), Some(Code::PERMISSION_DENIED), "{call}");
            for &other in Call::ALL.iter().filter(|c| **c != call) {
                assert_eq!(code(admit_call(&p, other, "")), None, "{other} with {call} refused");
            }
        }
        let no_exec = Policy::parse("-ExecProcess").unwrap();
        assert_eq!(
            code(admit_call(&no_exec, Call::ExecProcess, "c1")),
            Some(Code::PERMISSION_DENIED)
        );
        assert_eq!(code(admit_call(&no_exec, Call::CreateContainer, "c1")), None);
    }

    #[test]
    fn a_peer_that_is_not_the_host_is_refused_whatever_the_policy() {
        use std::os::fd::AsRawFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        for &call in Call::ALL {
            assert_eq!(
                code(admit(&Policy::all(), a.as_raw_fd(), call, "")),
                Some(Code::PERMISSION_DENIED),
                "{call}"
            );
        }
    }

    #[test]
    fn refusing_to_read_an_unregistered_file_is_permission_denied() {
        let e = AgentError::NotRegistered {
            container: "c1".into(),
            name: "f0".into(),
        };
        match status(e) {
            ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), Code::PERMISSION_DENIED),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn entropy_requests_of_the_wrong_size_are_invalid_argument() {
        use crate::pid1::{add_entropy, EntropyError};
        for data in [vec![], vec![1u8; 513]] {
            let e = add_entropy(&data).unwrap_err();
            match entropy_status(e) {
                ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), Code::INVALID_ARGUMENT, "{} bytes", data.len()),
                e => panic!("{e:?}"),
            }
        }
        let failed = EntropyError::Add(std::io::Error::from_raw_os_error(libc::EPERM));
        match entropy_status(failed) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INTERNAL);
                assert!(s.message().contains("RNDADDENTROPY"), "{}", s.message());
            }
            e => panic!("{e:?}"),
        }
    }

    /// Every method of the service starts with `admit` for its own call: a new method cannot forget it.
    #[test]
    fn every_method_is_admitted_first() {
        let src = include_str!("server.rs");
        let body =
            &src[src.find("impl agent_ttrpc::Agent for Service").unwrap()..src.find("/// Builds and starts").unwrap()];
        let mut methods = 0;
        for (i, line) in body.lines().enumerate() {
            let Some(rest) = line.trim_start().strip_prefix("fn ") else {
                continue;
            };
            methods += 1;
            let name = &rest[..rest.find('(').unwrap()];
            let camel: String = name.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
            let next = body.lines().nth(i + 1).unwrap().trim();
            assert!(
                next.starts_with(&format!("admit(&self.policy, ctx.fd, Call::{camel},")),
                "{name}: {next}"
            );
        }
        assert_eq!(
            methods,
            Call::ALL.len() - hull_agent_protocol::policy::STREAM_CALLS.len()
        );
    }
}
