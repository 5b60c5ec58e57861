//! The control socket of `hull vhost-user blk --control PATH`: a host-side line protocol that gives a running
//! guest's disk slot a new backing file, or empties it.
//!
//! Protocol (one request per line, any number of requests per connection, one answer line each):
//!
//! ```text
//! attach <absolute-path> ro|rw\n   ->  ok\n | error: <reason>\n
//! detach\n                         ->  ok\n | error: <reason>\n
//! ```
//!
//! The path is everything between `attach ` and the last space, so it may itself hold spaces (not newlines).
//! `ok` comes only once the file is swapped in and the frontend was sent (and, with `REPLY_ACK`, has
//! acknowledged) `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`. A failed `attach` leaves the slot as it was.
//!
//! Owns: the listening socket (mode 0600, removed on drop) and its connection threads. Never trusts what
//! clients send: lines longer than [`MAX_LINE`] bytes end the connection, non-UTF-8, unknown verbs,
//! relative paths, missing files and unknown modes are answered with an error; nothing panics.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::{ConfigNotifier, DeviceHandle};
use crate::virtio::block::Block;

/// Longest request line, newline excluded.
pub const MAX_LINE: usize = 4096;
/// Connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// An idle connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Attach { path: PathBuf, read_only: bool },
    Detach,
}

/// Why a request line was refused before anything was done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty request; expected `attach <absolute-path> ro|rw` or `detach`")]
    Empty,
    #[error("the request is not UTF-8")]
    NotUtf8,
    #[error("unknown request {0:?}; expected `attach <absolute-path> ro|rw` or `detach`")]
    UnknownVerb(String),
    #[error("`attach` takes a path and a mode: `attach <absolute-path> ro|rw`")]
    AttachArguments,
    #[error("mode {0:?} is neither `ro` nor `rw`")]
    Mode(String),
    #[error("path {0:?} is not absolute")]
    RelativePath(String),
    #[error("`detach` takes no arguments")]
    DetachArguments,
}

/// Parses one line (without its newline; a trailing `\r` is ignored).
pub fn parse_request(line: &[u8]) -> Result<Request, ParseError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    if line.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "attach" => {
            let (path, mode) = rest.rsplit_once(' ').ok_or(ParseError::AttachArguments)?;
            if path.is_empty() {
                return Err(ParseError::AttachArguments);
            }
            let read_only = match mode {
                "ro" => true,
                "rw" => false,
                other => return Err(ParseError::Mode(other.chars().take(32).collect())),
            };
            if !path.starts_with('/') {
                return Err(ParseError::RelativePath(path.chars().take(256).collect()));
            }
            Ok(Request::Attach {
                path: PathBuf::from(path),
                read_only,
            })
        }
        "detach" if rest.trim().is_empty() => Ok(Request::Detach),
        "detach" => Err(ParseError::DetachArguments),
        other => Err(ParseError::UnknownVerb(other.chars().take(32).collect())),
    }
}

/// Executes requests on the served disk and announces each change to the frontend.
pub struct SlotControl {
    device: DeviceHandle<Block>,
    notifier: ConfigNotifier,
    /// Keeps swap-then-notify of one request from interleaving with another's.
    serial: Mutex<()>,
}

impl SlotControl {
    pub fn new(device: DeviceHandle<Block>, notifier: ConfigNotifier) -> Self {
        SlotControl {
            device,
            notifier,
            serial: Mutex::new(()),
        }
    }

    /// Runs one request; the error is the text after `error: `.
    pub fn execute(&self, request: &Request) -> Result<(), String> {
        let _serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        // Without a channel the guest would never learn about the change: refuse before changing anything.
        if !self.notifier.has_channel() {
            return Err(format!("{}; nothing changed", super::NotifyError::NoChannel));
        }
        let (what, capacity) = match request {
            Request::Attach { path, read_only } => {
                let capacity = self
                    .device
                    .with_device(|b| b.attach(path, *read_only))
                    .map_err(|e| e.to_string())?;
                let mode = if *read_only { "ro" } else { "rw" };
                (format!("attached {} {mode}", path.display()), capacity)
            }
            Request::Detach => {
                self.device.with_device(Block::detach);
                ("detached".to_string(), 0)
            }
        };
        self.notifier
            .notify_config_change()
            .map_err(|e| format!("{what} ({capacity} sectors), but the frontend was not told: {e}"))?;
        info!(change = %what, capacity, "disk slot changed; frontend notified");
        Ok(())
    }
}

