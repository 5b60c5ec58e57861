//! The task service containerd talks to (task API v2 over ttrpc): every Task call, mapped onto the pod's
//! VM and its hull-agent, with the task events containerd expects.
//!
//! State: one [`Pod`] (the VM, booted at the first Create) and the containers it runs, each with its init
//! process and execs. Lifecycle facts from containerd 1.6 shape it: Wait may come before Start (it blocks on
//! the process's exit, whatever its state); Kill and Wait after the exit succeed, and the exit status is kept
//! until Delete; Shutdown ends the shim only when no container is left, and the VM goes with the last one.
//! A VM that dies (its VMM killed or crashed) ends every process still running with status 137.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::*;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::events::task::*;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, Task, TtrpcContext, TtrpcResult};
use hull_agent_protocol::agent::{CreateContainerRequest, File as AgentFile, Storage};
use hull_runtime::agent::Agent;

use crate::config::ShimConfig;
use crate::guest_spec;
use crate::pod::{BootRequest, Pod, Spawner};
use crate::process::Proc;
use crate::rootfs;
use crate::shim::VM_RECORD;

/// Exit status reported when the VM died under a process (as for SIGKILL).
const VM_GONE: u32 = 137;

struct Container {
    bundle: String,
    init: Proc,
    execs: HashMap<String, Proc>,
    /// Disk keys this container holds in the pod.
    disks: Vec<String>,
    /// Read-write file mounts: the agent's file name and the host file it goes back to at exit.
    write_back: Vec<(String, PathBuf)>,
}

impl Container {
    fn proc_mut(&mut self, exec: &str) -> Option<&mut Proc> {
        if exec.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec)
        }
    }
}

