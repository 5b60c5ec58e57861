//! The ttrpc service: maps each call of `hull.agent.v1.Agent` onto [`crate::containers::Agent`] and the
//! guest-wide duties in [`crate::pid1`], turning errors into ttrpc statuses (INVALID_ARGUMENT for bad input,
//! NOT_FOUND for unknown ids, FAILED_PRECONDITION for wrong states, INTERNAL otherwise). Requests come from
//! the host over vsock and are validated by the layer below before anything acts on them.

use std::sync::Arc;

use hull_agent_protocol::agent::*;
use hull_agent_protocol::agent_ttrpc;
use hull_agent_protocol::ttrpc::{self, Code, TtrpcContext};

use crate::containers::{Agent, AgentError};

pub struct Service {
    pub agent: Arc<Agent>,
}

fn status(e: AgentError) -> ttrpc::Error {
    let code = match &e {
        AgentError::BadId(_) | AgentError::BadSpec(_) | AgentError::BadDevice(_) => Code::INVALID_ARGUMENT,
        AgentError::NoContainer(_) | AgentError::NoProcess { .. } => Code::NOT_FOUND,
        AgentError::Exists(_) | AgentError::ProcessExists(_) => Code::ALREADY_EXISTS,
        AgentError::BadState(..) => Code::FAILED_PRECONDITION,
        _ => Code::INTERNAL,
    };
    crate::console::log(&format!("request failed: {e}"));
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

fn invalid(msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INVALID_ARGUMENT, msg))
}

type R<T> = ttrpc::Result<T>;

impl agent_ttrpc::Agent for Service {
    fn version(&self, _: &TtrpcContext, _: VersionRequest) -> R<VersionResponse> {
        let mut r = VersionResponse::new();
        r.agent_version = env!("CARGO_PKG_VERSION").into();
        r.protocol_revision = hull_agent_protocol::PROTOCOL_REVISION;
        r.kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into();
        Ok(r)
    }

    fn health(&self, _: &TtrpcContext, _: HealthRequest) -> R<HealthResponse> {
        let mut r = HealthResponse::new();
        r.serving = true;
        r.uptime_ms = self.agent.started.elapsed().as_millis() as u64;
        Ok(r)
    }

    fn sync_clock(&self, _: &TtrpcContext, req: SyncClockRequest) -> R<Empty> {
        crate::pid1::set_clock(req.unix_nanos).map_err(invalid)?;
        Ok(Empty::new())
    }

    fn configure_network(&self, _: &TtrpcContext, req: ConfigureNetworkRequest) -> R<Empty> {
        crate::net::configure(&req).map_err(|e| ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INTERNAL, e)))?;
        Ok(Empty::new())
    }

    fn create_container(&self, _: &TtrpcContext, req: CreateContainerRequest) -> R<Empty> {
        let rootfs = req.rootfs.as_ref().ok_or_else(|| invalid("no rootfs"))?;
        let stdio = req.stdio.clone().unwrap_or_default();
        self.agent
            .create(&req.container_id, &req.oci_spec_json, rootfs, &req.mounts, &req.files, &stdio)
            .map_err(status)?;
        Ok(Empty::new())
    }

    fn start_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        self.agent.start(&req.container_id).map_err(status)?;
        Ok(Empty::new())
    }

    fn exec_process(&self, _: &TtrpcContext, req: ExecProcessRequest) -> R<Empty> {
        let stdio = req.stdio.clone().unwrap_or_default();
        self.agent.exec(&req.container_id, &req.exec_id, &req.oci_process_json, &stdio).map_err(status)?;
        Ok(Empty::new())
    }

    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> R<Empty> {
        self.agent.signal(&req.container_id, &req.exec_id, req.signal, req.all).map_err(status)?;
        Ok(Empty::new())
    }

    fn wait_process(&self, _: &TtrpcContext, req: ProcessRequest) -> R<WaitProcessResponse> {
        let e = self.agent.wait(&req.container_id, &req.exec_id).map_err(status)?;
        let mut r = WaitProcessResponse::new();
        r.exit_code = e.status.code;
        r.signal = e.status.signal;
        r.oom_killed = e.oom_killed;
        r.exited_at_unix_nanos = e.at_unix_nanos;
        Ok(r)
    }

    fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> R<Empty> {
        self.agent.close_stdin(&req.container_id, &req.exec_id, req.total_bytes).map_err(status)?;
        Ok(Empty::new())
    }

    fn resize_terminal(&self, _: &TtrpcContext, req: ResizeTerminalRequest) -> R<Empty> {
        self.agent.resize(&req.container_id, &req.exec_id, req.rows, req.columns).map_err(status)?;
        Ok(Empty::new())
    }

    fn list_processes(&self, _: &TtrpcContext, req: ContainerRequest) -> R<ListProcessesResponse> {
        let mut r = ListProcessesResponse::new();
        for (pid, command) in self.agent.list(&req.container_id).map_err(status)? {
            let mut p = ProcessInfo::new();
            p.pid = pid;
            p.command = command;
            r.processes.push(p);
        }
        Ok(r)
    }

    fn stats_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<StatsContainerResponse> {
        self.agent.stats(&req.container_id).map_err(status)
    }

    fn update_resources(&self, _: &TtrpcContext, req: UpdateResourcesRequest) -> R<Empty> {
        self.agent.update(&req.container_id, &req.oci_resources_json).map_err(status)?;
        Ok(Empty::new())
    }

    fn pause_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        self.agent.pause(&req.container_id, true).map_err(status)?;
        Ok(Empty::new())
    }

    fn resume_container(&self, _: &TtrpcContext, req: ContainerRequest) -> R<Empty> {
        self.agent.pause(&req.container_id, false).map_err(status)?;
        Ok(Empty::new())
    }

    fn get_oom_event(&self, _: &TtrpcContext, _: GetOomEventRequest) -> R<OomEvent> {
        let mut r = OomEvent::new();
        r.container_id = self.agent.next_oom();
        Ok(r)
    }

    fn read_file(&self, _: &TtrpcContext, req: ReadFileRequest) -> R<ReadFileResponse> {
        let mut r = ReadFileResponse::new();
        r.content = self.agent.read_file(&req.container_id, &req.name).map_err(status)?;
        Ok(r)
    }

    fn remove_container(&self, _: &TtrpcContext, req: RemoveContainerRequest) -> R<Empty> {
        self.agent.remove(&req.container_id).map_err(status)?;
        Ok(Empty::new())
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> R<Empty> {
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
pub fn serve(agent: Arc<Agent>) -> Result<ttrpc::Server, ttrpc::Error> {
    let service: Arc<dyn agent_ttrpc::Agent + Send + Sync> = Arc::new(Service { agent });
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
