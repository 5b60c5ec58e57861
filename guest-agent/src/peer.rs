//! Who is on the other end of an accepted connection. The agent serves the host alone: a vsock peer whose
//! CID is VMADDR_CID_HOST (2). The guest kernel has no vsock loopback, so nothing inside the guest should be
//! able to connect at all; this check is the second wall, for a kernel built otherwise or a transport that
//! reaches the guest from elsewhere. It trusts only the kernel's `getpeername`, never what a peer says.

use std::io;
use std::os::fd::RawFd;

use hull_agent_protocol::HOST_CID;

/// The peer of a connected socket, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A vsock peer and its context id.
    Vsock { cid: u32 },
    /// Any other address family (a unix socket, ...).
    Other { family: libc::sa_family_t },
}

impl Peer {
    /// The one peer the agent serves.
    pub fn is_host(&self) -> bool {
        *self == Peer::Vsock { cid: HOST_CID }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Vsock { cid } => write!(f, "vsock CID {cid}"),
            Peer::Other { family } => write!(f, "a socket of address family {family}"),
        }
    }
}

/// `getpeername` on a connected socket.
pub fn peer_of(fd: RawFd) -> io::Result<Peer> {
    // SAFETY: getpeername writes at most `len` bytes into our zeroed sockaddr_storage and updates `len`.
    let (addr, len) = unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        crate::sys::cvt(libc::getpeername(
            fd,
            &mut addr as *mut _ as *mut libc::sockaddr,
            &mut len,
        ))?;
        (addr, len as usize)
    };
    if addr.ss_family == libc::AF_VSOCK as libc::sa_family_t && len >= std::mem::size_of::<libc::sockaddr_vm>() {
        // SAFETY: the kernel said this is a sockaddr_vm, and it fits in sockaddr_storage.
        let vm = unsafe { &*(&addr as *const libc::sockaddr_storage as *const libc::sockaddr_vm) };
        Ok(Peer::Vsock { cid: vm.svm_cid })
    } else {
        Ok(Peer::Other { family: addr.ss_family })
    }
}

/// Whether the connection on `fd` may be served; on no, logs why (naming `what` was asked) and shuts the
/// connection down for reading, so its owner's reader ends and closes it.
pub fn admit(fd: RawFd, what: &str) -> bool {
    let refused = match peer_of(fd) {
        Ok(p) if p.is_host() => return true,
        Ok(p) => format!("from {p}"),
        Err(e) => format!("from a peer getpeername cannot name ({e})"),
    };
    crate::console::log(&format!(
        "refused {what} {refused}: only the host (vsock CID {HOST_CID}) is served"
    ));
    // SAFETY: shutdown on a descriptor the caller holds open for the duration of the call.
    unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn only_the_host_cid_is_the_host() {
        assert!(Peer::Vsock { cid: 2 }.is_host());
        for cid in [0, 1, 3, 4, libc::VMADDR_CID_ANY] {
            assert!(!Peer::Vsock { cid }.is_host(), "cid {cid}");
        }
        assert!(!Peer::Other {
            family: libc::AF_UNIX as libc::sa_family_t
        }
        .is_host());
    }

    #[test]
    fn a_unix_socket_peer_is_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(
            peer_of(a.as_raw_fd()).unwrap(),
            Peer::Other {
                family: libc::AF_UNIX as libc::sa_family_t
            }
        );
        assert!(!admit(a.as_raw_fd(), "Version"));
        // The connection was shut for reading: a read ends at once.
        use std::io::Read;
        let mut buf = [0u8; 1];
        assert_eq!((&a).read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn not_a_socket_is_an_error_and_refused() {
        let f = std::fs::File::open("/dev/null").unwrap();
        assert!(peer_of(f.as_raw_fd()).is_err());
        assert!(!admit(f.as_raw_fd(), "Version"));
    }

    /// Over vsock loopback, where the test host has it: a peer on the local CID is not the host.
    #[test]
    fn a_vsock_loopback_peer_is_refused_where_the_host_can_try() {
        // SAFETY: plain socket calls on descriptors owned right away.
        unsafe {
            let l = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if l < 0 {
                eprintln!("SKIPPED: no AF_VSOCK on this host");
                return;
            }
            let l = std::os::fd::OwnedFd::from_raw_fd_checked(l);
            let mut addr: libc::sockaddr_vm = std::mem::zeroed();
            addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            addr.svm_cid = libc::VMADDR_CID_ANY;
            addr.svm_port = libc::VMADDR_PORT_ANY;
            let sz = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
            if libc::bind(l.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, sz) != 0
                || libc::listen(l.as_raw_fd(), 1) != 0
            {
                eprintln!("SKIPPED: cannot listen on vsock here");
                return;
            }
            let mut len = sz;
            libc::getsockname(l.as_raw_fd(), &mut addr as *mut _ as *mut libc::sockaddr, &mut len);
            let c = std::os::fd::OwnedFd::from_raw_fd_checked(libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0));
            addr.svm_cid = libc::VMADDR_CID_LOCAL;
            if libc::connect(c.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, sz) != 0 {
                eprintln!(
                    "SKIPPED: no vsock loopback on this host ({})",
                    io::Error::last_os_error()
                );
                return;
            }
            let a = libc::accept4(
                l.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            );
            let a = std::os::fd::OwnedFd::from_raw_fd_checked(a);
            assert_eq!(
                peer_of(a.as_raw_fd()).unwrap(),
                Peer::Vsock {
                    cid: libc::VMADDR_CID_LOCAL
                }
            );
            assert!(!admit(a.as_raw_fd(), "Version"));
        }
    }

    trait FromRawChecked {
        unsafe fn from_raw_fd_checked(fd: RawFd) -> Self;
    }
    impl FromRawChecked for std::os::fd::OwnedFd {
        unsafe fn from_raw_fd_checked(fd: RawFd) -> Self {
            assert!(fd >= 0, "{}", io::Error::last_os_error());
            std::os::fd::FromRawFd::from_raw_fd(fd)
        }
    }
}
