//! PID 1's guest-wide duties: the early mounts (proc, sys, dev, dev/pts, dev/shm, cgroup2), the boot-timer
//! mark, the clock (a rough value from `hull.time=` on the command line, then exact from the host through
//! SyncClock), the kernel RNG's reseed with host bytes (AddEntropy), the hostname, `lo`, and powering off.
//! The kernel command line is read as plain words.

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::console::log;

/// Firecracker's boot-timer MMIO address and the value that marks "booted".
const BOOT_TIMER_ADDR: libc::off_t = 0xc000_0000;
const BOOT_TIMER_VALUE: u8 = 123;
/// The command-line switch asking the agent to power the VM off once ready.
pub const POWEROFF_SWITCH: &str = "hull.poweroff=1";

/// Moves the agent's root from the initramfs (the kernel's `rootfs`, which pivot_root(2) refuses to leave)
/// onto an empty tmpfs: tmpfs on /newroot, unlink /init (the running agent keeps its pages; they come back
/// when it exits), move the tmpfs onto /, chroot. Containers can then pivot_root out of the agent's root.
/// The agent runs on from the initramfs's pages: nothing is copied or re-executed (under TCG a copy and a
/// second exec cost about 60 ms of boot), and its helpers start through /proc/self/exe, which does not
/// need a path. A failed step is logged: containers then fail to start, the agent still serves.
pub fn switch_root_to_tmpfs() {
    let new = Path::new("/newroot");
    let step = |what: &str, r: std::io::Result<()>| -> bool {
        if let Err(e) = r {
            log(&format!("cannot switch to a tmpfs root ({what}): {e}"));
            return false;
        }
        true
    };
    if !step("mkdir", std::fs::create_dir_all(new))
        || !step(
            "mount",
            crate::sys::mount(Some("tmpfs"), new, Some("tmpfs"), 0, Some("mode=0755")),
        )
    {
        return;
    }
    for d in ["dev", "proc", "sys", "run", "tmp", "etc"] {
        let _ = std::fs::create_dir_all(new.join(d));
    }
    let _ = std::fs::remove_file("/init");
    let dot = c".";
    // SAFETY: chdir/mount/chroot with valid NUL-terminated C strings that outlive the calls.
    unsafe {
        let newc = crate::sys::cpath(new).unwrap_or_default();
        if libc::chdir(newc.as_ptr()) != 0
            || libc::mount(
                dot.as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ) != 0
            || libc::chroot(dot.as_ptr()) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            log(&format!(
                "cannot switch to a tmpfs root: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
}

/// Mounts what every guest needs. Failures are logged and the boot goes on.
pub fn mount_early() {
    let nosuid_noexec = libc::MS_NOSUID | libc::MS_NOEXEC;
    let table: [(&CStr, &str, &str, libc::c_ulong, Option<&str>); 7] = [
        (c"proc", "/proc", "proc", nosuid_noexec | libc::MS_NODEV, None),
        (c"sysfs", "/sys", "sysfs", nosuid_noexec | libc::MS_NODEV, None),
        (c"devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, Some("mode=0755")),
        (
            c"devpts",
            "/dev/pts",
            "devpts",
            nosuid_noexec,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        (
            c"tmpfs",
            "/dev/shm",
            "tmpfs",
            nosuid_noexec | libc::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            c"cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_noexec | libc::MS_NODEV,
            None,
        ),
        (
            c"tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=0755"),
        ),
    ];
    for (source, target, fstype, flags, data) in table {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = crate::sys::mount(
            Some(&source.to_string_lossy()),
            Path::new(target),
            Some(fstype),
            flags,
            data,
        ) {
            log(&format!("cannot mount {fstype} on {target}: {e}"));
        }
    }
}

/// Writes BOOT_TIMER_VALUE to the boot-timer MMIO address through a shared mapping of /dev/mem.
pub fn write_boot_timer() -> std::io::Result<()> {
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open("/dev/mem")?;
    let page = 4096;
    // SAFETY: a fresh shared mapping of one page of /dev/mem at a page-aligned offset; the kernel checks the
    // offset and access. The result is checked before use.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&mem),
            BOOT_TIMER_ADDR,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `addr` is a valid writable mapping of `page` bytes; a volatile write is one MMIO store. The
    // mapping is removed right after and never referenced again.
    unsafe {
        std::ptr::write_volatile(addr.cast::<u8>(), BOOT_TIMER_VALUE);
        libc::munmap(addr, page);
    }
    Ok(())
}

/// Whether the kernel command line asks for a power-off once the agent is ready.
pub fn wants_poweroff(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|word| word == POWEROFF_SWITCH)
}

/// The value of `key=` on the command line (first occurrence).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Sets CLOCK_REALTIME; refuses times before 2020 or after 2200 (a garbled value must not be applied).
pub fn set_clock(unix_nanos: i64) -> Result<(), String> {
    const MIN: i64 = 1_577_836_800; // 2020-01-01
    const MAX: i64 = 7_258_118_400; // 2200-01-01
    let secs = unix_nanos.div_euclid(1_000_000_000);
    if !(MIN..MAX).contains(&secs) {
        return Err(format!("clock value {unix_nanos} ns is out of range"));
    }
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: unix_nanos.rem_euclid(1_000_000_000),
    };
    // SAFETY: clock_settime reads one timespec we own.
    crate::sys::cvt(unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) })
        .map(drop)
        .map_err(|e| format!("clock_settime: {e}"))
}