#[derive(Default)]
struct State {
    pod: Option<Pod>,
    containers: HashMap<String, Container>,
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    state: Mutex<State>,
    changed: Condvar,
    spawner: Spawner,
    /// Containers whose OOM kill was published (the agent's OOM watch and a process's wait status can both
    /// tell; containerd hears it once).
    oom_reported: Mutex<std::collections::HashSet<String>>,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

fn err(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

fn not_found(id: &str, exec: &str) -> ttrpc::Error {
    if exec.is_empty() {
        err(Code::NOT_FOUND, format!("container {id} not found"))
    } else {
        err(Code::NOT_FOUND, format!("process {exec} of container {id} not found"))
    }
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

impl Service {
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service(Arc::new(Inner {
            namespace,
            publisher,
            exit,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            spawner: Spawner::new(),
            oom_reported: Mutex::new(Default::default()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .0
            .publisher
            .publish(Context::default(), topic, &self.0.namespace, event)
        {
            log::warn!("publishing {topic}: {e}");
        }
    }

    fn agent(&self) -> TtrpcResult<Arc<Agent>> {
        let st = self.lock();
        match &st.pod {
            Some(p) if !p.dead => Ok(p.agent.clone()),
            Some(_) => Err(err(Code::FAILED_PRECONDITION, "the VM is gone")),
            None => Err(err(Code::FAILED_PRECONDITION, "no VM")),
        }
    }

    /// The PID containerd sees for every process: the VMM's (the guest's PIDs mean nothing on the host).
    fn vmm_pid(st: &State) -> u32 {
        st.pod.as_ref().map_or(0, |p| p.vm.vmm_pid())
    }

    /// Records an exit (once), wakes waiters, publishes TaskExit.
    fn exited(&self, id: &str, exec: &str, status: u32) {
        let (pid, at) = {
            let mut st = self.lock();
            let pid = Self::vmm_pid(&st);
            let Some(p) = st.containers.get_mut(id).and_then(|c| c.proc_mut(exec)) else {
                return;
            };
            if p.exit.is_some() {
                return;
            }
            let at = now();
            p.exit = Some((status, at.clone()));
            p.status = Status::STOPPED;
            (pid, at)
        };
        self.0.changed.notify_all();
        let mut e = TaskExit::new();
        e.container_id = id.into();
        e.id = if exec.is_empty() { id.into() } else { exec.into() };
        e.pid = pid;
        e.exit_status = status;
        e.exited_at = Some(at).into();
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e));
    }

    /// Publishes /tasks/oom for container `id`, once.
    fn oom(&self, id: &str) {
        if !self
            .0
            .oom_reported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
        {
            return;
        }
        let mut e = TaskOOM::new();
        e.container_id = id.into();
        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(e));
    }

    /// Follows a started process: its exit status from the agent, after its output is drained.
    fn watch(&self, id: &str, exec: &str, uds: PathBuf) {
        let me = self.clone();
        let (id, exec) = (id.to_string(), exec.to_string());
        std::thread::spawn(move || {
            // A broken connection while the VM still runs is retried a few times: reporting 137 for a
            // process that still runs would have it restarted next to itself.
            let mut attempts = 0;
            let status = loop {
                let r = Agent::connect(&uds, Duration::from_secs(10)).and_then(|a| a.wait(&id, &exec));
                attempts += 1;
                match r {
                    Err(e) if attempts < 5 && me.vm_running() => {
                        log::warn!("waiting for {id}/{exec}: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    r => break r,
                }
            };
            let status = status.map(|w| {
                if w.oom_killed {
                    me.oom(&id);
                }
                exit_status(w.exit_code, w.signal)
            });
            if exec.is_empty() && status.is_ok() {
                me.write_back_files(&id, &uds);
            }
            let outputs = {
                let mut st = me.lock();
                st.containers
                    .get_mut(&id)
                    .and_then(|c| c.proc_mut(&exec))
                    .map(|p| std::mem::take(&mut p.outputs))
                    .unwrap_or_default()
            };
            Proc::drain(outputs, Duration::from_secs(5));
            let status = match status {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("waiting for {id}/{exec}: {e}");
                    VM_GONE
                }
            };
            me.exited(&id, &exec, status);
        });
    }

    /// Copies the container's read-write file mounts back to their host files (before its exit is
    /// reported, so whoever reacts to the exit, like the kubelet reading the termination log, finds them).
    fn write_back_files(&self, id: &str, uds: &Path) {
        let files = {
            let st = self.lock();
            st.containers.get(id).map(|c| c.write_back.clone()).unwrap_or_default()
        };
        if files.is_empty() {
            return;
        }
        let agent = match Agent::connect(uds, Duration::from_secs(10)) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("container {id}: file mounts not written back: {e}");
                return;
            }
        };
        for (name, host) in files {
            match agent.read_file(id, &name) {
                Ok(content) => {
                    if std::fs::read(&host).ok().as_deref() != Some(content.as_slice()) {
                        if let Err(e) = write_regular_file(&host, &content) {
                            log::warn!("container {id}: writing back {}: {e}", host.display());
                        }
                    }
                }
                Err(e) => log::warn!("container {id}: reading back {}: {e}", host.display()),
            }
        }
    }

    /// Whether the pod's VM still runs.
    fn vm_running(&self) -> bool {
        let mut st = self.lock();
        st.pod.as_mut().is_some_and(|p| !p.dead && p.vm.alive())
    }

    /// Watches the VM: when its process ends, every process still running has exited with 137.
    fn watch_vm(&self) {
        let me = self.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let victims: Vec<(String, String)> = {
                let mut st = me.lock();
                let Some(pod) = st.pod.as_mut() else { return };
                if pod.vm.alive() {
                    continue;
                }
                pod.dead = true;
                log::warn!("the VM ended; reporting its processes as killed");
                st.containers
                    .iter()
                    .flat_map(|(id, c)| {
                        std::iter::once((id.clone(), String::new(), &c.init))
                            .chain(c.execs.iter().map(move |(e, p)| (id.clone(), e.clone(), p)))
                    })
                    .filter(|(_, _, p)| p.exit.is_none())
                    .map(|(id, e, _)| (id, e))
                    .collect()
            };
            for (id, exec) in victims {
                me.exited(&id, &exec, VM_GONE);
            }
            return;
        });
    }

