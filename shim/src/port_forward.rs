//! CRI PortForward into a pod's VM. containerd serves `kubectl port-forward` by entering the pod's network
//! namespace and dialing `localhost:<port>` there, which reaches the container under runc. In a hull pod the
//! containers are in the guest and nothing listens in that namespace, so the shim:
//!
//! 1. opens one listening socket on 127.0.0.1 inside the pod's network namespace;
//! 2. attaches a BPF `sk_lookup` program to that namespace that hands every TCP connection to a 127.0.0.1
//!    address there to the listener, whatever its port (no iptables rules, no conntrack);
//! 3. for each connection accepted, reads the port that was asked for from the socket's local address and
//!    carries the stream to the guest agent over vsock ([`hull_agent_protocol::forward`]), which connects to
//!    that port on the guest's loopback, where the pod's containers listen.
//!
//! Everything lives as long as the [`PortForwarder`]: dropping it detaches the program and stops the listener.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const FN_MAP_LOOKUP_ELEM: i32 = 1;
const FN_SK_RELEASE: i32 = 86;
const FN_SK_ASSIGN: i32 = 124;
const SK_PASS: i32 = 1;

/// At most this many forwarded connections at once (the agent has the same bound).
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ForwardSetupError {
    #[error("network namespace {0}: {1}")]
    Netns(String, io::Error),
    #[error("the listener in the pod's network namespace: {0}")]
    Listener(io::Error),
    #[error("the sk_lookup program ({step}): {source}")]
    Bpf { step: &'static str, source: io::Error },
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

/// `struct bpf_sk_lookup` offsets: family, protocol, local IPv4 address (network order).
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;

/// The program: a TCP lookup for an IPv4 127.0.0.1 address gets socket 0 of the map (the listener), anything
/// else goes on as usual.
fn program(map_fd: i32) -> Vec<Insn> {
    let loopback = i32::from_ne_bytes([127, 0, 0, 1]);
    vec![
        insn(0xbf, 6, 1, 0, 0),                      // r6 = ctx
        insn(0x61, 2, 6, CTX_FAMILY, 0),             // r2 = ctx->family
        insn(0x55, 2, 0, 18, libc::AF_INET),         // if r2 != AF_INET goto pass
        insn(0x61, 2, 6, CTX_PROTOCOL, 0),           // r2 = ctx->protocol
        insn(0x55, 2, 0, 16, libc::IPPROTO_TCP),     // if r2 != TCP goto pass
        insn(0x61, 2, 6, CTX_LOCAL_IP4, 0),          // r2 = ctx->local_ip4
        insn(0x55, 2, 0, 14, loopback),              // if r2 != 127.0.0.1 goto pass
        insn(0x62, 10, 0, -4, 0),                    // *(u32 *)(fp - 4) = 0 (the key)
        insn(0xbf, 2, 10, 0, 0),                     // r2 = fp
        insn(0x07, 2, 0, 0, -4),                     // r2 += -4
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd), // r1 = the map (two-slot load)
        insn(0x00, 0, 0, 0, 0),
        insn(0x85, 0, 0, 0, FN_MAP_LOOKUP_ELEM), // r0 = the listener, referenced, or NULL
        insn(0x15, 0, 0, 7, 0),                  // if r0 == NULL goto pass
        insn(0xbf, 7, 0, 0, 0),                  // r7 = r0
        insn(0xbf, 1, 6, 0, 0),                  // r1 = ctx
        insn(0xbf, 2, 7, 0, 0),                  // r2 = the listener
        insn(0xb7, 3, 0, 0, 0),                  // r3 = 0 (flags)
        insn(0x85, 0, 0, 0, FN_SK_ASSIGN),       // bpf_sk_assign(ctx, sk, 0)
        insn(0xbf, 1, 7, 0, 0),                  // r1 = the listener
        insn(0x85, 0, 0, 0, FN_SK_RELEASE),      // bpf_sk_release(sk)
        insn(0xb7, 0, 0, 0, SK_PASS),            // pass: r0 = SK_PASS
        insn(0x95, 0, 0, 0, 0),                  // exit
    ]
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128], step: &'static str) -> Result<OwnedFd, ForwardSetupError> {
    // SAFETY: bpf(2) reads at most `size` bytes of the attribute buffer.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as libc::c_uint) };
    if r < 0 {
        return Err(ForwardSetupError::Bpf {
            step,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: these commands return a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// The map holding the listener, the program, and the link attaching it to the namespace.
fn attach_program(netns: &OwnedFd, listener: &TcpListener) -> Result<[OwnedFd; 3], ForwardSetupError> {
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_MAP_TYPE_SOCKMAP.to_ne_bytes());
    attr[4..8].copy_from_slice(&4u32.to_ne_bytes()); // key size
    attr[8..12].copy_from_slice(&8u32.to_ne_bytes()); // value size (a socket descriptor as u64)
    attr[12..16].copy_from_slice(&1u32.to_ne_bytes()); // entries
    let map = bpf(BPF_MAP_CREATE, &mut attr, "creating the socket map")?;
    let key = 0u32;
    let value = listener.as_raw_fd() as u64;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(&value as *const u64 as u64).to_ne_bytes());
    // SAFETY (of the pointers above): `key` and `value` outlive the call.
    // The returned value of MAP_UPDATE_ELEM is 0, not a descriptor: checked by hand.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_ELEM,
            attr.as_mut_ptr(),
            attr.len() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(ForwardSetupError::Bpf {
            step: "putting the listener in the map",
            source: io::Error::last_os_error(),
        });
    }
    let insns = program(map.as_raw_fd());
    let license = c"Apache-2.0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_SK_LOOKUP.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..60].copy_from_slice(b"hull_forward");
    attr[68..72].copy_from_slice(&BPF_SK_LOOKUP.to_ne_bytes()); // expected_attach_type
    let prog = bpf(BPF_PROG_LOAD, &mut attr, "loading")?;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(netns.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&BPF_SK_LOOKUP.to_ne_bytes());
    let link = bpf(
        BPF_LINK_CREATE,
        &mut attr,
        "attaching it to the pod's network namespace",
    )?;
    Ok([map, prog, link])
}

/// A listening socket on 127.0.0.1 (any port) made inside the network namespace `netns`, from a thread that
/// enters it and ends (setns changes only the calling thread; the socket keeps its namespace).
fn listen_in(netns: &OwnedFd) -> Result<TcpListener, ForwardSetupError> {
    let fd = netns.as_raw_fd();
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a namespace descriptor held open by the caller.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the listening thread panicked")))
    })
    .map_err(ForwardSetupError::Listener)
}

