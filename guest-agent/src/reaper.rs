//! PID 1's child collection. One thread waits for SIGCHLD (blocked in every thread, taken with sigwaitinfo)
//! and reaps every ended child; statuses of children someone registered interest in are kept until they are
//! taken, the rest (orphans re-parented to PID 1) are dropped. A status that arrives before anyone asked for
//! it is kept too, so a process that ends before the agent registers it is never lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};

use crate::sys::ExitStatus;

#[derive(Default)]
struct State {
    /// Children the agent started and will ask about.
    ours: HashSet<i32>,
    /// Ended children not yet taken.
    ended: HashMap<i32, ExitStatus>,
}

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
    changed: Condvar,
}

/// Blocks SIGCHLD in the calling thread; call before any thread exists so all inherit it.
pub fn block_sigchld() {
    // SAFETY: a local signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

impl Reaper {
    /// Starts the reaping thread.
    pub fn start() -> std::io::Result<Arc<Reaper>> {
        let r = Arc::new(Reaper::default());
        let r2 = r.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r2.run())?;
        Ok(r)
    }

    /// Marks `pid` as ours: its status is kept for [`Reaper::wait`]. Call right after starting it.
    pub fn watch(&self, pid: i32) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.ours.insert(pid);
    }

    /// Blocks until `pid` (watched) has ended; returns its status once.
    pub fn wait(&self, pid: i32) -> ExitStatus {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(st) = s.ended.remove(&pid) {
                s.ours.remove(&pid);
                return st;
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Reaps forever in the calling thread.
    pub fn run(&self) -> ! {
        // SAFETY: a local signal set holding SIGCHLD (blocked since main).
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            set
        };
        loop {
            loop {
                let mut status = 0;
                // SAFETY: waitpid writes our local.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::__WALL) };
                if pid <= 0 {
                    break;
                }
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                // Unknown pids are kept briefly too: the starter may not have called watch() yet. They are
                // bounded by the number of direct children, which only the agent creates.
                s.ended.insert(pid, ExitStatus::from_wait(status));
                if s.ended.len() > 4096 {
                    let ours = s.ours.clone();
                    s.ended.retain(|p, _| ours.contains(p));
                }
                self.changed.notify_all();
            }
            // SAFETY: `set` is initialised; a null siginfo is allowed.
            unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        }
    }
}
