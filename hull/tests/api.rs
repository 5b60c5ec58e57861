//! End-to-end tests of the `hull` binary's API: each test starts this crate's binary with its own socket in
//! a fresh temporary directory, speaks HTTP/1.1 through hull-runtime's API client (raw bytes where a test
//! sends what no client should) and checks status codes and `fault_message` texts. No guest is booted here
//! (that needs KVM; see the `tests` crate). The process wrapper and temporary directories are the
//! `hull-tests` harness's: every process and directory a test creates is removed on drop, also when the
//! test fails.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::{ApiConnection, ApiResponse, Hull, TempDir};
use serde_json::json;

const HULL: &str = env!("CARGO_BIN_EXE_hull");
const TIMEOUT: Duration = Duration::from_secs(20);

/// A fresh temporary directory for one test.
fn temp_dir() -> TempDir {
    TempDir::new("api").expect("create temp dir")
}

/// Starts this crate's `hull` with `--api-sock <dir>/api.sock` plus `args` in `dir`, without waiting for
/// the socket.
fn spawn_in(dir: TempDir, args: &[&str]) -> Hull {
    let sock = dir.path().join("api.sock");
    let sock_arg = sock.to_str().expect("UTF-8 path").to_string();
    spawn_with(dir, &[&["--api-sock", &sock_arg], args].concat())
}

/// Starts this crate's `hull` with exactly `args` in `dir`.
fn spawn_with(dir: TempDir, args: &[&str]) -> Hull {
    Hull::spawn_binary_in(Path::new(HULL), dir, args)
}

/// Starts hull with an API socket and waits until it accepts connections.
fn start() -> Hull {
    let hull = spawn_in(temp_dir(), &[]);
    hull.wait_for_api(TIMEOUT);
    hull
}

/// The API socket of a hull started by [`spawn_in`].
fn sock(hull: &Hull) -> PathBuf {
    hull.dir().join("api.sock")
}

/// Sends one request on a kept-alive connection.
fn send(conn: &mut ApiConnection, method: &str, path: &str, body: Option<&str>) {
    conn.send(method, path, body, true).expect("send request");
}

/// Reads one response on a kept-alive connection.
fn read_reply(conn: &mut ApiConnection) -> ApiResponse {
    conn.read_response().expect("read a response")
}

/// What these tests check in an error answer.
trait Fault {
    /// Asserts a 400-class error whose fault_message contains `expected`.
    fn assert_fault(&self, status: u16, expected: &str);
}

impl Fault for ApiResponse {
    fn assert_fault(&self, status: u16, expected: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        let fault = self
            .fault_message()
            .unwrap_or_else(|| panic!("no fault_message in {}", self.body));
        assert!(
            fault.contains(expected),
            "fault_message {fault:?} does not contain {expected:?}"
        );
    }
}

/// A file that passes the kernel-path check (it exists and is readable; it is never booted here).
fn fake_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("vmlinux");
    std::fs::write(&path, b"not really a kernel").expect("write fake kernel");
    path
}

#[test]
fn instance_info_says_not_started() {
    let hull = start();
    let reply = hull.request("GET", "/", None);
    assert_eq!(reply.status, 200);
    let info = reply.json();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "hull");
    assert_eq!(info["id"], "anonymous-instance");
    assert!(info["vmm_version"].is_string());
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
}

#[test]
fn version_has_firecracker_and_hull_keys() {
    let hull = start();
    let reply = hull.request("GET", "/version", None);
    assert_eq!(reply.status, 200);
    let version = reply.json();
    assert_eq!(version["firecracker_version"], version["vmm_version"]);
    assert!(version["vmm_version"].is_string());
}

#[test]
fn machine_config_has_firecracker_defaults() {
    let hull = start();
    let reply = hull.request("GET", "/machine-config", None);
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json(),
        json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "cpu_template": "None", "track_dirty_pages": false, "huge_pages": "None"})
    );
}

#[test]
fn put_then_get_roundtrip() {
    let hull = start();
    let kernel = fake_kernel(hull.dir());
    let kernel = kernel.to_str().expect("UTF-8 path");

    let reply = hull.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#),
    );
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(reply.body, "");
    let reply = hull.request("PATCH", "/machine-config", Some(r#"{"mem_size_mib": 512}"#));
    assert_eq!(reply.status, 204, "{}", reply.body);
    let boot = json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0 reboot=k"}).to_string();
    let reply = hull.request("PUT", "/boot-source", Some(&boot));
    assert_eq!(reply.status, 204, "{}", reply.body);

    let machine = hull.request("GET", "/machine-config", None).json();
    assert_eq!(
        (machine["vcpu_count"].as_u64(), machine["mem_size_mib"].as_u64()),
        (Some(2), Some(512))
    );

    let config = hull.request("GET", "/vm/config", None).json();
    assert_eq!(config["boot-source"]["kernel_image_path"], kernel);
    assert_eq!(config["boot-source"]["boot_args"], "console=ttyS0 reboot=k");
    assert_eq!(config["machine-config"], machine);
    assert_eq!(config["drives"], json!([]));
    assert_eq!(config["network-interfaces"], json!([]));
}

#[test]
fn keep_alive_serves_many_requests_on_one_connection() {
    let hull = start();
    let mut conn = hull.connect_api();
    for _ in 0..3 {
        send(
            &mut conn,
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count": 1, "mem_size_mib": 64}"#),
        );
        assert_eq!(read_reply(&mut conn).status, 204);
        send(&mut conn, "GET", "/", None);
        let reply = read_reply(&mut conn);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("Connection"), Some("keep-alive"));
    }
    // An error does not end the connection either.
    send(&mut conn, "PUT", "/machine-config", Some("{"));
    assert_eq!(read_reply(&mut conn).status, 400);
    send(&mut conn, "GET", "/machine-config", None);
    assert_eq!(read_reply(&mut conn).json()["mem_size_mib"], 64);
}

