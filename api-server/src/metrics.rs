//! Firecracker's metrics file: one JSON object per line (`utc_timestamp_ms`, `put_api_requests`, ...), written
//! on `FlushMetrics`. This file owns the API server's own counters (requests and failures per endpoint, as
//! deltas since the previous flush, like Firecracker's) and the line's shape. The device sections are
//! present with Firecracker's names but are not fed yet (empty objects): the VMM does not hand its devices'
//! counters to the API thread yet.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

/// Cumulative counters, by section (`put_api_requests`, ...) then key (`actions_count`, ...).
type Counters = BTreeMap<&'static str, BTreeMap<String, u64>>;

static COUNTERS: Mutex<Counters> = Mutex::new(BTreeMap::new());
static FLUSHED: Mutex<Counters> = Mutex::new(BTreeMap::new());

/// Firecracker's name for the endpoint of `path` in its `*_api_requests` sections.
fn endpoint(path: &str) -> &'static str {
    let first = path.trim_matches('/').split('/').next().unwrap_or("");
    match first {
        "" => "instance_info",
        "actions" => "actions",
        "boot-source" => "boot_source",
        "drives" => "drive",
        "logger" => "logger",
        "machine-config" => "machine_cfg",
        "metrics" => "metrics",
        "network-interfaces" => "network",
        "vsock" => "vsock",
        "version" => "vmm_version",
        "vm" => "vm",
        "mmds" => "mmds",
        "balloon" => "balloon",
        "entropy" => "entropy",
        _ => "other",
    }
}

/// Counts one API request: `<endpoint>_count`, and `<endpoint>_fails` when it was refused.
pub fn count_request(method: &str, path: &str, failed: bool) {
    let section = match method {
        "PUT" => "put_api_requests",
        "PATCH" => "patch_api_requests",
        "GET" => "get_api_requests",
        _ => return,
    };
    let name = endpoint(path);
    let mut counters = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let section = counters.entry(section).or_default();
    *section.entry(format!("{name}_count")).or_default() += 1;
    if failed {
        *section.entry(format!("{name}_fails")).or_default() += 1;
    }
}

/// Firecracker's sections hull does not feed yet: present, empty.
const UNFED_SECTIONS: &[&str] = &[
    "block",
    "net",
    "vsock",
    "vcpu",
    "vmm",
    "uart",
    "latencies_us",
    "seccomp",
    "signals",
    "i8042",
    "balloon",
    "rtc",
    "logger",
    "mmds",
    "deprecated_api",
    "entropy",
];

/// The next metrics line: counters as deltas since the previous call.
pub fn next_line(startup: &Startup) -> Value {
    let now = COUNTERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut flushed = FLUSHED.lock().unwrap_or_else(|e| e.into_inner());
    let mut line = Map::new();
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    line.insert("utc_timestamp_ms".into(), ms.into());
    line.insert(
        "api_server".into(),
        json!({
            "process_startup_time_us": startup.process_startup_time_us,
            "process_startup_time_cpu_us": startup.process_startup_time_cpu_us,
        }),
    );
    for section in ["put_api_requests", "patch_api_requests", "get_api_requests"] {
        let current = now.get(section).cloned().unwrap_or_default();
        let before = flushed.get(section).cloned().unwrap_or_default();
        let deltas: Map<String, Value> = current
            .iter()
            .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0)).into()))
            .collect();
        line.insert(section.into(), Value::Object(deltas));
    }
    for section in UNFED_SECTIONS {
        line.insert((*section).into(), json!({}));
    }
    *flushed = now;
    Value::Object(line)
}

/// Firecracker's start-up figures (`--start-time-us` and friends), 0 when not given.
#[derive(Clone, Copy, Debug, Default)]
pub struct Startup {
    pub process_startup_time_us: u64,
    pub process_startup_time_cpu_us: u64,
}

/// Writes the next line to `file` (opened append-only and non-blocking).
pub fn flush_to(file: &std::fs::File, startup: &Startup) -> std::io::Result<()> {
    let mut text = next_line(startup).to_string();
    text.push('\n');
    let mut file = file;
    file.write_all(text.as_bytes())
}

/// Firecracker flushes its metrics every 60 seconds without being asked.
pub const FLUSH_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

/// Flushes to `file` every `period` from a thread of its own, started pre-boot by the API thread: it
/// inherits that thread's seccomp filter and uses clock_nanosleep, clock_gettime and write, all allowed
/// there. It runs until the process ends.
pub fn start_periodic_flush(
    file: std::sync::Arc<std::fs::File>,
    startup: Startup,
    period: std::time::Duration,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("hull_metrics".into())
        .spawn(move || loop {
            std::thread::sleep(period);
            if let Err(e) = flush_to(&file, &startup) {
                tracing::warn!(error = %e, "periodic metrics flush failed");
            }
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_as_deltas_per_flush() {
        // PATCH /entropy and /balloon: paths no other unit test sends (the counters are per process).
        count_request("PATCH", "/entropy", false);
        count_request("PATCH", "/entropy", true);
        count_request("PATCH", "/balloon/", false);
        let line = next_line(&Startup::default());
        assert_eq!(line["patch_api_requests"]["entropy_count"], 2);
        assert_eq!(line["patch_api_requests"]["entropy_fails"], 1);
        assert_eq!(line["patch_api_requests"]["balloon_count"], 1);
        assert!(line["utc_timestamp_ms"].as_u64().unwrap() > 0);
        for key in UNFED_SECTIONS {
            assert!(line[key].is_object(), "{key}");
        }
        let line = next_line(&Startup::default());
        assert_eq!(line["patch_api_requests"]["entropy_count"], 0);
    }
}
