//! The microVM mode's command line: Firecracker's flags (`--api-sock`, `--config-file`, `--no-api`, ...) and
//! hull's own for that mode. It owns the shape of the arguments only: values are checked here as far as their
//! text goes (instance ID, log level); whether a file exists or parses is decided by whoever opens it. Both
//! binaries parse it: `hull-vmm` alone, `hull` next to its subcommands (`hull/src/cli.rs`).

use std::path::PathBuf;

use clap::{Args, Parser};

use crate::logging::LogLevel;

/// Firecracker's default instance ID.
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";
/// Longest instance ID accepted (Firecracker's limit).
const MAX_INSTANCE_ID_LEN: usize = 64;

/// The microVM mode's command line alone, without the subcommands. A VMM starts with this: clap builds every
/// flag of every subcommand before it parses anything (`hull run` alone has 32), about 120 KiB of heap and
/// 40 KiB of stack that would be spent before the API socket is bound, in every microVM process.
#[derive(Debug, Parser)]
#[command(
    name = "hull",
    version,
    about = "hull: a secure container runtime; one KVM microVM per process, Firecracker-compatible API",
    // The whole parser's usage, for its error messages (help always goes to the whole parser).
    override_usage = "hull [OPTIONS]\n       hull <COMMAND>"
)]
pub struct VmmCli {
    #[command(flatten)]
    pub vmm: VmmArgs,
}

/// The Firecracker-compatible mode: serve the REST API on a unix socket and/or boot from a JSON file.
#[derive(Debug, Args)]
pub struct VmmArgs {
    /// Path of the unix socket the REST API listens on (mode 0600). A stale socket at that path is replaced;
    /// a socket another process serves is refused.
    /// Without --api-sock and --no-api, hull listens on [`DEFAULT_API_SOCK`] (Firecracker: /run/firecracker.socket).
    #[arg(long, value_name = "PATH", conflicts_with = "no_api")]
    pub api_sock: Option<PathBuf>,

    /// Boot from this JSON file (Firecracker's shape: boot-source, machine-config, drives, ...).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Do not serve the API: boot from --config-file and wait for the guest to end.
    #[arg(long, requires = "config_file")]
    pub no_api: bool,

    /// Log the guest's boot time when it writes to the boot-timer MMIO address.
    #[arg(long)]
    pub boot_timer: bool,

    /// Instance ID reported by `GET /` (letters, digits and '-', at most 64 characters).
    #[arg(long, value_name = "ID", default_value = DEFAULT_INSTANCE_ID, value_parser = parse_instance_id)]
    pub id: String,

    /// Append the guest's serial console to FILE instead of writing it to standard output.
    #[arg(long, value_name = "FILE")]
    pub serial_out: Option<PathBuf>,

    /// Log level: Error, Warning, Info, Debug, Trace or Off (any case). `--level` is Firecracker's name.
    #[arg(long, visible_alias = "level", value_name = "LEVEL", default_value = "Info", value_parser = LogLevel::parse)]
    pub log_level: LogLevel,

    #[command(flatten)]
    pub firecracker: FirecrackerArgs,

    #[command(flatten)]
    pub seccomp: crate::seccomp::SeccompArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// What bounds the guest's console file and how hull's own log is written.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Keep the --serial-out file under BYTES: past that its content moves to FILE.1 (replacing it) and FILE
    /// starts empty, so a guest cannot fill the disk through its console. 0: no cap.
    #[arg(long, value_name = "BYTES", default_value_t = hull_logging::rotating::DEFAULT_MAX_BYTES)]
    pub serial_out_max_bytes: u64,

    /// Format of the log on standard error: text, or json (one JSON object per line, for a SIEM).
    #[arg(long, value_name = "FORMAT", value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
}

/// Firecracker's other flags (its `src/firecracker/src/main.rs`), so that its clients can start hull.
#[derive(Debug, Args)]
pub struct FirecrackerArgs {
    /// Write hull's log to this file or named pipe in Firecracker's format instead of standard error
    /// (opened append-only and non-blocking, created 0600, never through a symlink).
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,

