//! Shared helpers for hull's end-to-end tests: finding the `hull` binary, the tiny test guests and the real
//! guest kernel + initramfs; telling hardware KVM from the software `kvm_pvm`; a [`Hull`] process wrapper that
//! captures the serial console (stdout) and the log (stderr) and kills the process when dropped, even when the
//! test panics; and [`ApiClient`], hull-runtime's client for hull's API socket with a panicking helper for tests.
//!
//! Everything a guest prints is untrusted text: it is kept as lossy UTF-8 and only searched, never parsed in
//! ways that could panic on odd bytes.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod containerd;
pub mod cri;
pub mod guest_devices;
pub mod oci_image;
pub mod vhost_user;

// ---------------------------------------------------------------------------------------------------------
// Where things are

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Builds a busybox root directory at `dir` (`tests/rootfs/busybox.sh`), e.g. for a spec's `root.path`.
pub fn build_busybox_rootfs(dir: &Path) {
    let st = std::process::Command::new("bash")
        .arg(repo_root().join("tests/rootfs/busybox.sh"))
        .arg(dir)
        .status()
        .unwrap_or_else(|e| panic!("running tests/rootfs/busybox.sh: {e}"));
    assert!(st.success(), "building a busybox rootfs at {}", dir.display());
}

/// Installs QEMU, busybox-static and the other tools the QEMU guest tests need, when missing (once per
/// test process), through `scripts/install-qemu.sh`.
pub fn ensure_qemu_tools() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let st = Command::new("bash")
            .arg(repo_root().join("scripts/install-qemu.sh"))
            .status();
        assert!(st.is_ok_and(|s| s.success()), "scripts/install-qemu.sh failed");
    });
}

/// The `hull` binary: `$HULL_BIN`, else `hull` next to the directory holding this test executable (cargo
/// puts tests in `target/<profile>/deps/` and binaries in `target/<profile>/`), else `target/debug/hull`.
/// Panics with instructions when it has not been built: tests do not run cargo themselves.
pub fn hull_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("HULL_BIN") {
        return PathBuf::from(path);
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("hull"));
        }
    }
    candidates.push(repo_root().join("target/debug/hull"));
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "the hull binary was not found (looked at {candidates:?}); build it with \
             `cargo build -p hull`, or set HULL_BIN"
        )
    })
}

/// A tiny test guest built by `build.rs` from `tests/guests/`: `pvh.elf`, `long64.elf`, `tiny.bzImage`,
/// `triplefault.elf`, `smp.elf`, `counter.elf`.
pub fn tiny_guest(name: &str) -> PathBuf {
    let path = Path::new(env!("HULL_TINY_GUESTS_DIR")).join(name);
    assert!(path.is_file(), "tiny guest {} was not built", path.display());
    path
}

/// The project's real guest: an ELF vmlinux and the initramfs whose /init is hull-agent.
#[derive(Clone, Debug)]
pub struct GuestImages {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The guest kernel and initramfs: `$HULL_KERNEL` and `$HULL_INITRD` when both are set, else the output of
/// `resources/build-guest.sh` (run once per test process; cached by the script itself, so it takes seconds
/// unless the kernel has never been built).
pub fn guest_images() -> GuestImages {
    static IMAGES: OnceLock<GuestImages> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            if let (Some(kernel), Some(initrd)) = (std::env::var_os("HULL_KERNEL"), std::env::var_os("HULL_INITRD")) {
                return GuestImages {
                    kernel: kernel.into(),
                    initrd: initrd.into(),
                };
            }
            let script = repo_root().join("resources/build-guest.sh");
            eprintln!(
                "running {} (set HULL_KERNEL and HULL_INITRD to skip this)",
                script.display()
            );
            let out = Command::new("bash")
                .arg(&script)
                .current_dir(repo_root())
                .stderr(Stdio::inherit())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(out.status.success(), "{} failed: {}", script.display(), out.status);
            parse_build_guest_output(&String::from_utf8_lossy(&out.stdout))
                .unwrap_or_else(|| panic!("{} did not print kernel=... and initrd=...", script.display()))
        })
        .clone()
}

