//! The jail itself, one function per step; `main` calls them in Firecracker's order. Everything here runs
//! as root in a single-threaded process; nothing it reads comes from the guest or the jailed binary.
//!
//! Inside the jail the exec'd binary finds only: itself (`/<exec name>`), `/dev/kvm`, `/dev/net/tun` and,
//! when the host has it, `/dev/userfaultfd` (character nodes, mode 0600, owned by the jail uid/gid), the
//! directories `/`, `/dev`, `/dev/net`, `/run` (0700, owned by the jail uid/gid), and whatever the caller
//! hard-linked into `<chroot>` before starting the jailer (kernel, disks, ...).

use std::ffi::{CString, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::args::ResourceLimits;
use crate::error::JailerError;

/// A character device the VM may need, as Firecracker creates it in the jail.
pub struct DeviceNode {
    pub path: &'static str,
    pub major: u32,
    pub minor: u32,
}

/// `/dev/kvm`: misc device 10:232 (Documentation/admin-guide/devices.txt).
pub const DEV_KVM: DeviceNode = DeviceNode {
    path: "/dev/kvm",
    major: 10,
    minor: 232,
};
/// `/dev/net/tun`: misc device 10:200 (Documentation/networking/tuntap.rst).
pub const DEV_NET_TUN: DeviceNode = DeviceNode {
    path: "/dev/net/tun",
    major: 10,
    minor: 200,
};
/// `/dev/userfaultfd`'s path; a misc device with a dynamic minor, looked up in `/proc/misc`.
pub const DEV_USERFAULTFD: &str = "/dev/userfaultfd";
/// The jail's directories, created 0700 and owned by the jail uid/gid (`/run` for sockets).
const JAIL_DIRS: [&str; 4] = ["/", "/dev", "/dev/net", "/run"];

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn cstr(p: &Path) -> CString {
    // Paths here come from the command line (no NUL possible) or are constants.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// Closes every descriptor but standard input, output and error.
pub fn close_inherited_fds() -> Result<(), JailerError> {
    // SAFETY: close_range only closes descriptors; nothing in this process uses any above 2 yet.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r < 0 {
        return Err(JailerError::CloseRange(io::Error::last_os_error()));
    }
    Ok(())
}

/// Drops every environment variable (none may leak into the jail).
pub fn clear_env() {
    for (k, _) in std::env::vars_os() {
        // SAFETY: the jailer is single-threaded.
        unsafe { std::env::remove_var(k) };
    }
}

/// The minor of `/dev/userfaultfd` from `/proc/misc` (`257 userfaultfd`), when the host has one.
pub fn userfaultfd_minor() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/misc").ok()?;
    text.lines().find_map(|l| {
        let (minor, name) = l.trim().split_once(' ')?;
        (name.trim() == "userfaultfd").then(|| minor.parse().ok()).flatten()
    })
}

/// Puts the exec file at `<chroot>/<exec name>`: a fresh copy owned by the jail uid/gid with the source's
/// mode (Firecracker: no two jailed processes share the binary's memory), or with `hardlink` a hard link
/// (falling back to a copy across file systems). Returns the path inside the jail.
pub fn place_exec_file(
    exec: &Path,
    name: &str,
    chroot: &Path,
    uid: u32,
    gid: u32,
    hardlink: bool,
) -> Result<PathBuf, JailerError> {
    let dst = chroot.join(name);
    if hardlink {
        match std::fs::hard_link(exec, &dst) {
            Ok(()) => return Ok(Path::new("/").join(name)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && same_file(exec, &dst) => {
                return Ok(Path::new("/").join(name))
            }
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
            Err(e) => return Err(JailerError::HardLinkExec(exec.into(), dst, e)),
        }
    }
    let mut src = File::open(exec).map_err(|e| JailerError::Open(exec.into(), e))?;
    let mode = src.metadata().map_err(|e| JailerError::Read(exec.into(), e))?.mode();
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode & 0o7777)
        .open(&dst)
        .map_err(|e| JailerError::Open(dst.clone(), e))?;
    if out.metadata().map_err(|e| JailerError::Read(dst.clone(), e))?.nlink() > 1 {
        return Err(JailerError::HardLink(dst));
    }
    std::os::unix::fs::fchown(&out, Some(uid), Some(gid)).map_err(|e| JailerError::ChangeFileOwner(dst.clone(), e))?;
    // The source's mode exactly (the umask may have taken bits away at creation).
    out.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| JailerError::Chmod(dst.clone(), e))?;
    io::copy(&mut src, &mut out).map_err(|e| JailerError::Copy(exec.into(), dst.clone(), e))?;
    Ok(Path::new("/").join(name))
}

