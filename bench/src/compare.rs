//! The `compare` suite: hull next to other VMMs (QEMU `-M microvm -accel kvm` always; Firecracker and Cloud
//! Hypervisor when their binaries are given), the same guest and the same host-side clocks for each, samples
//! interleaved (one of each VMM per round, the order rotating every round) so that a load change on the shared
//! machine hits every VMM alike.
//!
//! Per sample and VMM, two processes:
//! 1. started with its control socket and no VM: spawn → the control socket answers; configure; start request
//!    → the guest's first serial line read from the VMM's standard output, and the same line timed from the
//!    first configuration request (so work a VMM moves from the start request into configuration, as hull's
//!    pre-build does, shows up there); then, with the guest halted, RSS and
//!    PSS (`/proc/PID/smaps_rollup`) and the thread count; hull's (and Firecracker's) own `Guest-boot-time`;
//! 2. started to boot at once (config file or command line, no control socket): spawn → the guest's line.
//!
//! What "answers" and "start" mean differs per VMM ([`VmmKind::control_ready_meaning`],
//! [`VmmKind::start_meaning`]); the report says so next to the figures. Every process is killed and its
//! directory removed when its sample ends, also on failure (`hull_tests::Hull`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_tests::{Hull, TempDir};

use crate::error::{fail, BenchError, Result};
use crate::report::Section;
use crate::stats::{format_count, format_value, Summary};
use crate::svg;
use crate::vmms::{wait_for_control, Launch, ProcessFootprint, Vmm, VmmKind, GUEST_LINE, GUEST_MIB};

/// A tiny guest prints its line within milliseconds; this is ample on a loaded machine.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// hull's log line with its own boot-time figure arrives with (or just before) the guest's line.
const BOOT_TIMER_WAIT: Duration = Duration::from_secs(2);

/// What `compare` measures, in table and chart order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    ControlReady,
    StartToLine,
    ConfigToLine,
    SpawnToLine,
    Rss,
    Pss,
    Threads,
    BootTimer,
}

impl Metric {
    pub const ALL: [Metric; 8] = [
        Metric::ControlReady,
        Metric::StartToLine,
        Metric::ConfigToLine,
        Metric::SpawnToLine,
        Metric::Rss,
        Metric::Pss,
        Metric::Threads,
        Metric::BootTimer,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Metric::ControlReady => "control_ready",
            Metric::StartToLine => "start_to_guest_line",
            Metric::ConfigToLine => "first_config_to_guest_line",
            Metric::SpawnToLine => "spawn_to_guest_line_no_api",
            Metric::Rss => "rss_halted",
            Metric::Pss => "pss_halted",
            Metric::Threads => "threads_halted",
            Metric::BootTimer => "own_boot_timer",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Metric::ControlReady => "spawn → API/QMP socket answers",
            Metric::StartToLine => "start request → guest's first line (VM build)",
            Metric::ConfigToLine => "first configuration request → guest's first line",
            Metric::SpawnToLine => "spawn → guest's first line, no API",
            Metric::Rss => "RSS, guest halted",
            Metric::Pss => "PSS, guest halted",
            Metric::Threads => "threads, guest halted",
            Metric::BootTimer => "VMM's own Guest-boot-time",
        }
    }

    /// The title of its chart panel (a panel is about 40 characters wide).
    pub fn short_title(self) -> &'static str {
        match self {
            Metric::ControlReady => "spawn → API/QMP answers",
            Metric::StartToLine => "start request → guest line",
            Metric::ConfigToLine => "first config request → guest line",
            Metric::SpawnToLine => "spawn → guest line, no API",
            Metric::Rss => "RSS, guest halted",
            Metric::Pss => "PSS, guest halted",
            Metric::Threads => "threads, guest halted",
            Metric::BootTimer => "VMM's own Guest-boot-time",
        }
    }

    /// A value of this metric as text.
    pub fn format(self, v: f64) -> String {
        match self {
            Metric::Threads => format_count(v),
            _ => format_value(v),
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::ControlReady
            | Metric::StartToLine
            | Metric::ConfigToLine
            | Metric::SpawnToLine
            | Metric::BootTimer => "ms",
            Metric::Rss | Metric::Pss => "MiB",
            Metric::Threads => "threads",
        }
    }
}

