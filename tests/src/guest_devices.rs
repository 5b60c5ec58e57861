//! One guest, two VMMs: boots the busybox test initramfs (`tests/guest-init/`) with virtio-blk drives, a
//! virtio-net interface and a virtio-vsock device served either by **QEMU (TCG) with hull's vhost-user
//! backends** (started by [`crate::vhost_user`]) — or by **hull itself**, over
//! virtio-mmio, configured in Firecracker's shapes through the API or `--config-file`, with the hybrid vsock
//! unix socket on the host side exactly like Firecracker's. The devices are described once ([`GuestSpec`]);
//! only [`boot`] knows which VMM runs them, so a scenario proven under QEMU here differs under hull only in
//! the VMM it talks to.
//!
//! Also the host half of the vsock protocol the guest helper `vsock-tool` speaks (`CONNECT`, `ECHO`,
//! `XFER` with position-dependent patterns), and a network namespace guard. Used by
//! `tests/tests/hull_devices.rs` and by `hull-bench devices` (`bench/src/guest_io.rs`).
//!
//! Everything started or created is owned by a guard (SIGKILL by PID, namespace deletion) that cleans up on
//! drop, also when an assertion fails. What the guest prints is untrusted text: only marker lines are
//! searched.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::vhost_user::{chardev, hull, initramfs, kernel, repo_root, start_backend, start_qemu, Proc};

/// The kernel command line both VMMs give the guest before the scenario's own `hull.*` parameters; the same
/// words `vhost_user::start_qemu` uses (hull appends its `virtio_mmio.device=` entries after them).
pub const BASE_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 loglevel=4 no_timer_check";
/// Guest RAM, as in `start_qemu`.
pub const GUEST_MEM_MIB: u32 = 256;
/// The guest port `vsock-tool serve` listens on in `vsock.sh` (and `bench-io.sh`).
pub const GUEST_VSOCK_PORT: u32 = 52;

/// Which VMM runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vmm {
    /// QEMU TCG microvm, each device a `hull vhost-user` backend process.
    Qemu,
    /// hull with virtio-mmio devices, configured through `PUT` requests on its API socket.
    HullApi,
    /// hull with virtio-mmio devices, booted from `--no-api --config-file`.
    HullConfigFile,
}

impl Vmm {
    pub fn is_hull(self) -> bool {
        self != Vmm::Qemu
    }
}

/// A virtio-blk drive; `id` is both hull's `drive_id` and the vhost-user backend's `--id`, and the guest
/// finds the disk by it (`GET_ID`, `/sys/block/vdX/serial`).
#[derive(Clone, Debug)]
pub struct DriveSpec {
    pub id: String,
    pub path: PathBuf,
    pub read_only: bool,
}

/// A virtio-net interface over `tap`, which lives in the network namespace `netns`.
#[derive(Clone, Debug)]
pub struct NetSpec {
    pub tap: String,
    pub mac: String,
    pub netns: String,
}

/// A virtio-vsock device; `uds` is the hybrid socket (host → guest: `CONNECT <port>`; guest → host port
/// P: `<uds>_P`).
#[derive(Clone, Debug)]
pub struct VsockSpec {
    pub cid: u32,
    pub uds: PathBuf,
}

/// Everything about one guest except which VMM runs it.
#[derive(Clone, Debug, Default)]
pub struct GuestSpec {
    /// The guest script: a name in `tests/guest-init/`, or an absolute path (see [`guest_script`]).
    pub script: PathBuf,
    /// Further files for the initramfs: (guest path, host file).
    pub extra_files: Vec<(String, PathBuf)>,
    /// Appended to [`BASE_CMDLINE`]; the guest scripts read `hull.*` words from /proc/cmdline.
    pub cmdline: String,
    pub drives: Vec<DriveSpec>,
    pub net: Option<NetSpec>,
    /// Further arguments for the `hull vhost-user net` backend (QEMU only), e.g. `--mmds`.
    pub net_backend_args: Vec<String>,
    pub vsock: Option<VsockSpec>,
}

/// A running guest. The serial console is the output of `console` (QEMU's or hull's stdout); dropping the
/// guest kills the VMM, then the backends.
pub struct Guest {
    pub vmm: Vmm,
    pub console: Proc,
    backends: Vec<Proc>,
    hull_log: Option<PathBuf>,
}

