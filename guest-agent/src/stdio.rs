//! Process stdio over vsock. The agent keeps its end of each process stream (pipe ends, or a terminal's
//! master side) in [`ProcessIo`]; the host attaches each stream by connecting to guest port 1025 and sending
//! the handshake line of `hull_agent_protocol::stdio`. From then on one thread per direction copies bytes in
//! order. An output stream ends (the connection is shut down for writing) when every writer of the pipe has
//! closed it, i.e. the process and whatever it started have ended; data written before the host attached
//! waits in the pipe. Stdin ends on the connection's end of stream, or once CloseStdin's byte count has
//! passed through, so a host can end stdin without relying on a half-close.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex};

use hull_agent_protocol::stdio::{read_line, Stream};

use crate::sys::cvt;

/// The agent's ends of one process's streams; each is taken once, when the host attaches it.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    pub terminal: Option<File>,
    pub stdin_ctl: Arc<StdinCtl>,
}

/// The child's ends: fds 0, 1, 2 for the helper (pipes or /dev/null).
pub struct ChildStdio {
    pub fds: [OwnedFd; 3],
}

impl ChildStdio {
    pub fn raw(&self) -> [RawFd; 3] {
        [
            self.fds[0].as_raw_fd(),
            self.fds[1].as_raw_fd(),
            self.fds[2].as_raw_fd(),
        ]
    }
}

fn dev_null() -> io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

/// Pipes for the requested streams; `/dev/null` for the rest (and for all three with a terminal, whose
/// slave the helper puts in place itself).
pub fn make(stdin: bool, stdout: bool, stderr: bool, terminal: bool) -> io::Result<(ProcessIo, ChildStdio)> {
    let mut io = ProcessIo::default();
    if terminal {
        return Ok((
            io,
            ChildStdio {
                fds: [dev_null()?, dev_null()?, dev_null()?],
            },
        ));
    }
    let fd0 = if stdin {
        let (r, w) = crate::sys::pipe()?;
        io.stdin = Some(w);
        r.into()
    } else {
        dev_null()?
    };
    let out = |want: bool, slot: &mut Option<File>| -> io::Result<OwnedFd> {
        if want {
            let (r, w) = crate::sys::pipe()?;
            *slot = Some(r);
            Ok(w.into())
        } else {
            dev_null()
        }
    };
    let fd1 = out(stdout, &mut io.stdout)?;
    let fd2 = out(stderr, &mut io.stderr)?;
    Ok((io, ChildStdio { fds: [fd0, fd1, fd2] }))
}

/// Where stdin stands: bytes passed so far and where the host said it ends.
#[derive(Default)]
pub struct StdinCtl {
    state: Mutex<(u64, Option<u64>)>,
    changed: Condvar,
}

impl StdinCtl {
    pub fn close_at(&self, total: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 = Some(total);
        self.changed.notify_all();
    }

    fn done(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        matches!(s.1, Some(t) if s.0 >= t)
    }

    fn add(&self, n: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += n;
    }
}

/// The agent's listening socket on guest vsock port `port`.
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket/bind/listen with a zeroed sockaddr_vm we fill; the fd is owned right away.
    unsafe {
        let fd = cvt(libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0))?;
        let fd = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_vm = std::mem::zeroed();
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_port = port;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        cvt(libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ))?;
        cvt(libc::listen(fd.as_raw_fd(), 128))?;
        Ok(fd)
    }
}

pub fn accept(listener: &OwnedFd) -> io::Result<File> {
    // SAFETY: accept4 with null address pointers.
    let fd = cvt(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn shutdown(f: &File, how: libc::c_int) {
    // SAFETY: shutdown on a socket descriptor we hold.
    unsafe { libc::shutdown(f.as_raw_fd(), how) };
}

/// What a stdio connection gets attached to.
pub enum Attach {
    Output(File),
    Input(File, Arc<StdinCtl>),
    Terminal(File),
}

/// Serves one stdio connection: handshake, lookup through `find`, then the copy loops.
pub fn serve_connection(
    mut conn: File,
    find: impl FnOnce(&hull_agent_protocol::stdio::StdioRequest) -> Result<Attach, String>,
) {
    let req = match read_line(&mut conn)
        .map_err(|e| e.to_string())
        .and_then(|l| hull_agent_protocol::stdio::StdioRequest::parse(&l).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            let _ = conn.write_all(format!("ERR {e}\n").as_bytes());
            return;
        }
    };
    let attach = match find(&req) {
        Ok(a) => a,
        Err(e) => {
            let _ = conn.write_all(format!("ERR {e}\n").as_bytes());
            return;
        }
    };
    if conn.write_all(b"OK\n").is_err() {
        return;
    }
    match (attach, req.stream) {
        (Attach::Output(src), _) => copy_out(src, conn),
        (Attach::Input(dst, ctl), _) => copy_in(conn, dst, &ctl),
        (Attach::Terminal(master), Stream::Terminal) => {
            let (Ok(m2), Ok(c2)) = (master.try_clone(), conn.try_clone()) else {
                return;
            };
            let t = std::thread::spawn(move || copy_in(c2, m2, &StdinCtl::default()));
            copy_out(master, conn);
            drop(t);
        }
        _ => {}
    }
}

/// Source → connection until the source ends (EOF, or EIO from a terminal whose slave is closed).
fn copy_out(mut src: File, mut conn: File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    shutdown(&conn, libc::SHUT_WR);
}

/// Connection → destination until the connection ends or the stdin byte count is reached.
fn copy_in(mut conn: File, mut dst: File, ctl: &StdinCtl) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if ctl.done() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: conn.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, 200) };
        if rc == 0 {
            continue;
        }
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if dst.write_all(&buf[..n]).is_err() {
                    break;
                }
                ctl.add(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    drop(dst);
}
