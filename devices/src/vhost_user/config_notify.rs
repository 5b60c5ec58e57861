//! Telling a vhost-user frontend that the device's config space changed: `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`
//! on the backend request channel. QEMU's vhost-user-blk answers it by re-reading the config
//! (`VHOST_USER_GET_CONFIG`) and, when the capacity changed, sending the guest a config interrupt.
//!
//! The `vhost` crate (0.18) receives that channel (`VHOST_USER_SET_BACKEND_REQ_FD`) but its `Backend` has no
//! way to send this message, so the relay in `enable_filter` keeps its own duplicate of the channel's fd and
//! the negotiated `REPLY_ACK` bit, and hands them to a [`ConfigNotifier`]. The crate's own copy is never
//! used: no feature that makes it send anything (shared objects, shmem) is offered.
//!
//! Owns: the duplicated channel. Never trusts the frontend's reply beyond its shape: a reply that does not
//! match, does not arrive within [`REPLY_TIMEOUT`] or reports failure is an error, never a hang.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::debug;

/// `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG` (backend → frontend request 2).
const CONFIG_CHANGE_MSG: u32 = 2;
const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const HDR_LEN: usize = 12;
/// How long the frontend may take to acknowledge (it runs a GET_CONFIG round trip first).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sending the config-change message failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "no frontend has given a backend request channel yet (not connected, or it did not negotiate \
         VHOST_USER_PROTOCOL_F_BACKEND_REQ)"
    )]
    NoChannel,
    #[error("sending VHOST_USER_BACKEND_CONFIG_CHANGE_MSG: {0}")]
    Send(#[source] io::Error),
    #[error("reading the frontend's acknowledgement: {0}")]
    Reply(#[source] io::Error),
    #[error(
        "the frontend answered with request {request}, flags {flags:#x}, size {size}; expected an acknowledgement"
    )]
    BadReply { request: u32, flags: u32, size: u32 },
    #[error("the frontend reported failure ({0}) handling the config change")]
    Refused(u64),
}

#[derive(Default)]
struct Channel {
    stream: Option<UnixStream>,
    reply_ack: bool,
}

/// The backend request channel of the current frontend session, shared between the relay (which fills it
/// in) and whoever changes the device's config (which sends the message). Clones share the channel.
#[derive(Clone, Default)]
pub struct ConfigNotifier {
    channel: Arc<Mutex<Channel>>,
}

impl ConfigNotifier {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Channel> {
        self.channel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The frontend sent `VHOST_USER_SET_BACKEND_REQ_FD`; `stream` is our own duplicate of that fd.
    pub fn set_channel(&self, stream: UnixStream) {
        debug!("vhost-user backend request channel received");
        self.lock().stream = Some(stream);
    }

    /// The protocol features the frontend acknowledged (`VHOST_USER_SET_PROTOCOL_FEATURES`).
    pub fn set_protocol_features(&self, features: u64) {
        let reply_ack = vhost::vhost_user::message::VhostUserProtocolFeatures::REPLY_ACK.bits();
        self.lock().reply_ack = features & reply_ack != 0;
    }

    /// Whether a channel is there to send on.
    pub fn has_channel(&self) -> bool {
        self.lock().stream.is_some()
    }

