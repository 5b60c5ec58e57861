//! A guest that tries to fill the host's disk through hull: it hammers an I/O port and an MMIO address no
//! device handles (each a vCPU exit hull logs at debug level) and writes 256 KiB to its console. hull's
//! per-site rate limits must keep its log to a few lines a second per site, with "N more suppressed"
//! security events (here in `--log-format json`, each line one JSON object naming the VM), and
//! `--serial-out-max-bytes` must keep the console file and its one rotated copy under the cap.

use std::path::PathBuf;
use std::time::Duration;

use hull_tests::{require_kvm, tiny_guest, Hull};
use serde_json::{json, Value};

const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
const CONSOLE_CAP: u64 = 64 * 1024;

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_flooding_guest_gets_rate_limited_logs_and_a_capped_console() {
    require_kvm!("a_flooding_guest_gets_rate_limited_logs_and_a_capped_console");
    let dir = TempDir(std::env::temp_dir().join(format!("hull-flood-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let console = dir.0.join("console.log");
    let config = json!({
        "boot-source": { "kernel_image_path": tiny_guest("flood.elf"), "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    let cap = CONSOLE_CAP.to_string();
    let console_arg = console.to_string_lossy().to_string();
    let mut hull = Hull::with_config(
        "flood",
        &config,
        &[
            "--id",
            "flood-vm",
            "--log-level",
            "Debug",
            "--log-format",
            "json",
            "--serial-out",
            &console_arg,
            "--serial-out-max-bytes",
            &cap,
        ],
    );
    let status = hull.expect_exit(EXIT_TIMEOUT);
    let elapsed = hull.elapsed().as_secs() + 1;
    let log = hull.stderr();
    assert_eq!(
        status.code(),
        Some(0),
        "hull should exit 0 after the reset\n{}",
        hull.report()
    );

    // Every line of the log is one JSON object.
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    // 200,000 guest-triggered exits; unlimited, that is about 30 MB of log. Each of the two sites may log
    // its burst (50) plus 10 a second, plus one summary per line after a drop.
    let flooded = |msg: &str| lines.iter().filter(|v| v["message"] == msg).count() as u64;
    let budget = 50 + 10 * elapsed + 1;
    for msg in ["port write with no device", "MMIO write to an unmapped address"] {
        let n = flooded(msg);
        assert!(
            n >= 1 && n <= budget,
            "{n} lines {msg:?} in {elapsed} s (budget {budget})"
        );
    }
    assert!(log.len() < 256 * 1024, "hull logged {} bytes", log.len());

    // The drops are reported as security events with the stable shape.
    let events: Vec<&Value> = lines
        .iter()
        .filter(|v| v["target"] == "security" && v["event"] == "log_flood_suppressed")
        .collect();
    assert!(!events.is_empty(), "no log_flood_suppressed event in\n{log}");
    let suppressed: u64 = events.iter().map(|v| v["suppressed"].as_u64().unwrap()).sum();
    assert!(suppressed > 100_000, "only {suppressed} lines reported suppressed");
    for e in &events {
        assert_eq!(e["vm_id"], "flood-vm", "{e}");
        assert_eq!(e["container_id"], "", "{e}");
        assert_eq!(e["level"], "WARN", "{e}");
        assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()), "{e}");
        assert!(e["site"].as_str().is_some_and(|s| s.contains(".rs:")), "{e}");
        let message = e["message"].as_str().unwrap();
        assert_eq!(message, format!("{} more suppressed", e["suppressed"]), "{e}");
    }

    // The console: 256 KiB written, at most the cap in each of the two files, the newest at the end.
    let current = std::fs::read(&console).unwrap();
    let previous = std::fs::read(dir.0.join("console.log.1")).unwrap();
    assert!(
        current.len() as u64 <= CONSOLE_CAP,
        "console.log has {} bytes",
        current.len()
    );
    assert!(
        previous.len() as u64 <= CONSOLE_CAP,
        "console.log.1 has {} bytes",
        previous.len()
    );
    assert!(!previous.is_empty(), "the console was never rotated");
    let text = String::from_utf8_lossy(&current);
    assert!(
        text.contains("hull-tiny: flood done"),
        "the newest output is missing: {text:?}"
    );
    assert!(
        !text.contains("hull-tiny: flood start"),
        "the oldest output should have rotated away"
    );
}

#[test]
fn in_text_format_the_flood_ends_in_suppressed_lines() {
    require_kvm!("in_text_format_the_flood_ends_in_suppressed_lines");
    let config = json!({
        "boot-source": { "kernel_image_path": tiny_guest("flood.elf"), "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": 1, "mem_size_mib": 128 },
    });
    // The console on standard output (no --serial-out), the log in hull's default text format.
    let mut hull = Hull::with_config("flood-text", &config, &["--log-level", "Debug"]);
    let status = hull.expect_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", hull.report());
    let log = hull.stderr();
    assert!(log.len() < 256 * 1024, "hull logged {} bytes", log.len());
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("more suppressed")).collect();
    assert!(!summaries.is_empty(), "no suppressed line in\n{log}");
    assert!(
        summaries
            .iter()
            .all(|l| l.contains("event=\"log_flood_suppressed\"") || l.contains("event=log_flood_suppressed")),
        "{summaries:?}"
    );
    hull.expect_output("hull-tiny: flood done", Duration::ZERO);
}