/// The shared objects a dynamically linked `exec` loads (its program interpreter and libraries), as `ldd`
/// lists them; empty for a static binary. hull's addition: Firecracker's jailer expects a static binary,
/// while a cargo-built hull links glibc dynamically.
pub fn shared_libraries(exec: &Path) -> Result<Vec<PathBuf>, JailerError> {
    let mut head = [0u8; 64];
    let mut f = File::open(exec).map_err(|e| JailerError::Open(exec.into(), e))?;
    let n = io::Read::read(&mut f, &mut head).map_err(|e| JailerError::Read(exec.into(), e))?;
    if n < 4 || &head[..4] != b"\x7fELF" {
        return Ok(Vec::new());
    }
    let out = std::process::Command::new("ldd")
        .arg(exec)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| JailerError::Libraries(exec.into(), e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to bring.
        return Ok(Vec::new());
    }
    // Lines: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`,
    // `linux-vdso.so.1 (0x...)` (in the kernel, no file), `statically linked`.
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => return Err(JailerError::Libraries(exec.into(), line.to_string())),
            _ => {}
        }
    }
    Ok(libs)
}

/// Hard-links (or, across file systems, copies) each library to the same path inside the jail, owned by
/// root and not writable by the jail uid (a link shares the host file's owner and mode).
pub fn place_libraries(libs: &[PathBuf], chroot: &Path) -> Result<(), JailerError> {
    for lib in libs {
        let rel = lib.strip_prefix("/").unwrap_or(lib);
        let dst = chroot.join(rel);
        if let Some(dir) = dst.parent() {
            make_readable_dirs(chroot, dir)?;
        }
        if same_file(lib, &dst) {
            continue;
        }
        // The file itself at the path the binary asks for (`/lib64/ld-linux-x86-64.so.2` is a symlink).
        let src = std::fs::canonicalize(lib).map_err(|e| JailerError::Canonicalize(lib.clone(), e))?;
        match std::fs::hard_link(&src, &dst) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                std::fs::copy(&src, &dst).map_err(|e| JailerError::Copy(src.clone(), dst.clone(), e))?;
            }
            Err(e) => return Err(JailerError::Copy(lib.clone(), dst, e)),
        }
    }
    Ok(())
}

