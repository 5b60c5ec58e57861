//! The shim process's life as containerd drives it (containerd-shim's `Shim` trait): `start` picks the
//! pod's grouping key and starts (or finds) the shim serving it; `delete` cleans up after a container when
//! containerd asks — the VM stays while the pod's shim still runs, and is killed when the shim is gone; the
//! serving process waits for the task service to say the last task is gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{spawn, Config, ExitSignal, Flags, Shim, StartOpts};

use crate::service::Service;
use crate::vm_record::VmRecord;

/// The annotation CRI puts on every container of a pod, naming the pod's sandbox.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

pub struct HullShim {
    namespace: String,
    id: String,
    bundle: String,
    address: String,
    /// The socket this process serves on (empty for the `start` and `delete` actions).
    socket: String,
    exit: Arc<ExitSignal>,
}

impl Shim for HullShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, config: &mut Config) -> Self {
        if args.action.is_empty() && !args.socket.is_empty() {
            // The serving process logs through our logger (text or JSON, security events with the pod's id,
            // which names its VM) instead of containerd-shim's. The format is the shim config's, as far as it
            // can be found before the first Create brings its path.
            config.no_setup_logger = true;
            let format = crate::config::ShimConfig::load(None)
                .map(|c| c.log_format)
                .unwrap_or_default();
            crate::logging::install(args.debug, &args.id, format);
        }
        HullShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            address: args.address.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the bundle directory.
        let grouping = grouping(Path::new("."), &opts.id);
        let (_, address) = spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = if self.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&self.bundle)
        };
        let address = containerd_shim::socket_address(&self.address, &self.namespace, &grouping(&bundle, &self.id));
        let socket = PathBuf::from(address.strip_prefix("unix://").unwrap_or(&address));
        // containerd asks for `delete` when a shim died (and after a pod's container is gone, its shim alive):
        // a socket nobody answers on is a dead shim's, which neither containerd nor the library removes.
        // The socket goes first: cleaning up after the VM may wait for the dying shim, and containerd gives
        // `delete` only a few seconds.
        let answered = std::os::unix::net::UnixStream::connect(&socket).is_ok();
        if !answered {
            let _ = std::fs::remove_file(&socket);
        }
        cleanup_after(&bundle, &self.id, answered);
        let mut resp = DeleteResponse::new();
        resp.exit_status = 137;
        resp.exited_at = Some(containerd_shim::util::timestamp()?).into();
        Ok(resp)
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The library removes the socket after this returns, but finds it through the `address` file in the
        // bundle — which containerd may already have deleted once Shutdown answered, leaving the socket
        // behind. The serving process knows its socket: remove it here. Open connections are unaffected.
        let path = self.socket.strip_prefix("unix://").unwrap_or(&self.socket);
        if !path.is_empty() {
            let _ = std::fs::remove_file(path);
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service::new(self.namespace.clone(), publisher, self.exit.clone())
    }
}

