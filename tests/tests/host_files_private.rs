//! Host files are private (issue 10, item 3): everything hull, `hull run` and the shim create on the host — run
//! and pod directories, the image cache, rootfs and volume images (a volume can hold Kubernetes Secrets),
//! sockets (API, vsock, vhost-user, slot control), console and process logs, the VM record — is owner-only
//! through its own mode, whatever the umask: directories 0700, files and sockets 0600.
//!
//! Each test sets umask 000 in this process before starting anything, so every child inherits it. While a
//! VM runs, the test walks every directory hull made (found as what is new in the directories it was told
//! to use), asserts the modes, checks that every file or socket the VM's processes hold open lies inside
//! those directories, and then, as uid and gid 65534 (a forked child that drops to `nobody`), tries to read
//! every file and directory and to connect to every socket: each attempt must fail with EACCES.

mod run_common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hull_tests::containerd::{Containerd, ContainerdOptions, CTR_NAMESPACE};
use hull_tests::oci_image::{self, BUSYBOX_IMAGE};
use hull_tests::{skip, tiny_guest, Hull, TempDir};
use run_common::*;

const NOBODY: libc::uid_t = 65534;
/// hull-jailer's default `--chroot-base-dir`.
const JAIL_BASE: &str = "/srv/jailer";

/// umask 000 for this process and everything it starts: hull must not rely on the caller's umask.
fn open_umask() {
    // SAFETY: umask(2) cannot fail.
    unsafe { libc::umask(0) };
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes a directory the test made traversable by everyone, so that only the modes of what hull creates
/// inside it stand between `nobody` and hull's files.
fn open_up(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Socket,
    /// The FIFOs hull copies a child's output through (`runtime/src/output.rs`) while it runs.
    Fifo,
    Device,
    Link,
    Other,
}

#[derive(Debug)]
struct Entry {
    path: PathBuf,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
}

fn entry(path: &Path) -> Entry {
    let md = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() || ft.is_block_device() {
        Kind::Device
    } else if ft.is_symlink() {
        Kind::Link
    } else {
        Kind::Other
    };
    Entry {
        path: path.to_path_buf(),
        kind,
        mode: md.permissions().mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    }
}

/// `root` and everything below it (symlinks not followed; entries that vanish meanwhile are skipped).
fn walk(root: &Path) -> Vec<Entry> {
    let mut out = vec![entry(root)];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if std::fs::symlink_metadata(e.path()).is_err() {
                continue;
            }
            let en = entry(&e.path());
            if en.kind == Kind::Dir {
                stack.push(en.path.clone());
            }
            out.push(en);
        }
    }
    out
}

/// Entries of `dir` that were not in `before`.
fn new_entries(dir: &Path, before: &[PathBuf]) -> Vec<PathBuf> {
    let mut new: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !before.contains(p))
        .collect();
    new.sort();
    new
}

/// The entries of `path` if it is a directory (hull's own, never a symlink), else none.
fn listing_if_dir(path: &Path) -> Vec<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => listing(path),
        _ => Vec::new(),
    }
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()).collect()
}

/// What went wrong with the modes: directories must be 0700, files, sockets and FIFOs 0600, and nothing
/// else (links, devices) may be there. (The owner may be a jail's uid; `nobody` is tried separately.)
fn bad_modes(entries: &[Entry]) -> Vec<String> {
    // SAFETY: geteuid(2) cannot fail.
    let me = unsafe { libc::geteuid() };
    entries
        .iter()
        .filter_map(|e| {
            let want = match e.kind {
                Kind::Dir => 0o700,
                Kind::File | Kind::Socket | Kind::Fifo => 0o600,
                // Device nodes a jail needs (/dev/kvm, /dev/net/tun): their modes are the host's; what
                // guards them is the jail's 0700 directory, which the nobody probe tries.
                Kind::Device => return None,
                // A symlink's mode means nothing; its target is checked where it lies.
                Kind::Link => return None,
                Kind::Other => {
                    return Some(format!(
                        "{}: neither a directory, a file nor a socket",
                        e.path.display()
                    ))
                }
            };
            (e.mode != want && !public_copy(e) && !jail_access(e, entries)).then(|| {
                format!(
                    "{} ({:?}): mode {:o} owner {} (want {want:o}; this test runs as uid {me})",
                    e.path.display(),
                    e.kind,
                    e.mode,
                    e.uid
                )
            })
        })
        .collect()
}

