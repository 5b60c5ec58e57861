//! The host end of Firecracker's hybrid vsock: connect to the VM's unix socket, send `CONNECT <port>\n`,
//! expect `OK <host port>\n`; the socket then carries the guest port's byte stream. Used for the ttrpc
//! connection and the stdio streams alike.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::stdio::read_line;

#[derive(Debug, Error)]
pub enum HybridError {
    #[error("cannot connect to the vsock socket {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("vsock handshake for guest port {port}: {source}")]
    Handshake {
        port: u32,
        source: crate::stdio::StdioError,
    },
    #[error("guest port {port} refused the connection (answer {answer:?})")]
    Refused { port: u32, answer: String },
    #[error("guest port {port} not reachable within {waited:?}: {last}")]
    Timeout { port: u32, waited: Duration, last: String },
}

/// One connection attempt to guest `port` through the hybrid socket at `uds`; the handshake may take 30 s.
pub fn connect(uds: &Path, port: u32) -> Result<UnixStream, HybridError> {
    connect_within(uds, port, Duration::from_secs(30))
}

/// One connection attempt whose handshake answer must come within `limit`.
pub fn connect_within(uds: &Path, port: u32, limit: Duration) -> Result<UnixStream, HybridError> {
    use std::io::Write;
    let mut s = UnixStream::connect(uds).map_err(|source| HybridError::Connect {
        path: uds.display().to_string(),
        source,
    })?;
    // A guest that never answers must not hang the host forever.
    let _ = s.set_read_timeout(Some(limit.max(Duration::from_millis(10))));
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| HybridError::Handshake { port, source: e.into() })?;
    let answer = read_line(&mut s).map_err(|source| HybridError::Handshake { port, source })?;
    if !answer.starts_with("OK ") {
        return Err(HybridError::Refused { port, answer });
    }
    let _ = s.set_read_timeout(None);
    Ok(s)
}

/// Retries [`connect`] until the guest listens on `port` or `timeout` passes.
pub fn connect_retry(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HybridError> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed()).min(Duration::from_secs(30));
        match connect_within(uds, port, left) {
            Ok(s) => return Ok(s),
            Err(e) => {
                if start.elapsed() >= timeout {
                    return Err(HybridError::Timeout {
                        port,
                        waited: start.elapsed(),
                        last: e.to_string(),
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
