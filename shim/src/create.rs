//! Create: a container of the bundle containerd prepared, in the pod's VM. As named steps:
//! read the bundle (its OCI spec fitted for the guest, the shim config, where the rootfs comes from) →
//! the rootfs image (cached per image) → the VM, booted by the pod's first container with that image as
//! its first disk → the container's disks (rootfs, volumes) in the VM → the agent's CreateContainer (the
//! request built by [`hull_runtime::container`], as `hull run` builds its own) → its stdio attached → the
//! VM record in the bundle for a later `delete`.
//!
//! Everything in the bundle and the request is containerd's client's and not trusted: ids are validated,
//! the spec is parsed without panics ([`crate::guest_spec`]), and a failure releases the disks taken so far.
//!
//! Locks: the id is reserved in the state ("creating") and the state lock let go; the VM's lock covers the
//! host-side steps (boot, images, disks); the agent's CreateContainer and the stdio streams run with no lock
//! held, so a guest that stalls them holds up this Create only ([`crate::tasks`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::protos::api::Mount;
use hull_runtime::container::{GuestDisk, GuestFile, NewContainer, VolumeMount};
use hull_runtime::guard::RunDir;

use crate::cgroup::{self, PodCgroup};
use crate::config::{ShimConfig, MAX_SLOTS};
use crate::error::ShimError;
use crate::guest_spec::{self, GuestSpec};
use crate::hooks::{self, Hooks};
use crate::pod::{BootRequest, Pod};
use crate::process::{Proc, StdioAddrs};
use crate::rootfs;
use crate::state::{Container, PodInfo};
use crate::tasks::Tasks;
use crate::vm_record::VmRecord;
use crate::watch;

/// What Create asks for.
pub struct CreateTask<'a> {
    pub id: &'a str,
    pub bundle: &'a str,
    /// The snapshotter's mounts (none: the bundle's rootfs directory or the spec's root path).
    pub rootfs: &'a [Mount],
    pub stdio: StdioAddrs,
    /// The shim config the runtime handler names (`ConfigPath`), if any.
    pub config_path: Option<PathBuf>,
}

/// The bundle, read and checked before anything is made.
struct Bundle {
    is_sandbox: bool,
    cfg: ShimConfig,
    guest: GuestSpec,
    rootfs: rootfs::Source,
    /// The spec's `linux.cgroupsPath`: the VM's cgroup when this container boots it.
    cgroups_path: Option<String>,
    /// The pod's limits for that cgroup (a sandbox's only: a lone container's limits are its own, enforced
    /// in the guest).
    limits: cgroup::Limits,
    /// The host-side OCI hooks.
    hooks: Hooks,
}

/// The container's disks in the VM, as the agent's request names them.
struct Placed {
    rootfs: GuestDisk,
    volumes: Vec<VolumeMount>,
    /// Disk keys held (released again if the guest refuses the container).
    held: Vec<String>,
}

impl Tasks {
    /// Creates the container (booting the VM first when it is the pod's first); returns the PID containerd
    /// sees.
    pub fn create(self: &Arc<Self>, req: &CreateTask) -> Result<u32, ShimError> {
        let pid = self.create_container(req)?;
        self.events.created(req.id, req.bundle, req.rootfs, &req.stdio, pid);
        Ok(pid)
    }

    fn create_container(self: &Arc<Self>, req: &CreateTask) -> Result<u32, ShimError> {
        let mut b = read_bundle(req)?;
        let id = req.id;
        {
            let mut st = self.lock();
            if st.containers.contains_key(id) || !st.creating.insert(id.to_string()) {
                return Err(ShimError::ContainerExists(id.into()));
            }
        }
        let made = self.make_container(req, &mut b);
        let mut st = self.lock();
        st.creating.remove(id);
        let (container, pid) = made?;
        st.containers.insert(id.into(), container);
        Ok(pid)
    }

