//! End to end: `hull vhost-user net` serving a QEMU (TCG) guest over a TAP that lives in a network
//! namespace this test creates (every address configured here is inside that namespace). Ping, then a
//! TCP stream each way, checked byte for byte.

mod vhost_user_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use vhost_user_common::*;

const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const TAP: &str = "vutap0";
const GUEST_MAC: &str = "52:54:00:77:00:02";
const G2H_BYTES: usize = 16 * 1024 * 1024;
const H2G_BYTES: usize = 8 * 1024 * 1024;

/// A network namespace deleted on drop (which also removes the TAP inside it).
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("hullvu-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.0];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// Runs `f` on a thread that has joined the namespace (sockets it opens live there).
    fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
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

fn accept_with_deadline(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let start = std::time::Instant::now();
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                return s;
            }
            Err(_) if start.elapsed() < GUEST_TIMEOUT => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("no connection from the guest: {e}"),
        }
    }
}

#[test]
fn net_ping_and_tcp_both_ways_over_tap_in_netns() {
    ensure_tools();
    let dir = WorkDir::new("net");
    let ns = Netns::new();
    ns.exec(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap"]);
    ns.exec(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ns.exec(&["ip", "link", "set", TAP, "up"]);

    let sock = dir.join("net.sock");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0]).arg(hull()).args([
        "vhost-user",
        "net",
        "--socket",
        sock.to_str().unwrap(),
        "--tap",
        TAP,
    ]);
    cmd.env("RUST_LOG", "info");
    let _backend = Proc::spawn("net-backend", cmd);
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the net backend did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Host ends of the two TCP streams, inside the namespace.
    let (ready_tx, ready_rx) = mpsc::channel();
    let h2g_data = pattern(H2G_BYTES, 99);
    let h2g_sha = sha256_bytes(&h2g_data);
    let server = ns.spawn(move || {
        let g2h = TcpListener::bind((HOST_IP, 5001)).unwrap();
        let h2g = TcpListener::bind((HOST_IP, 5002)).unwrap();
        ready_tx.send(()).unwrap();
        let mut s = accept_with_deadline(&g2h);
        let mut got = vec![0u8; G2H_BYTES];
        s.read_exact(&mut got).unwrap();
        drop(s);
        let mut s = accept_with_deadline(&h2g);
        s.write_all(&h2g_data).unwrap();
        got.iter().all(|b| *b == 0)
    });
    ready_rx.recv().unwrap();

    let initrd = initramfs(dir.path(), "net.sh", &[]);
    let mut args = chardev("c0", &sock);
    args.extend([
        "-netdev".into(),
        "vhost-user,id=n0,chardev=c0".into(),
        "-device".into(),
        format!("virtio-net-device,netdev=n0,mac={GUEST_MAC}"),
    ]);
    let mut qemu = start_qemu(&initrd, &format!("hull.ip={GUEST_IP} hull.host={HOST_IP}"), &args);
    let result = qemu.wait_for("HULL-TEST-EXIT", GUEST_TIMEOUT);
    let log = qemu.output();
    result.unwrap_or_else(|e| panic!("{e}\n--- serial ---\n{log}"));
    eprintln!("net guest finished in {:?}", start.elapsed());

    let line = |key: &str| {
        log.lines()
            .find(|l| l.starts_with(key))
            .map(|l| field(l, key))
            .unwrap_or_default()
    };
    assert_eq!(line("GUEST-MAC"), GUEST_MAC, "{log}");
    assert_eq!(line("PING"), "ok", "{log}");
    assert!(log.contains("SENT-G2H"), "{log}");
    assert_eq!(line("RECV-H2G"), h2g_sha, "{log}");
    assert!(server.join().unwrap(), "the guest's stream was corrupted");
}
