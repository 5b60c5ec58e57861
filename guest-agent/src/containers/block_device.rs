//! The block devices a container's storage names: resolving "vda" or "serial:<s>" to a device node, and
//! waiting for a disk slot that booted empty to get its image before mounting it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{io_err, AgentError};

/// `/dev/<name>` for "vda"-style names, or the device whose virtio-blk serial matches "serial:<s>".
pub(super) fn resolve_device(device: &str) -> Result<PathBuf, AgentError> {
    let bad = || AgentError::BadDevice(device.chars().take(64).collect());
    if let Some(serial) = device.strip_prefix("serial:") {
        for entry in std::fs::read_dir("/sys/block").map_err(io_err("/sys/block"))?.flatten() {
            let s = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
            if !serial.is_empty() && s.trim() == serial {
                return Ok(Path::new("/dev").join(entry.file_name()));
            }
        }
        return Err(bad());
    }
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    if name.is_empty() || name.len() > 32 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(bad());
    }
    let p = Path::new("/dev").join(name);
    if !p.exists() {
        return Err(bad());
    }
    Ok(p)
}

/// How long a Storage's block device may stay empty: a slot whose disk the host is still attaching.
const DEVICE_FILL_TIMEOUT: Duration = Duration::from_secs(10);
const DEVICE_FILL_POLL: Duration = Duration::from_millis(20);
/// `BLKFLSBUF`, `_IO(0x12, 97)`: write back and drop the device's buffer cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Reads a sysfs `size` file (512-byte sectors) until it holds a number above 0, for at most `timeout`.
/// `Ok(None)` when it stayed 0 (or unreadable) that long.
fn wait_for_nonzero_size(size_file: &Path, timeout: Duration, poll: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let size = std::fs::read_to_string(size_file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(sectors) = size.filter(|s| *s > 0) {
            return Some(sectors);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(poll);
    }
}

/// Makes a Storage's block device ready to mount. The device may be a disk slot that booted empty and
/// gets its image while the VM runs: wait (up to `DEVICE_FILL_TIMEOUT`) until its size is above 0, then
/// drop any buffer cache left from the slot's previous disk (BLKFLSBUF), so the mount reads the new one.
pub(super) fn prepare_block_device(dev: &Path) -> Result<(), AgentError> {
    let name = dev
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size_file = Path::new("/sys/class/block").join(&name).join("size");
    if wait_for_nonzero_size(&size_file, DEVICE_FILL_TIMEOUT, DEVICE_FILL_POLL).is_none() {
        return Err(AgentError::EmptyDevice {
            device: dev.display().to_string(),
            waited: DEVICE_FILL_TIMEOUT,
        });
    }
    let file = File::open(dev).map_err(io_err(format!("opening {}", dev.display())))?;
    // SAFETY: BLKFLSBUF takes no argument pointer; the fd is open for the call.
    crate::sys::cvt(unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF as _, 0) }).map_err(io_err(format!(
        "dropping stale buffers of {} (BLKFLSBUF)",
        dev.display()
    )))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_file(name: &str, content: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("hull-agent-size-{}-{name}", std::process::id()));
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn a_device_that_gets_a_disk_is_waited_for() {
        let p = size_file("fills", "0\n");
        let writer = {
            let p = p.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(&p, "32768\n").unwrap();
            })
        };
        let got = wait_for_nonzero_size(&p, Duration::from_secs(5), Duration::from_millis(5));
        writer.join().unwrap();
        assert_eq!(got, Some(32768));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn an_empty_missing_or_garbled_size_times_out() {
        let zero = size_file("zero", "0\n");
        let garbage = size_file("garbage", "lots\n");
        for p in [zero.clone(), garbage.clone(), PathBuf::from("/nonexistent/size")] {
            let started = Instant::now();
            assert_eq!(
                wait_for_nonzero_size(&p, Duration::from_millis(60), Duration::from_millis(10)),
                None
            );
            assert!(started.elapsed() >= Duration::from_millis(60));
        }
        let e = AgentError::EmptyDevice {
            device: "/dev/vdb".into(),
            waited: DEVICE_FILL_TIMEOUT,
        }
        .to_string();
        assert_eq!(
            e,
            "block device /dev/vdb is still empty (size 0) after 10s: no disk was attached to its slot"
        );
        std::fs::remove_file(zero).unwrap();
        std::fs::remove_file(garbage).unwrap();
    }
}
