//! The microVM mode's command line: Firecracker's flags (`--api-sock`, `--config-file`, `--no-api`, ...) and
//! hull's own for that mode. It owns the shape of the arguments only: values are checked here as far as their
//! text goes (instance ID, log level); whether a file exists or parses is decided by whoever opens it. Both
//! binaries parse it: `hull` with clap next to its subcommands (`hull/src/cli.rs`), `hull-vmm` with
//! [`parse_lean`], which takes exactly the same flags without clap (a unit test holds the two together).

use std::path::PathBuf;

use clap::{Args, Parser};

use crate::logging::LogLevel;

/// Firecracker's default instance ID.
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";
/// Largest API request body when `--http-api-max-payload-size` is not given (Firecracker's default).
const DEFAULT_API_MAX_PAYLOAD: usize = 51_200;
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
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_API_MAX_PAYLOAD)]
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

/// What `hull-vmm`'s command line asks for.
#[derive(Debug)]
pub enum LeanCommand {
    Run(Box<VmmArgs>),
    Help,
    Version,
}

/// `hull-vmm --help`: every flag of [`VmmArgs`] (a unit test checks them against clap's definition).
pub const LEAN_HELP: &str = "\
hull: a secure container runtime; one KVM microVM per process, Firecracker-compatible API

Usage: hull [OPTIONS]
       hull <COMMAND>      (subcommands: run `hull --help`)

