//! CreateContainer: the container's state directory and host files, its root file system and volumes
//! mounted from the storage the host names, its cgroup, and `hull-init` started in new namespaces and
//! waiting for Start.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hull_agent_protocol::agent::{File as HostFile, StdioConfig, Storage};
use hull_agent_protocol::ids::validate_id;
use oci_spec::runtime::{Mount, Process, Spec};

use crate::cgroup::Cgroup;
use crate::channel::Channel;
use crate::helper_protocol::{FromHelper, InitConfig, ToHelper};
use crate::init::{in_pid_namespace, spawn_helper, ChildSetup, INIT_ARGV0};
use crate::reaper::Reaper;
use crate::sys::{mount, umount_detach};

use super::block_device::{prepare_block_device, resolve_device};
use super::error::{io_err, AgentError};
use super::namespaces::Join;
use super::{Agent, Container, ProcessEntry, State, HELPER_TIMEOUT, MAX_FILE_BYTES, STATE_DIR};

const MAX_FILES: usize = 64;

/// Writes the host's small files into `<dir>/files/` and points the spec's `hull-file:<name>` mount sources
/// at them. Names, counts and sizes are checked: they come from the host, but a bad one is still an error,
/// not a write outside the directory.
fn write_files(dir: &Path, files: &[HostFile], spec: &mut Spec) -> Result<(), AgentError> {
    if files.len() > MAX_FILES {
        return Err(AgentError::BadSpec(format!(
            "{} files (at most {MAX_FILES})",
            files.len()
        )));
    }
    let fdir = dir.join("files");
    std::fs::create_dir_all(&fdir).map_err(io_err("mkdir files"))?;
    for f in files {
        validate_id(&f.name).map_err(|_| AgentError::BadSpec(format!("bad file name {:?}", f.name)))?;
        if f.content.len() > MAX_FILE_BYTES {
            return Err(AgentError::BadSpec(format!("file {} is over 1 MiB", f.name)));
        }
        let path = fdir.join(&f.name);
        std::fs::write(&path, &f.content).map_err(io_err(format!("writing {}", path.display())))?;
        let mode = if f.mode == 0 { 0o644 } else { f.mode & 0o7777 };
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("chmod {}", path.display())))?;
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mut mounts {
        let Some(name) = m
            .source()
            .as_ref()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("hull-file:"))
        else {
            continue;
        };
        if !files.iter().any(|f| f.name == name) {
            return Err(AgentError::BadSpec(format!(
                "mount source hull-file:{name} names no file"
            )));
        }
        let path = fdir.join(name);
        m.set_source(Some(path));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// Whether the spec's annotation `key` is exactly "true".
fn annotation_is_true(spec: &Spec, key: &str) -> bool {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .is_some_and(|v| v == "true")
}

/// Whether the spec's annotations let the container's processes create AF_VSOCK sockets.
fn allows_vsock(spec: &Spec) -> bool {
    annotation_is_true(spec, hull_agent_protocol::policy::ALLOW_VSOCK_ANNOTATION)
}

/// Whether the container asked for an init (`hull-init` as PID 1, the program its child) instead of running
/// its program as PID 1.
fn wants_init(spec: &Spec) -> bool {
    annotation_is_true(spec, hull_agent_protocol::policy::INIT_ANNOTATION)
}

fn check_fstype(t: &str) -> Result<&str, AgentError> {
    match t {
        "ext4" | "ext3" | "ext2" | "erofs" | "squashfs" | "xfs" | "vfat" | "btrfs" => Ok(t),
        _ => Err(AgentError::BadSpec(format!("unsupported file system type {t:?}"))),
    }
}

/// Writes a child's uid_map and gid_map (each in one write, as the kernel wants). The agent is root in the
/// parent user namespace, so the maps may name any host ids and setgroups stays allowed.
fn write_id_maps(pid: i32, uid_map: &str, gid_map: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), gid_map)
}

/// The overlay's upper directory is the root of the merged view: it gets the owner and mode of the image's
/// root, as the rootfs directory keeps them under runc (a user-namespaced container's root owns its `/`).
fn upper_like_image(image: &Path, upper: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = std::fs::metadata(image)?;
    std::os::unix::fs::chown(upper, Some(md.uid()), Some(md.gid()))?;
    std::fs::set_permissions(upper, std::fs::Permissions::from_mode(md.mode() & 0o7777))
}