/// The listening control socket; dropping it removes the socket file (the accept thread ends with the
/// process).
pub struct ControlSocket {
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` (a stale socket there is replaced; the socket is made owner-only) and serves requests
    /// on a thread of its own.
    pub fn start(path: &Path, control: SlotControl) -> io::Result<ControlSocket> {
        let _ = std::fs::remove_file(path);
        let listener = crate::stale_socket::bind_owner_only(path)?;
        let control = Arc::new(control);
        let active = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("blk-control".into())
            .spawn(move || accept_loop(listener, control, active))?;
        info!(socket = %path.display(), "disk slot control socket listening");
        Ok(ControlSocket { path: path.to_owned() })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, control: Arc<SlotControl>, active: Arc<AtomicUsize>) {
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.write_all(b"error: too many control connections\n");
            continue;
        }
        let (control, active) = (control.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("blk-control-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, |req| control.execute(req)) {
                    info!(error = %e, "control connection ended");
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start a control connection thread");
        }
    }
}

/// Reads request lines from `stream` until it closes, answering each with `execute`'s outcome.
pub fn serve_connection(stream: UnixStream, execute: impl Fn(&Request) -> Result<(), String>) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        let n = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let complete = line.last() == Some(&b'\n');
        if complete {
            line.pop();
        } else if line.len() > MAX_LINE {
            writer.write_all(format!("error: request longer than {MAX_LINE} bytes\n").as_bytes())?;
            return Ok(());
        }
        let answer = match parse_request(&line) {
            Ok(request) => execute(&request),
            Err(e) => Err(e.to_string()),
        };
        let text = match answer {
            Ok(()) => "ok\n".to_string(),
            Err(reason) => format!("error: {}\n", reason.replace(['\n', '\r'], " ")),
        };
        writer.write_all(text.as_bytes())?;
        if !complete {
            // The client ended its last request with the end of the stream.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::vhost_user::{DeviceBackend, Protocol};
    use crate::virtio::block::BlockConfig;

    #[test]
    fn requests_parse() {
        assert_eq!(
            parse_request(b"attach /images/a b.ext4 ro"),
            Ok(Request::Attach {
                path: "/images/a b.ext4".into(),
                read_only: true
            })
        );
        assert_eq!(
            parse_request(b"attach /x rw\r"),
            Ok(Request::Attach {
                path: "/x".into(),
                read_only: false
            })
        );
        assert_eq!(parse_request(b"detach"), Ok(Request::Detach));
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let cases: &[(&[u8], ParseError)] = &[
            (b"", ParseError::Empty),
            (b"   ", ParseError::Empty),
            (b"\xff\xfe", ParseError::NotUtf8),
            (b"mount /x ro", ParseError::UnknownVerb("mount".into())),
            (b"ATTACH /x ro", ParseError::UnknownVerb("ATTACH".into())),
            (b"attach", ParseError::AttachArguments),
            (b"attach /x", ParseError::AttachArguments),
            (b"attach  ro", ParseError::AttachArguments),
            (b"attach /x rx", ParseError::Mode("rx".into())),
            (b"attach /x ", ParseError::Mode("".into())),
            (
                b"attach images/a.ext4 ro",
                ParseError::RelativePath("images/a.ext4".into()),
            ),
            (b"attach ../a.ext4 rw", ParseError::RelativePath("../a.ext4".into())),
            (b"detach now", ParseError::DetachArguments),
        ];
        for (line, expected) in cases {
            assert_eq!(
                parse_request(line).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    /// A served slot on an empty file, and a notifier whose channel's other end is returned.
    fn slot(name: &str) -> (SlotControl, DeviceHandle<Block>, UnixStream, PathBuf) {
        let dir = std::env::temp_dir().join(format!("hull-blk-control-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        std::fs::write(dir.join("disk"), vec![0x5a; 4096]).unwrap();
        let block = Block::new(&BlockConfig {
            path: dir.join("empty"),
            read_only: false,
            id: None,
            rate_limiter: Default::default(),
        })
        .unwrap();
        let notifier = ConfigNotifier::new();
        let backend = Arc::new(DeviceBackend::new(
            "t",
            block,
            1,
            Protocol::ConfigNotify(notifier.clone()),
        ));
        let handle = DeviceHandle { backend };
        let (ours, frontend) = UnixStream::pair().unwrap();
        notifier.set_channel(ours);
        (SlotControl::new(handle.clone(), notifier), handle, frontend, dir)
    }

    fn talk(control: SlotControl, input: &[u8]) -> String {
        let (client, server) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || serve_connection(server, |r| control.execute(r)));
        let mut client = client;
        client.write_all(input).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).unwrap();
        t.join().unwrap().unwrap();
        out
    }

    #[test]
    fn a_session_attaches_detaches_and_answers_errors_per_line() {
        let (control, device, mut frontend, dir) = slot("session");
        let disk = dir.join("disk");
        let input = format!(
            "attach {d} rw\nbogus\nattach relative ro\nattach {dir}/missing ro\nattach {dir} ro\ndetach\nattach {d} ro",
            d = disk.display(),
            dir = dir.display()
        );
        let out = talk(control, input.as_bytes());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 7, "{out}");
        assert_eq!(lines[0], "ok");
        assert!(lines[1].starts_with("error: unknown request \"bogus\""), "{out}");
        assert!(lines[2].contains("is not absolute"), "{out}");
        assert!(
            lines[3].starts_with("error: opening disk image") && lines[3].contains("missing"),
            "{out}"
        );
        assert!(lines[4].contains("not a regular file"), "{out}");
        assert_eq!(&lines[5..], ["ok", "ok"], "{out}");
        // The last request (without a newline) was carried out: read-only, 8 sectors.
        assert_eq!(
            device.with_device(|b| (b.capacity_sectors(), b.is_read_only())),
            (8, true)
        );
        // Three changes, three config-change messages.
        let mut msgs = [0u8; 36];
        frontend.read_exact(&mut msgs).unwrap();
        for m in msgs.chunks(12) {
            assert_eq!(m[0], 2, "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn overlong_lines_end_the_connection() {
        let (control, device, _frontend, dir) = slot("overlong");
        let mut input = b"attach /".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        input.extend_from_slice(b" ro\ndetach\n");
        let out = talk(control, &input);
        assert_eq!(out, format!("error: request longer than {MAX_LINE} bytes\n"));
        assert_eq!(device.with_device(|b| b.capacity_sectors()), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn without_a_frontend_channel_nothing_changes() {
        let (_, device, _frontend, dir) = slot("nochannel");
        let control = SlotControl::new(device.clone(), ConfigNotifier::new());
        let out = talk(
            control,
            format!("attach {} rw\n", dir.join("disk").display()).as_bytes(),
        );
        assert!(
            out.starts_with("error: no frontend") && out.contains("nothing changed"),
            "{out}"
        );
        assert_eq!(device.with_device(|b| b.capacity_sectors()), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_frontend_that_went_away_is_reported_after_the_swap() {
        let (control, device, frontend, dir) = slot("gone");
        drop(frontend);
        let out = talk(
            control,
            format!("attach {} rw\n", dir.join("disk").display()).as_bytes(),
        );
        assert!(out.starts_with("error: attached") && out.contains("not told"), "{out}");
        assert_eq!(device.with_device(|b| b.capacity_sectors()), 8);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_socket_serves_several_connections_and_is_owner_only() {
        let (control, _device, _frontend, dir) = slot("socket");
        let sock = dir.join("control.sock");
        let guard = ControlSocket::start(&sock, control).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for _ in 0..3 {
            let mut c = UnixStream::connect(&sock).unwrap();
            c.write_all(b"detach\n").unwrap();
            let mut answer = [0u8; 3];
            c.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"ok\n");
        }
        drop(guard);
        assert!(!sock.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
