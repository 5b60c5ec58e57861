//! End-to-end smoke test of `hull-bench compare` and `hull-bench density` against hull and QEMU: one round of
//! compare and a batch of 3 VMs per VMM, the way a person would run them, checking that each produces its
//! table, its JSON and (compare) a well-formed chart with a panel per metric, and that density's teardown left
//! nothing behind. The figures themselves are not checked: they are benchmarks, not test assertions. Tiny
//! guests on the software KVM boot in milliseconds; the whole test takes seconds.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use hull_tests::TempDir;

fn hull_bench(args: &[&str], hull: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hull-bench"))
        .args(args)
        .arg("--hull")
        .arg(hull)
        .output()
        .expect("run hull-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hull-bench {args:?} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read the JSON output")).expect("valid JSON")
}

#[test]
fn compare_and_density_run_against_hull_and_qemu() {
    hull_tests::require_kvm!("compare_and_density_run_against_hull_and_qemu");
    hull_tests::ensure_qemu_tools();
    let hull = hull_tests::hull_bin();
    let dir = TempDir::new("bench-smoke").unwrap();
    let started = Instant::now();

    let (svg, json) = (dir.path().join("compare.svg"), dir.path().join("compare.json"));
    let args = [
        "compare",
        "--runs",
        "1",
        "--svg",
        svg.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    let stdout = hull_bench(&args, &hull);
    assert!(stdout.contains("| hull/QEMU |"), "{stdout}");
    let doc = std::fs::read_to_string(&svg).expect("the chart was written");
    assert!(doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"));
    let opened = doc.matches("<g ").count();
    assert_eq!(opened, doc.matches("</g>").count(), "every group is closed");
    let comparison = &read_json(&json)["comparison"];
    let metrics = comparison["metrics"].as_array().unwrap();
    assert_eq!(
        doc.matches(r#"class="panel""#).count(),
        metrics.len(),
        "one panel per metric"
    );
    for vmm in ["hull", "qemu"] {
        let ready = &metrics[0]["vmms"][vmm];
        assert_eq!(ready["samples"].as_array().unwrap().len(), 1, "{vmm}: {ready}");
        assert!(ready["median"].as_f64().unwrap() > 0.0);
    }
    assert!(metrics[0]["ratio_of_medians"]["hull/qemu"].as_f64().is_some());

    let json = dir.path().join("density.json");
    let stdout = hull_bench(&["density", "--vms", "3", "--json", json.to_str().unwrap()], &hull);
    assert!(stdout.contains("start rate (3 VMs)"), "{stdout}");
    let density = &read_json(&json)["density"];
    assert_eq!(density.as_array().unwrap().len(), 2, "{density}");
    for batch in density.as_array().unwrap() {
        assert_eq!(batch["vms"], 3);
        assert!(batch["start_rate_vms_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(
            batch["left_behind"],
            serde_json::json!({ "processes": 0, "sockets": 0, "dirs": 0 })
        );
    }
    hull_tests::note(&format!(
        "compare --runs 1 and density --vms 3 took {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}
