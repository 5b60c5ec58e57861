//! OCI hooks that run on the host, where runc runs them: `prestart` then `createRuntime` once the container
//! exists (at Create), `poststart` after Start, `poststop` after Delete. Each hook gets the container's state
//! (the OCI `state` JSON: id, status, pid, bundle, annotations) on its stdin, its own argv and environment
//! (nothing of the shim's), and is killed when its `timeout` passes. As with runc: a failing create hook fails
//! Create (the container is removed again), a failing `poststart` hook fails Start and kills the container,
//! and a failing `poststop` hook is a warning.
//!
//! `createContainer` and `startContainer` hooks run inside the container's namespaces under runc, which is
//! inside the guest here: the spec keeps them for the guest, where `hull-init` runs those whose binary the
//! container has (`guest-agent/src/guest_hooks.rs`). The hooks come from the spec containerd's client wrote, trusted as runc trusts it (they run as
//! the shim, root); they are checked before anything runs (absolute paths, strings, sane timeouts).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a hook may run when its `timeout` does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// What of a failing hook's stderr goes into the error.
const STDERR_CAP: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Which list it came from: `prestart`, `createRuntime`, `poststart`, `poststop`.
    pub kind: &'static str,
    pub path: PathBuf,
    /// argv, with argv[0] (the path when the spec gives none).
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Duration,
}

/// The host-side hooks of a container, in the order they run at each point.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// `prestart`, then `createRuntime`.
    pub create: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hooks: {0}")]
    Invalid(String),
    #[error("{kind} hook {path}: {detail}")]
    Failed {
        kind: &'static str,
        path: String,
        detail: String,
    },
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, HookError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .filter(|s| !s.contains('\0'))
                    .map(str::to_string)
                    .ok_or_else(|| HookError::Invalid(format!("{what} must be strings")))
            })
            .collect(),
        _ => Err(HookError::Invalid(format!("{what} must be a list"))),
    }
}

fn parse_list(v: &Value, kind: &'static str) -> Result<Vec<Hook>, HookError> {
    let list = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        _ => return Err(HookError::Invalid(format!("{kind} must be a list"))),
    };
    list.iter()
        .map(|h| {
            let path = h["path"]
                .as_str()
                .filter(|p| p.starts_with('/') && !p.contains('\0'))
                .ok_or_else(|| HookError::Invalid(format!("a {kind} hook needs an absolute path")))?;
            let mut args = strings(&h["args"], &format!("{kind} hook args"))?;
            if args.is_empty() {
                args.push(path.to_string());
            }
            let timeout = match &h["timeout"] {
                Value::Null => DEFAULT_TIMEOUT,
                t => match t.as_u64().filter(|s| (1..=86_400).contains(s)) {
                    Some(s) => Duration::from_secs(s),
                    None => {
                        return Err(HookError::Invalid(format!(
                            "{kind} hook timeout must be 1..86400 seconds"
                        )))
                    }
                },
            };
            Ok(Hook {
                kind,
                path: PathBuf::from(path),
                args,
                env: strings(&h["env"], &format!("{kind} hook env"))?,
                timeout,
            })
        })
        .collect()
}

impl Hooks {
    /// The spec's `hooks` object; also the names of the hook kinds present that the guest runs.
    pub fn parse(hooks: &Value) -> Result<(Hooks, Vec<&'static str>), HookError> {
        if hooks.is_null() {
            return Ok((Hooks::default(), Vec::new()));
        }
        if !hooks.is_object() {
            return Err(HookError::Invalid("hooks must be an object".into()));
        }
        let mut create = parse_list(&hooks["prestart"], "prestart")?;
        create.extend(parse_list(&hooks["createRuntime"], "createRuntime")?);
        let not_run = ["createContainer", "startContainer"]
            .into_iter()
            .filter(|k| hooks[*k].as_array().is_some_and(|a| !a.is_empty()))
            .collect();
        Ok((
            Hooks {
                create,
                poststart: parse_list(&hooks["poststart"], "poststart")?,
                poststop: parse_list(&hooks["poststop"], "poststop")?,
            },
            not_run,
        ))
    }
}

/// The OCI state a hook reads on stdin.
pub fn state(id: &str, status: &str, pid: u32, bundle: &str, annotations: &Value) -> Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle,
        "annotations": if annotations.is_object() { annotations.clone() } else { serde_json::json!({}) },
    })
}

