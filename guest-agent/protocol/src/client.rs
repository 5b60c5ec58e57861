//! The host's ttrpc client for the agent, over the hybrid vsock: connect to guest port 1024, prove the
//! connection with a Health call (a vsock backend may accept before the guest's agent does), and hand back
//! the generated [`AgentClient`]. Shared by `hull run`, the containerd shim and the tests.

use std::os::fd::IntoRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::agent::HealthRequest;
use crate::agent_ttrpc::AgentClient;
use crate::hybrid::{self, HybridError};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] HybridError),
    #[error("the agent did not answer Health within {waited:?}: {source}")]
    NotAnswering { waited: Duration, source: ttrpc::Error },
    #[error("ttrpc client: {0}")]
    Ttrpc(ttrpc::Error),
}

/// Connects and checks the agent answers, retrying until `timeout` has passed.
pub fn connect(uds: &Path, timeout: Duration) -> Result<AgentClient, ClientError> {
    let start = Instant::now();
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        let stream = hybrid::connect_retry(uds, crate::AGENT_PORT, left)?;
        let guard = stream
            .try_clone()
            .map_err(|e| ClientError::Ttrpc(ttrpc::Error::Others(e.to_string())))?;
        let client = AgentClient::new(ttrpc::Client::new(stream.into_raw_fd()).map_err(ClientError::Ttrpc)?);
        let ctx = ttrpc::context::with_timeout(Duration::from_secs(2).as_nanos() as i64);
        let result = client.health(ctx, &HealthRequest::new());
        if result.is_err() {
            // ttrpc 0.9's client closes its socket before it stops its receiver thread, which may then read
            // whatever socket of ours gets the same descriptor number next. Shut the connection down first and
            // give the receiver (it polls every 10 ms) time to see the end and quit, then drop the client.
            let _ = guard.shutdown(std::net::Shutdown::Both);
            std::thread::sleep(Duration::from_millis(30));
        }
        drop(guard);
        match result {
            Ok(_) => return Ok(client),
            Err(source) if start.elapsed() >= timeout => {
                return Err(ClientError::NotAnswering {
                    waited: start.elapsed(),
                    source,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
