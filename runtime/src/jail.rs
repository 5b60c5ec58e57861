//! Confinement of the processes a VM runs on: each hull process (the VMM of the `kvm` backend, every
//! `hull vhost-user` backend of the `qemu` backend) starts through `hull-jailer` in a chroot of its own,
//! `<base>/hull/<id>/root`, as the VM's jail uid (one per VM, `crate::jail_uid`) and the jail gid; QEMU runs
//! as them too (not chrooted, with its own `-sandbox`).
//!
//! The files a jailed process needs are hard-linked into its chroot before it starts (copied when the
//! chroot is on another file system), and every path it is given is the one inside the chroot (`/vmlinux`,
//! `/rootfs.img`, `/run/api.sock`). What the jail uid may do with a file is set on the file: read-only files
//! get the jail's group and group-read (a hard link shares the inode, so the cached image and the kernel
//! keep one owner: root, and no jail can write them); read-write files are owned by the jail uid (0600).
//! The jail directory goes when the [`Jail`] is dropped, after its process (declare it after the child).
//!
//! Trust: the jail's content is written by the jailed process, which is not trusted; only the runtime's own
//! names inside it (sockets, the console log) are used, and they are only read or connected to.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first jail uid, and the jail gid, when none is configured: not root, not `nobody` (other services
/// run as nobody).
pub const DEFAULT_JAIL_ID: u32 = 64000;
/// How many uids the VMs draw from by default (64000 to 64999, one per running VM: `crate::jail_uid`).
pub const DEFAULT_JAIL_UID_COUNT: u32 = 1000;
/// Firecracker's default base of the chroot jails.
pub const DEFAULT_BASE_DIR: &str = "/srv/jailer";
/// Longest jail id hull-jailer accepts.
const MAX_ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("the jail for {id}: {what} {path}: {source}")]
    Io {
        id: String,
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hull-jailer not found at {0} (build it: cargo build -p hull-jailer; or disable the jail)")]
    NoJailer(PathBuf),
    #[error("no free jail uid: all {count} from {first} are held by running VMs or used by other processes")]
    NoFreeUid { first: u32, count: u32 },
    #[error("setting the owner of TAP {tap}: {source}")]
    Tap { tap: String, source: std::io::Error },
}

/// How VM processes are confined: the `hull-jailer` binary, the uid/gid they run as, the chroot base.
#[derive(Debug, Clone)]
pub struct JailConfig {
    pub jailer: PathBuf,
    /// The uid the processes run as; the runtime gives each VM its own, from `uid` .. `uid + uid_count`
    /// (`crate::jail_uid::claim`).
    pub uid: u32,
    pub uid_count: u32,
    pub gid: u32,
    pub base_dir: PathBuf,
}

impl JailConfig {
    /// `hull-jailer` next to the (canonical) `hull` binary, the default uid/gid and base.
    pub fn beside(hull: &Path) -> JailConfig {
        let hull = std::fs::canonicalize(hull).unwrap_or_else(|_| hull.to_path_buf());
        JailConfig {
            jailer: hull.with_file_name("hull-jailer"),
            uid: DEFAULT_JAIL_ID,
            uid_count: DEFAULT_JAIL_UID_COUNT,
            gid: DEFAULT_JAIL_ID,
            base_dir: PathBuf::from(DEFAULT_BASE_DIR),
        }
    }
}

/// What the jail uid may do with a file given to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

/// A jail id from a run directory's name and a role (`hull-run-123-abc` + `blk0`): letters, digits and
/// `-` only, at most 64 characters.
pub fn jail_id(dir: &Path, role: &str) -> String {
    let base: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let room = MAX_ID_LEN.saturating_sub(role.len() + 1);
    let base = &base[base.len().saturating_sub(room)..];
    if role.is_empty() {
        base.to_string()
    } else {
        format!("{base}-{role}")
    }
}

/// One prepared chroot, `<base>/<exec name>/<id>/root`, removed on drop.
#[derive(Debug)]
pub struct Jail {
    cfg: JailConfig,
    id: String,
    exec: PathBuf,
    top: PathBuf,
    root: PathBuf,
}