/// Runs `hooks` one after the other with `state` on stdin; stops at the first that fails.
pub fn run(hooks: &[Hook], state: &Value) -> Result<(), HookError> {
    for h in hooks {
        run_one(h, state)?;
    }
    Ok(())
}

fn run_one(h: &Hook, state: &Value) -> Result<(), HookError> {
    use std::os::unix::process::CommandExt;
    let fail = |detail: String| HookError::Failed {
        kind: h.kind,
        path: h.path.display().to_string(),
        detail,
    };
    let mut child = Command::new(&h.path)
        .arg0(&h.args[0])
        .args(&h.args[1..])
        .env_clear()
        .envs(h.env.iter().map(|e| e.split_once('=').unwrap_or((e.as_str(), ""))))
        .current_dir("/")
        // Its own process group, so a timeout ends whatever it started too.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    // Writing and reading in threads of their own, never joined: a hook that ignores stdin, floods stderr or
    // leaves a process holding either must not stall us.
    let input = serde_json::to_vec(state).unwrap_or_default();
    let stdin = child.stdin.take();
    std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&input);
        }
    });
    let stderr = child.stderr.take();
    let (said_tx, said_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(s) = stderr {
            let mut s = s;
            let _ = (&mut s).take(STDERR_CAP).read_to_end(&mut text);
            let _ = said_tx.send(String::from_utf8_lossy(&text).trim().to_string());
            let _ = std::io::copy(&mut s, &mut std::io::sink());
        }
    });
    let deadline = Instant::now() + h.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => {
                // SAFETY: kill(2) of the process group the hook leads (it is not reaped yet).
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(fail(format!("waiting: {e}"))),
        }
    };
    let said = || said_rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    match status {
        None => Err(fail(format!("timed out after {:?}", h.timeout))),
        Some(st) if st.success() => Ok(()),
        Some(st) => Err(fail(format!("{st}: {}", said()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_parse_and_bad_ones_are_refused() {
        let v = serde_json::json!({
            "prestart": [{ "path": "/bin/a" }],
            "createRuntime": [{ "path": "/bin/b", "args": ["b", "x"], "env": ["K=V"], "timeout": 5 }],
            "poststop": [{ "path": "/bin/c" }],
            "startContainer": [{ "path": "/bin/d" }],
        });
        let (h, not_run) = Hooks::parse(&v).unwrap();
        assert_eq!(h.create.len(), 2);
        assert_eq!(h.create[0].args, vec!["/bin/a".to_string()]);
        assert_eq!(h.create[1].timeout, Duration::from_secs(5));
        assert_eq!((h.poststart.len(), h.poststop.len()), (0, 1));
        assert_eq!(not_run, vec!["startContainer"]);
        for bad in [
            serde_json::json!({ "prestart": [{ "path": "relative" }] }),
            serde_json::json!({ "prestart": [{ "path": "/x", "timeout": 0 }] }),
            serde_json::json!({ "prestart": [{ "path": "/x", "args": [1] }] }),
            serde_json::json!({ "poststart": "x" }),
            serde_json::json!([]),
        ] {
            assert!(Hooks::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_hook_reads_the_state_and_failures_and_timeouts_are_errors() {
        let dir = std::env::temp_dir().join(format!("hull-hook-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("state");
        let hook = |script: &str, timeout: u64| Hook {
            kind: "prestart",
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec![format!("OUT={}", out.display())],
            timeout: Duration::from_secs(timeout),
        };
        let st = state("c1", "created", 42, "/b", &serde_json::json!({ "k": "v" }));
        run(
            &[hook("cat > \"$OUT\"; echo >> \"$OUT\"; echo \"$HOME\" >> \"$OUT\"", 10)],
            &st,
        )
        .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let (json, home) = text.split_once('\n').unwrap_or((&text, ""));
        let seen: Value = serde_json::from_str(json).unwrap();
        assert_eq!(seen, st);
        assert_eq!(home.trim(), "", "the shim's environment does not leak into a hook");
        let e = run(&[hook("echo bad >&2; exit 3", 10)], &st).unwrap_err();
        assert!(e.to_string().contains("bad") && e.to_string().contains("3"), "{e}");
        let t = Instant::now();
        let e = run(&[hook("sleep 30", 1)], &st).unwrap_err();
        assert!(
            e.to_string().contains("timed out") && t.elapsed() < Duration::from_secs(10),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