/// The pod's port forwarding, from [`PortForwarder::start`] until it is dropped.
pub struct PortForwarder {
    listener: Arc<TcpListener>,
    _bpf: [OwnedFd; 3],
}

impl PortForwarder {
    /// Steers `localhost:*` in the network namespace at `netns` to the guest whose hybrid vsock socket is
    /// `vsock_uds`.
    pub fn start(netns: &Path, vsock_uds: PathBuf) -> Result<PortForwarder, ForwardSetupError> {
        let ns = std::fs::File::open(netns).map_err(|e| ForwardSetupError::Netns(netns.display().to_string(), e))?;
        let ns = OwnedFd::from(ns);
        let listener = Arc::new(listen_in(&ns)?);
        let bpf = attach_program(&ns, &listener)?;
        let accepting = listener.clone();
        std::thread::Builder::new()
            .name("port-forward".into())
            .spawn(move || accept_loop(&accepting, &vsock_uds))
            .map_err(ForwardSetupError::Listener)?;
        Ok(PortForwarder { listener, _bpf: bpf })
    }
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        // Wakes the accept loop, which then ends; the program goes with the link.
        // SAFETY: shutdown on a socket we own.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

fn accept_loop(listener: &TcpListener, vsock_uds: &Path) {
    let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    use std::sync::atomic::Ordering;
    loop {
        let tcp = match listener.accept() {
            Ok((tcp, _)) => tcp,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The listener was shut down (the pod is going), or cannot accept any more.
            Err(_) => return,
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!("port-forward: more than {MAX_CONNECTIONS} connections at once; one refused");
            continue;
        }
        let uds = vsock_uds.to_path_buf();
        let count = active.clone();
        let spawned = std::thread::Builder::new()
            .name("port-forward-conn".into())
            .spawn(move || {
                if let Err(e) = carry(tcp, &uds) {
                    log::warn!("port-forward: {e}");
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Carries one accepted connection to the guest: the port asked for is the socket's local one.
fn carry(tcp: TcpStream, uds: &Path) -> Result<(), String> {
    let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
    let opened = hull_agent_protocol::hybrid::connect(uds, hull_agent_protocol::FORWARD_PORT)
        .map_err(|e| format!("port {port}: {e}"))
        .and_then(|mut g| {
            hull_agent_protocol::forward::open(&mut g, port)
                .map(|()| g)
                .map_err(|e| format!("port {port}: {e}"))
        });
    let guest = match opened {
        Ok(g) => g,
        Err(e) => {
            // Nothing listens there in the guest: the client gets a reset, the nearest a connection already
            // accepted can come to the "connection refused" it would get under runc.
            reset(&tcp);
            return Err(e);
        }
    };
    let (tcp_in, guest_in) = (
        tcp.try_clone().map_err(|e| e.to_string())?,
        guest.try_clone().map_err(|e| e.to_string())?,
    );
    let up = std::thread::Builder::new()
        .name("port-forward-up".into())
        .spawn(move || copy_then_close(tcp_in, guest_in, |g| g.shutdown(Shutdown::Write)))
        .map_err(|e| e.to_string())?;
    copy_then_close(guest, tcp, |t: &TcpStream| t.shutdown(Shutdown::Write));
    let _ = up.join();
    Ok(())
}

/// Closes `tcp` with a reset (SO_LINGER with a zero timeout), not an orderly end.
fn reset(tcp: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a pointer to a local of the size given.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// Copies `from` into `to` until `from` ends or either fails, then half-closes `to`.
fn copy_then_close<R: Read, W: Write>(mut from: R, mut to: W, close: impl FnOnce(&W) -> io::Result<()>) {
    // An error on either side ends the copy as the end of `from` does.
    let _ = std::io::copy(&mut from, &mut to);
    let _ = close(&to);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a fresh network namespace of its own (root only): a connection to any 127.0.0.1 port reaches the
    /// one listener, which sees the port asked for as its local address.
    #[test]
    fn every_loopback_port_reaches_the_listener() {
        // SAFETY: geteuid has no arguments.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP every_loopback_port_reaches_the_listener: needs root (a network namespace, BPF)");
            return;
        }
        let got = std::thread::spawn(|| -> Result<Vec<u16>, String> {
            // SAFETY: unshare on this thread only (a new network namespace for it).
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error().to_string());
            }
            let _ = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status();
            let ns = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string())?);
            let listener = listen_in(&ns).map_err(|e| e.to_string())?;
            let _bpf = attach_program(&ns, &listener).map_err(|e| e.to_string())?;
            let mut ports = Vec::new();
            for port in [80u16, 8080, 65000] {
                let _c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("{port}: {e}"))?;
                let (s, _) = listener.accept().map_err(|e| e.to_string())?;
                ports.push(s.local_addr().map_err(|e| e.to_string())?.port());
            }
            Ok(ports)
        })
        .join()
        .unwrap();
        assert_eq!(got, Ok(vec![80, 8080, 65000]));
    }
}
