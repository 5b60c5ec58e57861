//! The vsock muxer behind the hybrid unix-socket protocol (`devices/src/virtio/vsock/muxer.rs`,
//! `connection.rs`, `unix.rs`): guest packets and host peers interleaved as the input says, against real
//! unix sockets in a private directory; and the `CONNECT <port>` handshake line on its own.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use devices::virtio::vsock::packet::*;
use devices::virtio::vsock::unix::Handshake;
use devices::virtio::vsock::{VsockBackend, VsockMetrics, VsockMuxer, HOST_CID, TYPE_STREAM};

use crate::input::Input;
use crate::scratch::ScratchDir;

const GUEST_CID: u64 = 3;
/// The host port a listener serves for guest-initiated connections (`<uds>_52`).
const HOST_LISTENER_PORT: u32 = 52;

fn guest_packet(input: &mut Input, seen: &[PacketHeader]) -> (PacketHeader, Vec<u8>) {
    let op = input.pick(&[
        OP_REQUEST,
        OP_RESPONSE,
        OP_RST,
        OP_SHUTDOWN,
        OP_RW,
        OP_RW,
        OP_CREDIT_UPDATE,
        OP_CREDIT_REQUEST,
        0,
        99,
    ]);
    let (src_port, dst_port) = match (input.u8() % 4, seen.is_empty()) {
        // Answer something the host sent (a host-initiated REQUEST, data, a credit request).
        (0 | 1, false) => {
            let h = seen[input.below(seen.len() as u32) as usize];
            (h.dst_port, h.src_port)
        }
        (2, _) => (1000 + u32::from(input.u8() % 4), HOST_LISTENER_PORT),
        _ => (input.u32(), input.u32()),
    };
    let payload = if op == OP_RW {
        input.chunk(2048).to_vec()
    } else {
        Vec::new()
    };
    let hdr = PacketHeader {
        src_cid: if input.u8() < 250 { GUEST_CID } else { input.u64() },
        dst_cid: if input.u8() < 250 { HOST_CID } else { input.u64() },
        src_port,
        dst_port,
        len: payload.len() as u32,
        type_: if input.u8() < 250 { TYPE_STREAM } else { input.u16() },
        op,
        flags: input.u32() & if input.bool() { 3 } else { u32::MAX },
        buf_alloc: if input.bool() { 64 << 10 } else { input.u32() },
        fwd_cnt: input.u32(),
    };
    (hdr, payload)
}

/// Up to 40 steps: guest packets, host peers connecting (with a `CONNECT` line or garbage), writing,
/// reading and closing, the muxer's event processing, the guest fetching packets, and resets.
pub fn muxer(data: &[u8]) {
    let mut input = Input::new(data);
    let dir = ScratchDir::new();
    let uds = dir.path().join("v");
    let guest_target = dir.path().join(format!("v_{HOST_LISTENER_PORT}"));
    let _ = std::fs::remove_file(&guest_target);
    let Ok(listener) = UnixListener::bind(&guest_target) else {
        return;
    };
    let _ = listener.set_nonblocking(true);
    let metrics = Arc::new(VsockMetrics::default());
    let Ok(mut muxer) = VsockMuxer::new(GUEST_CID, &uds, metrics.clone()) else {
        return;
    };
    let mut host: Vec<UnixStream> = Vec::new();
    let mut seen: Vec<PacketHeader> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    for _ in 0..40 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 10 {
            0 | 1 => {
                let (hdr, payload) = guest_packet(&mut input, &seen);
                muxer.send_pkt(&hdr, &payload);
            }
            2 if host.len() < 8 => {
                let Ok(mut s) = UnixStream::connect(&uds) else { continue };
                let _ = s.set_nonblocking(true);
                let line = if input.u8() < 200 {
                    let port = input.pick(&[1024u32, 1025, 0, u32::MAX]);
                    format!("CONNECT {port}\n").into_bytes()
                } else {
                    input.chunk(48).to_vec()
                };
                let _ = s.write(&line);
                host.push(s);
            }
            3 if !host.is_empty() => {
                let i = input.below(host.len() as u32) as usize;
                let _ = host[i].write(input.chunk(4096));
            }
            4 if !host.is_empty() => {
                let i = input.below(host.len() as u32) as usize;
                let _ = host[i].read(&mut buf);
            }
            5 if !host.is_empty() => {
                let i = input.below(host.len() as u32) as usize;
                host.swap_remove(i);
            }
            6 => muxer.process_events(),
            7 => {
                let cap = input.pick(&[0usize, 1, 100, 4096, 64 << 10]);
                for _ in 0..1 + input.below(4) {
                    let Some((hdr, n)) = muxer.recv_pkt(&mut buf[..cap]) else {
                        break;
                    };
                    assert!(n <= cap, "recv_pkt returned {n} bytes for a {cap}-byte buffer");
                    assert_eq!(hdr.dst_cid, GUEST_CID, "a packet for the guest names the guest");
                    if seen.len() < 16 {
                        seen.push(hdr);
                    }
                }
            }
            8 => {
                // The host service behind `<uds>_52`: accept, answer, hang up.
                if let Ok((mut s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    let _ = s.write(input.chunk(1024));
                    if input.bool() {
                        host.push(s);
                    }
                }
            }
            9 if input.u8() < 32 => muxer.reset(),
            _ => {}
        }
        let _ = muxer.has_pending_rx();
    }
    drop(muxer);
    let _ = std::fs::remove_file(&guest_target);
    crate::stats::record("vsock_muxer", Some(metrics));
}

/// The `CONNECT <port>\n` line a host peer sends first, arriving in pieces, then EOF or silence.
pub fn handshake(data: &[u8]) {
    let mut input = Input::new(data);
    let Ok((ours, mut peer)) = UnixStream::pair() else {
        return;
    };
    let _ = ours.set_nonblocking(true);
    let close_at_end = input.bool();
    let mut hs = Handshake::new(ours);
    let mut outcome = None;
    while outcome.is_none() && !input.is_empty() {
        let piece = input.chunk(40);
        let _ = peer.write_all(piece);
        outcome = hs.read_line();
    }
    if outcome.is_none() && close_at_end {
        drop(peer);
        outcome = hs.read_line();
        assert!(outcome.is_some(), "a closed peer must end the handshake");
    }
    if let Some(Ok(port)) = outcome {
        let _ = port;
    }
}
