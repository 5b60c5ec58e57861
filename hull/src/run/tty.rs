//! The host terminal and signals for `hull run`: raw mode while a container terminal is attached (restored on
//! drop), the window size, and the signals hull forwards (INT, TERM, HUP, QUIT, USR1, USR2, WINCH), which are
//! blocked in every thread and taken by one sigwait thread.

const FORWARDED: [libc::c_int; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Proof that the signals are blocked (call before any thread exists).
pub struct BlockedSignals(libc::sigset_t);

pub fn block_signals() -> BlockedSignals {
    // SAFETY: a local signal set; pthread_sigmask reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        BlockedSignals(set)
    }
}

/// Hands every forwarded signal to `deliver` from a background thread until it returns false.
pub fn forward_signals(set: BlockedSignals, mut deliver: impl FnMut(i32) -> bool + Send + 'static) {
    let set = set.0;
    std::thread::spawn(move || loop {
        let mut sig = 0;
        // SAFETY: `set` is initialised; sigwait writes `sig`.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 && !deliver(sig) {
            break;
        }
    });
}

/// The host terminal's (rows, columns), when standard input or output is a terminal.
pub fn size() -> Option<(u32, u32)> {
    for fd in [0, 1] {
        // SAFETY: TIOCGWINSZ writes one winsize we own.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0 {
            return Some((ws.ws_row as u32, ws.ws_col as u32));
        }
    }
    None
}

/// Standard input in raw mode; the saved settings come back on drop.
pub struct RawMode(libc::termios);

impl RawMode {
    pub fn enter() -> Option<RawMode> {
        // SAFETY: tcgetattr/tcsetattr on fd 0 with termios structs we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawMode(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings saved in `enter`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}
