//! End to end: MMDS (Firecracker's metadata service) served by `hull vhost-user net --mmds` to a QEMU TCG
//! Linux guest. The guest configures eth0, takes a V2 session token with a hand-written `PUT` over busybox
//! `nc`, and reads `latest/meta-data/...` with busybox `wget` in IMDS text and JSON. Meanwhile a packet
//! socket on the TAP (in the network namespace this test creates) records every frame that reaches the
//! host: none may involve the MMDS address, while the guest's ping of the host must be there.
//!
//! Also hull itself (no guest user space needed): `--metadata` and `--mmds-size-limit` feed the data store
//! the API serves, and `InstanceStart` attaches MMDS to the interface `PUT /mmds/config` named.
//!
//! Everything started (backend, QEMU, the capture thread) and created (namespace, TAP, files) is owned by
//! guards that clean up on drop, also when an assertion fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use hull_tests::guest_devices::*;
use hull_tests::vhost_user::{ensure_tools, hull, kernel, Proc, WorkDir, GUEST_TIMEOUT};
use hull_tests::{kvm_usable, skip, ApiClient, Hull, TempDir};
use serde_json::{json, Value};

const HOST_IP: [u8; 4] = [10, 78, 0, 1];
const GUEST_IP: [u8; 4] = [10, 78, 0, 2];
const MMDS_IP: [u8; 4] = [169, 254, 169, 254];
const TAP: &str = "mmdstap0";
const GUEST_MAC: &str = "52:54:00:78:00:02";

fn dotted(ip: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])
}

/// Every frame seen on `tap` (both directions) until `stop` is set. Runs inside the namespace.
fn capture(tap: &str, ready: mpsc::Sender<()>, stop: Arc<AtomicBool>) -> Vec<Vec<u8>> {
    let name = std::ffi::CString::new(tap).unwrap();
    // SAFETY: plain socket calls on an fd this function owns; every pointer is to a local of the right size.
    unsafe {
        let all = (libc::ETH_P_ALL as u16).to_be();
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all));
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = all;
        addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        assert!(addr.sll_ifindex > 0, "no interface {tap}");
        let rc = libc::bind(
            fd,
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(timeout).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
        ready.send(()).unwrap();
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n > 0 {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        libc::close(fd);
        frames
    }
}

/// Whether an Ethernet frame carries IPv4 to or from `ip`, or ARP about `ip`.
fn involves(frame: &[u8], ip: [u8; 4]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    let body = &frame[14..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 if body.len() >= 20 => body[12..16] == ip || body[16..20] == ip,
        0x0806 if body.len() >= 28 => body[14..18] == ip || body[24..28] == ip,
        _ => false,
    }
}

/// An ICMP echo request from the guest to the host.
fn is_guest_ping(frame: &[u8]) -> bool {
    frame.len() >= 34
        && frame[12..14] == [0x08, 0x00]
        && frame[14 + 9] == 1
        && frame[14 + 12..14 + 16] == GUEST_IP
        && frame[14 + 16..14 + 20] == HOST_IP
        && frame[34] == 8
}

