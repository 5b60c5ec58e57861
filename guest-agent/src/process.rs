//! Turning an OCI `process` object into what a child needs to become it, and becoming it.
//!
//! [`PreparedProcess::prepare`] does every allocation and parse up front (argv, env, PATH lookup candidates,
//! capability masks, rlimits); [`PreparedProcess::exec`] then makes the system calls — signal reset,
//! controlling terminal, rlimits, bounding set, groups and ids, capabilities, ambient set, no_new_privs,
//! umask, cwd, execve — allocating only the argv/envp pointer arrays and, on failure, the message. It runs
//! in single-threaded helpers (`hull-init`'s fork, `hull-exec`'s clone), never in the threaded agent.
//!
//! The order follows the runtime spec's intent: rlimits and the bounding set while still privileged, then
//! ids with PR_SET_KEEPCAPS so the listed capabilities survive setuid, then exactly the listed effective,
//! permitted and inheritable sets, then the ambient set (which needs permitted and inheritable in place).

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, LinuxSeccomp, Process};

use crate::sys::{cstr, cvt};

/// Capability names in kernel order (bit N is CAP_<name>).
const CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

const RLIMITS: &[(&str, u32)] = &[
    ("CPU", libc::RLIMIT_CPU),
    ("FSIZE", libc::RLIMIT_FSIZE),
    ("DATA", libc::RLIMIT_DATA),
    ("STACK", libc::RLIMIT_STACK),
    ("CORE", libc::RLIMIT_CORE),
    ("RSS", libc::RLIMIT_RSS),
    ("NPROC", libc::RLIMIT_NPROC),
    ("NOFILE", libc::RLIMIT_NOFILE),
    ("MEMLOCK", libc::RLIMIT_MEMLOCK),
    ("AS", libc::RLIMIT_AS),
    ("LOCKS", libc::RLIMIT_LOCKS),
    ("SIGPENDING", libc::RLIMIT_SIGPENDING),
    ("MSGQUEUE", libc::RLIMIT_MSGQUEUE),
    ("NICE", libc::RLIMIT_NICE),
    ("RTPRIO", libc::RLIMIT_RTPRIO),
    ("RTTIME", libc::RLIMIT_RTTIME),
];

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("the process has no args")]
    NoArgs,
    #[error("unknown capability {0}")]
    UnknownCapability(String),
    #[error("unknown rlimit {0}")]
    UnknownRlimit(String),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("invalid string in the process: {0}")]
    BadString(#[from] io::Error),
    #[error("exec: {0}")]
    NotFound(String),
}

/// The program to exec, looked up as runc looks it up (Go's `exec.LookPath` in its init): a name with a `/` is
/// taken as it is (relative to `cwd`) and must exist; another is searched in the process's own `PATH`, for an
/// executable regular file. A process without `PATH` finds only names with a `/`, as under runc.
fn look_up(program: &str, path_var: &str, cwd: &Path) -> Result<PathBuf, ProcessError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let full = cwd.join(program);
        return match std::fs::metadata(&full) {
            Ok(_) => Ok(PathBuf::from(program)),
            Err(e) => Err(ProcessError::NotFound(format!("{program:?}: stat {program}: {e}"))),
        };
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| executable(&cwd.join(p)))
        .ok_or_else(|| ProcessError::NotFound(format!("{program:?}: executable file not found in $PATH")))
}

/// The five capability sets as bit masks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

#[derive(Debug)]
pub struct PreparedProcess {
    /// Paths to try in order (one if args[0] holds a '/').
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    umask: Option<u32>,
    rlimits: Vec<(u32, u64, u64)>,
    caps: Option<CapSets>,
    last_cap: u32,
    no_new_privs: bool,
    /// seccomp programs from the container's profile, installed last before exec.
    seccomp: Vec<seccompiler::BpfProgram>,
    /// Make standard input the controlling terminal (it is a pty slave).
    pub controlling_tty: bool,
    /// First line written on standard error when exec fails.
    failure_prefix: Vec<u8>,
}

fn cap_mask(set: &Option<Capabilities>) -> Result<u64, ProcessError> {
    let mut mask = 0u64;
    for cap in set.iter().flatten() {
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let short = name.strip_prefix("CAP_").unwrap_or(&name);
        let bit = CAPS
            .iter()
            .position(|c| *c == short)
            .ok_or(ProcessError::UnknownCapability(name.clone()))?;
        mask |= 1 << bit;
    }
    Ok(mask)
}

/// The highest capability the running kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAPS.len() as u32 - 1)
}

/// The home directory of `uid` in the passwd file at `passwd` (the container's, read after pivot_root or
/// setns), or `/`. The file is the container's: only a regular file is read (a FIFO there must not stall us),
/// at most 1 MiB of it, and a malformed line is skipped.
fn home_of(uid: u32, passwd: &Path) -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let read = || -> Option<String> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(passwd)
            .ok()?;
        if !f.metadata().ok()?.is_file() {
            return None;
        }
        let mut text = Vec::new();
        f.take(1 << 20).read_to_end(&mut text).ok()?;
        String::from_utf8_lossy(&text).lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.len() >= 7 && fields[2].parse::<u32>().ok() == Some(uid) && fields[5].starts_with('/'))
                .then(|| fields[5].to_string())
        })
    };
    read().unwrap_or_else(|| "/".to_string())
}