Options:
      --api-sock <PATH>            REST API socket (default /run/hull.socket)
      --config-file <FILE>         boot from this JSON file (Firecracker's shape)
      --no-api                     no API: boot from --config-file, wait for the guest to end
      --boot-timer                 log the guest's boot time (boot-timer MMIO write)
      --id <ID>                    instance ID [default: anonymous-instance]
      --serial-out <FILE>          append the guest's console to FILE instead of standard output
      --log-level <LEVEL>          Error, Warning, Info, Debug, Trace or Off [default: Info] [alias: --level]
      --log-path <PATH>            hull's log to this file or pipe, Firecracker's format
      --module <MODULE>            log only events of this module
      --show-level                 show each --log-path line's level
      --show-log-origin            show each --log-path line's file and line
      --metrics-path <PATH>        Firecracker's metrics file
      --http-api-max-payload-size <BYTES>  largest API request body [default: 51200]
      --mmds-size-limit <BYTES>    largest MMDS data store [default: the payload limit]
      --metadata <FILE>            initial MMDS content (JSON)
      --start-time-us <MICROSECONDS>       start-up metrics: when the starting process began
      --start-time-cpu-us <MICROSECONDS>   its CPU time then
      --parent-cpu-time-us <MICROSECONDS>  the jailer's CPU time
      --snapshot-version           print the snapshot format version and exit
      --describe-snapshot <FILE>   print a snapshot state file's format version and exit
      --enable-pci                 accepted; devices stay on virtio-mmio
      --no-seccomp                 run without seccomp filters (debugging only)
      --seccomp-filter <FILE>      seccompiler JSON filters instead of the built-in ones
      --serial-out-max-bytes <BYTES>  cap of the --serial-out file before it rotates [default: 1048576]
      --log-format <FORMAT>        text or json [default: text]
  -h, --help                       print help
  -V, --version                    print version
";

/// Parses `hull-vmm`'s command line (`args` with the program name first): the flags [`VmmCli`] takes,
/// refused and defaulted the same way, without clap, whose code (~290 KiB) and parse-time stack and heap
/// would otherwise be in every microVM process. Errors read like clap's.
pub fn parse_lean(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<LeanCommand, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_iter(args);
    let mut seen = Vec::new();
    let mut a = VmmArgs {
        api_sock: None,
        config_file: None,
        no_api: false,
        boot_timer: false,
        id: DEFAULT_INSTANCE_ID.to_string(),
        serial_out: None,
        log_level: LogLevel::Info,
        firecracker: FirecrackerArgs {
            log_path: None,
            module: None,
            show_level: false,
            show_log_origin: false,
            metrics_path: None,
            http_api_max_payload_size: DEFAULT_API_MAX_PAYLOAD,
            mmds_size_limit: None,
            metadata: None,
            start_time_us: None,
            start_time_cpu_us: None,
            parent_cpu_time_us: None,
            snapshot_version: false,
            describe_snapshot: None,
            enable_pci: false,
        },
        seccomp: crate::seccomp::SeccompArgs::default(),
        output: OutputArgs {
            serial_out_max_bytes: hull_logging::rotating::DEFAULT_MAX_BYTES,
            log_format: crate::logging::LogFormat::Text,
        },
    };
    let fc = &mut a.firecracker;
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(LeanCommand::Help),
            Short('V') | Long("version") => return Ok(LeanCommand::Version),
            Long("api-sock") => a.api_sock = Some(path(&mut p, &mut seen, "--api-sock <PATH>")?),
            Long("config-file") => a.config_file = Some(path(&mut p, &mut seen, "--config-file <FILE>")?),
            Long("no-api") => a.no_api = switch(&mut seen, "--no-api")?,
            Long("boot-timer") => a.boot_timer = switch(&mut seen, "--boot-timer")?,
            Long("id") => a.id = value(&mut p, &mut seen, "--id <ID>", parse_instance_id)?,
            Long("serial-out") => a.serial_out = Some(path(&mut p, &mut seen, "--serial-out <FILE>")?),
            Long("log-level" | "level") => {
                a.log_level = value(&mut p, &mut seen, "--log-level <LEVEL>", LogLevel::parse)?;
            }
            Long("log-path") => fc.log_path = Some(path(&mut p, &mut seen, "--log-path <PATH>")?),
            Long("module") => fc.module = Some(value(&mut p, &mut seen, "--module <MODULE>", |s| Ok(s.into()))?),
            Long("show-level") => fc.show_level = switch(&mut seen, "--show-level")?,
            Long("show-log-origin") => fc.show_log_origin = switch(&mut seen, "--show-log-origin")?,
            Long("metrics-path") => fc.metrics_path = Some(path(&mut p, &mut seen, "--metrics-path <PATH>")?),
            Long("http-api-max-payload-size") => {
                fc.http_api_max_payload_size = value(&mut p, &mut seen, "--http-api-max-payload-size <BYTES>", number)?;
            }
            Long("mmds-size-limit") => {
                fc.mmds_size_limit = Some(value(&mut p, &mut seen, "--mmds-size-limit <BYTES>", number)?);
            }
            Long("metadata") => fc.metadata = Some(path(&mut p, &mut seen, "--metadata <FILE>")?),
            Long("start-time-us") => {
                fc.start_time_us = Some(value(&mut p, &mut seen, "--start-time-us <MICROSECONDS>", number)?);
            }
            Long("start-time-cpu-us") => {
                fc.start_time_cpu_us = Some(value(&mut p, &mut seen, "--start-time-cpu-us <MICROSECONDS>", number)?);
            }
            Long("parent-cpu-time-us") => {
                fc.parent_cpu_time_us = Some(value(&mut p, &mut seen, "--parent-cpu-time-us <MICROSECONDS>", number)?);
            }
            Long("snapshot-version") => fc.snapshot_version = switch(&mut seen, "--snapshot-version")?,
            Long("describe-snapshot") => {
                fc.describe_snapshot = Some(path(&mut p, &mut seen, "--describe-snapshot <FILE>")?);
            }
            Long("enable-pci") => fc.enable_pci = switch(&mut seen, "--enable-pci")?,
            Long("no-seccomp") => a.seccomp.no_seccomp = switch(&mut seen, "--no-seccomp")?,
            Long("seccomp-filter") => {
                a.seccomp.seccomp_filter = Some(path(&mut p, &mut seen, "--seccomp-filter <FILE>")?);
            }
            Long("serial-out-max-bytes") => {
                a.output.serial_out_max_bytes = value(&mut p, &mut seen, "--serial-out-max-bytes <BYTES>", number)?;
            }
            Long("log-format") => {
                a.output.log_format = value(&mut p, &mut seen, "--log-format <FORMAT>", |s| match s {
                    "text" => Ok(crate::logging::LogFormat::Text),
                    "json" => Ok(crate::logging::LogFormat::Json),
                    _ => Err("[possible values: text, json]".to_string()),
                })?;
            }
            Long(other) => return Err(format!("unexpected argument '--{other}' found")),
            Short(c) => return Err(format!("unexpected argument '-{c}' found")),
            Value(v) => return Err(format!("unexpected argument '{}' found", v.to_string_lossy())),
        }
    }
    let conflict = |a: &str, b: &str| Err(format!("the argument '{a}' cannot be used with '{b}'"));
    if a.api_sock.is_some() && a.no_api {
        return conflict("--api-sock <PATH>", "--no-api");
    }
    if a.seccomp.no_seccomp && a.seccomp.seccomp_filter.is_some() {
        return conflict("--no-seccomp", "--seccomp-filter <FILE>");
    }
    if a.no_api && a.config_file.is_none() {
        return Err("the following required arguments were not provided:\n  --config-file <FILE>".into());
    }
    Ok(LeanCommand::Run(Box::new(a)))
}

