//! A message filter between a vhost-user frontend and our backend, for one frontend quirk.
//!
//! QEMU's vhost-user netdev (7.2) sends `VHOST_USER_SET_VRING_ENABLE` as soon as the guest acks its
//! features — before `VHOST_USER_SET_FEATURES` — and does not repeat it when it starts the device. The
//! `vhost` crate's request handler treats the early message as a protocol violation and drops the
//! connection. This filter forwards every message unchanged except `SET_VRING_ENABLE` seen before the
//! first `SET_FEATURES`: it acknowledges those itself (when a reply is asked for), remembers the last
//! state per ring, and replays them to the backend right after `SET_FEATURES`.
//!
//! The relay also watches two messages for a [`ConfigNotifier`], when given one: the protocol features the
//! frontend acknowledges (`SET_PROTOCOL_FEATURES`, for `REPLY_ACK`) and the backend request channel
//! (`SET_BACKEND_REQ_FD`, of which it keeps a duplicate fd); both still reach the backend unchanged.
//!
//! Owns: the two sockets and the file descriptors in flight (closed after forwarding). Never trusts the
//! frontend's framing: a header announcing more than `MAX_PAYLOAD` bytes, or more fds than fit, ends the
//! session.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::io::RawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

// Every line here can be triggered by the guest (or its driver): rate-limited per call site.
use hull_logging::{guest_debug as debug, guest_warn as warn};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::config_notify::ConfigNotifier;

const HDR_LEN: usize = 12;
const MAX_PAYLOAD: usize = 64 * 1024;
const MAX_FDS: usize = 32;
const SET_FEATURES: u32 = 2;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_BACKEND_REQ_FD: u32 = 21;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;

/// One message as read from a socket, with the fds that came with it (owned until dropped).
struct Message {
    bytes: Vec<u8>,
    fds: Vec<RawFd>,
}

impl Drop for Message {
    fn drop(&mut self) {
        for fd in self.fds.drain(..) {
            // SAFETY: the fds were received with SCM_RIGHTS and are owned by this message only.
            unsafe { libc::close(fd) };
        }
    }
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]])
    }
    fn flags(&self) -> u32 {
        u32::from_le_bytes([self.bytes[4], self.bytes[5], self.bytes[6], self.bytes[7]])
    }
}

/// Reads one message; `Ok(None)` at a clean end of stream.
fn read_message(sock: &mut UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; HDR_LEN];
    let mut fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: HDR_LEN,
    }];
    // SAFETY: the iovec points at `hdr`, which outlives the call.
    let (n, nfds) =
        unsafe { sock.recv_with_fds(&mut iov, &mut fds) }.map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    let mut msg = Message {
        bytes: Vec::new(),
        fds: fds[..nfds].to_vec(),
    };
    if n == 0 {
        return Ok(None);
    }
    if n < HDR_LEN {
        sock.read_exact(&mut hdr[n..])?;
    }
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("vhost-user payload of {size} bytes"),
        ));
    }
    msg.bytes.extend_from_slice(&hdr);
    msg.bytes.resize(HDR_LEN + size, 0);
    sock.read_exact(&mut msg.bytes[HDR_LEN..])?;
    Ok(Some(msg))
}

fn write_message(sock: &UnixStream, msg: &Message) -> io::Result<()> {
    let sent = sock
        .send_with_fds(&[&msg.bytes[..]], &msg.fds)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent < msg.bytes.len() {
        (&*sock).write_all(&msg.bytes[sent..])?;
    }
    Ok(())
}

/// Shows `notifier` what it needs from a frontend message (see the module docs).
fn watch_for_notifier(msg: &Message, notifier: &ConfigNotifier) {
    match msg.request() {
        SET_PROTOCOL_FEATURES if msg.bytes.len() >= HDR_LEN + 8 => {
            let mut v = [0u8; 8];
            v.copy_from_slice(&msg.bytes[HDR_LEN..HDR_LEN + 8]);
            notifier.set_protocol_features(u64::from_le_bytes(v));
        }
        SET_BACKEND_REQ_FD => match msg.fds.first() {
            Some(&fd) => {
                // SAFETY: `fd` is open and owned by `msg` for this call; the duplicate is ours alone.
                let dup = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned();
                match dup {
                    Ok(owned) => notifier.set_channel(UnixStream::from(owned)),
                    Err(e) => {
                        warn!(error = %e, "cannot keep the backend request channel; config changes will not be announced")
                    }
                }
            }
            None => warn!("SET_BACKEND_REQ_FD without a file descriptor"),
        },
        _ => {}
    }
}