/// The most bytes one AddEntropy call takes: a reseed needs 32, the host sends 64.
pub const MAX_ENTROPY_BYTES: usize = 512;

// linux/random.h: RNDADDENTROPY = _IOW('R', 0x03, int[2]), RNDRESEEDCRNG = _IO('R', 0x07).
vmm_sys_util::ioctl_iow_nr!(RNDADDENTROPY, 'R' as u32, 0x03, [libc::c_int; 2]);
vmm_sys_util::ioctl_io_nr!(RNDRESEEDCRNG, 'R' as u32, 0x07);

#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    #[error("AddEntropy: no bytes given")]
    Empty,
    #[error("AddEntropy: {0} bytes given, at most {MAX_ENTROPY_BYTES} are taken")]
    TooLong(usize),
    #[error("AddEntropy: opening /dev/random: {0}")]
    Open(std::io::Error),
    #[error("AddEntropy: RNDADDENTROPY on /dev/random: {0}")]
    Add(std::io::Error),
    #[error("AddEntropy: RNDRESEEDCRNG on /dev/random: {0}")]
    Reseed(std::io::Error),
}

impl EntropyError {
    /// The request was wrong (INVALID_ARGUMENT), not the guest.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, EntropyError::Empty | EntropyError::TooLong(_))
    }
}

/// The kernel's `struct rand_pool_info` for `data` as 32-bit words (the struct's alignment): entropy_count
/// (bits credited: all of them, 8 per byte), buf_size (bytes), then the bytes, in memory order. Refuses an
/// empty `data` or one longer than [`MAX_ENTROPY_BYTES`].
pub fn rand_pool_info(data: &[u8]) -> Result<Vec<u32>, EntropyError> {
    if data.is_empty() {
        return Err(EntropyError::Empty);
    }
    if data.len() > MAX_ENTROPY_BYTES {
        return Err(EntropyError::TooLong(data.len()));
    }
    let mut words = Vec::with_capacity(2 + data.len().div_ceil(4));
    // At most 512 bytes: both counts fit an int.
    words.push((data.len() * 8) as u32);
    words.push(data.len() as u32);
    for chunk in data.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        words.push(u32::from_ne_bytes(w));
    }
    Ok(words)
}

/// Mixes `data` (host random bytes) into the kernel's input pool and credits them (RNDADDENTROPY), then
/// makes the kernel reseed its CRNG from that pool now (RNDRESEEDCRNG) rather than at its next scheduled
/// reseed: a guest restored from a snapshot then stops sharing RNG output with its siblings. Before the
/// CRNG is first seeded the reseed is refused (ENODATA); the credited bytes then seed it as soon as there
/// are enough, which is all a reseed would do, so that is not an error.
pub fn add_entropy(data: &[u8]) -> Result<(), EntropyError> {
    let info = rand_pool_info(data)?;
    let random = OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(EntropyError::Open)?;
    // SAFETY: RNDADDENTROPY reads a rand_pool_info: two ints, then buf_size bytes, all inside `info` (built
    // by rand_pool_info with buf_size = the bytes that follow), which outlives the call.
    crate::sys::cvt(unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY() as _, info.as_ptr()) })
        .map_err(EntropyError::Add)?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    match crate::sys::cvt(unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG() as _) }) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        Err(e) => Err(EntropyError::Reseed(e)),
    }
}

