//! The shim's own log: containerd's `log` FIFO in the bundle directory, as containerd-shim's logger writes
//! it (`time="..." level=info msg="..."`), or, with `log_format = "json"` in the shim config, one JSON object
//! per line (`time`, `level`, `target`, `msg` and every key-value of the record at the top level) so a SIEM
//! can ingest it.
//!
//! Security events have one shape here as in hull (`hull_logging::security`): target `security`, keys
//! `event`, `vm_id` (the pod's grouping id, which names its VM), `container_id` and `reason`
//! ([`security_event`]). The agent's refusals (PERMISSION_DENIED) are logged this way when they reach
//! containerd (`crate::error`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use log::kv::{Key, Value, VisitSource};
use serde::Deserialize;

/// How the shim writes its log.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// containerd-shim's `key="value"` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

static JSON: AtomicBool = AtomicBool::new(false);
static VM_ID: OnceLock<String> = OnceLock::new();

/// Switches the format of every line from now on (the config arrives with the first Create).
pub fn set_format(format: LogFormat) {
    JSON.store(format == LogFormat::Json, Ordering::Relaxed);
}

/// Installs the logger on containerd's `log` FIFO (in the working directory, the bundle) for the serving
/// process; `vm_id` names the pod's VM in security events. The level: `RUST_LOG`, else info (debug with
/// containerd's `-debug`). Returns false when the FIFO cannot be opened (then nothing is logged).
pub fn install(debug: bool, vm_id: &str, format: LogFormat) -> bool {
    let _ = VM_ID.set(vm_id.to_string());
    set_format(format);
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    log::set_max_level(if debug {
        level.max(log::LevelFilter::Debug)
    } else {
        level
    });
    match OpenOptions::new().write(true).open("log") {
        Ok(file) => log::set_boxed_logger(Box::new(ShimLogger(Mutex::new(file)))).is_ok(),
        Err(_) => false,
    }
}

/// Logs a security event: `event` (a stable snake_case name), the pod's VM, `container_id`, `reason`.
pub fn security_event(event: &str, container_id: &str, reason: &str) {
    let vm_id = VM_ID.get().map(String::as_str).unwrap_or("");
    log::warn!(target: "security", event, vm_id, container_id, reason; "{event}: container {container_id}: {reason}");
}

struct ShimLogger(Mutex<File>);

impl log::Log for ShimLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if JSON.load(Ordering::Relaxed) {
            json_line(record, &hull_logging::rfc3339_now())
        } else {
            text_line(record, &hull_logging::rfc3339_now())
        };
        if let Ok(mut file) = self.0.lock() {
            // containerd may be restarting and the FIFO gone for a while: a lost line is not an error.
            let _ = file.write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// containerd-shim's format: `time="..." level=info key="value" msg="..."`.
fn text_line(record: &log::Record, time: &str) -> String {
    struct Pairs(String);
    impl<'kvs> VisitSource<'kvs> for Pairs {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
            self.0.push_str(&format!(" {key}=\"{value}\""));
            Ok(())
        }
    }
    let mut pairs = Pairs(String::new());
    let _ = record.key_values().visit(&mut pairs);
    format!(
        "time=\"{time}\" level={}{} msg=\"{}\"\n",
        record.level().as_str().to_lowercase(),
        pairs.0,
        record.args()
    )
}

/// One JSON object: `time`, `level`, `target`, `msg`, then the record's key-values.
fn json_line(record: &log::Record, time: &str) -> String {
    struct Fields(serde_json::Map<String, serde_json::Value>);
    impl<'kvs> VisitSource<'kvs> for Fields {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
            let v = if let Some(n) = value.to_u64() {
                n.into()
            } else if let Some(n) = value.to_i64() {
                n.into()
            } else if let Some(b) = value.to_bool() {
                b.into()
            } else {
                value.to_string().into()
            };
            self.0.insert(key.to_string(), v);
            Ok(())
        }
    }
    let mut fields = Fields(serde_json::Map::new());
    fields.0.insert("time".into(), time.into());
    fields
        .0
        .insert("level".into(), record.level().as_str().to_lowercase().into());
    fields.0.insert("target".into(), record.target().into());
    fields.0.insert("msg".into(), record.args().to_string().into());
    let _ = record.key_values().visit(&mut fields);
    format!("{}\n", serde_json::Value::Object(fields.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_line(json: bool) -> String {
        let kvs: [(&str, log::kv::Value); 5] = [
            ("event", "agent_permission_denied".into()),
            ("vm_id", "pod-1".into()),
            ("container_id", "c\"1".into()),
            ("reason", "the agent refused ExecProcess".into()),
            ("attempts", 3u64.into()),
        ];
        let args = format_args!("refused \"{}\"", "ExecProcess");
        let record = log::Record::builder()
            .args(args)
            .level(log::Level::Warn)
            .target("security")
            .key_values(&kvs)
            .build();
        if json {
            json_line(&record, "2026-12-03T08:00:00.000000Z")
        } else {
            text_line(&record, "2026-12-03T08:00:00.000000Z")
        }
    }

    #[test]
    fn a_json_line_is_one_object_with_the_security_fields_at_the_top() {
        let line = record_line(true);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1, "{line:?}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2026-12-03T08:00:00.000000Z");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "security");
        assert_eq!(v["msg"], "refused \"ExecProcess\"");
        assert_eq!(v["event"], "agent_permission_denied");
        assert_eq!(v["vm_id"], "pod-1");
        assert_eq!(v["container_id"], "c\"1");
        assert_eq!(v["reason"], "the agent refused ExecProcess");
        assert_eq!(v["attempts"], 3);
    }

    #[test]
    fn the_text_line_keeps_containerd_shims_format() {
        assert_eq!(
            record_line(false),
            "time=\"2026-12-03T08:00:00.000000Z\" level=warn event=\"agent_permission_denied\" vm_id=\"pod-1\" \
             container_id=\"c\"1\" reason=\"the agent refused ExecProcess\" attempts=\"3\" msg=\"refused \"ExecProcess\"\"\n"
        );
    }

    #[test]
    fn log_format_parses_from_the_config() {
        #[derive(Deserialize)]
        struct C {
            log_format: LogFormat,
        }
        let c: C = toml::from_str("log_format = \"json\"").unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(toml::from_str::<C>("log_format = \"xml\"").is_err());
    }
}
