//! `hull-fuzz`: runs the fuzz targets longer than the test suite does, with a random (or given) seed and a
//! time budget per target, and prints how many inputs each one executed.
//!
//! Usage: hull-fuzz [--seconds N] [--seed S] [TARGET...]   (default: every target, 10 s each)
//!        hull-fuzz --list
//!        hull-fuzz --run TARGET FILE...   (replay saved inputs, e.g. from target/fuzz-failures/)
//!        hull-fuzz --write-seeds DIR      (each target's seeds as files under DIR/TARGET/)

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use hull_fuzz::runner::{self, Budget};
use hull_fuzz::{target, TARGETS};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut seconds = 10u64;
    let mut seed = None;
    let mut names = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(seconds),
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()),
            "--list" => {
                for t in TARGETS {
                    println!("{}", t.name);
                }
                return ExitCode::SUCCESS;
            }
            "--write-seeds" => {
                // One directory per target under DIR, one file per seed: libFuzzer's starting corpus.
                let Some(dir) = args.next() else {
                    eprintln!("--write-seeds needs a directory");
                    return ExitCode::from(2);
                };
                for t in TARGETS {
                    let d = std::path::Path::new(&dir).join(t.name);
                    for (i, seed) in (t.seeds)().iter().enumerate() {
                        if let Err(e) =
                            std::fs::create_dir_all(&d).and_then(|()| std::fs::write(d.join(format!("seed-{i}")), seed))
                        {
                            eprintln!("writing seeds into {}: {e}", d.display());
                            return ExitCode::FAILURE;
                        }
                    }
                }
                return ExitCode::SUCCESS;
            }
            "--run" => {
                let Some(t) = args.next().as_deref().and_then(target) else {
                    eprintln!("--run needs a target name");
                    return ExitCode::from(2);
                };
                for file in args.by_ref() {
                    let data = std::fs::read(&file).unwrap_or_default();
                    runner::execute(t, &data);
                    println!("{}: {file}: ok", t.name);
                }
                return ExitCode::SUCCESS;
            }
            name => names.push(name.to_string()),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let selected: Vec<_> = if names.is_empty() {
        TARGETS.iter().collect()
    } else {
        match names.iter().map(|n| target(n).ok_or(n)).collect::<Result<Vec<_>, _>>() {
            Ok(t) => t,
            Err(n) => {
                eprintln!("unknown target {n}; --list shows them");
                return ExitCode::from(2);
            }
        }
    };
    println!("hull-fuzz: seed {seed}, {seconds} s per target");
    let mut crashed = false;
    for t in selected {
        let budget = Budget {
            max_execs: u64::MAX,
            time: Duration::from_secs(seconds),
        };
        // A crash is reported (with its input) by the runner; go on with the other targets.
        let Ok(stats) = std::panic::catch_unwind(|| runner::run(t, seed, budget)) else {
            println!("{:<18} CRASH (input saved under target/fuzz-failures/)", t.name);
            crashed = true;
            continue;
        };
        println!(
            "{:<18} {:>9} execs in {:>5.1} s ({:>7.0}/s), slowest {:?}",
            t.name,
            stats.execs,
            stats.elapsed.as_secs_f64(),
            stats.execs as f64 / stats.elapsed.as_secs_f64().max(1e-9),
            stats.slowest
        );
        let reached = hull_fuzz::stats::summary(t.name);
        if !reached.is_empty() {
            println!("{:<18} reached: {reached}", "");
        }
    }
    if crashed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
