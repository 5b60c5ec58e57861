//! A private containerd for end-to-end tests: Debian's containerd 1.6 started by the test with its own root,
//! state, sockets and config in a temporary directory, optionally inside a network namespace the harness
//! creates with a CNI bridge network, so every address the test makes lives there and never on the machine's
//! own interfaces. [`Containerd`] is a guard: dropping it removes what is left (tasks, containers, pods, the
//! daemon, shim processes, mounts, the network namespace, the directories), even when the test panicked.
//!
//! What containerd does not let us make private (see shared/FACTS.md): shim sockets and `ctr`'s fifos go
//! under `/run/containerd`, and libcni keeps a result cache under `/var/lib/cni/results` (named after our
//! unique network name, removed on drop). Shims are found by the `-address <our socket>` argument containerd
//! gives them.
//!
//! Several instances can run at once in one test process: every name carries the PID and a counter.
//! Containerd gets `PR_SET_PDEATHSIG`, which fires when the *thread* that started it ends: keep a
//! [`Containerd`] inside the test function that created it (not in a static shared between tests).
//!
//! Trusted: containerd, ctr, the CNI plugins (Debian's). Untrusted: what containers print.

use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cri::Cri;
use crate::oci_image::{self, OciImage};
use crate::{note, repo_root, tail, TempDir};

mod config;
mod host;

pub use config::{cni_conflist, config_toml};
use host::*;
pub use host::{mounts_under, run_with_timeout, shim_pids, shim_socket_path};

/// The CRI namespace of containerd.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// `ctr`'s default namespace.
pub const CTR_NAMESPACE: &str = "default";
/// The runtime handler (and `ctr --runtime`) names the config defines.
pub const RUNC_HANDLER: &str = "runc";
pub const RUNC_RUNTIME_TYPE: &str = "io.containerd.runc.v2";
pub const HULL_HANDLER: &str = "hull";
pub const HULL_RUNTIME_TYPE: &str = "io.containerd.hull.v2";
/// The bridge the harness creates in its network namespace, which the CNI bridge plugin then uses.
pub const BRIDGE: &str = "hullbr0";
/// Where containerd 1.6 puts shim sockets, whatever its own `state` is.
pub const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// libcni's result cache (not configurable through containerd 1.6).
pub const CNI_CACHE_DIR: &str = "/var/lib/cni/results";

/// Installs containerd, runc, the CNI plugins, busybox-static, protoc and iproute2 when missing (once per test
/// process), through `scripts/install-test-deps.sh`.
pub fn ensure_containerd_tools() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let st = Command::new("bash")
            .arg(repo_root().join("scripts/install-test-deps.sh"))
            .status();
        assert!(st.is_ok_and(|s| s.success()), "scripts/install-test-deps.sh failed");
    });
}

/// `target/<profile>/`, the directory holding the workspace's binaries (the test executable is in its `deps/`).
/// `containerd-shim-hull-v2` is built there.
pub fn profile_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
}

/// How to start a [`Containerd`].
#[derive(Clone, Debug)]
pub struct ContainerdOptions {
    /// Create a network namespace `hull-test-<pid>-<n>`, run containerd in it and give CRI a CNI bridge
    /// network there (pods without `hostNetwork` need this).
    pub network: bool,
    /// Directories put first on containerd's `PATH`, where it looks for `containerd-shim-*-v2` (1.6 finds shims
    /// by `PATH` only). Default: [`profile_dir`].
    pub path_prepend: Vec<PathBuf>,
    /// `ConfigPath` in the `hull` runtime handler's options (containerd passes it to the shim in
    /// `CreateTaskRequest.options` as `runtimeoptions.v1.Options`).
    pub hull_config_path: Option<PathBuf>,
    /// Extra TOML lines inside the `hull` runtime table (e.g. `pod_annotations = ["io.hull.*"]`).
    pub hull_runtime_toml: String,
    /// Extra TOML appended to config.toml as is (whole tables).
    pub extra_toml: String,
    /// containerd's `debug.level`. Default: `$HULL_CONTAINERD_LOG_LEVEL`, else `debug`.
    pub log_level: String,
}

impl Default for ContainerdOptions {
    fn default() -> Self {
        ContainerdOptions {
            network: false,
            path_prepend: profile_dir().into_iter().collect(),
            hull_config_path: None,
            hull_runtime_toml: String::new(),
            extra_toml: String::new(),
            log_level: std::env::var("HULL_CONTAINERD_LOG_LEVEL").unwrap_or_else(|_| "debug".into()),
        }
    }
}

