//! The guest console (`/dev/console`): where the agent writes its ready line and its diagnostics. Opened
//! once, reopened when PID 1 has mounted devtmpfs; without it, lines go to standard error. Writing never
//! fails the caller: PID 1 must carry on whatever the console does.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Mutex, OnceLock};

/// `/dev/console`, opened once; falls back to standard error.
static CONSOLE: OnceLock<Mutex<Option<File>>> = OnceLock::new();

fn open() -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
        .ok()
}

/// One line on the console, as is.
pub fn line(text: &str) {
    let line = format!("{text}\n");
    let console = CONSOLE.get_or_init(|| Mutex::new(open()));
    let mut guard = console.lock().unwrap_or_else(|p| p.into_inner());
    let written = guard
        .as_mut()
        .map(|f| f.write_all(line.as_bytes()).is_ok())
        .unwrap_or(false);
    if !written {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

/// A diagnostic line on the console, prefixed with the agent's name.
pub fn log(text: &str) {
    line(&format!("hull-agent: {text}"));
}

/// Opens the console now that devtmpfs is mounted, unless a line was already written (which opened it).
pub fn reopen() {
    let _ = CONSOLE.set(Mutex::new(open()));
}
