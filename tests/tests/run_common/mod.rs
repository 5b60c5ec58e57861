//! Shared harness of the `hull run` end-to-end tests: the busybox rootfs (built once per test binary by
//! `tests/rootfs/busybox.sh`), QEMU installed by `scripts/install-qemu.sh`, and [`HullRun`], a `hull run`
//! process with piped stdio, a deadline, and a SIGKILL-by-PID on drop so a failing test leaves nothing.
//!
//! The tests run the `qemu` backend explicitly (it works on every host); the `kvm` backend is exercised by
//! `run_kvm.rs` where hardware KVM exists and skipped loudly elsewhere.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hull_tests::{guest_images, hull_bin, repo_root};

/// How long one `hull run` may take (TCG boot ~2 s; leave room for a loaded machine).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(240);

pub use hull_tests::ensure_qemu_tools as ensure_tools;

/// The busybox rootfs directory, shared by the test binaries (`target/<profile>/hull-test-busybox-rootfs`):
/// built into a private directory and renamed into place, so concurrent builders never see half of it.
pub fn busybox_rootfs() -> PathBuf {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            ensure_tools();
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
            let done = profile_dir.join("hull-test-busybox-rootfs");
            if done.join("bin/busybox").is_file() {
                return done;
            }
            let tmp = profile_dir.join(format!("hull-test-busybox-rootfs.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let st = Command::new("bash")
                .arg(repo_root().join("tests/rootfs/busybox.sh"))
                .arg(&tmp)
                .status()
                .unwrap();
            assert!(st.success(), "tests/rootfs/busybox.sh failed");
            if std::fs::rename(&tmp, &done).is_err() {
                // Someone else won the race; theirs is identical.
                let _ = std::fs::remove_dir_all(&tmp);
            }
            done
        })
        .clone()
}

/// A `hull run` invocation.
pub struct HullRun {
    child: Option<Child>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl RunOutput {
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).to_string()
    }
}

/// `hull run --backend qemu --rootfs <busybox> <opts> -- <cmd>` with the test guest.
pub fn command(opts: &[&str], cmd: &[&str]) -> Command {
    command_on("qemu", opts, cmd)
}

/// `hull run --backend <backend> ...` with the test guest and the busybox rootfs.
pub fn command_on(backend: &str, opts: &[&str], cmd: &[&str]) -> Command {
    let g = guest_images();
    let mut c = Command::new(hull_bin());
    c.arg("run")
        .arg("--backend")
        .arg(backend)
        .arg("--rootfs")
        .arg(busybox_rootfs());
    c.arg("--kernel").arg(&g.kernel).arg("--initrd").arg(&g.initrd);
    c.args(opts).arg("--").args(cmd);
    c
}

impl HullRun {
    /// Starts it; `stdin` bytes are written by a thread and then stdin is closed.
    pub fn spawn(mut cmd: Command, stdin: Option<Vec<u8>>) -> HullRun {
        ensure_tools();
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting hull run");
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for (pipe, sink) in [
            (
                child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
                stdout.clone(),
            ),
            (
                child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
                stderr.clone(),
            ),
        ] {
            let mut pipe = pipe.unwrap();
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }));
        }
        HullRun {
            child: Some(child),
            stdout,
            stderr,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn stdout_now(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).to_string()
    }

    pub fn stderr_now(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).to_string()
    }

    /// Waits until stdout contains `needle`.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.stdout_now().contains(needle) {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none(),
                "hull run exited ({exited:?}) before printing {needle:?}\n{}",
                self.stderr_now()
            );
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} within {timeout:?}\n{}",
                self.stderr_now()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the PID of our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for the exit (SIGKILL after RUN_TIMEOUT, then a panic).
    pub fn finish(mut self) -> RunOutput {
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if start.elapsed() > RUN_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("hull run did not finish within {RUN_TIMEOUT:?}\n{}", self.stderr_now());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stdout = std::mem::take(&mut *self.stdout.lock().unwrap());
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap()).to_string();
        RunOutput { status, stdout, stderr }
    }
}

impl Drop for HullRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs to completion.
pub fn run(opts: &[&str], cmd: &[&str]) -> RunOutput {
    HullRun::spawn(command(opts, cmd), None).finish()
}

/// Where `hull run` (pid) keeps its run directory.
pub fn run_dir_prefix(pid: u32) -> String {
    format!("hull-run-{pid}-")
}

pub fn runtime_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// Run directories of `hull run` process `pid` that still exist.
pub fn leftover_dirs(pid: u32) -> Vec<PathBuf> {
    let prefix = run_dir_prefix(pid);
    std::fs::read_dir(runtime_base())
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| name_starts(p, &prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn name_starts(p: &Path, prefix: &str) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(prefix))
}

/// Processes whose command line mentions the run directory of `hull run` `pid` (QEMU, vhost-user backends).
pub fn leftover_processes(pid: u32) -> Vec<String> {
    let prefix = run_dir_prefix(pid);
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name()
            .to_str()
            .is_none_or(|n| !n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&prefix) {
            found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

/// The host's kernel release, to tell it from the guest's.
pub fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}