impl Guest {
    /// Waits for a console line containing `needle`; panics with [`Guest::report`] when it does not come.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        match self.console.wait_for(needle, timeout) {
            Ok(line) => line,
            Err(e) => panic!("{e}\n{}", self.report()),
        }
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console.output()
    }

    /// The value after `KEY ` on the first console line that starts with `KEY` ("" when absent).
    pub fn marker(&self, key: &str) -> String {
        marker(&self.console(), key)
    }

    /// hull's log (empty under QEMU).
    pub fn hull_log(&self) -> String {
        self.hull_log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// The console, hull's log and the backends' output, for failure messages.
    pub fn report(&self) -> String {
        let mut out = format!("--- {:?}: serial console ---\n{}\n", self.vmm, self.console());
        if self.vmm.is_hull() {
            out += &format!("--- hull log ---\n{}\n", self.hull_log());
        }
        for b in &self.backends {
            out += &format!("--- {} ---\n{}\n", b.name, b.output());
        }
        out
    }

    /// SIGKILL the VMM and every backend now (the "power cut" of the durability test).
    pub fn kill9(&mut self) {
        self.console.kill9();
        for b in &mut self.backends {
            b.kill9();
        }
    }
}

/// The value after `key` on the first line of `log` that starts with `key` ("" when absent).
pub fn marker(log: &str, key: &str) -> String {
    log.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(key))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// Boots `spec` under `vmm`, with scratch files (initramfs, sockets, hull's config and log) in `dir`.
/// Returns once the VMM runs the guest; the caller waits for the guest's markers.
pub fn boot(vmm: Vmm, dir: &Path, spec: &GuestSpec) -> Guest {
    let extra: Vec<(&str, &Path)> = spec
        .extra_files
        .iter()
        .map(|(g, h)| (g.as_str(), h.as_path()))
        .collect();
    let initrd = initramfs(dir, spec.script.to_str().expect("UTF-8 script path"), &extra);
    match vmm {
        Vmm::Qemu => boot_qemu(dir, spec, &initrd),
        Vmm::HullApi | Vmm::HullConfigFile => boot_hull(vmm, dir, spec, &initrd),
    }
}

/// QEMU + one `hull vhost-user` backend per device.
fn boot_qemu(dir: &Path, spec: &GuestSpec, initrd: &Path) -> Guest {
    let mut backends = Vec::new();
    let mut args: Vec<String> = Vec::new();
    for (i, d) in spec.drives.iter().enumerate() {
        let sock = dir.join(format!("blk{i}.sock"));
        let mut a = vec![
            "blk",
            "--socket",
            path_str(&sock),
            "--path",
            path_str(&d.path),
            "--id",
            &d.id,
        ];
        if d.read_only {
            a.push("--read-only");
        }
        backends.push(start_backend(&format!("blk-backend {}", d.id), &sock, &a));
        let id = format!("b{i}");
        args.extend(chardev(&id, &sock));
        args.extend(["-device".into(), format!("vhost-user-blk,chardev={id}")]);
    }
    if let Some(n) = &spec.net {
        let sock = dir.join("net.sock");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &n.netns]).arg(hull());
        cmd.args(["vhost-user", "net", "--socket", path_str(&sock), "--tap", &n.tap])
            .args(&spec.net_backend_args)
            .env("RUST_LOG", "info");
        let mut backend = Proc::spawn("net-backend", cmd);
        wait_for_socket(&mut backend, &sock);
        backends.push(backend);
        args.extend(chardev("n0c", &sock));
        args.extend([
            "-netdev".into(),
            "vhost-user,id=n0,chardev=n0c".into(),
            "-device".into(),
            format!("virtio-net-device,netdev=n0,mac={}", n.mac),
        ]);
    }
    if let Some(v) = &spec.vsock {
        let sock = dir.join("vsock.sock");
        let cid = v.cid.to_string();
        let a = [
            "vsock",
            "--socket",
            path_str(&sock),
            "--guest-cid",
            &cid,
            "--uds-path",
            path_str(&v.uds),
        ];
        backends.push(start_backend("vsock-backend", &sock, &a));
        args.extend(chardev("v0", &sock));
        args.extend(["-device".into(), "vhost-user-vsock-device,chardev=v0".into()]);
    }
    let console = start_qemu(initrd, &spec.cmdline, &args);
    Guest {
        vmm: Vmm::Qemu,
        console,
        backends,
        hull_log: None,
    }
}