/// The uid and gid the jails among `entries` drop to: the owners of their `<id>/root` directories.
fn jail_ids(entries: &[Entry]) -> Vec<(u32, u32)> {
    entries
        .iter()
        .filter(|e| e.kind == Kind::Dir && e.path.starts_with(JAIL_BASE) && e.path.iter().count() == 6)
        .filter(|e| e.path.file_name().is_some_and(|n| n == "root"))
        .map(|e| (e.uid, e.gid))
        .collect()
}

/// What hull's confinement needs beyond 0600/0700, and may have: a jail's top directory `<base>/<exec>/<id>`
/// 0711 (a jailed QEMU, running as the jail's uid outside any chroot, reaches the device backends' sockets
/// through it; its `root/` is 0700 and the jail uid's), and an image a jailed process only reads, 0640 with
/// the jail's group (root stays the owner, so no jailed process can make a shared cached image writable).
/// Neither gives anyone but root and the jail's own ids anything, which the `nobody` probe checks.
fn jail_access(e: &Entry, entries: &[Entry]) -> bool {
    let jails = jail_ids(entries);
    match e.kind {
        Kind::Dir => e.mode == 0o711 && e.path.starts_with(JAIL_BASE) && e.path.iter().count() == 5,
        Kind::File => e.mode == 0o640 && e.uid == 0 && jails.iter().any(|(_, gid)| *gid == e.gid && *gid != 0),
        _ => false,
    }
}

/// Whether `e` is a copy of something public rather than hull's data, which may keep its mode: inside a
/// jail's root, a file or directory mirroring a world-readable one of the host (the exec file's libraries),
/// or a file with the content of the hull binary or of the guest kernel or initramfs (a jail's exec file,
/// what a jailed QEMU is given).
fn public_copy(e: &Entry) -> bool {
    let mirrored = e
        .path
        .strip_prefix(JAIL_BASE)
        .ok()
        .and_then(|rest| {
            rest.iter()
                .skip(2)
                .collect::<PathBuf>()
                .strip_prefix("root")
                .ok()
                .map(Path::to_path_buf)
        })
        .map(|inside| Path::new("/").join(inside));
    if let Some(host) = mirrored {
        match std::fs::metadata(&host) {
            Ok(md) if md.is_dir() && e.kind == Kind::Dir => return md.permissions().mode() & 0o005 == 0o005,
            Ok(md)
                if md.is_file()
                    && md.permissions().mode() & 0o004 != 0
                    && std::fs::read(&host).ok() == std::fs::read(&e.path).ok() =>
            {
                return true
            }
            _ => {}
        }
    }
    if e.kind != Kind::File {
        return false;
    }
    let guest = hull_tests::guest_images();
    let size = std::fs::metadata(&e.path).map(|m| m.len()).unwrap_or(0);
    [hull_tests::hull_bin(), guest.kernel, guest.initrd]
        .iter()
        .any(|public| {
            std::fs::metadata(public).is_ok_and(|m| m.len() == size)
                && std::fs::read(public).ok() == std::fs::read(&e.path).ok()
        })
}