/// Notes that flag `name` was given; as clap, a flag given twice is refused.
fn once(seen: &mut Vec<&'static str>, name: &'static str) -> Result<(), String> {
    if seen.contains(&name) {
        return Err(format!("the argument '{name}' cannot be used multiple times"));
    }
    seen.push(name);
    Ok(())
}

/// A flag without a value (`--no-api`; `--no-api=x` is refused by the parser).
fn switch(seen: &mut Vec<&'static str>, name: &'static str) -> Result<bool, String> {
    once(seen, name).map(|()| true)
}

/// The value of flag `name`, as `--name VALUE` or `--name=VALUE`. As clap: a separate value that starts
/// with '-' is taken for the next flag, so the value is missing.
fn raw_value(
    p: &mut lexopt::Parser,
    seen: &mut Vec<&'static str>,
    name: &'static str,
) -> Result<std::ffi::OsString, String> {
    once(seen, name)?;
    let missing = || format!("a value is required for '{name}' but none was supplied");
    if let Some(attached) = p.optional_value() {
        return Ok(attached);
    }
    let looks_like_a_flag = |v: &std::ffi::OsString| {
        let b = std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str());
        b.len() > 1 && b[0] == b'-'
    };
    match p.value() {
        Ok(v) if !looks_like_a_flag(&v) => Ok(v),
        _ => Err(missing()),
    }
}

/// A path value (not empty, as clap's path parser).
fn path(p: &mut lexopt::Parser, seen: &mut Vec<&'static str>, name: &'static str) -> Result<PathBuf, String> {
    let v = raw_value(p, seen, name)?;
    if v.is_empty() {
        return Err(format!("a value is required for '{name}' but none was supplied"));
    }
    Ok(PathBuf::from(v))
}