/// `hull.time=<seconds>[.<fraction>]` from the command line: a first, rough clock.
pub fn clock_from_cmdline(cmdline: &str) {
    let Some(v) = cmdline_value(cmdline, "hull.time") else {
        return;
    };
    let (s, frac) = v.split_once('.').unwrap_or((v, "0"));
    let (Ok(s), Ok(f)) = (s.parse::<i64>(), format!("{frac:0<9}")[..9].parse::<i64>()) else {
        log("ignoring a malformed hull.time");
        return;
    };
    if let Err(e) = set_clock(s.saturating_mul(1_000_000_000).saturating_add(f)) {
        log(&e);
    }
}

pub fn set_hostname(name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !ok {
        log("ignoring an invalid hostname");
        return;
    }
    // SAFETY: pointer and length of a live string.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        log(&format!("sethostname: {}", std::io::Error::last_os_error()));
    }
}

/// Flushes the file systems and restarts the machine. The guest runs with `reboot=k`, so the kernel resets
/// through the i8042 controller and the VMM ends the VM. Returns only if reboot(2) failed.
pub fn power_off() {
    // SAFETY: sync(2) and reboot(2) take no pointers; reboot only returns on failure.
    unsafe { libc::sync() };
    let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    if rc != 0 {
        log(&format!("reboot failed: {}", std::io::Error::last_os_error()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_needs_the_exact_switch() {
        assert!(wants_poweroff("console=ttyS0 hull.poweroff=1 reboot=k\n"));
        assert!(wants_poweroff("hull.poweroff=1"));
        assert!(!wants_poweroff("console=ttyS0 reboot=k"));
        assert!(!wants_poweroff("hull.poweroff=0"));
        assert!(!wants_poweroff("xhull.poweroff=1 hull.poweroff=10"));
        assert!(!wants_poweroff(""));
    }

    #[test]
    fn cmdline_values() {
        assert_eq!(cmdline_value("a=1 hull.time=12.5 b", "hull.time"), Some("12.5"));
        assert_eq!(cmdline_value("hull.timex=1", "hull.time"), None);
        assert!(set_clock(5).is_err());
    }

    #[test]
    fn entropy_requests_outside_1_to_512_bytes_are_refused() {
        assert!(matches!(rand_pool_info(&[]), Err(EntropyError::Empty)));
        assert!(matches!(rand_pool_info(&[7; 513]), Err(EntropyError::TooLong(513))));
        assert!(matches!(
            rand_pool_info(&vec![7; 1 << 20]),
            Err(EntropyError::TooLong(n)) if n == 1 << 20
        ));
        for e in [EntropyError::Empty, EntropyError::TooLong(513)] {
            assert!(e.is_bad_request(), "{e}");
        }
        assert!(!EntropyError::Add(std::io::Error::from_raw_os_error(libc::EPERM)).is_bad_request());
        // The refusal happens before /dev/random is touched.
        assert!(matches!(add_entropy(&[]), Err(EntropyError::Empty)));
        assert!(matches!(add_entropy(&[0; 513]), Err(EntropyError::TooLong(513))));
    }

    #[test]
    fn rand_pool_info_counts_bits_and_bytes_and_keeps_the_byte_order() {
        for len in [1usize, 3, 4, 5, 64, 511, 512] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let info = rand_pool_info(&data).unwrap();
            assert_eq!(info[0], 8 * len as u32, "entropy_count, {len} bytes");
            assert_eq!(info[1], len as u32, "buf_size, {len} bytes");
            assert_eq!(info.len(), 2 + len.div_ceil(4));
            let bytes: Vec<u8> = info[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
            assert_eq!(&bytes[..len], &data[..]);
            assert!(bytes[len..].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn the_random_ioctls_are_the_kernels() {
        assert_eq!(RNDADDENTROPY(), 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG(), 0x5207);
    }
}