    /// Watches for OOM kills in the guest.
    fn watch_oom(&self, uds: PathBuf) {
        let me = self.clone();
        std::thread::spawn(move || {
            let Ok(agent) = Agent::connect(&uds, Duration::from_secs(10)) else {
                return;
            };
            while let Ok(ev) = agent.next_oom() {
                me.oom(&ev.container_id);
            }
        });
    }

    fn create_inner(&self, req: &CreateTaskRequest) -> Result<u32, String> {
        hull_agent_protocol::ids::validate_id(&req.id).map_err(|e| format!("container id {:?}: {e}", req.id))?;
        crate::process::check_stdio_uris(&req.stdin, &req.stdout, &req.stderr)?;
        let bundle = Path::new(&req.bundle);
        let spec_text = std::fs::read_to_string(bundle.join("config.json"))
            .map_err(|e| format!("reading {}/config.json: {e}", req.bundle))?;
        let spec: serde_json::Value =
            serde_json::from_str(&spec_text).map_err(|e| format!("the bundle's config.json: {e}"))?;
        let is_sandbox = spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox";
        let cfg = ShimConfig::load(config_path(req).as_deref()).map_err(|e| e.to_string())?;
        let g = guest_spec::for_guest(spec).map_err(|e| format!("the OCI spec: {e}"))?;
        for w in &g.warnings {
            log::warn!("container {}: {w}", req.id);
        }
        let src = rootfs::source(&req.rootfs, bundle, g.spec["root"]["path"].as_str()).map_err(|e| e.to_string())?;
        if g.volumes.len() > crate::config::MAX_SLOTS {
            return Err(format!(
                "{} directory mounts; a VM takes at most {} (each is a disk of its own)",
                g.volumes.len(),
                crate::config::MAX_SLOTS
            ));
        }

        let mut st = self.lock();
        if st.containers.contains_key(&req.id) {
            return Err(format!("container {} already exists", req.id));
        }
        // A new VM gets its directory first: images made for this container alone go there, and go with it.
        let new_dir = match &st.pod {
            Some(_) => None,
            None => {
                std::fs::create_dir_all(&cfg.work_dir).map_err(|e| format!("{}: {e}", cfg.work_dir.display()))?;
                Some(
                    hull_runtime::guard::RunDir::create_in(&cfg.work_dir)
                        .map_err(|e| format!("creating the VM directory: {e}"))?,
                )
            }
        };
        let work = match (&st.pod, &new_dir) {
            (Some(p), _) => p.dir.path().to_path_buf(),
            (None, Some(d)) => d.path().to_path_buf(),
            (None, None) => return Err("internal: no VM directory".into()),
        };
        let image = rootfs::prepare(&src, &cfg.image_cache, &work, &format!("rootfs-{}", req.id))
            .map_err(|e| format!("preparing the rootfs image: {e}"))?;
        if let Some(dir) = new_dir {
            let (cpus, mem) = guest_spec::vm_size(&g.spec, &cfg);
            let dns = g
                .spec
                .get("mounts")
                .and_then(|m| m.as_array())
                .and_then(|ms| {
                    ms.iter()
                        .find(|m| m["destination"] == "/etc/resolv.conf")
                        .and_then(|m| {
                            let name = m["source"].as_str()?.strip_prefix("hull-file:")?;
                            let f = g.files.iter().find(|f| f.name == name)?;
                            Some(crate::network::nameservers(&String::from_utf8_lossy(&f.content)))
                        })
                })
                .unwrap_or_default();
            let pod = Pod::boot(
                BootRequest {
                    cfg: &cfg,
                    dir,
                    rootfs: hull_runtime::image::RootfsImage {
                        path: image.image.path.clone(),
                        fstype: image.image.fstype,
                    },
                    rootfs_key: image.key.clone(),
                    cpus,
                    mem_mib: mem,
                    // A sandbox's later containers bring their images and volumes; a lone container only its
                    // own volumes.
                    slots: if is_sandbox { cfg.pod_slots } else { g.volumes.len() },
                    netns: g.netns.clone(),
                    hostname: g.hostname.clone(),
                    dns,
                },
                &self.0.spawner,
            )
            .map_err(|e| format!("starting the VM: {e}"))?;
            let uds = pod.vm.vsock_uds().to_path_buf();
            st.pod = Some(pod);
            self.watch_vm();
            self.watch_oom(uds);
        }
        let st = &mut *st;
        let pod = st.pod.as_mut().ok_or("no VM")?;
        if pod.dead {
            return Err("the pod's VM is gone".into());
        }
        let mut held = Vec::new();
        let result = (|| -> Result<Proc, String> {
            let device = pod
                .disk_for(&image.key, &image.image.path, true)
                .map_err(|e| e.to_string())?;
            held.push(image.key.clone());
            let mut rootfs = Storage::new();
            rootfs.device = device;
            rootfs.fstype = image.image.fstype.into();
            rootfs.read_only = true;
            rootfs.writable_overlay = true;
            let mut creq = CreateContainerRequest::new();
            creq.container_id = req.id.clone();
            creq.rootfs = Some(rootfs).into();
            for (i, v) in g.volumes.iter().enumerate() {
                let key = format!("vol:{}", v.source.display());
                // Another container of the pod may have this volume's disk already: no second copy then.
                let (device, fstype) = match pod.reuse_disk(&key) {
                    Some(device) => (device, "ext4"),
                    None => {
                        let vol =
                            hull_runtime::image::prepare(&v.source, pod.dir.path(), &format!("vol-{}-{i}", req.id))
                                .map_err(|e| format!("packing volume {}: {e}", v.destination))?;
                        let read_only = v.read_only || pod.kind == hull_runtime::backend::BackendKind::Kvm;
                        let device = pod.disk_for(&key, &vol.path, read_only).map_err(|e| {
                            let _ = std::fs::remove_file(&vol.path);
                            format!("volume {}: {e}", v.destination)
                        })?;
                        (device, vol.fstype)
                    }
                };
                held.push(key);
                let mut m = Storage::new();
                m.device = device;
                m.fstype = fstype.into();
                m.read_only = v.read_only;
                m.container_path = v.destination.clone();
                creq.mounts.push(m);
            }
            for f in &g.files {
                let mut af = AgentFile::new();
                af.name = f.name.clone();
                af.content = f.content.clone();
                af.mode = f.mode;
                creq.files.push(af);
            }
            let mut proc_ = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
            creq.stdio = Some(proc_.stdio_config()).into();
            creq.oci_spec_json = g.spec.to_string().into_bytes();
            pod.agent.create(creq).map_err(|e| e.to_string())?;
            let uds = pod.vm.vsock_uds().to_path_buf();
            if let Err(e) = proc_.attach(&pod.agent, &uds, &req.id, "") {
                let _ = pod.agent.remove(&req.id);
                return Err(e.to_string());
            }
            Ok(proc_)
        })();
        let proc_ = match result {
            Ok(p) => p,
            Err(e) => {
                for k in &held {
                    pod.release_disk(k);
                }
                return Err(e);
            }
        };
        let pid = pod.vm.vmm_pid();
        let record = serde_json::json!({
            "shim_pid": std::process::id(),
            "vm_pids": pod.pids(),
            "work_dir": pod.dir.path(),
        });
        let _ = std::fs::write(bundle.join(VM_RECORD), record.to_string());
        st.containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                init: proc_,
                execs: HashMap::new(),
                disks: held,
                write_back: g
                    .files
                    .iter()
                    .filter_map(|f| Some((f.name.clone(), f.write_back.clone()?)))
                    .collect(),
            },
        );
        Ok(pid)
    }

    /// Ends the shim when no container is left: the VM goes first.
    fn maybe_finish(&self) {
        let pod = {
            let mut st = self.lock();
            if !st.containers.is_empty() {
                return;
            }
            st.pod.take()
        };
        if let Some(p) = pod {
            p.shutdown();
        }
        self.0.exit.signal();
    }
}

