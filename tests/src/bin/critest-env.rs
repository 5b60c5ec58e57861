//! `critest-env`: a private containerd for the Kubernetes CRI validation suite (`critest`, kubernetes-sigs/
//! cri-tools), run by `scripts/critest.sh`. It is the harness the containerd tests use ([`Containerd`] with a
//! network): Debian's containerd with its own root, state and sockets and both runtime handlers (`runc`, and
//! `hull` with the default shim config), a CNI bridge network in a network namespace of its own (plus the
//! `portmap` plugin, for critest's hostPort tests), and the images critest needs built locally and imported,
//! so nothing is pulled from a registry.
//!
//! Usage: `critest-env [--log-dir DIR] [--sh PROGRAM]`. `--sh` names a busybox built without
//! `FEATURE_SH_STANDALONE` (Debian's dynamic `busybox` package, not busybox-static) to be the images' `/bin/sh`,
//! shared libraries included: a standalone shell runs applets itself instead of executing `/bin/ls`, and
//! critest's MaskedPaths test expects `sh -c ls` to fail when `/bin/ls` is masked.
//!
//! It prints `key=value` lines on stdout, then `ready`:
//!   socket=            containerd's socket (CRI runtime and image endpoint)
//!   netns=             the network namespace containerd and the pods' bridge live in (`/run/netns/<name>`):
//!                      critest must run in it too (`nsenter --net=/run/netns/<name>`), since it fetches pages
//!                      from pod IPs and 127.0.0.1 host ports, and streams through containerd's server there
//!   dir=               the instance's private directory (containerd.log, hull-vms/ with the VMs' work dirs)
//!   test_images_file=  the YAML for critest's `--test-images-file`
//! and keeps everything running until its standard input closes or it gets SIGTERM, SIGINT or SIGHUP; then it
//! copies containerd's log (shim logs included) to `--log-dir` when given and removes everything.
//!
//! Wants root, like the containerd tests. Finds `containerd-shim-hull-v2` and `hull` next to itself
//! (`$HULL_BIN` overrides the latter), the guest from `$HULL_KERNEL`/`$HULL_INITRD` or
//! `resources/build-guest.sh`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hull_tests::containerd::{cni_conflist, Containerd, ContainerdOptions, CRI_NAMESPACE};
use hull_tests::cri::Cri;
use hull_tests::oci_image::{self, OciImage, RootEntry};
use hull_tests::TempDir;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// critest's default test image, named in the `--test-images-file` (busybox, `Cmd ["sh"]`).
const DEFAULT_IMAGE: &str = "hull.test/critest/busybox:1";
/// critest's web server image (`webServerTestImage`): busybox httpd on port 80 serving /www.
const WEB_IMAGE: &str = "hull.test/critest/web:1";

/// References critest 1.28 uses as they are (not configurable), outside the skipped "Image Manager" tests.
const NGINX_IMAGE: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
const HTTPD_IMAGE: &str = "registry.k8s.io/e2e-test-images/httpd:2.4.39-4";
const NONEWPRIVS_IMAGE: &str = "registry.k8s.io/e2e-test-images/nonewprivs:1.3";
const PREDEFINED_GROUP_IMAGE: &str = "gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest";

/// critest's `hostNetWebServerImage` (`hostnet-nginx-<GOARCH>`, serving on port 12003).
fn hostnet_web_image() -> String {
    format!(
        "gcr.io/k8s-staging-cri-tools/hostnet-nginx-{}:latest",
        oci_image::oci_arch()
    )
}

/// The image critest's default would be (only used when the images file is not given; built anyway).
const E2E_BUSYBOX_IMAGE: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> RootEntry {
    RootEntry::File {
        path: path.into(),
        mode,
        data: data.into(),
    }
}

fn program(name: &str) -> Vec<u8> {
    let path = Path::new(env!("HULL_TEST_PROGRAMS_DIR")).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e} (built by tests/build.rs)", path.display()))
}

