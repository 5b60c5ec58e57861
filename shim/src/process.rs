//! A container process as the shim tracks it (the init process or an exec), and its stdio: containerd's
//! FIFOs on the host side, the agent's per-stream vsock connections on the guest side, copied byte for byte
//! by one thread per stream. Output FIFOs are closed only after the guest's side ended (or a drain limit),
//! before the exit is reported, so containerd has every byte when it sees the exit. Stdin ends on CloseIO:
//! the FIFO is opened read-write (containerd's writer may come and go), and the byte count read so far is
//! handed to the agent, which closes the process's stdin after exactly that many bytes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use containerd_shim::api::Status;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use hull_agent_protocol::stdio::Stream;
use hull_runtime::agent::{Agent, AgentError};
use hull_runtime::container::Streams;

/// containerd's stdio addresses for a process (FIFO paths, `fifo://` or `file://` URIs, "" for none) and
/// whether it gets a terminal.
#[derive(Debug, Clone, Default)]
pub struct StdioAddrs {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioAddrs {
    /// Refuses addresses the shim cannot serve (see [`check_stdio_uris`]).
    pub fn check(&self) -> Result<(), StdioUriError> {
        check_stdio_uris(&self.stdin, &self.stdout, &self.stderr)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("stdio address {uri:?}: only FIFO paths (and file:// logs for output) are supported")]
pub struct StdioUriError {
    pub uri: String,
}

pub struct Proc {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    pub status: Status,
    pub exit: Option<(u32, Timestamp)>,
    pub stdin_closed: Arc<AtomicBool>,
    pub outputs: Vec<JoinHandle<()>>,
    /// An exec's OCI process (JSON), from Exec until Start sends it to the agent.
    pub exec_spec: Option<Vec<u8>>,
}

impl Proc {
    pub fn new(stdio: &StdioAddrs) -> Proc {
        Proc {
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            terminal: stdio.terminal,
            status: Status::CREATED,
            exit: None,
            stdin_closed: Arc::new(AtomicBool::new(false)),
            outputs: Vec::new(),
            exec_spec: None,
        }
    }

    /// Which streams the agent must keep for us (the others are /dev/null in the guest).
    pub fn streams(&self) -> Streams {
        Streams {
            terminal: self.terminal,
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty(),
        }
    }

    /// Opens the agent's streams (before the process starts, so nothing is missed) and starts copying.
    pub fn attach(&mut self, agent: &Agent, uds: &std::path::Path, cid: &str, exec: &str) -> Result<(), AgentError> {
        let outputs = self.stdio_plan().attach(agent, uds, cid, exec)?;
        self.outputs.extend(outputs);
        Ok(())
    }

