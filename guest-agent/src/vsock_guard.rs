//! The vsock guard: an eBPF program of type `BPF_PROG_TYPE_CGROUP_SOCK` at `BPF_CGROUP_INET_SOCK_CREATE`
//! on every container's cgroup that refuses `AF_VSOCK` sockets and lets every other family through. It is
//! what keeps a container off vsock (`docs/SECURITY.md`, wall 3), for root and everyone else, however the
//! socket is made: through `socket(2)` or through io_uring's `IORING_OP_SOCKET`.
//!
//! Linux runs the cgroup's sock_create programs for IP sockets only; hull's guest kernel carries a patch
//! (`resources/patches/0003-vsock-cgroup-sock-create-hook.patch`) that runs them in `vsock_create` too and
//! reports a refusal as `EAFNOSUPPORT`, as a kernel without vsock would. Unlike a seccomp filter, nothing
//! of it shows in the container's `/proc/self/status`, so an unconfined container looks as under runc.
//!
//! Two cases keep the older guard, the agent's seccomp filter ([`crate::seccomp::deny_vsock`]):
//! - a guest kernel without the patch (a `--kernel` of the user's): [`enforced`] finds out once, by trying
//!   it in a cgroup of its own, and the agent then falls back to seccomp for every container;
//! - a process that could take the program off its cgroup: one holding `CAP_SYS_ADMIN`, `CAP_NET_ADMIN` or
//!   `CAP_BPF` in the guest's initial user namespace ([`could_detach`]), i.e. a privileged container.

use std::ffi::CString;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

use crate::bpf::*;
use crate::reaper::Reaper;

/// `BPF_PROG_TYPE_CGROUP_SOCK` at `BPF_CGROUP_INET_SOCK_CREATE`.
const KIND: Kind = Kind {
    prog_type: 9,
    attach_type: 2,
    name: "no_vsock",
};

/// `struct bpf_sock`'s `family`.
const FAMILY_OFFSET: i16 = 4;

/// The cgroup the probe runs in, outside the containers' tree.
const PROBE_CGROUP: &str = "/sys/fs/cgroup/hull-vsock-probe";

/// r0 = 1 (allow); if the socket's family is AF_VSOCK, r0 = 0 (refuse).
pub fn program() -> Vec<Insn> {
    vec![
        insn(LDX_MEM_W, 2, 1, FAMILY_OFFSET, 0),
        insn(ALU64_MOV_K, 0, 0, 0, 1),
        insn(JMP_JNE_K, 2, 0, 1, libc::AF_VSOCK),
        insn(ALU64_MOV_K, 0, 0, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]
}

/// Attaches the guard to the cgroup directory open as `cgroup_fd`.
pub fn attach(cgroup_fd: i32) -> io::Result<()> {
    attach_to_cgroup(KIND, &program(), cgroup_fd)
}

/// Whether the guest kernel honours the guard, found out once per boot.
pub fn enforced(reaper: &Reaper) -> bool {
    static ENFORCED: OnceLock<bool> = OnceLock::new();
    *ENFORCED.get_or_init(|| match probe(reaper) {
        Ok(true) => true,
        Ok(false) => {
            crate::console::log(
                "vsock guard: this guest kernel lets AF_VSOCK past the cgroup's sock_create programs (hull's \
                 patch is missing); containers get the seccomp vsock filter instead",
            );
            false
        }
        Err(e) => {
            crate::console::log(&format!(
                "vsock guard: cannot try it ({e}); containers get the seccomp vsock filter instead"
            ));
            false
        }
    })
}

/// A child in a fresh cgroup carrying the guard tries `socket(AF_VSOCK)`; `true` when it was refused with
/// EAFNOSUPPORT.
fn probe(reaper: &Reaper) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let dir = Path::new(PROBE_CGROUP);
    let _ = std::fs::remove_dir(dir);
    std::fs::create_dir(dir)?;
    let result = (|| {
        let cg = std::fs::File::open(dir)?;
        attach(cg.as_raw_fd())?;
        let procs = CString::new(format!("{PROBE_CGROUP}/cgroup.procs")).map_err(io::Error::other)?;
        // SAFETY: the child only makes async-signal-safe system calls on memory prepared before the fork,
        // then _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: as above; "0" moves the writing process.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    libc::_exit(2);
                }
                let s = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                let refused = s < 0 && *libc::__errno_location() == libc::EAFNOSUPPORT;
                libc::_exit(if refused { 0 } else { 1 });
            }
        }
        reaper.watch(pid);
        match reaper.wait(pid) {
            st if st.code == 0 => Ok(true),
            st if st.code == 1 => Ok(false),
            st => Err(io::Error::other(format!("the probe process ended with {st:?}"))),
        }
    })();
    let _ = std::fs::remove_dir(dir);
    result
}

/// Capabilities whose holder, in the guest's initial user namespace, could detach a cgroup program.
const DETACHING_CAPS: &[&str] = &["CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_BPF"];

/// Whether a process with these bounding capabilities, in a new user namespace or not, could take the
/// guard off its cgroup. Capabilities held in a user namespace of its own count for nothing there.
pub fn could_detach<'a>(bounding: impl IntoIterator<Item = &'a str>, own_user_ns: bool) -> bool {
    !own_user_ns && bounding.into_iter().any(|c| DETACHING_CAPS.contains(&c))
}

/// [`could_detach`] for an OCI process: without a `capabilities` object it keeps every capability.
pub fn process_could_detach(process: &oci_spec::runtime::Process, own_user_ns: bool) -> bool {
    let Some(caps) = process.capabilities() else {
        return !own_user_ns;
    };
    let names: Vec<String> = caps
        .bounding()
        .iter()
        .flatten()
        .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(str::to_string))
        .collect();
    could_detach(names.iter().map(String::as_str), own_user_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program on a socket family, the way the kernel would for these five instructions.
    fn run(family: i32) -> u64 {
        let p = program();
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(i.off, FAMILY_OFFSET);
                    r[i.dst()] = family as u64;
                }
                ALU64_MOV_K => r[i.dst()] = i.imm as u64,
                JMP_JNE_K if r[i.dst()] != i.imm as u64 => pc += i.off as usize,
                JMP_JNE_K => {}
                EXIT => return r[0],
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn only_vsock_is_refused() {
        assert_eq!(run(libc::AF_VSOCK), 0);
        for family in [
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_UNIX,
            libc::AF_NETLINK,
            libc::AF_PACKET,
        ] {
            assert_eq!(run(family), 1, "family {family}");
        }
    }

    #[test]
    fn only_admin_capabilities_in_the_initial_user_namespace_could_detach_it() {
        assert!(could_detach(["CAP_CHOWN", "CAP_SYS_ADMIN"], false));
        assert!(could_detach(["CAP_NET_ADMIN"], false));
        assert!(could_detach(["CAP_BPF"], false));
        assert!(!could_detach(["CAP_SYS_ADMIN"], true));
        assert!(!could_detach(["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_CHROOT"], false));
        assert!(!could_detach([], false));
    }

    #[test]
    fn an_oci_process_without_capabilities_keeps_them_all() {
        let p: oci_spec::runtime::Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0}
        }))
        .unwrap();
        assert!(process_could_detach(&p, false));
        assert!(!process_could_detach(&p, true));
        let p: oci_spec::runtime::Process = serde_json::from_value(serde_json::json!({
            "cwd": "/", "args": ["sh"], "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN"]}
        }))
        .unwrap();
        assert!(!process_could_detach(&p, false));
    }
}
