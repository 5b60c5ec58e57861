//! The OCI hooks that run inside the container, as runc runs them in the container's namespaces:
//! `createContainer` once the container's file system view is built, `startContainer` at Start before the
//! program execs. `hull-init` runs them after pivot_root, so a hook's path is looked up in the container's
//! root: a hook whose binary is not there is skipped (the host's binaries are not in the guest; the host
//! runs `prestart`, `createRuntime`, `poststart` and `poststop` itself). Each gets the container's state on
//! stdin, its argv and env only, /dev/null for stdout and stderr (they are not the container's output), and
//! is killed at its `timeout` (default 120 s). A failing hook fails Create or Start.

use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

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
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let timeout = match h.timeout() {
        None => DEFAULT_TIMEOUT,
        Some(t) if (1..=86_400).contains(&t) => Duration::from_secs(t as u64),
        Some(t) => return Err(format!("timeout {t} is not 1..86400 seconds")),
    };
    let args = h.args().clone().unwrap_or_default();
    let argv0 = args
        .first()
        .cloned()
        .unwrap_or_else(|| h.path().to_string_lossy().to_string());
    let mut child = Command::new(h.path())
        .arg0(argv0)
        .args(args.iter().skip(1))
        .env_clear()
        .envs(
            h.env()
                .iter()
                .flatten()
                .map(|e| e.split_once('=').unwrap_or((e.as_str(), ""))),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    // From a thread of its own: a hook that does not read its stdin must not stall us past its timeout.
    if let Some(mut stdin) = child.stdin.take() {
        let state = state.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&state);
        });
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => return Err(st.to_string()),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting: {e}")),
        }
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
        assert!(e.contains("startContainer hook /bin/sh: exit status: 4"), "{e}");
        let slow = hook(serde_json::json!({ "path": "/bin/sh", "args": ["sh", "-c", "sleep 20"], "timeout": 1 }));
        let t = Instant::now();
        // A state larger than a pipe holds, which the hook never reads: the timeout still applies.
        let big = vec![b' '; 1 << 20];
        let e = run("startContainer", &[slow], &big).unwrap_err();
        assert!(e.contains("timed out") && t.elapsed() < Duration::from_secs(10), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
