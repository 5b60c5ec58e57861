//! The REST API: which method and path reach which [`Instance`] operation, decoding of the JSON bodies,
//! and the mapping of every failure to Firecracker's status codes and `{"fault_message": ...}` bodies.
//! Paths, IDs and bodies are client input: each is checked here or by the instance before use.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::devices;
use crate::http::{Method, Request, Response};
use crate::instance::{Instance, InstanceError, MachineConfigUpdate, RequestedVmState};
use vmm::BalloonStats;

/// Why a request failed. The `Display` text is the `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("Invalid request method and/or path: {method} {path}.")]
    NotFound { method: Method, path: String },
    #[error("Invalid request method and/or path: {method} {path}. Allowed methods: {allowed}.")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allowed: &'static str,
    },
    #[error("Empty {0} request.")]
    EmptyBody(Method),
    #[error("GET request cannot have a body.")]
    BodyOnGet,
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Json(#[from] serde_json::Error),
    #[error("The ID cannot be empty.")]
    EmptyId,
    #[error("API Resource IDs can only contain alphanumeric characters and underscores.")]
    InvalidId,
    #[error("The id from the path does not match the id from the body!")]
    IdMismatch,
    #[error(transparent)]
    Instance(#[from] InstanceError),
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    #[error(transparent)]
    SnapshotBody(#[from] crate::snapshot::LoadBodyError),
}

impl RouteError {
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NotFound { .. } => 404,
            RouteError::MethodNotAllowed { .. } => 405,
            RouteError::Instance(InstanceError::Mmds(e)) => e.status(),
            _ => 400,
        }
    }
}

/// The API's resources.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Root,
    Version,
    Actions,
    BootSource,
    MachineConfig,
    Vm,
    VmConfig,
    CpuConfig,
    Logger,
    Metrics,
    Drive(String),
    NetworkInterface(String),
    Vsock,
    Mmds,
    MmdsConfig,
    SnapshotCreate,
    SnapshotLoad,
    Entropy,
    Serial,
    Balloon,
    BalloonStatistics,
    Pmem(String),
}

impl Route {
    /// Maps a path (without query) to a resource; a trailing slash is ignored.
    fn resolve(path: &str) -> Option<Route> {
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        let route = match trimmed {
            "" => Route::Root,
            "/version" => Route::Version,
            "/actions" => Route::Actions,
            "/boot-source" => Route::BootSource,
            "/machine-config" => Route::MachineConfig,
            "/vm" => Route::Vm,
            "/vm/config" => Route::VmConfig,
            "/cpu-config" => Route::CpuConfig,
            "/logger" => Route::Logger,
            "/metrics" => Route::Metrics,
            "/vsock" => Route::Vsock,
            "/mmds" => Route::Mmds,
            "/mmds/config" => Route::MmdsConfig,
            "/snapshot/create" => Route::SnapshotCreate,
            "/snapshot/load" => Route::SnapshotLoad,
            "/entropy" => Route::Entropy,
            "/serial" => Route::Serial,
            "/balloon" => Route::Balloon,
            "/balloon/statistics" => Route::BalloonStatistics,
            other => {
                if let Some(id) = other.strip_prefix("/drives/") {
                    Route::Drive(id.to_string())
                } else if let Some(id) = other.strip_prefix("/network-interfaces/") {
                    Route::NetworkInterface(id.to_string())
                } else if let Some(id) = other.strip_prefix("/pmem/") {
                    Route::Pmem(id.to_string())
                } else {
                    return None;
                }
            }
        };
        Some(route)
    }

    /// The methods the resource takes, for 405 answers.
    fn allowed(&self) -> &'static str {
        match self {
            Route::Root | Route::Version | Route::VmConfig => "GET",
            Route::Actions
            | Route::BootSource
            | Route::CpuConfig
            | Route::Logger
            | Route::Metrics
            | Route::Vsock
            | Route::SnapshotCreate
            | Route::SnapshotLoad
            | Route::Entropy
            | Route::Serial
            | Route::Pmem(_) => "PUT",
            Route::MachineConfig | Route::Balloon => "GET, PUT, PATCH",
            Route::BalloonStatistics => "GET, PATCH",
            Route::Vm => "PATCH",
            Route::Drive(_) | Route::NetworkInterface(_) => "PUT, PATCH",
            Route::Mmds => "GET, PUT, PATCH",
            Route::MmdsConfig => "PUT",
        }
    }
}

/// `PUT /actions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Debug, Deserialize)]
enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmBody {
    state: RequestedVmState,
}