    /// What attaching needs, taken out so the guest calls happen without the shim's state locked.
    pub fn stdio_plan(&self) -> StdioPlan {
        StdioPlan {
            stdin: self.stdin.clone(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            terminal: self.terminal,
            stdin_closed: self.stdin_closed.clone(),
        }
    }

    /// Waits (up to `limit`) for the output copies to finish.
    pub fn drain(outputs: Vec<JoinHandle<()>>, limit: Duration) {
        let deadline = Instant::now() + limit;
        for h in outputs {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// A process's stdio as [`Proc::stdio_plan`] took it out; [`StdioPlan::attach`] talks to the guest.
pub struct StdioPlan {
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    stdin_closed: Arc<AtomicBool>,
}

impl StdioPlan {
    /// Opens the agent's streams and starts copying; returns the output copiers (for [`Proc::drain`]).
    pub fn attach(
        &self,
        agent: &Agent,
        uds: &std::path::Path,
        cid: &str,
        exec: &str,
    ) -> Result<Vec<JoinHandle<()>>, AgentError> {
        let mut outputs = Vec::new();
        if self.terminal {
            let term = agent.open_stream(cid, exec, Stream::Terminal)?;
            if !self.stdout.is_empty() {
                let from_guest = term.try_clone().map_err(io_agent)?;
                let path = self.stdout.clone();
                outputs.push(std::thread::spawn(move || copy_out(from_guest, &path)));
            }
            if !self.stdin.is_empty() {
                let path = self.stdin.clone();
                let closed = self.stdin_closed.clone();
                std::thread::spawn(move || pump_in(&path, term, closed, None));
            }
            return Ok(outputs);
        }
        for (path, stream) in [(&self.stdout, Stream::Stdout), (&self.stderr, Stream::Stderr)] {
            if path.is_empty() {
                continue;
            }
            let conn = agent.open_stream(cid, exec, stream)?;
            let path = path.clone();
            outputs.push(std::thread::spawn(move || copy_out(conn, &path)));
        }
        if !self.stdin.is_empty() {
            let conn = agent.open_stream(cid, exec, Stream::Stdin)?;
            let closer = Agent::connect(uds, Duration::from_secs(10))?;
            let (path, closed) = (self.stdin.clone(), self.stdin_closed.clone());
            let (cid, exec) = (cid.to_string(), exec.to_string());
            std::thread::spawn(move || pump_in(&path, conn, closed, Some((closer, cid, exec))));
        }
        Ok(outputs)
    }
}

/// Checks containerd's stdio addresses: FIFO paths (also as `fifo://`) and `file://` logs (ctr's
/// `--log-uri file://...`) are served; `binary://` loggers and other schemes are refused with a clear error
/// rather than their output being dropped.
pub fn check_stdio_uris(stdin: &str, stdout: &str, stderr: &str) -> Result<(), StdioUriError> {
    for (u, outputs) in [(stdin, false), (stdout, true), (stderr, true)] {
        if let Some((scheme, _)) = u.split_once("://") {
            if scheme != "fifo" && !(outputs && scheme == "file") {
                return Err(StdioUriError { uri: u.to_string() });
            }
        }
    }
    Ok(())
}

/// Opens an output address for writing: a FIFO (containerd holds its read side open already, so this does
/// not block), or a `file://` log, created (owner-only: it holds the container's output) or appended to.
fn open_output(uri: &str) -> std::io::Result<std::fs::File> {
    if let Some(path) = uri.strip_prefix("file://") {
        return OpenOptions::new()
            .create(true)
            .append(true)
            .mode(hull_runtime::guard::PRIVATE_FILE_MODE)
            .open(path);
    }
    OpenOptions::new()
        .write(true)
        .open(uri.strip_prefix("fifo://").unwrap_or(uri))
}

fn io_agent(e: std::io::Error) -> AgentError {
    AgentError::Stdio {
        stream: "terminal",
        source: hull_agent_protocol::stdio::StdioError::Io(e),
    }
}

/// Guest stream → containerd's output FIFO, until the guest side ends.
fn copy_out(mut from: UnixStream, fifo: &str) {
    let mut to = match open_output(fifo) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("opening the output FIFO {fifo}: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    let (mut copied, mut lost) = (0u64, 0u64);
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]) {
                    // Nobody reads any more; keep draining the guest so it is not blocked.
                    if lost == 0 {
                        log::warn!("writing to {fifo}: {e}");
                    }
                    lost += n as u64;
                    continue;
                }
                copied += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    log::debug!("{fifo}: {copied} bytes copied, {lost} lost");
}

/// containerd's stdin FIFO → the guest stream; at CloseIO, what was written so far still goes, then the
/// agent learns the total and ends the process's stdin.
fn pump_in(fifo: &str, mut to: UnixStream, closed: Arc<AtomicBool>, closer: Option<(Agent, String, String)>) {
    let f: File = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo.strip_prefix("fifo://").unwrap_or(fifo))
    {
        Ok(f) => f,
        Err(e) => {
            log::warn!("opening the stdin FIFO {fifo}: {e}");
            return;
        }
    };
    let mut f = f;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let closing = closed.load(Ordering::SeqCst);
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&f),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, if closing { 0 } else { 100 }) };
        if ready > 0 {
            match f.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    total += n as u64;
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {
                }
                Err(_) => break,
            }
        }
        if closing {
            break;
        }
    }
    if let Some((agent, cid, exec)) = closer {
        let _ = agent.close_stdin(&cid, &exec, total);
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_addresses_are_fifos_or_file_logs() {
        assert!(check_stdio_uris("/run/fifo/in", "/run/fifo/out", "").is_ok());
        assert!(check_stdio_uris("fifo:///run/fifo/in", "file:///var/log/c.log", "fifo:///run/fifo/err").is_ok());
        let e = check_stdio_uris("", "binary:///usr/bin/logger?id=1", "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("binary://"), "{e}");
        assert!(
            check_stdio_uris("file:///etc/passwd", "", "").is_err(),
            "stdin from a file is not served"
        );
    }

    #[test]
    fn file_logs_are_created_and_appended_to() {
        let path = std::env::temp_dir().join(format!("hull-shim-log-{}", std::process::id()));
        let uri = format!("file://{}", path.display());
        for line in ["one\n", "two\n"] {
            open_output(&uri).unwrap().write_all(line.as_bytes()).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(text, "one\ntwo\n");
    }
}
