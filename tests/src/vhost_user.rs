//! Shared harness of the vhost-user end-to-end tests (`tests/tests/hull_devices.rs`, `blk_slots.rs`) and of
//! `hull-bench devices`: builds a busybox initramfs around a guest script from `tests/guest-init/`, starts
//! `hull vhost-user ...` backends and QEMU (TCG, microvm, shared memfd memory), and reads the serial console
//! for marker lines.
//!
//! Everything it starts or creates is owned by a guard that kills (SIGKILL, by PID) or removes it on
//! drop, so a failing assertion leaves nothing behind. It trusts nothing the guest prints beyond
//! matching marker lines.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default wait for a guest marker (TCG boots in ~3 s; leave room for a loaded machine).
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(180);

pub use crate::repo_root;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

pub use crate::ensure_qemu_tools as ensure_tools;

/// The guest kernel: `$HULL_TEST_KERNEL`, else `$HULL_KERNEL` (scripts/test.sh exports it), else
/// `resources/build-guest.sh --kernel-only`.
pub fn kernel() -> PathBuf {
    static KERNEL: OnceLock<PathBuf> = OnceLock::new();
    KERNEL
        .get_or_init(|| {
            for var in ["HULL_TEST_KERNEL", "HULL_KERNEL"] {
                if let Some(k) = std::env::var_os(var).filter(|k| !k.is_empty()) {
                    return PathBuf::from(k);
                }
            }
            let out = Command::new("bash")
                .arg(repo_root().join("resources/build-guest.sh"))
                .arg("--kernel-only")
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(out.status.success(), "build-guest.sh --kernel-only failed");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let line = stdout
                .lines()
                .rev()
                .find(|l| l.starts_with("kernel="))
                .expect("no kernel= line");
            PathBuf::from(&line["kernel=".len()..])
        })
        .clone()
}

/// `target/debug/hull` (or `$HULL_BIN`), built once per test binary.
pub fn hull() -> PathBuf {
    static HULL: OnceLock<PathBuf> = OnceLock::new();
    HULL.get_or_init(|| {
        if let Some(b) = std::env::var_os("HULL_BIN") {
            return PathBuf::from(b);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-q", "-p", "hull"])
            .current_dir(repo_root())
            .status()
            .unwrap();
        assert!(st.success(), "building hull failed");
        target_dir().join("debug/hull")
    })
    .clone()
}

/// A scratch directory removed on drop.
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!("hull-vu-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        WorkDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL, by PID) and reaped on drop; its output is collected.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    output: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr collected into one log.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Proc {
            name: name.to_string(),
            child: Some(child),
            output,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until a whole line containing `needle` was printed (or the process ended); returns that line.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let start = Instant::now();
        loop {
            // Whole lines only while the process runs: a line still being written (the guest's serial
            // console is slow under TCG) would be returned cut short (seen in CI: a hash missing its end).
            let output = self.output();
            let complete = output.rfind('\n').map_or("", |end| &output[..end]);
            if let Some(line) = complete.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_string());
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() {
                std::thread::sleep(Duration::from_millis(200)); // let the readers drain
                if let Some(line) = self.output().lines().find(|l| l.contains(needle)) {
                    return Ok(line.to_string());
                }
                return Err(format!("{} exited ({exited:?}) before printing {needle:?}", self.name));
            }
            if start.elapsed() > timeout {
                return Err(format!("{} did not print {needle:?} within {timeout:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL now and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `hull vhost-user <args>` and waits for its socket to appear.
pub fn start_backend(name: &str, socket: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(hull());
    cmd.arg("vhost-user").args(args).env("RUST_LOG", "info");
    let mut p = Proc::spawn(name, cmd);
    let start = Instant::now();
    while !socket.exists() {
        if start.elapsed() > Duration::from_secs(20) || p.wait_exit(Duration::from_millis(0)).is_some() {
            panic!("{name} did not create {}: {}", socket.display(), p.output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// Builds an initramfs: busybox, `tests/guest-init/init.sh` as /init, `script` as /test.sh, plus
/// `extra` (guest path, host file) pairs.
pub fn initramfs(dir: &Path, script: &str, extra: &[(&str, &Path)]) -> PathBuf {
    let gen = kernel().parent().unwrap().join("gen_init_cpio");
    let guest_init = repo_root().join("tests/guest-init");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox");
    let mut list = String::from(
        "dir /dev 0755 0 0\nnod /dev/console 0600 0 0 c 5 1\ndir /bin 0755 0 0\ndir /proc 0555 0 0\n\
         dir /sys 0555 0 0\ndir /tmp 1777 0 0\n",
    );
    list += &format!("file /bin/busybox {} 0755 0 0\n", busybox.display());
    list += &format!("file /init {} 0755 0 0\n", guest_init.join("init.sh").display());
    list += &format!("file /test.sh {} 0644 0 0\n", guest_init.join(script).display());
    list += &format!("file /lib.sh {} 0644 0 0\n", guest_init.join("lib.sh").display());
    for (guest, host) in extra {
        list += &format!("file {guest} {} 0755 0 0\n", host.display());
    }
    let list_path = dir.join("initramfs.list");
    std::fs::write(&list_path, list).unwrap();
    let out = Command::new(&gen).arg(&list_path).output().unwrap();
    assert!(
        out.status.success(),
        "gen_init_cpio: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("initramfs.cpio");
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// Starts QEMU (TCG microvm, 256 MiB shared memfd memory) with the test kernel, `initrd` and extra
/// device arguments; the serial console is the process output. `cmdline_extra` is appended to the
/// kernel command line (the guest scripts read `hull.*` parameters from /proc/cmdline).
pub fn start_qemu(initrd: &Path, cmdline_extra: &str, device_args: &[String]) -> Proc {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=mem",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "256",
        "-global",
        "virtio-mmio.force-legacy=false",
        "-object",
        "memory-backend-memfd,id=mem,size=256M,share=on",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
    ]);
    cmd.arg("-kernel").arg(kernel()).arg("-initrd").arg(initrd);
    cmd.arg("-append").arg(format!(
        "console=ttyS0 reboot=k panic=-1 loglevel=4 no_timer_check pci=off {cmdline_extra}"
    ));
    cmd.args(device_args);
    Proc::spawn("qemu", cmd)
}

/// `-chardev socket` + `-device`/`-netdev` arguments for one vhost-user device.
pub fn chardev(id: &str, socket: &Path) -> Vec<String> {
    vec!["-chardev".into(), format!("socket,id={id},path={}", socket.display())]
}

/// sha256 of a file, via coreutils.
pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// sha256 of bytes, via coreutils.
pub fn sha256_bytes(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Deterministic bytes for disk images.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The value after `key ` on the first line starting with `key`.
pub fn field(line: &str, key: &str) -> String {
    line.split_once(key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}
