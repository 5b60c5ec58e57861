//! OCI seccomp profiles (`linux.seccomp`) compiled to classic BPF with seccompiler and installed in the
//! container's processes just before exec.
//!
//! seccompiler filters have one action on match and one on mismatch, while an OCI profile has a default
//! action and an action per rule. The profile becomes several filters, which the kernel runs together and
//! whose most restrictive answer wins: one filter per distinct rule action (its rules → that action,
//! anything else → allow), and, when the default is not "allow", one more (every rule → allow, anything
//! else → the default). Syscall names seccompiler does not know for x86_64 are skipped, as runc skips names
//! libseccomp does not know. SCMP_ACT_NOTIFY, flags and listener paths are refused.
//!
//! The profile comes from the host and is validated here: unknown actions or operators are errors.
//!
//! Apart from any profile, every container process gets the agent's own filter, [`deny_vsock`], unless its
//! spec carries the `io.hull.allow-vsock=true` annotation: `socket(AF_VSOCK, ...)` fails with EAFNOSUPPORT
//! (as on a kernel without vsock), and `io_uring_setup` fails with ENOSYS (as on a kernel without io_uring),
//! because io_uring's IORING_OP_SOCKET creates sockets without passing through the socket system call.
//! Filters stack: a profile that allows everything cannot undo it.

use std::collections::BTreeMap;

use oci_spec::runtime::LinuxSeccomp;
use seccompiler::{BpfProgram, TargetArch};
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: unsupported action {0}")]
    Action(String),
    #[error("seccomp: unsupported operator {0}")]
    Operator(String),
    #[error("seccomp: {0}")]
    Compile(String),
    #[error("seccomp: {0} is not supported")]
    Unsupported(&'static str),
}

/// An action in seccompiler's JSON form.
fn action(name: &str, errno: Option<u64>) -> Result<Value, SeccompError> {
    Ok(match name {
        "SCMP_ACT_ALLOW" => json!("allow"),
        "SCMP_ACT_ERRNO" => json!({ "errno": errno.unwrap_or(libc::EPERM as u64) }),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => json!("kill_thread"),
        "SCMP_ACT_KILL_PROCESS" => json!("kill_process"),
        "SCMP_ACT_TRAP" => json!("trap"),
        "SCMP_ACT_LOG" => json!("log"),
        "SCMP_ACT_TRACE" => json!({ "trace": errno.unwrap_or(0) }),
        other => return Err(SeccompError::Action(other.to_string())),
    })
}

/// One OCI argument condition in seccompiler's JSON form.
fn condition(arg: &Value) -> Result<Value, SeccompError> {
    let index = arg["index"].as_u64().unwrap_or(0);
    let value = arg["value"].as_u64().unwrap_or(0);
    let op = arg["op"].as_str().unwrap_or_default();
    let (op, val) = match op {
        "SCMP_CMP_EQ" => (json!("eq"), value),
        "SCMP_CMP_NE" => (json!("ne"), value),
        "SCMP_CMP_LT" => (json!("lt"), value),
        "SCMP_CMP_LE" => (json!("le"), value),
        "SCMP_CMP_GT" => (json!("gt"), value),
        "SCMP_CMP_GE" => (json!("ge"), value),
        // OCI: (arg & value) == valueTwo.
        "SCMP_CMP_MASKED_EQ" => (json!({ "masked_eq": value }), arg["valueTwo"].as_u64().unwrap_or(0)),
        other => return Err(SeccompError::Operator(other.to_string())),
    };
    if index > 5 {
        return Err(SeccompError::Compile(format!("argument index {index} is out of range")));
    }
    Ok(json!({ "index": index, "type": "qword", "op": op, "val": val }))
}

fn known(name: &str) -> bool {
    let probe =
        json!({ "p": { "mismatch_action": "allow", "match_action": "trap", "filter": [ { "syscall": name } ] } });
    seccompiler::compile_from_json(probe.to_string().as_bytes(), TargetArch::x86_64).is_ok()
}

/// Compiles a profile into the programs to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let p = serde_json::to_value(profile).map_err(|e| SeccompError::Compile(e.to_string()))?;
    if p.get("listenerPath").is_some_and(|v| !v.is_null()) {
        return Err(SeccompError::Unsupported("a seccomp listener"));
    }
    let default_errno = p["defaultErrnoRet"].as_u64();
    let default = action(p["defaultAction"].as_str().unwrap_or_default(), default_errno)?;
    // Rules grouped by their action (as JSON text, so equal actions share a filter).
    let mut by_action: BTreeMap<String, (Value, Vec<Value>)> = BTreeMap::new();
    let mut all_rules = Vec::new();
    let mut checked: BTreeMap<String, bool> = BTreeMap::new();
    for rule in p["syscalls"].as_array().cloned().unwrap_or_default() {
        let act = action(
            rule["action"].as_str().unwrap_or_default(),
            rule["errnoRet"].as_u64().or(default_errno),
        )?;
        let args: Vec<Value> = rule["args"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(condition)
            .collect::<Result<_, _>>()?;
        for name in rule["names"].as_array().cloned().unwrap_or_default() {
            let Some(name) = name.as_str() else { continue };
            if !*checked.entry(name.to_string()).or_insert_with(|| known(name)) {
                continue;
            }
            let entry = if args.is_empty() {
                json!({ "syscall": name })
            } else {
                json!({ "syscall": name, "args": args })
            };
            all_rules.push(entry.clone());
            if act != json!("allow") {
                by_action
                    .entry(act.to_string())
                    .or_insert_with(|| (act.clone(), Vec::new()))
                    .1
                    .push(entry);
            }
        }
    }
    let mut filters = serde_json::Map::new();
    for (i, (_, (act, rules))) in by_action.into_iter().enumerate() {
        filters.insert(
            format!("a{i}"),
            json!({ "mismatch_action": "allow", "match_action": act, "filter": rules }),
        );
    }
    if default != json!("allow") {
        filters.insert(
            "default".into(),
            json!({ "mismatch_action": default, "match_action": "allow", "filter": all_rules }),
        );
    }
    let compiled = seccompiler::compile_from_json(Value::Object(filters).to_string().as_bytes(), TargetArch::x86_64)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    // The default filter first, the per-action ones after (order does not change the combined result).
    let mut programs: Vec<(String, BpfProgram)> = compiled.into_iter().collect();
    programs.sort_by_key(|(k, _)| k != "default");
    Ok(programs.into_iter().map(|(_, p)| p).filter(|p| !p.is_empty()).collect())
}

