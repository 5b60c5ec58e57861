//! Where the entropy device's bytes come from: the host kernel's CSPRNG through `getrandom(2)`, behind a
//! small interface so tests can use a source that fails.

/// A source of random bytes.
pub trait EntropySource: Send {
    /// Fills all of `buf`, or fails.
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()>;
}

/// The host's `getrandom(2)` (the urandom pool; blocks only before the host's pool is first seeded).
#[derive(Debug, Default)]
pub struct HostRandom;

impl EntropySource for HostRandom {
    fn fill(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &mut buf[done..];
            // SAFETY: the kernel writes at most `rest.len()` bytes into `rest`, which we own mutably.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            done += n as usize;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_random_fills_large_buffers_with_varied_bytes() {
        let mut buf = vec![0u8; 1 << 20];
        HostRandom.fill(&mut buf).unwrap();
        // 1 MiB of zeros (or of one byte value) from a working CSPRNG has probability ~0.
        let mut seen = [false; 256];
        buf.iter().for_each(|b| seen[*b as usize] = true);
        assert_eq!(seen.iter().filter(|s| **s).count(), 256);
    }
}
