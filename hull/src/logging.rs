//! Logging set-up for every `hull` command: `tracing` events go to standard error, because standard output
//! carries the guest's serial console (or the container's output under `hull run`). The level comes from
//! `--log-level` (Firecracker's names, [`LogLevel`]) or, when set, `RUST_LOG`.
//!
//! `--log-format json` writes one JSON object per line (`timestamp`, `level`, `target`, `message` and every
//! field of the event at the top level), so a SIEM can ingest security events (target `security`, see
//! `hull_logging::security`) without parsing text. The formatter is ours, on `serde_json`: it needs no
//! further `tracing-subscriber` feature.

use std::fmt;
use std::io::IsTerminal;

pub use api_server::logger::LogLevel;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// tracing's human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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

/// Installs the global subscriber, text format. `RUST_LOG`, when set, overrides `level` (and allows
/// per-crate filters).
pub fn init(level: LogLevel) {
    init_with_format(level, LogFormat::Text)
}

/// [`init`] in `format`.
pub fn init_with_format(level: LogLevel, format: LogFormat) {
    init_with_sink(level, format, String::new())
}

/// [`init_with_format`], plus the Firecracker-format sink a `PUT /logger` may configure later.
pub fn init_with_sink(level: LogLevel, format: LogFormat, instance_id: String) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let api_sink = ApiSink { instance_id };
    let env = std::env::var("RUST_LOG").ok().filter(|spec| !spec.is_empty());
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(format == LogFormat::Text && std::io::stderr().is_terminal())
        .with_target(false);
    let lines: Box<dyn Layer<EventsOnly> + Send + Sync> = match format {
        LogFormat::Text => Box::new(lines),
        LogFormat::Json => Box::new(lines.event_format(JsonLines)),
    };
    let filter: Box<dyn Layer<_> + Send + Sync> = match env.map(|spec| rust_log_filter(&spec)) {
        Some(Ok(targets)) => Box::new(targets),
        Some(Err(err)) => {
            eprintln!(
                "hull: RUST_LOG is not a list of `target=level` or `level` directives ({err}); using --log-level"
            );
            Box::new(filter(level))
        }
        None => Box::new(filter(level)),
    };
    // Only fails if a subscriber is already installed, which leaves logging working.
    let _ = EventsOnly.with(lines).with(filter).with(api_sink).try_init();
}

/// `RUST_LOG` as `level` and `target=level` directives, comma-separated (`info,vmm=debug`). This is
/// tracing-subscriber's `Targets`, not its `EnvFilter`: hull opens no spans, so span and field filters would
/// select nothing, and `EnvFilter`'s regular-expression engine was a quarter of a megabyte of code and
/// relocated data in every VMM process.
fn rust_log_filter(spec: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    spec.parse::<tracing_subscriber::filter::Targets>()
        .map_err(|e| e.to_string())
}

/// The subscriber under hull's log layers, in place of tracing-subscriber's `Registry`: hull logs events and
/// records no spans (none of its crates opens one), and the registry's span slab alone is 32 KiB of heap
/// written at start-up, private dirty memory in every VMM process. Span callsites are turned off here, so
/// the layers above never see a span.
pub struct EventsOnly;

impl Subscriber for EventsOnly {
    fn register_callsite(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if meta.is_span() {
            tracing::subscriber::Interest::never()
        } else {
            tracing::subscriber::Interest::always()
        }
    }
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        // Events, and `tracing::enabled!` hints (hull_logging's rate-limited macros ask before counting).
        !meta.is_span()
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// The formatting layers look spans up (an event's scope); there are none.
impl<'a> LookupSpan<'a> for EventsOnly {
    type Data = NoSpan;
    fn span_data(&'a self, _: &tracing::span::Id) -> Option<NoSpan> {
        None
    }
}

/// A span's data that never exists.
pub enum NoSpan {}

impl<'a> tracing_subscriber::registry::SpanData<'a> for NoSpan {
    fn id(&self) -> tracing::span::Id {
        match *self {}
    }
    fn metadata(&self) -> &'static tracing::Metadata<'static> {
        match *self {}
    }
    fn parent(&self) -> Option<&tracing::span::Id> {
        match *self {}
    }
    fn extensions(&self) -> tracing_subscriber::registry::Extensions<'_> {
        match *self {}
    }
    fn extensions_mut(&self) -> tracing_subscriber::registry::ExtensionsMut<'_> {
        match *self {}
    }
}

/// One JSON object per event: `timestamp` (RFC 3339, UTC), `level`, `target`, then the event's fields
/// (`message` for the message).
/// What `--log-path`, `--show-level`, `--show-log-origin` and `--module` ask for.
pub struct FileLog {
    pub path: std::path::PathBuf,
    pub show_level: bool,
    pub show_log_origin: bool,
    pub module: Option<String>,
    pub instance_id: String,
}

pub use api_server::logger::open_sink;