    /// Log only events from this module (a prefix of the event's target, e.g. `api_server`).
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,

    /// Show the level of each line in the --log-path log.
    #[arg(long)]
    pub show_level: bool,

    /// Show the file and line each --log-path log line comes from.
    #[arg(long)]
    pub show_log_origin: bool,

    /// Firecracker's metrics file (created 0600): one JSON line per `FlushMetrics`.
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,

    /// Largest API request body in bytes (Firecracker's default: 51200).
    #[arg(long, value_name = "BYTES", default_value_t = 51_200)]
    pub http_api_max_payload_size: usize,

    /// Largest MMDS data store in bytes (default: --http-api-max-payload-size); a PUT or PATCH /mmds that
    /// would exceed it is refused with 413.
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<usize>,

    /// JSON file for the MMDS data store's initial content (within the MMDS size limit).
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,

    /// When the process that started hull began, CLOCK_MONOTONIC microseconds (Firecracker's start-up metrics).
    #[arg(long, value_name = "MICROSECONDS")]
    pub start_time_us: Option<u64>,

    /// Process CPU time at that start, in microseconds.
    #[arg(long, value_name = "MICROSECONDS")]
    pub start_time_cpu_us: Option<u64>,

    /// CPU time the parent (the jailer) used, in microseconds.
    #[arg(long, value_name = "MICROSECONDS")]
    pub parent_cpu_time_us: Option<u64>,

    /// Print the snapshot format version hull writes (`v1.0.0`) and exit.
    #[arg(long)]
    pub snapshot_version: bool,

    /// Print the format version of a snapshot state file and exit (exit 1 if it is not one).
    #[arg(long, value_name = "FILE")]
    pub describe_snapshot: Option<PathBuf>,

    /// Ask for virtio-pci devices. hull has only virtio-mmio: accepted with a warning, devices stay on
    /// virtio-mmio (the guest finds them through the kernel command line hull writes).
    #[arg(long)]
    pub enable_pci: bool,
}

/// Where the API listens when neither --api-sock nor --no-api is given (Firecracker's is
/// `/run/firecracker.socket`).
pub const DEFAULT_API_SOCK: &str = "/run/hull.socket";

/// Firecracker's default MMDS size limit: the API payload limit.
impl FirecrackerArgs {
    pub fn mmds_limit(&self) -> usize {
        self.mmds_size_limit.unwrap_or(self.http_api_max_payload_size)
    }
}

