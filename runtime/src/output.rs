//! Where the output of a VM's processes goes on the host, bounded: hull's own log (`hull-vmm.log`), the
//! device backends' logs, and QEMU's console. A guest can make them write without end (a console loop,
//! log lines it triggers), so none of them writes a file directly: each writes into a FIFO that a thread
//! of this process (`hull run` or the shim, which own the VM) copies into a size-capped file, rotated into
//! `<file>.1` (`hull_logging::rotating`). At most twice the cap stays on disk per file.
//!
//! The child gets the FIFO as its stdout and stderr from [`ChildGuard::spawn`](crate::guard::ChildGuard),
//! opened by this process before the child starts, so a child that drops privileges needs no access to it.
//! The FIFO's name is removed as soon as the child has it open; the thread ends when the last writer is
//! gone.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hull_logging::rotating::RotatingFile;

/// Cap of each log and console file of a VM (and again of its one rotated copy).
pub const MAX_BYTES: u64 = hull_logging::rotating::DEFAULT_MAX_BYTES;

/// A FIFO whose bytes end up in a capped file. Give [`CappedOutput::fifo`] to the child as its output
/// file, then drop this: the FIFO's name goes, and the copying thread ends when the child's output closes
/// (at once if no child ever opened it).
pub struct CappedOutput {
    fifo: PathBuf,
}

impl CappedOutput {
    /// Creates the FIFO `.<name>.fifo` next to `file` (mode 0600) and starts the thread copying it into
    /// `file`, capped at `max_bytes`.
    pub fn create(file: &Path, max_bytes: u64) -> io::Result<CappedOutput> {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let fifo = file.with_file_name(format!(".{name}.fifo"));
        let _ = std::fs::remove_file(&fifo);
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes())?;
        // SAFETY: mkfifo reads a NUL-terminated path that lives across the call.
        if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let made = CappedOutput { fifo };
        // Non-blocking: opening the read end must not wait for a writer.
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&made.fifo)?;
        let out = RotatingFile::open(file, max_bytes)?;
        std::thread::Builder::new()
            .name("hull-output".into())
            .spawn(move || copy_until_closed(reader, out))?;
        Ok(made)
    }

    /// The FIFO to open as the child's output.
    pub fn fifo(&self) -> &Path {
        &self.fifo
    }
}

impl Drop for CappedOutput {
    fn drop(&mut self) {
        // A writer that comes and goes: if no child opened the FIFO, the thread sees the hang-up and ends.
        drop(
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.fifo),
        );
        let _ = std::fs::remove_file(&self.fifo);
    }
}

/// Copies the FIFO into `out` until every writer has closed it. A failed write to `out` (disk full) loses
/// those bytes, never blocks the child.
fn copy_until_closed(mut reader: File, mut out: RotatingFile) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut pfd = libc::pollfd {
            fd: reader.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. Linux reports no hang-up on a FIFO before its first writer came.
        if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => drop(out.write_all(&buf[..n])),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hull-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn wait_for_len(path: &Path, len: u64) -> u64 {
        let t0 = Instant::now();
        loop {
            let now = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            if now == len || t0.elapsed() > Duration::from_secs(10) {
                return now;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_childs_flood_stays_under_the_cap() {
        let d = dir("flood");
        let log = d.join("child.log");
        let out = CappedOutput::create(&log, 4096).unwrap();
        let file = OpenOptions::new().append(true).open(out.fifo()).unwrap();
        // 1 MiB of output from a child; the file keeps the last bytes only.
        let mut child = Command::new("sh")
            .args(["-c", "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo the-end"])
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        drop(out);
        assert!(child.wait().unwrap().success());
        let t0 = Instant::now();
        while !std::fs::read_to_string(&log).unwrap_or_default().ends_with("the-end\n") {
            assert!(t0.elapsed() < Duration::from_secs(10), "the last line never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(std::fs::metadata(&log).unwrap().len() <= 4096);
        assert!(
            std::fs::metadata(hull_logging::rotating::rotated_path(&log))
                .unwrap()
                .len()
                <= 4096
        );
        assert!(!d.join(".child.log.fifo").exists(), "the FIFO's name is left behind");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn without_a_writer_the_thread_ends_and_nothing_is_left() {
        let d = dir("none");
        let log = d.join("x.log");
        drop(CappedOutput::create(&log, 100).unwrap());
        assert_eq!(wait_for_len(&log, 0), 0);
        assert!(!d.join(".x.log.fifo").exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