/// The vsock address family (`AF_VSOCK`, 40 on every Linux architecture).
const AF_VSOCK: u64 = libc::AF_VSOCK as u64;
/// What `socket(AF_VSOCK, ...)` returns in a container: "address family not supported", as on a kernel
/// without vsock, so a program that probes for vsock sees it absent.
pub const VSOCK_ERRNO: i32 = libc::EAFNOSUPPORT;
/// What `io_uring_setup` returns in a container whose vsock is closed: "no such system call", as on a kernel
/// without io_uring (programs fall back to plain system calls).
pub const IO_URING_ERRNO: i32 = libc::ENOSYS;

/// The agent's vsock filters: socket(AF_VSOCK, ...) → EAFNOSUPPORT; io_uring_setup → ENOSYS.
pub fn vsock_filters() -> Result<Vec<BpfProgram>, SeccompError> {
    let filters = json!({
        "vsock": {
            "mismatch_action": "allow",
            "match_action": { "errno": VSOCK_ERRNO },
            "filter": [ { "syscall": "socket", "args": [ { "index": 0, "type": "dword", "op": "eq", "val": AF_VSOCK } ] } ]
        },
        "io_uring": {
            "mismatch_action": "allow",
            "match_action": { "errno": IO_URING_ERRNO },
            "filter": [ { "syscall": "io_uring_setup" } ]
        }
    });
    let compiled = seccompiler::compile_from_json(filters.to_string().as_bytes(), TargetArch::x86_64)
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    Ok(compiled.into_values().collect())
}

/// Installs [`vsock_filters`] on the calling thread (and so on every process it starts). Needs
/// CAP_SYS_ADMIN or no_new_privs; the helpers call it as root before anything of the container runs.
pub fn deny_vsock() -> std::io::Result<()> {
    for prog in vsock_filters().map_err(std::io::Error::other)? {
        install(&prog).map_err(|e| std::io::Error::new(e.kind(), format!("installing the vsock filter: {e}")))?;
    }
    Ok(())
}

/// Installs one program with seccomp(SECCOMP_SET_MODE_FILTER); needs no_new_privs or CAP_SYS_ADMIN.
/// Only system calls: safe in the child right before exec.
pub fn install(program: &BpfProgram) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`'s instructions, which outlive the call; the kernel copies them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn allow_by_default_with_denied_calls() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir","mkdirat","no_such_syscall"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["socket"],"action":"SCMP_ACT_ERRNO","errnoRet":97,"args":[{"index":0,"value":2,"op":"SCMP_CMP_EQ"}]},
                {"names":["getpid"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        // Two distinct rule actions (errno 1, errno 97), no default filter.
        assert_eq!(compile(&p).unwrap().len(), 2);
    }

    #[test]
    fn deny_by_default_adds_a_default_filter() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    /// In a forked child (no_new_privs, then the filters): AF_VSOCK and io_uring fail with their errnos, the
    /// other families still work. Each outcome is one byte on a pipe: 0 for success, else the errno.
    #[test]
    fn the_vsock_filter_refuses_vsock_and_io_uring_only() {
        let progs = vsock_filters().unwrap();
        assert_eq!(progs.len(), 2);
        let (mut r, w) = crate::sys::pipe().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: the child makes system calls only (the programs were compiled before the fork) and leaves
        // with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                let report = |rc: i64| {
                    let b: u8 = if rc >= 0 { 0 } else { *libc::__errno_location() as u8 };
                    libc::write(w.as_raw_fd(), &b as *const u8 as *const libc::c_void, 1);
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(2);
                }
                for p in &progs {
                    if install(p).is_err() {
                        libc::_exit(3);
                    }
                }
                report(libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) as i64);
                report(libc::socket(libc::AF_VSOCK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) as i64);
                report(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64);
                report(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) as i64);
                let mut params = [0u8; 120];
                report(libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()));
                libc::_exit(0);
            }
        }
        drop(w);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x}"
        );
        let mut got = Vec::new();
        use std::io::Read;
        r.read_to_end(&mut got).unwrap();
        let e = |v: i32| v as u8;
        assert_eq!(got, [e(VSOCK_ERRNO), e(VSOCK_ERRNO), 0, 0, e(IO_URING_ERRNO)]);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(compile(&p).is_err());
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(compile(&p).is_err());
    }
}
