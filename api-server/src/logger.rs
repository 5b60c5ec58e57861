//! The `logger` and `metrics` sections Firecracker clients send (API or config file), and Firecracker's log
//! level names, which the `hull` command line uses too. The sections are user input: their shapes are
//! checked, they are kept for `GET /vm/config`, and otherwise not acted on yet (hull logs to standard error).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Firecracker's `logger` section (`PUT /logger`). hull logs to standard error whatever it says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

impl LoggerConfig {
    /// Checks what can be checked of the section: the level name.
    pub fn validate(&self) -> Result<(), String> {
        match &self.level {
            Some(level) => LogLevel::parse(level).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// Where the log goes once configured (`--log-path` or `PUT /logger`) and how its lines look. Set once per
/// process: Firecracker's logger cannot be reconfigured either.
#[derive(Debug)]
pub struct LogSink {
    pub file: std::fs::File,
    pub level: LogLevel,
    pub show_level: bool,
    pub show_log_origin: bool,
    pub module: Option<String>,
}

static SINK: std::sync::OnceLock<LogSink> = std::sync::OnceLock::new();

/// The configured log sink, if any.
pub fn sink() -> Option<&'static LogSink> {
    SINK.get()
}

/// Installs the log sink; `Err` when one is installed already.
pub fn install(sink: LogSink) -> Result<(), LogSink> {
    SINK.set(sink)
}

/// Opens a log or metrics path as Firecracker does (append-only, and non-blocking so a named pipe nobody
/// reads cannot stop hull), created 0600 if absent, never through a symlink. Callers open it only before
/// the microVM starts, as Firecracker configures its logger and metrics pre-boot only.
pub fn open_sink(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Firecracker's `metrics` section (`PUT /metrics`). hull has no metrics sink yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub metrics_path: PathBuf,
}

/// Firecracker's log levels (`--level` / the `logger` section), case-insensitive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Off,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn parse(text: &str) -> Result<LogLevel, String> {
        match text.to_ascii_lowercase().as_str() {
            "off" => Ok(LogLevel::Off),
            "error" => Ok(LogLevel::Error),
            "warning" | "warn" => Ok(LogLevel::Warning),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err(format!(
                "unknown log level {text:?}: use Error, Warning, Info, Debug, Trace or Off"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_level_names_parse_in_any_case() {
        assert_eq!(LogLevel::parse("Warning"), Ok(LogLevel::Warning));
        assert_eq!(LogLevel::parse("WARN"), Ok(LogLevel::Warning));
        assert_eq!(LogLevel::parse("off"), Ok(LogLevel::Off));
        assert_eq!(LogLevel::parse("Trace"), Ok(LogLevel::Trace));
        assert!(LogLevel::parse("verbose").is_err());
    }
}
