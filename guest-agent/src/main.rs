//! hull-agent: PID 1 in the guest's initramfs.
//!
//! For now it brings the guest to a known state and says so: mounts /proc, /sys and /dev (devtmpfs), marks
//! the boot-timer MMIO address (Firecracker's convention: one byte of 123 at 0xC000_0000, through /dev/mem) so
//! the VMM can log the boot time, writes `hull-agent ready` to /dev/console, and then either powers the VM
//! off (when the kernel command line carries `hull.poweroff=1`) or stays alive as PID 1, reaping orphans.
//!
//! Nothing here may panic or exit: PID 1 ending is a kernel panic. Every failure is logged on the console and
//! the agent carries on. It trusts nothing but the kernel; the command line is read as plain words.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Firecracker's boot-timer MMIO address and the value that marks "booted".
const BOOT_TIMER_ADDR: libc::off_t = 0xc000_0000;
const BOOT_TIMER_VALUE: u8 = 123;
/// The command-line switch asking the agent to power the VM off once ready.
const POWEROFF_SWITCH: &str = "hull.poweroff=1";
/// The line hosts wait for.
const READY_LINE: &str = "hull-agent ready";

fn main() {
    // Mounting, rebooting and reaping are PID 1's business; run anywhere else (a developer's shell), do nothing.
    // SAFETY: getpid(2) has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        eprintln!("hull-agent: not PID 1, refusing to run (this is the guest's init)");
        std::process::exit(1);
    }
    let mut console = Console::open();

    for (source, target, fstype) in
        [(c"proc", c"/proc", c"proc"), (c"sysfs", c"/sys", c"sysfs"), (c"devtmpfs", c"/dev", c"devtmpfs")]
    {
        if let Err(e) = mount(source, target, fstype) {
            console.log(&format!("cannot mount {} on {}: {e}", fstype.to_string_lossy(), target.to_string_lossy()));
        }
    }

    match write_boot_timer() {
        Ok(()) => console.log("boot timer written"),
        Err(e) => console.log(&format!("boot timer not written: {e}")),
    }
    console.line(READY_LINE);

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| {
        console.log(&format!("cannot read /proc/cmdline: {e}"));
        String::new()
    });
    if wants_poweroff(&cmdline) {
        console.log("powering off");
        power_off(&mut console);
    }
    reap_forever();
}

/// `/dev/console`, opened once; falls back to standard error if it cannot be opened.
struct Console {
    file: Option<File>,
}

impl Console {
    fn open() -> Console {
        let file = OpenOptions::new().write(true).custom_flags(libc::O_NOCTTY).open("/dev/console").ok();
        Console { file }
    }

    /// Writes one line as is.
    fn line(&mut self, text: &str) {
        let line = format!("{text}\n");
        let written = match self.file.as_mut() {
            Some(f) => f.write_all(line.as_bytes()).is_ok(),
            None => false,
        };
        if !written {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    /// Writes a diagnostic line, prefixed with the agent's name.
    fn log(&mut self, text: &str) {
        self.line(&format!("hull-agent: {text}"));
    }
}

fn mount(source: &CStr, target: &CStr, fstype: &CStr) -> std::io::Result<()> {
    // The mount point may be missing from a hand-made initramfs; mkdir failing (it exists) is fine.
    // SAFETY: both are valid NUL-terminated strings that outlive the calls; no memory is handed over.
    unsafe { libc::mkdir(target.as_ptr(), 0o755) };
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    // SAFETY: as above; `data` is null, which mount(2) accepts.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes BOOT_TIMER_VALUE to the boot-timer MMIO address through a shared mapping of /dev/mem.
fn write_boot_timer() -> std::io::Result<()> {
    let mem = OpenOptions::new().read(true).write(true).custom_flags(libc::O_SYNC).open("/dev/mem")?;
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
fn wants_poweroff(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|word| word == POWEROFF_SWITCH)
}

/// Flushes the file systems and restarts the machine. The guest runs with `reboot=k`, so the kernel resets
/// through the i8042 controller and the VMM ends the VM. Returns only if reboot(2) failed.
fn power_off(console: &mut Console) {
    // SAFETY: sync(2) and reboot(2) take no pointers; reboot only returns on failure.
    unsafe { libc::sync() };
    let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    if rc != 0 {
        console.log(&format!("reboot failed: {}", std::io::Error::last_os_error()));
    }
}

/// PID 1's lasting job: collect every child that ends (orphans are re-parented to PID 1). SIGCHLD is blocked
/// and waited for with sigwaitinfo(2), so the agent sleeps until a child ends instead of polling.
fn reap_forever() -> ! {
    // SAFETY: the signal set is a local we own; sigemptyset/sigaddset/pthread_sigmask only write into it or
    // read from it. Blocking SIGCHLD keeps it pending (even with the default "ignore" disposition).
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    loop {
        // Reap everything that has ended so far.
        loop {
            let mut status = 0;
            // SAFETY: waitpid(2) writes only the status integer we own.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
        }
        // SAFETY: `set` is initialised above; a null siginfo pointer is allowed.
        unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
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
}
