//! The task service containerd talks to (task API v2 over ttrpc), as an adapter only: each call's request
//! becomes a call into the typed core ([`Tasks`]), and its result a reply. Errors are [`ShimError`]s, which
//! become ttrpc statuses in one place ([`crate::error`]). The request's fields are containerd's and are
//! checked by the core, not here; the runtime options are decoded here without trusting their bytes.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim::api::*;
use containerd_shim::protos::protobuf::CodedInputStream;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};

use crate::create::CreateTask;
use crate::error::ShimError;
use crate::events::Events;
use crate::process::StdioAddrs;
use crate::tasks::Tasks;

#[derive(Clone)]
pub struct Service(Arc<Tasks>);

impl Service {
    pub fn new(
        namespace: String,
        publisher: containerd_shim::publisher::RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Service {
        Service(Arc::new(Tasks::new(Events::new(namespace, publisher), exit)))
    }
}

/// The `ConfigPath` of the runtime options CRI passes (containerd's `runtimeoptions.v1.Options`).
fn config_path(req: &CreateTaskRequest) -> Option<PathBuf> {
    let any = req.options.as_ref()?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    // Field 2 (config_path), a length-delimited string.
    let mut is = CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = is.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        if wire == 2 {
            let s = is.read_string().ok()?;
            if field == 2 && !s.is_empty() {
                return Some(PathBuf::from(s));
            }
        } else if is
            .skip_field(containerd_shim::protos::protobuf::rt::WireType::new(wire)?)
            .is_err()
        {
            return None;
        }
    }
    None
}

impl Task for Service {
    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        log::info!("create {} (bundle {})", req.id, req.bundle);
        let task = CreateTask {
            id: &req.id,
            bundle: &req.bundle,
            rootfs: &req.rootfs,
            stdio: StdioAddrs {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            config_path: config_path(&req),
        };
        let pid = self.0.create(&task).inspect_err(|e: &ShimError| {
            log::error!("create {}: {e}", req.id);
        })?;
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let mut resp = StartResponse::new();
        resp.pid = self.0.start(&req.id, &req.exec_id)?;
        Ok(resp)
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let exited = self.0.delete(&req.id, &req.exec_id)?;
        let mut resp = DeleteResponse::new();
        resp.pid = exited.pid;
        resp.exit_status = exited.status;
        resp.exited_at = Some(exited.at).into();
        Ok(resp)
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let mut resp = PidsResponse::new();
        for pid in self.0.pids(&req.id)? {
            let mut info = containerd_shim::protos::api::ProcessInfo::new();
            info.pid = pid;
            resp.processes.push(info);
        }
        Ok(resp)
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.0.pause(&req.id)?;
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.0.resume(&req.id)?;
        Ok(Empty::new())
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.0.kill(&req.id, &req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let stdio = StdioAddrs {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let spec = req.spec.as_ref().map(|a| a.value.as_slice()).unwrap_or_default();
        self.0.add_exec(&req.id, &req.exec_id, spec, &stdio)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.0.resize_pty(&req.id, &req.exec_id, req.height, req.width)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.0.close_io(&req.id, &req.exec_id, req.stdin)?;
        Ok(Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources = req.resources.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        self.0.update(&req.id, resources)?;
        Ok(Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let (status, at) = self.0.wait(&req.id, &req.exec_id)?;
        let mut resp = WaitResponse::new();
        resp.exit_status = status;
        resp.exited_at = Some(at).into();
        Ok(resp)
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let mut resp = StatsResponse::new();
        resp.stats = Some(self.0.stats(&req.id)?).into();
        Ok(resp)
    }

    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let p = self.0.state(&req.id, &req.exec_id)?;
        let mut resp = StateResponse::new();
        resp.id = req.id.clone();
        resp.exec_id = req.exec_id.clone();
        resp.bundle = p.bundle;
        resp.pid = p.pid;
        resp.status = p.status.into();
        resp.stdin = p.stdin;
        resp.stdout = p.stdout;
        resp.stderr = p.stderr;
        resp.terminal = p.terminal;
        if let Some((status, at)) = p.exit {
            resp.exit_status = status;
            resp.exited_at = Some(at).into();
        }
        Ok(resp)
    }

    fn connect(&self, _: &TtrpcContext, _req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = self.0.vmm_pid();
        resp.version = env!("CARGO_PKG_VERSION").into();
        Ok(resp)
    }

    fn shutdown(&self, _: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.0.maybe_finish();
        Ok(Empty::new())
    }
}