/// Creates `dir` (inside `chroot`) and its missing parents 0755 whatever the umask: the jail uid must reach
/// the libraries, which stay root's.
fn make_readable_dirs(chroot: &Path, dir: &Path) -> Result<(), JailerError> {
    let rel = dir.strip_prefix(chroot).unwrap_or(dir);
    let mut cur = chroot.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::create_dir(&cur) {
            Ok(()) => std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| JailerError::Chmod(cur.clone(), e))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(JailerError::CreateDir(cur, e)),
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Joins the network namespace at `path` (setns with CLONE_NEWNET).
pub fn join_netns(path: &Path) -> Result<(), JailerError> {
    let ns = File::open(path).map_err(|e| JailerError::Open(path.into(), e))?;
    // SAFETY: a valid descriptor of a namespace file.
    cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map_err(JailerError::SetNetNs)
}

/// setrlimit for fsize (when given) and no-file (soft and hard alike).
pub fn set_resource_limits(limits: &ResourceLimits) -> Result<(), JailerError> {
    let set = |res, name, v: u64| {
        let rl = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: a plain value struct.
        cvt(unsafe { libc::setrlimit(res, &rl) }).map_err(|e| JailerError::Setrlimit(name, e))
    };
    if let Some(f) = limits.fsize {
        set(libc::RLIMIT_FSIZE, "fsize", f)?;
    }
    set(libc::RLIMIT_NOFILE, "no-file", limits.no_file)
}

/// A new mount namespace whose root is `chroot`: every mount private, `chroot` bind-mounted on itself,
/// pivot_root into it, the old root detached and removed, then chroot(".") for good measure.
pub fn enter_chroot(chroot: &Path) -> Result<(), JailerError> {
    let root = cstr(Path::new("/"));
    let dir = cstr(chroot);
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null where allowed.
    unsafe {
        cvt(libc::unshare(libc::CLONE_NEWNS)).map_err(JailerError::UnshareNewNs)?;
        cvt(libc::mount(
            none,
            root.as_ptr(),
            none,
            libc::MS_PRIVATE | libc::MS_REC,
            std::ptr::null(),
        ))
        .map_err(JailerError::MountPropagationPrivate)?;
        cvt(libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            none,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))
        .map_err(JailerError::MountBind)?;
    }
    std::env::set_current_dir(chroot).map_err(JailerError::ChdirNewRoot)?;
    match std::fs::create_dir("old_root") {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(JailerError::MkdirOldRoot(e)),
    }
    let dot = cstr(Path::new("."));
    let old = cstr(Path::new("old_root"));
    // SAFETY: as above.
    unsafe {
        cvt(libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), old.as_ptr()) as libc::c_int)
            .map_err(JailerError::PivotRoot)?;
        cvt(libc::umount2(old.as_ptr(), libc::MNT_DETACH)).map_err(JailerError::UmountOldRoot)?;
    }
    std::fs::remove_dir("old_root").map_err(JailerError::RmOldRootDir)?;
    // SAFETY: as above.
    cvt(unsafe { libc::chroot(dot.as_ptr()) }).map_err(JailerError::Chroot)
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), JailerError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| JailerError::ChangeFileOwner(path.into(), e))
}

/// Inside the jail: `/`, `/dev`, `/dev/net`, `/run`, each 0700 and owned by the jail uid/gid.
pub fn make_jail_dirs(uid: u32, gid: u32) -> Result<(), JailerError> {
    for d in JAIL_DIRS {
        let p = Path::new(d);
        std::fs::create_dir_all(p).map_err(|e| JailerError::CreateDir(p.into(), e))?;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| JailerError::Chmod(p.into(), e))?;
        chown(p, uid, gid)?;
    }
    Ok(())
}

/// mknod(path, S_IFCHR | 0600, major:minor) inside the jail, owned by the jail uid/gid.
pub fn make_device(path: &'static str, major: u32, minor: u32, uid: u32, gid: u32) -> Result<(), JailerError> {
    let p = cstr(Path::new(path));
    // SAFETY: a NUL-terminated path.
    cvt(unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(major, minor)) })
        .map_err(|e| JailerError::MknodDev(e, path))?;
    chown(Path::new(path), uid, gid)
}

/// setsid() in a grandchild (double fork, so it can never reacquire a terminal) with standard input,
/// output and error on `/dev/null` (opened before the chroot). The parents exit 0.
pub fn daemonize(dev_null: File) -> Result<(), JailerError> {
    for step in 0..2 {
        // SAFETY: single-threaded; the child continues with a copy of this process.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(JailerError::Daemonize(io::Error::last_os_error()));
        }
        if pid > 0 {
            std::process::exit(0);
        }
        if step == 0 {
            // SAFETY: no arguments.
            cvt(unsafe { libc::setsid() }).map_err(JailerError::SetSid)?;
        }
    }
    for fd in 0..3 {
        // SAFETY: both descriptors are valid.
        cvt(unsafe { libc::dup2(dev_null.as_raw_fd(), fd) }).map_err(JailerError::Dup2)?;
    }
    Ok(())
}

/// Forks into a new PID namespace: returns in the child (PID 1 there); the parent writes the child's PID
/// (as seen from outside) to `pid_file` and exits 0.
pub fn fork_into_new_pid_ns(pid_file: &Path) -> Result<(), JailerError> {
    // SAFETY: clone without CLONE_VM behaves as fork; the process is single-threaded.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(JailerError::Clone(io::Error::last_os_error()));
    }
    if pid > 0 {
        write_pid_file(pid_file, pid as u32)?;
        std::process::exit(0);
    }
    Ok(())
}