/// The entries every critest image adds to the busybox base: busybox's applets as hard links (as in the real
/// busybox images: critest's MaskedPaths test masks `/bin/ls` and expects only `ls` to stop working, which a
/// symlink to `/bin/busybox` would defeat), `pgrep` and `ipcs`, which Debian's busybox-static lacks, and with
/// `sh` given, that program and its shared libraries as `/bin/sh`.
fn critest_base(sh: Option<&Path>) -> Vec<RootEntry> {
    let mut entries: Vec<RootEntry> = oci_image::busybox_applets()
        .into_iter()
        .filter(|path| sh.is_none() || path != "bin/sh")
        .map(|path| RootEntry::HardLink {
            path,
            target: "bin/busybox".into(),
        })
        .collect();
    entries.push(file("usr/bin/pgrep", 0o755, program("critest-tools")));
    entries.push(RootEntry::HardLink {
        path: "usr/bin/ipcs".into(),
        target: "usr/bin/pgrep".into(),
    });
    if let Some(sh) = sh {
        entries.push(file("bin/sh", 0o755, read(sh)));
        for lib in shared_libraries(sh) {
            let path = lib
                .strip_prefix("/")
                .expect("ldd prints absolute paths")
                .to_string_lossy()
                .into_owned();
            entries.push(file(&path, 0o755, read(&lib)));
        }
    }
    entries
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The shared libraries and the ELF interpreter `ldd` lists for `program`, as the host has them.
fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .unwrap_or_else(|e| panic!("ldd {}: {e}", program.display()));
    assert!(out.status.success(), "ldd {} failed", program.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `critest_base` and `more`.
fn with_base(base: &[RootEntry], more: &[RootEntry]) -> Vec<RootEntry> {
    let mut entries = base.to_vec();
    entries.extend_from_slice(more);
    entries
}

/// Every image critest needs, built from the host's busybox (and static programs of `tests/programs/`); `sh`
/// as in [`critest_base`].
fn images(sh: Option<&Path>) -> Vec<OciImage> {
    let index = file(
        "www/index.html",
        0o644,
        "<html><body>hull critest web server</body></html>\n",
    );
    let web_cmd = ["httpd", "-f", "-p", "80", "-h", "/www"];
    let base = critest_base(sh);
    vec![
        oci_image::busybox_image(),
        // The sandbox image containerd is configured with, here with a process called `pause`.
        oci_image::build_cached_with(
            oci_image::PAUSE_IMAGE,
            &["/pause"],
            None,
            &[file("pause", 0o755, program("critest-tools"))],
        ),
        oci_image::build_cached_with(DEFAULT_IMAGE, &["sh"], None, &base),
        oci_image::build_cached_with(E2E_BUSYBOX_IMAGE, &["sh"], None, &base),
        oci_image::build_cached_with(WEB_IMAGE, &web_cmd, None, &with_base(&base, std::slice::from_ref(&index))),
        // Streaming, portforward in host network: a web server on port 12003 (critest's images/hostnet-nginx).
        oci_image::build_cached_with(
            &hostnet_web_image(),
            &["httpd", "-f", "-p", "12003", "-h", "/www"],
            None,
            &with_base(&base, std::slice::from_ref(&index)),
        ),
        // Multiple Containers: port 80, and a log line like Apache's "Command line: 'httpd -D FOREGROUND'".
        oci_image::build_cached_with(
            HTTPD_IMAGE,
            &[
                "sh",
                "-c",
                "echo \"[core:notice] AH00094: Command line: 'httpd -D FOREGROUND'\" >&2; \
                 exec httpd -f -p 80 -h /www",
            ],
            None,
            &with_base(&base, &[index]),
        ),
        // Security Context, NamespaceOption: `pidof nginx`, /var/run/nginx.pid, "master process" in cmdline.
        oci_image::build_cached_with(
            NGINX_IMAGE,
            &["/usr/sbin/nginx"],
            None,
            &with_base(&base, &[
                file("usr/sbin/nginx", 0o755, program("critest-nginx")),
                RootEntry::Dir {
                    path: "var/run".into(),
                    mode: 0o755,
                },
            ]),
        ),
        // Security Context, NoNewPrivs: a set-user-ID root program printing "Effective uid: N".
        oci_image::build_cached_with(
            NONEWPRIVS_IMAGE,
            &["/usr/local/bin/nnp"],
            None,
            &with_base(&base, &[file("usr/local/bin/nnp", 0o4755, program("critest-nonewprivs"))]),
        ),
        // Security Context, SupplementalGroups: user default-user (1000) is in group-defined-in-image (50000).
        oci_image::build_cached_with(
            PREDEFINED_GROUP_IMAGE,
            &["sh"],
            Some("1000"),
            &with_base(&base, &[
                file(
                    "etc/passwd",
                    0o644,
                    "root:x:0:0:root:/root:/bin/sh\n\
                     default-user:x:1000:1000:default-user:/home/default-user:/bin/sh\n\
                     nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
                ),
                file(
                    "etc/group",
                    0o644,
                    "root:x:0:\ndefault-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\nnogroup:x:65534:\n",
                ),
            ]),
        ),
    ]
}

fn test_images_yaml() -> String {
    format!("defaultTestContainerImage: {DEFAULT_IMAGE}\nwebServerTestImage: {WEB_IMAGE}\n")
}

/// Rewrites the CNI conflist with `portmap` after the bridge (hostPort mappings; `capabilities` makes
/// containerd pass the pod's port mappings), then waits until containerd's CRI status shows it. Written in
/// place: containerd 1.6 reloads its CNI config on a write event in the directory and ignores created files.
fn add_portmap(ctd: &Containerd, cri: &Cri) {
    let network = ctd.network().expect("started with network").clone();
    let dir = ctd.dir();
    let mut conf: serde_json::Value =
        serde_json::from_str(&cni_conflist(&network, &dir.join("cni-ipam"))).expect("the harness's conflist is JSON");
    conf["plugins"]
        .as_array_mut()
        .expect("plugins is a list")
        .push(serde_json::json!({ "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }));
    let text = serde_json::to_string_pretty(&conf).expect("serialize");
    std::fs::write(dir.join("cni/10-hull-test.conflist"), text).expect("rewrite the conflist");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = cri.status_info().unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
        if info.get("cniconfig").is_some_and(|c| c.contains("portmap")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "containerd did not load the conflist with portmap: {:?}\n{}",
            info.get("cniconfig"),
            ctd.report()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let mut log_dir: Option<PathBuf> = None;
    let mut sh: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--log-dir" => log_dir = Some(args.next().expect("--log-dir DIR").into()),
            "--sh" => sh = Some(args.next().expect("--sh PROGRAM").into()),
            other => {
                eprintln!("critest-env: unknown argument {other:?}\nusage: critest-env [--log-dir DIR] [--sh PROGRAM]");
                std::process::exit(2);
            }
        }
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        .expect("the executable's directory");
    if std::env::var_os("HULL_BIN").is_none() {
        std::env::set_var("HULL_BIN", exe_dir.join("hull"));
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }

    let own = TempDir::new("critest").expect("create a temporary directory");
    let shim_config = own.path().join("shim.toml");
    let images_file = own.path().join("critest-images.yaml");
    std::fs::write(&images_file, test_images_yaml()).expect("write the test images file");
    let guest = hull_tests::guest_images();
    eprintln!(
        "critest-env: guest kernel={} initrd={}",
        guest.kernel.display(),
        guest.initrd.display()
    );
    let images = images(sh.as_deref());

    let ctd = Containerd::start(ContainerdOptions {
        network: true,
        path_prepend: vec![exe_dir],
        hull_config_path: Some(shim_config.clone()),
        ..Default::default()
    });
    // The default shim config: hostNetwork/hostPID/hostIPC pods are refused by design.
    ctd.write_hull_shim_config(&shim_config, "");
    let cri = ctd.cri();
    add_portmap(&ctd, &cri);
    for image in &images {
        ctd.import_image(CRI_NAMESPACE, image);
    }
    for image in &images {
        cri.wait_image(&image.reference, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}\n{}", ctd.report()));
    }
    drop(cri);
    let netns = ctd.network().expect("network").netns.clone();
    println!("socket={}", ctd.socket().display());
    println!("netns={netns}");
    println!("dir={}", ctd.dir().display());
    println!("test_images_file={}", images_file.display());
    println!("ready");
    use std::io::Write;
    let _ = std::io::stdout().flush();

    std::thread::spawn(|| {
        let mut sink = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        STOP.store(true, Ordering::SeqCst);
    });
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("critest-env: stopping {}", ctd.name());
    if let Some(dir) = &log_dir {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join("containerd.log"), ctd.log());
        // The VMs' work directories left (each holds its guest's console log while the pod exists).
        let vms = ctd.dir().join("hull-vms");
        if vms.is_dir() {
            let _ = std::process::Command::new("cp").arg("-a").arg(&vms).arg(dir).status();
        }
    }
    drop(ctd);
    drop(own);
}