    /// The container, made with its id reserved and the state unlocked.
    fn make_container(self: &Arc<Self>, req: &CreateTask, b: &mut Bundle) -> Result<(Container, u32), ShimError> {
        let id = req.id;
        let (placed, pid) = self.place(req, b)?;
        let guest = {
            let st = self.lock();
            st.agent().and_then(|a| {
                let pod = st.pod.as_ref().ok_or(ShimError::NoVm)?;
                Ok((a, pod.uds.clone(), pod.scratch.clone()))
            })
        };
        let (agent, uds, scratch) = match guest {
            Ok(g) => g,
            Err(e) => {
                self.release_disks(&placed.held);
                return Err(e);
            }
        };
        // The guest's part, with no lock held.
        let mut init = Proc::new(&req.stdio);
        let creq = NewContainer {
            id,
            oci_spec: &b.guest.spec,
            rootfs: placed.rootfs,
            scratch,
            volumes: placed.volumes,
            files: b
                .guest
                .files
                .iter()
                .map(|f| GuestFile {
                    name: &f.name,
                    content: &f.content,
                    mode: f.mode,
                    copy_back: f.write_back.is_some(),
                })
                .collect(),
            streams: init.streams(),
        }
        .request();
        let in_guest = agent.create(creq).map_err(ShimError::agent(id)).and_then(|()| {
            init.attach(&agent, &uds, id, "").map_err(|source| {
                let _ = agent.remove(id);
                ShimError::Attach {
                    id: id.into(),
                    exec: String::new(),
                    source: Box::new(source),
                }
            })
        });
        // prestart and createRuntime hooks, on the host, with the container created; one failing undoes it.
        let state = hooks::state(id, "created", pid, req.bundle, &b.guest.spec["annotations"]);
        let in_guest = in_guest.and_then(|()| {
            hooks::run(&b.hooks.create, &state).map_err(|source| {
                let _ = agent.remove(id);
                ShimError::Hook { id: id.into(), source }
            })
        });
        if let Err(e) = in_guest {
            self.release_disks(&placed.held);
            return Err(e);
        }
        let write_back = b
            .guest
            .files
            .iter_mut()
            .filter_map(|f| Some((f.name.clone(), Arc::new(f.write_back.take()?))))
            .collect();
        let container = Container {
            bundle: req.bundle.into(),
            init,
            execs: HashMap::new(),
            disks: placed.held,
            write_back,
            oom_reported: false,
            hooks: Arc::new(std::mem::take(&mut b.hooks)),
            annotations: b.guest.spec["annotations"].clone(),
        };
        Ok((container, pid))
    }

    fn release_disks(&self, held: &[String]) {
        if let Some(pod) = self.vm().as_mut() {
            for k in held {
                pod.release_disk(k);
            }
        }
    }

    /// The host side, under the VM's lock: the VM (booted by the pod's first container, in the pod's
    /// cgroup), the rootfs image and the volumes as disks, the VM record in the bundle. Returns the disks and
    /// the PID containerd sees.
    fn place(self: &Arc<Self>, req: &CreateTask, b: &Bundle) -> Result<(Placed, u32), ShimError> {
        let id = req.id;
        let mut vm = self.vm();
        let image = match vm.as_ref() {
            Some(pod) => rootfs::prepare(&b.rootfs, &b.cfg.image_cache, pod.dir.path(), &format!("rootfs-{id}"))
                .map_err(|source| ShimError::Rootfs { id: id.into(), source })?,
            None => {
                // A new VM gets its directory first: images made for this container alone go there, and go
                // with it.
                let dir = vm_dir(&b.cfg.work_dir)?;
                let image = rootfs::prepare(&b.rootfs, &b.cfg.image_cache, dir.path(), &format!("rootfs-{id}"))
                    .map_err(|source| ShimError::Rootfs { id: id.into(), source })?;
                let cgroup = match &b.cgroups_path {
                    Some(path) => Some(
                        PodCgroup::create(Path::new(cgroup::ROOT), path, &b.limits)
                            .map_err(|source| ShimError::Cgroup { id: id.into(), source })?,
                    ),
                    None => None,
                };
                if let Some(cg) = &cgroup {
                    log::info!(
                        "the VM's processes go into the pod's cgroup {:?} (limits {:?})",
                        cg.dirs(),
                        b.limits
                    );
                }
                let pod = self.boot(id, b, dir, &image, cgroup)?;
                let uds = pod.vm.vsock_uds().to_path_buf();
                self.lock().pod = Some(PodInfo {
                    agent: pod.agent.clone(),
                    vmm_pid: pod.vm.vmm_pid(),
                    uds: uds.clone(),
                    scratch: pod.scratch.clone(),
                    dead: false,
                });
                *vm = Some(pod);
                watch::vm(self);
                watch::oom(self, uds);
                image
            }
        };
        let pod = vm.as_mut().ok_or(ShimError::NoVm)?;
        if self.lock().pod.as_ref().is_none_or(|p| p.dead) {
            return Err(ShimError::VmGone);
        }
        let mut held = Vec::new();
        let placed = match add_disks(pod, id, &b.guest, &image, &mut held) {
            Ok((rootfs, volumes)) => Placed { rootfs, volumes, held },
            Err(e) => {
                for k in &held {
                    pod.release_disk(k);
                }
                return Err(e);
            }
        };
        VmRecord {
            shim_pid: std::process::id(),
            vm_pids: pod.pids(),
            work_dir: pod.dir.path().to_path_buf(),
            cgroups: pod.cgroup.as_ref().map(|c| c.created().to_vec()).unwrap_or_default(),
        }
        .write(Path::new(req.bundle));
        Ok((placed, pod.vm.vmm_pid()))
    }

