//! Create: a container of the bundle containerd prepared, in the pod's VM. As named steps:
//! read the bundle (its OCI spec fitted for the guest, the shim config, where the rootfs comes from) →
//! the rootfs image (cached per image) → the VM, booted by the pod's first container with that image as
//! its first disk → the container's disks (rootfs, volumes) in the VM → the agent's CreateContainer (the
//! request built by [`hull_runtime::container`], as `hull run` builds its own) → its stdio attached → the
//! VM record in the bundle for a later `delete`.
//!
//! Everything in the bundle and the request is containerd's client's and not trusted: ids are validated,
//! the spec is parsed without panics ([`crate::guest_spec`]), and a failure releases the disks taken so far.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::protos::api::Mount;
use hull_runtime::container::{GuestDisk, GuestFile, NewContainer, VolumeMount};
use hull_runtime::guard::RunDir;

use crate::config::{ShimConfig, MAX_SLOTS};
use crate::error::ShimError;
use crate::guest_spec::{self, GuestSpec};
use crate::pod::{BootRequest, Pod};
use crate::process::{Proc, StdioAddrs};
use crate::rootfs;
use crate::state::Container;
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
        let b = read_bundle(req)?;
        let id = req.id;
        let mut st = self.lock();
        if st.containers.contains_key(id) {
            return Err(ShimError::ContainerExists(id.into()));
        }
        // A new VM gets its directory first: images made for this container alone go there, and go with it.
        let new_dir = match &st.pod {
            Some(_) => None,
            None => Some(vm_dir(&b.cfg.work_dir)?),
        };
        let work = match (&st.pod, &new_dir) {
            (Some(p), _) => p.dir.path().to_path_buf(),
            (None, Some(d)) => d.path().to_path_buf(),
            (None, None) => return Err(ShimError::NoVm),
        };
        let image = rootfs::prepare(&b.rootfs, &b.cfg.image_cache, &work, &format!("rootfs-{id}"))
            .map_err(|source| ShimError::Rootfs { id: id.into(), source })?;
        if let Some(dir) = new_dir {
            let pod = self.boot(id, &b, dir, &image)?;
            let uds = pod.vm.vsock_uds().to_path_buf();
            st.pod = Some(pod);
            watch::vm(self);
            watch::oom(self, uds);
        }
        let st = &mut *st;
        let pod = st.pod.as_mut().ok_or(ShimError::NoVm)?;
        if pod.dead {
            return Err(ShimError::VmGone);
        }
        let mut held = Vec::new();
        let init = match add_to_vm(pod, req, &b.guest, &image, &mut held) {
            Ok(p) => p,
            Err(e) => {
                for k in &held {
                    pod.release_disk(k);
                }
                return Err(e);
            }
        };
        let pid = pod.vm.vmm_pid();
        VmRecord {
            shim_pid: std::process::id(),
            vm_pids: pod.pids(),
            work_dir: pod.dir.path().to_path_buf(),
        }
        .write(Path::new(req.bundle));
        let write_back = b
            .guest
            .files
            .iter()
            .filter_map(|f| Some((f.name.clone(), f.write_back.clone()?)))
            .collect();
        st.containers.insert(
            id.into(),
            Container {
                bundle: req.bundle.into(),
                init,
                execs: HashMap::new(),
                disks: held,
                write_back,
            },
        );
        Ok(pid)
    }

    /// Boots the pod's VM with the first container's rootfs image as its first disk.
    fn boot(&self, id: &str, b: &Bundle, dir: RunDir, image: &rootfs::Image) -> Result<Pod, ShimError> {
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
    let cfg = ShimConfig::load(req.config_path.as_deref())?;
    crate::logging::set_format(cfg.log_format);
    let guest = guest_spec::for_guest(spec).map_err(|source| ShimError::Spec { id: id.into(), source })?;
    for w in &guest.warnings {
        log::warn!("container {id}: {w}");
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

/// The container in the running VM: its disks (recorded in `held`, for the caller to release on failure),
/// the agent's CreateContainer, its stdio attached. Returns its init process.
fn add_to_vm(
    pod: &mut Pod,
    req: &CreateTask,
    g: &GuestSpec,
    image: &rootfs::Image,
    held: &mut Vec<String>,
) -> Result<Proc, ShimError> {
    let id = req.id;
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
    let mut init = Proc::new(&req.stdio);
    let creq = NewContainer {
        id,
        oci_spec: &g.spec,
        rootfs,
        volumes,
        files: g
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
    pod.agent.create(creq).map_err(ShimError::agent(id))?;
    let uds = pod.vm.vsock_uds().to_path_buf();
    if let Err(source) = init.attach(&pod.agent, &uds, id, "") {
        let _ = pod.agent.remove(id);
        return Err(ShimError::Attach {
            id: id.into(),
            exec: String::new(),
            source: Box::new(source),
        });
    }
    Ok(init)
}
