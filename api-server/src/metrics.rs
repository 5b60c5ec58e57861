//! Firecracker's metrics file: one JSON object per line (`utc_timestamp_ms`, `put_api_requests`, ...), written
//! on `FlushMetrics` and by the periodic flush. This file owns the API server's own counters (requests and
//! failures per endpoint, pause/resume latencies, failed flushes), the line's shape, and the translation of
//! the running microVM's counters ([`vmm::MetricSources`], handed over by [`attach_vm`] at `InstanceStart`)
//! into Firecracker's sections and key names: `block` (the sum over drives) and `block_<drive_id>`, `net`
//! and `net_<iface_id>`, `vsock`, `balloon`, `entropy`, `mmds`, `uart` and `vcpu`. Counters are deltas since the previous line, as
//! Firecracker's `SharedIncMetric`s are; `latencies_us` holds the last value measured, as Firecracker's
//! store metrics do. A section lists the Firecracker keys hull has a counter for (the `*_KEYS` tables
//! below); Firecracker keys hull does not measure are left out rather than written as a zero that means
//! nothing.
//!
//! Sections written as empty objects, for which hull has no data: `vmm` (`panic_count`: hull does not catch
//! panics), `signals` (hull handles no SIGBUS/SIGSEGV/... itself; termination signals end it normally),
//! `seccomp` (`num_faults`: a filter violation kills the thread with SIGSYS before anything can count it),
//! `i8042`, `rtc` (hull has no such devices or counts none) and
//! `deprecated_api` (hull has no deprecated endpoints).
//!
//! Reading the counters is a relaxed atomic load per counter and the line is one `write` to a file opened
//! pre-boot: the API thread's and the periodic-flush thread's seccomp filters need nothing more.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use devices::virtio::{DeviceMetrics, MetricsSnapshot};
use serde_json::{json, Map, Value};
use vmm::MetricSources;

/// Cumulative counters, by section (`put_api_requests`, ...) then key (`actions_count`, ...).
type Counters = BTreeMap<&'static str, BTreeMap<String, u64>>;

static COUNTERS: Mutex<Counters> = Mutex::new(BTreeMap::new());

/// What the previous line reported, to write the next as deltas. One lock: the API thread and the periodic
/// thread never interleave two flushes (a counter cannot be reported twice).
struct Flushed {
    api: Counters,
    /// By section name (`block_rootfs`, `vcpu`, ...): the device's counters at the previous line.
    devices: BTreeMap<String, MetricsSnapshot>,
}

static FLUSHED: Mutex<Flushed> = Mutex::new(Flushed {
    api: BTreeMap::new(),
    devices: BTreeMap::new(),
});

/// The running microVM's counters, once it started.
static VM: Mutex<Option<MetricSources>> = Mutex::new(None);

/// Last measured latencies in microseconds (`latencies_us`), by Firecracker's key.
static LATENCIES: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Failed flushes (`logger.metrics_fails`).
static FLUSH_FAILS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Hands the started microVM's counters to the metrics writer: every later line reports them.
pub fn attach_vm(sources: MetricSources) {
    *VM.lock().unwrap_or_else(|e| e.into_inner()) = Some(sources);
}

/// Records how long an operation took, under its Firecracker `latencies_us` key (`pause_vm`, `resume_vm`).
pub fn record_latency(key: &'static str, took: std::time::Duration) {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    LATENCIES.lock().unwrap_or_else(|e| e.into_inner()).insert(key, us);
}

/// (hull's counter, Firecracker's key) for a drive; Firecracker's `block` / `block_<drive_id>` sections.
const BLOCK_KEYS: &[(&str, &str)] = &[
    ("read_requests", "read_count"),
    ("write_requests", "write_count"),
    ("flush_requests", "flush_count"),
    ("read_bytes", "read_bytes"),
    ("write_bytes", "write_bytes"),
    ("invalid_requests", "invalid_reqs_count"),
    ("execute_fails", "execute_fails"),
    ("rate_limiter_throttled", "rate_limiter_throttled_events"),
    ("fatal_chains", "event_fails"),
];

/// The same for a network interface (`net` / `net_<iface_id>`).
const NET_KEYS: &[(&str, &str)] = &[
    ("rx_frames", "rx_packets_count"),
    ("rx_bytes", "rx_bytes_count"),
    ("tx_frames", "tx_packets_count"),
    ("tx_bytes", "tx_bytes_count"),
    ("rx_dropped", "rx_fails"),
    ("tx_dropped", "tx_fails"),
    ("rx_rate_limiter_throttled", "rx_rate_limiter_throttled"),
    ("tx_rate_limiter_throttled", "tx_rate_limiter_throttled"),
    ("fatal_chains", "event_fails"),
];

