//! `hull-bench`, the project's benchmark harness.
//!
//! `hull-bench <boot|devices|run|containerd|compare|density|snapshot> [--runs N] [--json FILE] [--linux] [--window-ms MS]
//! [--hull PATH] [--svg FILE] [--vms N] [--qemu PATH] [--firecracker PATH] [--cloud-hypervisor PATH]` prints a
//! one-paragraph description of the machine, then one table per benchmark (median, p90, min, max) as each
//! finishes (`compare` and `density` end with a table of hull next to the other VMMs), and with `--json`
//! writes every sample and summary to FILE.
//!
//! Exit codes: 0 every benchmark produced its figures; 1 at least one failed (its section says why);
//! 2 bad usage, or the machine cannot run the suite (no hull binary, no usable /dev/kvm).
//!
//! Trusts nothing from the outside without checking: arguments are parsed strictly, and whatever hull or
//! its guests print is only searched.

mod boot;
mod compare;
mod container;
mod containerd;
mod density;
mod devbench;
mod error;
mod guest_io;
mod machine;
mod report;
mod smaps;
mod snapshot;
mod stats;
mod svg;
mod virtq;
mod vmms;

use std::path::PathBuf;
use std::time::Duration;

use error::{BenchError, Result};
use machine::{is_executable, Machine};
use report::{run_section, Section};
use vmms::{Vmm, VmmKind};

const USAGE: &str = "\
usage: hull-bench <suite> [options]

