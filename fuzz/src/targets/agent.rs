//! What the host reads from hull-agent, a process inside the guest and so untrusted: ttrpc replies
//! (`guest-agent/protocol/proto/agent.proto`, decoded by the generated client the runtime and the shim
//! use through `runtime/src/agent.rs`), the stdio stream handshake (`guest-agent/protocol/src/stdio.rs`)
//! and the hybrid vsock answer (`guest-agent/protocol/src/hybrid.rs`).

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use hull_agent_protocol::agent::*;
use hull_agent_protocol::agent_ttrpc::AgentClient;
use hull_agent_protocol::protobuf::Message;
use hull_agent_protocol::stdio::{self, StdioRequest, Stream};
use hull_agent_protocol::ttrpc::{self, context};
use hull_agent_protocol::{hybrid, ttrpc::Code};

use crate::input::Input;
use crate::scratch::ScratchDir;

/// Decodes `bytes` as every reply the host reads, alone and inside a ttrpc `Response`.
fn decode_replies(bytes: &[u8]) {
    fn all(b: &[u8]) {
        let _ = VersionResponse::parse_from_bytes(b);
        let _ = HealthResponse::parse_from_bytes(b);
        let _ = WaitProcessResponse::parse_from_bytes(b);
        let _ = ListProcessesResponse::parse_from_bytes(b);
        let _ = StatsContainerResponse::parse_from_bytes(b);
        let _ = OomEvent::parse_from_bytes(b);
        let _ = ReadFileResponse::parse_from_bytes(b);
        let _ = Empty::parse_from_bytes(b);
    }
    all(bytes);
    if let Ok(response) = ttrpc::Response::parse_from_bytes(bytes) {
        all(&response.payload);
    }
}

/// One call through the generated client, answered by a fake agent with one frame from the input.
fn client_call(input: &mut Input) {
    let Ok((client_end, mut agent)) = UnixStream::pair() else {
        return;
    };
    let Ok(client) = ttrpc::Client::new(client_end.into_raw_fd()) else {
        return;
    };
    let client = AgentClient::new(client);
    let call = input.u8() % 7;
    // The reply frame: ttrpc's 10-byte header (length, stream id, type, flags; big-endian), then a
    // `Response` whose payload is the reply message, or raw bytes.
    let body = if input.u8() < 200 {
        let mut response = ttrpc::Response::new();
        let mut status = ttrpc::Status::new();
        status.code = if input.u8() < 200 {
            Code::OK.into()
        } else {
            hull_agent_protocol::protobuf::EnumOrUnknown::from_i32(i32::from(input.u8()))
        };
        status.message = String::from_utf8_lossy(input.chunk(32)).into_owned();
        response.status = Some(status).into();
        response.payload = input.chunk(512).to_vec();
        response.write_to_bytes().unwrap_or_default()
    } else {
        input.chunk(512).to_vec()
    };
    // At most ttrpc's 4 MiB limit: a longer frame from a peer that then hangs up makes ttrpc 0.9's client
    // "discard" it with up to a million reads at EOF (about half a second of CPU, then the call fails;
    // docs/SECURITY.md, Fuzzing). Known, bounded, and not ours to fix; it would only slow the target down.
    let length = if input.u8() < 230 {
        body.len() as u32
    } else {
        input.u32() % ((4 << 20) + 1)
    };
    let stream_id = if input.u8() < 230 { 1 } else { input.u32() };
    let kind = if input.u8() < 230 { 2 } else { input.u8() };
    let flags = input.u8();
    let mut frame = Vec::with_capacity(10 + body.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(&stream_id.to_be_bytes());
    frame.push(kind);
    frame.push(flags);
    frame.extend_from_slice(&body);
    std::thread::scope(|s| {
        s.spawn(move || {
            // Read the request's header and body, answer, hang up.
            let mut header = [0u8; 10];
            if agent.read_exact(&mut header).is_ok() {
                let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                let mut request = vec![0u8; len.min(1 << 20)];
                let _ = agent.read_exact(&mut request);
                let _ = agent.write_all(&frame);
            }
        });
        let ctx = || context::with_timeout(Duration::from_secs(2).as_nanos() as i64);
        match call {
            0 => {
                let _ = client.version(ctx(), &VersionRequest::new());
            }
            1 => {
                let _ = client.health(ctx(), &HealthRequest::new());
            }
            2 => {
                if let Ok(r) = client.wait_process(ctx(), &ProcessRequest::new()) {
                    let _ = (r.exit_code, r.signal, r.oom_killed);
                }
            }
            3 => {
                let _ = client.list_processes(ctx(), &ContainerRequest::new());
            }
            4 => {
                let _ = client.stats_container(ctx(), &ContainerRequest::new());
            }
            5 => {
                let _ = client.read_file(ctx(), &ReadFileRequest::new());
            }
            _ => {
                let _ = client.get_oom_event(ctx(), &GetOomEventRequest::new());
            }
        }
        drop(client);
    });
}

/// Reply bytes decoded directly (most inputs) or sent back through the ttrpc client (one in eight: each
/// such call costs the client's two threads).
pub fn reply(data: &[u8]) {
    let mut input = Input::new(data);
    if input.u8() & 7 == 0 {
        client_call(&mut input);
    } else {
        decode_replies(input.rest());
    }
}

/// An in-memory connection: what the agent answers, and what the host wrote.
struct Conn<'a> {
    answer: &'a [u8],
    written: Vec<u8>,
}

impl Read for Conn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.answer.read(buf)
    }
}

impl Write for Conn<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The stdio handshake both ways (the agent parsing the host's line, the host reading the agent's
/// answer), and the hybrid vsock's `OK <port>` answer read from a real socket.
pub fn stdio_handshake(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8() % 4;
    let rest = input.rest();
    match mode {
        0 => {
            let line = String::from_utf8_lossy(rest);
            if let Ok(req) = StdioRequest::parse(&line) {
                assert_eq!(
                    StdioRequest::parse(&req.encode()).ok(),
                    Some(req),
                    "encode/parse round trip"
                );
            }
        }
        1 => {
            let mut reader = rest;
            if let Ok(line) = stdio::read_line(&mut reader) {
                assert!(line.len() < stdio::MAX_LINE && !line.contains('\n'));
            }
        }
        2 => {
            let req = StdioRequest {
                container_id: "c1".into(),
                exec_id: String::new(),
                stream: Stream::Stdout,
            };
            let mut conn = Conn {
                answer: rest,
                written: Vec::new(),
            };
            let _ = stdio::open(&mut conn, &req);
            assert_eq!(conn.written, req.encode().into_bytes());
        }
        _ => hybrid_answer(rest),
    }
}

/// A hybrid vsock socket that answers `CONNECT 1024` with `answer`, then hangs up.
fn hybrid_answer(answer: &[u8]) {
    let dir = ScratchDir::new();
    let path = dir.path().join("hybrid");
    let _ = std::fs::remove_file(&path);
    let Ok(listener) = UnixListener::bind(&path) else {
        return;
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Ok((mut peer, _)) = listener.accept() {
                let mut line = [0u8; 13];
                let _ = peer.read_exact(&mut line);
                let _ = peer.write_all(answer);
            }
        });
        let _ = hybrid::connect_within(&path, 1024, Duration::from_secs(2));
    });
    let _ = std::fs::remove_file(&path);
}