/// The network namespace and CNI network of an instance.
#[derive(Clone, Debug)]
pub struct TestNetwork {
    /// `ip netns` name (`/run/netns/<name>`); also the CNI network name.
    pub netns: String,
    /// The pods' subnet, e.g. `10.213.4.0/24`.
    pub subnet: String,
    /// The bridge's address in the namespace: pods' default gateway, reachable from every pod.
    pub gateway: Ipv4Addr,
}

/// Exit status and captured output of a command.
#[derive(Clone, Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    /// The exit code; `-1` when killed by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// A running private containerd.
pub struct Containerd {
    name: String,
    child: Option<Child>,
    network: Option<TestNetwork>,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    dir: Option<TempDir>,
}

fn next_id() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Containerd {
    /// Starts containerd with `options` and waits (up to 30 s) until its socket answers. Panics with the log
    /// when it does not.
    pub fn start(options: ContainerdOptions) -> Containerd {
        ensure_containerd_tools();
        let id = next_id();
        let name = format!("hull-test-{id}");
        let dir = TempDir::new("ctd").expect("create containerd's temporary directory");
        let d = dir.path().to_path_buf();
        for sub in ["root", "state", "cni", "cni-ipam", "opt", "runc", "pod-logs"] {
            std::fs::create_dir_all(d.join(sub)).expect("create containerd subdirectory");
        }
        let mut ctd = Containerd {
            name: name.clone(),
            child: None,
            network: None,
            socket: d.join("containerd.sock"),
            config: d.join("config.toml"),
            log: d.join("containerd.log"),
            dir: Some(dir),
        };
        // From here on, a panic drops `ctd`, which cleans up whatever exists so far.
        if options.network {
            let counter: u32 = id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
            let third = (std::process::id().wrapping_mul(7).wrapping_add(counter)) % 250;
            let network = TestNetwork {
                netns: name.clone(),
                subnet: format!("10.213.{third}.0/24"),
                gateway: Ipv4Addr::new(10, 213, third as u8, 1),
            };
            ctd.network = Some(network.clone());
            create_netns(&network);
            std::fs::write(
                d.join("cni/10-hull-test.conflist"),
                cni_conflist(&network, &d.join("cni-ipam")),
            )
            .expect("write the CNI conflist");
        }
        std::fs::write(&ctd.config, config_toml(&d, &ctd.socket, &options)).expect("write config.toml");
        ctd.spawn(&options);
        ctd.wait_ready(Duration::from_secs(30));
        ctd
    }

    fn spawn(&mut self, options: &ContainerdOptions) {
        let mut path: Vec<PathBuf> = options.path_prepend.clone();
        path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        let log = File::create(&self.log).expect("create containerd.log");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&self.config)
            .env("PATH", std::env::join_paths(path).expect("PATH entries without ':'"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let netns = self.network.as_ref().map(|n| open_netns(&n.netns));
        // SAFETY: the closure runs between fork and exec and only calls setns(2) and prctl(2), both
        // async-signal-safe; `netns` is a descriptor owned by the closure, open until exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(ns) = &netns {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("cannot start containerd: {e}")));
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if UnixStream::connect(&self.socket).is_ok() && self.ctr(&["version"]).success() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("containerd exited ({status}) before answering\n{}", self.report());
            }
            if Instant::now() > deadline {
                panic!(
                    "containerd did not answer on {} within {timeout:?}\n{}",
                    self.socket.display(),
                    self.report()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// containerd's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The instance's unique name, `hull-test-<pid>-<n>` (also its netns and CNI network name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// containerd's gRPC socket (CRI and the containerd API; `ctr --address`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The private temporary directory holding root, state, config, log and sockets.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir lives until drop").path()
    }

    /// Writes the hull shim's `shim.toml` to `path` (the file named by `hull_config_path`): the auto backend,
    /// the guest under test, the hull binary under test, and the image cache (`hull-images`) and the VMs'
    /// directories (`hull-vms`) inside this instance's private directory; `extra` lines are appended.
    pub fn write_hull_shim_config(&self, path: &Path, extra: &str) {
        let guest = crate::guest_images();
        let d = self.dir();
        let toml = format!(
            "backend = \"auto\"\nkernel = \"{}\"\ninitrd = \"{}\"\nimage_cache = \"{}\"\nwork_dir = \"{}\"\n\
             hull_binary = \"{}\"\n{extra}",
            guest.kernel.display(),
            guest.initrd.display(),
            d.join("hull-images").display(),
            d.join("hull-vms").display(),
            crate::hull_bin().display(),
        );
        std::fs::write(path, toml).expect("write the shim's config");
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// containerd's own log so far (its stdout and stderr, shims' logs included).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    }

    /// A description for failure messages: config and the tail of the log.
    pub fn report(&self) -> String {
        format!(
            "--- containerd {} ({}) ---\n--- log, last 6000 bytes ---\n{}\n---",
            self.name,
            self.socket.display(),
            tail(&self.log(), 6000)
        )
    }

    /// The network namespace and CNI network, when started with `network: true`.
    pub fn network(&self) -> Option<&TestNetwork> {
        self.network.as_ref()
    }

    /// The bridge gateway address pods can reach; panics when started without a network.
    pub fn gateway(&self) -> Ipv4Addr {
        self.network
            .as_ref()
            .expect("containerd was started without network: true")
            .gateway
    }

    /// A command that runs in the instance's network namespace (only the network namespace is changed; the
    /// mount namespace stays the host's). Panics when started without a network.
    pub fn netns_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let ns = open_netns(
            &self
                .network
                .as_ref()
                .expect("containerd was started without network: true")
                .netns,
        );
        let mut cmd = Command::new(program);
        // SAFETY: as in `spawn`: only setns(2) between fork and exec, on a descriptor the closure owns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// A TCP listener bound to `gateway:port` (0: any free port) inside the network namespace, made by a
    /// short-lived thread that enters the namespace: the socket stays in it and can be used from any thread.
    pub fn tcp_listener(&self, port: u16) -> io::Result<TcpListener> {
        let network = self
            .network
            .as_ref()
            .expect("containerd was started without network: true");
        let ns = open_netns(&network.netns);
        let addr = (network.gateway, port);
        std::thread::spawn(move || {
            // SAFETY: setns(2) on this thread only, with a descriptor we own; the thread ends right after.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            TcpListener::bind(addr)
        })
        .join()
        .expect("netns listener thread panicked")
    }

    /// `ctr --address SOCK -n default ARGS...` (2 min timeout).
    pub fn ctr(&self, args: &[&str]) -> CmdOutput {
        self.ctr_in(CTR_NAMESPACE, args)
    }

    /// `ctr --address SOCK -n NAMESPACE ARGS...` (2 min timeout).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("-n")
            .arg(namespace)
            .args(args);
        run_with_timeout(cmd, Duration::from_secs(120))
    }

    /// [`Containerd::ctr_in`] that must succeed; panics with its output and containerd's log otherwise.
    pub fn ctr_ok(&self, namespace: &str, args: &[&str]) -> String {
        let out = self.ctr_in(namespace, args);
        assert!(
            out.success(),
            "ctr -n {namespace} {args:?} failed ({}):\nstdout: {}\nstderr: {}\n{}",
            out.status,
            out.stdout,
            out.stderr,
            self.report()
        );
        out.stdout
    }

    /// Imports an image tar into `namespace` (`default` for ctr, [`CRI_NAMESPACE`] for CRI) and unpacks it.
    pub fn import_image(&self, namespace: &str, image: &OciImage) {
        let tar = image.tar.to_string_lossy().into_owned();
        self.ctr_ok(namespace, &["images", "import", &tar]);
        let list = self.ctr_ok(namespace, &["images", "ls", "-q"]);
        assert!(
            list.lines().any(|l| l.trim() == image.reference),
            "{} not listed after import into {namespace}: {list}",
            image.reference
        );
    }

    /// Imports `hull.test/busybox:1` and `hull.test/pause:1` into `namespace`.
    pub fn import_test_images(&self, namespace: &str) {
        self.import_image(namespace, &oci_image::busybox_image());
        self.import_image(namespace, &oci_image::pause_image());
    }

    /// A CRI client on this containerd (pod logs go under the private directory).
    pub fn cri(&self) -> Cri {
        Cri::connect(&self.socket, &self.dir().join("pod-logs")).unwrap_or_else(|e| panic!("{e}\n{}", self.report()))
    }

    /// Imports the test images into [`CRI_NAMESPACE`], connects a CRI client and waits until CRI sees them.
    pub fn cri_with_images(&self) -> Cri {
        self.import_test_images(CRI_NAMESPACE);
        let cri = self.cri();
        for image in [oci_image::BUSYBOX_IMAGE, oci_image::PAUSE_IMAGE] {
            cri.wait_image(image, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{e}\n{}", self.report()));
        }
        cri
    }

    /// The socket path containerd 1.6 gives the shim of task `id` in `namespace` (the sandbox id for pods
    /// whose shim groups containers): `/run/containerd/s/<sha256(address/namespace/id)>`.
    pub fn shim_socket(&self, namespace: &str, id: &str) -> PathBuf {
        shim_socket_path(&self.socket, namespace, id)
    }

    /// PIDs of live shim processes started by this containerd (their `-address` is our socket).
    pub fn shim_pids(&self) -> Vec<u32> {
        shim_pids(&self.socket)
    }

    /// What the instance touches outside its own process, to check after drop that nothing is left.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            socket: self.socket.clone(),
            dir: self.dir().to_path_buf(),
            netns: self.network.as_ref().map(|n| n.netns.clone()),
        }
    }

    /// Removes pods (through CRI), then tasks and containers (through ctr), in every namespace.
    fn remove_workloads(&self) {
        if let Ok(cri) = Cri::connect(&self.socket, &self.dir().join("pod-logs")) {
            let mut rt = cri.runtime();
            let pods = cri
                .block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        rt.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest::default()),
                    )
                    .await
                })
                .ok()
                .and_then(|r| r.ok())
                .map(|r| r.into_inner().items)
                .unwrap_or_default();
            for pod in pods {
                if let Err(e) = cri.stop_pod_sandbox(&pod.id) {
                    note(&format!("containerd harness: cleanup: {e}"));
                }
                let _ = cri.remove_pod_sandbox(&pod.id);
            }
        }
        let namespaces = self.ctr(&["namespaces", "ls", "-q"]);
        for ns in namespaces.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let tasks = self.ctr_in(ns, &["tasks", "ls", "-q"]);
            for task in tasks.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.ctr_in(ns, &["tasks", "kill", "-a", "-s", "SIGKILL", task]);
                let _ = self.ctr_in(ns, &["tasks", "delete", "-f", task]);
            }
            let containers = self.ctr_in(ns, &["containers", "ls", "-q"]);
            for c in containers.stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let _ = self.ctr_in(ns, &["containers", "rm", c]);
            }
        }
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on the PID of our own unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            note(&self.report());
        }
        if self.child.is_some() {
            self.remove_workloads();
        }
        self.stop_daemon();
        kill_shims(&self.socket);
        let dir = self.dir().to_path_buf();
        unmount_under(&dir);
        if let Some(network) = &self.network {
            let _ = Command::new("ip").args(["netns", "delete", &network.netns]).status();
            if let Ok(entries) = std::fs::read_dir(CNI_CACHE_DIR) {
                for e in entries.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{}-", network.netns))
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        // TempDir's drop removes the directory.
        self.dir.take();
    }
}

