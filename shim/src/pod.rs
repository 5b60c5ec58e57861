//! The pod's microVM: booted at the first container's Create with that container's rootfs image as its
//! first disk (plus spare slots when the container is a pod sandbox), connected to hull-agent, networked
//! when the spec names a CNI namespace. Disks are shared by key within the VM: a second container of the same
//! image (or a second mount of the same host directory) reuses the disk the first one got.
//!
//! The VM's processes are started from one long-lived thread ([`Spawner`]): they carry PR_SET_PDEATHSIG,
//! which fires when the *thread* that forked them ends, and ttrpc's worker threads come and go. They run in
//! the pod's cgroup ([`crate::cgroup`]) when the sandbox's spec names one; it goes with the pod.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_runtime::agent::Agent;
use hull_runtime::backend::{self, BackendKind, Drive, Vm};
use hull_runtime::container::GuestDisk;
use hull_runtime::guard::RunDir;
use hull_runtime::image::RootfsImage;

use crate::cgroup::PodCgroup;
use crate::config::ShimConfig;
use crate::network::PodNetwork;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    GuestFiles(#[from] hull_runtime::GuestFilesError),
    #[error("the guest agent did not answer ({source}); guest console {console}")]
    NoAgent {
        source: hull_runtime::agent::AgentError,
        /// The console's tail and the VM processes' logs.
        console: String,
    },
    #[error("the VM spawner thread is gone")]
    SpawnerGone,
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    #[error(transparent)]
    Agent(#[from] hull_runtime::agent::AgentError),
    #[error(transparent)]
    Net(#[from] crate::network::NetError),
    #[error("the VM has no free disk slot left for {0} (pod_slots in the shim config)")]
    NoSlot(String),
    #[error("making the VM's scratch disk: {0}")]
    Scratch(#[from] hull_runtime::image::ImageError),
    #[error("fast_start: {0}")]
    Template(#[from] hull_runtime::template::TemplateError),
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs closures on one thread that lives as long as the shim.
#[derive(Clone)]
pub struct Spawner(mpsc::Sender<Job>);

impl Spawner {
    pub fn new() -> Spawner {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("vm-spawner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
            })
            .expect("starting the VM spawner thread");
        Spawner(tx)
    }

    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = mpsc::channel();
        self.0
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.recv().ok()
    }
}

/// A disk of the VM: a boot drive or a slot, and what it holds.
struct Disk {
    id: String,
    index: usize,
    /// What it holds ("" for a free slot).
    key: String,
    users: usize,
    slot: bool,
    /// An image made for this VM alone (a volume's), deleted once no container uses it: the VM's device
    /// backend keeps it open until the slot gets another image, and the directory may be on tmpfs.
    own_image: Option<PathBuf>,
}

pub struct Pod {
    pub vm: Box<dyn Vm>,
    pub kind: BackendKind,
    pub dir: RunDir,
    pub agent: Arc<Agent>,
    pub net: Option<PodNetwork>,
    /// CRI PortForward into the guest, for a pod with a network namespace ([`crate::port_forward`]).
    pub forward: Option<crate::port_forward::PortForwarder>,
    /// The scratch disk that holds the containers' writable layers (`scratch_mib`), if the VM has one.
    pub scratch: Option<GuestDisk>,
    disks: Vec<Disk>,
    /// Last, so that it is removed after the VM's processes are gone (fields drop in order).
    pub cgroup: Option<PodCgroup>,
}

/// What the first container brings to the VM's boot.
pub struct BootRequest<'a> {
    pub cfg: &'a ShimConfig,
    /// The VM's own directory (sockets, logs, images made for it alone).
    pub dir: RunDir,
    pub rootfs: RootfsImage,
    pub rootfs_key: String,
    pub cpus: u8,
    pub mem_mib: u32,
    pub slots: usize,
    pub netns: Option<PathBuf>,
    pub hostname: Option<String>,
    pub dns: Vec<String>,
    /// Which agent calls the guest serves (from the config and the pod's annotations), fixed at boot.
    pub agent_policy: hull_agent_protocol::policy::Policy,
    /// The pod's cgroup, made already; the VM's processes join it.
    pub cgroup: Option<PodCgroup>,
}

impl Pod {
    /// Boots the VM and waits for its agent.
    pub fn boot(req: BootRequest, spawner: &Spawner) -> Result<Pod, PodError> {
        let t0 = Instant::now();
        let cfg = req.cfg;
        // Declared before the VM: on an early return it is removed after the VM's processes are killed.
        let cgroup = req.cgroup;
        let dir = req.dir;
        let cgroup_procs = cgroup.as_ref().map(PodCgroup::procs_files).unwrap_or_default();
        let (kind, why) = backend::choose(cfg.backend.into());
        log::info!("VM backend {kind:?} ({why})");
        let (kernel, initrd) = cfg.guest_files()?;
        let net = match &req.netns {
            Some(ns) => Some(crate::network::setup(ns, req.hostname.as_deref(), req.dns.clone())?),
            None => None,
        };
        let hull = cfg.hull_binary();
        let jail = cfg.jail_config(&hull);
        let dir_path = dir.path().to_path_buf();
        let (cpus, mem, slots) = (req.cpus, req.mem_mib, req.slots);
        let agent_policy = req.agent_policy;
        let rootfs = RootfsImage {
            path: req.rootfs.path.clone(),
            fstype: req.rootfs.fstype,
        };
        let (tap, mac, netns) = match &net {
            Some(n) => (
                Some(crate::network::TAP.to_string()),
                Some(n.mac.clone()),
                Some(n.netns.clone()),
            ),
            None => (None, None, None),
        };
        // fast_start: the VM is a clone of a template, restored; the kvm backend only.
        let fast = cfg.fast_start && kind == BackendKind::Kvm;
        if cfg.fast_start && !fast {
            log::warn!("fast_start needs the kvm backend (a snapshot of the hull VMM); booting this pod's VM instead");
        }
        // Restored, the disks go into the template's slots: the rootfs into slot0 (the guest's vda), the
        // scratch disk into wslot0; the spare slots follow the rootfs's.
        let (rootfs_id, scratch_id) = if fast {
            (backend::slot_id(0), backend::rw_slot_id(0))
        } else {
            ("rootfs".to_string(), "scratch".to_string())
        };
        let mut drives = vec![Drive {
            id: rootfs_id,
            image: rootfs,
            read_only: true,
        }];
        if cfg.scratch_mib > 0 {
            drives.push(Drive {
                id: scratch_id,
                image: hull_runtime::image::scratch(dir.path(), "scratch", cfg.scratch_mib)?,
                read_only: false,
            });
        }
        let scratch = drives.get(1).map(|d| GuestDisk::of_drive(kind, 1, d));
        // The slots come after the drives.
        let first_slot = drives.len();
        let slot_offset = usize::from(fast);
        let template_base = cfg.template_dir.clone();
        let boot_timeout = Duration::from_secs(cfg.boot_timeout_secs);
        let started = spawner
            .run(move || -> Result<Box<dyn Vm>, PodError> {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let mut vm_cfg = backend::VmLaunchConfig {
                    hull: &hull,
                    kernel: &kernel,
                    initrd: &initrd,
                    cpus,
                    mem_mib: mem,
                    drives: &drives,
                    slots,
                    rw_slots: 0,
                    tap: tap.as_deref(),
                    mac: mac.as_deref(),
                    netns: netns.as_deref(),
                    cmdline_extra: format!("hull.time={}.{:09}", now.as_secs(), now.subsec_nanos()),
                    jail: jail.as_ref(),
                    agent_policy,
                    dir: &dir_path,
                };
                if !fast {
                    return Ok(backend::start_in_cgroup(kind, &vm_cfg, &cgroup_procs)?);
                }
                // The template's VM (and the clone's): no drives, the rootfs slot and the spare ones, the
                // scratch slot; nothing of one pod on its command line or NIC (the agent sets the MAC).
                vm_cfg.drives = &[];
                vm_cfg.slots = 1 + slots;
                vm_cfg.rw_slots = usize::from(drives.len() > 1);
                vm_cfg.mac = None;
                vm_cfg.cmdline_extra = String::new();
                let template_vm_dir = dir_path.join("template-vm");
                let template = {
                    hull_runtime::guard::create_private_dir(&template_vm_dir, false).map_err(|source| {
                        hull_runtime::template::TemplateError::Io {
                            dir: template_vm_dir.display().to_string(),
                            what: "creating".into(),
                            source,
                        }
                    })?;
                    let template_cfg = backend::VmLaunchConfig {
                        dir: &template_vm_dir,
                        ..vm_cfg.clone()
                    };
                    crate::fast_start::template_for(&template_cfg, &template_base, boot_timeout)?
                };
                let _ = std::fs::remove_dir_all(&template_vm_dir);
                let mut vm = template.restore(&vm_cfg, &cgroup_procs)?;
                for d in &drives {
                    vm.attach_disk(&d.id, &d.image.path, d.read_only)?;
                }
                vm.resume()?;
                Ok(vm)
            })
            .ok_or(PodError::SpawnerGone)?;
        let mut vm = match started {
            Ok(vm) => vm,
            Err(e) => {
                if let Some(n) = &net {
                    n.teardown();
                }
                return Err(e);
            }
        };
        let deadline = Duration::from_secs(cfg.boot_timeout_secs);
        let agent = loop {
            match Agent::connect(vm.vsock_uds(), Duration::from_secs(1)) {
                Ok(a) => break a,
                Err(e) => {
                    if !vm.alive() || t0.elapsed() >= deadline {
                        let mut console = hull_runtime::console_tail(&vm.console_log());
                        // The VM's own processes say why they ended.
                        for entry in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                            let file = entry.path();
                            if file.extension().is_some_and(|x| x == "log") && file != vm.console_log() {
                                console.push_str(&format!("\n{}", hull_runtime::console_tail(&file)));
                            }
                        }
                        vm.stop(Duration::ZERO);
                        if let Some(n) = &net {
                            n.teardown();
                        }
                        return Err(PodError::NoAgent { source: e, console });
                    }
                }
            }
        };
        let setup = || -> Result<(), PodError> {
            agent.sync_clock()?;
            if fast {
                // Every clone of a template starts with the template's kernel RNG state: reseed it.
                agent.add_entropy()?;
            }
            let v = agent.version()?;
            log::info!(
                "VM up in {:?}: guest kernel {}, agent {}",
                t0.elapsed(),
                printable(&v.kernel_release),
                printable(&v.agent_version)
            );
            if let Some(n) = &net {
                agent.configure_network(n.guest.clone())?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            vm.stop(Duration::ZERO);
            if let Some(n) = &net {
                n.teardown();
            }
            return Err(e);
        }
        // containerd serves PortForward by dialing localhost:<port> in the pod's network namespace.
        let forward = net.as_ref().and_then(|n| {
            crate::port_forward::PortForwarder::start(&n.netns, vm.vsock_uds().to_path_buf())
                .map_err(|e| log::warn!("port-forward into this pod will not work: {e}"))
                .ok()
        });
        let mut disks = vec![Disk {
            id: "rootfs".into(),
            index: 0,
            key: req.rootfs_key,
            users: 0,
            slot: false,
            own_image: None,
        }];
        for i in 0..slots {
            disks.push(Disk {
                id: backend::slot_id(slot_offset + i),
                index: first_slot + i,
                key: String::new(),
                users: 0,
                slot: true,
                own_image: None,
            });
        }
        Ok(Pod {
            vm,
            kind,
            dir,
            agent: Arc::new(agent),
            net,
            forward,
            scratch,
            disks,
            cgroup,
        })
    }

    /// The guest device holding `key` (attaching `image` to a free slot when no disk holds it yet); one
    /// more user of it.
    pub fn disk_for(&mut self, key: &str, image: &Path, read_only: bool) -> Result<String, PodError> {
        if let Some(device) = self.reuse_disk(key) {
            return Ok(device);
        }
        let d = self
            .disks
            .iter_mut()
            .find(|d| d.slot && d.users == 0)
            .ok_or_else(|| PodError::NoSlot(key.to_string()))?;
        self.vm.attach_disk(&d.id, image, read_only)?;
        d.key = key.to_string();
        d.users = 1;
        d.own_image = image.starts_with(self.dir.path()).then(|| image.to_path_buf());
        Ok(backend::guest_device(self.kind, d.index, &d.id))
    }

    /// The guest device of a disk already holding `key`, with one more user; `None` when no disk holds it.
    pub fn reuse_disk(&mut self, key: &str) -> Option<String> {
        let d = self.disks.iter_mut().find(|d| !d.key.is_empty() && d.key == key)?;
        d.users += 1;
        Some(backend::guest_device(self.kind, d.index, &d.id))
    }

    /// One user less of the disk holding `key`; a slot nobody uses is free again.
    pub fn release_disk(&mut self, key: &str) {
        if let Some(d) = self.disks.iter_mut().find(|d| d.key == key) {
            d.users = d.users.saturating_sub(1);
            if d.users == 0 && d.slot {
                d.key.clear();
                if let Some(image) = d.own_image.take() {
                    let _ = std::fs::remove_file(image);
                }
            }
        }
    }

    /// Every PID of the VM, for the record `delete` reads after a shim crash.
    pub fn pids(&self) -> Vec<u32> {
        self.vm.pids()
    }

    /// Ends the VM at once (nothing in it outlives the pod: the rootfs is a read-only image under a tmpfs
    /// layer and volumes are copies), kills what is left, removes the TAP, then the pod's cgroup.
    pub fn shutdown(mut self) {
        self.forward = None;
        self.vm.stop(Duration::ZERO);
        if let Some(n) = &self.net {
            n.teardown();
        }
        if let Some(cg) = self.cgroup.take() {
            cg.remove();
        }
    }
}

/// A string from the guest as it may go into the shim's log: at most 64 characters, no control characters.
pub fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}
