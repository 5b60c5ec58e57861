//! A private directory for the sockets one input needs, removed when the input is done (targets run on
//! several test threads at once, so each process and thread gets its own).

use std::path::{Path, PathBuf};

/// `$TMPDIR/hull-fuzz-<pid>-<thread>`, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new() -> Self {
        let thread: String = format!("{:?}", std::thread::current().id())
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let dir = std::env::temp_dir().join(format!("hull-fuzz-{}-{thread}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for ScratchDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