impl PreparedProcess {
    pub fn prepare(p: &Process, seccomp: Option<&LinuxSeccomp>) -> Result<PreparedProcess, ProcessError> {
        let args = p.args().clone().unwrap_or_default();
        let first = args.first().ok_or(ProcessError::NoArgs)?;
        let mut env = p.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            // As runc: a process without HOME gets its user's home from the container's /etc/passwd, or /.
            env.push(format!("HOME={}", home_of(p.user().uid(), Path::new("/etc/passwd"))));
        }
        let path_var = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or_default();
        // Looked up now, before Ready, so a missing program fails CreateContainer (or ExecProcess) with the
        // lookup's error, as `runc create` fails, rather than starting and exiting 127.
        let candidates = vec![cstr(look_up(first, path_var, p.cwd())?.as_os_str().as_encoded_bytes())?];
        let caps = match p.capabilities() {
            None => None,
            Some(c) => Some(CapSets {
                bounding: cap_mask(c.bounding())?,
                effective: cap_mask(c.effective())?,
                permitted: cap_mask(c.permitted())?,
                inheritable: cap_mask(c.inheritable())?,
                ambient: cap_mask(c.ambient())?,
            }),
        };
        let mut rlimits = Vec::new();
        for r in p.rlimits().iter().flatten() {
            let name = serde_json::to_value(r.typ())
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let short = name.strip_prefix("RLIMIT_").unwrap_or(&name);
            let res = RLIMITS
                .iter()
                .find(|(n, _)| *n == short)
                .ok_or(ProcessError::UnknownRlimit(name.clone()))?
                .1;
            rlimits.push((res, r.soft(), r.hard()));
        }
        let cwd = p.cwd().to_string_lossy().to_string();
        Ok(PreparedProcess {
            candidates,
            argv: args.iter().map(cstr).collect::<Result<_, _>>()?,
            envp: env.iter().map(cstr).collect::<Result<_, _>>()?,
            cwd: cstr(if cwd.is_empty() { "/".to_string() } else { cwd })?,
            uid: p.user().uid(),
            gid: p.user().gid(),
            groups: p.user().additional_gids().clone().unwrap_or_default(),
            umask: p.user().umask(),
            rlimits,
            caps,
            last_cap: last_cap(),
            no_new_privs: p.no_new_privileges().unwrap_or(false),
            seccomp: seccomp.map(crate::seccomp::compile).transpose()?.unwrap_or_default(),
            controlling_tty: p.terminal().unwrap_or(false),
            failure_prefix: format!("hull: cannot run {first}: ").into_bytes(),
        })
    }

    /// Becomes the process. Returns only on failure, after writing the reason on standard error.
    pub fn exec(&self) -> io::Error {
        let e = match self.exec_steps() {
            Ok(()) => io::Error::other("execve returned"),
            Err(e) => e,
        };
        // Best effort: the reason goes to the process's own stderr, where the user looks.
        let msg = e.to_string();
        // SAFETY: writes of valid buffers to fd 2.
        unsafe {
            libc::write(2, self.failure_prefix.as_ptr().cast(), self.failure_prefix.len());
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::write(2, b"\n".as_ptr().cast(), 1);
        }
        e
    }

    fn exec_steps(&self) -> io::Result<()> {
        let at = |stage: &str, e: io::Error| io::Error::new(e.kind(), format!("{stage}: {e}"));
        crate::sys::reset_signals();
        // SAFETY (whole block): system calls with plain values or pointers to data owned by `self`, which
        // outlives them; the arrays handed to execve are NULL-terminated and point into `self`.
        unsafe {
            if self.controlling_tty {
                libc::setsid();
                cvt(libc::ioctl(0, libc::TIOCSCTTY, 0)).map_err(|e| at("setting the controlling terminal", e))?;
            }
            for &(res, soft, hard) in &self.rlimits {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                cvt(libc::setrlimit(res, &lim)).map_err(|e| at("setrlimit", e))?;
            }
            if let Some(caps) = &self.caps {
                for cap in 0..=self.last_cap.min(63) {
                    if caps.bounding & (1 << cap) == 0 {
                        cvt(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0))
                            .map_err(|e| at("dropping from the bounding set", e))?;
                    }
                }
                cvt(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0)).map_err(|e| at("PR_SET_KEEPCAPS", e))?;
            }
            // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we still have it
            // (as runc does); with it, as late as possible so the filter does not see our own set-up.
            if !self.no_new_privs {
                for prog in &self.seccomp {
                    crate::seccomp::install(prog).map_err(|e| at("installing the seccomp filter", e))?;
                }
            }
            cvt(libc::setgroups(self.groups.len(), self.groups.as_ptr())).map_err(|e| at("setgroups", e))?;
            cvt(libc::setresgid(self.gid, self.gid, self.gid)).map_err(|e| at("setresgid", e))?;
            cvt(libc::setresuid(self.uid, self.uid, self.uid)).map_err(|e| at("setresuid", e))?;
            if let Some(caps) = &self.caps {
                cvt(libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0)).map_err(|e| at("PR_SET_KEEPCAPS", e))?;
                capset(caps).map_err(|e| at("capset", e))?;
                cvt(libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                ))
                .map_err(|e| at("clearing the ambient set", e))?;
                for cap in 0..=self.last_cap.min(63) {
                    if caps.ambient & (1 << cap) != 0 {
                        cvt(libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                            cap as libc::c_ulong,
                            0,
                            0,
                        ))
                        .map_err(|e| at("raising an ambient capability", e))?;
                    }
                }
            }
            if let Some(mask) = self.umask {
                libc::umask(mask as libc::mode_t);
            }
            cvt(libc::chdir(self.cwd.as_ptr())).map_err(|e| at("chdir to the working directory", e))?;
            if self.no_new_privs {
                cvt(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)).map_err(|e| at("no_new_privileges", e))?;
            }
            if self.no_new_privs {
                for prog in &self.seccomp {
                    crate::seccomp::install(prog).map_err(|e| at("installing the seccomp filter", e))?;
                }
            }
            let mut argv: Vec<*const libc::c_char> = self.argv.iter().map(|a| a.as_ptr()).collect();
            argv.push(std::ptr::null());
            let mut envp: Vec<*const libc::c_char> = self.envp.iter().map(|a| a.as_ptr()).collect();
            envp.push(std::ptr::null());
            let mut last = io::Error::from_raw_os_error(libc::ENOENT);
            for path in &self.candidates {
                libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                let e = io::Error::last_os_error();
                // Like a shell: keep looking on ENOENT/ENOTDIR, remember EACCES, stop on anything else.
                match e.raw_os_error() {
                    Some(libc::ENOENT) | Some(libc::ENOTDIR) => {}
                    Some(libc::EACCES) => last = e,
                    _ => return Err(e),
                }
            }
            Err(last)
        }
    }
}