impl Agent {
    /// Opens the namespaces a spec joins, from the inits of the containers they belong to.
    fn open_joins(&self, joins: &[Join]) -> Result<Vec<(&'static str, File)>, AgentError> {
        let containers = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        joins
            .iter()
            .map(|j| {
                let c = containers.get(&j.container).ok_or_else(|| {
                    AgentError::BadSpec(format!("namespace {}: no container {} in this VM", j.name, j.container))
                })?;
                if c.is_stopped() {
                    return Err(AgentError::BadSpec(format!(
                        "namespace {}: container {} has stopped",
                        j.name, j.container
                    )));
                }
                let path = super::namespaces::init_ns_path(c.init.pid, j.name);
                File::open(&path)
                    .map(|f| (j.name, f))
                    .map_err(io_err(format!("opening {}", path.display())))
            })
            .collect()
    }

    pub fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &Storage,
        extra: &[Storage],
        files: &[HostFile],
        stdio: &StdioConfig,
    ) -> Result<(), AgentError> {
        validate_id(id)?;
        if self
            .containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
        {
            return Err(AgentError::Exists(id.into()));
        }
        let mut spec: Spec = serde_json::from_slice(spec_json).map_err(|e| AgentError::BadSpec(e.to_string()))?;
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| AgentError::BadSpec("no process".into()))?;
        let dir = Path::new(STATE_DIR).join(id);
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut mounts = Vec::new();
        let result = write_files(&dir, files, &mut spec)
            .and_then(|()| self.create_inner(id, &dir, &mut spec, &process, rootfs, extra, files, stdio, &mut mounts));
        if result.is_err() {
            for m in mounts.iter().rev() {
                let _ = umount_detach(m);
            }
            super::scratch::remove(id);
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn create_inner(
        &self,
        id: &str,
        dir: &Path,
        spec: &mut Spec,
        process: &Process,
        rootfs: &Storage,
        extra: &[Storage],
        files: &[HostFile],
        stdio: &StdioConfig,
        mounts: &mut Vec<PathBuf>,
    ) -> Result<(), AgentError> {
        // The rootfs: the image (read-only if asked), and an overlay on top whose writable layer is on the
        // scratch disk when the host gave one, else a tmpfs in the guest's RAM.
        let image = dir.join("image");
        std::fs::create_dir_all(&image).map_err(io_err("mkdir image"))?;
        let dev = resolve_device(&rootfs.device)?;
        prepare_block_device(&dev)?;
        let flags = if rootfs.read_only { libc::MS_RDONLY } else { 0 };
        mount(
            Some(&dev.to_string_lossy()),
            &image,
            Some(check_fstype(&rootfs.fstype)?),
            flags,
            None,
        )
        .map_err(io_err(format!(
            "mounting {} ({}) on {}",
            dev.display(),
            rootfs.fstype,
            image.display()
        )))?;
        mounts.push(image.clone());
        let root = if rootfs.writable_overlay {
            let rw = dir.join("rw");
            std::fs::create_dir_all(&rw).map_err(io_err("mkdir rw"))?;
            if rootfs.upper_device.is_empty() {
                mount(Some("tmpfs"), &rw, Some("tmpfs"), 0, Some("mode=0755"))
                    .map_err(io_err("mounting the overlay's tmpfs"))?;
            } else {
                let on_disk = super::scratch::container_dir(&rootfs.upper_device, id)?;
                mount(Some(&on_disk.to_string_lossy()), &rw, None, libc::MS_BIND, None)
                    .map_err(io_err("mounting the overlay's scratch directory"))?;
            }
            mounts.push(rw.clone());
            for d in ["upper", "work"] {
                std::fs::create_dir_all(rw.join(d)).map_err(io_err("mkdir upper/work"))?;
            }
            upper_like_image(&image, &rw.join("upper"))
                .map_err(io_err("giving the upper layer the image root's owner"))?;
            let root = dir.join("rootfs");
            std::fs::create_dir_all(&root).map_err(io_err("mkdir rootfs"))?;
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                image.display(),
                rw.join("upper").display(),
                rw.join("work").display()
            );
            mount(Some("overlay"), &root, Some("overlay"), 0, Some(&data)).map_err(io_err("mounting the overlay"))?;
            mounts.push(root.clone());
            root
        } else {
            image.clone()
        };
        // Extra block devices become bind mounts in the spec.
        let mut spec_mounts = spec.mounts().clone().unwrap_or_default();
        for (i, s) in extra.iter().enumerate() {
            let target = dir.join(format!("m{i}"));
            std::fs::create_dir_all(&target).map_err(io_err("mkdir extra mount"))?;
            let dev = resolve_device(&s.device)?;
            prepare_block_device(&dev)?;
            let flags = if s.read_only { libc::MS_RDONLY } else { 0 };
            mount(
                Some(&dev.to_string_lossy()),
                &target,
                Some(check_fstype(&s.fstype)?),
                flags,
                None,
            )
            .map_err(io_err(format!("mounting {}", dev.display())))?;
            mounts.push(target.clone());
            let m: Mount = serde_json::from_value(serde_json::json!({
                "destination": s.container_path, "type": "bind", "source": target,
                "options": if s.read_only { vec!["rbind", "ro"] } else { vec!["rbind", "rw"] },
            }))
            .map_err(|e| AgentError::BadSpec(e.to_string()))?;
            spec_mounts.push(m);
        }
        spec.set_mounts(Some(spec_mounts));

        // Namespaces: new ones, and joins of other containers' in this VM (see `namespaces`).
        let linux = spec.linux().clone().unwrap_or_default();
        let ns = super::namespaces::plan(&linux).map_err(AgentError::BadSpec)?;
        // Compiled here too, so a bad profile fails CreateContainer with a clear error.
        if let Some(profile) = linux.seccomp() {
            crate::seccomp::compile(profile).map_err(|e| AgentError::BadSpec(e.to_string()))?;
        }
        // The device cgroup: the spec's rules (checked here, so a bad rule fails CreateContainer), then runc's
        // defaults, as an eBPF program on the container's cgroup. A spec without rules gets none, as with runc.
        let device_rules = match linux.resources().as_ref().and_then(|r| r.devices().as_ref()) {
            Some(d) if !d.is_empty() => Some(crate::device_filter::rules(d).map_err(AgentError::BadSpec)?),
            _ => None,
        };
        let joins = self.open_joins(&ns.joins)?;
        if ns.id_maps.is_some() {
            crate::rootfs::ensure_bare_sysfs().map_err(io_err("mounting the sysfs user namespaces bind"))?;
        }
        // A new user namespace: the child waits on this pipe until its id maps are written.
        let maps_pipe = match ns.id_maps {
            Some(_) => Some(crate::sys::pipe().map_err(io_err("pipe"))?),
            None => None,
        };
        // vsock: the cgroup's guard where the kernel honours it, plus the seccomp filter where it does not or
        // where the container's own capabilities could detach the guard (see `vsock_guard`).
        let allow_vsock = allows_vsock(spec);
        let vsock_guarded = !allow_vsock && crate::vsock_guard::enforced(&self.reaper);
        let vsock_seccomp =
            !allow_vsock && (!vsock_guarded || crate::vsock_guard::process_could_detach(process, ns.id_maps.is_some()));
        let cgroup = Cgroup::create(id)?;
        let limited = || -> Result<(), AgentError> {
            if let Some(r) = linux.resources() {
                cgroup.apply(r)?;
            }
            if let Some(rules) = &device_rules {
                cgroup.attach_device_filter(rules)?;
            }
            if vsock_guarded {
                cgroup.attach_vsock_guard()?;
            }
            Ok(())
        };
        if let Err(e) = limited() {
            let _ = cgroup.remove();
            return Err(e);
        }
        let terminal = process.terminal().unwrap_or(false);
        let (pio, child) = crate::stdio::make(stdio.stdin, stdio.stdout, stdio.stderr, terminal)
            .map_err(io_err("creating stdio pipes"))?;
        let (mut ch, helper_end) = Channel::pair().map_err(io_err("socketpair"))?;
        let child_joins: Vec<_> = joins
            .iter()
            .filter(|(n, _)| *n != "pid")
            .map(|(_, f)| f.as_raw_fd())
            .collect();
        let setup = ChildSetup {
            join: &child_joins,
            wait_for_maps: maps_pipe.as_ref().map(|(r, _)| r.as_raw_fd()),
        };
        let spawn = || spawn_helper(INIT_ARGV0, ns.clone_flags, child.raw(), helper_end.as_raw_fd(), &setup);
        let pid = match joins.iter().find(|(n, _)| *n == "pid") {
            Some((_, pid_ns)) => in_pid_namespace(pid_ns.as_raw_fd(), spawn),
            None => spawn(),
        }
        .map_err(io_err("starting hull-init"))?;
        self.reaper.watch(pid);
        drop(child);
        drop(helper_end);
        drop(joins);
        let fail = |e: AgentError, reaper: &Reaper| {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
            reaper.wait(pid);
            let _ = cgroup.remove();
            e
        };
        if let (Some((uid_map, gid_map)), Some((wait, release))) = (&ns.id_maps, maps_pipe) {
            drop(wait);
            let written = write_id_maps(pid, uid_map, gid_map).and_then(|()| (&release).write_all(&[1]));
            if let Err(e) = written {
                return Err(fail(io_err("writing the user namespace's id maps")(e), &self.reaper));
            }
        }
        if let Err(e) = cgroup.add_process(pid) {
            return Err(fail(e.into(), &self.reaper));
        }
        if allow_vsock {
            crate::console::log(&format!("container {id}: AF_VSOCK sockets allowed by its annotation"));
        }
        let cfg = InitConfig {
            spec: spec.clone(),
            rootfs: root,
            cgroup_ns: ns.cgroup_ns,
            user_ns: ns.id_maps.is_some(),
            time_offsets: ns.time_offsets.clone(),
            vsock_seccomp,
            with_init: wants_init(spec),
            id: id.into(),
            pid,
            bundle: dir.display().to_string(),
        };
        if let Err(e) = ch.send(&ToHelper::Init(Box::new(cfg))) {
            return Err(fail(io_err("sending the configuration")(e), &self.reaper));
        }
        let _ = ch.set_read_timeout(Some(HELPER_TIMEOUT));
        let mut pio = pio;
        match ch.recv::<FromHelper>() {
            Ok(Some((FromHelper::Ready, fd))) => {
                if terminal {
                    match fd {
                        Some(fd) => pio.terminal = Some(File::from(fd)),
                        None => {
                            return Err(fail(
                                AgentError::Helper("no terminal from hull-init".into()),
                                &self.reaper,
                            ))
                        }
                    }
                }
            }
            Ok(Some((FromHelper::Error(e), _))) => return Err(fail(AgentError::Helper(e), &self.reaper)),
            Ok(_) => {
                return Err(fail(
                    AgentError::Helper("hull-init ended during setup".into()),
                    &self.reaper,
                ))
            }
            Err(e) => return Err(fail(io_err("waiting for hull-init")(e), &self.reaper)),
        }
        let _ = ch.set_read_timeout(None);
        let oom_seen = cgroup.oom_kills();
        let c = Arc::new(Container {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            mounts: std::mem::take(mounts),
            cgroup,
            namespaces: ns.names,
            seccomp: linux.seccomp().clone(),
            allow_vsock,
            vsock_guarded,
            user_ns: ns.id_maps.is_some(),
            copy_back: files.iter().filter(|f| f.copy_back).map(|f| f.name.clone()).collect(),
            init: ProcessEntry::new(pid, pio),
            channel: Mutex::new(Some(ch)),
            execs: Mutex::new(HashMap::new()),
            state: Mutex::new(State::Created),
            oom_seen: Mutex::new(oom_seen),
        });
        self.containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_annotation_true_allows_vsock() {
        let spec = |annotations: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({ "ociVersion": "1.0.2", "annotations": annotations })).unwrap()
        };
        assert!(allows_vsock(&spec(
            serde_json::json!({ "io.hull.allow-vsock": "true" })
        )));
        for v in ["false", "1", "TRUE", ""] {
            assert!(
                !allows_vsock(&spec(serde_json::json!({ "io.hull.allow-vsock": v }))),
                "{v}"
            );
        }
        assert!(!allows_vsock(&spec(serde_json::json!({}))));
        assert!(!allows_vsock(&Spec::default()));
    }

    #[test]
    fn only_the_annotation_true_gives_an_init() {
        let spec = |annotations: serde_json::Value| -> Spec {
            serde_json::from_value(serde_json::json!({ "ociVersion": "1.0.2", "annotations": annotations })).unwrap()
        };
        assert!(wants_init(&spec(serde_json::json!({ "io.hull.init": "true" }))));
        for v in ["false", "yes", ""] {
            assert!(!wants_init(&spec(serde_json::json!({ "io.hull.init": v }))), "{v}");
        }
        assert!(!wants_init(&Spec::default()));
    }
}