/// Sends hull's log to `log.path` in Firecracker's line format:
/// `TIMESTAMP [ID:THREAD(:LEVEL)(:FILE:LINE)] MESSAGE`. Must run before any seccomp filter (it opens a file).
pub fn init_file(level: LogLevel, log: FileLog) -> std::io::Result<()> {
    // Lives as long as the process, like the subscriber that writes to it.
    let file: &'static std::fs::File = Box::leak(Box::new(open_sink(&log.path)?));
    // Marks the logger as configured, so that a later `PUT /logger` is refused as Firecracker refuses it.
    let _ = api_server::logger::install(api_server::logger::LogSink {
        file: file.try_clone()?,
        level,
        show_level: log.show_level,
        show_log_origin: log.show_log_origin,
        module: log.module.clone(),
    });
    SINK_IS_CLI.store(true, std::sync::atomic::Ordering::Relaxed);
    let module = log.module.clone();
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(move || file)
        .with_ansi(false)
        .event_format(FirecrackerLines(log));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let by_module = tracing_subscriber::filter::filter_fn(move |meta| match &module {
        Some(m) => meta.target().starts_with(m.as_str()),
        None => true,
    });
    let _ = EventsOnly.with(lines).with(filter(level)).with(by_module).try_init();
    Ok(())
}

/// Set when `--log-path` owns the sink (its own subscriber writes there; [`ApiSink`] must not write twice).
static SINK_IS_CLI: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes each event to the sink `PUT /logger` configured, in Firecracker's line format; nothing until then.
struct ApiSink {
    instance_id: String,
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for ApiSink {
    fn on_event(&self, event: &Event<'_>, _ctx: tracing_subscriber::layer::Context<'_, S>) {
        let Some(sink) = api_server::logger::sink() else { return };
        if SINK_IS_CLI.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let meta = event.metadata();
        if *meta.level() > filter(sink.level) {
            return;
        }
        if let Some(module) = &sink.module {
            if !meta.target().starts_with(module.as_str()) {
                return;
            }
        }
        let mut text = Text(String::new());
        event.record(&mut text);
        let log = FileLog {
            path: Default::default(),
            show_level: sink.show_level,
            show_log_origin: sink.show_log_origin,
            module: None,
            instance_id: self.instance_id.clone(),
        };
        let line = format!("{}{}\n", prefix(&log, meta), text.0.trim_start());
        use std::io::Write;
        let _ = (&sink.file).write_all(line.as_bytes());
    }
}

/// An event's message and fields as `message key=value ...`.
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0.insert_str(0, &format!("{value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

/// `TIMESTAMP [ID:THREAD(:LEVEL)(:FILE:LINE)] `
fn prefix(log: &FileLog, meta: &tracing::Metadata<'_>) -> String {
    let thread = std::thread::current();
    let mut out = format!(
        "{} [{}:{}",
        hull_logging::rfc3339_now().trim_end_matches('Z'),
        log.instance_id,
        thread.name().unwrap_or("?")
    );
    if log.show_level {
        let level = match *meta.level() {
            tracing::Level::ERROR => "ERROR",
            tracing::Level::WARN => "WARN",
            tracing::Level::INFO => "INFO",
            tracing::Level::DEBUG => "DEBUG",
            tracing::Level::TRACE => "TRACE",
        };
        out.push(':');
        out.push_str(level);
    }
    if log.show_log_origin {
        out.push_str(&format!(":{}:{}", meta.file().unwrap_or("?"), meta.line().unwrap_or(0)));
    }
    out.push_str("] ");
    out
}

/// Firecracker's log line (its `src/vmm/src/logger/logging.rs`).
struct FirecrackerLines(FileLog);

impl<S, N> FormatEvent<S, N> for FirecrackerLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        write!(writer, "{}", prefix(&self.0, event.metadata()))?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        writeln!(writer, "{}", json_line(event))
    }
}

fn json_line(event: &Event<'_>) -> serde_json::Value {
    let meta = event.metadata();
    let mut fields = JsonFields(serde_json::Map::new());
    fields.0.insert("timestamp".into(), hull_logging::rfc3339_now().into());
    fields.0.insert("level".into(), meta.level().as_str().into());
    fields.0.insert("target".into(), meta.target().into());
    event.record(&mut fields);
    serde_json::Value::Object(fields.0)
}

/// Collects an event's fields as JSON values: numbers and booleans as such, everything else as strings.
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl JsonFields {
    fn put(&mut self, field: &Field, value: serde_json::Value) {
        self.0.insert(field.name().to_string(), value);
    }
}

impl Visit for JsonFields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rust_log_takes_levels_and_per_target_levels_and_refuses_nonsense() {
        use tracing::Level;
        let targets = rust_log_filter("warn,vmm=debug,devices::virtio=trace").unwrap();
        assert!(targets.would_enable("vmm::builder", &Level::DEBUG));
        assert!(!targets.would_enable("vmm::builder", &Level::TRACE));
        assert!(targets.would_enable("devices::virtio::block", &Level::TRACE));
        assert!(targets.would_enable("api_server", &Level::WARN));
        assert!(!targets.would_enable("api_server", &Level::INFO));
        assert!(rust_log_filter("vmm=loud").is_err());
    }

    #[test]
    fn json_lines_carry_every_field_at_the_top_level() {
        let out = Capture::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            hull_logging::security::set_identity("vm-7", "ctr-1");
            hull_logging::security_event!(
                tracing::Level::WARN,
                event = "agent_permission_denied",
                reason = "policy",
                call = "ExecProcess",
                n = 3u64,
                "refused \"quoted\""
            );
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["target"], "security");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["event"], "agent_permission_denied");
        assert_eq!(v["vm_id"], "vm-7");
        assert_eq!(v["container_id"], "ctr-1");
        assert_eq!(v["reason"], "policy");
        assert_eq!(v["call"], "ExecProcess");
        assert_eq!(v["n"], 3);
        assert_eq!(v["message"], "refused \"quoted\"");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
