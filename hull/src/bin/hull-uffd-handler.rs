//! `hull-uffd-handler`: an example page-fault handler for `PUT /snapshot/load` with the `Uffd` memory
//! backend (Firecracker's protocol, see `vmm::snapshot::uffd`).
//!
//! `hull-uffd-handler --socket PATH --mem-file FILE` listens on PATH, takes one hull connection, receives
//! the userfaultfd and the JSON region layout, maps FILE read-only, and answers every missing-page fault
//! with the page from the file (`UFFDIO_COPY`), until hull goes away. Page by page: only what the guest
//! touches is ever read.
//!
//! Trusts nothing from the connection beyond its own checks: every region must lie within the memory
//! file, and every fault address within a region.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use vmm::snapshot::uffd::{UffdRegion, UFFDIO_COPY_IOCTL};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// `UFFD_EVENT_PAGEFAULT` in `uffd_msg.event`.
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

fn usage() -> ! {
    eprintln!("usage: hull-uffd-handler --socket PATH --mem-file FILE");
    std::process::exit(2);
}

fn fail(msg: String) -> ! {
    eprintln!("hull-uffd-handler: {msg}");
    std::process::exit(1);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut socket, mut mem_file) = (None, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => socket = args.next().map(PathBuf::from),
            "--mem-file" => mem_file = args.next().map(PathBuf::from),
            _ => usage(),
        }
    }
    let (Some(socket), Some(mem_file)) = (socket, mem_file) else {
        usage()
    };
    let file = File::open(&mem_file).unwrap_or_else(|e| fail(format!("{}: {e}", mem_file.display())));
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap_or_else(|e| fail(format!("bind {}: {e}", socket.display())));
    println!("hull-uffd-handler: listening on {}", socket.display());
    let (stream, _) = listener.accept().unwrap_or_else(|e| fail(format!("accept: {e}")));
    let mut buf = vec![0u8; 64 * 1024];
    let (n, uffd) = stream
        .recv_with_fd(&mut buf)
        .unwrap_or_else(|e| fail(format!("receive the layout: {e}")));
    let uffd = uffd.unwrap_or_else(|| fail("hull sent no userfaultfd".into()));
    let regions: Vec<UffdRegion> =
        serde_json::from_slice(&buf[..n]).unwrap_or_else(|e| fail(format!("bad layout: {e}")));
    for r in &regions {
        let fits = r.offset.checked_add(r.size as u64).is_some_and(|end| end <= file_len);
        if !fits || !r.page_size.is_power_of_two() {
            fail(format!("region {r:?} does not fit the {file_len}-byte memory file"));
        }
    }
    // SAFETY: a new read-only private mapping of the whole file; the kernel picks the address.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            file_len as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        fail(format!(
            "mmap {}: {}",
            mem_file.display(),
            std::io::Error::last_os_error()
        ));
    }
    println!("hull-uffd-handler: serving {} regions", regions.len());
    let served = serve(uffd.as_raw_fd(), stream.as_raw_fd(), &regions, base as u64);
    println!("hull-uffd-handler: hull went away after {served} pages");
}

/// Answers faults until hull goes away (its end of the socket closes); returns how many pages were copied.
fn serve(uffd: RawFd, peer: RawFd, regions: &[UffdRegion], file_base: u64) -> u64 {
    let mut served = 0;
    loop {
        let mut pfds = [
            libc::pollfd {
                fd: uffd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: peer,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two pollfds, owned here.
        if unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return served;
        }
        // hull sends nothing after the layout: readable or hung up means it is gone.
        if pfds[1].revents != 0 || pfds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return served;
        }
        if pfds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        let mut msg = [0u8; 32];
        // SAFETY: reads at most 32 bytes into `msg`.
        let n = unsafe { libc::read(uffd, msg.as_mut_ptr().cast(), msg.len()) };
        if n == 0 {
            return served;
        }
        if n < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => return served,
            }
        }
        if n as usize != msg.len() || msg[0] != UFFD_EVENT_PAGEFAULT {
            continue;
        }
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&msg[16..24]);
        let address = u64::from_le_bytes(addr);
        let Some(r) = regions
            .iter()
            .find(|r| address >= r.base_host_virt_addr && address - r.base_host_virt_addr < r.size as u64)
        else {
            eprintln!("hull-uffd-handler: fault at {address:#x} outside every region");
            continue;
        };
        let page = r.page_size as u64;
        let dst = address & !(page - 1);
        let mut copy = UffdioCopy {
            dst,
            src: file_base + r.offset + (dst - r.base_host_virt_addr),
            len: page,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes one uffdio_copy; src lies in our mapping of the file (the
        // region was checked to fit it) and dst in the registered range.
        let rc = unsafe { libc::ioctl(uffd, UFFDIO_COPY_IOCTL as _, &mut copy) };
        if rc == 0 {
            served += 1;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            eprintln!(
                "hull-uffd-handler: UFFDIO_COPY at {dst:#x}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