suites:
  boot       hull spawn → API socket; InstanceStart → tiny guest's boot timer (API and --config-file);
             hull RSS minus guest memory; huge_pages None vs 2M (boot time, minor faults; reserves
             vm.nr_hugepages for the run); with --linux, hull start → Linux `Run /init`
  devices    virtio-blk, -vsock and -net device cores driven through guest-memory queues, next to the
             raw host operation (pread/pwrite, unix socket pair, TAP write); then guest-measured MB/s
             of blk (dd) and vsock (bulk transfer) in a QEMU TCG guest with hull's vhost-user backends
  run        `hull run -- /bin/true` end to end per backend, split into phases (rootfs image, VM start,
             agent ready, container created, process exit, teardown), as run by default (rootfs image from
             hull's image cache) and with --no-image-cache, next to `runc run` of the same busybox rootfs
             (installs Debian's runc if missing), with the hull/runc ratio of the medians
  containerd `ctr run --rm busybox echo hello` through containerd-shim-hull-v2 vs runc (20 each), CRI pod
             start (RunPodSandbox → CreateContainer → StartContainer) handler hull vs runc (10 each),
             and the host RSS of one running hull pod's VM processes; private containerd, needs root
  compare    hull next to QEMU -M microvm -accel kvm (and Firecracker, Cloud Hypervisor when given), the
             same tiny PVH guest (halt.elf) and host-side clocks, samples interleaved: spawn → API/QMP
             socket answers; start request (InstanceStart; QEMU: x-exit-preconfig) → guest's first serial
             line; spawn → that line without API; RSS, PSS and threads with the guest halted;
             medians [p10–p90] and hull/peer ratios
  density    N microVMs with the halting tiny guest started at once, per VMM: start rate (N / time
             until all N guests are up), per-VM PSS and RSS, MemAvailable before, with all up and after
             teardown, and a check that teardown leaves no process, socket or temporary directory
  snapshot   a tiny guest (64 MiB, dirty tracking on): /snapshot/create time and file sizes (Full and
             Diff), /snapshot/load → response and → the guest's first output, and the restored hull's
             RSS before and after the guest writes all its memory

options:
  --runs N         samples per boot or run metric (default 20; snapshot: 10), timed windows per device row (default 5),
                   containerd: both ctr runs and pod starts (default 20 and 10), compare: rounds (default 10)
  --json FILE      also write all samples and summaries as JSON to FILE
  --linux          boot: also boot the real guest kernel once (1-2 minutes under kvm_pvm)
  --window-ms MS   devices: length of one timed window (default 1000)
  --only NAME      devices: only the section NAME (block, vsock, net, rate_limit, qemu_guest)
  --hull PATH      the hull binary (default: $HULL_BIN, else target/release/hull, else target/debug/hull;
                   containerd: the hull beside the containerd-shim-hull-v2 found in target/release or debug)
  --svg FILE       compare: also draw the figures as an SVG chart (one panel per metric, p10-p90 whiskers)
  --vms N          density: microVMs per VMM (default 100)
  --qemu PATH      compare, density: the QEMU binary (default: qemu-system-x86_64 on PATH)
  --firecracker PATH       compare, density: also measure this Firecracker binary
  --cloud-hypervisor PATH  compare, density: also measure this Cloud Hypervisor binary
  -h, --help       this text

exit codes: 0 all figures produced, 1 a benchmark failed, 2 usage or environment error";

/// The sections of the devices suite, in the order they run (`--only` picks one).
const DEVICE_SECTIONS: [&str; 5] = ["block", "vsock", "net", "rate_limit", "qemu_guest"];

#[derive(Debug, PartialEq)]
struct Args {
    suite: String,
    runs: Option<usize>,
    json: Option<PathBuf>,
    linux: bool,
    window: Duration,
    hull: Option<PathBuf>,
    svg: Option<PathBuf>,
    vms: Option<usize>,
    qemu: Option<PathBuf>,
    firecracker: Option<PathBuf>,
    cloud_hypervisor: Option<PathBuf>,
    only: Option<String>,
}

/// Parses the arguments after the program name. `Ok(None)` means help was asked for.
fn parse_args(args: &[String]) -> Result<Option<Args>> {
    let mut suite = None;
    let mut parsed = Args {
        suite: String::new(),
        runs: None,
        json: None,
        linux: false,
        window: Duration::from_secs(1),
        hull: None,
        svg: None,
        vms: None,
        qemu: None,
        firecracker: None,
        cloud_hypervisor: None,
        only: None,
    };
    let mut it = args.iter();
    let usage = |msg: String| BenchError::env(format!("{msg}\n\n{USAGE}"));
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| usage(format!("{name} needs a value")));
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--runs" => {
                let v = value("--runs")?;
                let n: usize = v.parse().map_err(|_| usage(format!("--runs {v:?} is not a number")))?;
                if !(1..=1000).contains(&n) {
                    return Err(usage(format!("--runs must be 1 to 1000, not {n}")));
                }
                parsed.runs = Some(n);
            }
            "--json" => parsed.json = Some(PathBuf::from(value("--json")?)),
            "--linux" => parsed.linux = true,
            "--window-ms" => {
                let v = value("--window-ms")?;
                let ms: u64 = v
                    .parse()
                    .map_err(|_| usage(format!("--window-ms {v:?} is not a number")))?;
                if !(10..=60_000).contains(&ms) {
                    return Err(usage(format!("--window-ms must be 10 to 60000, not {ms}")));
                }
                parsed.window = Duration::from_millis(ms);
            }
            "--hull" => parsed.hull = Some(PathBuf::from(value("--hull")?)),
            "--svg" => parsed.svg = Some(PathBuf::from(value("--svg")?)),
            "--vms" => {
                let v = value("--vms")?;
                let n: usize = v.parse().map_err(|_| usage(format!("--vms {v:?} is not a number")))?;
                if !(1..=1000).contains(&n) {
                    return Err(usage(format!("--vms must be 1 to 1000, not {n}")));
                }
                parsed.vms = Some(n);
            }
            "--qemu" => parsed.qemu = Some(PathBuf::from(value("--qemu")?)),
            "--only" => parsed.only = Some(value("--only")?),
            "--firecracker" => parsed.firecracker = Some(PathBuf::from(value("--firecracker")?)),
            "--cloud-hypervisor" => parsed.cloud_hypervisor = Some(PathBuf::from(value("--cloud-hypervisor")?)),
            other if other.starts_with('-') => return Err(usage(format!("unknown option {other}"))),
            other => {
                if suite.replace(other.to_string()).is_some() {
                    return Err(usage("only one suite at a time".into()));
                }
            }
        }
    }
    let suite = suite
        .ok_or_else(|| usage("which suite? boot, devices, run, containerd, compare, density or snapshot".into()))?;
    if !["boot", "devices", "run", "containerd", "compare", "density", "snapshot"].contains(&suite.as_str()) {
        return Err(usage(format!("unknown suite {suite:?}")));
    }
    if parsed.linux && suite != "boot" {
        return Err(usage("--linux belongs to the boot suite".into()));
    }
    if parsed.svg.is_some() && suite != "compare" {
        return Err(usage("--svg belongs to the compare suite".into()));
    }
    if let Some(only) = &parsed.only {
        if suite != "devices" {
            return Err(usage("--only belongs to the devices suite".into()));
        }
        if !DEVICE_SECTIONS.contains(&only.as_str()) {
            return Err(usage(format!(
                "--only {only:?}: the devices sections are {}",
                DEVICE_SECTIONS.join(", ")
            )));
        }
    }
    if parsed.vms.is_some() && suite != "density" {
        return Err(usage("--vms belongs to the density suite".into()));
    }
    if suite == "density" && parsed.runs.is_some() {
        return Err(usage("density runs one batch per VMM; use --vms N, not --runs".into()));
    }
    let peers = parsed.qemu.is_some() || parsed.firecracker.is_some() || parsed.cloud_hypervisor.is_some();
    if peers && !["compare", "density"].contains(&suite.as_str()) {
        return Err(usage(
            "--qemu, --firecracker and --cloud-hypervisor belong to compare and density".into(),
        ));
    }
    parsed.suite = suite;
    Ok(Some(parsed))
}

