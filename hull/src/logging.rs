//! Logging set-up for every `hull` command: `tracing` events go to standard error, because standard output
//! carries the guest's serial console (or the container's output under `hull run`). The level comes from
//! `--log-level` (Firecracker's names, [`LogLevel`]) or, when set, `RUST_LOG`.

use std::io::IsTerminal;

pub use api_server::logger::LogLevel;
use tracing_subscriber::filter::LevelFilter;

fn filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Off => LevelFilter::OFF,
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level` (and allows per-crate filters).
pub fn init(level: LogLevel) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let installed = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => builder
            .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
            .try_init(),
        _ => builder.with_max_level(filter(level)).try_init(),
    };
    // Only fails if a subscriber is already installed, which leaves logging working.
    let _ = installed;
}
