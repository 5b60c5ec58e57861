//! The task events containerd expects (create, start, exec-added, exec-started, exit, delete, OOM, paused,
//! resumed), built from typed values and published to containerd's event service. A failed publish is
//! logged and otherwise ignored: containerd learns the same facts from the calls' answers.

use containerd_shim::protos::api::Mount;
use containerd_shim::protos::events::task::*;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

use crate::process::StdioAddrs;

pub struct Events {
    namespace: String,
    publisher: RemotePublisher,
}

impl Events {
    pub fn new(namespace: String, publisher: RemotePublisher) -> Events {
        Events { namespace, publisher }
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
        {
            log::warn!("publishing {topic}: {e}");
        }
    }

    pub fn created(&self, id: &str, bundle: &str, rootfs: &[Mount], stdio: &StdioAddrs, pid: u32) {
        let mut e = TaskCreate::new();
        e.container_id = id.into();
        e.bundle = bundle.into();
        e.rootfs = rootfs.to_vec();
        let mut io = TaskIO::new();
        io.stdin = stdio.stdin.clone();
        io.stdout = stdio.stdout.clone();
        io.stderr = stdio.stderr.clone();
        io.terminal = stdio.terminal;
        e.io = Some(io).into();
        e.pid = pid;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(e));
    }

    pub fn started(&self, id: &str, exec: &str, pid: u32) {
        if exec.is_empty() {
            let mut e = TaskStart::new();
            e.container_id = id.into();
            e.pid = pid;
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(e));
        } else {
            let mut e = TaskExecStarted::new();
            e.container_id = id.into();
            e.exec_id = exec.into();
            e.pid = pid;
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e));
        }
    }

    pub fn exec_added(&self, id: &str, exec: &str) {
        let mut e = TaskExecAdded::new();
        e.container_id = id.into();
        e.exec_id = exec.into();
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e));
    }

    pub fn exited(&self, id: &str, exec: &str, pid: u32, status: u32, at: Timestamp) {
        let mut e = TaskExit::new();
        e.container_id = id.into();
        e.id = if exec.is_empty() { id.into() } else { exec.into() };
        e.pid = pid;
        e.exit_status = status;
        e.exited_at = Some(at).into();
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e));
    }

    pub fn deleted(&self, id: &str, pid: u32, status: u32, at: Timestamp) {
        let mut e = TaskDelete::new();
        e.container_id = id.into();
        e.pid = pid;
        e.exit_status = status;
        e.exited_at = Some(at).into();
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(e));
    }

    pub fn oom(&self, id: &str) {
        let mut e = TaskOOM::new();
        e.container_id = id.into();
        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(e));
    }

    pub fn paused(&self, id: &str) {
        let mut e = TaskPaused::new();
        e.container_id = id.into();
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e));
    }

    pub fn resumed(&self, id: &str) {
        let mut e = TaskResumed::new();
        e.container_id = id.into();
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e));
    }
}
