//! A uid of its own for each VM's jailed processes (Firecracker's advice: one uid per jail). Two VMs that
//! shared a uid could signal and `ptrace` each other's processes and open each other's read-write disks as
//! far as the kernel's uid checks go; with a uid each, the kernel keeps them apart.
//!
//! The runtime draws the uid from a range (`JailConfig::uid` .. `uid + uid_count`) and holds its claim,
//! an exclusive `flock` on `/run/hull/jail-uids/<uid>`, for as long as the VM runs: the claim goes with
//! the [`UidClaim`] (or with the runtime process, whose VM dies with it). A uid that some process still
//! runs as is passed over too, so a VMM left over from a runtime that was killed never shares its uid.

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::backend::{BackendError, Vm};
use crate::jail::{JailConfig, JailError};

/// Where the claims are held: one locked file per uid in use by a VM.
pub const CLAIM_DIR: &str = "/run/hull/jail-uids";

/// One VM's uid, claimed until this is dropped (drop it after the VM's processes are gone).
#[derive(Debug)]
pub struct UidClaim {
    uid: u32,
    _lock: File,
}

impl UidClaim {
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

/// A VM and the claim on its uid, released after the VM (and its processes) are gone.
pub struct ClaimedVm {
    vm: Box<dyn Vm>,
    claim: UidClaim,
}

impl ClaimedVm {
    pub fn new(vm: Box<dyn Vm>, claim: UidClaim) -> ClaimedVm {
        ClaimedVm { vm, claim }
    }

    /// The uid the VM's processes run as.
    pub fn uid(&self) -> u32 {
        self.claim.uid
    }
}

impl Vm for ClaimedVm {
    fn vsock_uds(&self) -> &Path {
        self.vm.vsock_uds()
    }
    fn alive(&mut self) -> bool {
        self.vm.alive()
    }
    fn vmm_pid(&self) -> u32 {
        self.vm.vmm_pid()
    }
    fn pids(&self) -> Vec<u32> {
        self.vm.pids()
    }
    fn console_log(&self) -> PathBuf {
        self.vm.console_log()
    }
    fn stop(&mut self, grace: std::time::Duration) {
        self.vm.stop(grace)
    }
    fn attach_disk(&mut self, slot: &str, image: &Path, read_only: bool) -> Result<(), BackendError> {
        self.vm.attach_disk(slot, image, read_only)
    }
    fn resume(&mut self) -> Result<(), BackendError> {
        self.vm.resume()
    }
    fn snapshot(&mut self, to: &crate::backend::SnapshotFiles) -> Result<(), BackendError> {
        self.vm.snapshot(to)
    }
}

/// Claims the first uid of `cfg`'s range that no other claim holds and no process runs as, and returns
/// `cfg` with that uid, and the claim. The gid stays the configured one (read-only files are granted to
/// it; no file of one VM is writable by the group).
pub fn claim(cfg: &JailConfig) -> Result<(JailConfig, UidClaim), JailError> {
    claim_in(cfg, Path::new(CLAIM_DIR), &uids_in_use())
}

fn claim_in(cfg: &JailConfig, dir: &Path, in_use: &HashSet<u32>) -> Result<(JailConfig, UidClaim), JailError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| JailError::Io {
            id: "uid claims".into(),
            what,
            path,
            source,
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))?;
    for uid in (0..cfg.uid_count.max(1)).filter_map(|i| cfg.uid.checked_add(i)) {
        if uid == 0 || in_use.contains(&uid) {
            continue;
        }
        let path: PathBuf = dir.join(uid.to_string());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io("opening", &path))?;
        // SAFETY: flock on a descriptor we own; non-blocking.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                continue;
            }
            return Err(io("locking", &path)(e));
        }
        let mut own = cfg.clone();
        own.uid = uid;
        own.uid_count = 1;
        return Ok((own, UidClaim { uid, _lock: file }));
    }
    Err(JailError::NoFreeUid {
        first: cfg.uid,
        count: cfg.uid_count,
    })
}

/// Every uid (real, effective, saved or file-system) some process runs as, from `/proc/<pid>/status`.
fn uids_in_use() -> HashSet<u32> {
    let mut uids = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return uids;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        if let Some(line) = status.lines().find_map(|l| l.strip_prefix("Uid:")) {
            uids.extend(line.split_whitespace().filter_map(|u| u.parse::<u32>().ok()));
        }
    }
    uids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(uid: u32, count: u32) -> JailConfig {
        let mut c = JailConfig::beside(Path::new("/nonexistent/hull"));
        c.uid = uid;
        c.uid_count = count;
        c
    }

    #[test]
    fn each_claim_gets_a_uid_of_its_own_until_dropped() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-uid-claims-").unwrap();
        let none = HashSet::new();
        let c = cfg(70000, 3);
        let (a_cfg, a) = claim_in(&c, dir.as_path(), &none).unwrap();
        let (b_cfg, b) = claim_in(&c, dir.as_path(), &none).unwrap();
        assert_eq!((a.uid(), b.uid()), (70000, 70001));
        assert_eq!((a_cfg.uid, b_cfg.uid, a_cfg.gid), (70000, 70001, c.gid));
        drop(a);
        // The freed uid is the next one handed out; the held one is not.
        let (_, again) = claim_in(&c, dir.as_path(), &none).unwrap();
        assert_eq!(again.uid(), 70000);
        let (_, third) = claim_in(&c, dir.as_path(), &none).unwrap();
        assert_eq!(third.uid(), 70002);
        assert!(matches!(
            claim_in(&c, dir.as_path(), &none),
            Err(JailError::NoFreeUid { first: 70000, count: 3 })
        ));
        drop(b);
    }

    #[test]
    fn a_uid_some_process_runs_as_and_root_are_passed_over() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-uid-claims-").unwrap();
        let busy: HashSet<u32> = [70010].into();
        let (_, a) = claim_in(&cfg(70010, 2), dir.as_path(), &busy).unwrap();
        assert_eq!(a.uid(), 70011);
        let (_, r) = claim_in(&cfg(0, 2), dir.as_path(), &HashSet::new()).unwrap();
        assert_eq!(r.uid(), 1);
        // This test's own uid is in use.
        // SAFETY: getuid cannot fail.
        assert!(uids_in_use().contains(&unsafe { libc::getuid() }));
    }
}
