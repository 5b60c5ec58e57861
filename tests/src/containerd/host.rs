//! The network namespace a [`super::Containerd`] runs in, and the process, mount and socket helpers that find
//! and clean up what containerd and its shims leave behind.

use super::*;

/// `ip netns add`, loopback up, and the bridge with the gateway address, so a server can listen on the
/// gateway before the first pod exists.
pub(super) fn create_netns(network: &TestNetwork) {
    let ns = network.netns.as_str();
    let gw = format!("{}/24", network.gateway);
    let steps: [&[&str]; 5] = [
        &["netns", "add", ns],
        &["-n", ns, "link", "set", "lo", "up"],
        &["-n", ns, "link", "add", BRIDGE, "type", "bridge"],
        &["-n", ns, "addr", "add", &gw, "dev", BRIDGE],
        &["-n", ns, "link", "set", BRIDGE, "up"],
    ];
    for args in steps {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

pub(super) fn open_netns(name: &str) -> File {
    let path = Path::new("/run/netns").join(name);
    File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------------------
// Processes, mounts, sockets

/// Runs `cmd` with captured output, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> CmdOutput {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for a child") {
            break st;
        }
        if Instant::now() > deadline {
            note(&format!(
                "containerd harness: {what} still running after {timeout:?}; killing it"
            ));
            let _ = child.kill();
            break child.wait().expect("reap a killed child");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    CmdOutput {
        status,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
    }
}

/// `/run/containerd/s/<hex sha256 of "<address>/<namespace>/<id>">`, as containerd 1.6's
/// `shim.SocketAddress` computes it.
pub fn shim_socket_path(address: &Path, namespace: &str, id: &str) -> PathBuf {
    let key = address.join(namespace).join(id);
    let hash = Sha256::digest(key.as_os_str().as_encoded_bytes());
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SHIM_SOCKET_DIR).join(hex)
}

pub(super) fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes named `containerd-shim*` whose `-address` argument is `socket`.
pub fn shim_pids(socket: &Path) -> Vec<u32> {
    let want = socket.to_string_lossy();
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let args = cmdline(pid);
            let is_shim = args
                .first()
                .and_then(|a| Path::new(a).file_name())
                .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"));
            is_shim && args.windows(2).any(|w| w[0] == "-address" && w[1] == want)
        })
        .collect()
}

pub(super) fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses; split after the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// `pid`'s descendants (children first found, then theirs).
pub(super) fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| parent_pid(p).map(|pp| (p, pp)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let cur = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    found.remove(0);
    found
}

/// SIGKILLs every shim of `socket` and everything below it (containers, VMMs), waiting up to 5 s for them to go.
pub(super) fn kill_shims(socket: &Path) {
    let shims = shim_pids(socket);
    if shims.is_empty() {
        return;
    }
    note(&format!(
        "containerd harness: killing leftover shims {shims:?} of {}",
        socket.display()
    ));
    let mut victims = Vec::new();
    for &shim in &shims {
        victims.extend(descendants(shim));
        victims.push(shim);
    }
    for &pid in &victims {
        // SAFETY: kill(2) with a PID we just found under a shim of our own containerd.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shim_pids(socket).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Decodes the octal escapes (`\040`) of a mountinfo path.
pub(super) fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir` in this process's mount namespace, deepest last.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount_path(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort();
    mounts.dedup();
    mounts
}

/// Lazily unmounts everything at or under `dir`, deepest first, until nothing is left (stacked mounts).
pub(super) fn unmount_under(dir: &Path) {
    for _ in 0..10 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts.iter().rev() {
            let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: umount2(2) with a NUL-terminated path we own.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
