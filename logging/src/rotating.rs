//! A log file that never grows past a size: when the next write would take `path` over `max_bytes`, its
//! content moves to `path.1` (replacing the previous one) and `path` starts empty. At most `2 * max_bytes`
//! stay on disk, whatever a guest writes to its console or makes a VM's processes log.
//!
//! Both files are opened once, up front (mode 0600): rotating copies `path` into `path.1` and truncates
//! `path`, with `pread`/`pwrite`/`ftruncate` only, through a buffer on the stack. So a writer on a thread
//! under a seccomp filter (a vCPU writing the serial console) needs no `open` or `rename`, and rotating
//! allocates nothing.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Default cap of a guest console file and of a VM process's log: 1 MiB (plus the rotated file).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;

/// `path` with `.1` appended: where the previous content of a rotated file goes.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// An append-only file capped at `max_bytes` (0: no cap), rotated into [`rotated_path`].
pub struct RotatingFile {
    /// Read and append.
    current: File,
    previous: File,
    /// Bytes in `current`.
    len: u64,
    max_bytes: u64,
}

impl RotatingFile {
    /// Opens (or creates, mode 0600) `path` for appending, and its rotated companion; an existing `path`
    /// counts towards the cap.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<RotatingFile> {
        let current = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let previous = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(rotated_path(path))?;
        let len = current.metadata()?.len();
        Ok(RotatingFile {
            current,
            previous,
            len,
            max_bytes,
        })
    }

    /// Moves `current` into `previous` and empties `current`.
    fn rotate(&mut self) -> io::Result<()> {
        self.previous.set_len(0)?;
        let mut buf = [0u8; 8192];
        let mut offset = 0u64;
        loop {
            let n = self.current.read_at(&mut buf, offset)?;
            if n == 0 {
                break;
            }
            self.previous.write_all_at(&buf[..n], offset)?;
            offset += n as u64;
        }
        self.current.set_len(0)?;
        self.len = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut room = buf.len() as u64;
        if self.max_bytes > 0 {
            if self.len > 0 && self.len + room > self.max_bytes {
                self.rotate()?;
            }
            room = room.min(self.max_bytes - self.len);
        }
        let n = self.current.write(&buf[..room as usize])?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hull-rotating-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn stays_under_the_cap_and_keeps_the_previous_content() {
        let d = dir("cap");
        let path = d.join("console.log");
        let mut f = RotatingFile::open(&path, 1000).unwrap();
        for i in 0..10_000u32 {
            writeln!(f, "line {i:05}").unwrap();
        }
        let current = std::fs::read_to_string(&path).unwrap();
        let previous = std::fs::read_to_string(rotated_path(&path)).unwrap();
        assert!(
            current.len() <= 1000 && previous.len() <= 1000,
            "{} {}",
            current.len(),
            previous.len()
        );
        assert!(current.ends_with("line 09999\n"));
        // Together they are the last bytes written, in order, with nothing lost between the two files (the
        // first line may be cut: rotation goes by bytes).
        let both = previous + &current;
        assert!(both.len() > 1000);
        let lines: Vec<&str> = both.lines().skip(1).collect();
        let first: u32 = lines[0][5..].parse().unwrap();
        for (k, line) in lines.iter().enumerate() {
            assert_eq!(*line, format!("line {:05}", first + k as u32));
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn one_write_larger_than_the_cap_is_cut_into_rotations() {
        let d = dir("big");
        let path = d.join("out.log");
        std::fs::write(&path, vec![b'o'; 60]).unwrap();
        let mut f = RotatingFile::open(&path, 100).unwrap();
        f.write_all(&[b'x'; 1050]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'x'; 50]);
        assert_eq!(std::fs::read(rotated_path(&path)).unwrap(), vec![b'x'; 100]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(rotated_path(&path)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn no_cap_means_plain_append() {
        let d = dir("nocap");
        let path = d.join("x.log");
        let mut f = RotatingFile::open(&path, 0).unwrap();
        f.write_all(&[b'a'; 5000]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 5000);
        let _ = std::fs::remove_dir_all(&d);
    }
}