pub struct CompareOptions {
    pub runs: usize,
    /// hull first, then the peers.
    pub vmms: Vec<Vmm>,
    pub guest: PathBuf,
    pub svg: Option<PathBuf>,
}

/// All samples: `samples[vmm][metric]`, metrics in [`Metric::ALL`] order.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub vmms: Vec<VmmKind>,
    pub samples: Vec<Vec<Vec<f64>>>,
}

impl Comparison {
    pub fn new(vmms: Vec<VmmKind>) -> Comparison {
        let samples = vec![vec![Vec::new(); Metric::ALL.len()]; vmms.len()];
        Comparison { vmms, samples }
    }

    fn push(&mut self, vmm: usize, metric: Metric, value: f64) {
        self.samples[vmm][metric as usize].push(value);
    }

    pub fn summary(&self, vmm: usize, metric: Metric) -> Option<Summary> {
        Summary::of(&self.samples[vmm][metric as usize])
    }

    /// hull's median over the peer's (hull is the first VMM); below 1 means hull is smaller/faster.
    pub fn ratio(&self, peer: usize, metric: Metric) -> Option<f64> {
        let hull = self.summary(0, metric)?.median;
        let other = self.summary(peer, metric)?.median;
        (other > 0.0).then(|| hull / other)
    }

    /// The table (Markdown, readable as plain text): per metric, each VMM's median with [p10–p90], then the
    /// hull/peer ratio of the medians for each peer.
    pub fn render_table(&self) -> String {
        let mut header = vec!["metric".to_string(), "unit".to_string()];
        header.extend(self.vmms.iter().map(|v| format!("{} median [p10–p90]", v.name())));
        header.extend(self.vmms.iter().skip(1).map(|v| format!("hull/{}", v.name())));
        let mut rows = Vec::new();
        for metric in Metric::ALL {
            let mut row = vec![metric.title().to_string(), metric.unit().to_string()];
            for vmm in 0..self.vmms.len() {
                row.push(match self.summary(vmm, metric) {
                    Some(s) => {
                        format!(
                            "{} [{}–{}]",
                            metric.format(s.median),
                            metric.format(s.p10),
                            metric.format(s.p90)
                        )
                    }
                    None => "n/a".to_string(),
                });
            }
            for peer in 1..self.vmms.len() {
                row.push(
                    self.ratio(peer, metric)
                        .map(|r| format!("{r:.2}"))
                        .unwrap_or_else(|| "n/a".into()),
                );
            }
            rows.push(row);
        }
        markdown_table(&header, &rows)
    }

