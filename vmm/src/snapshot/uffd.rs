//! The `Uffd` memory backend of `/snapshot/load`, with Firecracker's protocol: hull maps guest memory as
//! empty anonymous memory, registers it with a userfaultfd (missing-page faults), connects to the page-fault
//! handler's unix socket and sends it, in one message, the userfaultfd (SCM_RIGHTS) and a JSON array with one
//! entry per region: `base_host_virt_addr`, `size`, `offset` (in the memory file) and `page_size` (bytes).
//! From then on every first touch of a guest page, by a vCPU or by hull's devices, waits until the handler
//! fills it (`UFFDIO_COPY`). hull keeps the connection open while the VM lives, so the handler sees hull go
//! when it closes. `hull-uffd-handler` is an example handler.
//!
//! Trusts the handler to serve pages (a handler that stops serving stalls the guest, as in Firecracker);
//! sends it nothing but the layout.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::state::MemoryRegionState;
use crate::memory::GuestMemoryMmap;

/// One region as the handler is told about it (Firecracker's GuestRegionUffdMapping).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdRegion {
    /// Where the region is mapped in hull's address space.
    pub base_host_virt_addr: u64,
    /// Its size in bytes.
    pub size: usize,
    /// Where its bytes start in the memory file.
    pub offset: u64,
    /// The page size of the mapping, in bytes.
    pub page_size: usize,
}

// linux/userfaultfd.h
const UFFD_API: u64 = 0xaa;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO: u32 = 0xaa;
const fn iowr(nr: u32, size: usize) -> u32 {
    (3 << 30) | ((size as u32) << 16) | (UFFDIO << 8) | nr
}
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
pub const UFFDIO_API_IOCTL: u32 = iowr(0x3f, 24);
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
pub const UFFDIO_REGISTER_IOCTL: u32 = iowr(0x00, 32);
/// `_IOWR(0xAA, 0x03, struct uffdio_copy)` (used by handlers).
pub const UFFDIO_COPY_IOCTL: u32 = iowr(0x03, 40);
/// `_IO(0xAA, 0x00)` on /dev/userfaultfd: a new userfaultfd.
const USERFAULTFD_IOC_NEW: u32 = UFFDIO << 8;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

fn last_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// A new userfaultfd: the system call, else /dev/userfaultfd (kernels that restrict the call).
fn new_userfaultfd() -> Result<OwnedFd, String> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd takes only flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) } as i32;
    if fd >= 0 {
        // SAFETY: a fresh descriptor nobody else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let syscall_error = last_error("userfaultfd");
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/userfaultfd")
        .map_err(|e| format!("{syscall_error}; /dev/userfaultfd: {e}"))?;
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW as _, flags) };
    if fd < 0 {
        return Err(format!("{syscall_error}; {}", last_error("USERFAULTFD_IOC_NEW")));
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What a microVM restored through a handler keeps while it runs: the userfaultfd, and the connection,
/// whose close tells the handler hull is gone.
pub struct UffdBackend {
    pub uffd: OwnedFd,
    pub connection: UnixStream,
}

/// Maps empty guest memory as `regions` lays it out, registers it with a new userfaultfd and hands both to
/// the handler listening at `socket`. Returns the memory and what to keep while the VM runs.
pub fn connect(socket: &Path, regions: &[MemoryRegionState]) -> Result<(GuestMemoryMmap, UffdBackend), String> {
    let ranges: Vec<_> = regions
        .iter()
        .map(|r| (vm_memory::GuestAddress(r.guest_addr), r.size as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| format!("cannot map guest memory: {e}"))?;
    let uffd = new_userfaultfd()?;
    let mut api = UffdioApi {
        api: UFFD_API,
        ..Default::default()
    };
    // SAFETY: UFFDIO_API reads and writes one uffdio_api, which `api` is.
    if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API_IOCTL as _, &mut api) } != 0 {
        return Err(last_error("UFFDIO_API"));
    }
    let mut mappings = Vec::with_capacity(regions.len());
    for (region, saved) in mem.iter().zip(regions) {
        let mut reg = UffdioRegister {
            start: region.as_ptr() as u64,
            len: region.len(),
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes one uffdio_register; the range is our own mapping.
        if unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER_IOCTL as _, &mut reg) } != 0 {
            return Err(last_error("UFFDIO_REGISTER"));
        }
        mappings.push(UffdRegion {
            base_host_virt_addr: region.as_ptr() as u64,
            size: region.len() as usize,
            offset: saved.file_offset,
            page_size: super::memory::PAGE_SIZE as usize,
        });
    }
    let body = serde_json::to_vec(&mappings).map_err(|e| e.to_string())?;
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("cannot connect to the page-fault handler at {}: {e}", socket.display()))?;
    stream
        .send_with_fd(&body[..], uffd.as_raw_fd())
        .map_err(|e| format!("cannot send the userfaultfd to the page-fault handler: {e}"))?;
    Ok((
        mem,
        UffdBackend {
            uffd,
            connection: stream,
        },
    ))
}
