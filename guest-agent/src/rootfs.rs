//! The container's file system view, built by `hull-init` inside its new mount namespace: the spec's mounts
//! under the prepared rootfs, default device nodes, pivot_root, then masked and read-only paths.
//!
//! Written with plain mount(2) calls rather than youki's libcontainer: libcontainer 0.7 (the current release)
//! is built on oci-spec 0.10 while the agent protocol and the containerd shim use oci-spec 0.9 (what
//! containerd-shim 0.11 brings), so it would put a second, incompatible copy of the spec types into the
//! agent (plus nix 0.29 and 0.31, and 165 crates in all); and the agent needs only the mount, namespace,
//! cgroup v2 and credential parts of the spec, inside a VM it owns. (`cargo tree` in a scratch project.)
//!
//! Mount destinations come from the spec and the rootfs comes from an image; neither is trusted: a
//! destination is created under the rootfs and then resolved, and a mount whose resolved destination leaves
//! the rootfs (through `..` or a symlink) is refused.

use std::io;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::sys::{cpath, cvt, mount};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount destination {0:?} is not an absolute path inside the container")]
    BadDestination(PathBuf),
    #[error("mount destination {0:?} resolves outside the rootfs")]
    Escapes(PathBuf),
    #[error("mounting {what} on {target}: {source}")]
    Mount {
        what: String,
        target: String,
        source: io::Error,
    },
    #[error("{step}: {source}")]
    Step { step: &'static str, source: io::Error },
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> RootfsError {
    move |source| RootfsError::Step { step, source }
}

/// Joins an absolute container path under `rootfs`, refusing `..`.
fn join_inside(rootfs: &Path, dest: &Path) -> Result<PathBuf, RootfsError> {
    if !dest.is_absolute() || dest.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(RootfsError::BadDestination(dest.to_path_buf()));
    }
    Ok(rootfs.join(dest.strip_prefix("/").unwrap_or(dest)))
}

/// Resolves `path` (absolute, container view) under `root` the way the container will see it: each existing
/// component that is a symlink is followed *inside* `root` (an absolute target restarts at `root`, `..`
/// stops at `root`), as runc's securejoin does; at most 40 links. Missing components are kept as named.
fn secure_join(root: &Path, path: &Path) -> io::Result<PathBuf> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    let split = |p: &Path| -> VecDeque<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    };
    let mut parts = split(path);
    let mut current = PathBuf::new();
    let mut links = 0;
    while let Some(part) = parts.pop_front() {
        if part == ".." {
            current.pop();
            continue;
        }
        let candidate = root.join(&current).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = std::fs::read_link(&candidate)?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                let mut rest = split(&target);
                rest.extend(parts);
                parts = rest;
            }
            _ => current.push(part),
        }
    }
    Ok(root.join(current))
}

/// Creates `target` (a directory, or an empty file when `file`), then checks its real path stays inside.
fn create_target(rootfs: &Path, target: &Path, file: bool) -> Result<PathBuf, RootfsError> {
    let make = |p: &Path| -> io::Result<()> {
        if file {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if !p.exists() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(p)?;
            }
            Ok(())
        } else {
            std::fs::create_dir_all(p)
        }
    };
    make(target).map_err(|source| RootfsError::Mount {
        what: "mkdir".into(),
        target: target.display().to_string(),
        source,
    })?;
    let real = target.canonicalize().map_err(step("resolving a mount point"))?;
    if !real.starts_with(rootfs) {
        return Err(RootfsError::Escapes(target.to_path_buf()));
    }
    Ok(real)
}