/// What a [`Containerd`] touched, kept past its drop to check for leftovers.
#[derive(Clone, Debug)]
pub struct Footprint {
    pub socket: PathBuf,
    pub dir: PathBuf,
    pub netns: Option<String>,
}

impl Footprint {
    /// Everything still there that should not be: shim processes, mounts under the directory, the
    /// directory, the network namespace, and the shim sockets of `shim_ids` (namespace, task or sandbox id).
    pub fn leftovers(&self, shim_ids: &[(&str, &str)]) -> Vec<String> {
        let mut left = Vec::new();
        for pid in shim_pids(&self.socket) {
            left.push(format!("shim process {pid}: {}", cmdline(pid).join(" ")));
        }
        for m in mounts_under(&self.dir) {
            left.push(format!("mount {}", m.display()));
        }
        if self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        if let Some(ns) = &self.netns {
            if Path::new("/run/netns").join(ns).exists() {
                left.push(format!("network namespace {ns}"));
            }
        }
        for (ns, id) in shim_ids {
            let sock = shim_socket_path(&self.socket, ns, id);
            if sock.exists() {
                left.push(format!("shim socket {} ({ns}/{id})", sock.display()));
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_private_paths_and_both_handlers() {
        let options = ContainerdOptions {
            hull_config_path: Some("/x/hull shim.toml".into()),
            hull_runtime_toml: "pod_annotations = [\"io.hull.*\"]".into(),
            extra_toml: "[plugins.\"io.containerd.gc.v1.scheduler\"]\n  pause_threshold = 0.02\n".into(),
            ..Default::default()
        };
        let text = config_toml(Path::new("/t/d"), Path::new("/t/d/containerd.sock"), &options);
        for want in [
            "root = \"/t/d/root\"",
            "state = \"/t/d/state\"",
            "address = \"/t/d/containerd.sock\"",
            "restrict_oom_score_adj = true",
            "sandbox_image = \"hull.test/pause:1\"",
            "runtime_type = \"io.containerd.runc.v2\"",
            "runtime_type = \"io.containerd.hull.v2\"",
            "ConfigPath = \"/x/hull shim.toml\"",
            "      pod_annotations = [\"io.hull.*\"]",
            "pause_threshold = 0.02",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
        assert_eq!(unescape_mount_path("/end\\"), "/end\\");
    }

    #[test]
    fn shim_socket_is_a_sha256_under_run_containerd() {
        let p = shim_socket_path(Path::new("/t/c.sock"), "default", "x");
        let expect = crate::oci_image::sha256_digest(b"/t/c.sock/default/x");
        assert_eq!(p, Path::new(SHIM_SOCKET_DIR).join(&expect[7..]));
    }
}
