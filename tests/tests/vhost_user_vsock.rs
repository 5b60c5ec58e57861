//! End to end: `hull vhost-user vsock` serving a QEMU (TCG) guest. Echo in both directions, the guest
//! CID, 100 concurrent connections, and 100 MiB each way at once on one connection, every byte checked
//! against a position-dependent pattern (the guest helper `tests/guest-init/vsock-tool.c` uses the same).

mod vhost_user_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vhost_user_common::*;

const GUEST_CID: u64 = 7;
const GUEST_PORT: u32 = 52;

fn pattern_byte(i: u64, seed: u32) -> u8 {
    let mut h = (i as u32).wrapping_mul(2_654_435_761);
    h ^= h >> 15;
    h ^= (i >> 32) as u32;
    (h ^ seed) as u8
}

fn build_vsock_tool(dir: &Path) -> PathBuf {
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

/// Connects to the guest's port through the hybrid socket; returns the stream after `OK <port>`.
fn connect_guest(uds: &Path, port: u32) -> UnixStream {
    let mut s = UnixStream::connect(uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    let line = String::from_utf8(line).unwrap();
    assert!(line.starts_with("OK "), "handshake answer {line:?}");
    s
}

/// Runs one XFER: `n` bytes each way at once; returns the guest's RESULT line.
fn xfer(uds: &Path, n: u64, seed: u32) -> String {
    let mut s = connect_guest(uds, GUEST_PORT);
    s.write_all(format!("XFER {n} {seed}\n").as_bytes()).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < n {
            let len = (n - sent).min(buf.len() as u64) as usize;
            for (i, b) in buf[..len].iter_mut().enumerate() {
                *b = pattern_byte(sent + i as u64, seed + 1);
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

struct Vm {
    _dir: WorkDir,
    uds: PathBuf,
    _backend: Proc,
    qemu: Proc,
}

fn boot(name: &str) -> Vm {
    ensure_tools();
    let dir = WorkDir::new(name);
    let tool = build_vsock_tool(dir.path());
    let uds = dir.join("v.sock");
    // Host listener for the guest's echo client (guest → host port 5000).
    let echo = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = echo.accept() {
            let mut data = Vec::new();
            let _ = c.read_to_end(&mut data);
            let _ = c.write_all(&data);
        }
    });
    let sock = dir.join("vsock.sock");
    let backend = start_backend(
        "vsock-backend",
        &sock,
        &[
            "vsock",
            "--socket",
            sock.to_str().unwrap(),
            "--guest-cid",
            &GUEST_CID.to_string(),
            "--uds-path",
            uds.to_str().unwrap(),
        ],
    );
    let initrd = initramfs(dir.path(), "vsock.sh", &[("/bin/vsock-tool", &tool)]);
    let mut args = chardev("c0", &sock);
    args.extend(["-device".into(), "vhost-user-vsock-device,chardev=c0".into()]);
    let mut qemu = start_qemu(&initrd, "", &args);
    qemu.wait_for("VSOCK-READY", GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", qemu.output()));
    Vm {
        _dir: dir,
        uds,
        _backend: backend,
        qemu,
    }
}

#[test]
fn vsock_echo_both_directions_and_guest_cid() {
    let vm = boot("vsock-echo");
    let log = vm.qemu.output();
    let line = |key: &str| {
        log.lines()
            .find(|l| l.starts_with(key))
            .map(|l| field(l, key))
            .unwrap_or_default()
    };
    assert_eq!(line("GUEST-CID"), GUEST_CID.to_string(), "{log}");
    assert_eq!(line("ECHO-G2H"), "hello-from-guest", "{log}");

    let mut s = connect_guest(&vm.uds, GUEST_PORT);
    s.write_all(b"ECHO\nhello-from-host").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    assert_eq!(back, "hello-from-host");

    // A CONNECT to a port nobody listens on is closed without an OK.
    let mut s = UnixStream::connect(&vm.uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"CONNECT 999\n").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "got {:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn vsock_100_concurrent_connections() {
    let vm = boot("vsock-many");
    let start = Instant::now();
    let threads: Vec<_> = (0..100u32)
        .map(|i| {
            let uds = vm.uds.clone();
            std::thread::spawn(move || xfer(&uds, 256 * 1024, i * 7))
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), "RESULT OK", "connection {i}");
    }
    eprintln!("100 connections x 256 KiB each way: {:?}", start.elapsed());
}

#[test]
fn vsock_100_mib_each_way_at_once() {
    let vm = boot("vsock-bulk");
    let start = Instant::now();
    let n = 100 * 1024 * 1024;
    assert_eq!(xfer(&vm.uds, n, 12345), "RESULT OK");
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "100 MiB each way in {secs:.1} s ({:.1} MiB/s per direction)",
        100.0 / secs
    );
}