/// capset(2), version 3 (64-bit sets as two 32-bit halves).
fn capset(caps: &CapSets) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let half = |m: u64, i: u32| (m >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: half(caps.effective, i),
        permitted: half(caps.permitted, i),
        inheritable: half(caps.inheritable, i),
    });
    // SAFETY: capset reads one header and two data structs, laid out as the kernel defines them.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_masks_follow_kernel_numbers() {
        let p: Process = serde_json::from_str(
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["/bin/sh"],
               "capabilities":{"bounding":["CAP_CHOWN","CAP_KILL","CAP_NET_BIND_SERVICE"],"ambient":["CAP_KILL"]}}"#,
        )
        .unwrap();
        let pp = PreparedProcess::prepare(&p, None).unwrap();
        let caps = pp.caps.unwrap();
        assert_eq!(caps.bounding, (1 << 0) | (1 << 5) | (1 << 10));
        assert_eq!(caps.ambient, 1 << 5);
        assert_eq!(caps.effective, 0);
    }

    #[test]
    fn home_comes_from_the_passwd_file_or_is_the_root() {
        let dir = std::env::temp_dir().join(format!("hull-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nbroken line\nnobody:x:65534:65534::relative:/bin/false\nu:x:1000:1000::/home/u:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(home_of(0, &passwd), "/root");
        assert_eq!(home_of(1000, &passwd), "/home/u");
        assert_eq!(home_of(65534, &passwd), "/", "a home that is not absolute");
        assert_eq!(home_of(7, &passwd), "/", "no such user");
        assert_eq!(home_of(0, &dir.join("missing")), "/");
        assert_eq!(home_of(0, &dir), "/", "not a regular file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_program_is_looked_up_as_runc_does() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("hull-lookup-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("tool"), "").unwrap();
        std::fs::write(b.join("tool"), "").unwrap();
        std::fs::set_permissions(b.join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:{}/", a.display(), b.display());
        let root = Path::new("/");
        // The first executable regular file on PATH; a non-executable one is passed over.
        assert_eq!(look_up("tool", &path, root).unwrap(), b.join("tool"));
        let e = look_up("nosuch", &path, root).unwrap_err().to_string();
        assert_eq!(e, "exec: \"nosuch\": executable file not found in $PATH");
        // Without PATH only a name with a slash is found.
        assert!(look_up("tool", "", root).is_err());
        let abs = b.join("tool").to_string_lossy().to_string();
        assert_eq!(look_up(&abs, "", root).unwrap(), PathBuf::from(&abs));
        assert_eq!(look_up("./tool", "", &b).unwrap(), PathBuf::from("./tool"));
        assert!(look_up("/no/such", &path, root)
            .unwrap_err()
            .to_string()
            .contains("stat /no/such"));
        let p: Process = serde_json::from_str(r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":[]}"#).unwrap();
        assert!(matches!(PreparedProcess::prepare(&p, None), Err(ProcessError::NoArgs)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
