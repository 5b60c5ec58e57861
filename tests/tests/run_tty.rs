//! End to end: `hull run -t` from a real terminal (a pty the test owns): the host terminal goes raw, the
//! container gets its own /dev/pts/N with the host's window size, keystrokes reach the shell, Ctrl-C
//! interrupts the container's foreground job (not hull), and the shell's exit status is hull's.

mod run_common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use run_common::*;

fn openpty(rows: u16, cols: u16) -> (File, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors; the name and termios pointers may be null.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// The `hull run` process, killed (by PID) and reaped if the test fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn interactive_shell_on_a_real_terminal() {
    let (mut master, slave) = openpty(31, 97);
    let mut cmd = command(&["-t"], &["sh"]);
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY in the child before exec, touching no parent memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let screen = Arc::new(Mutex::new(String::new()));
    let mut reader = master.try_clone().unwrap();
    let s2 = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            s2.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_for = |needle: &str, timeout: Duration| {
        let start = Instant::now();
        while !screen.lock().unwrap().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "no {needle:?} on the terminal:\n{}",
                screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("/ # ", RUN_TIMEOUT);
    master.write_all(b"stty size; tty; echo sum-$((40+2))\r").unwrap();
    wait_for("sum-42", Duration::from_secs(30));
    let text = screen.lock().unwrap().clone();
    assert!(text.contains("31 97"), "window size not passed on:\n{text}");
    assert!(text.contains("/dev/pts/0"), "{text}");
    master.write_all(b"sleep 300\r").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    master.write_all(b"\x03").unwrap();
    master.write_all(b"echo back-$((1+1)); exit 6\r").unwrap();
    wait_for("back-2", Duration::from_secs(30));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "hull run did not end:\n{}",
            screen.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(6), "{}", screen.lock().unwrap());
}
