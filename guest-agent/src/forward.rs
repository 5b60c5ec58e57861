//! CRI PortForward in the guest: each connection the host makes to vsock port
//! [`hull_agent_protocol::FORWARD_PORT`] names a TCP port ([`hull_agent_protocol::forward`]); the agent
//! connects to it on the guest's loopback, where the pod's containers listen (they share the VM's network
//! namespace), and copies bytes both ways until both directions are closed.
//!
//! Only the host is served (the vsock peer must be CID 2) and only if the agent policy serves
//! `PortForward`. At most [`MAX_FORWARDS`] connections at once, so a host cannot make the agent spawn
//! threads without bound.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hull_agent_protocol::policy::{Call, Policy};

use crate::console::log;

pub const MAX_FORWARDS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Listens on the forward port and serves each connection on a thread of its own.
pub fn start(policy: Policy) {
    let listener = match crate::stdio::listen(hull_agent_protocol::FORWARD_PORT) {
        Ok(l) => l,
        Err(e) => {
            log(&format!(
                "cannot listen on vsock port {}: {e}",
                hull_agent_protocol::FORWARD_PORT
            ));
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("forward-accept".into())
        .spawn(move || accept_loop(listener, policy));
    if let Err(e) = spawned {
        log(&format!("cannot start the port-forward listener: {e}"));
    }
}

fn accept_loop(listener: OwnedFd, policy: Policy) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut conn = match crate::stdio::accept(&listener) {
            Ok(c) => c,
            Err(e) => {
                log(&format!("port-forward accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if !crate::peer::admit(conn.as_raw_fd(), Call::PortForward.name()) {
            continue;
        }
        if !policy.allows(Call::PortForward) {
            log("refused PortForward: the agent policy does not serve it");
            let _ = conn.write_all(b"ERR PortForward is refused by the agent policy\n");
            continue;
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_FORWARDS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = conn.write_all(format!("ERR at most {MAX_FORWARDS} forwarded connections at once\n").as_bytes());
            continue;
        }
        let count = active.clone();
        let spawned = std::thread::Builder::new().name("forward".into()).spawn(move || {
            serve(conn);
            count.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The guest's loopback addresses for `port`: IPv4 first, as containerd dials for runc.
fn loopback(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ]
}

fn serve(mut conn: File) {
    let port = match hull_agent_protocol::forward::read_request(&mut conn) {
        Ok(p) => p,
        Err(e) => {
            let _ = conn.write_all(format!("ERR {e}\n").as_bytes());
            return;
        }
    };
    let mut last = None;
    let tcp = loopback(port)
        .iter()
        .find_map(|a| match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => Some(s),
            Err(e) => {
                last = Some(e);
                None
            }
        });
    let Some(tcp) = tcp else {
        let why = last.map(|e| e.to_string()).unwrap_or_default();
        let _ = conn.write_all(format!("ERR connecting to port {port} on the guest's loopback: {why}\n").as_bytes());
        return;
    };
    if conn.write_all(b"OK\n").is_err() {
        return;
    }
    let (Ok(tcp_in), Ok(conn_in)) = (tcp.try_clone(), conn.try_clone()) else {
        return;
    };
    // Host to guest on a thread of its own, guest to host here; each direction's end is passed on as a
    // half-close, and the connection ends when both have ended.
    let upstream = std::thread::Builder::new().name("forward-up".into()).spawn(move || {
        copy_then_close(conn_in, tcp_in, |t: &TcpStream| {
            let _ = t.shutdown(Shutdown::Write);
        })
    });
    copy_then_close(tcp, conn, |c: &File| {
        // SAFETY: shutdown on a socket we hold open.
        unsafe { libc::shutdown(c.as_raw_fd(), libc::SHUT_WR) };
    });
    if let Ok(t) = upstream {
        let _ = t.join();
    }
}

/// Copies `from` into `to` until `from` ends or either fails, then half-closes `to` with `close`.
fn copy_then_close<R: Read, W: Write>(mut from: R, mut to: W, close: impl FnOnce(&W)) {
    // An error on either side ends the copy as the end of `from` does.
    let _ = std::io::copy(&mut from, &mut to);
    close(&to);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_go_both_ways_and_an_end_is_passed_on() {
        use std::os::unix::net::UnixStream;
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, mut d) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            copy_then_close(b, c, |c: &UnixStream| {
                let _ = c.shutdown(Shutdown::Write);
            })
        });
        a.write_all(b"hello").unwrap();
        a.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        d.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        t.join().unwrap();
    }
}