/// Reads the `kernel=` and `initrd=` lines that end `build-guest.sh`'s standard output.
pub fn parse_build_guest_output(stdout: &str) -> Option<GuestImages> {
    let mut kernel = None;
    let mut initrd = None;
    for line in stdout.lines() {
        if let Some(k) = line.strip_prefix("kernel=") {
            kernel = Some(PathBuf::from(k.trim()));
        } else if let Some(i) = line.strip_prefix("initrd=") {
            initrd = Some(PathBuf::from(i.trim()));
        }
    }
    Some(GuestImages {
        kernel: kernel?,
        initrd: initrd?,
    })
}

// ---------------------------------------------------------------------------------------------------------
// KVM

/// `/dev/kvm` exists and this process may open it read-write.
pub fn kvm_usable() -> bool {
    OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The KVM here is `kvm_pvm`, the software KVM: guest ring 0 is emulated (~1000x slower) and no Linux guest
/// reaches user space.
pub fn software_kvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// KVM backed by hardware virtualization (VMX/SVM): usable, and not `kvm_pvm`.
pub fn hardware_kvm() -> bool {
    kvm_usable() && !software_kvm()
}

/// Writes a line straight to the process's stderr. The test harness captures `eprintln!` of passing tests;
/// this is not captured, so it shows in every `cargo test` run.
pub fn note(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Prints a line that cannot be missed in test output (not captured by the harness), saying which test was
/// skipped and why.
pub fn skip(test: &str, reason: &str) {
    note(&format!("\n*** SKIPPED {test}: {reason} ***\n"));
}

/// Returns from the calling test (after a loud SKIPPED line) when `/dev/kvm` cannot be used.
#[macro_export]
macro_rules! require_kvm {
    ($test:expr) => {
        if !$crate::kvm_usable() {
            $crate::skip($test, "/dev/kvm is missing or not accessible to this user");
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------------------------
// Temporary directories

/// A fresh directory under the system temp dir (`hull-test-<label>-XXXXXX`), removed with its contents on
/// drop: `vmm_sys_util`'s `TempDir` with a label in its name and `io::Error`s.
pub struct TempDir(vmm_sys_util::tempdir::TempDir);

impl TempDir {
    pub fn new(label: &str) -> io::Result<TempDir> {
        let prefix = std::env::temp_dir().join(format!("hull-test-{label}-"));
        vmm_sys_util::tempdir::TempDir::new_with_prefix(prefix)
            .map(TempDir)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    pub fn path(&self) -> &Path {
        self.0.as_path()
    }
}

impl std::fmt::Debug for TempDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TempDir").field(&self.path()).finish()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Captured output

/// Everything a stream produced so far, filled by a reader thread, with a condition variable that wakes
/// waiters on every new chunk and at end of stream.
#[derive(Default)]
struct Captured {
    state: Mutex<CapturedState>,
    changed: Condvar,
}

#[derive(Default)]
struct CapturedState {
    bytes: Vec<u8>,
    closed: bool,
}

impl Captured {
    fn spawn_reader<R: Read + Send + 'static>(self: &Arc<Self>, mut stream: R, name: &str) -> JoinHandle<()> {
        let this = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("hull-{name}"))
            .spawn(move || {
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut st = this.state.lock().unwrap_or_else(|e| e.into_inner());
                    st.bytes.extend_from_slice(&chunk[..n]);
                    this.changed.notify_all();
                }
                let mut st = this.state.lock().unwrap_or_else(|e| e.into_inner());
                st.closed = true;
                this.changed.notify_all();
            })
            .expect("spawn an output reader thread")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.state.lock().unwrap_or_else(|e| e.into_inner()).bytes).into_owned()
    }

    fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).bytes.len()
    }

    /// Waits until some line (complete or not) of the text from byte `from` on contains `pattern`; returns
    /// that line. `None` on timeout or when the stream ended without it.
    fn wait_for(&self, pattern: &str, from: usize, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let text = String::from_utf8_lossy(st.bytes.get(from..).unwrap_or_default());
            if let Some(line) = text.lines().find(|l| l.contains(pattern)) {
                return Some(line.to_string());
            }
            let now = Instant::now();
            if st.closed || now >= deadline {
                return None;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The hull process

/// A running `hull` process with its own temporary directory. Stdout (the guest's serial console) and stderr
/// (hull's log) are captured in memory. Dropping it kills the process (SIGKILL), reaps it and removes the
/// directory; the child also gets SIGKILL if the test process dies first (PR_SET_PDEATHSIG).
pub struct Hull {
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stdout: Arc<Captured>,
    stderr: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
    api_sock: Option<PathBuf>,
    started: Instant,
    dir: TempDir,
}

impl Hull {
    /// Starts `hull` with exactly these arguments, in a new temporary directory.
    pub fn spawn<I, S>(label: &str, args: I) -> Hull
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let dir = TempDir::new(label).expect("create a temporary directory");
        Self::spawn_in(dir, args)
    }

    /// Starts `hull` with exactly these arguments in `dir` (which may already hold files the arguments name),
    /// without waiting for anything. The Hull owns `dir` from now on.
    pub fn spawn_in<I, S>(dir: TempDir, args: I) -> Hull
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_binary_in(&hull_bin(), dir, args)
    }

    /// Boots from a Firecracker-style JSON config (`boot-source`, `machine-config`, ...) with
    /// `hull --no-api --config-file`, plus `extra` arguments (e.g. `--boot-timer`).
    pub fn with_config(label: &str, config: &serde_json::Value, extra: &[&str]) -> Hull {
        let dir = TempDir::new(label).expect("create a temporary directory");
        let file = dir.path().join("vm-config.json");
        std::fs::write(&file, serde_json::to_vec_pretty(config).expect("serialize config")).expect("write config");
        let mut args: Vec<&OsStr> = vec![OsStr::new("--no-api"), OsStr::new("--config-file"), file.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        Self::spawn_in(dir, args)
    }

    /// Starts `hull --api-sock <dir>/api.sock` plus `extra`, and waits (up to 10 s) until the socket accepts
    /// connections.
    pub fn with_api(label: &str, extra: &[&str]) -> Hull {
        let dir = TempDir::new(label).expect("create a temporary directory");
        let sock = dir.path().join("api.sock");
        let mut args: Vec<&OsStr> = vec![OsStr::new("--api-sock"), sock.as_os_str()];
        args.extend(extra.iter().map(OsStr::new));
        let hull = Self::spawn_in(dir, args);
        hull.wait_for_api(Duration::from_secs(10));
        hull
    }

    /// Starts the `hull` binary at `bin` with exactly these arguments in `dir`, like [`Hull::spawn_in`]. When
    /// the arguments include `--api-sock PATH`, that is the socket of [`Hull::api`].
    pub fn spawn_binary_in<I, S>(bin: &Path, dir: TempDir, args: I) -> Hull
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let api_sock = args
            .iter()
            .map(AsRef::as_ref)
            .skip_while(|a| *a != "--api-sock")
            .nth(1)
            .map(|p| dir.path().join(p));
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2), which is
        // async-signal-safe; it touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = Arc::new(Captured::default());
        let stderr = Arc::new(Captured::default());
        let out: ChildStdout = child.stdout.take().expect("stdout is piped");
        let err: ChildStderr = child.stderr.take().expect("stderr is piped");
        let readers = vec![stdout.spawn_reader(out, "stdout"), stderr.spawn_reader(err, "stderr")];
        Hull {
            child: Mutex::new(child),
            status: Mutex::new(None),
            stdout,
            stderr,
            readers,
            api_sock,
            started: Instant::now(),
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// The process's temporary directory (its working directory).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API socket path, for hulls started by [`Hull::with_api`].
    pub fn api_sock(&self) -> Option<&Path> {
        self.api_sock.as_deref()
    }

    /// A client for this hull's API socket. Panics if it was started without one.
    pub fn api(&self) -> ApiClient {
        ApiClient::new(
            self.api_sock
                .as_ref()
                .expect("this hull was started without --api-sock"),
        )
    }

    /// Waits until the API socket accepts connections; panics (with the output) when hull exits first or
    /// `timeout` passes.
    pub fn wait_for_api(&self, timeout: Duration) {
        let sock = self
            .api_sock
            .as_ref()
            .expect("this hull was started without --api-sock");
        let deadline = Instant::now() + timeout;
        while UnixStream::connect(sock).is_err() {
            if self.try_status().is_some() || Instant::now() > deadline {
                panic!(
                    "hull's API socket {} never accepted a connection\n{}",
                    sock.display(),
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// One request on the API socket, on a connection of its own; panics (with the output) when it cannot
    /// be sent or no well-formed response comes back. Any status is returned.
    pub fn request(&self, method: &str, uri: &str, body: Option<&str>) -> ApiResponse {
        self.api()
            .request(method, uri, body)
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}\n{}", self.report()))
    }

    /// A kept-alive connection to the API socket, for several requests or hand-made bytes.
    pub fn connect_api(&self) -> ApiConnection {
        self.api()
            .connect()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.report()))
    }

    /// Time since the process was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The serial console so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// hull's log so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Bytes of serial output so far (a position for [`Hull::wait_for_output_after`]).
    pub fn stdout_len(&self) -> usize {
        self.stdout.len()
    }

    /// Waits for a line of serial output containing `pattern`; returns the line, or `None` on timeout or
    /// when hull closed its stdout first.
    pub fn wait_for_output(&self, pattern: &str, timeout: Duration) -> Option<String> {
        self.stdout.wait_for(pattern, 0, timeout)
    }

    /// Like [`Hull::wait_for_output`], looking only at output from byte `from` on.
    pub fn wait_for_output_after(&self, pattern: &str, from: usize, timeout: Duration) -> Option<String> {
        self.stdout.wait_for(pattern, from, timeout)
    }

    /// Waits for a line of hull's log containing `pattern`.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Option<String> {
        self.stderr.wait_for(pattern, 0, timeout)
    }

    /// [`Hull::wait_for_output`], panicking with the captured output when the line does not come.
    pub fn expect_output(&self, pattern: &str, timeout: Duration) -> String {
        self.wait_for_output(pattern, timeout).unwrap_or_else(|| {
            panic!(
                "no serial output line containing {pattern:?} within {timeout:?}\n{}",
                self.report()
            )
        })
    }

    /// [`Hull::wait_for_log`], panicking with the captured output when the line does not come.
    pub fn expect_log(&self, pattern: &str, timeout: Duration) -> String {
        self.wait_for_log(pattern, timeout).unwrap_or_else(|| {
            panic!(
                "no log line containing {pattern:?} within {timeout:?}\n{}",
                self.report()
            )
        })
    }

    /// The exit status if the process has ended, without waiting.
    pub fn try_status(&self) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.is_none() {
            *status = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_wait()
                .ok()
                .flatten();
        }
        *status
    }

    /// Waits up to `timeout` for the process to end; returns its status, `None` if still running.
    /// Once it has ended, both output streams are read to the end before this returns.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for the process to end and panics (with the output) if it does not within `timeout`.
    pub fn expect_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit(timeout) {
            Some(status) => status,
            None => panic!("hull did not exit within {timeout:?}\n{}", self.report()),
        }
    }

    /// Sends SIGKILL (if still running) and reaps the process.
    pub fn kill(&mut self) {
        if self.try_status().is_none() {
            let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
            let _ = child.kill();
            *self.status.lock().unwrap_or_else(|e| e.into_inner()) = child.wait().ok();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// A description of the process for failure messages: PID, state, and the tail of both streams.
    pub fn report(&self) -> String {
        let state = match self.try_status() {
            Some(status) => format!("exited: {status}"),
            None => "still running".to_string(),
        };
        format!(
            "--- hull pid {} ({state}, {:.1} s) ---\n--- serial console (stdout), last 4000 bytes ---\n{}\n\
             --- hull log (stderr), last 4000 bytes ---\n{}\n---",
            self.pid(),
            self.elapsed().as_secs_f64(),
            tail(&self.stdout(), 4000),
            tail(&self.stderr(), 4000)
        )
    }
}

impl Drop for Hull {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

// ---------------------------------------------------------------------------------------------------------
// Reading the tiny guests' reports

/// The value of `key=` in a line of `key=value` words, e.g. `field("x cr0=11 y=2", "cr0")` is `Some("11")`.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

/// Parses a hex number with or without `0x`.
pub fn parse_hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.trim_start_matches("0x"), 16).ok()
}

/// [`field`] parsed as hex; panics with the line when it is missing or malformed.
pub fn hex_field(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(parse_hex)
        .unwrap_or_else(|| panic!("no hex {key}= in {line:?}"))
}

/// [`field`] parsed as decimal; panics with the line when it is missing or malformed.
pub fn dec_field(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no decimal {key}= in {line:?}"))
}

// ---------------------------------------------------------------------------------------------------------
// Serialising Linux boots

/// An exclusive `flock` on a file in the temp dir, held until dropped. Linux boots take about a minute of
/// emulated ring 0 each on the software KVM, and two at once on a 2-core machine would each take twice as
/// long; this keeps them one at a time across threads and test processes.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    pub fn acquire(name: &str) -> FileLock {
        let path = std::env::temp_dir().join(format!("hull-tests-{name}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open lock file {}: {e}", path.display()));
        loop {
            // SAFETY: flock(2) on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                panic!("flock {}: {err}", path.display());
            }
        }
        FileLock { _file: file }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The API client