/// Whether `pid` is alive (not a zombie) and runs a program named like one of `comm` (guards against PID
/// reuse).
fn runs(pid: i32, comm: &[&str]) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so split at the last ')'.
    let Some((head, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let name = head.split_once('(').map(|(_, n)| n).unwrap_or_default();
    let state = rest.trim_start().chars().next().unwrap_or('?');
    state != 'Z' && state != 'X' && comm.contains(&name)
}

/// What the shim's process is called (`comm`, cut to 15 bytes).
const SHIM_NAMES: &[&str] = &["containerd-shim", "containerd-shim-h"];

/// Whether the shim `pid` still lives. A killed process closes its files (its socket among them) before it
/// stops running, and containerd calls `delete` as soon as the socket closes: while the socket refuses
/// connections, a shim still shown as running is on its way out, so wait (briefly) for it to go.
fn shim_alive(pid: i32, names: &[&str], socket_answers: bool) -> bool {
    if socket_answers {
        return runs(pid, names);
    }
    let t0 = std::time::Instant::now();
    while runs(pid, names) {
        if t0.elapsed() > std::time::Duration::from_secs(3) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Whether the command line of `pid` has an argument inside `dir` (a VM process's sockets and logs are).
fn names_dir(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = dir.to_string_lossy();
    cmdline
        .split(|b| *b == 0)
        .any(|a| String::from_utf8_lossy(a).contains(needle.as_ref()))
}

/// The shim grouping of the container whose bundle is `bundle`: its pod's sandbox id, else its own id.
fn grouping(bundle: &Path, id: &str) -> String {
    std::fs::read_to_string(bundle.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|s| s["annotations"][SANDBOX_ID].as_str().map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| id.to_string())
}

/// `delete` for container `id`: when the shim that served it is gone (killed), kill the VM it left.
/// `socket_answers` says whether the shim's socket still accepts connections.
fn cleanup_after(bundle: &Path, id: &str, socket_answers: bool) {
    let Some(rec) = VmRecord::read(bundle) else {
        return;
    };
    let shim_pid = i32::try_from(rec.shim_pid).unwrap_or(0);
    if shim_pid > 0 && shim_alive(shim_pid, SHIM_NAMES, socket_answers) {
        // The pod's shim still serves other containers; the VM is its to stop.
        return;
    }
    // Only directories the shim makes (RunDir's `hull-run-*`), so a damaged record cannot remove others.
    let work_dir = Some(rec.work_dir).filter(|d| {
        d.is_absolute()
            && d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("hull-run-"))
    });
    for pid in rec.vm_pids {
        let Ok(pid) = i32::try_from(pid) else { continue };
        // The VM's processes die with the shim, so their PIDs may have been reused by now, perhaps by another
        // pod's VM: kill only a process whose command line names this VM's directory.
        let ours = work_dir.as_ref().is_some_and(|d| names_dir(pid, d));
        if pid > 0 && ours && runs(pid, &["qemu-system-x86", "hull", "hull-vmm"]) {
            log::warn!("container {id}: the shim is gone; killing its VM process {pid}");
            // SAFETY: plain kill(2) of a PID checked to run a VM process just above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Some(dir) = work_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    // Only directories under the cgroup mount (remove_dirs checks), and only empty ones go (rmdir).
    crate::cgroup::remove_dirs(Path::new(crate::cgroup::ROOT), &rec.cgroups);
    VmRecord::remove(bundle);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once the task service says the last task is gone, the serving process removes its own socket, even
    /// when the bundle (whose `address` file the library relies on) is already deleted.
    #[test]
    fn serving_shim_removes_its_socket_when_told_to_exit() {
        let dir = std::env::temp_dir().join(format!("hull-shim-socket-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut shim = HullShim {
            namespace: "default".into(),
            id: "c1".into(),
            bundle: dir.join("gone").to_string_lossy().into_owned(),
            address: String::new(),
            socket: format!("unix://{}", sock.display()),
            exit: Arc::new(ExitSignal::default()),
        };
        shim.exit.signal();
        shim.wait();
        let still_there = sock.exists();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!still_there, "socket {} left behind", sock.display());
    }

    /// A shim whose socket is closed but which still runs (killed, in the middle of exiting) is waited for:
    /// containerd's `delete` must then clean up after it, not take it for a pod's live shim.
    #[test]
    fn a_dying_shim_is_waited_for_and_a_live_one_is_not() {
        let mut child = std::process::Command::new("sleep").arg("0.4").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(
            shim_alive(pid, &["sleep"], true),
            "socket answers: alive without waiting"
        );
        let t0 = std::time::Instant::now();
        let reaper = std::thread::spawn(move || child.wait());
        assert!(
            !shim_alive(pid, &["sleep"], false),
            "socket closed: waited until it ended"
        );
        assert!(
            t0.elapsed() >= std::time::Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
        reaper.join().unwrap().unwrap();
        assert!(!shim_alive(pid, &["sleep"], true), "gone is gone");
    }
}