    /// Boots the pod's VM with the first container's rootfs image as its first disk.
    fn boot(
        &self,
        id: &str,
        b: &Bundle,
        dir: RunDir,
        image: &rootfs::Image,
        cgroup: Option<PodCgroup>,
    ) -> Result<Pod, ShimError> {
        let (cpus, mem_mib) = guest_spec::vm_size(&b.guest.spec, &b.cfg);
        let request = BootRequest {
            cfg: &b.cfg,
            dir,
            rootfs: hull_runtime::image::RootfsImage {
                path: image.image.path.clone(),
                fstype: image.image.fstype,
            },
            rootfs_key: image.key.clone(),
            cpus,
            mem_mib,
            // A sandbox's later containers bring their images and volumes; a lone container only its own
            // volumes.
            slots: if b.is_sandbox {
                b.cfg.pod_slots
            } else {
                b.guest.volumes.len()
            },
            netns: b.guest.netns.clone(),
            hostname: b.guest.hostname.clone(),
            dns: pod_dns(&b.guest),
            cgroup,
            agent_policy: b.cfg.agent_policy(&b.guest.spec["annotations"]),
        };
        Pod::boot(request, &self.spawner).map_err(|source| ShimError::Boot {
            id: id.into(),
            source: Box::new(source),
        })
    }
}

/// Reads and checks everything Create needs from the request and the bundle.
fn read_bundle(req: &CreateTask) -> Result<Bundle, ShimError> {
    let id = req.id;
    hull_agent_protocol::ids::validate_id(id).map_err(|source| ShimError::BadId { id: id.into(), source })?;
    req.stdio.check()?;
    let bundle = Path::new(req.bundle);
    let path = bundle.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| ShimError::Bundle {
        path: path.clone(),
        source,
    })?;
    let spec: serde_json::Value = serde_json::from_str(&text).map_err(|source| ShimError::SpecJson { path, source })?;
    let is_sandbox = spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox";
    let cgroups_path = spec["linux"]["cgroupsPath"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    let limits = if is_sandbox {
        cgroup::sandbox_limits(&spec)
    } else {
        cgroup::Limits::default()
    };
    let cfg = ShimConfig::load(req.config_path.as_deref())?;
    crate::logging::set_format(cfg.log_format);
    if is_sandbox {
        let warning = guest_spec::check_pod_namespaces(&spec, cfg.host_network)
            .map_err(|source| ShimError::Spec { id: id.into(), source })?;
        if let Some(w) = warning {
            log::warn!("pod {id}: {w}");
        }
    }
    let guest = guest_spec::for_guest(spec).map_err(|source| ShimError::Spec { id: id.into(), source })?;
    for w in &guest.warnings {
        log::warn!("container {id}: {w}");
    }
    let (hooks, in_guest) = Hooks::parse(&guest.hooks).map_err(|source| ShimError::Hook { id: id.into(), source })?;
    for kind in in_guest {
        log::info!("container {id}: {kind} hooks run in the guest, where the container has their binaries");
    }
    let rootfs = rootfs::source(req.rootfs, bundle, guest.spec["root"]["path"].as_str())
        .map_err(|source| ShimError::Rootfs { id: id.into(), source })?;
    if guest.volumes.len() > MAX_SLOTS {
        return Err(ShimError::TooManyVolumes {
            id: id.into(),
            count: guest.volumes.len(),
            max: MAX_SLOTS,
        });
    }
    Ok(Bundle {
        is_sandbox,
        cfg,
        guest,
        rootfs,
        cgroups_path,
        limits,
        hooks,
    })
}

