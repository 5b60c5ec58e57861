//! The stdio stream handshake. Each stream of a process (stdin, stdout, stderr, or one terminal stream for
//! both directions) is its own connection to guest vsock port [`crate::STDIO_PORT`]. The host's first bytes
//! are one line, `STDIO <container_id> <exec_id|-> <stream>\n` ("-" names the init process), and the agent
//! answers `OK\n` or `ERR <reason>\n`; after that the connection carries the stream's bytes only, in order,
//! and the agent closes an output stream once the process and everything it started have closed it.
//!
//! Lines are read one byte at a time up to [`MAX_LINE`], so no stream byte is consumed by the handshake.

use std::io::{Read, Write};

use thiserror::Error;

use crate::ids::{validate_exec_id, validate_id, IdError};

/// Longest handshake line, newline included.
pub const MAX_LINE: usize = 256;

/// Which stream a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
    /// The process's terminal: host writes are input, reads are output.
    Terminal,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdin => "stdin",
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Terminal => "terminal",
        }
    }

    fn parse(s: &str) -> Option<Stream> {
        Some(match s {
            "stdin" => Stream::Stdin,
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            "terminal" => Stream::Terminal,
            _ => return None,
        })
    }
}

/// What a stdio connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StdioRequest {
    pub container_id: String,
    /// "" for the init process.
    pub exec_id: String,
    pub stream: Stream,
}

#[derive(Debug, Error)]
pub enum StdioError {
    #[error("stdio handshake I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("stdio handshake line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("stdio handshake line is not UTF-8")]
    NotUtf8,
    #[error("malformed stdio handshake {0:?}")]
    Malformed(String),
    #[error("bad id in stdio handshake: {0}")]
    BadId(#[from] IdError),
    #[error("the agent refused the stdio stream: {0}")]
    Refused(String),
}

impl StdioRequest {
    /// The handshake line, newline included.
    pub fn encode(&self) -> String {
        let exec = if self.exec_id.is_empty() { "-" } else { &self.exec_id };
        format!("STDIO {} {} {}\n", self.container_id, exec, self.stream.as_str())
    }

    /// Parses a handshake line (without or with its newline).
    pub fn parse(line: &str) -> Result<StdioRequest, StdioError> {
        let bad = || StdioError::Malformed(line.chars().take(80).collect());
        let mut words = line.trim_end_matches('\n').split(' ');
        if words.next() != Some("STDIO") {
            return Err(bad());
        }
        let container_id = words.next().ok_or_else(bad)?.to_string();
        let exec = words.next().ok_or_else(bad)?;
        let stream = words.next().and_then(Stream::parse).ok_or_else(bad)?;
        if words.next().is_some() {
            return Err(bad());
        }
        validate_id(&container_id)?;
        let exec_id = if exec == "-" { String::new() } else { exec.to_string() };
        validate_exec_id(&exec_id)?;
        Ok(StdioRequest {
            container_id,
            exec_id,
            stream,
        })
    }
}

/// Reads one '\n'-terminated line, byte by byte, at most [`MAX_LINE`] bytes; returns it without the newline.
pub fn read_line(r: &mut impl Read) -> Result<String, StdioError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        let n = r.read(&mut b)?;
        if n == 0 {
            return Err(StdioError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() >= MAX_LINE {
            return Err(StdioError::LineTooLong);
        }
    }
    String::from_utf8(line).map_err(|_| StdioError::NotUtf8)
}

/// Host side: sends the handshake on a fresh connection to the stdio port and checks the answer.
pub fn open(conn: &mut (impl Read + Write), req: &StdioRequest) -> Result<(), StdioError> {
    conn.write_all(req.encode().as_bytes())?;
    let answer = read_line(conn)?;
    if answer == "OK" {
        Ok(())
    } else {
        Err(StdioError::Refused(
            answer.strip_prefix("ERR ").unwrap_or(&answer).to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let r = StdioRequest {
            container_id: "c1".into(),
            exec_id: String::new(),
            stream: Stream::Stdout,
        };
        assert_eq!(r.encode(), "STDIO c1 - stdout\n");
        assert_eq!(StdioRequest::parse(&r.encode()).unwrap(), r);
        let r = StdioRequest {
            container_id: "c1".into(),
            exec_id: "e2".into(),
            stream: Stream::Terminal,
        };
        assert_eq!(StdioRequest::parse(&r.encode()).unwrap(), r);
    }

    #[test]
    fn refuses_bad_lines() {
        for line in [
            "",
            "STDIO",
            "STDIO c1 - ",
            "STDIO c1 - stdio",
            "stdio c1 - stdin",
            "STDIO ../x - stdin",
            "STDIO c1 - stdin extra",
            "STDIO c1 a/b stdin",
        ] {
            assert!(StdioRequest::parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn read_line_is_bounded_and_stops_at_newline() {
        let mut data: &[u8] = b"OK\nrest";
        assert_eq!(read_line(&mut data).unwrap(), "OK");
        assert_eq!(data, b"rest");
        let long = vec![b'a'; 1000];
        assert!(matches!(read_line(&mut long.as_slice()), Err(StdioError::LineTooLong)));
        assert!(read_line(&mut &b"no newline"[..]).is_err());
    }
}