#[test]
fn qemu_guest_reads_mmds_v2_and_no_mmds_frame_reaches_the_tap() {
    ensure_tools();
    let dir = WorkDir::new("mmds");
    let ns = Netns::new("mmds");
    ns.add_tap(TAP, &format!("{}/24", dotted(HOST_IP)));
    let metadata = dir.path().join("metadata.json");
    let content = serde_json::json!({"latest": {"meta-data": {
        "ami-id": "ami-12345678",
        "local-hostname": "guest-1",
        "placement": {"availability-zone": "hull-1a"},
        // Many segments: more than MMDS keeps unacknowledged at once.
        "big": "x".repeat(30_000),
    }}});
    std::fs::write(&metadata, content.to_string()).unwrap();

    let (ready_tx, ready_rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_capture = stop.clone();
    let capture = ns.spawn(move || capture(TAP, ready_tx, stop_capture));
    ready_rx.recv().unwrap();

    let spec = GuestSpec {
        script: "mmds.sh".into(),
        cmdline: format!("hull.ip={} hull.host={}", dotted(GUEST_IP), dotted(HOST_IP)),
        net: Some(NetSpec {
            tap: TAP.into(),
            mac: GUEST_MAC.into(),
            netns: ns.0.clone(),
        }),
        net_backend_args: ["--mmds", "--mmds-version", "V2", "--metadata"]
            .iter()
            .map(|s| s.to_string())
            .chain([metadata.to_str().unwrap().to_string()])
            .collect(),
        ..Default::default()
    };
    let start = Instant::now();
    let mut guest = boot(Vmm::Qemu, dir.path(), &spec);
    guest.expect("HULL-TEST-EXIT", GUEST_TIMEOUT);
    eprintln!("mmds guest finished in {:?}", start.elapsed());
    stop.store(true, Ordering::Relaxed);
    let frames = capture.join().unwrap();

    let report = guest.report();
    let no_token = guest.marker("NO-TOKEN");
    assert!(no_token.starts_with("rc=1") && no_token.contains("401"), "{report}");
    assert_eq!(guest.marker("TOKEN-LEN"), "64", "{report}");
    assert_eq!(guest.marker("AMI-ID"), "ami-12345678", "{report}");
    assert_eq!(
        guest.marker("LISTING"),
        "ami-id,big,local-hostname,placement/",
        "{report}"
    );
    assert_eq!(guest.marker("BIG-BYTES"), "30000", "{report}");
    assert_eq!(guest.marker("JSON"), r#"{"availability-zone":"hull-1a"}"#, "{report}");
    let missing = guest.marker("MISSING");
    assert!(missing.starts_with("rc=1") && missing.contains("404"), "{report}");
    assert_eq!(guest.marker("PING"), "ok", "{report}");

    assert!(
        frames.iter().any(|f| is_guest_ping(f)),
        "the capture saw {} frames but not the guest's ping: it would not have seen MMDS frames either",
        frames.len()
    );
    let leaked: Vec<&Vec<u8>> = frames.iter().filter(|f| involves(f, MMDS_IP)).collect();
    assert!(
        leaked.is_empty(),
        "{} MMDS frames reached the TAP: {:02x?}",
        leaked.len(),
        leaked.first()
    );
    drop(guest);
    drop(ns);
}

#[test]
fn hull_metadata_flag_fills_the_data_store_within_the_size_limit() {
    let files = TempDir::new("mmds-md").unwrap();
    let metadata = files.path().join("metadata.json");
    std::fs::write(&metadata, r#"{"latest": {"meta-data": {"ami-id": "ami-1"}}}"#).unwrap();
    let md = metadata.to_str().unwrap();
    let hull = Hull::with_api("mmds-api", &["--metadata", md, "--mmds-size-limit", "100"]);
    let api = hull.api();
    let got = api.get("/mmds").unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&got.body).unwrap(),
        json!({"latest": {"meta-data": {"ami-id": "ami-1"}}})
    );
    let big = api.put("/mmds", &json!({ "k": "x".repeat(100) })).unwrap();
    assert_eq!(big.status, 413, "{}", big.body);
    assert!(big.body.contains("fault_message"), "{}", big.body);
    let patched = api
        .patch("/mmds", &json!({"latest": {"meta-data": {"ami-id": "ami-2"}}}))
        .unwrap();
    assert_eq!(patched.status, 204, "{}", patched.body);
    let got = api.get("/mmds").unwrap();
    assert!(got.body.contains("ami-2"), "{}", got.body);
    let cfg = api
        .put("/mmds/config", &json!({"network_interfaces": ["eth0"]}))
        .unwrap();
    assert_eq!(cfg.status, 400, "no interface eth0 yet: {}", cfg.body);
    drop(hull);

    // Content over the limit: hull refuses to start (Firecracker's bad-configuration status).
    let mut over = Hull::spawn(
        "mmds-over",
        [
            "--no-api",
            "--config-file",
            "/nonexistent",
            "--metadata",
            md,
            "--mmds-size-limit",
            "10",
        ],
    );
    let status = over.wait_exit(std::time::Duration::from_secs(10)).expect("hull exits");
    assert_eq!(status.code(), Some(152), "{}", over.stderr());
    assert!(over.stderr().contains("MMDS size limit"), "{}", over.stderr());
}

/// hull's own net path: MMDS configured through the API is attached to eth0 at `InstanceStart`, and the
/// data store stays writable while the microVM runs. The guest is killed right after (no Linux user space
/// runs under the software KVM; the frames themselves are proven by the QEMU test above, through the same
/// device core).
#[test]
fn hull_attaches_mmds_to_the_named_interface_at_instance_start() {
    let test = "hull_attaches_mmds_to_the_named_interface_at_instance_start";
    if !kvm_usable() {
        skip(test, "/dev/kvm is missing or not accessible");
        return;
    }
    ensure_tools();
    let dir = WorkDir::new("mmds-hull");
    let ns = Netns::new("mmds-hull");
    ns.add_tap(TAP, &format!("{}/24", dotted(HOST_IP)));
    let sock = dir.join("api.sock");
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns.0])
        .arg(hull())
        .args(["--api-sock", sock.to_str().unwrap(), "--log-level", "Info"]);
    let mut vmm = Proc::spawn("hull", cmd);
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "no API socket\n{}", vmm.output());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let api = ApiClient::new(&sock);
    let put = |uri: &str, body: Value| {
        let r = api.put(uri, &body).unwrap();
        assert!(r.is_success(), "PUT {uri}: {} {}", r.status, r.body);
    };
    put("/machine-config", json!({"vcpu_count": 1, "mem_size_mib": 128}));
    put(
        "/boot-source",
        json!({"kernel_image_path": kernel(), "boot_args": "console=ttyS0 reboot=k panic=-1"}),
    );
    put(
        "/network-interfaces/eth0",
        json!({"iface_id": "eth0", "host_dev_name": TAP, "guest_mac": GUEST_MAC}),
    );
    put(
        "/mmds/config",
        json!({"network_interfaces": ["eth0"], "version": "V2", "ipv4_address": "169.254.170.2"}),
    );
    put("/mmds", json!({"latest": {"meta-data": {"ami-id": "ami-1"}}}));
    put("/actions", json!({"action_type": "InstanceStart"}));
    let line = vmm
        .wait_for("MMDS served on this interface", std::time::Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", vmm.output()));
    assert!(line.contains("eth0") && line.contains("169.254.170.2"), "{line}");
    // After boot: the configuration is fixed, the data is not.
    let r = api
        .put("/mmds/config", &json!({"network_interfaces": ["eth0"]}))
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    let r = api
        .patch("/mmds", &json!({"latest": {"meta-data": {"ami-id": "ami-2"}}}))
        .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    assert!(api.get("/mmds").unwrap().body.contains("ami-2"));
    let config: Value = serde_json::from_str(&api.get("/vm/config").unwrap().body).unwrap();
    assert_eq!(config["mmds-config"]["version"], "V2");
    vmm.kill9();
    drop(ns);
}