    /// Sends `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`; with `REPLY_ACK` negotiated, waits for the frontend's
    /// acknowledgement (so on `Ok` the frontend has re-read the config). A broken channel is dropped.
    pub fn notify_config_change(&self) -> Result<(), NotifyError> {
        let mut ch = self.lock();
        let reply_ack = ch.reply_ack;
        let stream = ch.stream.as_mut().ok_or(NotifyError::NoChannel)?;
        let result = send_and_wait(stream, reply_ack);
        if matches!(result, Err(NotifyError::Send(_) | NotifyError::Reply(_))) {
            ch.stream = None;
        }
        result
    }
}

fn send_and_wait(stream: &mut UnixStream, reply_ack: bool) -> Result<(), NotifyError> {
    let flags = FLAG_VERSION_1 | if reply_ack { FLAG_NEED_REPLY } else { 0 };
    let mut hdr = [0u8; HDR_LEN];
    hdr[0..4].copy_from_slice(&CONFIG_CHANGE_MSG.to_le_bytes());
    hdr[4..8].copy_from_slice(&flags.to_le_bytes());
    stream.write_all(&hdr).map_err(NotifyError::Send)?;
    if !reply_ack {
        return Ok(());
    }
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .map_err(NotifyError::Reply)?;
    let mut reply = [0u8; HDR_LEN + 8];
    stream.read_exact(&mut reply).map_err(NotifyError::Reply)?;
    let word = |i: usize| u32::from_le_bytes([reply[i], reply[i + 1], reply[i + 2], reply[i + 3]]);
    let (request, flags, size) = (word(0), word(4), word(8));
    if request != CONFIG_CHANGE_MSG || flags & FLAG_REPLY == 0 || size != 8 {
        return Err(NotifyError::BadReply { request, flags, size });
    }
    let mut value = [0u8; 8];
    value.copy_from_slice(&reply[HDR_LEN..]);
    match u64::from_le_bytes(value) {
        0 => Ok(()),
        failure => Err(NotifyError::Refused(failure)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8]) -> (u32, u32, u32) {
        let w = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        (w(0), w(4), w(8))
    }

    fn reply(request: u32, flags: u32, value: u64) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&request.to_le_bytes());
        r.extend_from_slice(&flags.to_le_bytes());
        r.extend_from_slice(&8u32.to_le_bytes());
        r.extend_from_slice(&value.to_le_bytes());
        r
    }

    #[test]
    fn without_a_channel_nothing_is_sent() {
        let n = ConfigNotifier::new();
        assert!(!n.has_channel());
        assert!(matches!(n.notify_config_change(), Err(NotifyError::NoChannel)));
    }

    #[test]
    fn without_reply_ack_the_message_is_sent_and_not_waited_for() {
        let n = ConfigNotifier::new();
        let (ours, mut frontend) = UnixStream::pair().unwrap();
        n.set_channel(ours);
        n.notify_config_change().unwrap();
        let mut hdr = [0u8; HDR_LEN];
        frontend.read_exact(&mut hdr).unwrap();
        assert_eq!(header(&hdr), (CONFIG_CHANGE_MSG, FLAG_VERSION_1, 0));
    }

    #[test]
    fn with_reply_ack_the_acknowledgement_is_checked() {
        let n = ConfigNotifier::new();
        n.set_protocol_features(0x8 | 0x20 | 0x200);
        let (ours, frontend) = UnixStream::pair().unwrap();
        n.set_channel(ours);
        let answers = [
            reply(CONFIG_CHANGE_MSG, FLAG_VERSION_1 | FLAG_REPLY, 0),
            reply(CONFIG_CHANGE_MSG, 0x5, 1),
            reply(7, 0x5, 0),
        ];
        let fe = std::thread::spawn(move || {
            let mut frontend = frontend;
            for answer in answers {
                let mut hdr = [0u8; HDR_LEN];
                frontend.read_exact(&mut hdr).unwrap();
                assert_eq!(header(&hdr), (CONFIG_CHANGE_MSG, FLAG_VERSION_1 | FLAG_NEED_REPLY, 0));
                frontend.write_all(&answer).unwrap();
            }
            frontend
        });
        n.notify_config_change().unwrap();
        assert!(matches!(n.notify_config_change(), Err(NotifyError::Refused(1))));
        assert!(matches!(
            n.notify_config_change(),
            Err(NotifyError::BadReply { request: 7, .. })
        ));
        let frontend = fe.join().unwrap();
        // The frontend going away breaks the channel, which is then dropped.
        drop(frontend);
        assert!(n.notify_config_change().is_err());
        assert!(!n.has_channel());
    }
}