#[test]
fn malformed_json_is_400() {
    let hull = start();
    hull.request("PUT", "/machine-config", Some(r#"{"vcpu_count": 1,"#))
        .assert_fault(
            400,
            "An error occurred when deserializing the json body of a request: EOF while parsing",
        );
    hull.request("PUT", "/actions", Some("[1, 2]"))
        .assert_fault(400, "An error occurred when deserializing the json body of a request");
}

#[test]
fn unknown_field_is_400() {
    let hull = start();
    hull.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 128, "ht_enabled": true}"#),
    )
    .assert_fault(400, "unknown field `ht_enabled`");
    hull.request(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/k", "kernel": "/k"}"#),
    )
    .assert_fault(400, "unknown field `kernel`");
}

#[test]
fn missing_field_is_400() {
    let hull = start();
    hull.request("PUT", "/machine-config", Some(r#"{"vcpu_count": 1}"#))
        .assert_fault(400, "missing field `mem_size_mib`");
    hull.request("PUT", "/boot-source", Some(r#"{"boot_args": "console=ttyS0"}"#))
        .assert_fault(400, "missing field `kernel_image_path`");
    hull.request("PUT", "/actions", Some("{}"))
        .assert_fault(400, "missing field `action_type`");
}

#[test]
fn vcpu_count_out_of_range_is_400() {
    let hull = start();
    for count in [0, 33] {
        let body = json!({"vcpu_count": count, "mem_size_mib": 128}).to_string();
        hull.request("PUT", "/machine-config", Some(&body)).assert_fault(
            400,
            &format!("The number of vCPUs must be between 1 and 32, and 1 or even when SMT is enabled (got {count})"),
        );
    }
    hull.request("PATCH", "/machine-config", Some(r#"{"vcpu_count": 0}"#))
        .assert_fault(400, "(got 0)");
    hull.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 3, "mem_size_mib": 128, "smt": true}"#),
    )
    .assert_fault(400, "(got 3)");
    assert_eq!(
        hull.request("GET", "/machine-config", None).json()["vcpu_count"],
        1,
        "nothing changed"
    );
}

#[test]
fn too_little_memory_is_400() {
    let hull = start();
    hull.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 1}"#),
    )
    .assert_fault(400, "The memory size (MiB) must be between 16 and");
}

#[test]
fn missing_kernel_file_is_400() {
    let hull = start();
    let missing = hull.dir().join("no-such-vmlinux");
    let body = json!({"kernel_image_path": missing}).to_string();
    let reply = hull.request("PUT", "/boot-source", Some(&body));
    reply.assert_fault(400, "The kernel file cannot be opened");
    reply.assert_fault(400, missing.to_str().expect("UTF-8 path"));
}

#[test]
fn empty_body_is_400() {
    let hull = start();
    hull.request("PUT", "/boot-source", None)
        .assert_fault(400, "Empty PUT request.");
    hull.request("PATCH", "/machine-config", Some(""))
        .assert_fault(400, "Empty PATCH request.");
    hull.request("PATCH", "/machine-config", Some("{}"))
        .assert_fault(400, "Empty PATCH request.");
}

#[test]
fn wrong_method_is_405() {
    let hull = start();
    let reply = hull.request("POST", "/machine-config", Some("{}"));
    reply.assert_fault(405, "Invalid request method and/or path: POST /machine-config.");
    assert_eq!(reply.header("Allow"), Some("GET, PUT, PATCH"));
    hull.request("GET", "/actions", None)
        .assert_fault(405, "Invalid request method and/or path: GET /actions.");
    hull.request("DELETE", "/", None).assert_fault(405, "DELETE /");
}

#[test]
fn unknown_path_is_404() {
    let hull = start();
    hull.request("GET", "/no-such-resource", None)
        .assert_fault(404, "Invalid request method and/or path: GET /no-such-resource.");
    // The snapshot resources exist (PUT only).
    hull.request("GET", "/snapshot/create", None)
        .assert_fault(405, "Allowed methods: PUT.");
    hull.request("PUT", "/machine-configuration", Some("{}"))
        .assert_fault(404, "PUT /machine-configuration");
}

#[test]
fn oversized_body_is_refused_without_being_read() {
    let hull = start();
    // Only the head is sent: the answer must come without the 60 000 announced bytes.
    let mut conn = hull.connect_api();
    conn.send_raw(b"PUT /machine-config HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n")
        .expect("send head");
    let reply = read_reply(&mut conn);
    reply.assert_fault(
        400,
        "Request payload with size 60000 is larger than the limit of 51200 allowed by server.",
    );
    assert_eq!(reply.header("Connection"), Some("close"));

    // The whole body sent at once gets the same answer (the client may see EPIPE while writing).
    let mut conn = hull.connect_api();
    let body = format!(r#"{{"boot_args": "{}"}}"#, "x".repeat(60 * 1024));
    let raw = format!(
        "PUT /boot-source HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.send_raw(raw.as_bytes());
    read_reply(&mut conn).assert_fault(400, "is larger than the limit of 51200");

    // The server is still there.
    assert_eq!(hull.request("GET", "/", None).status, 200);
}

#[test]
fn oversized_or_garbage_heads_are_400() {
    let hull = start();
    let mut conn = hull.connect_api();
    let raw = format!("GET / HTTP/1.1\r\nX-Filler: {}\r\n\r\n", "a".repeat(16 * 1024));
    let _ = conn.send_raw(raw.as_bytes());
    read_reply(&mut conn).assert_fault(400, "Request headers are larger than the limit");

    let mut conn = hull.connect_api();
    conn.send_raw(b"\x16\x03\x01\x02\x00 not http\r\n\r\n")
        .expect("send garbage");
    read_reply(&mut conn).assert_fault(400, "Invalid HTTP request");

    let mut conn = hull.connect_api();
    conn.send_raw(b"PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("send");
    read_reply(&mut conn).assert_fault(400, "Transfer-Encoding is not supported");

    assert_eq!(hull.request("GET", "/", None).status, 200);
}

#[test]
fn instance_start_without_boot_source_is_400() {
    let hull = start();
    hull.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#))
        .assert_fault(400, "Missing boot source");
    assert_eq!(hull.request("GET", "/", None).json()["state"], "Not started");
}

#[test]
fn patch_vm_before_start_is_400() {
    let hull = start();
    for state in ["Paused", "Resumed"] {
        let body = json!({ "state": state }).to_string();
        hull.request("PATCH", "/vm", Some(&body)).assert_fault(
            400,
            "The requested operation is not supported before starting the microVM.",
        );
    }
    hull.request("PATCH", "/vm", Some(r#"{"state": "Frozen"}"#))
        .assert_fault(400, "unknown variant `Frozen`");
}

#[test]
fn send_ctrl_alt_del_before_start_is_400() {
    let hull = start();
    hull.request("PUT", "/actions", Some(r#"{"action_type": "SendCtrlAltDel"}"#))
        .assert_fault(
            400,
            "The requested operation is not supported before starting the microVM.",
        );
}

#[test]
fn devices_are_validated_accepted_and_shown_in_vm_config() {
    let hull = start();
    let image = hull.dir().join("rootfs.ext4");
    std::fs::write(&image, vec![0u8; 64 * 1024]).expect("write a disk image");
    let image = image.to_str().expect("UTF-8 path");
    hull.request(
        "PUT",
        "/drives/rootfs",
        Some(r#"{"drive_id": "rootfs", "path_on_host": "/no/such/r.ext4", "is_root_device": true, "is_read_only": false}"#),
    )
    .assert_fault(400, "/no/such/r.ext4");
    hull.request(
        "PUT",
        "/drives/rootfs",
        Some(r#"{"drive_id": "other", "path_on_host": "/r", "is_root_device": true}"#),
    )
    .assert_fault(400, "The id from the path does not match the id from the body!");
    hull.request(
        "PUT",
        "/drives/rootfs",
        Some(r#"{"drive_id": "rootfs", "is_root_device": true}"#),
    )
    .assert_fault(400, "missing field `path_on_host`");
    let drive = json!({"drive_id": "rootfs", "path_on_host": image, "is_root_device": true, "is_read_only": false});
    let reply = hull.request("PUT", "/drives/rootfs", Some(&drive.to_string()));
    assert_eq!(reply.status, 204, "{}", reply.body);
    let second_root = json!({"drive_id": "other", "path_on_host": image, "is_root_device": true});
    hull.request("PUT", "/drives/other", Some(&second_root.to_string()))
        .assert_fault(400, "root device");
    let reply = hull.request(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}"#),
    );
    assert_eq!(reply.status, 204, "{}", reply.body);
    hull.request(
        "PUT",
        "/network-interfaces/eth1",
        Some(r#"{"iface_id": "eth1", "host_dev_name": "tap1", "guest_mac": "x"}"#),
    )
    .assert_fault(400, "guest_mac");
    hull.request("PUT", "/vsock", Some(r#"{"guest_cid": 2, "uds_path": "/tmp/v.sock"}"#))
        .assert_fault(400, "guest_cid");
    let reply = hull.request("PUT", "/vsock", Some(r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#));
    assert_eq!(reply.status, 204, "{}", reply.body);
    // PATCH takes Firecracker's partial drive: a whole drive body is refused.
    hull.request("PATCH", "/drives/rootfs", Some(&drive.to_string()))
        .assert_fault(400, "unknown field `is_read_only`");

    let config = hull.request("GET", "/vm/config", None).json();
    assert_eq!(config["drives"][0]["drive_id"], "rootfs");
    assert_eq!(config["drives"][0]["path_on_host"], image);
    assert_eq!(config["drives"].as_array().map(Vec::len), Some(1));
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], "tap0");
    assert_eq!(config["vsock"]["guest_cid"], 3);
}

#[test]
fn patch_drive_before_boot_changes_path_on_host_and_refuses_bad_updates() {
    let hull = start();
    let empty = hull.dir().join("slot0.empty");
    std::fs::write(&empty, b"").expect("write a placeholder");
    let image = hull.dir().join("image.ext4");
    std::fs::write(&image, vec![0u8; 64 * 1024]).expect("write a disk image");
    let (empty, image) = (empty.to_str().unwrap(), image.to_str().unwrap());
    let slot = json!({"drive_id": "slot0", "path_on_host": empty, "is_root_device": false, "is_read_only": true});
    let reply = hull.request("PUT", "/drives/slot0", Some(&slot.to_string()));
    assert_eq!(reply.status, 204, "{}", reply.body);

    let update = json!({"drive_id": "slot0", "path_on_host": image});
    let reply = hull.request("PATCH", "/drives/slot0", Some(&update.to_string()));
    assert_eq!(reply.status, 204, "{}", reply.body);
    let config = hull.request("GET", "/vm/config", None).json();
    assert_eq!(config["drives"][0]["path_on_host"], image);
    assert_eq!(config["drives"][0]["is_read_only"], true, "only path_on_host changes");

    let refused = [
        (
            "/drives/slot0",
            r#"{"drive_id": "slot0", "path_on_host": "/no/such.img"}"#,
            "/no/such.img",
        ),
        (
            "/drives/slot0",
            r#"{"drive_id": "slot0"}"#,
            "Nothing to update for drive \"slot0\"",
        ),
        (
            "/drives/slot0",
            r#"{"drive_id": "slot0", "path_on_host": 7}"#,
            "invalid type",
        ),
        (
            "/drives/slot0",
            r#"{"drive_id": "slot0", "path_on_host": "/tmp", "bogus": 1}"#,
            "unknown field `bogus`",
        ),
        (
            "/drives/slot0",
            r#"{"drive_id": "slot0", "path_on_host": "/tmp"}"#,
            "not a regular file or block device",
        ),
        (
            "/drives/slot0",
            r#"{"drive_id": "other", "path_on_host": "/tmp"}"#,
            "does not match",
        ),
        (
            "/drives/nope",
            r#"{"drive_id": "nope", "path_on_host": "/tmp"}"#,
            "Invalid drive \"nope\": no drive with this id is configured.",
        ),
        ("/drives/a.b", r#"{"drive_id": "a.b"}"#, "alphanumeric"),
        ("/drives/slot0", "", "Empty PATCH request."),
        (
            "/drives/slot0",
            r#"{"drive_id": "slot0", "rate_limiter": {"ops": {"size": 1}}}"#,
            "missing field `refill_time`",
        ),
    ];
    for (path, body, expected) in refused {
        hull.request("PATCH", path, Some(body)).assert_fault(400, expected);
    }
    let config = hull.request("GET", "/vm/config", None).json();
    assert_eq!(
        config["drives"][0]["path_on_host"], image,
        "refused updates change nothing"
    );
    // A rate limiter alone is an update too; a bucket given replaces that bucket, the other stays.
    for limiter in [
        r#"{"bandwidth": {"size": 1048576, "refill_time": 100}, "ops": {"size": 100, "refill_time": 1000}}"#,
        r#"{"ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}}"#,
    ] {
        let body = format!(r#"{{"drive_id": "slot0", "rate_limiter": {limiter}}}"#);
        let reply = hull.request("PATCH", "/drives/slot0", Some(&body));
        assert_eq!(reply.status, 204, "{}", reply.body);
    }
    let config = hull.request("GET", "/vm/config", None).json();
    assert_eq!(
        config["drives"][0]["rate_limiter"],
        json!({"bandwidth": {"size": 1048576, "refill_time": 100},
               "ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}})
    );
    hull.request("PATCH", "/network-interfaces/eth0", Some(r#"{"iface_id": "eth0"}"#))
        .assert_fault(400, "not supported before starting the microVM");
}

#[test]
fn stale_socket_is_replaced() {
    let dir = temp_dir();
    let stale = std::os::unix::net::UnixListener::bind(dir.path().join("api.sock")).expect("bind stale socket");
    drop(stale);
    let hull = spawn_in(dir, &[]);
    hull.wait_for_api(TIMEOUT);
    assert_eq!(hull.request("GET", "/", None).status, 200);
}

#[test]
fn sigterm_exits_cleanly_and_removes_the_socket() {
    let mut hull = start();
    assert!(sock(&hull).exists());
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(hull.pid() as i32, libc::SIGTERM) }, 0);
    let status = hull.expect_exit(TIMEOUT);
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "{status:?}; stderr:\n{}",
        hull.stderr()
    );
    assert!(!sock(&hull).exists(), "socket left behind");
    assert!(hull.stderr().contains("API server listening on"));
}

#[test]
fn config_file_with_empty_device_lists_is_accepted_up_to_the_kernel_check() {
    let dir = temp_dir();
    let missing = dir.path().join("missing-vmlinux");
    let config = json!({
        "boot-source": {"kernel_image_path": missing, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
        "drives": [],
        "network-interfaces": [],
        "vsock": null,
        "logger": null,
        "metrics": null
    });
    let path = dir.path().join("vm.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let mut hull = spawn_in(dir, &["--config-file", path.to_str().expect("UTF-8 path")]);
    let status = hull.expect_exit(TIMEOUT);
    let stderr = hull.stderr();
    assert_eq!(status.code(), Some(152), "{status:?}; stderr:\n{stderr}");
    // The drives were fine; the boot source is what failed, and the message says why.
    assert!(
        stderr.contains("boot-source") && stderr.contains("The kernel file cannot be opened"),
        "{stderr}"
    );
    assert!(stderr.contains(missing.to_str().expect("UTF-8 path")), "{stderr}");
    assert!(!sock(&hull).exists(), "socket left behind after exit");
}

#[test]
fn config_file_with_a_missing_drive_image_is_refused_with_a_clear_message() {
    let dir = temp_dir();
    let kernel = fake_kernel(dir.path());
    let config = json!({
        "boot-source": {"kernel_image_path": kernel},
        "drives": [{"drive_id": "rootfs", "path_on_host": "/no/such/r.ext4", "is_root_device": true, "is_read_only": false}]
    });
    let path = dir.path().join("vm.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let mut hull = spawn_in(dir, &["--config-file", path.to_str().expect("UTF-8 path")]);
    assert_eq!(hull.expect_exit(TIMEOUT).code(), Some(152));
    let stderr = hull.stderr();
    assert!(
        stderr.contains("drives") && stderr.contains("rootfs") && stderr.contains("/no/such/r.ext4"),
        "{stderr}"
    );
}

#[test]
fn config_file_with_an_unknown_key_is_refused() {
    let dir = temp_dir();
    let path = dir.path().join("vm.json");
    std::fs::write(&path, r#"{"boot-source": {"kernel_image_path": "/k"}, "baloon": {}}"#).expect("write config");
    let mut hull = spawn_in(dir, &["--config-file", path.to_str().expect("UTF-8 path")]);
    assert_eq!(hull.expect_exit(TIMEOUT).code(), Some(152));
    assert!(hull.stderr().contains("unknown field `baloon`"), "{}", hull.stderr());
}

#[test]
fn no_api_mode_reports_a_bad_config_and_exits() {
    let dir = temp_dir();
    let path = dir.path().join("vm.json");
    let missing = dir.path().join("missing-vmlinux");
    std::fs::write(
        &path,
        json!({"boot-source": {"kernel_image_path": missing}, "drives": []}).to_string(),
    )
    .expect("write config");
    let mut hull = spawn_with(dir, &["--no-api", "--config-file", path.to_str().expect("UTF-8 path")]);
    let status = hull.expect_exit(TIMEOUT);
    let stderr = hull.stderr();
    assert_eq!(status.code(), Some(152), "{stderr}");
    assert!(stderr.contains("The kernel file cannot be opened"), "{stderr}");
    assert!(status.signal().is_none());
}

#[test]
fn the_socket_is_ready_quickly() {
    let start = Instant::now();
    let hull = spawn_in(temp_dir(), &[]);
    hull.wait_for_api(TIMEOUT);
    // Generous: a debug build on a busy 2-core machine. The point is that no slow initialisation runs
    // before the socket is bound.
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(2), "socket took {elapsed:?}");
    eprintln!("hull socket ready after {elapsed:?}");
}

#[test]
fn cli_errors_exit_non_zero() {
    let output = Command::new(HULL).arg("--no-api").output().expect("run hull");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--config-file"), "{stderr}");
    // Without --api-sock hull now listens on /run/hull.socket, as Firecracker on its default socket; a
    // test must not take that shared path, so only the refusals are tried here.
    for id in ["a/b", "", &"a".repeat(65)] {
        let output = Command::new(HULL).args(["--id", id]).output().expect("run hull");
        assert_eq!(output.status.code(), Some(2), "--id {id:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("invalid value") && stderr.contains("--id"), "{stderr}");
    }
}

// --- Firecracker's command line (issue 12, item 1).

#[test]
fn every_firecracker_flag_is_accepted_and_the_log_path_gets_firecracker_lines() {
    let dir = temp_dir();
    std::fs::write(dir.path().join("md.json"), r#"{"latest":{"meta-data":{}}}"#).unwrap();
    let hull = spawn_in(
        dir,
        &[
            "--id",
            "fc-vm-1",
            "--log-path",
            "hull.log",
            "--level",
            "Debug",
            "--show-level",
            "--show-log-origin",
            "--metrics-path",
            "metrics.json",
            "--http-api-max-payload-size",
            "60000",
            "--mmds-size-limit",
            "4096",
            "--metadata",
            "md.json",
            "--start-time-us",
            "12",
            "--start-time-cpu-us",
            "3",
            "--parent-cpu-time-us",
            "4",
            "--enable-pci",
        ],
    );
    hull.wait_for_api(TIMEOUT);
    let reply = hull.request("GET", "/", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("fc-vm-1"), "{}", reply.body);
    let log_path = hull.dir().join("hull.log");
    let deadline = Instant::now() + TIMEOUT;
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("path=/ status=200") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // `2026-12-03T09:28:38.440870 [fc-vm-1:main:INFO:hull/src/vmm_mode.rs:52] API server listening on ...`
    let line = log
        .lines()
        .find(|l| l.contains("API server listening"))
        .unwrap_or_else(|| panic!("{log}"));
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert!(stamp.len() >= 20 && stamp.as_bytes()[10] == b'T', "{line}");
    assert!(rest.starts_with("[fc-vm-1:main:INFO:hull/src/vmm_mode.rs:"), "{line}");
    assert!(log.contains("--enable-pci"), "{log}");
    assert!(log.contains(":DEBUG:") && log.contains("path=/ status=200"), "{log}");
    use std::os::unix::fs::PermissionsExt;
    for file in ["hull.log", "metrics.json"] {
        let mode = std::fs::metadata(hull.dir().join(file)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
}

#[test]
fn snapshot_flags_answer_and_bad_snapshots_and_metadata_are_refused_clearly() {
    let output = Command::new(HULL).arg("--snapshot-version").output().expect("run hull");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "v1.0.0");
    let dir = temp_dir();
    std::fs::write(dir.path().join("not-a-snapshot"), "hello, this is not a snapshot").unwrap();
    for (file, says) in [("missing", "cannot read"), ("not-a-snapshot", "bad magic")] {
        let output = Command::new(HULL)
            .current_dir(dir.path())
            .args(["--describe-snapshot", file])
            .output()
            .expect("run hull");
        assert_eq!(output.status.code(), Some(1), "{file}");
        assert!(String::from_utf8_lossy(&output.stderr).contains(says), "{file}");
    }
    std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
    std::fs::write(dir.path().join("big.json"), format!("\"{}\"", "x".repeat(100))).unwrap();
    for (file, limit, says) in [("bad.json", "4096", "not JSON"), ("big.json", "50", "size limit")] {
        let output = Command::new(HULL)
            .current_dir(dir.path())
            .args(["--api-sock", "a.sock", "--metadata", file, "--mmds-size-limit", limit])
            .output()
            .expect("run hull");
        assert_eq!(output.status.code(), Some(152), "{file}");
        assert!(String::from_utf8_lossy(&output.stderr).contains(says), "{file}");
    }
    // A log path through a symlink is refused, not followed.
    std::os::unix::fs::symlink("target", dir.path().join("link.log")).unwrap();
    let output = Command::new(HULL)
        .current_dir(dir.path())
        .args(["--api-sock", "b.sock", "--log-path", "link.log"])
        .output()
        .expect("run hull");
    assert!(!output.status.success());
    assert!(!dir.path().join("target").exists());
}

// --- The API socket against hostile local clients (issue 11, item 4) and paths from the API (item 5).

/// Runs `hull --api-sock api.sock` under a shell that first sets `umask`.
fn start_with_umask(umask: &str) -> Hull {
    let dir = temp_dir();
    let script = format!("umask {umask}; exec \"$0\" \"$@\"");
    let hull = Hull::spawn_binary_in(
        Path::new("/bin/sh"),
        dir,
        ["-c", &script, HULL, "--api-sock", "api.sock"],
    );
    hull.wait_for_api(TIMEOUT);
    hull
}

/// In a forked child that drops to `uid`, the errno of connecting to `path` (0 if it connected), or None
/// when this test process cannot change its uid (not root).
fn connect_errno_as_uid(path: &Path, uid: libc::uid_t) -> Option<i32> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    // Everything the child needs is prepared before fork: after it, only raw system calls run.
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the child only makes system calls on memory prepared above and ends with _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if libc::syscall(libc::SYS_setgid, uid) != 0 || libc::syscall(libc::SYS_setuid, uid) != 0 {
                libc::_exit(254);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let rc = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            libc::_exit(if rc == 0 { 0 } else { *libc::__errno_location() });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        let code = libc::WEXITSTATUS(status);
        assert_ne!(code, 254, "the child could not drop to uid {uid}");
        Some(code)
    }
}

#[test]
fn the_api_socket_is_owner_only_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let hull = start_with_umask("000");
    let sock = sock(&hull);
    let mode = std::fs::metadata(&sock).expect("stat the socket").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    match connect_errno_as_uid(&sock, 65534) {
        Some(errno) => assert_eq!(errno, libc::EACCES, "uid 65534 connecting got errno {errno}"),
        None => hull_tests::note("not root: the uid-65534 connect check was skipped"),
    }
    assert_eq!(hull.request("GET", "/", None).status, 200, "the owner still connects");
}

#[test]
fn a_second_hull_on_a_live_socket_fails_and_the_first_keeps_serving() {
    let first = start();
    let sock = sock(&first);
    let mut second = spawn_with(temp_dir(), &["--api-sock", sock.to_str().expect("UTF-8 path")]);
    let status = second.expect_exit(TIMEOUT);
    let stderr = second.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another process is listening on") && stderr.contains(sock.to_str().unwrap()),
        "{stderr}"
    );
    assert_eq!(first.request("GET", "/", None).status, 200);
    assert!(sock.exists(), "the second hull removed the first one's socket");
}

#[test]
fn silent_connections_do_not_lock_out_a_client() {
    let hull = start();
    // Well past the connection limit (64), none of them ever sending a byte.
    let silent: Vec<_> = (0..100)
        .map(|_| std::os::unix::net::UnixStream::connect(sock(&hull)).expect("connect"))
        .collect();
    // And as many that stop half-way through a request.
    let half: Vec<_> = (0..40)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(sock(&hull)).expect("connect");
            std::io::Write::write_all(&mut s, b"PUT /machine-config HTTP/1.1\r\nContent-Len").expect("write");
            s
        })
        .collect();
    let started = Instant::now();
    let reply = hull_runtime::api_client::ApiClient::new(sock(&hull))
        .with_timeout(Duration::from_secs(5))
        .request("GET", "/", None)
        .expect("an answer despite 140 silent connections");
    let waited = started.elapsed();
    assert_eq!(reply.status, 200);
    assert!(waited < Duration::from_secs(2), "the real client waited {waited:?}");
    drop((silent, half));
}

/// hull's resident memory in KiB.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmRSS value")
}

#[test]
fn clients_that_pipeline_without_reading_do_not_grow_memory() {
    let hull = start();
    let before = vm_rss_kib(hull.pid());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(sock(&hull)).expect("connect");
            s.set_write_timeout(Some(Duration::from_millis(200))).expect("timeout");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let request = b"GET /machine-config HTTP/1.1\r\n\r\n".repeat(64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Blocks (then times out) once hull stops reading; never reads an answer.
                    let _ = std::io::Write::write(&mut s, &request);
                }
            })
        })
        .collect();
    let mut peak = before;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        peak = peak.max(vm_rss_kib(hull.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread");
    }
    eprintln!("hull VmRSS: {before} KiB before, {peak} KiB at most while 4 clients pipelined without reading");
    assert!(peak < before + 16 * 1024, "RSS grew from {before} KiB to {peak} KiB");
    // The connections were not read from, yet a new client is served at once.
    assert_eq!(hull.request("GET", "/", None).status, 200);
}

#[test]
fn a_vsock_uds_path_naming_a_regular_file_is_not_deleted() {
    hull_tests::require_kvm!("a_vsock_uds_path_naming_a_regular_file_is_not_deleted");
    let dir = temp_dir();
    // A kernel that loads: the devices are attached after the kernel is loaded (the VM is built before
    // InstanceStart), so a fake one would be refused first.
    let kernel = hull_tests::tiny_guest("halt.elf");
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me").expect("write file");
    let config = json!({
        "boot-source": {"kernel_image_path": kernel},
        "vsock": {"guest_cid": 3, "uds_path": precious}
    });
    let path = dir.path().join("vm.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let mut hull = spawn_in(dir, &["--config-file", path.to_str().expect("UTF-8 path")]);
    let status = hull.expect_exit(TIMEOUT);
    let stderr = hull.stderr();
    assert_eq!(status.code(), Some(152), "{stderr}");
    assert!(stderr.contains("is not a socket"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(hull.dir().join("precious.txt")).expect("the file is still there"),
        "keep me"
    );
}

// --- Logger and metrics (issue 12, item 2).

#[test]
fn put_logger_writes_firecracker_lines_and_cannot_be_reconfigured() {
    let hull = start();
    let reply = hull.request(
        "PUT",
        "/logger",
        Some(r#"{"log_path":"fc.log","level":"Info","show_level":true}"#),
    );
    assert_eq!(reply.status, 204, "{}", reply.body);
    let again = hull.request("PUT", "/logger", Some(r#"{"log_path":"other.log"}"#));
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("configured already"), "{}", again.body);
    let early = hull.request("PUT", "/actions", Some(r#"{"action_type":"FlushMetrics"}"#));
    assert_eq!(early.status, 400, "{}", early.body);
    assert!(
        early.body.contains("not supported before starting the microVM"),
        "{}",
        early.body
    );
    let log = std::fs::read_to_string(hull.dir().join("fc.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(" [anonymous-instance:main:INFO] API request refused")),
        "{log}"
    );
    assert!(!hull.dir().join("other.log").exists());
}

#[test]
fn flush_metrics_after_boot_writes_a_json_line_with_firecracker_keys() {
    hull_tests::require_kvm!("flush_metrics_after_boot_writes_a_json_line_with_firecracker_keys");
    let dir = temp_dir();
    let cfg = json!({
        "boot-source": { "kernel_image_path": hull_tests::tiny_guest("counter.elf"), "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    std::fs::write(dir.path().join("vm.json"), cfg.to_string()).unwrap();
    let hull = spawn_in(dir, &["--config-file", "vm.json", "--metrics-path", "metrics.json"]);
    hull.wait_for_api(TIMEOUT);
    // The guest's first line is out (every byte of it counted by the UART) before anything is flushed.
    assert!(hull.wait_for_output("tick 0", TIMEOUT).is_some(), "{}", hull.report());
    // Opening files is a pre-boot operation: refused once the guest runs.
    let late = hull.request("PUT", "/logger", Some(r#"{"log_path":"late.log"}"#));
    assert_eq!(late.status, 400, "{}", late.body);
    for state in ["Paused", "Resumed"] {
        let reply = hull.request("PATCH", "/vm", Some(&json!({ "state": state }).to_string()));
        assert_eq!(reply.status, 204, "{state}: {}", reply.body);
    }
    for _ in 0..2 {
        let reply = hull.request("PUT", "/actions", Some(r#"{"action_type":"FlushMetrics"}"#));
        assert_eq!(reply.status, 204, "{}", reply.body);
    }
    let text = std::fs::read_to_string(hull.dir().join("metrics.json")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{text}");
    for key in [
        "utc_timestamp_ms",
        "api_server",
        "block",
        "net",
        "vsock",
        "vcpu",
        "vmm",
        "uart",
        "latencies_us",
        "put_api_requests",
        "patch_api_requests",
        "get_api_requests",
        "seccomp",
        "signals",
        "i8042",
        "balloon",
        "rtc",
        "logger",
        "mmds",
        "deprecated_api",
        "entropy",
    ] {
        assert!(lines[1].get(key).is_some(), "{key} missing: {text}");
    }
    // Deltas: a line counts the FlushMetrics that asked for it (Firecracker counts a request before it
    // runs), and nothing before it twice.
    assert_eq!(lines[0]["put_api_requests"]["actions_count"], 1, "{text}");
    assert_eq!(lines[1]["put_api_requests"]["actions_count"], 1, "{text}");
    // The counter guest prints a tick line on COM1 at once: one port write per byte, each reaching the UART.
    let written = lines[0]["uart"]["write_count"].as_u64().unwrap();
    assert!(written >= "hull-tiny: counter start\n".len() as u64, "{text}");
    assert!(lines[0]["vcpu"]["exit_io_out"].as_u64().unwrap() >= written, "{text}");
    // How long PATCH /vm took, in microseconds: the last value, in every line.
    for line in &lines {
        for key in ["pause_vm", "resume_vm"] {
            assert!(line["latencies_us"][key].as_u64().is_some(), "{key}: {text}");
        }
    }
    assert_eq!(lines[0]["patch_api_requests"]["vm_count"], 2, "{text}");
    assert_eq!(lines[0]["put_api_requests"]["logger_fails"], 1, "{text}");
    assert!(!hull.dir().join("late.log").exists());
}

#[test]
fn metrics_are_flushed_periodically_without_being_asked() {
    let dir = temp_dir();
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(HULL);
    cmd.current_dir(dir.path()).env("HULL_METRICS_FLUSH_MS", "100").args([
        "--api-sock",
        sock.to_str().unwrap(),
        "--metrics-path",
        "m.json",
    ]);
    let mut child = cmd.spawn().expect("run hull");
    let path = dir.path().join("m.json");
    let deadline = Instant::now() + TIMEOUT;
    let mut text = String::new();
    while Instant::now() < deadline && text.lines().count() < 2 {
        std::thread::sleep(Duration::from_millis(50));
        text = std::fs::read_to_string(&path).unwrap_or_default();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.lines().count() >= 2, "{text}");
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert!(line["utc_timestamp_ms"].as_u64().unwrap() > 0, "{text}");
}

/// The periodic flush runs on a thread started pre-boot under the API thread's seccomp filter; after boot it
/// reads the microVM's counters too, and must neither be killed by the filter nor report a count twice.
#[test]
fn the_periodic_flush_reports_the_running_guests_counters_under_seccomp() {
    hull_tests::require_kvm!("the_periodic_flush_reports_the_running_guests_counters_under_seccomp");
    let dir = temp_dir();
    let cfg = json!({
        "boot-source": { "kernel_image_path": hull_tests::tiny_guest("halt.elf"), "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
        "metrics": { "metrics_path": "m.json" },
    });
    std::fs::write(dir.path().join("vm.json"), cfg.to_string()).unwrap();
    let path = dir.path().join("m.json");
    let mut cmd = Command::new(HULL);
    cmd.current_dir(dir.path())
        .env("HULL_METRICS_FLUSH_MS", "100")
        .args(["--no-api", "--config-file", "vm.json"])
        .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("run hull");
    let printed = "hull-tiny: halt booted\n".len() as u64;
    let deadline = Instant::now() + TIMEOUT;
    let mut text = String::new();
    // A counter summed over every line written so far.
    let total = |text: &str, section: &str, key: &str| -> u64 {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|line| line[section][key].as_u64())
            .sum()
    };
    // Wait for the guest's line to be counted and for a few more periodic lines after it.
    while Instant::now() < deadline && (total(&text, "uart", "write_count") < printed || text.lines().count() < 5) {
        std::thread::sleep(Duration::from_millis(50));
        text = std::fs::read_to_string(&path).unwrap_or_default();
    }
    let alive = child.try_wait().expect("wait on hull").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(alive, "hull died while flushing periodically (a seccomp kill?)\n{text}");
    assert_eq!(
        total(&text, "uart", "write_count"),
        printed,
        "each byte counted once over all lines\n{text}"
    );
    let mmio_writes = total(&text, "vcpu", "exit_mmio_write");
    assert!(mmio_writes >= 1, "the boot-timer write\n{text}");
}

/// The image a process runs, from `/proc/PID/exe`.
fn image_of(hull: &Hull) -> PathBuf {
    std::fs::read_link(format!("/proc/{}/exe", hull.pid())).expect("read /proc/PID/exe")
}

/// `hull` without a subcommand execs the lean `hull-vmm` of its build, in the same process: the microVM
/// answers as before, and its process runs `hull-vmm`, not `hull`.
#[test]
fn a_microvm_started_as_hull_runs_the_lean_hull_vmm_image() {
    let hull = start();
    assert_eq!(
        image_of(&hull).file_name().and_then(|n| n.to_str()),
        Some("hull-vmm"),
        "hull --api-sock should have exec'd hull-vmm"
    );
    let info = hull.request("GET", "/", None).json();
    assert_eq!(
        (info["app_name"].as_str(), info["state"].as_str()),
        (Some("hull"), Some("Not started"))
    );
    // A subcommand stays in `hull`.
    let out = Command::new(HULL)
        .args(["rebase-snap", "--help"])
        .output()
        .expect("run hull rebase-snap --help");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--base-file"));
}

/// `hull` execs only a `hull-vmm` of its own build, told by the build-ID ELF note both carry: next to a
/// `hull-vmm` whose note differs (one left from an earlier build), `hull` runs the microVM itself, the code
/// the user built. The same copies with the note intact: `hull-vmm` runs.
#[test]
fn hull_runs_the_microvm_itself_beside_a_hull_vmm_of_another_build() {
    let lean = Path::new(HULL).with_file_name("hull-vmm");
    let id = hull_runtime::vmm_binary::build_id(&lean).expect("hull-vmm carries a build note");
    let id = &id[..id.iter().position(|b| *b == 0).unwrap_or(id.len())];
    assert!(id.len() >= 8, "build ID {id:?}");
    for (stale, want) in [(false, "hull-vmm"), (true, "hull")] {
        let bin = temp_dir();
        std::fs::copy(HULL, bin.path().join("hull")).unwrap();
        let mut image = std::fs::read(&lean).unwrap();
        if stale {
            // Another build: the same file with its ID changed wherever it is written.
            let mut at = 0;
            while let Some(i) = image[at..].windows(id.len()).position(|w| w == id) {
                image[at + i] ^= 1;
                at += i + id.len();
            }
            assert!(at > 0, "the build ID is in hull-vmm's file");
        }
        let copy = bin.path().join("hull-vmm");
        std::fs::write(&copy, &image).unwrap();
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let hull = Hull::spawn_binary_in(&bin.path().join("hull"), temp_dir(), ["--api-sock", "api.sock"]);
        hull.wait_for_api(TIMEOUT);
        assert_eq!(
            image_of(&hull).file_name().and_then(|n| n.to_str()),
            Some(want),
            "stale hull-vmm: {stale}"
        );
        assert_eq!(hull.request("GET", "/", None).status, 200);
    }
    // hull-vmm has no subcommands.
    let out = Command::new(&lean)
        .args(["run", "--", "/bin/true"])
        .output()
        .expect("run hull-vmm");
    assert_eq!(out.status.code(), Some(2), "hull-vmm takes no subcommand");
}
