//! Termination signals (SIGINT, SIGTERM, SIGHUP) as a file descriptor: they are blocked and read from a
//! signalfd that the main loop polls next to the API socket, so stopping hull is an ordinary event that
//! runs the normal clean-up (socket removal) and no code runs in signal-handler context.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use api_server::server::TerminationSignals;

const TERMINATION_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks the termination signals in the calling thread and opens a signalfd for them. Call it before
    /// any other thread starts: threads inherit the mask, so the signals can only arrive here.
    pub fn for_termination_signals() -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t for all these calls.
        unsafe {
            libc::sigemptyset(&mut set);
            for signal in TERMINATION_SIGNALS {
                libc::sigaddset(&mut set, signal);
            }
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: -1 asks for a new descriptor; `set` is initialised.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd just returned this descriptor and nothing else owns it.
        Ok(SignalFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The signal number of a pending termination signal, if any.
    pub fn take(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is `size` writable bytes owned by `info`.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl TerminationSignals for SignalFd {
    fn take(&self) -> Option<i32> {
        SignalFd::take(self)
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_signal_is_read_from_the_fd() {
        // The mask is per thread: only this test thread blocks SIGHUP, and raise() targets it.
        let signals = SignalFd::for_termination_signals().unwrap();
        assert_eq!(signals.take(), None);
        // SAFETY: raising a signal that this thread blocks just makes it pending.
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        assert_eq!(signals.take(), Some(libc::SIGHUP));
        assert_eq!(signals.take(), None);
    }
}