impl Jail {
    /// Creates the chroot for `exec` (hull) under id `id`: the directories down to it searchable (0711, so
    /// the unprivileged QEMU can reach sockets inside, but not list them), the chroot itself 0700 and owned
    /// by the jail uid/gid. A leftover jail of the same id is removed first.
    pub fn prepare(cfg: &JailConfig, exec: &Path, id: &str) -> Result<Jail, JailError> {
        let io = |what, path: &Path| {
            let (id, path) = (id.to_string(), path.to_path_buf());
            move |source| JailError::Io { id, what, path, source }
        };
        if !cfg.jailer.is_file() {
            return Err(JailError::NoJailer(cfg.jailer.clone()));
        }
        let exec = std::fs::canonicalize(exec).map_err(io("resolving", exec))?;
        let name = exec.file_name().map(OsString::from).unwrap_or_else(|| "hull".into());
        let parent = cfg.base_dir.join(&name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&parent)
            .map_err(io("creating", &parent))?;
        sweep_stale(&parent);
        let top = parent.join(id);
        if top.exists() {
            std::fs::remove_dir_all(&top).map_err(io("removing the stale", &top))?;
        }
        let root = top.join("root");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&top)
            .map_err(io("creating", &top))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(io("creating", &root))?;
        std::os::unix::fs::chown(&root, Some(cfg.uid), Some(cfg.gid)).map_err(io("chown", &root))?;
        Ok(Jail {
            cfg: cfg.clone(),
            id: id.to_string(),
            exec,
            top,
            root,
        })
    }

    /// The chroot as the host sees it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `inside` (`/run/api.sock`) is on the host.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// Hard-links (or copies) `host` to `/<name>` in the jail and lets the jail uid read it (or read and
    /// write it); returns the path inside the jail.
    pub fn link_in(&self, host: &Path, name: &str, access: Access) -> Result<PathBuf, JailError> {
        let dst = self.host_path(name);
        let io = |what, path: &Path| {
            let (id, path) = (self.id.clone(), path.to_path_buf());
            move |source| JailError::Io { id, what, path, source }
        };
        let _ = std::fs::remove_file(&dst);
        match std::fs::hard_link(host, &dst) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                std::fs::copy(host, &dst).map_err(io("copying into", &dst))?;
            }
            Err(e) => return Err(io("linking into", &dst)(e)),
        }
        grant(&dst, self.cfg.uid, self.cfg.gid, access).map_err(io("granting access to", &dst))?;
        Ok(Path::new("/").join(name))
    }

    /// The `hull-jailer` command that execs hull in this jail with `args` (after `--`). `hardlink_exec`
    /// links the hull binary instead of copying it (for the many short-lived device backends).
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S], hardlink_exec: bool) -> Command {
        let mut cmd = Command::new(&self.cfg.jailer);
        cmd.arg("--id")
            .arg(&self.id)
            .arg("--exec-file")
            .arg(&self.exec)
            .arg("--uid")
            .arg(self.cfg.uid.to_string())
            .arg("--gid")
            .arg(self.cfg.gid.to_string())
            .arg("--chroot-base-dir")
            .arg(&self.cfg.base_dir);
        if hardlink_exec {
            cmd.arg("--hardlink-exec");
        }
        cmd.arg("--").args(args);
        cmd
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if std::env::var_os("HULL_RUN_KEEP").is_some() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

/// Removes the jails of `hull run` processes that no longer exist (`hull-run-<pid>-...`, killed with
/// SIGKILL: their jailed children died with them, their jails stayed).
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("hull-run-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Lets `uid`/`gid` read `path` (group `gid`, group-read added, the owner kept: a hard link shares the
/// inode with the original), or read and write it (owned by `uid`/`gid`). Nobody else gains anything.
pub fn grant(path: &Path, uid: u32, gid: u32, access: Access) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    match access {
        Access::ReadWrite => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        Access::Read if meta.uid() == uid || meta.mode() & 0o004 != 0 => Ok(()),
        Access::Read => {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            let mode = meta.mode() & 0o7777;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode((mode | 0o040) & !0o020))
        }
    }
}

/// Makes the persistent TAP `tap` (in network namespace `netns`, else ours) usable by `uid`/`gid` without
/// CAP_NET_ADMIN (TUNSETOWNER/TUNSETGROUP, what `ip tuntap add ... user U group G` does): the jailed VMM or
/// net backend opens it after dropping root.
pub fn set_tap_owner(tap: &str, netns: Option<&Path>, uid: u32, gid: u32) -> Result<(), JailError> {
    let tap_err = |source| JailError::Tap {
        tap: tap.to_string(),
        source,
    };
    let name = tap.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(tap_err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let netns = netns.map(std::fs::File::open).transpose().map_err(tap_err)?;
    // A thread of its own: setns changes the calling thread's namespace only, and this thread ends after.
    let result = std::thread::scope(|s| {
        s.spawn(|| -> std::io::Result<()> {
            use std::os::fd::AsRawFd;
            const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
            const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
            const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
            const IFF_TAP: libc::c_short = 0x0002;
            const IFF_NO_PI: libc::c_short = 0x1000;
            let cvt = |r: libc::c_int| {
                if r < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            if let Some(ns) = &netns {
                // SAFETY: a valid namespace descriptor; affects this thread only.
                cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
            }
            let tun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")?;
            // struct ifreq: the name, then the flags (a short) in the union.
            let mut ifr = [0u8; 40];
            ifr[..name.len()].copy_from_slice(name);
            ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
            // SAFETY: ifr is a buffer the size of struct ifreq; the owner/group ioctls take a plain value.
            unsafe {
                cvt(libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()))?;
                cvt(libc::ioctl(tun.as_raw_fd(), TUNSETOWNER, uid as libc::c_ulong))?;
                cvt(libc::ioctl(tun.as_raw_fd(), TUNSETGROUP, gid as libc::c_ulong))?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the TAP thread panicked")))
    });
    result.map_err(tap_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_ids_are_short_and_plain() {
        assert_eq!(
            jail_id(Path::new("/run/x/hull-run-12-ab"), "blk0"),
            "hull-run-12-ab-blk0"
        );
        assert_eq!(jail_id(Path::new("/run/x/hull-run-12-ab"), ""), "hull-run-12-ab");
        assert_eq!(jail_id(Path::new("/a/b_c.d"), "vsock"), "b-c-d-vsock");
        let long = jail_id(&Path::new("/").join("x".repeat(100)), "slot0");
        assert!(long.len() <= 64 && long.ends_with("-slot0"));
    }
}