pub use hull_runtime::api_client::{ApiClientError, ApiConnection, ApiResponse};

/// hull-runtime's [`hull_runtime::api_client::ApiClient`] (one request per connection, bounded responses,
/// a timeout), plus [`ApiClient::expect_ok`] for tests.
#[derive(Clone, Debug)]
pub struct ApiClient(hull_runtime::api_client::ApiClient);

impl ApiClient {
    pub fn new(path: impl Into<PathBuf>) -> ApiClient {
        ApiClient(hull_runtime::api_client::ApiClient::new(path))
    }

    /// PUT/PATCH that must succeed (2xx); panics with the response otherwise.
    pub fn expect_ok(&self, method: &str, uri: &str, body: &serde_json::Value) -> ApiResponse {
        let resp = self
            .request(method, uri, Some(&body.to_string()))
            .unwrap_or_else(|e| panic!("{method} {uri}: {e}"));
        assert!(
            resp.is_success(),
            "{method} {uri} {body} answered {} {}",
            resp.status,
            resp.body
        );
        resp
    }
}

impl std::ops::Deref for ApiClient {
    type Target = hull_runtime::api_client::ApiClient;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_key() {
        let line = "hull-tiny: pvh ok magic=336ec578 cr0=11 start_info=6000";
        assert_eq!(field(line, "magic"), Some("336ec578"));
        assert_eq!(hex_field(line, "cr0"), 0x11);
        assert_eq!(field(line, "start"), None);
        assert_eq!(dec_field("smp n=12", "n"), 12);
        assert_eq!(parse_hex("0x8000000"), Some(0x800_0000));
    }

    #[test]
    fn build_guest_output_is_parsed_from_its_last_lines() {
        let out = "noise\nkernel=/c/kernel-1/vmlinux\ninitrd=/c/initramfs-2.cpio.gz\n";
        let images = parse_build_guest_output(out).unwrap();
        assert_eq!(images.kernel, PathBuf::from("/c/kernel-1/vmlinux"));
        assert_eq!(images.initrd, PathBuf::from("/c/initramfs-2.cpio.gz"));
        assert!(parse_build_guest_output("kernel=/x\n").is_none());
    }

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
    }
}