fn parse_instance_id(id: &str) -> Result<String, String> {
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN {
        return Err(format!("it must be 1 to {MAX_INSTANCE_ID_LEN} characters long"));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err("only letters, digits and '-' are allowed".into());
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(args: &[&str]) -> Result<VmmCli, clap::Error> {
        VmmCli::try_parse_from(std::iter::once("hull").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        VmmCli::command().debug_assert();
    }

    #[test]
    fn api_socket_alone_is_enough() {
        let cli = parse(&["--api-sock", "/tmp/x.sock"]).unwrap();
        assert_eq!(cli.vmm.api_sock, Some(PathBuf::from("/tmp/x.sock")));
        assert_eq!(cli.vmm.id, DEFAULT_INSTANCE_ID);
        assert_eq!(cli.vmm.log_level, LogLevel::Info);
        assert!(!cli.vmm.no_api && !cli.vmm.boot_timer);
    }

    #[test]
    fn without_an_api_socket_the_default_one_is_used_later() {
        assert_eq!(parse(&[]).unwrap().vmm.api_sock, None);
        assert!(parse(&["--config-file", "vm.json"]).is_ok());
    }

    #[test]
    fn firecracker_flags_parse() {
        let cli = parse(&[
            "--log-path",
            "/tmp/l",
            "--level",
            "debug",
            "--module",
            "vmm",
            "--show-level",
            "--show-log-origin",
            "--metrics-path",
            "/tmp/m",
            "--http-api-max-payload-size",
            "1000",
            "--mmds-size-limit",
            "2000",
            "--metadata",
            "/tmp/md.json",
            "--start-time-us",
            "1",
            "--start-time-cpu-us",
            "2",
            "--parent-cpu-time-us",
            "3",
            "--enable-pci",
        ])
        .unwrap();
        let fc = &cli.vmm.firecracker;
        assert_eq!(cli.vmm.log_level, LogLevel::Debug);
        assert!(fc.show_level && fc.show_log_origin && fc.enable_pci);
        assert_eq!((fc.http_api_max_payload_size, fc.mmds_limit()), (1000, 2000));
        assert_eq!(
            (fc.start_time_us, fc.start_time_cpu_us, fc.parent_cpu_time_us),
            (Some(1), Some(2), Some(3))
        );
        assert!(parse(&["--snapshot-version"]).unwrap().vmm.firecracker.snapshot_version);
    }

    #[test]
    fn no_api_needs_a_config_file_and_excludes_the_socket() {
        assert!(parse(&["--no-api"]).is_err());
        assert!(parse(&["--no-api", "--config-file", "vm.json", "--api-sock", "/tmp/s"]).is_err());
        let cli = parse(&["--no-api", "--config-file", "vm.json", "--boot-timer"]).unwrap();
        assert!(cli.vmm.no_api && cli.vmm.boot_timer);
        assert_eq!(cli.vmm.config_file, Some(PathBuf::from("vm.json")));
    }

    #[test]
    fn all_flags_parse() {
        let cli = parse(&[
            "--api-sock",
            "/tmp/s",
            "--config-file",
            "vm.json",
            "--id",
            "vm-1",
            "--serial-out",
            "/tmp/serial",
            "--log-level",
            "warning",
        ])
        .unwrap();
        assert_eq!(cli.vmm.id, "vm-1");
        assert_eq!(cli.vmm.serial_out, Some(PathBuf::from("/tmp/serial")));
        assert_eq!(cli.vmm.log_level, LogLevel::Warning);
    }

    #[test]
    fn seccomp_flags_parse_and_exclude_each_other() {
        let cli = parse(&["--api-sock", "/s"]).unwrap();
        assert!(!cli.vmm.seccomp.no_seccomp && cli.vmm.seccomp.seccomp_filter.is_none());
        assert!(
            parse(&["--api-sock", "/s", "--no-seccomp"])
                .unwrap()
                .vmm
                .seccomp
                .no_seccomp
        );
        let cli = parse(&["--api-sock", "/s", "--seccomp-filter", "f.json"]).unwrap();
        assert_eq!(cli.vmm.seccomp.seccomp_filter, Some(PathBuf::from("f.json")));
        assert!(parse(&["--api-sock", "/s", "--no-seccomp", "--seccomp-filter", "f.json"]).is_err());
    }

    #[test]
    fn output_flags_parse() {
        let cli = parse(&["--api-sock", "/s"]).unwrap();
        assert_eq!(cli.vmm.output.serial_out_max_bytes, 1 << 20);
        assert_eq!(cli.vmm.output.log_format, crate::logging::LogFormat::Text);
        let cli = parse(&[
            "--api-sock",
            "/s",
            "--serial-out-max-bytes",
            "4096",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.vmm.output.serial_out_max_bytes, 4096);
        assert_eq!(cli.vmm.output.log_format, crate::logging::LogFormat::Json);
        assert!(parse(&["--api-sock", "/s", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn bad_ids_and_levels_are_refused() {
        assert!(parse(&["--api-sock", "/s", "--id", "a/b"]).is_err());
        assert!(parse(&["--api-sock", "/s", "--id", ""]).is_err());
        assert!(parse(&["--api-sock", "/s", "--id", &"a".repeat(65)]).is_err());
        assert!(parse(&["--api-sock", "/s", "--log-level", "loud"]).is_err());
    }
}