/// mount(2) flags for an option word; `None` for a file-system-specific option.
fn option_flag(opt: &str) -> Option<(bool, libc::c_ulong)> {
    Some(match opt {
        "ro" | "rdonly" => (true, libc::MS_RDONLY),
        "rw" => (false, libc::MS_RDONLY),
        "nosuid" => (true, libc::MS_NOSUID),
        "suid" => (false, libc::MS_NOSUID),
        "nodev" => (true, libc::MS_NODEV),
        "dev" => (false, libc::MS_NODEV),
        "noexec" => (true, libc::MS_NOEXEC),
        "exec" => (false, libc::MS_NOEXEC),
        "sync" => (true, libc::MS_SYNCHRONOUS),
        "async" => (false, libc::MS_SYNCHRONOUS),
        "dirsync" => (true, libc::MS_DIRSYNC),
        "remount" => (true, libc::MS_REMOUNT),
        "mand" => (true, libc::MS_MANDLOCK),
        "nomand" => (false, libc::MS_MANDLOCK),
        "noatime" => (true, libc::MS_NOATIME),
        "atime" => (false, libc::MS_NOATIME),
        "nodiratime" => (true, libc::MS_NODIRATIME),
        "diratime" => (false, libc::MS_NODIRATIME),
        "bind" => (true, libc::MS_BIND),
        "rbind" => (true, libc::MS_BIND | libc::MS_REC),
        "relatime" => (true, libc::MS_RELATIME),
        "norelatime" => (false, libc::MS_RELATIME),
        "strictatime" => (true, libc::MS_STRICTATIME),
        "nostrictatime" => (false, libc::MS_STRICTATIME),
        _ => return None,
    })
}