/// A new VM's own directory under `work_dir` (both owner-only when the shim creates them).
fn vm_dir(work_dir: &Path) -> Result<RunDir, ShimError> {
    let fail = |source| ShimError::VmDir {
        path: work_dir.to_path_buf(),
        source,
    };
    hull_runtime::guard::create_private_dir(work_dir, true).map_err(fail)?;
    RunDir::create_in(work_dir).map_err(fail)
}

/// The DNS servers of the pod: the nameservers of the resolv.conf the spec mounts.
fn pod_dns(g: &GuestSpec) -> Vec<String> {
    let mounts = g.spec.get("mounts").and_then(|m| m.as_array());
    mounts
        .and_then(|ms| ms.iter().find(|m| m["destination"] == "/etc/resolv.conf"))
        .and_then(|m| {
            let name = m["source"].as_str()?.strip_prefix("hull-file:")?;
            let f = g.files.iter().find(|f| f.name == name)?;
            Some(crate::network::nameservers(&String::from_utf8_lossy(&f.content)))
        })
        .unwrap_or_default()
}

/// The container's disks in the running VM (each recorded in `held`, for the caller to release on
/// failure): its rootfs and its volumes.
fn add_disks(
    pod: &mut Pod,
    id: &str,
    g: &GuestSpec,
    image: &rootfs::Image,
    held: &mut Vec<String>,
) -> Result<(GuestDisk, Vec<VolumeMount>), ShimError> {
    let disk_err = |what: &str| {
        let what = what.to_string();
        move |source| ShimError::Disk {
            id: id.into(),
            what,
            source: Box::new(source),
        }
    };
    let device = pod
        .disk_for(&image.key, &image.image.path, true)
        .map_err(disk_err("the rootfs"))?;
    held.push(image.key.clone());
    let rootfs = GuestDisk {
        device,
        fstype: image.image.fstype.into(),
        read_only: true,
    };
    let mut volumes = Vec::new();
    for (i, v) in g.volumes.iter().enumerate() {
        let key = format!("vol:{}", v.source.display());
        // Another container of the pod may have this volume's disk already: no second copy then.
        let (device, fstype) = match pod.reuse_disk(&key) {
            Some(device) => (device, "ext4"),
            None => {
                let vol = hull_runtime::image::prepare(&v.source, pod.dir.path(), &format!("vol-{id}-{i}")).map_err(
                    |source| ShimError::PackVolume {
                        id: id.into(),
                        destination: v.destination.clone(),
                        source,
                    },
                )?;
                let read_only = v.read_only || pod.kind == hull_runtime::backend::BackendKind::Kvm;
                let device = pod.disk_for(&key, &vol.path, read_only).map_err(|e| {
                    let _ = std::fs::remove_file(&vol.path);
                    disk_err(&format!("volume {}", v.destination))(e)
                })?;
                (device, vol.fstype)
            }
        };
        held.push(key);
        volumes.push(VolumeMount {
            disk: GuestDisk {
                device,
                fstype: fstype.into(),
                read_only: v.read_only,
            },
            container_path: v.destination.clone(),
        });
    }
    Ok((rootfs, volumes))
}