    /// One chart panel per metric that has figures for at least one VMM.
    pub fn panels(&self) -> Vec<svg::Panel> {
        Metric::ALL
            .iter()
            .filter(|&&m| (0..self.vmms.len()).any(|v| self.summary(v, m).is_some()))
            .map(|&metric| svg::Panel {
                title: metric.short_title().to_string(),
                unit: metric.unit().to_string(),
                whole_numbers: metric == Metric::Threads,
                bars: (0..self.vmms.len())
                    .map(|v| {
                        let s = self.summary(v, metric);
                        svg::Bar {
                            label: self.vmms[v].name().to_string(),
                            median: s.map_or(f64::NAN, |s| s.median),
                            p10: s.map_or(f64::NAN, |s| s.p10),
                            p90: s.map_or(f64::NAN, |s| s.p90),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    pub fn to_json(&self) -> serde_json::Value {
        let metrics: Vec<serde_json::Value> = Metric::ALL
            .iter()
            .map(|&metric| {
                let per_vmm: serde_json::Map<String, serde_json::Value> = self
                    .vmms
                    .iter()
                    .enumerate()
                    .map(|(v, kind)| {
                        let s = self.summary(v, metric);
                        let value = serde_json::json!({
                            "samples": self.samples[v][metric as usize],
                            "n": s.map(|s| s.n),
                            "median": s.map(|s| s.median),
                            "p10": s.map(|s| s.p10),
                            "p90": s.map(|s| s.p90),
                            "min": s.map(|s| s.min),
                            "max": s.map(|s| s.max),
                        });
                        (kind.id().to_string(), value)
                    })
                    .collect();
                let ratios: serde_json::Map<String, serde_json::Value> = (1..self.vmms.len())
                    .map(|p| {
                        (
                            format!("hull/{}", self.vmms[p].id()),
                            serde_json::json!(self.ratio(p, metric)),
                        )
                    })
                    .collect();
                serde_json::json!({
                    "id": metric.id(),
                    "title": metric.title(),
                    "unit": metric.unit(),
                    "vmms": per_vmm,
                    "ratio_of_medians": ratios,
                })
            })
            .collect();
        let meanings: serde_json::Map<String, serde_json::Value> = self
            .vmms
            .iter()
            .map(|k| {
                let m = serde_json::json!({
                    "control_ready": k.control_ready_meaning(),
                    "start_request": k.start_meaning(),
                    "first_config_request": k.first_config_meaning(),
                });
                (k.id().to_string(), m)
            })
            .collect();
        serde_json::json!({ "vmms": self.vmms.iter().map(|k| k.id()).collect::<Vec<_>>(), "metrics": metrics,
                            "meanings": meanings })
    }
}

/// A Markdown table with padded columns: the first column left-aligned, the others right-aligned.
pub fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .chain(std::iter::once(&header[i]))
            .map(|c| c.chars().count())
            .max()
    };
    let widths: Vec<usize> = (0..cols).map(|i| width(i).unwrap_or(1).max(3)).collect();
    let cell = |i: usize, text: &str| {
        let pad = widths[i].saturating_sub(text.chars().count());
        if i == 0 {
            format!("{text}{}", " ".repeat(pad))
        } else {
            format!("{}{text}", " ".repeat(pad))
        }
    };
    let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut out = line((0..cols).map(|i| cell(i, &header[i])).collect());
    out.push_str(&line(
        (0..cols)
            .map(|i| {
                if i == 0 {
                    "-".repeat(widths[i])
                } else {
                    format!("{}:", "-".repeat(widths[i] - 1))
                }
            })
            .collect(),
    ));
    for row in rows {
        out.push_str(&line(
            (0..cols)
                .map(|i| cell(i, row.get(i).map(String::as_str).unwrap_or("")))
                .collect(),
        ));
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One sample of one VMM: both processes, all metrics.
fn sample(vmm: &Vmm, guest: &Path, index: usize, into: &mut Comparison) -> Result<()> {
    let kind = vmm.kind;
    // 1. Control socket, then configure and start.
    let dir = TempDir::new("bench-compare").map_err(fail("creating a temporary directory"))?;
    let args = vmm.args(Launch::Control, dir.path(), guest)?;
    let sock = vmm.socket(dir.path());
    let t_spawn = Instant::now();
    let proc = Hull::spawn_binary_in(&vmm.bin, dir, args);
    let (mut control, ready) = wait_for_control(kind, &proc, &sock, t_spawn)?;
    let t_config = Instant::now();
    control.configure(kind, guest)?;
    let (seen, started, t0) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| proc.wait_for_output(GUEST_LINE, LINE_TIMEOUT).map(|_| Instant::now()));
        let t0 = Instant::now();
        let started = control.start(kind);
        (watcher.join().unwrap_or(None), started, t0)
    });
    started?;
    let seen = seen.ok_or_else(|| {
        BenchError::failed(format!(
            "{}: no `{GUEST_LINE}` within {LINE_TIMEOUT:?} of the start request\n{}",
            kind.name(),
            proc.report()
        ))
    })?;
    let footprint = ProcessFootprint::read(proc.pid())?;
    let own_boot_time = match kind {
        VmmKind::Hull | VmmKind::Firecracker => {
            let line = proc.wait_for_log("Guest-boot-time", BOOT_TIMER_WAIT).or_else(|| {
                // Firecracker's logger may write to standard output.
                proc.stdout()
                    .lines()
                    .find(|l| l.contains("Guest-boot-time"))
                    .map(str::to_string)
            });
            line.as_deref().and_then(crate::boot::parse_boot_time_us)
        }
        _ => None,
    };
    drop(proc);

    // 2. Boot at once, no control socket.
    let dir = TempDir::new("bench-compare").map_err(fail("creating a temporary directory"))?;
    let args = vmm.args(Launch::Direct, dir.path(), guest)?;
    let t_direct = Instant::now();
    let direct = Hull::spawn_binary_in(&vmm.bin, dir, args);
    let direct_seen = direct
        .wait_for_output(GUEST_LINE, LINE_TIMEOUT)
        .map(|_| t_direct.elapsed());
    let direct_took = direct_seen.ok_or_else(|| {
        BenchError::failed(format!(
            "{} (no API): no `{GUEST_LINE}` within {LINE_TIMEOUT:?} of its start\n{}",
            kind.name(),
            direct.report()
        ))
    })?;
    drop(direct);

    into.push(index, Metric::ControlReady, ms(ready));
    into.push(index, Metric::StartToLine, ms(seen.saturating_duration_since(t0)));
    into.push(
        index,
        Metric::ConfigToLine,
        ms(seen.saturating_duration_since(t_config)),
    );
    into.push(index, Metric::SpawnToLine, ms(direct_took));
    into.push(index, Metric::Rss, footprint.rss_kib as f64 / 1024.0);
    into.push(index, Metric::Pss, footprint.pss_kib as f64 / 1024.0);
    into.push(index, Metric::Threads, footprint.threads as f64);
    if let Some(us) = own_boot_time {
        into.push(index, Metric::BootTimer, us as f64 / 1e3);
    }
    Ok(())
}

/// The order of the VMMs in round `round`: rotated by one each round, so none is always first.
pub fn round_order(vmms: usize, round: usize) -> Vec<usize> {
    (0..vmms).map(|i| (i + round) % vmms.max(1)).collect()
}

/// Runs the suite into `section` and returns the comparison (also when a sample failed: what was measured
/// until then).
pub fn run(section: &mut Section, opts: &CompareOptions, out: &mut Option<Comparison>) -> Result<()> {
    let kinds: Vec<VmmKind> = opts.vmms.iter().map(|v| v.kind).collect();
    for vmm in &opts.vmms {
        section.note(format!(
            "{}: {}; control ready = {}; first configuration request = {}; start = {}",
            vmm.name(),
            vmm.bin.display(),
            vmm.kind.control_ready_meaning(),
            vmm.kind.first_config_meaning(),
            vmm.kind.start_meaning()
        ));
    }
    section.note(format!(
        "guest: {} (1 vCPU, {GUEST_MIB} MiB): writes the boot timer, prints `{GUEST_LINE}`, halts; every \
         \"guest's first line\" is the host's clock when that line is read from the VMM's stdout pipe",
        opts.guest.display()
    ));
    section.note(format!(
        "one untimed warm-up sample per VMM, then {} interleaved round(s), the VMM order rotating each round",
        opts.runs
    ));
    // Warm-up: page cache, first-use costs; its figures are thrown away.
    let mut warm = Comparison::new(kinds.clone());
    for (i, vmm) in opts.vmms.iter().enumerate() {
        sample(vmm, &opts.guest, i, &mut warm)?;
    }
    let comparison = out.insert(Comparison::new(kinds));
    for round in 0..opts.runs {
        for i in round_order(opts.vmms.len(), round) {
            sample(&opts.vmms[i], &opts.guest, i, comparison)?;
        }
    }
    Ok(())
}

/// The chart's subtitle: conditions the figures were taken under.
pub fn chart_subtitle(runs: usize, section: &Section) -> String {
    let load = |l: &Option<crate::machine::Load>| l.as_ref().map(|l| format!("{:.2}", l.one)).unwrap_or("?".into());
    format!(
        "tiny PVH guest, 1 vCPU, {GUEST_MIB} MiB; {runs} interleaved samples per VMM; 2-core machine shared with \
         other builds (load {} at start, {} at end); software KVM (kvm_pvm)",
        load(&section.load_start),
        load(&section.load_end)
    )
}

/// Writes the chart to `path`.
pub fn write_svg(path: &Path, comparison: &Comparison, subtitle: &str) -> Result<()> {
    let names: Vec<&str> = comparison.vmms.iter().map(|k| k.name()).collect();
    let doc = svg::render(
        &format!("{}: start-up and footprint", names.join(" vs ")),
        subtitle,
        &comparison.panels(),
    );
    std::fs::write(path, doc).map_err(fail(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled() -> Comparison {
        let mut c = Comparison::new(vec![VmmKind::Hull, VmmKind::Qemu]);
        for i in 1..=10 {
            let x = i as f64;
            c.push(0, Metric::ControlReady, 4.0 + x / 10.0);
            c.push(1, Metric::ControlReady, 40.0 + x);
            c.push(0, Metric::Rss, 4.0);
            c.push(1, Metric::Rss, 32.0);
            c.push(0, Metric::BootTimer, 8.0);
        }
        c
    }

    #[test]
    fn ratios_are_of_the_medians_and_missing_metrics_are_na() {
        let c = filled();
        assert_eq!(c.summary(0, Metric::ControlReady).unwrap().median, 4.55);
        assert_eq!(c.summary(1, Metric::ControlReady).unwrap().median, 45.5);
        assert!((c.ratio(1, Metric::ControlReady).unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(c.ratio(1, Metric::Rss), Some(0.125));
        assert_eq!(c.ratio(1, Metric::BootTimer), None, "QEMU has no boot timer");
        assert_eq!(c.ratio(1, Metric::Pss), None);
    }

    #[test]
    fn the_table_has_a_row_per_metric_with_spreads_and_ratios() {
        let table = filled().render_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2 + Metric::ALL.len());
        assert!(lines[0].contains("hull median [p10–p90]") && lines[0].contains("hull/QEMU"));
        assert!(lines[1].starts_with("| ---") && lines[1].ends_with(": |"), "{table}");
        let ready = lines.iter().find(|l| l.contains(Metric::ControlReady.title())).unwrap();
        assert!(ready.contains("4.55 [4.10–4.90]"), "{ready}");
        assert!(
            ready.contains("45.50 [41.00–49.00]") && ready.trim_end().ends_with("0.10 |"),
            "{ready}"
        );
        let timer = lines.iter().find(|l| l.contains(Metric::BootTimer.title())).unwrap();
        assert!(timer.contains("n/a"));
        // Every line has the same width: the columns are padded.
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|&w| w == widths[0]), "{table}");
    }

    #[test]
    fn panels_and_json_cover_the_measured_metrics() {
        let c = filled();
        let panels = c.panels();
        assert_eq!(panels.len(), 3, "control ready, RSS, boot timer");
        assert!(panels[2].bars[1].median.is_nan());
        let doc = svg::render("t", "s", &panels);
        assert_eq!(svg::check_well_formed(&doc), Ok(3));
        let json = c.to_json();
        assert_eq!(
            json["metrics"][0]["vmms"]["hull"]["samples"].as_array().unwrap().len(),
            10
        );
        assert_eq!(json["metrics"][0]["vmms"]["qemu"]["p90"], 49.0);
        assert_eq!(json["metrics"][Metric::Rss as usize]["id"], "rss_halted");
        assert_eq!(
            json["metrics"][Metric::Rss as usize]["ratio_of_medians"]["hull/qemu"],
            0.125
        );
        assert!(json["meanings"]["hull"]["first_config_request"]
            .as_str()
            .unwrap()
            .contains("/boot-source"));
        assert!(json["meanings"]["qemu"]["start_request"]
            .as_str()
            .unwrap()
            .contains("x-exit-preconfig"));
    }

    #[test]
    fn the_first_configuration_row_follows_the_start_row() {
        let mut c = Comparison::new(vec![VmmKind::Hull]);
        c.push(0, Metric::StartToLine, 2.5);
        c.push(0, Metric::ConfigToLine, 10.5);
        let table = c.render_table();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert!(
            rows[1].contains(Metric::StartToLine.title()) && rows[1].contains("2.50"),
            "{table}"
        );
        assert!(
            rows[2].contains("first configuration request") && rows[2].contains("10.50"),
            "{table}"
        );
    }

    #[test]
    fn rounds_rotate_the_order() {
        assert_eq!(round_order(2, 0), vec![0, 1]);
        assert_eq!(round_order(2, 1), vec![1, 0]);
        assert_eq!(round_order(3, 2), vec![2, 0, 1]);
        assert_eq!(round_order(1, 5), vec![0]);
    }
}