fn propagation_flag(opt: &str) -> Option<libc::c_ulong> {
    Some(match opt {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

/// Splits options into (flags, propagation flags, data string).
fn parse_options(options: &[String]) -> (libc::c_ulong, libc::c_ulong, String) {
    let (mut flags, mut prop, mut data) = (0, 0, Vec::new());
    for o in options {
        if let Some((set, f)) = option_flag(o) {
            if set {
                flags |= f
            } else {
                flags &= !f
            }
        } else if let Some(p) = propagation_flag(o) {
            prop |= p;
        } else {
            data.push(o.as_str());
        }
    }
    (flags, prop, data.join(","))
}

fn mount_one(rootfs: &Path, m: &Mount, user_ns: bool) -> Result<(), RootfsError> {
    let options = m.options().clone().unwrap_or_default();
    let (flags, prop, data) = parse_options(&options);
    let declared = m.typ().clone().unwrap_or_else(|| "none".into());
    // The guest kernel has cgroup v2 only.
    let fstype = if declared == "cgroup" {
        "cgroup2".to_string()
    } else {
        declared
    };
    let is_bind = flags & libc::MS_BIND != 0 || fstype == "bind";
    let source = m
        .source()
        .as_ref()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| fstype.clone());
    // Validated (absolute, no `..`), then resolved inside the rootfs, symlinks included.
    join_inside(rootfs, m.destination())?;
    let dest = secure_join(rootfs, m.destination()).map_err(step("resolving a mount destination"))?;
    let source_is_file = is_bind && Path::new(&source).metadata().map(|md| !md.is_dir()).unwrap_or(false);
    let target = create_target(rootfs, &dest, source_is_file)?;
    let err = |source: io::Error| RootfsError::Mount {
        what: format!(
            "{fstype} {source_name}",
            source_name = m.source().as_ref().map_or(String::new(), |s| s.display().to_string())
        ),
        target: m.destination().display().to_string(),
        source,
    };
    if is_bind {
        mount(
            Some(&source),
            &target,
            None,
            libc::MS_BIND | (flags & libc::MS_REC),
            None,
        )
        .map_err(err)?;
        let mut rest = flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
        if rest != 0 {
            if user_ns {
                rest |= statvfs_flags(&target).map_err(err)? & LOCKED_FLAGS;
            }
            mount(None, &target, None, libc::MS_BIND | libc::MS_REMOUNT | rest, None).map_err(err)?;
        }
    } else {
        let data = if fstype == "cgroup2" { String::new() } else { data };
        match mount(Some(&source), &target, Some(&fstype), flags, Some(&data)) {
            Err(e) if user_ns && e.raw_os_error() == Some(libc::EPERM) && guest_copy(&fstype).is_some() => {
                let from = guest_copy(&fstype).unwrap_or_default();
                mount(Some(from), &target, None, libc::MS_BIND, None).map_err(err)?;
                let kept = statvfs_flags(&target).map_err(err)? & LOCKED_FLAGS;
                mount(
                    None,
                    &target,
                    None,
                    libc::MS_BIND | libc::MS_REMOUNT | flags | kept,
                    None,
                )
                .map_err(err)?;
            }
            r => r.map_err(err)?,
        }
    }
    if prop != 0 {
        mount(None, &target, None, prop, None).map_err(err)?;
    }
    Ok(())
}

/// A sysfs of the guest's with nothing mounted under it (the guest's /sys has its root cgroup at
/// /sys/fs/cgroup): what a user-namespaced container without a network namespace of its own binds as /sys.
pub const BARE_SYSFS: &str = "/run/hull/sysfs";

/// Mounts [`BARE_SYSFS`] (read-only) unless it is there: the agent calls it before it starts a container in a
/// user namespace.
pub fn ensure_bare_sysfs() -> io::Result<()> {
    let at = Path::new(BARE_SYSFS);
    if at.join("kernel").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(at)?;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount(Some("sysfs"), at, Some("sysfs"), flags, None)
}

/// The guest's mount a user-namespaced container binds when it may not mount a file system of this type.
fn guest_copy(fstype: &str) -> Option<&'static str> {
    match fstype {
        "sysfs" => Some(BARE_SYSFS),
        "mqueue" => Some("/dev/mqueue"),
        _ => None,
    }
}

/// Per-mount flags a bind remount must keep (the kernel refuses to clear them in a user namespace, and runc
/// keeps them anyway).
const LOCKED_FLAGS: libc::c_ulong = libc::ST_NOSUID | libc::ST_NODEV | libc::ST_NOEXEC;

/// Character devices every container gets when its /dev is a fresh tmpfs: (name, major, minor).
const DEFAULT_DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

fn create_devices(rootfs: &Path, spec: &Spec, user_ns: bool) -> Result<(), RootfsError> {
    let dev = rootfs.join("dev");
    let mknod = |path: &Path, kind: libc::mode_t, mode: u32, major: u32, minor: u32| -> io::Result<()> {
        let _ = std::fs::remove_file(path);
        if user_ns {
            return bind_guest_device(path, major, minor);
        }
        let p = cpath(path)?;
        // SAFETY: `p` is a valid C string; mknod takes plain values otherwise.
        cvt(unsafe { libc::mknod(p.as_ptr(), kind | mode as libc::mode_t, libc::makedev(major, minor)) })?;
        // The umask applied to mknod; set the mode the spec asked for.
        // SAFETY: as above.
        cvt(unsafe { libc::chmod(p.as_ptr(), mode as libc::mode_t) }).map(drop)
    };
    for (name, major, minor) in DEFAULT_DEVICES {
        mknod(&dev.join(name), libc::S_IFCHR, 0o666, *major, *minor).map_err(step("creating default devices"))?;
    }
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        let path = join_inside(rootfs, d.path())?;
        let kind = match serde_json::to_value(d.typ())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .as_deref()
        {
            Some("b") => libc::S_IFBLK,
            Some("p") => libc::S_IFIFO,
            _ => libc::S_IFCHR,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(step("creating a device's directory"))?;
        }
        let (major, minor) = (
            u32::try_from(d.major()).unwrap_or(0),
            u32::try_from(d.minor()).unwrap_or(0),
        );
        mknod(&path, kind, d.file_mode().unwrap_or(0o666) & 0o7777, major, minor).map_err(step("creating a device"))?;
        if let (Some(uid), Some(gid), false) = (d.uid(), d.gid(), user_ns) {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(step("chown of a device"))?;
        }
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let p = dev.join(link);
        let _ = std::fs::remove_file(&p);
        symlink(to, &p).map_err(step("creating /dev symlinks"))?;
    }
    Ok(())
}

/// In a user namespace no device node can be made: the guest's node with the same numbers is bound onto an
/// empty file at `path`, as runc binds the host's. The guest's /dev (devtmpfs) has every device its kernel has.
fn bind_guest_device(path: &Path, major: u32, minor: u32) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let wanted = libc::makedev(major, minor);
    let source = std::fs::read_dir("/dev")?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::symlink_metadata(p).is_ok_and(|md| {
                (md.file_type().is_char_device() || md.file_type().is_block_device()) && md.rdev() == wanted
            })
        })
        .ok_or_else(|| io::Error::other(format!("the guest has no device {major}:{minor} to bind")))?;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    mount(Some(&source.to_string_lossy()), path, None, libc::MS_BIND, None)
}