/// Overwrites `path` with `content`, only if it is still a regular file (not a symlink put in its place).
fn write_regular_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("no longer a regular file"));
    }
    f.set_len(0)?;
    f.write_all(content)
}

/// The status containerd gets for the agent's report: 128+N for signal N, else the exit code; a code no
/// process can have (the guest is not trusted) is reported as 255, never as success.
fn exit_status(exit_code: i32, signal: i32) -> u32 {
    if signal > 0 {
        128 + signal.min(127) as u32
    } else if (0..=255).contains(&exit_code) {
        exit_code as u32
    } else {
        log::warn!("the agent reported exit code {exit_code}; reporting 255");
        255
    }
}

/// The `ConfigPath` of the runtime options CRI passes (containerd's `runtimeoptions.v1.Options`).
fn config_path(req: &CreateTaskRequest) -> Option<PathBuf> {
    let any = req.options.as_ref()?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    // Field 2 (config_path), a length-delimited string.
    let mut is = containerd_shim::protos::protobuf::CodedInputStream::from_bytes(&any.value);
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
        let pid = self.create_inner(&req).map_err(|e| {
            log::error!("create {}: {e}", req.id);
            err(Code::INTERNAL, e)
        })?;
        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        ev.io = Some(io).into();
        ev.pid = pid;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev));
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let agent = self.agent()?;
        let (uds, pid) = {
            let st = self.lock();
            let c = st.containers.get(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            if !req.exec_id.is_empty() && !c.execs.contains_key(&req.exec_id) {
                return Err(not_found(&req.id, &req.exec_id));
            }
            let pod = st.pod.as_ref().ok_or_else(|| err(Code::FAILED_PRECONDITION, "no VM"))?;
            (pod.vm.vsock_uds().to_path_buf(), pod.vm.vmm_pid())
        };
        if req.exec_id.is_empty() {
            agent.start(&req.id).map_err(|e| err(Code::INTERNAL, e))?;
        } else {
            // The agent starts an exec's program as soon as it is asked to, so Exec only records the process
            // spec and the request goes out here, at Start.
            let (stdio, process) = {
                let mut st = self.lock();
                let c = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
                let p = c
                    .execs
                    .get_mut(&req.exec_id)
                    .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
                let process = p.exec_spec.take().ok_or_else(|| {
                    err(
                        Code::FAILED_PRECONDITION,
                        format!("exec {} was started already", req.exec_id),
                    )
                })?;
                (p.stdio_config(), process)
            };
            agent
                .exec(&req.id, &req.exec_id, process, stdio)
                .map_err(|e| err(Code::INTERNAL, e))?;
            let mut st = self.lock();
            let c = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .execs
                .get_mut(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            if let Err(e) = p.attach(&agent, &uds, &req.id, &req.exec_id) {
                // The program already runs in the guest: end it and follow it, so Wait and Delete see it go.
                drop(st);
                let _ = agent.signal(&req.id, &req.exec_id, libc::SIGKILL as u32, false);
                self.watch(&req.id, &req.exec_id, uds);
                return Err(err(Code::INTERNAL, e));
            }
        }
        {
            let mut st = self.lock();
            if let Some(p) = st.containers.get_mut(&req.id).and_then(|c| c.proc_mut(&req.exec_id)) {
                if p.exit.is_none() {
                    p.status = Status::RUNNING;
                }
            }
        }
        self.watch(&req.id, &req.exec_id, uds);
        if req.exec_id.is_empty() {
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = pid;
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev));
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = req.id.clone();
            ev.exec_id = req.exec_id.clone();
            ev.pid = pid;
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev));
        }
        let mut resp = StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let (status, at, pid) = {
            let mut st = self.lock();
            let pid = Self::vmm_pid(&st);
            let c = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .proc_mut(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            if p.status == Status::RUNNING || p.status == Status::PAUSED {
                return Err(err(Code::FAILED_PRECONDITION, format!("{} is still running", req.id)));
            }
            let (status, at) = p.exit.clone().unwrap_or((0, now()));
            (status, at, pid)
        };
        if req.exec_id.is_empty() {
            let removed = {
                let mut st = self.lock();
                let c = st.containers.remove(&req.id);
                if let (Some(c), Some(pod)) = (&c, st.pod.as_mut()) {
                    if !pod.dead {
                        if let Err(e) = pod.agent.remove(&req.id) {
                            log::warn!("removing {} in the guest: {e}", req.id);
                        }
                    }
                    for k in &c.disks {
                        pod.release_disk(k);
                    }
                }
                c
            };
            if let Some(c) = removed {
                let _ = std::fs::remove_file(Path::new(&c.bundle).join(VM_RECORD));
            }
            self.0
                .oom_reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&req.id);
            let mut ev = TaskDelete::new();
            ev.container_id = req.id.clone();
            ev.pid = pid;
            ev.exit_status = status;
            ev.exited_at = Some(at.clone()).into();
            self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev));
        } else {
            let mut st = self.lock();
            if let Some(c) = st.containers.get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
        }
        // A Wait still pending on what was deleted answers "not found" now instead of hanging.
        self.0.changed.notify_all();
        let mut resp = DeleteResponse::new();
        resp.pid = pid;
        resp.exit_status = status;
        resp.exited_at = Some(at).into();
        Ok(resp)
    }

    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let agent = self.agent()?;
        if !self.lock().containers.contains_key(&req.id) {
            return Err(not_found(&req.id, ""));
        }
        let list = agent.list_processes(&req.id).map_err(|e| err(Code::INTERNAL, e))?;
        let mut resp = PidsResponse::new();
        for p in list.processes {
            let mut info = containerd_shim::protos::api::ProcessInfo::new();
            info.pid = p.pid.max(0) as u32;
            resp.processes.push(info);
        }
        Ok(resp)
    }

    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let agent = self.agent()?;
        self.lock()
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        agent.pause(&req.id).map_err(|e| err(Code::INTERNAL, e))?;
        if let Some(c) = self.lock().containers.get_mut(&req.id) {
            c.init.status = Status::PAUSED;
        }
        let mut ev = TaskPaused::new();
        ev.container_id = req.id.clone();
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev));
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let agent = self.agent()?;
        self.lock()
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        agent.resume(&req.id).map_err(|e| err(Code::INTERNAL, e))?;
        if let Some(c) = self.lock().containers.get_mut(&req.id) {
            if c.init.exit.is_none() {
                c.init.status = Status::RUNNING;
            }
        }
        let mut ev = TaskResumed::new();
        ev.container_id = req.id.clone();
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev));
        Ok(Empty::new())
    }

    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let (exited, dead) = {
            let mut st = self.lock();
            let dead = st.pod.as_ref().is_none_or(|p| p.dead);
            let c = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .proc_mut(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            (p.exit.is_some(), dead)
        };
        // Killing what already ended succeeds (containerd kills after exits, and again with all).
        if (exited && !req.all) || dead {
            return Ok(Empty::new());
        }
        let agent = self.agent()?;
        if let Err(e) = agent.signal(&req.id, &req.exec_id, req.signal, req.all) {
            let gone = {
                let mut st = self.lock();
                st.containers
                    .get_mut(&req.id)
                    .and_then(|c| c.proc_mut(&req.exec_id))
                    .is_none_or(|p| p.exit.is_some())
            };
            if !gone {
                return Err(err(Code::INTERNAL, e));
            }
        }
        Ok(Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        hull_agent_protocol::ids::validate_exec_id(&req.exec_id).map_err(|e| err(Code::INVALID_ARGUMENT, e))?;
        let mut process: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("the exec's process spec: {e}")))?;
        guest_spec::strip_process_labels(&mut process);
        crate::process::check_stdio_uris(&req.stdin, &req.stdout, &req.stderr)
            .map_err(|e| err(Code::INVALID_ARGUMENT, e))?;
        {
            let mut st = self.lock();
            let c = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(err(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            let mut p = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
            p.exec_spec = Some(process.to_string().into_bytes());
            c.execs.insert(req.exec_id.clone(), p);
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let agent = self.agent()?;
        agent
            .resize(&req.id, &req.exec_id, req.height, req.width)
            .map_err(|e| err(Code::INTERNAL, e))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let mut st = self.lock();
        let c = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
        let p = c
            .proc_mut(&req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        if req.stdin {
            p.stdin_closed.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let agent = self.agent()?;
        self.lock()
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        let value = req.resources.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&value).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!("the resources are not OCI LinuxResources JSON: {e}"),
            )
        })?;
        agent.update(&req.id, value).map_err(|e| err(Code::INTERNAL, e))?;
        Ok(Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut st = self.lock();
        loop {
            let c = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
            let p = c
                .proc_mut(&req.exec_id)
                .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            if let Some((status, at)) = &p.exit {
                let mut resp = WaitResponse::new();
                resp.exit_status = *status;
                resp.exited_at = Some(at.clone()).into();
                return Ok(resp);
            }
            st = self.0.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let agent = self.agent()?;
        self.lock()
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        let s = agent.stats(&req.id).map_err(|e| err(Code::INTERNAL, e))?;
        let mut m = v2::Metrics::new();
        let mut cpu = v2::CPUStat::new();
        let mut mem = v2::MemoryStat::new();
        let mut pids = v2::PidsStat::new();
        if let Some(c) = s.cpu.as_ref() {
            cpu.usage_usec = c.usage_usec;
            cpu.user_usec = c.user_usec;
            cpu.system_usec = c.system_usec;
            cpu.nr_periods = c.nr_periods;
            cpu.nr_throttled = c.nr_throttled;
            cpu.throttled_usec = c.throttled_usec;
        }
        if let Some(x) = s.memory.as_ref() {
            mem.usage = x.current;
            mem.usage_limit = x.max;
            mem.anon = x.anon;
            mem.file = x.file;
        }
        if let Some(p) = s.pids.as_ref() {
            pids.current = p.current;
            pids.limit = p.max;
        }
        let mut io = v2::IOStat::new();
        for d in &s.io {
            let mut e = v2::IOEntry::new();
            e.major = d.major as u64;
            e.minor = d.minor as u64;
            e.rbytes = d.rbytes;
            e.wbytes = d.wbytes;
            e.rios = d.rios;
            e.wios = d.wios;
            io.usage.push(e);
        }
        m.cpu = Some(cpu).into();
        m.memory = Some(mem).into();
        m.pids = Some(pids).into();
        m.io = Some(io).into();
        let mut any = Any::new();
        any.type_url = "io.containerd.cgroups.v2.Metrics".into();
        any.value = m.write_to_bytes().map_err(|e| err(Code::INTERNAL, e))?;
        let mut resp = StatsResponse::new();
        resp.stats = Some(any).into();
        Ok(resp)
    }

    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let mut st = self.lock();
        let pid = Self::vmm_pid(&st);
        let c = st.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
        let bundle = c.bundle.clone();
        let p = c
            .proc_mut(&req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        let mut resp = StateResponse::new();
        resp.id = req.id.clone();
        resp.exec_id = req.exec_id.clone();
        resp.bundle = bundle;
        resp.pid = pid;
        resp.status = p.status.into();
        resp.stdin = p.stdin.clone();
        resp.stdout = p.stdout.clone();
        resp.stderr = p.stderr.clone();
        resp.terminal = p.terminal;
        if let Some((status, at)) = &p.exit {
            resp.exit_status = *status;
            resp.exited_at = Some(at.clone()).into();
        }
        Ok(resp)
    }

    fn connect(&self, _: &TtrpcContext, _req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let st = self.lock();
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = Self::vmm_pid(&st);
        resp.version = env!("CARGO_PKG_VERSION").into();
        Ok(resp)
    }

    fn shutdown(&self, _: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.maybe_finish();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::exit_status;

    #[test]
    fn exit_statuses_follow_the_shell_convention_and_bogus_codes_are_not_success() {
        assert_eq!(exit_status(0, 0), 0);
        assert_eq!(exit_status(3, 0), 3);
        assert_eq!(exit_status(0, 9), 137);
        assert_eq!(exit_status(0, 1000), 255);
        assert_eq!(exit_status(-1, 0), 255);
        assert_eq!(exit_status(256, 0), 255);
    }
}