/// Answers one request. Never fails: errors become 4xx responses.
pub fn handle(instance: &mut Instance, req: &Request) -> Response {
    // Counted before it runs, as Firecracker does, so a FlushMetrics line includes the FlushMetrics request.
    let method = req.method.to_string();
    crate::metrics::count_request(&method, &req.path);
    let outcome = dispatch(instance, req);
    if outcome.is_err() {
        crate::metrics::count_failure(&method, &req.path);
    }
    match outcome {
        Ok(response) => {
            tracing::debug!(method = %req.method, path = %req.path, status = response.status, "API request");
            response
        }
        Err(err) => {
            let status = err.status();
            tracing::info!(method = %req.method, path = %req.path, status, error = %err, "API request refused");
            let mut response = Response::fault(status, &err.to_string());
            if let RouteError::MethodNotAllowed { allowed, .. } = err {
                response.allow = Some(allowed.to_string());
            }
            response
        }
    }
}

fn dispatch(instance: &mut Instance, req: &Request) -> Result<Response, RouteError> {
    let route = Route::resolve(&req.path).ok_or_else(|| RouteError::NotFound {
        method: req.method.clone(),
        path: req.path.clone(),
    })?;
    if req.method == Method::Get && !req.body.is_empty() {
        return Err(RouteError::BodyOnGet);
    }
    match (&route, &req.method) {
        (Route::Root, Method::Get) => ok_json(&instance.info()),
        (Route::Version, Method::Get) => {
            // Firecracker's clients read `firecracker_version`; `vmm_version` says the same, named honestly.
            Ok(Response::json(
                200,
                &json!({ "firecracker_version": vmm::VMM_VERSION, "vmm_version": vmm::VMM_VERSION }),
            ))
        }
        (Route::VmConfig, Method::Get) => ok_json(&instance.full_config()),
        (Route::MachineConfig, Method::Get) => ok_json(instance.machine_config()),
        (Route::MachineConfig, Method::Put) => {
            instance.put_machine_config(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::MachineConfig, Method::Patch) => {
            let update: MachineConfigUpdate = body(req)?;
            if update.is_empty() {
                return Err(RouteError::EmptyBody(Method::Patch));
            }
            instance.patch_machine_config(&update)?;
            Ok(Response::no_content())
        }
        (Route::BootSource, Method::Put) => {
            instance.put_boot_source(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::Actions, Method::Put) => {
            let action: ActionBody = body(req)?;
            match action.action_type {
                ActionType::InstanceStart => instance.start()?,
                ActionType::SendCtrlAltDel => instance.send_ctrl_alt_del()?,
                ActionType::FlushMetrics => instance.flush_metrics()?,
            }
            Ok(Response::no_content())
        }
        (Route::Vm, Method::Patch) => {
            let vm: VmBody = body(req)?;
            instance.set_vm_state(vm.state)?;
            Ok(Response::no_content())
        }
        (Route::CpuConfig, Method::Put) => {
            instance.put_cpu_config(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::Logger, Method::Put) => {
            instance.put_logger(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::Metrics, Method::Put) => {
            instance.put_metrics(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::Drive(id), Method::Put) => {
            let drive = device_body(req, id, "drive_id")?;
            instance.devices_mut()?.put_drive(id, drive)?;
            Ok(Response::no_content())
        }
        (Route::NetworkInterface(id), Method::Put) => {
            let iface = device_body(req, id, "iface_id")?;
            instance.devices_mut()?.put_network_interface(id, iface)?;
            Ok(Response::no_content())
        }
        (Route::Drive(id), Method::Patch) => {
            let update = device_body(req, id, "drive_id")?;
            instance.patch_drive(id, update)?;
            Ok(Response::no_content())
        }
        (Route::NetworkInterface(id), Method::Patch) => {
            let update = device_body(req, id, "iface_id")?;
            instance.patch_network_interface(id, update)?;
            Ok(Response::no_content())
        }
        (Route::Vsock, Method::Put) => {
            let vsock: Value = body(req)?;
            instance.devices_mut()?.put_vsock(vsock)?;
            Ok(Response::no_content())
        }
        (Route::Mmds, Method::Get) => ok_json(&instance.mmds().get()),
        (Route::Mmds, Method::Put) => {
            instance.mmds().put(body(req)?).map_err(InstanceError::from)?;
            Ok(Response::no_content())
        }
        (Route::Mmds, Method::Patch) => {
            let patch: Value = body(req)?;
            instance.mmds().patch(&patch).map_err(InstanceError::from)?;
            Ok(Response::no_content())
        }
        (Route::MmdsConfig, Method::Put) => {
            instance.put_mmds_config(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::SnapshotCreate, Method::Put) => {
            let create: crate::snapshot::SnapshotCreateBody = body(req)?;
            instance.create_snapshot(&create.into())?;
            Ok(Response::no_content())
        }
        (Route::SnapshotLoad, Method::Put) => {
            let load: crate::snapshot::SnapshotLoadBody = body(req)?;
            instance.load_snapshot(&load.try_into()?)?;
            Ok(Response::no_content())
        }
        (Route::Pmem(id), Method::Put) => {
            let pmem = device_body(req, id, "id")?;
            instance.devices_mut()?.put_pmem(id, pmem)?;
            Ok(Response::no_content())
        }
        (Route::Balloon, Method::Put) => {
            instance.put_balloon(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::Balloon, Method::Get) => ok_json(&instance.balloon_config()?),
        (Route::Balloon, Method::Patch) => {
            instance.patch_balloon(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::BalloonStatistics, Method::Get) => ok_json(&balloon_stats_json(&instance.balloon_stats()?)),
        (Route::BalloonStatistics, Method::Patch) => {
            instance.patch_balloon_stats(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::Serial, Method::Put) => {
            instance.put_serial(body(req)?)?;
            Ok(Response::no_content())
        }
        (Route::Entropy, Method::Put) => {
            let entropy: Value = body(req)?;
            instance.devices_mut()?.put_entropy(entropy)?;
            Ok(Response::no_content())
        }
        (route, method) => Err(RouteError::MethodNotAllowed {
            method: method.clone(),
            path: req.path.clone(),
            allowed: route.allowed(),
        }),
    }
}

/// 200 with `value` as the body, its fields in declaration order.
fn ok_json<T: serde::Serialize>(value: &T) -> Result<Response, RouteError> {
    Ok(Response {
        status: 200,
        body: Some(serde_json::to_string(value)?),
        allow: None,
    })
}

/// Firecracker's `BalloonStats`: the sizes always, each guest statistic once the driver has sent it.
fn balloon_stats_json(stats: &BalloonStats) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("target_pages".into(), stats.target_pages.into());
    object.insert("actual_pages".into(), stats.actual_pages.into());
    object.insert("target_mib".into(), stats.target_mib().into());
    object.insert("actual_mib".into(), stats.actual_mib().into());
    for (name, value) in BalloonStats::TAG_NAMES.iter().zip(stats.guest) {
        if let Some(value) = value {
            object.insert((*name).into(), value.into());
        }
    }
    Value::Object(object)
}

/// Decodes a required JSON body.
fn body<T: DeserializeOwned>(req: &Request) -> Result<T, RouteError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Err(RouteError::EmptyBody(req.method.clone()));
    }
    Ok(serde_json::from_slice(&req.body)?)
}

/// Decodes the body of a per-device request and checks that the ID inside matches the path's.
fn device_body(req: &Request, id: &str, id_key: &str) -> Result<Value, RouteError> {
    check_id(id)?;
    let value: Value = body(req)?;
    if devices::entry_id(&value, id_key) != id {
        return Err(RouteError::IdMismatch);
    }
    Ok(value)
}

fn check_id(id: &str) -> Result<(), RouteError> {
    if id.is_empty() {
        return Err(RouteError::EmptyId);
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(RouteError::InvalidId);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use vmm::VmmOptions;

    use super::*;

    fn call(instance: &mut Instance, method: Method, path: &str, body: &str) -> (u16, Value) {
        let req = Request {
            method,
            path: path.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        };
        let response = handle(instance, &req);
        let json = response
            .body
            .as_deref()
            .map(|b| serde_json::from_str(b).unwrap())
            .unwrap_or(Value::Null);
        (response.status, json)
    }

    fn fault(json: &Value) -> &str {
        json["fault_message"].as_str().unwrap_or_default()
    }

    fn instance() -> Instance {
        Instance::new("vm1".into(), VmmOptions::default())
    }

    #[test]
    fn paths_resolve_with_or_without_trailing_slash() {
        assert_eq!(Route::resolve("/"), Some(Route::Root));
        assert_eq!(Route::resolve("/machine-config/"), Some(Route::MachineConfig));
        assert_eq!(Route::resolve("/vm/config"), Some(Route::VmConfig));
        assert_eq!(Route::resolve("/drives/root"), Some(Route::Drive("root".into())));
        assert_eq!(Route::resolve("/nothing"), None);
        assert_eq!(Route::resolve("/machine-configuration"), None);
    }

    #[test]
    fn cpu_config_is_put_only_and_refuses_bad_templates_with_400() {
        let mut i = instance();
        let (status, _) = call(&mut i, Method::Get, "/cpu-config", "");
        assert_eq!(status, 405);
        let (status, json) = call(&mut i, Method::Put, "/cpu-config", "");
        assert_eq!((status, fault(&json)), (400, "Empty PUT request."));
        let bad =
            r#"{"cpuid_modifiers": [{"leaf": 7, "subleaf": 0, "modifiers": [{"register": "ebx", "bitmap": "0bx"}]}]}"#;
        let (status, json) = call(&mut i, Method::Put, "/cpu-config", bad);
        assert_eq!(status, 400);
        assert!(fault(&json).contains("Invalid bitmap \"0bx\""), "{json}");
        let (status, json) = call(&mut i, Method::Put, "/cpu-config", r#"{"kvm_capabilities": ["!"]}"#);
        assert_eq!(status, 400);
        assert!(fault(&json).contains("Invalid KVM capability"), "{json}");
        let (status, _) = call(&mut i, Method::Put, "/cpu-config", r#"{"kvm_capabilities": ["33"]}"#);
        assert_eq!(status, 204);
        let (_, json) = call(&mut i, Method::Get, "/vm/config", "");
        assert_eq!(json["cpu-config"]["kvm_capabilities"], serde_json::json!(["33"]));
        let (status, json) = call(
            &mut i,
            Method::Put,
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 127, "huge_pages": "2M"}"#,
        );
        assert_eq!(
            (status, fault(&json)),
            (
                400,
                "The memory size (MiB) is either 0, or not a multiple of the configured page size."
            )
        );
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        let mut i = instance();
        let (status, json) = call(&mut i, Method::Get, "/nothing", "");
        assert_eq!(status, 404);
        assert_eq!(fault(&json), "Invalid request method and/or path: GET /nothing.");
        let (status, json) = call(&mut i, Method::Get, "/boot-source", "");
        assert_eq!(status, 405);
        assert!(fault(&json).contains("Allowed methods: PUT"), "{json}");
        let req = Request {
            method: Method::Other("DELETE".into()),
            path: "/".into(),
            body: vec![],
            keep_alive: true,
        };
        let response = handle(&mut i, &req);
        assert_eq!((response.status, response.allow.as_deref()), (405, Some("GET")));
    }

    #[test]
    fn instance_info_and_version() {
        let mut i = instance();
        let (status, json) = call(&mut i, Method::Get, "/", "");
        assert_eq!(status, 200);
        assert_eq!(
            json,
            json!({"id": "vm1", "state": "Not started", "vmm_version": vmm::VMM_VERSION, "app_name": "hull"})
        );
        let (_, json) = call(&mut i, Method::Get, "/version", "");
        assert_eq!(json["firecracker_version"], vmm::VMM_VERSION);
        assert_eq!(json["vmm_version"], vmm::VMM_VERSION);
    }

    #[test]
    fn machine_config_put_patch_get() {
        let mut i = instance();
        let (status, _) = call(
            &mut i,
            Method::Put,
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 512}"#,
        );
        assert_eq!(status, 204);
        let (status, _) = call(&mut i, Method::Patch, "/machine-config", r#"{"smt": true}"#);
        assert_eq!(status, 204);
        let (status, json) = call(&mut i, Method::Get, "/machine-config", "");
        assert_eq!(status, 200);
        assert_eq!(
            json,
            json!({"vcpu_count": 2, "mem_size_mib": 512, "smt": true, "cpu_template": "None", "track_dirty_pages": false, "huge_pages": "None"})
        );
        let (status, json) = call(&mut i, Method::Patch, "/machine-config", "{}");
        assert_eq!((status, fault(&json)), (400, "Empty PATCH request."));
    }

    #[test]
    fn bad_bodies_are_400_with_a_reason() {
        let mut i = instance();
        let cases = [
            (Method::Put, "/machine-config", "", "Empty PUT request."),
            (
                Method::Put,
                "/machine-config",
                "{",
                "An error occurred when deserializing the json body of a request: EOF",
            ),
            (
                Method::Put,
                "/machine-config",
                r#"{"vcpu_count":1,"mem_size_mib":128,"x":1}"#,
                "unknown field `x`",
            ),
            (
                Method::Put,
                "/machine-config",
                r#"{"vcpu_count":1}"#,
                "missing field `mem_size_mib`",
            ),
            (
                Method::Put,
                "/machine-config",
                r#"{"vcpu_count":0,"mem_size_mib":128}"#,
                "between 1 and 32",
            ),
            (
                Method::Put,
                "/machine-config",
                r#"{"vcpu_count":1,"mem_size_mib":1}"#,
                "memory size",
            ),
            (
                Method::Put,
                "/boot-source",
                r#"{"kernel_image_path":"/no/such/vmlinux"}"#,
                "/no/such/vmlinux",
            ),
            (
                Method::Put,
                "/actions",
                r#"{"action_type":"Explode"}"#,
                "unknown variant `Explode`",
            ),
            (
                Method::Put,
                "/actions",
                r#"{"action_type":"SendCtrlAltDel"}"#,
                "before starting the microVM",
            ),
            (
                Method::Put,
                "/actions",
                r#"{"action_type":"InstanceStart"}"#,
                "Missing boot source",
            ),
            (
                Method::Patch,
                "/vm",
                r#"{"state":"Paused"}"#,
                "before starting the microVM",
            ),
            (Method::Patch, "/vm", r#"{"state":"Sleeping"}"#, "unknown variant"),
            (Method::Get, "/", "{}", "GET request cannot have a body."),
            (
                Method::Put,
                "/drives/rootfs",
                r#"{"drive_id":"rootfs","is_root_device":true}"#,
                "missing field `path_on_host`",
            ),
            (
                Method::Put,
                "/drives/rootfs",
                r#"{"drive_id":"rootfs","path_on_host":"/no/rootfs.ext4","is_root_device":true}"#,
                "/no/rootfs.ext4",
            ),
            (
                Method::Put,
                "/drives/rootfs",
                r#"{"drive_id":"other"}"#,
                "does not match",
            ),
            (Method::Put, "/drives/a.b", "{}", "alphanumeric"),
            (
                Method::Put,
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00"}"#,
                "guest_mac",
            ),
            (
                Method::Put,
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth1","host_dev_name":"tap0"}"#,
                "does not match",
            ),
            (
                Method::Put,
                "/vsock",
                r#"{"guest_cid":2,"uds_path":"/tmp/v"}"#,
                "guest_cid 2 is reserved",
            ),
            (Method::Put, "/vsock", r#"{"guest_cid":3}"#, "missing field `uds_path`"),
            (
                Method::Patch,
                "/drives/rootfs",
                r#"{"drive_id":"rootfs","path_on_host":"/tmp"}"#,
                "no drive with this id",
            ),
            (
                Method::Patch,
                "/drives/rootfs",
                r#"{"drive_id":"rootfs","is_root_device":true}"#,
                "unknown field `is_root_device`",
            ),
            (
                Method::Patch,
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0"}"#,
                "before starting the microVM",
            ),
            (Method::Put, "/logger", r#"{"level":"Loud"}"#, "unknown log level"),
        ];
        for (method, path, body, expected) in cases {
            let (status, json) = call(&mut i, method.clone(), path, body);
            assert_eq!(status, 400, "{method} {path} {body}: {json}");
            assert!(fault(&json).contains(expected), "{method} {path} {body}: {json}");
        }
        let (_, json) = call(&mut i, Method::Get, "/machine-config", "");
        assert_eq!(json["vcpu_count"], 1, "failed requests changed nothing");
    }

    #[test]
    fn vm_config_reflects_what_was_put() {
        let mut i = instance();
        call(
            &mut i,
            Method::Put,
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
        );
        call(&mut i, Method::Put, "/metrics", r#"{"metrics_path": "/tmp/m"}"#);
        let (status, json) = call(&mut i, Method::Get, "/vm/config", "");
        assert_eq!(status, 200);
        assert_eq!(json["machine-config"]["mem_size_mib"], 64);
        assert_eq!(json["drives"], json!([]));
        assert_eq!(json["network-interfaces"], json!([]));
        assert_eq!(json["metrics"]["metrics_path"], "/tmp/m");
    }

    #[test]
    fn rate_limiters_are_put_patched_and_shown() {
        let mut i = instance();
        let img = std::env::temp_dir().join(format!("hull-routes-rl-{}", std::process::id()));
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let drive = json!({"drive_id": "data", "path_on_host": img, "is_root_device": false,
            "rate_limiter": {"bandwidth": {"size": 1048576, "one_time_burst": 65536, "refill_time": 100}}});
        let (status, json) = call(&mut i, Method::Put, "/drives/data", &drive.to_string());
        assert_eq!(status, 204, "{json}");
        let iface = json!({"iface_id": "eth0", "host_dev_name": "tap0",
            "rx_rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}, "tx_rate_limiter": null});
        let (status, json) = call(&mut i, Method::Put, "/network-interfaces/eth0", &iface.to_string());
        assert_eq!(status, 204, "{json}");
        // Before boot a drive PATCH changes the stored limiter: the ops bucket is added, bandwidth stays.
        let patch = r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}"#;
        let (status, json) = call(&mut i, Method::Patch, "/drives/data", patch);
        assert_eq!(status, 204, "{json}");
        let (_, json) = call(&mut i, Method::Get, "/vm/config", "");
        let limiter = &json["drives"][0]["rate_limiter"];
        assert_eq!(limiter["bandwidth"]["one_time_burst"], 65536);
        assert_eq!(limiter["ops"]["size"], 10);
        assert_eq!(json["network-interfaces"][0]["rx_rate_limiter"]["ops"]["size"], 100);
        assert!(json["network-interfaces"][0].get("tx_rate_limiter").is_none());
        // Bad buckets are refused with the decoder's reason, and change nothing.
        let bad = r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": "ten", "refill_time": 1}}}"#;
        let (status, json) = call(&mut i, Method::Patch, "/drives/data", bad);
        assert_eq!(status, 400);
        assert!(fault(&json).contains("invalid type: string \"ten\""), "{json}");
        let (_, json) = call(&mut i, Method::Get, "/vm/config", "");
        assert_eq!(json["drives"][0]["rate_limiter"]["ops"]["size"], 10);
        std::fs::remove_file(img).unwrap();
    }

    #[test]
    fn mmds_data_is_put_patched_and_read() {
        let mut i = instance();
        let (status, json) = call(&mut i, Method::Get, "/mmds", "");
        assert_eq!((status, json), (200, json!({})));
        let (status, json) = call(&mut i, Method::Patch, "/mmds", r#"{"a": 1}"#);
        assert_eq!((status, fault(&json)), (400, "The MMDS data store is not initialized."));
        let (status, _) = call(
            &mut i,
            Method::Put,
            "/mmds",
            r#"{"latest": {"meta-data": {"ami-id": "ami-1", "gone": "x"}}}"#,
        );
        assert_eq!(status, 204);
        let patch = r#"{"latest": {"meta-data": {"ami-id": "ami-2", "gone": null}}, "new": [1]}"#;
        let (status, _) = call(&mut i, Method::Patch, "/mmds", patch);
        assert_eq!(status, 204);
        let (_, json) = call(&mut i, Method::Get, "/mmds", "");
        assert_eq!(json, json!({"latest": {"meta-data": {"ami-id": "ami-2"}}, "new": [1]}));
        let (status, json) = call(&mut i, Method::Put, "/mmds", "");
        assert_eq!((status, fault(&json)), (400, "Empty PUT request."));
        let (status, json) = call(&mut i, Method::Put, "/mmds", "{");
        assert_eq!(status, 400);
        assert!(fault(&json).contains("deserializing"), "{json}");
        let (status, json) = call(&mut i, Method::Other("DELETE".into()), "/mmds", "");
        assert_eq!(status, 405, "{json}");
    }

    #[test]
    fn mmds_size_limit_refuses_with_413_and_keeps_the_data() {
        let mut i = instance();
        i.set_mmds_size_limit(64);
        let (status, _) = call(&mut i, Method::Put, "/mmds", r#"{"k": "small"}"#);
        assert_eq!(status, 204);
        let big = json!({ "k": "x".repeat(64) }).to_string();
        for method in [Method::Put, Method::Patch] {
            let (status, json) = call(&mut i, method.clone(), "/mmds", &big);
            assert_eq!(status, 413, "{method}: {json}");
            assert!(fault(&json).contains("doesn't fit"), "{json}");
        }
        let (_, json) = call(&mut i, Method::Get, "/mmds", "");
        assert_eq!(json, json!({"k": "small"}));
    }

    #[test]
    fn mmds_config_names_existing_interfaces_and_shows_in_vm_config() {
        let mut i = instance();
        let cfg = r#"{"network_interfaces": ["eth0"], "version": "V2"}"#;
        let (status, json) = call(&mut i, Method::Put, "/mmds/config", cfg);
        assert_eq!(status, 400);
        assert!(
            fault(&json).contains("does not correspond to any existing network interface"),
            "{json}"
        );
        let iface = r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#;
        assert_eq!(call(&mut i, Method::Put, "/network-interfaces/eth0", iface).0, 204);
        let cases = [
            (r#"{"network_interfaces": []}"#, "is empty"),
            (
                r#"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#,
                "The MMDS IPv4 address is not link local.",
            ),
            (
                r#"{"network_interfaces": ["eth0"], "version": "V9"}"#,
                "unknown variant `V9`",
            ),
            (
                r#"{"network_interfaces": ["eth0"], "extra": 1}"#,
                "unknown field `extra`",
            ),
            (r#"{"version": "V2"}"#, "missing field `network_interfaces`"),
        ];
        for (body, expected) in cases {
            let (status, json) = call(&mut i, Method::Put, "/mmds/config", body);
            assert_eq!(status, 400, "{body}: {json}");
            assert!(fault(&json).contains(expected), "{body}: {json}");
        }
        assert_eq!(call(&mut i, Method::Put, "/mmds/config", cfg).0, 204);
        let (_, json) = call(&mut i, Method::Get, "/vm/config", "");
        assert_eq!(
            json["mmds-config"],
            json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254", "imds_compat": false})
        );
        assert_eq!(call(&mut i, Method::Get, "/mmds/config", "").0, 405);
    }

    #[test]
    fn entropy_is_put_only_takes_a_rate_limiter_and_shows_in_vm_config() {
        let mut i = instance();
        let (status, _) = call(&mut i, Method::Get, "/entropy", "");
        assert_eq!(status, 405);
        let (status, json) = call(&mut i, Method::Put, "/entropy", "");
        assert_eq!((status, fault(&json)), (400, "Empty PUT request."));
        let (status, json) = call(
            &mut i,
            Method::Put,
            "/entropy",
            r#"{"rate_limiter": {"ops": {"size": 1}}}"#,
        );
        assert_eq!(status, 400);
        assert!(fault(&json).contains("missing field `refill_time`"), "{json}");
        let (status, json) = call(&mut i, Method::Put, "/entropy", r#"{"rate": 1}"#);
        assert_eq!(status, 400);
        assert!(fault(&json).contains("unknown field `rate`"), "{json}");
        let (_, json) = call(&mut i, Method::Get, "/vm/config", "");
        assert!(json.get("entropy").is_none(), "{json}");
        let (status, _) = call(&mut i, Method::Put, "/entropy", "{}");
        assert_eq!(status, 204);
        let (_, json) = call(&mut i, Method::Get, "/vm/config", "");
        assert_eq!(json["entropy"], json!({}));
        let limited = r#"{"rate_limiter": {"bandwidth": {"size": 1024, "refill_time": 100}}}"#;
        let (status, _) = call(&mut i, Method::Put, "/entropy", limited);
        assert_eq!(status, 204);
        let (_, json) = call(&mut i, Method::Get, "/vm/config", "");
        assert_eq!(json["entropy"]["rate_limiter"]["bandwidth"]["size"], 1024);
    }

    #[test]
    fn serial_is_put_only_and_refuses_a_path_it_cannot_open() {
        let mut i = instance();
        let (status, _) = call(&mut i, Method::Get, "/serial", "");
        assert_eq!(status, 405);
        let (status, json) = call(
            &mut i,
            Method::Put,
            "/serial",
            r#"{"serial_out_path": "/no/such/dir/s.log"}"#,
        );
        assert_eq!(status, 400);
        assert!(
            fault(&json).starts_with("Invalid serial configuration: cannot open serial_out_path /no/such/dir/s.log"),
            "{json}"
        );
        let (status, json) = call(&mut i, Method::Put, "/serial", r#"{"serial_out_path": 7}"#);
        assert_eq!(status, 400);
        assert!(fault(&json).contains("invalid type"), "{json}");
        let path = std::env::temp_dir().join(format!("hull-routes-serial-{}", std::process::id()));
        let body = json!({ "serial_out_path": path }).to_string();
        let (status, json) = call(&mut i, Method::Put, "/serial", &body);
        assert_eq!(status, 204, "{json}");
        // Created owner-only: the console can carry secrets.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn balloon_put_get_patch_before_boot_with_firecrackers_errors() {
        let mut i = instance();
        for (method, path, body) in [
            (Method::Get, "/balloon", ""),
            (Method::Patch, "/balloon", r#"{"amount_mib": 1}"#),
            (
                Method::Patch,
                "/balloon/statistics",
                r#"{"stats_polling_interval_s": 1}"#,
            ),
        ] {
            let (status, json) = call(&mut i, method.clone(), path, body);
            assert_eq!(
                (status, fault(&json)),
                (400, "No balloon device found."),
                "{method} {path}"
            );
        }
        let (status, json) = call(
            &mut i,
            Method::Put,
            "/balloon",
            r#"{"amount_mib": 129, "deflate_on_oom": true}"#,
        );
        assert_eq!((status, fault(&json)), (400, "Amount of pages requested is too large."));
        let (status, json) = call(&mut i, Method::Put, "/balloon", r#"{"amount_mib": 1}"#);
        assert_eq!(status, 400);
        assert!(fault(&json).contains("missing field `deflate_on_oom`"), "{json}");
        let (status, json) = call(
            &mut i,
            Method::Put,
            "/balloon",
            r#"{"amount_mib": -1, "deflate_on_oom": true}"#,
        );
        assert_eq!(status, 400);
        assert!(fault(&json).contains("invalid value"), "{json}");
        let put = r#"{"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#;
        let (status, _) = call(&mut i, Method::Put, "/balloon", put);
        assert_eq!(status, 204);
        let (status, json) = call(&mut i, Method::Get, "/balloon", "");
        assert_eq!(status, 200);
        assert_eq!(
            json,
            json!({"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1})
        );
        let (status, _) = call(&mut i, Method::Patch, "/balloon", r#"{"amount_mib": 32}"#);
        assert_eq!(status, 204);
        let (status, json) = call(&mut i, Method::Patch, "/balloon", r#"{"amount_mib": 4096}"#);
        assert_eq!((status, fault(&json)), (400, "Amount of pages requested is too large."));
        let (status, _) = call(
            &mut i,
            Method::Patch,
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": 5}"#,
        );
        assert_eq!(status, 204);
        let (status, json) = call(
            &mut i,
            Method::Patch,
            "/balloon/statistics",
            r#"{"stats_polling_interval_s": 0}"#,
        );
        assert_eq!(
            (status, fault(&json)),
            (400, "Cannot enable/disable the statistics after boot.")
        );
        let (status, json) = call(&mut i, Method::Get, "/balloon/statistics", "");
        assert_eq!(
            (status, fault(&json)),
            (
                400,
                "The requested operation is not supported before starting the microVM."
            )
        );
        let (_, json) = call(&mut i, Method::Get, "/vm/config", "");
        assert_eq!(
            json["balloon"],
            json!({"amount_mib": 32, "deflate_on_oom": true, "stats_polling_interval_s": 5})
        );
        let (status, _) = call(&mut i, Method::Put, "/balloon/statistics", "{}");
        assert_eq!(status, 405);
    }

    #[test]
    fn balloon_statistics_have_firecrackers_keys() {
        let mut stats = BalloonStats {
            target_pages: 512,
            actual_pages: 256,
            ..Default::default()
        };
        assert_eq!(
            balloon_stats_json(&stats),
            json!({"target_pages": 512, "actual_pages": 256, "target_mib": 2, "actual_mib": 1})
        );
        stats.guest[4] = Some(1000);
        stats.guest[7] = Some(7);
        let json = balloon_stats_json(&stats);
        assert_eq!(
            (json["free_memory"].as_u64(), json["disk_caches"].as_u64()),
            (Some(1000), Some(7))
        );
        assert!(json.get("swap_in").is_none());
    }

    #[test]
    fn pmem_is_put_by_id_checked_and_shown_in_vm_config() {
        let mut i = instance();
        let img = std::env::temp_dir().join(format!("hull-routes-pmem-{}", std::process::id()));
        std::fs::File::create(&img).unwrap().set_len(2 << 20).unwrap();
        let odd = std::env::temp_dir().join(format!("hull-routes-pmem-odd-{}", std::process::id()));
        std::fs::File::create(&odd).unwrap().set_len(4096).unwrap();
        let put =
            |i: &mut Instance, id: &str, body: Value| call(i, Method::Put, &format!("/pmem/{id}"), &body.to_string());
        let (status, json) = put(&mut i, "p0", json!({"id": "p1", "path_on_host": img}));
        assert_eq!(
            (status, fault(&json)),
            (400, "The id from the path does not match the id from the body!")
        );
        let (status, json) = put(&mut i, "p0", json!({"id": "p0", "path_on_host": odd}));
        assert_eq!(status, 400);
        assert!(fault(&json).contains("a non-empty multiple of 2 MiB"), "{json}");
        let (status, json) = put(&mut i, "p0", json!({"id": "p0", "path_on_host": "/no/such.img"}));
        assert_eq!(status, 400);
        assert!(fault(&json).contains("Invalid pmem device \"p0\""), "{json}");
        let (status, json) = put(
            &mut i,
            "p0",
            json!({"id": "p0", "path_on_host": img, "root_device": true, "read_only": true}),
        );
        assert_eq!(status, 204, "{json}");
        let drive = json!({"drive_id": "rootfs", "path_on_host": img, "is_root_device": true});
        let (status, json) = call(&mut i, Method::Put, "/drives/rootfs", &drive.to_string());
        assert_eq!(status, 400);
        assert!(fault(&json).contains("a root device is already configured"), "{json}");
        let (status, _) = put(&mut i, "p1", json!({"id": "p1", "path_on_host": img}));
        assert_eq!(status, 204);
        let (_, json) = call(&mut i, Method::Get, "/vm/config", "");
        assert_eq!(
            json["pmem"][0],
            json!({"id": "p0", "path_on_host": img, "root_device": true, "read_only": true})
        );
        assert_eq!(json["pmem"][1]["root_device"], false);
        let (status, _) = call(&mut i, Method::Get, "/pmem/p0", "");
        assert_eq!(status, 405);
        std::fs::remove_file(img).unwrap();
        std::fs::remove_file(odd).unwrap();
    }

    #[test]
    fn flush_metrics_before_boot_is_refused_as_firecracker_does() {
        let (status, json) = call(
            &mut instance(),
            Method::Put,
            "/actions",
            r#"{"action_type":"FlushMetrics"}"#,
        );
        assert_eq!(status, 400);
        assert!(fault(&json).contains("not supported before starting"), "{json}");
    }
}