/// Tries, as uid and gid 65534 without supplementary groups, to read every entry (list a directory, open a
/// file) and to connect to every socket; returns each attempt's errno (0: it worked). A forked child does
/// the attempts with system calls only, on buffers prepared before the fork.
fn errnos_as_nobody(entries: &[Entry]) -> Vec<i32> {
    struct Attempt {
        kind: Kind,
        path: CString,
        addr: libc::sockaddr_un,
        addr_len: libc::socklen_t,
    }
    let attempts: Vec<Attempt> = entries
        .iter()
        .map(|e| {
            let bytes = e.path.as_os_str().as_bytes();
            // SAFETY: an all-zero sockaddr_un is valid.
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            assert!(
                bytes.len() < addr.sun_path.len(),
                "{} too long for a socket",
                e.path.display()
            );
            for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            Attempt {
                kind: e.kind,
                path: CString::new(bytes).unwrap(),
                addr,
                addr_len: (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t,
            }
        })
        .collect();
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only makes system calls (async-signal-safe) on memory prepared before the fork, and
    // ends with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: see above; nothing here allocates or takes a lock.
        unsafe {
            libc::close(fds[0]);
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                libc::_exit(100);
            }
            for a in &attempts {
                let fd = match a.kind {
                    Kind::Socket => {
                        let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                        if s >= 0 && libc::connect(s, (&a.addr as *const libc::sockaddr_un).cast(), a.addr_len) != 0 {
                            let errno = *libc::__errno_location();
                            libc::close(s);
                            *libc::__errno_location() = errno;
                            -1
                        } else {
                            s
                        }
                    }
                    Kind::Dir => libc::open(a.path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC),
                    _ => libc::open(a.path.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC),
                };
                let errno: i32 = if fd < 0 { *libc::__errno_location() } else { 0 };
                if fd >= 0 {
                    libc::close(fd);
                }
                libc::write(fds[1], (&errno as *const i32).cast(), 4);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end; reading into a buffer we own; reaping our child.
    unsafe { libc::close(fds[1]) };
    let mut out = Vec::new();
    let mut buf = [0u8; 4];
    while out.len() < attempts.len() {
        // SAFETY: reading 4 bytes into `buf`.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), 4) };
        if n != 4 {
            break;
        }
        out.push(i32::from_ne_bytes(buf));
    }
    let mut status = 0;
    // SAFETY: our child; the pipe's read end is ours.
    unsafe {
        libc::close(fds[0]);
        libc::waitpid(pid, &mut status, 0);
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the prober could not become nobody (status {status:#x})"
    );
    assert_eq!(out.len(), attempts.len());
    out
}

/// Every entry that `nobody` could read or connect to, or that failed with anything but EACCES.
fn readable_by_nobody(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .zip(errnos_as_nobody(entries))
        .filter(|(_, errno)| *errno != libc::EACCES)
        .map(|(e, errno)| {
            format!(
                "{} ({:?}): {}",
                e.path.display(),
                e.kind,
                if errno == 0 {
                    "nobody got in".to_string()
                } else {
                    std::io::Error::from_raw_os_error(errno).to_string()
                }
            )
        })
        .collect()
}

/// Whether process `pid` is gone or a zombie.
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true)
}

/// The `<pid>-<nanos>` of a run or VM directory `hull-run-<pid>-<nanos>`.
fn run_tag(dir: &Path) -> Option<String> {
    Some(dir.file_name()?.to_str()?.strip_prefix("hull-run-")?.to_string())
}

/// The jails made for the run tagged `tag`: `<JAIL_BASE>/<exec>/<id>` whose id carries the tag.
fn jails_of(tag: &str) -> Vec<PathBuf> {
    let mut jails = Vec::new();
    for exec in std::fs::read_dir(JAIL_BASE).into_iter().flatten().flatten() {
        for jail in std::fs::read_dir(exec.path()).into_iter().flatten().flatten() {
            if jail.file_name().to_string_lossy().contains(tag) {
                jails.push(jail.path());
            }
        }
    }
    jails
}

/// The jails of the VMs whose directories are in `dir`.
fn jails_of_dirs(dir: &Path) -> Vec<PathBuf> {
    listing_if_dir(dir)
        .iter()
        .filter_map(|d| run_tag(d))
        .flat_map(|t| jails_of(&t))
        .collect()
}

/// The processes of a `hull run` whose run directory is `run_dir`: its descendants, and processes that left
/// its tree (a jailer that daemonizes) but carry the run's `<pid>-<nanos>` in their command line (jail ids
/// are made from the run directory's name).
fn run_processes(run_pid: u32, run_dir: &Path) -> Vec<u32> {
    let tag = run_tag(run_dir).unwrap_or_default();
    let mut pids = process_tree(run_pid);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !pids.contains(&pid) && String::from_utf8_lossy(&cmd).contains(&tag) {
            pids.extend(process_tree(pid));
        }
    }
    pids.sort();
    pids.dedup();
    pids
}

/// `pid` and all its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let p: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// The files (regular, changed since `since`) and named unix sockets that `pids` hold open: what they made or
/// serve, wherever it is.
fn held_paths(pids: &[u32], since: SystemTime) -> Vec<PathBuf> {
    let mut sockets = std::collections::HashMap::new();
    for line in std::fs::read_to_string("/proc/net/unix").unwrap().lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let (Some(inode), Some(path)) = (cols.get(6), cols.get(7)) {
            sockets.insert(inode.to_string(), path.to_string());
        }
    }
    let mut held = Vec::new();
    for pid in pids {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy().to_string();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                // The path as bound, seen from the process: relative to its working directory, or to its root
                // (a jail's chroot) when absolute.
                if let Some(path) = sockets.get(inode) {
                    let from = if path.starts_with('/') { "root" } else { "cwd" };
                    if let Ok(base) = std::fs::read_link(format!("/proc/{pid}/{from}")) {
                        held.push(base.join(path.trim_start_matches('/')));
                    }
                }
                continue;
            }
            let Ok(md) = std::fs::metadata(&target) else { continue };
            let changed = SystemTime::UNIX_EPOCH + Duration::from_secs(md.ctime().max(0) as u64);
            if md.is_file() && changed >= since {
                held.push(target);
            }
        }
    }
    held.sort();
    held.dedup();
    held
}