/// Relays between `frontend` and `backend` until either side closes; `notifier` (if any) gets the backend
/// request channel.
pub fn relay(frontend: UnixStream, backend: UnixStream, notifier: Option<&ConfigNotifier>) -> io::Result<()> {
    let front_writer = Arc::new(Mutex::new(frontend.try_clone()?));
    let mut back_reader = backend.try_clone()?;
    let to_front = front_writer.clone();
    let front_for_shutdown = frontend.try_clone()?;
    let replies = std::thread::Builder::new()
        .name("vhost-user-relay".into())
        .spawn(move || {
            while let Ok(Some(msg)) = read_message(&mut back_reader) {
                let w = to_front.lock().unwrap_or_else(|p| p.into_inner());
                if write_message(&w, &msg).is_err() {
                    break;
                }
            }
            let _ = front_for_shutdown.shutdown(Shutdown::Both);
        })?;

    let mut front_reader = frontend;
    let mut features_seen = false;
    // Ring index -> enable state held back before SET_FEATURES.
    let mut held: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
    let result = loop {
        let msg = match read_message(&mut front_reader) {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if let Some(n) = notifier {
            watch_for_notifier(&msg, n);
        }
        match msg.request() {
            SET_FEATURES if !features_seen => {
                features_seen = true;
                if let Err(e) = write_message(&backend, &msg) {
                    break Err(e);
                }
                let mut replay = Ok(());
                for (index, num) in std::mem::take(&mut held) {
                    debug!(index, num, "replaying SET_VRING_ENABLE after SET_FEATURES");
                    let mut bytes = Vec::with_capacity(HDR_LEN + 8);
                    bytes.extend_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                    bytes.extend_from_slice(&FLAG_VERSION_1.to_le_bytes());
                    bytes.extend_from_slice(&8u32.to_le_bytes());
                    bytes.extend_from_slice(&index.to_le_bytes());
                    bytes.extend_from_slice(&num.to_le_bytes());
                    replay = write_message(&backend, &Message { bytes, fds: Vec::new() });
                    if replay.is_err() {
                        break;
                    }
                }
                if let Err(e) = replay {
                    break Err(e);
                }
                continue;
            }
            SET_VRING_ENABLE if !features_seen => {
                if msg.bytes.len() >= HDR_LEN + 8 {
                    let b = &msg.bytes[HDR_LEN..];
                    let index = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    let num = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                    held.insert(index, num);
                }
                debug!("holding back SET_VRING_ENABLE sent before SET_FEATURES");
                if msg.flags() & FLAG_NEED_REPLY != 0 {
                    let mut reply = Vec::with_capacity(HDR_LEN + 8);
                    reply.extend_from_slice(&SET_VRING_ENABLE.to_le_bytes());
                    reply.extend_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
                    reply.extend_from_slice(&8u32.to_le_bytes());
                    reply.extend_from_slice(&0u64.to_le_bytes());
                    let w = front_writer.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = (&*w).write_all(&reply) {
                        break Err(e);
                    }
                }
                continue;
            }
            _ => {}
        }
        if let Err(e) = write_message(&backend, &msg) {
            break Err(e);
        }
    };
    if let Err(e) = &result {
        warn!(error = %e, "vhost-user relay ended with an error");
    }
    let _ = backend.shutdown(Shutdown::Both);
    let _ = replies.join();
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::io::AsRawFd;
    use std::time::Duration;

    use super::*;

    fn msg(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&request.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn enable(index: u32, on: u32, flags: u32) -> Vec<u8> {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&on.to_le_bytes());
        msg(SET_VRING_ENABLE, flags, &p)
    }

    fn read_msg(s: &mut UnixStream) -> (u32, u32, Vec<u8>, usize) {
        let m = read_message(s).unwrap().unwrap();
        (m.request(), m.flags(), m.bytes[HDR_LEN..].to_vec(), m.fds.len())
    }

    #[test]
    fn early_enable_is_acked_held_and_replayed_after_set_features() {
        let (mut qemu, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, mut backend) = UnixStream::pair().unwrap();
        for s in [&qemu, &backend] {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        }
        let relay = std::thread::spawn(move || relay(relay_front, relay_back, None));

        // Before SET_FEATURES: enable(0, 1) wants a reply, enable(1, 1) does not; neither reaches the backend.
        qemu.write_all(&enable(0, 1, FLAG_VERSION_1 | FLAG_NEED_REPLY)).unwrap();
        let (req, flags, payload, _) = read_msg(&mut qemu);
        assert_eq!(
            (req, flags & FLAG_REPLY != 0, payload),
            (SET_VRING_ENABLE, true, 0u64.to_le_bytes().to_vec())
        );
        qemu.write_all(&enable(1, 1, FLAG_VERSION_1)).unwrap();
        qemu.write_all(&enable(1, 0, FLAG_VERSION_1)).unwrap();

        // A message with an fd passes through with its fd.
        let file = std::fs::File::open("/dev/null").unwrap();
        qemu.send_with_fds(&[&msg(13, FLAG_VERSION_1, &[0; 8])[..]], &[file.as_raw_fd()])
            .unwrap();
        let (req, _, _, nfds) = read_msg(&mut backend);
        assert_eq!((req, nfds), (13, 1));

        // SET_FEATURES goes through, followed by the last held state of each ring.
        qemu.write_all(&msg(SET_FEATURES, FLAG_VERSION_1, &(1u64 << 30).to_le_bytes()))
            .unwrap();
        assert_eq!(read_msg(&mut backend).0, SET_FEATURES);
        let (req, _, p, _) = read_msg(&mut backend);
        assert_eq!(
            (req, p),
            (SET_VRING_ENABLE, [0u32.to_le_bytes(), 1u32.to_le_bytes()].concat())
        );
        let (req, _, p, _) = read_msg(&mut backend);
        assert_eq!(
            (req, p),
            (SET_VRING_ENABLE, [1u32.to_le_bytes(), 0u32.to_le_bytes()].concat())
        );

        // Afterwards SET_VRING_ENABLE is forwarded untouched, and replies flow back.
        qemu.write_all(&enable(0, 0, FLAG_VERSION_1)).unwrap();
        assert_eq!(read_msg(&mut backend).0, SET_VRING_ENABLE);
        backend
            .write_all(&msg(1, FLAG_VERSION_1 | FLAG_REPLY, &7u64.to_le_bytes()))
            .unwrap();
        assert_eq!(read_msg(&mut qemu).2, 7u64.to_le_bytes().to_vec());

        drop(qemu);
        relay.join().unwrap().unwrap();
    }

    #[test]
    fn backend_request_channel_and_reply_ack_reach_the_notifier() {
        let (mut qemu, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, mut backend) = UnixStream::pair().unwrap();
        backend.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = ConfigNotifier::new();
        let n = notifier.clone();
        let relay = std::thread::spawn(move || relay(relay_front, relay_back, Some(&n)));
        qemu.write_all(&msg(SET_FEATURES, FLAG_VERSION_1, &0u64.to_le_bytes()))
            .unwrap();
        qemu.write_all(&msg(SET_PROTOCOL_FEATURES, FLAG_VERSION_1, &0x8u64.to_le_bytes()))
            .unwrap();
        let (channel_ours, mut channel_qemu) = UnixStream::pair().unwrap();
        qemu.send_with_fds(
            &[&msg(SET_BACKEND_REQ_FD, FLAG_VERSION_1, &[])[..]],
            &[channel_ours.as_raw_fd()],
        )
        .unwrap();
        drop(channel_ours);
        // Everything still reaches the backend, the fd included.
        assert_eq!(read_msg(&mut backend).0, SET_FEATURES);
        assert_eq!(read_msg(&mut backend).0, SET_PROTOCOL_FEATURES);
        let (req, _, _, nfds) = read_msg(&mut backend);
        assert_eq!((req, nfds), (SET_BACKEND_REQ_FD, 1));
        assert!(notifier.has_channel());
        // REPLY_ACK was negotiated: the notifier asks for and waits for an acknowledgement.
        let fe = std::thread::spawn(move || {
            let mut hdr = [0u8; HDR_LEN];
            channel_qemu.read_exact(&mut hdr).unwrap();
            assert_eq!(
                u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
                FLAG_VERSION_1 | FLAG_NEED_REPLY
            );
            channel_qemu
                .write_all(&msg(2, FLAG_VERSION_1 | FLAG_REPLY, &0u64.to_le_bytes()))
                .unwrap();
        });
        notifier.notify_config_change().unwrap();
        fe.join().unwrap();
        drop(qemu);
        relay.join().unwrap().unwrap();
    }

    #[test]
    fn oversized_payload_ends_the_session() {
        let (mut qemu, relay_front) = UnixStream::pair().unwrap();
        let (relay_back, _backend) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || relay(relay_front, relay_back, None));
        let mut hdr = msg(13, FLAG_VERSION_1, &[]);
        hdr[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        qemu.write_all(&hdr).unwrap();
        assert!(relay.join().unwrap().is_err());
    }
}
