//! The one error type of the harness. Two kinds, because they mean different things to whoever runs it:
//! the machine cannot run the benchmark at all (no hull binary, no usable /dev/kvm, not root for network
//! namespaces: exit code 2, like a usage error), or a benchmark ran and something went wrong (exit code 1).
//! Every message says what was being done and what to do about it; nothing is swallowed.

use std::fmt;

/// Why a benchmark could not produce its figures.
#[derive(Debug)]
pub struct BenchError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The environment lacks something the benchmark needs (exit code 2).
    Environment,
    /// The benchmark ran and failed (exit code 1).
    Failed,
}

impl BenchError {
    pub fn env(message: impl Into<String>) -> Self {
        BenchError {
            kind: ErrorKind::Environment,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        BenchError {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            ErrorKind::Environment => 2,
            ErrorKind::Failed => 1,
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;

/// Turns any displayable error into a `Failed` error with context: `io_result.map_err(fail("open x"))`.
pub fn fail<E: fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> BenchError {
    let what = what.into();
    move |e| BenchError::failed(format!("{what}: {e}"))
}