/// Asserts that what hull made under `roots` is owner-only and out of `nobody`'s reach, and that the
/// processes of `pids` hold no file or socket they made elsewhere.
fn assert_private(what: &str, roots: &[PathBuf], pids: &[u32], since: SystemTime) {
    assert!(!roots.is_empty(), "{what}: found nothing hull made");
    let held = held_paths(pids, since);
    // The jails hull made for the VM's processes (hull-jailer's `<base>/<exec>/<id>`, ids made from the name
    // of the run's or VM's directory): hull's directories too.
    let mut roots = roots.to_vec();
    let run_dirs: Vec<PathBuf> = roots
        .iter()
        .flat_map(|r| std::iter::once(r.clone()).chain(listing_if_dir(r)))
        .collect();
    for tag in run_dirs.iter().filter_map(|d| run_tag(d)) {
        roots.extend(jails_of(&tag));
    }
    let entries: Vec<Entry> = roots.iter().flat_map(|r| walk(r)).collect();
    let sockets = entries.iter().filter(|e| e.kind == Kind::Socket).count();
    let files = entries.iter().filter(|e| e.kind == Kind::File).count();
    hull_tests::note(&format!(
        "{what}: {} entries ({files} files, {sockets} sockets) under {roots:?}",
        entries.len()
    ));
    let bad = bad_modes(&entries);
    assert!(bad.is_empty(), "{what}: not owner-only:\n{}", bad.join("\n"));
    let outside: Vec<PathBuf> = held
        .into_iter()
        .filter(|p| !roots.iter().any(|r| p.starts_with(r)))
        // A jailed process names paths in its own mount namespace; those that do not exist in ours are
        // inside its jail, which is among the roots.
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .collect();
    assert!(
        outside.is_empty(),
        "{what}: the VM's processes hold files or sockets made outside {roots:?}: {outside:#?}"
    );
    let open = readable_by_nobody(&entries);
    assert!(open.is_empty(), "{what}: open to uid 65534:\n{}", open.join("\n"));
}

/// A volume whose file only root may read, as a Kubernetes Secret's.
fn secret_volume(base: &Path) -> PathBuf {
    let vol = base.join("vol");
    std::fs::create_dir(&vol).unwrap();
    open_up(&vol);
    let secret = vol.join("token");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    vol
}

/// Waits until `f` returns something, up to `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `hull run` with `backend` and a secret volume, its run directory under a private `XDG_RUNTIME_DIR`
/// (and `TMPDIR`). The test looks once the VM's processes hold a file or socket named by each of `held`
/// (wherever it is: in the run directory, or in a jail), and, for `auto`, once the container has read the
/// secret.
fn check_hull_run(backend: &str, held: &[&str]) {
    open_umask();
    let base = TempDir::new("host-files").unwrap();
    open_up(base.path());
    let runtime_dir = base.path().join("xdg");
    std::fs::create_dir(&runtime_dir).unwrap();
    open_up(&runtime_dir);
    let vol = secret_volume(base.path());
    let since = SystemTime::now() - Duration::from_secs(2);
    let mut cmd = command_on(
        backend,
        &["--init", "-v", &format!("{}:/data", vol.display())],
        &["sh", "-c", "cat /data/token; echo ready; exec sleep 600"],
    );
    cmd.env("XDG_RUNTIME_DIR", &runtime_dir).env("TMPDIR", &runtime_dir);
    let mut run = HullRun::spawn(cmd, None);
    let run_dir = wait_for("the run directory", RUN_TIMEOUT, || {
        listing(&runtime_dir).first().cloned()
    });
    wait_for("the VM's files and sockets", RUN_TIMEOUT, || {
        assert!(!exited(run.pid()), "hull run ended early:\n{}", run.stderr_now());
        let paths = held_paths(&run_processes(run.pid(), &run_dir), since);
        held.iter()
            .all(|name| paths.iter().any(|p| p.file_name().is_some_and(|f| f == *name)))
            .then_some(())
    });
    if backend == "auto" {
        run.wait_stdout("ready", RUN_TIMEOUT);
        assert!(run.stdout_now().starts_with("s3cret\n"), "{}", run.stderr_now());
    }
    let roots = new_entries(&runtime_dir, &[]);
    assert_eq!(roots, vec![run_dir.clone()], "hull run made one run directory");
    assert_private(
        &format!("hull run --backend {backend}"),
        &roots,
        &run_processes(run.pid(), &run_dir),
        since,
    );
    run.signal(libc::SIGTERM);
    let out = run.finish();
    assert!(
        listing(&runtime_dir).is_empty(),
        "the run directory is gone\n{}",
        out.stderr
    );
}