/// The hull binary: `--hull`, `$HULL_BIN`, then the workspace's release and debug builds.
fn find_hull(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let root = hull_tests::repo_root();
    let candidates: Vec<PathBuf> = match explicit.or_else(|| std::env::var_os("HULL_BIN").map(PathBuf::from)) {
        Some(p) => vec![p],
        None => vec![root.join("target/release/hull"), root.join("target/debug/hull")],
    };
    candidates.iter().find(|p| is_executable(p)).cloned().ok_or_else(|| {
        BenchError::env(format!(
            "no hull binary (looked at {}); build it with `cargo build --release -p hull`, or pass --hull PATH",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// The VMMs of `compare` and `density`: hull first, then QEMU (`--qemu`, else `qemu-system-x86_64` on PATH),
/// then Firecracker and Cloud Hypervisor when their binaries were given.
fn find_vmms(args: &Args) -> Result<Vec<Vmm>> {
    let hull = find_hull(args.hull.clone())?;
    let qemu = match &args.qemu {
        Some(p) => p.clone(),
        None => std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).map(|d| d.join("qemu-system-x86_64")).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .find(|p| is_executable(p))
            .ok_or_else(|| {
                BenchError::env(
                    "no qemu-system-x86_64 on PATH; install it with `bash scripts/install-qemu.sh`, or pass --qemu PATH",
                )
            })?,
    };
    let mut vmms = vec![
        Vmm {
            kind: VmmKind::Hull,
            bin: hull,
        },
        Vmm {
            kind: VmmKind::Qemu,
            bin: qemu,
        },
    ];
    if let Some(fc) = &args.firecracker {
        vmms.push(Vmm {
            kind: VmmKind::Firecracker,
            bin: fc.clone(),
        });
    }
    if let Some(ch) = &args.cloud_hypervisor {
        vmms.push(Vmm {
            kind: VmmKind::CloudHypervisor,
            bin: ch.clone(),
        });
    }
    for vmm in vmms.iter_mut() {
        // The VMMs run in their own directories: a relative path would not resolve there.
        vmm.bin = std::fs::canonicalize(&vmm.bin).unwrap_or_else(|_| vmm.bin.clone());
        if !is_executable(&vmm.bin) {
            return Err(BenchError::env(format!(
                "{} binary {} is not an executable file",
                vmm.name(),
                vmm.bin.display()
            )));
        }
    }
    Ok(vmms)
}

/// `compare` and `density`: hull next to the other VMMs.
fn run_side_by_side(args: &Args, machine: &Machine, json: &mut serde_json::Value) -> Result<Vec<Section>> {
    let vmms = find_vmms(args)?;
    if !machine.kvm_usable {
        return Err(BenchError::env(
            "/dev/kvm is missing or not accessible to this user: no VMM can boot",
        ));
    }
    let listed: Vec<String> = vmms
        .iter()
        .map(|v| format!("{} {}", v.name(), v.bin.display()))
        .collect();
    let profile = if vmms[0].bin.components().any(|c| c.as_os_str() == "debug") {
        " (hull is a DEBUG build: figures are not representative; build with --release)"
    } else {
        ""
    };
    print_header(machine, &format!("VMMs: {}{profile}.", listed.join(", ")));
    json["vmms"] = serde_json::json!(vmms
        .iter()
        .map(|v| serde_json::json!({ "vmm": v.kind.id(), "bin": v.bin }))
        .collect::<Vec<_>>());
    let guest = hull_tests::tiny_guest("halt.elf");
    if args.suite == "compare" {
        let opts = compare::CompareOptions {
            runs: args.runs.unwrap_or(10),
            vmms,
            guest,
            svg: args.svg.clone(),
        };
        let names: Vec<&str> = opts.vmms.iter().map(|v| v.name()).collect();
        let title = format!(
            "{}, tiny PVH guest, {} interleaved rounds",
            names.join(" vs "),
            opts.runs
        );
        let mut comparison = None;
        let mut section = run_section("compare", &title, |s| compare::run(s, &opts, &mut comparison));
        if let Some(c) = &comparison {
            let partial = if section.error.is_some() {
                " (PARTIAL: a sample failed, see above)"
            } else {
                ""
            };
            println!(
                "\ncompare: medians [p10–p90] over the samples, ratio of medians{partial}\n{}",
                c.render_table()
            );
            json["comparison"] = c.to_json();
            if let (Some(path), None) = (&opts.svg, &section.error) {
                match compare::write_svg(path, c, &compare::chart_subtitle(opts.runs, &section)) {
                    Ok(()) => println!("SVG written to {}", path.display()),
                    Err(e) => section.error = Some(e.message),
                }
            }
        }
        return Ok(vec![section]);
    }
    let n = args.vms.unwrap_or(100);
    let mut batches = Vec::new();
    let mut sections = Vec::new();
    for vmm in &vmms {
        let title = format!("{n} x {} started at once, tiny guest halted", vmm.name());
        sections.push(run_section(&format!("density.{}", vmm.kind.id()), &title, |s| {
            batches.push(density::batch(s, vmm, n, &guest)?);
            Ok(())
        }));
    }
    println!("\ndensity: {n} microVMs per VMM\n{}", density::render_summary(&batches));
    json["density"] = density::summary_json(&batches);
    Ok(sections)
}

/// `containerd-shim-hull-v2` (target/release, then target/debug) and the hull binary it should start: `--hull`,
/// `$HULL_BIN`, else the hull built beside the shim (the shim and hull share the hull-runtime library, so a
/// pair from one build is what the suite measures).
fn find_shim_and_hull(explicit: Option<PathBuf>) -> Result<(PathBuf, PathBuf)> {
    let root = hull_tests::repo_root();
    let dirs = [root.join("target/release"), root.join("target/debug")];
    let shim = |d: &&PathBuf| is_executable(&d.join("containerd-shim-hull-v2"));
    let shim_dir = dirs.iter().find(shim).cloned().ok_or_else(|| {
        BenchError::env(
            "no containerd-shim-hull-v2 in target/release or target/debug; build it with \
             `cargo build -p containerd-shim-hull-v2 -p hull`",
        )
    })?;
    let hull = match explicit.or_else(|| std::env::var_os("HULL_BIN").map(PathBuf::from)) {
        Some(p) => p,
        None => shim_dir.join("hull"),
    };
    if !is_executable(&hull) {
        return Err(BenchError::env(format!(
            "no hull binary at {}; pass --hull PATH",
            hull.display()
        )));
    }
    Ok((shim_dir, hull))
}

fn run(args: Args) -> Result<Vec<Section>> {
    let machine = Machine::probe();
    let mut json = serde_json::json!({
        "tool": "hull-bench",
        "suite": args.suite,
        "machine": machine.to_json(),
        "stats": "median (mean of the middle two for even counts), p90 nearest-rank, min, max",
    });
    let sections = match args.suite.as_str() {
        "compare" | "density" => run_side_by_side(&args, &machine, &mut json)?,
        "boot" => {
            let hull = find_hull(args.hull.clone())?;
            if !machine.kvm_usable {
                return Err(BenchError::env(
                    "/dev/kvm is missing or not accessible to this user: hull cannot boot",
                ));
            }
            // hull_tests::Hull starts `$HULL_BIN`; no other thread runs yet.
            std::env::set_var("HULL_BIN", &hull);
            let profile = if hull.components().any(|c| c.as_os_str() == "debug") {
                " (a DEBUG build: figures are not representative; build with --release)"
            } else {
                ""
            };
            print_header(&machine, &format!("hull binary: {}{profile}.", hull.display()));
            json["hull_bin"] = serde_json::json!(hull);
            boot::run(&boot::BootOptions {
                runs: args.runs.unwrap_or(20),
                linux: args.linux,
                hull_bin: hull,
            })
        }
        "snapshot" => {
            let hull = find_hull(args.hull.clone())?;
            if !machine.kvm_usable {
                return Err(BenchError::env(
                    "/dev/kvm is missing or not accessible to this user: hull cannot boot",
                ));
            }
            // hull_tests::Hull starts `$HULL_BIN`; no other thread runs yet.
            std::env::set_var("HULL_BIN", &hull);
            print_header(&machine, &format!("hull binary: {}.", hull.display()));
            json["hull_bin"] = serde_json::json!(hull);
            snapshot::run(args.runs.unwrap_or(10))
        }
        "run" => {
            let hull = find_hull(args.hull.clone())?;
            print_header(&machine, &format!("hull binary: {}.", hull.display()));
            json["hull_bin"] = serde_json::json!(hull);
            container::run(&container::RunOptions {
                runs: args.runs.unwrap_or(20),
                hull_bin: hull,
            })
        }
        "containerd" => {
            let (shim_dir, hull) = find_shim_and_hull(args.hull.clone())?;
            let profile = if shim_dir.ends_with("debug") {
                " (DEBUG builds of the shim and of hull's vhost-user backends)"
            } else {
                ""
            };
            print_header(
                &machine,
                &format!(
                    "shim: {}/containerd-shim-hull-v2, hull: {}{profile}.",
                    shim_dir.display(),
                    hull.display()
                ),
            );
            json["hull_bin"] = serde_json::json!(hull);
            containerd::run(&containerd::ContainerdBenchOptions {
                ctr_runs: args.runs.unwrap_or(20),
                pod_runs: args.runs.unwrap_or(10),
                shim_dir,
                hull_bin: hull,
            })
        }
        _ => {
            print_header(&machine, "");
            let opts = devbench::DeviceOptions {
                runs: args.runs.unwrap_or(5),
                window: args.window,
            };
            let guest = guest_io::GuestOptions {
                runs: opts.runs,
                hull: args.hull.clone(),
            };
            let mut sections = Vec::new();
            for name in DEVICE_SECTIONS {
                if args.only.as_deref().is_some_and(|only| only != name) {
                    continue;
                }
                let id = format!("devices.{name}");
                sections.push(match name {
                    "block" => run_section(&id, "virtio-blk core vs pread/pwrite on the same file", |s| {
                        devbench::block::run(s, &opts)
                    }),
                    "vsock" => run_section(
                        &id,
                        "virtio-vsock core (hybrid unix backend) vs a raw unix socket pair",
                        |s| devbench::vsock::run(s, &opts),
                    ),
                    "net" => run_section(&id, "virtio-net core vs raw TAP writes", |s| {
                        devbench::net::run(s, &opts)
                    }),
                    "rate_limit" => run_section(
                        &id,
                        "rate-limited virtio-blk and virtio-net cores: measured throughput vs the set rate",
                        |s| devbench::rate_limit::run(s, &opts),
                    ),
                    _ => run_section(
                        &id,
                        "guest-measured blk and vsock MB/s, QEMU TCG guest with hull's vhost-user backends",
                        |s| guest_io::run(s, &guest),
                    ),
                });
            }
            sections
        }
    };
    if let Some(path) = &args.json {
        json["sections"] = serde_json::Value::Array(sections.iter().map(Section::to_json).collect());
        json["load_end"] = serde_json::json!(machine::Load::now().map(|l| l.to_json()));
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        std::fs::write(path, text + "\n")
            .map_err(|e| BenchError::failed(format!("writing {}: {e}", path.display())))?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(sections)
}

fn print_header(machine: &Machine, extra: &str) {
    println!("{} {extra}", machine.paragraph());
    println!(
        "Statistics: median (mean of the middle two for an even count), p90 nearest-rank, min, max over the samples."
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match parse_args(&args) {
        Ok(None) => {
            println!("{USAGE}");
            0
        }
        Ok(Some(args)) => match run(args) {
            Ok(sections) => {
                let failed: Vec<&str> = sections
                    .iter()
                    .filter(|s| s.error.is_some())
                    .map(|s| s.id.as_str())
                    .collect();
                if failed.is_empty() {
                    0
                } else {
                    eprintln!(
                        "hull-bench: {} benchmark(s) failed: {}",
                        failed.len(),
                        failed.join(", ")
                    );
                    1
                }
            }
            Err(e) => {
                eprintln!("hull-bench: {e}");
                e.exit_code()
            }
        },
        Err(e) => {
            eprintln!("hull-bench: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn arguments_are_parsed() {
        let a = parse(&["boot", "--runs", "7", "--json", "/tmp/x.json", "--linux"])
            .unwrap()
            .unwrap();
        assert_eq!((a.suite.as_str(), a.runs, a.linux), ("boot", Some(7), true));
        assert_eq!(a.json, Some(PathBuf::from("/tmp/x.json")));
        let r = parse(&["run", "--runs", "3"]).unwrap().unwrap();
        assert_eq!((r.suite.as_str(), r.runs), ("run", Some(3)));
        let c = parse(&["containerd", "--runs", "2"]).unwrap().unwrap();
        assert_eq!((c.suite.as_str(), c.runs), ("containerd", Some(2)));
        let c = parse(&["compare", "--runs", "3", "--svg", "/tmp/c.svg", "--firecracker", "/fc"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.suite.as_str(), c.runs, c.svg),
            ("compare", Some(3), Some(PathBuf::from("/tmp/c.svg")))
        );
        assert_eq!((c.firecracker, c.cloud_hypervisor), (Some(PathBuf::from("/fc")), None));
        let c = parse(&["density", "--vms", "300", "--cloud-hypervisor", "/ch", "--qemu", "/q"])
            .unwrap()
            .unwrap();
        assert_eq!((c.suite.as_str(), c.vms, c.runs), ("density", Some(300), None));
        assert_eq!(
            (c.cloud_hypervisor, c.qemu),
            (Some(PathBuf::from("/ch")), Some(PathBuf::from("/q")))
        );
        let d = parse(&["--window-ms", "200", "devices"]).unwrap().unwrap();
        assert_eq!((d.suite.as_str(), d.window), ("devices", Duration::from_millis(200)));
        let d = parse(&["devices", "--only", "rate_limit"]).unwrap().unwrap();
        assert_eq!(d.only.as_deref(), Some("rate_limit"));
        assert!(parse(&["devices", "--only", "disk"]).is_err());
        assert!(parse(&["boot", "--only", "block"]).is_err());
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for bad in [
            &["boot", "--runs"][..],
            &["boot", "--runs", "0"],
            &["boot", "--runs", "x"],
            &["nope"],
            &[],
            &["boot", "devices"],
            &["devices", "--linux"],
            &["containerd", "--linux"],
            &["boot", "--frob"],
            &["density", "--vms", "0"],
            &["density", "--vms", "1001"],
            &["density", "--vms"],
            &["density", "--runs", "3"],
            &["compare", "--vms", "3"],
            &["boot", "--svg", "/tmp/x.svg"],
            &["density", "--svg", "/tmp/x.svg"],
            &["boot", "--firecracker", "/fc"],
            &["run", "--qemu", "/q"],
            &["compare", "--firecracker"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }
}