/// The microVM in Firecracker's JSON shapes: `boot-source`, `machine-config`, `drives`,
/// `network-interfaces`, `vsock` (the config-file layout; the API takes the same objects one by one).
pub fn hull_vm_config(spec: &GuestSpec, initrd: &Path) -> Value {
    let drives: Vec<Value> = spec
        .drives
        .iter()
        .map(|d| {
            json!({
                "drive_id": d.id,
                "path_on_host": d.path,
                "is_root_device": false,
                "is_read_only": d.read_only,
            })
        })
        .collect();
    let ifaces: Vec<Value> = spec
        .net
        .iter()
        .map(|n| json!({ "iface_id": "eth0", "host_dev_name": n.tap, "guest_mac": n.mac }))
        .collect();
    let mut config = json!({
        "boot-source": {
            "kernel_image_path": kernel(),
            "initrd_path": initrd,
            "boot_args": format!("{BASE_CMDLINE} {}", spec.cmdline).trim_end(),
        },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB },
        "drives": drives,
        "network-interfaces": ifaces,
    });
    if let Some(v) = &spec.vsock {
        config["vsock"] = json!({ "guest_cid": v.cid, "uds_path": v.uds });
    }
    config
}

/// hull (inside the spec's network namespace when it has an interface, since its TAP lives there), its
/// serial console on stdout, its log in `dir/hull.log`.
fn boot_hull(vmm: Vmm, dir: &Path, spec: &GuestSpec, initrd: &Path) -> Guest {
    let config = hull_vm_config(spec, initrd);
    let log = dir.join("hull.log");
    let api_sock = dir.join("api.sock");
    let config_file = dir.join("vm-config.json");
    let mut hull_args: Vec<String> = Vec::new();
    match vmm {
        Vmm::HullConfigFile => {
            std::fs::write(&config_file, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
            hull_args.extend(["--no-api".into(), "--config-file".into(), path_str(&config_file).into()]);
        }
        _ => hull_args.extend(["--api-sock".into(), path_str(&api_sock).into()]),
    }
    hull_args.extend(["--log-level".into(), "Info".into()]);
    // `ip netns exec` and `sh` both exec, so the PID the guard kills is hull's. stderr goes to a file so
    // that log lines never split the console lines the scenarios search.
    let mut cmd = match &spec.net {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &n.netns, "sh"]);
            c
        }
        None => Command::new("sh"),
    };
    cmd.args(["-c", "exec \"$0\" \"$@\" 2>>\"$HULL_TEST_LOG\""])
        .arg(hull())
        .args(&hull_args);
    cmd.env("HULL_TEST_LOG", &log);
    let mut guest = Guest {
        vmm,
        console: Proc::spawn("hull", cmd),
        backends: Vec::new(),
        hull_log: Some(log),
    };
    if vmm == Vmm::HullApi {
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&api_sock).is_err() {
            if Instant::now() > deadline || guest.console.wait_exit(Duration::ZERO).is_some() {
                panic!("hull's API socket never came up\n{}", guest.report());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let api = crate::ApiClient::new(&api_sock);
        let put = |uri: &str, body: &Value| {
            let resp = api.put(uri, body).unwrap_or_else(|e| panic!("PUT {uri}: {e}"));
            assert!(
                resp.is_success(),
                "PUT {uri} {body} answered {} {}",
                resp.status,
                resp.body
            );
        };
        put("/machine-config", &config["machine-config"]);
        put("/boot-source", &config["boot-source"]);
        for d in config["drives"].as_array().unwrap() {
            put(&format!("/drives/{}", d["drive_id"].as_str().unwrap()), d);
        }
        for n in config["network-interfaces"].as_array().unwrap() {
            put(&format!("/network-interfaces/{}", n["iface_id"].as_str().unwrap()), n);
        }
        if !config["vsock"].is_null() {
            put("/vsock", &config["vsock"]);
        }
        put("/actions", &json!({ "action_type": "InstanceStart" }));
    }
    guest
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn wait_for_socket(p: &mut Proc, sock: &Path) {
    let start = Instant::now();
    while !sock.exists() {
        if start.elapsed() > Duration::from_secs(20) || p.wait_exit(Duration::ZERO).is_some() {
            panic!("{} did not create {}: {}", p.name, sock.display(), p.output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A guest script from `tests/guest-init/` with its drive serials renamed, written into `dir`; returns
/// its absolute path (which [`GuestSpec::script`] accepts). hull, like Firecracker, takes drive ids of
/// letters, digits and underscores only, while the vhost-user scripts name their drives with dashes
/// (`pattern-drive`); renaming is a no-op once the scripts use underscores.
pub fn guest_script(dir: &Path, name: &str, renames: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(repo_root().join("tests/guest-init").join(name))
        .unwrap_or_else(|e| panic!("reading tests/guest-init/{name}: {e}"));
    for (from, to) in renames {
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------------------
// Network namespace

/// A network namespace deleted on drop (which also removes the TAP inside it). The name carries the PID and
/// a label, so parallel tests and test binaries never share one.
pub struct Netns(pub String);

impl Netns {
    pub fn new(label: &str) -> Self {
        let name = format!("hulldev-{}-{label}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; panics when it fails.
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.0];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// Adds a TAP with `addr` (CIDR) and brings it up.
    pub fn add_tap(&self, tap: &str, addr: &str) {
        self.exec(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
        self.exec(&["ip", "addr", "add", addr, "dev", tap]);
        self.exec(&["ip", "link", "set", tap, "up"]);
    }

    /// Runs `f` on a thread that has joined the namespace (sockets it opens live there).
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on this thread only, with an fd we own for the duration of the call.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------------------
// The host side of vsock-tool's protocol

/// Byte `i` of pattern `seed`; `tests/guest-init/vsock-tool.c` computes the same.
pub fn pattern_byte(i: u64, seed: u32) -> u8 {
    let mut h = (i as u32).wrapping_mul(2_654_435_761);
    h ^= h >> 15;
    h ^= (i >> 32) as u32;
    (h ^ seed) as u8
}

/// Compiles `tests/guest-init/vsock-tool.c` statically into `dir`.
pub fn build_vsock_tool(dir: &Path) -> PathBuf {
    let out = dir.join("vsock-tool");
    let st = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(repo_root().join("tests/guest-init/vsock-tool.c"))
        .status()
        .unwrap();
    assert!(st.success(), "gcc -static vsock-tool.c failed");
    out
}

/// Connects to the guest's `port` through the hybrid socket; returns the stream after `OK <port>`.
pub fn connect_guest(uds: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).unwrap_or_else(|e| panic!("connecting to {}: {e}", uds.display()));
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    assert!(line.starts_with("OK "), "handshake answer {line:?}");
    s
}

/// One `XFER`: `n` bytes each way at once on one connection to the guest's serve port, every byte from the
/// guest checked here (the guest checks ours). Returns the guest's `RESULT` line.
pub fn xfer(uds: &Path, n: u64, seed: u32) -> String {
    let mut s = connect_guest(uds, GUEST_VSOCK_PORT);
    s.write_all(format!("XFER {n} {seed}\n").as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < n {
            let len = (n - sent).min(buf.len() as u64) as usize;
            for (i, b) in buf[..len].iter_mut().enumerate() {
                *b = pattern_byte(sent + i as u64, seed.wrapping_add(1));
            }
            w.write_all(&buf[..len]).unwrap();
            sent += len as u64;
        }
    });
    let mut r = BufReader::with_capacity(256 * 1024, s);
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while got < n {
        let want = (n - got).min(buf.len() as u64) as usize;
        let k = r.read(&mut buf[..want]).unwrap();
        assert!(k > 0, "guest closed after {got} of {n} bytes");
        for (i, b) in buf[..k].iter().enumerate() {
            let pos = got + i as u64;
            assert_eq!(*b, pattern_byte(pos, seed), "byte {pos} from the guest is wrong");
        }
        got += k as u64;
    }
    writer.join().unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    line.trim().to_string()
}