/// The qemu backend (what `auto` picks here; the kvm backend on hardware KVM): the run directory with the
/// rootfs and volume images, QEMU's console and log, the vhost-user and vsock sockets, the backends' logs.
#[test]
fn hull_run_files_are_owner_only() {
    check_hull_run("auto", &["vsock.sock", "vsock-vu.sock"]);
}

/// The kvm backend (hull as the VMM): its API socket, console file and vsock socket. Its guest need not
/// reach user space (it does not on the software kvm_pvm); the files exist once InstanceStart is done.
#[test]
fn hull_run_kvm_backend_files_are_owner_only() {
    if !hull_tests::kvm_usable() {
        skip("hull_run_kvm_backend_files_are_owner_only", "/dev/kvm is not usable");
        return;
    }
    check_hull_run("kvm", &["api.sock", "vsock.sock"]);
}

/// `hull` and `hull vhost-user` started directly by a user with umask 000, in a directory anyone may enter:
/// the API socket, the vsock socket, the console file, the vhost-user sockets and the slot control socket
/// are 0600 by themselves.
#[test]
fn hull_sockets_and_console_are_owner_only_by_their_own_mode() {
    open_umask();
    let since = SystemTime::now() - Duration::from_secs(2);
    let mut made = Vec::new();
    let mut pids = Vec::new();
    let mut dirs = Vec::new();
    let vmm = if hull_tests::kvm_usable() {
        let dir = TempDir::new("host-files-vmm").unwrap();
        open_up(dir.path());
        let config = serde_json::json!({
            "boot-source": { "kernel_image_path": tiny_guest("halt.elf"), "boot_args": "console=ttyS0" },
            "machine-config": { "vcpu_count": 1, "mem_size_mib": 64 },
            "vsock": { "guest_cid": 3, "uds_path": dir.path().join("vsock.sock") },
        });
        std::fs::write(dir.path().join("vm.json"), config.to_string()).unwrap();
        let hull = Hull::spawn_in(
            dir,
            [
                "--api-sock",
                "api.sock",
                "--config-file",
                "vm.json",
                "--serial-out",
                "console.log",
            ],
        );
        let d = hull.dir().to_path_buf();
        wait_for("hull's sockets and console", Duration::from_secs(30), || {
            ["api.sock", "vsock.sock", "console.log"]
                .iter()
                .all(|f| d.join(f).exists())
                .then_some(())
        });
        made.extend(["api.sock", "vsock.sock", "console.log"].map(|f| d.join(f)));
        pids.push(hull.pid());
        dirs.push(d);
        Some(hull)
    } else {
        skip(
            "hull_sockets_and_console_are_owner_only_by_their_own_mode (hull VMM part)",
            "/dev/kvm is not usable",
        );
        None
    };

    let dir = TempDir::new("host-files-vu").unwrap();
    open_up(dir.path());
    let d = dir.path();
    let img = d.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let start = |args: &[&str]| {
        std::process::Command::new(hull_tests::hull_bin())
            .arg("vhost-user")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let s = |p: &str| d.join(p).to_string_lossy().to_string();
    let mut blk = start(&[
        "blk",
        "--socket",
        &s("blk.sock"),
        "--path",
        &s("disk.img"),
        "--id",
        "d0",
    ]);
    let mut slot = start(&[
        "blk",
        "--socket",
        &s("slot.sock"),
        "--path",
        &s("disk.img"),
        "--id",
        "slot0",
        "--control",
        &s("slot.ctl"),
    ]);
    let mut vsock = start(&[
        "vsock",
        "--socket",
        &s("vsock-vu.sock"),
        "--guest-cid",
        "3",
        "--uds-path",
        &s("v.sock"),
    ]);
    pids.extend([blk.id(), slot.id(), vsock.id()]);
    let sockets = ["blk.sock", "slot.sock", "slot.ctl", "vsock-vu.sock"].map(|f| d.join(f));
    wait_for("the vhost-user sockets", Duration::from_secs(20), || {
        sockets.iter().all(|p| p.exists()).then_some(())
    });
    made.extend(sockets);
    if d.join("v.sock").exists() {
        made.push(d.join("v.sock"));
    }

    let entries: Vec<Entry> = made.iter().map(|p| entry(p)).collect();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let bad = bad_modes(&entries);
        assert!(bad.is_empty(), "not owner-only:\n{}", bad.join("\n"));
        let open = readable_by_nobody(&entries);
        assert!(open.is_empty(), "open to uid 65534:\n{}", open.join("\n"));
        dirs.push(d.to_path_buf());
        let outside: Vec<PathBuf> = held_paths(&pids, since)
            .into_iter()
            .filter(|p| !dirs.iter().any(|r| p.starts_with(r)))
            .collect();
        assert!(outside.is_empty(), "files or sockets made elsewhere: {outside:#?}");
    }));
    for c in [&mut blk, &mut slot, &mut vsock] {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(vmm);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// A containerd pod: the shim's work directory with the VM's directory, the image cache, and the VM record
/// in the bundle, while a container with a secret volume runs.
#[test]
fn shim_pod_files_are_owner_only() {
    if !is_root() {
        skip("shim_pod_files_are_owner_only", "needs root for containerd");
        return;
    }
    open_umask();
    hull_tests::ensure_qemu_tools();
    let cfg_dir = TempDir::new("host-files-shim").unwrap();
    open_up(cfg_dir.path());
    let shim_config = cfg_dir.path().join("shim.toml");
    // The shim built with the hull under test (`$HULL_BIN` names another build's).
    let ctd = Containerd::start(ContainerdOptions {
        hull_config_path: Some(shim_config.clone()),
        path_prepend: vec![hull_tests::hull_bin().parent().unwrap().to_path_buf()],
        ..Default::default()
    });
    let d = ctd.dir().to_path_buf();
    open_up(&d);
    let (images, vms) = (d.join("hull-images"), d.join("hull-vms"));
    ctd.write_hull_shim_config(&shim_config, "");
    ctd.import_image(CTR_NAMESPACE, &oci_image::busybox_image());
    let vol = secret_volume(&d);
    let id = format!("private-{}", std::process::id());
    let since = SystemTime::now() - Duration::from_secs(2);
    let cfg = shim_config.to_string_lossy().to_string();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:ro", vol.display());
    let out = ctd.ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.hull.v2",
        "--runtime-config-path",
        &cfg,
        "--mount",
        &mount,
        BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "cat /data/token; exec sleep 600",
    ]);
    assert!(out.success(), "{out:?}\n{}", ctd.report());
    let bundle = d
        .join("state/io.containerd.runtime.v2.task")
        .join(CTR_NAMESPACE)
        .join(&id);
    let record = bundle.join("hull-vm.json");
    wait_for("the VM record", Duration::from_secs(30), || {
        record.exists().then_some(())
    });
    let pids: Vec<u32> = ctd.shim_pids().into_iter().flat_map(process_tree).collect();
    let result = std::panic::catch_unwind(|| {
        let rec = entry(&record);
        assert_eq!(rec.mode, 0o600, "{rec:?}");
        assert_eq!(readable_by_nobody(&[rec]), Vec::<String>::new(), "the VM record");
        // The shim's files outside its own directories: the record, and containerd's (FIFOs, its socket).
        let mut roots = vec![images.clone(), vms.clone()];
        roots.push(record.clone());
        assert_private("shim pod", &roots[..2], &[], since);
        let outside: Vec<PathBuf> = held_paths(&pids, since)
            .into_iter()
            .filter(|p| !roots.iter().any(|r| p.starts_with(r)))
            .filter(|p| !p.starts_with(d.join("state")) && !p.starts_with("/run/containerd"))
            // Paths only a jailed process sees (its own mount namespace) are inside its jail, checked above.
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .filter(|p| !jails_of_dirs(&vms).iter().any(|j| p.starts_with(j)))
            .collect();
        assert!(
            outside.is_empty(),
            "the pod's processes hold files made elsewhere: {outside:#?}"
        );
    });
    let _ = ctd.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    let _ = ctd.ctr(&["task", "delete", &id]);
    let _ = ctd.ctr(&["container", "rm", &id]);
    drop(ctd);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
