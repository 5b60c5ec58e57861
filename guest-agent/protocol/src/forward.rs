//! The port-forward stream handshake (CRI PortForward). Each forwarded TCP connection is its own connection
//! to guest vsock port [`crate::FORWARD_PORT`]. The host's first bytes are one line, `FORWARD <port>\n`; the
//! agent connects to that port on the guest's loopback (`127.0.0.1`, then `::1`) and answers `OK\n`, or
//! `ERR <reason>\n` and closes. After `OK` the connection carries the TCP stream's bytes only, both ways; a
//! half-close on one side is passed on to the other.
//!
//! The guest's loopback is the pod's: the containers of a pod share the VM's network namespace, so what a
//! container listens on there is what `kubectl port-forward` reaches under runc too.

use std::io::{Read, Write};

use thiserror::Error;

use crate::stdio::{read_line, StdioError};

#[derive(Debug, Error)]
pub enum ForwardError {
    #[error("port-forward handshake: {0}")]
    Line(#[from] StdioError),
    #[error("port-forward handshake I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed port-forward handshake {0:?}")]
    Malformed(String),
    #[error("the agent refused the port-forward: {0}")]
    Refused(String),
}

/// The handshake line for `port`, newline included.
pub fn encode(port: u16) -> String {
    format!("FORWARD {port}\n")
}

/// Parses a handshake line (without or with its newline): a TCP port from 1 to 65535.
pub fn parse(line: &str) -> Result<u16, ForwardError> {
    let bad = || ForwardError::Malformed(line.chars().take(80).collect());
    let rest = line.trim_end_matches('\n').strip_prefix("FORWARD ").ok_or_else(bad)?;
    if rest.is_empty() || rest.len() > 5 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match rest.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(bad()),
    }
}

/// Agent side: reads the request line from a fresh connection.
pub fn read_request(conn: &mut impl Read) -> Result<u16, ForwardError> {
    parse(&read_line(conn)?)
}

/// Host side: sends the handshake on a fresh connection to the forward port and checks the answer.
pub fn open(conn: &mut (impl Read + Write), port: u16) -> Result<(), ForwardError> {
    conn.write_all(encode(port).as_bytes())?;
    let answer = read_line(conn)?;
    if answer == "OK" {
        Ok(())
    } else {
        Err(ForwardError::Refused(
            answer.strip_prefix("ERR ").unwrap_or(&answer).to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_round_trip_and_bad_lines_are_refused() {
        for p in [1u16, 80, 65535] {
            assert_eq!(parse(&encode(p)).unwrap(), p);
        }
        for line in [
            "",
            "FORWARD",
            "FORWARD ",
            "FORWARD 0",
            "FORWARD 65536",
            "FORWARD -1",
            "FORWARD 80 x",
            "FORWARD +80",
            "FORWARD 000080",
            "forward 80",
            "STDIO c1 - stdin",
        ] {
            assert!(parse(line).is_err(), "{line:?}");
        }
    }

    #[test]
    fn the_host_side_reads_the_answer() {
        struct Conn(Vec<u8>, &'static [u8]);
        impl Read for Conn {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.1.read(b)
            }
        }
        impl Write for Conn {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut ok = Conn(Vec::new(), b"OK\nbytes");
        open(&mut ok, 8080).unwrap();
        assert_eq!(ok.0, b"FORWARD 8080\n");
        assert_eq!(ok.1, b"bytes");
        let mut refused = Conn(Vec::new(), b"ERR nothing listens on port 8080\n");
        let e = open(&mut refused, 8080).unwrap_err().to_string();
        assert!(e.contains("nothing listens"), "{e}");
    }
}