/// Builds the view and pivots into it. Called in `hull-init`, in its own mount namespace.
/// `user_ns`: we are root of a new user namespace, so what only the guest's root may do is done as runc does
/// it there: device nodes are bind mounts of the guest's, and sysfs or mqueue, which the kernel refuses to
/// mount without a network or IPC namespace of our own, become binds of the guest's.
pub fn setup(spec: &Spec, rootfs: &Path, user_ns: bool) -> Result<(), RootfsError> {
    // Nothing we mount may propagate back to the agent's namespace.
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None).map_err(step("making / private"))?;
    mount(
        Some(&rootfs.to_string_lossy()),
        rootfs,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(step("binding the rootfs onto itself"))?;
    let rootfs = rootfs.canonicalize().map_err(step("resolving the rootfs"))?;
    let mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mounts {
        mount_one(&rootfs, m, user_ns)?;
    }
    let dev_is_tmpfs = mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs"));
    if dev_is_tmpfs {
        create_devices(&rootfs, spec, user_ns)?;
    }
    pivot(&rootfs)?;
    let linux = spec.linux().clone().unwrap_or_default();
    // Sysctls first, as runc: /proc/sys is read-only once the read-only paths are applied.
    // A namespace of its own: a new one, or one it joined (only another container's can be joined, never the
    // guest's; see containers/namespaces.rs).
    let has_ns = |t: LinuxNamespaceType| linux.namespaces().iter().flatten().any(|n| n.typ() == t);
    for (key, value) in linux.sysctl().clone().unwrap_or_default() {
        if key.contains('/') || key.split('.').any(|c| c.is_empty() || c == "..") {
            return Err(RootfsError::Step {
                step: "sysctl",
                source: io::Error::other(format!("bad key {key:?}")),
            });
        }
        sysctl_is_namespaced(&key, has_ns(LinuxNamespaceType::Ipc), has_ns(LinuxNamespaceType::Uts)).map_err(
            |why| RootfsError::Step {
                step: "sysctl",
                source: io::Error::other(why),
            },
        )?;
        crate::sys::write_file(&Path::new("/proc/sys").join(key.replace('.', "/")), &value).map_err(step("sysctl"))?;
    }
    for p in linux.masked_paths().clone().unwrap_or_default() {
        mask(Path::new(&p))?;
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        read_only(Path::new(&p))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        let kept = statvfs_flags(Path::new("/")).map_err(step("making the rootfs read-only"))? & LOCKED_FLAGS;
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept,
            None,
        )
        .map_err(step("making the rootfs read-only"))?;
    }
    Ok(())
}

/// Whether the container may set sysctl `key`: only the ones its own namespaces scope, as runc allows,
/// because every other one is the guest kernel's and would reach past the container (`kernel.core_pattern`
/// runs a program as the guest's root). IPC ones need a new IPC namespace, `kernel.domainname` a new UTS
/// one; `net.*` ones scope the network namespace the container shares with its VM, which is its pod's.
fn sysctl_is_namespaced(key: &str, ipc: bool, uts: bool) -> Result<(), String> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        return if ipc {
            Ok(())
        } else {
            Err(format!("sysctl {key} needs a new IPC namespace"))
        };
    }
    if key == "kernel.domainname" {
        return if uts {
            Ok(())
        } else {
            Err(format!("sysctl {key} needs a new UTS namespace"))
        };
    }
    if key == "kernel.hostname" {
        return Err("sysctl kernel.hostname: set the spec's hostname instead".into());
    }
    if key.starts_with("net.") {
        return Ok(());
    }
    Err(format!(
        "sysctl {key} is not namespaced: it would change the whole guest, not this container"
    ))
}

/// pivot_root into `rootfs` and detach the old root (the `pivot_root(".", ".")` idiom).
fn pivot(rootfs: &Path) -> Result<(), RootfsError> {
    let dot = c".";
    let r = cpath(rootfs).map_err(step("pivot_root"))?;
    // SAFETY: valid C strings; the syscalls take no other pointers.
    unsafe {
        cvt(libc::chdir(r.as_ptr())).map_err(step("chdir to the rootfs"))?;
        cvt(libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) as libc::c_int)
            .map_err(step("pivot_root"))?;
        cvt(libc::umount2(dot.as_ptr(), libc::MNT_DETACH)).map_err(step("detaching the old root"))?;
        cvt(libc::chdir(c"/".as_ptr())).map_err(step("chdir /"))?;
    }
    Ok(())
}

