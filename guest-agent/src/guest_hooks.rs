//! The OCI hooks that run inside the container, as runc runs them in the container's namespaces:
//! `createContainer` once the container's file system view is built, `startContainer` at Start before the
//! program execs. `hull-init` runs them after pivot_root, so a hook's path is looked up in the container's
//! root: a hook whose binary is not there is skipped (the host's binaries are not in the guest; the host
//! runs `prestart`, `createRuntime`, `poststart` and `poststop` itself). Each gets the container's state on
//! stdin, its argv and env only, /dev/null for stdout and stderr (they are not the container's output), and
//! is killed at its `timeout` (default 120 s). A failing hook fails Create or Start.

use std::io;
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::sys::{cpath, cstr};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// The OCI state a hook reads on stdin.
pub fn state(
    id: &str,
    status: &str,
    pid: i32,
    bundle: &str,
    annotations: Option<&std::collections::HashMap<String, String>>,
) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": annotations.cloned().unwrap_or_default(),
    }))
    .unwrap_or_default()
}

/// Runs `hooks` (of list `kind`) in order with `state` on stdin; the first failure is the error.
pub fn run(kind: &str, hooks: &[Hook], state: &[u8]) -> Result<(), String> {
    for h in hooks {
        if !h.path().is_absolute() || std::fs::metadata(h.path()).is_err() {
            continue;
        }
        run_one(h, state).map_err(|e| format!("{kind} hook {}: {e}", h.path().display()))?;
    }
    Ok(())
}

fn run_one(h: &Hook, state: &[u8]) -> Result<(), String> {
    let path = cpath(h.path()).map_err(|e| e.to_string())?;
    let args: Vec<String> = match h.args() {
        Some(a) if !a.is_empty() => a.clone(),
        _ => vec![h.path().to_string_lossy().to_string()],
    };
    let argv = args
        .iter()
        .map(cstr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let envv = h
        .env()
        .clone()
        .unwrap_or_default()
        .iter()
        .map(cstr)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let timeout = match h.timeout() {
        None => DEFAULT_TIMEOUT,
        Some(t) if (1..=86_400).contains(&t) => Duration::from_secs(t as u64),
        Some(t) => return Err(format!("timeout {t} is not 1..86400 seconds")),
    };
    let mut argp: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argp.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envv.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let null = c"/dev/null";
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: hull-init is single-threaded; the child only calls async-signal-safe functions on data
    // prepared above, then execs or leaves.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        return Err(format!("fork: {e}"));
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            let devnull = libc::open(null.as_ptr(), libc::O_RDWR);
            libc::dup2(fds[0], 0);
            libc::dup2(devnull, 1);
            libc::dup2(devnull, 2);
            libc::execve(path.as_ptr(), argp.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    // SAFETY: our descriptors: the read end is the child's now; write the state (small, best effort: a hook
    // that does not read it gets EPIPE on us, which Rust ignores as a signal) and close.
    unsafe {
        libc::close(fds[0]);
        let mut off = 0;
        while off < state.len() {
            let n = libc::write(fds[1], state[off..].as_ptr().cast(), state.len() - off);
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
        libc::close(fds[1]);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            let st = crate::sys::ExitStatus::from_wait(status);
            return if st.code == 0 && st.signal == 0 {
                Ok(())
            } else if st.signal != 0 {
                Err(format!("killed by signal {}", st.signal))
            } else {
                Err(format!("exit status {}", st.code))
            };
        }
        if r < 0 {
            return Err(format!("waitpid: {}", io::Error::last_os_error()));
        }
        if Instant::now() >= deadline {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(format!("timed out after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: serde_json::Value) -> Hook {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn hooks_read_the_state_missing_ones_are_skipped_and_failures_stop() {
        let dir = std::env::temp_dir().join(format!("hull-guest-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("state");
        let st = state("c1", "created", 7, "/run/hull/containers/c1", None);
        let record = hook(serde_json::json!({
            "path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", out.display())]
        }));
        let missing = hook(serde_json::json!({ "path": "/no/such/hook" }));
        run("createContainer", &[missing, record], &st).unwrap();
        let seen: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!((seen["id"].as_str(), seen["pid"].as_i64()), (Some("c1"), Some(7)));
        let failing = hook(serde_json::json!({ "path": "/bin/sh", "args": ["sh", "-c", "exit 4"] }));
        let e = run("startContainer", &[failing], &st).unwrap_err();
        assert!(e.contains("startContainer hook /bin/sh: exit status 4"), "{e}");
        let slow = hook(serde_json::json!({ "path": "/bin/sh", "args": ["sh", "-c", "sleep 20"], "timeout": 1 }));
        let t = Instant::now();
        let e = run("startContainer", &[slow], &st).unwrap_err();
        assert!(e.contains("timed out") && t.elapsed() < Duration::from_secs(10), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
