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

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::sys::ExitStatus;

/// Largest frame accepted (an OCI spec is a few KiB).
const MAX_FRAME: usize = 4 << 20;
/// The descriptor number a helper finds its end of the channel on.
pub const HELPER_FD: RawFd = 3;

/// What the agent tells a helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToHelper {
    /// `hull-init`: set up the container.
    Init(Box<crate::init::InitConfig>),
    /// `hull-init`: run the container's program now.
    Start,
    /// `hull-exec`: join the container and run a process.
    Exec(Box<crate::init::ExecConfig>),
}

/// What a helper tells the agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromHelper {
    /// Set up; a terminal's master side comes with this frame when the process has one.
    Ready,
    /// The process runs; its PID in the guest's root PID namespace (0 if the helper cannot know it).
    Started { pid: i32 },
    /// The container's program ended with this status.
    Exited(ExitStatus),
    /// Setting up failed.
    Error(String),
}

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
        Ok(Channel { sock: unsafe { UnixStream::from_raw_fd(HELPER_FD) } })
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
                let sent = send_fd(self.sock.as_raw_fd(), &frame, fd)?;
                self.sock.write_all(&frame[sent..])
            }
        }
    }

    /// Receives a frame; `Ok(None)` at a clean end of stream. A passed descriptor is returned with it.
    pub fn recv<T: DeserializeOwned>(&mut self) -> io::Result<Option<(T, Option<OwnedFd>)>> {
        let mut len = [0u8; 4];
        let (n, fd) = recv_with_fd(self.sock.as_raw_fd(), &mut len)?;
        if n == 0 {
            return Ok(None);
        }
        self.sock.read_exact(&mut len[n..])?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        self.sock.read_exact(&mut body)?;
        let msg = serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((msg, fd)))
    }
}

/// sendmsg(2) with one SCM_RIGHTS descriptor; returns how many bytes went.
fn send_fd(sock: RawFd, data: &[u8], fd: RawFd) -> io::Result<usize> {
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    // SAFETY: msghdr is plain data; we fill the fields sendmsg reads, pointing at buffers that live until it
    // returns. CMSG_FIRSTHDR on a buffer of CMSG_SPACE bytes is non-null.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::copy_nonoverlapping(&fd as *const RawFd as *const u8, libc::CMSG_DATA(cmsg), 4);
        let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// recvmsg(2) into `buf`, taking at most one passed descriptor (close-on-exec).
fn recv_with_fd(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE((4 * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: as in send_fd; the control buffer is walked with the CMSG macros within msg_controllen, and
    // only SCM_RIGHTS payloads are read as descriptors, which the kernel has just installed for us.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let payload = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..payload / 4 {
                    let mut fd: RawFd = -1;
                    std::ptr::copy_nonoverlapping(data.add(i * 4), &mut fd as *mut RawFd as *mut u8, 4);
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        // More than one descriptor is not part of the protocol: keep the first, close the rest.
        let first = if fds.is_empty() { None } else { Some(fds.remove(0)) };
        Ok((n, first))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use super::*;

    #[test]
    fn frames_and_a_passed_descriptor_arrive_intact() {
        let (mut agent, helper) = Channel::pair().unwrap();
        let mut helper = Channel { sock: helper };
        let mut file = tempfile_with(b"passed");
        helper.send_with_fd(&FromHelper::Started { pid: 42 }, Some(file.as_raw_fd())).unwrap();
        helper.send(&FromHelper::Exited(ExitStatus { code: -1, signal: 9 })).unwrap();
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
        let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        f.write_all(data).unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