fn mask(path: &Path) -> Result<(), RootfsError> {
    let err = |source| RootfsError::Mount {
        what: "mask".into(),
        target: path.display().to_string(),
        source,
    };
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
        Ok(md) if md.is_dir() => mount(Some("tmpfs"), path, Some("tmpfs"), libc::MS_RDONLY, None).map_err(err),
        Ok(_) => mount(Some("/dev/null"), path, None, libc::MS_BIND, None).map_err(err),
    }
}

fn read_only(path: &Path) -> Result<(), RootfsError> {
    let err = |source| RootfsError::Mount {
        what: "read-only".into(),
        target: path.display().to_string(),
        source,
    };
    if !path.exists() {
        return Ok(());
    }
    mount(
        Some(&path.to_string_lossy()),
        path,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )
    .map_err(err)?;
    // A bind remount sets every per-mount flag: keep the nosuid/nodev/noexec the mount had (as runc does),
    // so /proc/sys stays as restricted as /proc.
    let kept = statvfs_flags(path).map_err(err)? & LOCKED_FLAGS;
    mount(
        None,
        path,
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC | kept,
        None,
    )
    .map_err(err)
}

/// The mount flags (`ST_*`, the same bits as `MS_*` for nosuid, nodev, noexec) of the mount holding `path`.
fn statvfs_flags(path: &Path) -> io::Result<libc::c_ulong> {
    let p = cpath(path)?;
    // SAFETY: a valid C string and a zeroed struct the kernel fills.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        cvt(libc::statvfs(p.as_ptr(), &mut st))?;
        Ok(st.f_flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_namespaced_sysctls_are_allowed() {
        assert!(sysctl_is_namespaced("kernel.shm_rmid_forced", true, false).is_ok());
        assert!(sysctl_is_namespaced("fs.mqueue.queues_max", true, false).is_ok());
        assert!(sysctl_is_namespaced("kernel.shm_rmid_forced", false, true).is_err());
        assert!(sysctl_is_namespaced("net.ipv4.ip_forward", false, false).is_ok());
        assert!(sysctl_is_namespaced("kernel.domainname", false, true).is_ok());
        assert!(sysctl_is_namespaced("kernel.hostname", true, true).is_err());
        for global in [
            "kernel.core_pattern",
            "vm.overcommit_memory",
            "kernel.modprobe",
            "fs.file-max",
        ] {
            let e = sysctl_is_namespaced(global, true, true).unwrap_err();
            assert!(e.contains("not namespaced"), "{global}: {e}");
        }
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = |v: &[&str]| parse_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (f, p, d) = o(&["nosuid", "noexec", "mode=755", "size=65536k", "rprivate"]);
        assert_eq!(f, libc::MS_NOSUID | libc::MS_NOEXEC);
        assert_eq!(p, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(d, "mode=755,size=65536k");
        let (f, _, _) = o(&["ro", "rw"]);
        assert_eq!(f, 0);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = std::env::temp_dir().join(format!("hull-securejoin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("run/shm")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/run", root.join("varrun")).unwrap();
        symlink("../../../../etc", root.join("etc/up")).unwrap();
        symlink("/etc/loop", root.join("etc/loop")).unwrap();
        let j = |p: &str| secure_join(&root, Path::new(p));
        assert_eq!(j("/varrun/shm").unwrap(), root.join("run/shm"));
        assert_eq!(j("/etc/up/passwd").unwrap(), root.join("etc/passwd"));
        assert_eq!(j("/new/dir").unwrap(), root.join("new/dir"));
        assert_eq!(j("/etc/loop").unwrap_err().raw_os_error(), Some(libc::ELOOP));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn destinations_must_stay_inside() {
        let root = Path::new("/r");
        assert_eq!(join_inside(root, Path::new("/proc")).unwrap(), PathBuf::from("/r/proc"));
        assert!(join_inside(root, Path::new("proc")).is_err());
        assert!(join_inside(root, Path::new("/a/../../etc")).is_err());
    }
}
