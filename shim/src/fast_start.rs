//! `fast_start = true` in the shim config: pod VMs are restored from a template instead of booted. The
//! first pod of a kind (same kernel, initramfs, size, slots, NIC and agent policy: `hull_runtime::template`'s
//! key) boots a template VM to the point where its agent answers and snapshots it into
//! `template_dir/<key>/`; every pod then restores a clone of it and gets its rootfs and scratch disk attached
//! after the restore, its own vsock CID, its MAC and addresses, the host's clock and fresh entropy through
//! the agent. One template is made at a time per key (an flock on `<key>.lock`), so pods starting together
//! wait for the first one's template rather than each making one.
//!
//! Only the kvm backend (the hull VMM on hardware KVM) snapshots and restores; elsewhere the pod boots as
//! without the option, and the shim's log says so.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use hull_runtime::backend::VmLaunchConfig;
use hull_runtime::template::{self, Template, TemplateError};

/// The template for VMs like `cfg` (no drives; its slots and NIC as the clones will have them): opened
/// from `base/<key>`, or made there first by booting `cfg` (in its directory) until its agent answers.
pub fn template_for(cfg: &VmLaunchConfig, base: &Path, boot_timeout: Duration) -> Result<Template, TemplateError> {
    let key = template::key(cfg);
    let io = |what: &str| {
        let (dir, what) = (base.display().to_string(), what.to_string());
        move |source| TemplateError::Io { dir, what, source }
    };
    hull_runtime::guard::create_private_dir(base, true)
        .or_else(|e| if base.is_dir() { Ok(()) } else { Err(e) })
        .map_err(io("creating"))?;
    let lock_path = base.join(format!("{key}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("opening the lock"))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io("locking")(std::io::Error::last_os_error()));
    }
    let dir = base.join(&key);
    if let Ok(t) = Template::open(&dir) {
        return Ok(t);
    }
    // A template that was being made when its maker died: made again.
    let _ = std::fs::remove_dir_all(&dir);
    log::info!(
        "fast_start: making the template {} (boots once, until the agent answers)",
        dir.display()
    );
    let made = Template::create(cfg, &dir, &mut |vm| template::agent_answers(vm, boot_timeout));
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    made
}
