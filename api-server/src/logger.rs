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
