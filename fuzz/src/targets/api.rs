//! The API front end: HTTP framing of a byte stream (`api-server/src/http.rs`), the routes with their JSON
//! bodies on one instance (`api-server/src/routes.rs`), and the config file (`api-server/src/config_file.rs`).
//!
//! `InstanceStart` and `/snapshot/load` are never let through: they would boot a microVM. Everything else
//! before boot only checks and stores configuration (drive paths are opened read-only or read-write to check
//! them, nothing more).

use api_server::config_file::ConfigFile;
use api_server::http::{parse_request, Method, Parsed, Request, Response, MAX_REQUEST_SIZE};
use api_server::instance::Instance;
use api_server::routes;
use serde::Deserialize;
use vmm::VmmOptions;

use crate::input::Input;

fn instance() -> Instance {
    Instance::new("fuzz".into(), VmmOptions::default())
}

/// The shape of `PUT /actions` bodies, as the routes decode them (same serde derive, same fields): used to
/// hold back `InstanceStart` in whatever JSON spelling it arrives.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

fn starts_the_vm(req: &Request) -> bool {
    let path = req.path.strip_suffix('/').unwrap_or(&req.path);
    // A snapshot load reads files and restores a microVM (its state file is the `snapshot_state` target).
    if path == "/snapshot/load" {
        return true;
    }
    path == "/actions"
        && matches!(
            serde_json::from_slice::<ActionBody>(&req.body),
            Ok(ActionBody {
                action_type: ActionType::InstanceStart
            })
        )
}

/// Answers `req` on `instance` as the server would, minus `InstanceStart`.
fn answer(instance: &mut Instance, req: &Request) -> Option<Response> {
    if starts_the_vm(req) {
        return None;
    }
    let response = routes::handle(instance, req);
    assert!(
        matches!(response.status, 200 | 204 | 400 | 404 | 405 | 413),
        "unexpected status {}",
        response.status
    );
    let bytes = response.to_bytes(req.keep_alive);
    assert!(bytes.starts_with(b"HTTP/1.1 "));
    Some(response)
}

/// A connection's bytes, framed request after request the way the server does, each answered.
pub fn http_request(data: &[u8]) {
    let mut instance = instance();
    let mut buf = data;
    let mut requests = 0;
    while !buf.is_empty() && requests < 16 {
        match parse_request(buf) {
            Ok(Parsed::Complete(req, used)) => {
                assert!(used > 0 && used <= buf.len(), "consumed {used} of {} bytes", buf.len());
                assert!(used <= MAX_REQUEST_SIZE);
                answer(&mut instance, &req);
                buf = &buf[used..];
                requests += 1;
            }
            Ok(Parsed::Incomplete { .. }) => {
                assert!(
                    buf.len() <= MAX_REQUEST_SIZE,
                    "{} bytes buffered and still incomplete",
                    buf.len()
                );
                break;
            }
            Err(e) => {
                let _ = Response::fault(400, &e.to_string()).to_bytes(false);
                break;
            }
        }
    }
}

const PATHS: &[&str] = &[
    "/",
    "/version",
    "/actions",
    "/boot-source",
    "/machine-config",
    "/vm",
    "/vm/config",
    "/logger",
    "/metrics",
    "/vsock",
    "/drives/rootfs",
    "/drives/",
    "/network-interfaces/eth0",
    "/network-interfaces/a b",
    "/machine-config/",
];

/// A sequence of requests (method, path, JSON body) against one instance.
pub fn api_routes(data: &[u8]) {
    let mut input = Input::new(data);
    let mut instance = instance();
    for _ in 0..1 + input.below(8) {
        let method = match input.u8() % 5 {
            0 => Method::Get,
            1 | 2 => Method::Put,
            3 => Method::Patch,
            _ => Method::Other(String::from_utf8_lossy(input.chunk(8)).into_owned()),
        };
        let path = if input.u8() < 224 {
            input.pick(PATHS).to_string()
        } else {
            String::from_utf8_lossy(input.chunk(64)).into_owned()
        };
        let body = input.chunk(2048).to_vec();
        let req = Request {
            method,
            path,
            body,
            keep_alive: true,
        };
        answer(&mut instance, &req);
        if input.is_empty() {
            break;
        }
    }
    let _ = serde_json::to_string(&instance.full_config()).expect("GET /vm/config serializes");
}

/// A `--config-file`: parsed, then applied to an instance (not started).
pub fn config_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(file) = ConfigFile::parse(&text) else { return };
    let mut instance = instance();
    let _ = file.apply(&mut instance);
    let _ = serde_json::to_string(&instance.full_config()).expect("GET /vm/config serializes");
}
