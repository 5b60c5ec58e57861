//! hull's own code around the vhost-user crates (`devices/src/vhost_user/`): the message relay that holds
//! back early `SET_VRING_ENABLE` and watches for the backend request channel (`enable_filter.rs`), the
//! frontend's acknowledgement of a config-change message (`config_notify.rs`), and the block control
//! socket's line protocol (`blk_control.rs`).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;

use devices::vhost_user::blk_control::{parse_request, serve_connection, Request};
use devices::vhost_user::config_notify::ConfigNotifier;
use devices::vhost_user::enable_filter;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::input::Input;

/// Requests the relay and the notifier look at, and a few the backend handles.
const REQUESTS: &[u32] = &[1, 2, 3, 15, 16, 18, 21, 24, 25, 0, 60];

fn message(input: &mut Input) -> Vec<u8> {
    let request = if input.u8() < 224 {
        input.pick(REQUESTS)
    } else {
        input.u32()
    };
    let flags = if input.u8() < 224 {
        0x1 | (input.u32() & 0xc)
    } else {
        input.u32()
    };
    let payload = input.chunk(64);
    let size = if input.u8() < 224 {
        payload.len() as u32
    } else {
        input.u32()
    };
    let mut m = Vec::with_capacity(12 + payload.len());
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(payload);
    m
}

/// A frontend's messages (some with a file descriptor attached) and a backend's replies through the relay;
/// then, if the frontend handed over a backend request channel, a config change announced on it and
/// answered with bytes from the input.
pub fn relay(data: &[u8]) {
    let mut input = Input::new(data);
    let (Ok((mut frontend, relay_front)), Ok((relay_back, mut backend))) = (UnixStream::pair(), UnixStream::pair())
    else {
        return;
    };
    let notifier = ConfigNotifier::new();
    let mut channel_peers = Vec::new();
    std::thread::scope(|s| {
        let relay = s.spawn(|| enable_filter::relay(relay_front, relay_back, Some(&notifier)));
        // Drain what the relay forwards, so it never blocks on a full socket.
        let drain_front = frontend.try_clone().ok();
        let drain_back = backend.try_clone().ok();
        let drains: Vec<_> = [drain_front, drain_back]
            .into_iter()
            .flatten()
            .map(|mut sock| {
                s.spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(sock.read(&mut buf), Ok(n) if n > 0) {}
                })
            })
            .collect();
        for _ in 0..1 + input.below(12) {
            if input.is_empty() {
                break;
            }
            let bytes = if input.u8() < 240 {
                message(&mut input)
            } else {
                input.chunk(32).to_vec()
            };
            if input.u8() & 3 == 0 {
                let Ok((ours, theirs)) = UnixStream::pair() else { break };
                if frontend.send_with_fd(&bytes[..], ours.as_raw_fd()).is_err() {
                    break;
                }
                channel_peers.push(theirs);
            } else if frontend.write_all(&bytes).is_err() {
                break;
            }
            if input.u8() & 3 == 0 {
                let reply = message(&mut input);
                let _ = backend.write_all(&reply);
            }
        }
        let _ = frontend.shutdown(Shutdown::Write);
        let _ = relay.join().expect("relay thread");
        let _ = backend.shutdown(Shutdown::Both);
        let _ = frontend.shutdown(Shutdown::Both);
        for d in drains {
            d.join().expect("drain thread");
        }
    });
    if notifier.has_channel() {
        for mut peer in channel_peers {
            let _ = peer.write_all(input.chunk(40));
        }
        // Every peer is closed now: a missing acknowledgement ends the wait at once.
        let _ = notifier.notify_config_change();
    }
}

/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` and the frontend's acknowledgement (any bytes, then EOF).
pub fn config_notify(data: &[u8]) {
    let mut input = Input::new(data);
    let notifier = ConfigNotifier::new();
    notifier.set_protocol_features(if input.bool() { 0x8 } else { input.u64() });
    for _ in 0..1 + input.below(3) {
        let Ok((ours, mut frontend)) = UnixStream::pair() else {
            return;
        };
        notifier.set_channel(ours);
        let mut reply = Vec::new();
        if input.bool() {
            // A well-formed header (CONFIG_CHANGE_MSG, flags, size) with a value from the input.
            reply.extend_from_slice(&2u32.to_le_bytes());
            reply.extend_from_slice(&(if input.bool() { 0x5 } else { input.u32() }).to_le_bytes());
            reply.extend_from_slice(&(if input.bool() { 8 } else { input.u32() }).to_le_bytes());
            reply.extend_from_slice(&(if input.bool() { 0 } else { input.u64() }).to_le_bytes());
        }
        reply.extend_from_slice(input.chunk(32));
        let _ = frontend.write_all(&reply);
        drop(frontend);
        let _ = notifier.notify_config_change();
    }
}

/// Request lines, parsed alone and served over a connection the way the control socket does.
pub fn blk_control(data: &[u8]) {
    for line in data.split(|b| *b == b'\n').take(64) {
        if let Ok(Request::Attach { path, .. }) = parse_request(line) {
            assert!(path.is_absolute());
        }
    }
    let Ok((ours, mut client)) = UnixStream::pair() else {
        return;
    };
    let mut answers = Vec::new();
    std::thread::scope(|s| {
        let server = s.spawn(move || serve_connection(ours, |_request| Err("fuzz: not executed".into())));
        let _ = client.write_all(data);
        let _ = client.shutdown(Shutdown::Write);
        let _ = client.read_to_end(&mut answers);
        let _ = server.join().expect("control connection thread");
    });
    for answer in answers.split(|b| *b == b'\n').filter(|a| !a.is_empty()) {
        assert!(
            answer == b"ok" || answer.starts_with(b"error: "),
            "bad answer {answer:?}"
        );
    }
}
