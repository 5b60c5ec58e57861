//! The host side of virtio-net: a TAP device opened by name with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`
//! and a 12-byte virtio-net header (`TUNSETVNETHDRSZ`), offloads off (`TUNSETOFFLOAD 0`), non-blocking.
//!
//! Owns: the TAP fd. Never trusts the interface name beyond its length (the kernel validates the rest).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};

use super::VNET_HDR_LEN;

/// Frames in and out of the host network.
pub trait NetBackend: Send {
    /// Reads one frame (virtio-net header first) into `buf`; `Ok(None)` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Writes one frame (virtio-net header first).
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Readable when a frame is waiting.
    fn raw_fd(&self) -> RawFd;
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    #[error("attaching to TAP {name}: {source}")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("configuring TAP {name} ({what}): {source}")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to (or, with CAP_NET_ADMIN, creates) the TAP device `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() > 15 || name.as_bytes().contains(&0) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes), which `IfReq` lays out.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let hdr_len: libc::c_int = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) } < 0 {
            return Err(TapError::Configure {
                name: name.to_string(),
                what: "vnet header size",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD as _, 0 as libc::c_uint) } < 0 {
            return Err(TapError::Configure {
                name: name.to_string(),
                what: "offloads",
                source: io::Error::last_os_error(),
            });
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.file.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            match self.file.write(frame) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
