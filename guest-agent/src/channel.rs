//! The private channel between the agent and the helper processes it starts (`hull-init`, the container's
//! PID 1, and `hull-exec`, which joins a container to start another process): a unix stream socket pair,
//! frames of a little-endian u32 length and a JSON body, and optionally one file descriptor (a terminal's
//! master side) passed with SCM_RIGHTS alongside a frame.
//!
//! Both ends are ours, but a helper runs next to container code, so frames are size-limited and every
//! decode error is an error, never a panic.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use serde::{de::DeserializeOwned, Serialize};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Largest frame accepted (an OCI spec is a few KiB).
const MAX_FRAME: usize = 4 << 20;
/// The descriptor number a helper finds its end of the channel on.
pub const HELPER_FD: RawFd = 3;
/// Descriptors one receive takes. The protocol passes at most one; the rest are closed.
const MAX_FDS: usize = 4;

/// One end of the channel. The messages it carries are in `helper_protocol.rs`; the channel itself
/// knows only frames.
pub struct Channel {
    sock: UnixStream,
}

impl Channel {
    /// A connected pair: (agent end, helper end). Both are close-on-exec.
    pub fn pair() -> io::Result<(Channel, UnixStream)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Channel { sock: a }, b))
    }

    /// The helper's end, found at [`HELPER_FD`]; made close-on-exec so the container's program never sees it.
    pub fn from_helper_fd() -> io::Result<Channel> {
        crate::sys::set_cloexec(HELPER_FD)?;
        // SAFETY: the agent put our end of the channel at HELPER_FD before exec; nothing else owns it.
        Ok(Channel {
            sock: unsafe { UnixStream::from_raw_fd(HELPER_FD) },
        })
    }

    pub fn set_read_timeout(&self, t: Option<std::time::Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }

    pub fn send<T: Serialize>(&mut self, msg: &T) -> io::Result<()> {
        self.send_with_fd(msg, None)
    }

    /// Sends a frame; with `fd`, the descriptor travels with the frame's first byte.
    pub fn send_with_fd<T: Serialize>(&mut self, msg: &T, fd: Option<RawFd>) -> io::Result<()> {
        let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        match fd {
            None => self.sock.write_all(&frame),
            Some(fd) => {
                // sendmsg(2) with one SCM_RIGHTS descriptor (and MSG_NOSIGNAL); the rest of the frame follows.
                let sent = self.sock.send_with_fd(&frame[..], fd).map_err(io::Error::from)?;
                self.sock.write_all(&frame[sent..])
            }
        }
    }

    /// Receives a frame; `Ok(None)` at a clean end of stream. A passed descriptor is returned with it.
    pub fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<(T, Option<OwnedFd>)>> {
        let mut len = [0u8; 4];
        let (n, fd) = recv_with_fd(&self.sock, &mut len)?;
        if n == 0 {
            return Ok(None);
        }
        self.sock.read_exact(&mut len[n..])?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("frame of {len} bytes"),
            ));
        }
        let mut body = vec![0u8; len];
        self.sock.read_exact(&mut body)?;
        let msg = serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((msg, fd)))
    }
}

/// recvmsg(2) into `buf`, taking at most one passed descriptor, which is made close-on-exec at once (the
/// agent starts helpers from other threads; `init::spawn_helper` also closes everything above fd 3).
fn recv_with_fd(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut fds = [-1 as RawFd; MAX_FDS];
    let mut iovecs = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    let (n, count) = loop {
        // SAFETY: the only iovec points at `buf`, borrowed mutably for this call, where any bytes may land.
        match unsafe { sock.recv_with_fds(&mut iovecs, &mut fds) } {
            Ok(got) => break got,
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // SAFETY: the kernel has just installed these `count` descriptors for us; nothing else owns them.
    let received: Vec<OwnedFd> = fds[..count]
        .iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    // More than one descriptor is not part of the protocol: keep the first; the rest close here.
    let first = received.into_iter().next();
    if let Some(fd) = &first {
        crate::sys::set_cloexec(fd.as_raw_fd())?;
    }
    Ok((n, first))
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use super::*;
    use crate::helper_protocol::FromHelper;
    use crate::sys::ExitStatus;

    #[test]
    fn frames_and_a_passed_descriptor_arrive_intact() {
        let (mut agent, helper) = Channel::pair().unwrap();
        let mut helper = Channel { sock: helper };
        let mut file = tempfile_with(b"passed");
        helper
            .send_with_fd(&FromHelper::Started { pid: 42 }, Some(file.as_raw_fd()))
            .unwrap();
        helper
            .send(&FromHelper::Exited(ExitStatus { code: -1, signal: 9 }))
            .unwrap();
        let (msg, fd) = agent.recv::<FromHelper>().unwrap().unwrap();
        assert!(matches!(msg, FromHelper::Started { pid: 42 }));
        let mut got = std::fs::File::from(fd.expect("a descriptor"));
        let mut text = String::new();
        got.rewind().unwrap();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "passed");
        let (msg, fd) = agent.recv::<FromHelper>().unwrap().unwrap();
        assert!(matches!(msg, FromHelper::Exited(ExitStatus { code: -1, signal: 9 })) && fd.is_none());
        drop(helper);
        assert!(agent.recv::<FromHelper>().unwrap().is_none());
        file.flush().unwrap();
    }

    #[test]
    fn a_passed_descriptor_arrives_close_on_exec() {
        let (mut agent, helper) = Channel::pair().unwrap();
        let mut helper = Channel { sock: helper };
        let (r, _w) = crate::sys::pipe().unwrap();
        helper.send_with_fd(&FromHelper::Ready, Some(r.as_raw_fd())).unwrap();
        let (_, fd) = agent.recv::<FromHelper>().unwrap().unwrap();
        let fd = fd.expect("a descriptor");
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0, "flags {flags:#x}");
    }

    #[test]
    fn oversized_and_garbled_frames_are_errors() {
        let (mut agent, mut raw) = Channel::pair().unwrap();
        raw.write_all(&(MAX_FRAME as u32 + 1).to_le_bytes()).unwrap();
        assert!(agent.recv::<FromHelper>().is_err());
        let (mut agent, mut raw) = Channel::pair().unwrap();
        raw.write_all(&3u32.to_le_bytes()).unwrap();
        raw.write_all(b"{{{").unwrap();
        assert!(agent.recv::<FromHelper>().is_err());
    }

    fn tempfile_with(data: &[u8]) -> std::fs::File {
        let path = std::env::temp_dir().join(format!("hull-channel-test-{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.write_all(data).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