/// The same for the vsock device (`vsock`; rx is host to guest, as in Firecracker).
const VSOCK_KEYS: &[(&str, &str)] = &[
    ("rx_packets", "rx_packets_count"),
    ("rx_bytes", "rx_bytes_count"),
    ("tx_packets", "tx_packets_count"),
    ("tx_bytes", "tx_bytes_count"),
    ("conns_opened", "conns_added"),
    ("conns_closed", "conns_removed"),
];

/// The balloon (`balloon`): hull's counters under Firecracker's names.
const BALLOON_KEYS: &[(&str, &str)] = &[
    ("inflate_count", "inflate_count"),
    ("deflate_count", "deflate_count"),
    ("stats_updates_count", "stats_updates_count"),
    ("stats_update_fails", "stats_update_fails"),
    ("event_fails", "event_fails"),
];

/// The entropy device (`entropy`).
const ENTROPY_KEYS: &[(&str, &str)] = &[
    ("entropy_event_count", "entropy_event_count"),
    ("entropy_bytes", "entropy_bytes"),
    ("host_rng_fails", "host_rng_fails"),
    ("entropy_rate_limiter_throttled", "entropy_rate_limiter_throttled"),
    ("entropy_event_fails", "entropy_event_fails"),
];

/// MMDS (`mmds`), over every interface that serves it: hull's counters carry Firecracker's names.
const MMDS_KEYS: &[(&str, &str)] = &[
    ("rx_accepted", "rx_accepted"),
    ("rx_bad_eth", "rx_bad_eth"),
    ("rx_count", "rx_count"),
    ("rx_invalid_token", "rx_invalid_token"),
    ("rx_no_token", "rx_no_token"),
    ("tx_bytes", "tx_bytes"),
    ("tx_count", "tx_count"),
    ("tx_errors", "tx_errors"),
    ("tx_frames", "tx_frames"),
    ("connections_created", "connections_created"),
    ("connections_destroyed", "connections_destroyed"),
];

/// The console UART (`uart`): hull's counters carry Firecracker's names.
const UART_KEYS: &[(&str, &str)] = &[
    ("read_count", "read_count"),
    ("write_count", "write_count"),
    ("missed_read_count", "missed_read_count"),
    ("missed_write_count", "missed_write_count"),
    ("error_count", "error_count"),
];

/// The vCPU exits (`vcpu`), also under Firecracker's names.
const VCPU_KEYS: &[(&str, &str)] = &[
    ("exit_io_in", "exit_io_in"),
    ("exit_io_out", "exit_io_out"),
    ("exit_mmio_read", "exit_mmio_read"),
    ("exit_mmio_write", "exit_mmio_write"),
    ("failures", "failures"),
];