/// `<exec name>.pid` in the jail root, created once.
pub fn write_pid_file(path: &Path, pid: u32) -> Result<(), JailerError> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| JailerError::Open(path.into(), e))?;
    write!(f, "{pid}").map_err(|e| JailerError::Write(path.into(), e))
}

/// No supplementary groups, then gid, then uid; checks that root cannot be regained; no_new_privs, so
/// nothing the binary execs gains privileges either. A parent-death signal the jailer was started with is
/// set again after the change (the kernel clears it when credentials change), so a jailed VMM still dies
/// with the process that started the jailer.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailerError> {
    let err = |e| JailerError::DropPrivileges(uid, gid, e);
    let mut pdeathsig: libc::c_int = 0;
    // SAFETY: plain system calls on this process's credentials; prctl writes one int we own.
    unsafe {
        cvt(libc::prctl(libc::PR_GET_PDEATHSIG, &mut pdeathsig as *mut libc::c_int)).map_err(err)?;
        let parent = libc::getppid();
        cvt(libc::setgroups(0, std::ptr::null())).map_err(err)?;
        cvt(libc::setresgid(gid, gid, gid)).map_err(err)?;
        cvt(libc::setresuid(uid, uid, uid)).map_err(err)?;
        if uid != 0 && libc::setuid(0) == 0 {
            return Err(err(io::Error::other("setuid(0) succeeded after the drop")));
        }
        cvt(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)).map_err(err)?;
        if pdeathsig != 0 {
            cvt(libc::prctl(libc::PR_SET_PDEATHSIG, pdeathsig as libc::c_ulong, 0, 0, 0)).map_err(err)?;
            // The parent may have died between the drop and the prctl: then the signal never comes.
            if libc::getppid() != parent {
                libc::raise(pdeathsig);
            }
        }
    }
    Ok(())
}

/// The jailed binary's arguments: Firecracker's jailer passes `--id <id>` first. hull's subcommands
/// (`hull vhost-user ...`) take no `--id`, so when the first argument is not a flag it is left out.
pub fn exec_args(id: &str, extra: &[OsString]) -> Vec<OsString> {
    let subcommand = extra.first().is_some_and(|a| !a.as_bytes().starts_with(b"-"));
    let mut args = Vec::new();
    if !subcommand {
        args.push("--id".into());
        args.push(id.into());
    }
    args.extend(extra.iter().cloned());
    args
}

/// execve with an empty environment; returns only on failure.
pub fn exec(path: &Path, args: &[OsString]) -> JailerError {
    let e = std::process::Command::new(path).args(args).env_clear().exec();
    JailerError::Exec(path.into(), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hull_subcommands_get_no_id() {
        let v = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            exec_args("vm-1", &v(&["--api-sock", "/a"])),
            v(&["--id", "vm-1", "--api-sock", "/a"])
        );
        assert_eq!(exec_args("vm-1", &[]), v(&["--id", "vm-1"]));
        assert_eq!(exec_args("vm-1", &v(&["vhost-user", "blk"])), v(&["vhost-user", "blk"]));
    }

    #[test]
    fn the_exec_file_is_copied_or_linked() {
        let dir = std::env::temp_dir().join(format!("hull-jailer-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("root")).unwrap();
        let src = dir.join("bin");
        std::fs::write(&src, b"#!/bin/sh\n").unwrap();
        let (uid, gid) = (unsafe { libc::getuid() }, unsafe { libc::getgid() });
        let p = place_exec_file(&src, "bin", &dir.join("root"), uid, gid, false).unwrap();
        assert_eq!(p, Path::new("/bin"));
        assert_eq!(std::fs::metadata(dir.join("root/bin")).unwrap().nlink(), 1);
        std::fs::remove_file(dir.join("root/bin")).unwrap();
        place_exec_file(&src, "bin", &dir.join("root"), uid, gid, true).unwrap();
        assert!(same_file(&src, &dir.join("root/bin")));
        // Linking again (a second backend of the same VM) is fine.
        place_exec_file(&src, "bin", &dir.join("root"), uid, gid, true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn userfaultfd_minor_is_read_from_proc_misc() {
        // Either the host has one (a number) or not; never a panic.
        let _ = userfaultfd_minor();
    }
}