/// A text value checked by `parse`.
fn value<T>(
    p: &mut lexopt::Parser,
    seen: &mut Vec<&'static str>,
    name: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, String> {
    let v = raw_value(p, seen, name)?;
    let Some(text) = v.to_str() else {
        return Err(format!("invalid UTF-8 was detected in the value of '{name}'"));
    };
    parse(text).map_err(|e| format!("invalid value '{text}' for '{name}': {e}"))
}

fn number<T: std::str::FromStr<Err = std::num::ParseIntError>>(text: &str) -> Result<T, String> {
    text.parse().map_err(|e: std::num::ParseIntError| e.to_string())
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

    /// What a command line comes to: the parsed flags (Debug), help, version, or an error.
    fn by_clap(args: &[&str]) -> Result<String, String> {
        match parse(args) {
            Ok(cli) => Ok(format!("{:?}", cli.vmm)),
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => Ok("help".into()),
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayVersion => Ok("version".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn by_lean(args: &[&str]) -> Result<String, String> {
        let argv = std::iter::once("hull")
            .chain(args.iter().copied())
            .map(std::ffi::OsString::from);
        match parse_lean(argv)? {
            LeanCommand::Run(args) => Ok(format!("{args:?}")),
            LeanCommand::Help => Ok("help".into()),
            LeanCommand::Version => Ok("version".into()),
        }
    }

    /// hull-vmm's parser and clap's definition (what `hull` parses) agree on every flag, value form,
    /// default and refusal.
    #[test]
    fn the_lean_parser_takes_exactly_what_clap_takes() {
        let cases: &[&[&str]] = &[
            &[],
            &["--api-sock", "/tmp/s"],
            &["--api-sock=/tmp/s", "--id=vm-1"],
            &["--config-file", "vm.json", "--no-api", "--boot-timer"],
            &["--no-api"],
            &["--no-api", "--config-file", "c", "--api-sock", "/s"],
            &["--api-sock", "/s", "--api-sock", "/t"],
            &["--no-api", "--no-api", "--config-file", "c"],
            &["--api-sock"],
            &["--api-sock", ""],
            &["--api-sock", "--no-api"],
            &["--id", "-x"],
            &["--id=-x"],
            &["--id", "a/b"],
            &["--id", ""],
            &["--id", "abc-DEF-123"],
            &["--serial-out", "/tmp/o", "--serial-out-max-bytes", "4096"],
            &["--serial-out-max-bytes", "-1"],
            &["--serial-out-max-bytes", "x"],
            &["--log-level", "debug"],
            &["--level", "Trace"],
            &["--level=warn"],
            &["--log-level", "loud"],
            &["--log-level", "info", "--level", "info"],
            &[
                "--log-path",
                "l",
                "--module",
                "vmm",
                "--show-level",
                "--show-log-origin",
            ],
            &["--module", ""],
            &[
                "--metrics-path",
                "m",
                "--http-api-max-payload-size",
                "1000",
                "--mmds-size-limit",
                "2000",
            ],
            &["--http-api-max-payload-size", "99999999999999999999999"],
            &[
                "--metadata",
                "md.json",
                "--start-time-us",
                "1",
                "--start-time-cpu-us",
                "2",
                "--parent-cpu-time-us",
                "3",
            ],
            &["--start-time-us", "1.5"],
            &["--snapshot-version"],
            &["--describe-snapshot", "state"],
            &["--enable-pci", "--enable-pci"],
            &["--no-seccomp"],
            &["--seccomp-filter", "f.json"],
            &["--no-seccomp", "--seccomp-filter", "f.json"],
            &["--log-format", "json"],
            &["--log-format", "JSON"],
            &["--log-format", "xml"],
            &["--boot-timer=yes"],
            &["--bogus"],
            &["-x"],
            &["extra"],
            &["--", "extra"],
            &["-h"],
            &["--help"],
            &["-V"],
            &["--version"],
            &["--api-sock", "/s", "--help"],
        ];
        for args in cases {
            let (clap, lean) = (by_clap(args), by_lean(args));
            match (&clap, &lean) {
                (Ok(c), Ok(l)) => assert_eq!(c, l, "{args:?}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{args:?}: clap {clap:?}, lean {lean:?}"),
            }
        }
        // Refusals name the flag, as clap's do (hull/tests/api.rs runs them through the binary).
        let err = by_lean(&["--id", "a/b"]).unwrap_err();
        assert!(err.contains("invalid value") && err.contains("--id"), "{err}");
        assert!(by_lean(&["--no-api"]).unwrap_err().contains("--config-file"));
    }

    /// Every flag clap defines (and its aliases) is in hull-vmm's help.
    #[test]
    fn the_lean_help_names_every_flag() {
        for arg in VmmCli::command().get_arguments() {
            let names = arg
                .get_long()
                .into_iter()
                .chain(arg.get_all_aliases().unwrap_or_default());
            for long in names {
                assert!(LEAN_HELP.contains(&format!("--{long}")), "--{long} is not in LEAN_HELP");
            }
        }
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