/// Firecracker's keys of `table`, each the sum of the deltas of the hull counters that feed it.
fn translate(delta: &MetricsSnapshot, table: &[(&str, &'static str)]) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for (hull, firecracker) in table {
        let slot = out.entry(*firecracker).or_insert(0u64);
        *slot = slot.saturating_add(delta.get(hull).unwrap_or(0));
    }
    out
}

/// The delta of `source` since the previous line (remembered under `section`), in Firecracker's keys.
fn section_delta(
    section: &str,
    source: &dyn DeviceMetrics,
    table: &[(&str, &'static str)],
    previous: &mut BTreeMap<String, MetricsSnapshot>,
) -> BTreeMap<&'static str, u64> {
    let now = source.snapshot();
    let delta = now.since(previous.get(section).unwrap_or(&MetricsSnapshot::default()));
    previous.insert(section.to_string(), now);
    translate(&delta, table)
}

fn to_object(keys: BTreeMap<&'static str, u64>) -> Value {
    Value::Object(keys.into_iter().map(|(k, v)| (k.to_string(), v.into())).collect())
}

/// Per-device sections (`block_<id>`, `net_<id>`) with their aggregate (`block`, `net`), written into `line`.
fn per_device_sections(
    line: &mut Map<String, Value>,
    kind: &str,
    devices: &[(String, Arc<dyn DeviceMetrics>)],
    table: &[(&str, &'static str)],
    previous: &mut BTreeMap<String, MetricsSnapshot>,
) {
    let mut aggregate = translate(&MetricsSnapshot::default(), table);
    for (id, source) in devices {
        let section = format!("{kind}_{id}");
        let keys = section_delta(&section, source.as_ref(), table, previous);
        for (key, value) in &keys {
            let slot = aggregate.entry(key).or_insert(0);
            *slot = slot.saturating_add(*value);
        }
        line.insert(section, to_object(keys));
    }
    line.insert(kind.to_string(), to_object(aggregate));
}

/// The device, UART and vCPU sections of the next line, as deltas since `previous` (which they update).
/// Without a microVM every section is there with zero counts, as Firecracker writes them before boot.
fn vm_sections(
    line: &mut Map<String, Value>,
    vm: Option<&MetricSources>,
    previous: &mut BTreeMap<String, MetricsSnapshot>,
) {
    let none = MetricsSnapshot::default();
    let Some(vm) = vm else {
        for (kind, table) in [
            ("block", BLOCK_KEYS),
            ("net", NET_KEYS),
            ("vsock", VSOCK_KEYS),
            ("balloon", BALLOON_KEYS),
            ("entropy", ENTROPY_KEYS),
            ("mmds", MMDS_KEYS),
            ("uart", UART_KEYS),
            ("vcpu", VCPU_KEYS),
        ] {
            line.insert(kind.into(), to_object(translate(&none, table)));
        }
        return;
    };
    per_device_sections(line, "block", &vm.drives, BLOCK_KEYS, previous);
    per_device_sections(line, "net", &vm.nets, NET_KEYS, previous);
    let vsock = match &vm.vsock {
        Some(source) => section_delta("vsock", source.as_ref(), VSOCK_KEYS, previous),
        None => translate(&none, VSOCK_KEYS),
    };
    line.insert("vsock".into(), to_object(vsock));
    for (name, source, table) in [
        ("balloon", &vm.balloon, BALLOON_KEYS),
        ("entropy", &vm.entropy, ENTROPY_KEYS),
        ("mmds", &vm.mmds, MMDS_KEYS),
    ] {
        let section = match source {
            Some(source) => section_delta(name, source.as_ref(), table, previous),
            None => translate(&none, table),
        };
        line.insert(name.into(), to_object(section));
    }
    line.insert(
        "uart".into(),
        to_object(section_delta("uart", vm.uart.as_ref(), UART_KEYS, previous)),
    );
    line.insert(
        "vcpu".into(),
        to_object(section_delta("vcpu", vm.vcpu.as_ref(), VCPU_KEYS, previous)),
    );
}

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

/// Counts one API request (`<endpoint>_count`), before it runs.
pub fn count_request(method: &str, path: &str) {
    count(method, path, "count");
}

/// Counts one refused API request (`<endpoint>_fails`).
pub fn count_failure(method: &str, path: &str) {
    count(method, path, "fails");
}

fn count(method: &str, path: &str, suffix: &str) {
    let section = match method {
        "PUT" => "put_api_requests",
        "PATCH" => "patch_api_requests",
        "GET" => "get_api_requests",
        _ => return,
    };
    let name = endpoint(path);
    let mut counters = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let section = counters.entry(section).or_default();
    let slot = section.entry(format!("{name}_{suffix}")).or_default();
    *slot = slot.saturating_add(1);
}

/// Firecracker's sections hull has no data for (see the module doc): present, empty.
const UNFED_SECTIONS: &[&str] = &["vmm", "seccomp", "signals", "i8042", "rtc", "deprecated_api"];

/// The next metrics line: counters as deltas since the previous call.
pub fn next_line(startup: &Startup) -> Value {
    let mut flushed = FLUSHED.lock().unwrap_or_else(|e| e.into_inner());
    let now = COUNTERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
        let before = flushed.api.get(section).cloned().unwrap_or_default();
        let deltas: Map<String, Value> = current
            .iter()
            .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0)).into()))
            .collect();
        line.insert(section.into(), Value::Object(deltas));
    }
    let vm = VM.lock().unwrap_or_else(|e| e.into_inner()).clone();
    vm_sections(&mut line, vm.as_ref(), &mut flushed.devices);
    let latencies = LATENCIES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    line.insert("latencies_us".into(), to_object(latencies));
    line.insert(
        "logger".into(),
        json!({ "metrics_fails": FLUSH_FAILS.swap(0, std::sync::atomic::Ordering::Relaxed) }),
    );
    for section in UNFED_SECTIONS {
        line.insert((*section).into(), json!({}));
    }
    flushed.api = now;
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
    file.write_all(text.as_bytes()).inspect_err(|_| {
        FLUSH_FAILS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })
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
        count_request("PATCH", "/entropy");
        count_request("PATCH", "/entropy");
        count_failure("PATCH", "/entropy");
        count_request("PATCH", "/balloon/");
        record_latency("pause_vm", std::time::Duration::from_micros(1500));
        let line = next_line(&Startup::default());
        assert_eq!(line["latencies_us"]["pause_vm"], 1500, "{line}");
        assert_eq!(line["patch_api_requests"]["entropy_count"], 2);
        assert_eq!(line["patch_api_requests"]["entropy_fails"], 1);
        assert_eq!(line["patch_api_requests"]["balloon_count"], 1);
        assert!(line["utc_timestamp_ms"].as_u64().unwrap() > 0);
        for key in UNFED_SECTIONS {
            assert!(line[key].is_object(), "{key}");
        }
        let line = next_line(&Startup::default());
        assert_eq!(line["patch_api_requests"]["entropy_count"], 0);
        // A latency is the last value measured, not a count: it stays.
        assert_eq!(line["latencies_us"]["pause_vm"], 1500, "{line}");
        for key in ["block", "net", "vsock", "uart", "vcpu", "latencies_us", "logger"] {
            assert!(line[key].is_object(), "{key}");
        }
    }

    use devices::legacy::serial::SerialMetrics;
    use devices::virtio::block::BlockMetrics;
    use devices::virtio::net::NetMetrics;
    use devices::virtio::vsock::VsockMetrics;
    use vmm::VcpuMetrics;

    struct Vm {
        rootfs: Arc<BlockMetrics>,
        data: Arc<BlockMetrics>,
        eth0: Arc<NetMetrics>,
        vsock: Arc<VsockMetrics>,
        entropy: Arc<devices::virtio::rng::RngMetrics>,
        uart: Arc<SerialMetrics>,
        vcpu: Arc<VcpuMetrics>,
    }

    impl Vm {
        fn new() -> Vm {
            Vm {
                rootfs: Default::default(),
                data: Default::default(),
                eth0: Default::default(),
                vsock: Default::default(),
                entropy: Default::default(),
                uart: Default::default(),
                vcpu: Default::default(),
            }
        }

        fn sources(&self) -> MetricSources {
            let mut s = MetricSources::new(self.uart.clone(), self.vcpu.clone());
            s.drives = vec![
                ("rootfs".into(), self.rootfs.clone()),
                ("data".into(), self.data.clone()),
            ];
            s.nets = vec![("eth0".into(), self.eth0.clone())];
            s.vsock = Some(self.vsock.clone());
            s.entropy = Some(self.entropy.clone());
            s
        }
    }

    fn sections(vm: Option<&MetricSources>, previous: &mut BTreeMap<String, MetricsSnapshot>) -> Value {
        let mut line = Map::new();
        vm_sections(&mut line, vm, previous);
        Value::Object(line)
    }

    #[test]
    fn device_counters_appear_under_firecrackers_keys_as_deltas() {
        let vm = Vm::new();
        let sources = vm.sources();
        let mut previous = BTreeMap::new();
        vm.rootfs.read_requests.add(3);
        vm.rootfs.read_bytes.add(1536);
        vm.rootfs.invalid_requests.inc();
        vm.rootfs.rate_limiter_throttled.add(2);
        vm.data.read_requests.inc();
        vm.data.write_requests.add(4);
        vm.data.write_bytes.add(2048);
        vm.data.flush_requests.inc();
        vm.data.execute_fails.inc();
        vm.eth0.rx_frames.add(5);
        vm.eth0.rx_bytes.add(700);
        vm.eth0.tx_frames.add(6);
        vm.eth0.tx_bytes.add(800);
        vm.eth0.tx_dropped.inc();
        vm.eth0.tx_rate_limiter_throttled.inc();
        vm.vsock.rx_packets.add(7);
        vm.vsock.tx_bytes.add(90);
        vm.vsock.conns_opened.add(2);
        vm.vsock.conns_closed.inc();
        vm.entropy.entropy_bytes.add(64);
        vm.uart.write_count.add(23);
        vm.vcpu.exit_io_out.add(23);
        vm.vcpu.exit_mmio_write.inc();

        let line = sections(Some(&sources), &mut previous);
        let rootfs = &line["block_rootfs"];
        assert_eq!(rootfs["read_count"], 3, "{line}");
        assert_eq!(rootfs["read_bytes"], 1536);
        assert_eq!(rootfs["invalid_reqs_count"], 1);
        assert_eq!(rootfs["rate_limiter_throttled_events"], 2);
        assert_eq!(rootfs["write_count"], 0);
        let data = &line["block_data"];
        assert_eq!(
            (data["write_count"].as_u64(), data["write_bytes"].as_u64()),
            (Some(4), Some(2048))
        );
        assert_eq!(
            (data["flush_count"].as_u64(), data["execute_fails"].as_u64()),
            (Some(1), Some(1))
        );
        // `block` is the sum over the drives.
        assert_eq!(line["block"]["read_count"], 4);
        assert_eq!(line["block"]["write_bytes"], 2048);
        assert_eq!(line["block"]["read_bytes"], 1536);
        let eth0 = &line["net_eth0"];
        assert_eq!(
            (eth0["rx_packets_count"].as_u64(), eth0["rx_bytes_count"].as_u64()),
            (Some(5), Some(700))
        );
        assert_eq!(
            (eth0["tx_packets_count"].as_u64(), eth0["tx_bytes_count"].as_u64()),
            (Some(6), Some(800))
        );
        assert_eq!(
            (eth0["tx_fails"].as_u64(), eth0["tx_rate_limiter_throttled"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(line["net"], *eth0);
        assert_eq!(line["vsock"]["rx_packets_count"], 7);
        assert_eq!(line["vsock"]["tx_bytes_count"], 90);
        assert_eq!(
            (
                line["vsock"]["conns_added"].as_u64(),
                line["vsock"]["conns_removed"].as_u64()
            ),
            (Some(2), Some(1))
        );
        assert_eq!(line["entropy"]["entropy_bytes"], 64);
        // No balloon in this VM: its section is there with zero counts.
        assert_eq!(line["balloon"]["inflate_count"], 0);
        assert_eq!(line["uart"]["write_count"], 23);
        assert_eq!(line["vcpu"]["exit_io_out"], 23);
        assert_eq!(line["vcpu"]["exit_mmio_write"], 1);
        assert_eq!(line["vcpu"]["failures"], 0);
        // hull's own names never leak into the file.
        assert!(
            rootfs.get("read_requests").is_none() && eth0.get("rx_frames").is_none(),
            "{line}"
        );

        // The next line counts only what happened since.
        vm.rootfs.read_requests.inc();
        vm.vcpu.exit_io_out.add(2);
        let line = sections(Some(&sources), &mut previous);
        assert_eq!(line["block_rootfs"]["read_count"], 1);
        assert_eq!(line["block"]["read_count"], 1);
        assert_eq!(line["block_data"]["write_count"], 0);
        assert_eq!(line["vcpu"]["exit_io_out"], 2);
        assert_eq!(line["uart"]["write_count"], 0);
        let line = sections(Some(&sources), &mut previous);
        assert!(
            ["block", "block_rootfs", "net", "vsock", "uart", "vcpu"]
                .iter()
                .all(|s| line[*s].as_object().unwrap().values().all(|v| v == 0)),
            "{line}"
        );
    }

    #[test]
    fn without_a_microvm_the_sections_are_there_with_zero_counts() {
        let line = sections(None, &mut BTreeMap::new());
        assert_eq!(line["block"]["read_count"], 0);
        assert_eq!(line["net"]["tx_bytes_count"], 0);
        assert_eq!(line["vsock"]["conns_added"], 0);
        assert_eq!(line["vcpu"]["exit_io_in"], 0);
        assert_eq!(line["uart"]["write_count"], 0);
        let keys = line.as_object().unwrap().keys();
        assert!(
            keys.clone().all(|k| !k.starts_with("block_") && !k.starts_with("net_")),
            "{line}"
        );
    }

    #[test]
    fn several_hull_counters_feeding_one_key_are_summed() {
        let m = BlockMetrics::default();
        m.io_errors.add(2);
        m.unsupported.add(3);
        let table = &[
            ("io_errors", "fails"),
            ("unsupported", "fails"),
            ("nothing_like_it", "other"),
        ];
        let keys = translate(&m.snapshot(), table);
        assert_eq!(keys.get("fails"), Some(&5));
        assert_eq!(keys.get("other"), Some(&0), "a counter the device lacks counts as zero");
    }
}
