//! Layer (a), machine-config and CPU: tiny guests booted through the API socket with `huge_pages: "2M"`
//! (the test reserves 2 MiB pages in `/proc/sys/vm/nr_hugepages` and restores the old count afterwards,
//! also when it fails), Firecracker's static CPU templates (refused by vendor as Firecracker refuses
//! them, `T2A` booted on AMD) and a `PUT /cpu-config` CPUID modifier that the guest reads back.

use std::sync::Mutex;
use std::time::Duration;

use hull_tests::{require_kvm, tiny_guest, Hull};
use serde_json::json;

const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// The tests that change or depend on the host's huge page pool run one at a time.
static HUGE_PAGES: Mutex<()> = Mutex::new(());

fn host_is_amd() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .contains("AuthenticAMD")
}

/// Sets `vm.nr_hugepages` and puts the old value back on drop.
struct HugePagePool {
    old: String,
}

impl HugePagePool {
    /// None when the pool cannot be changed here (no root, no hugetlb).
    fn set(pages: u64) -> Option<HugePagePool> {
        let old = std::fs::read_to_string(NR_HUGEPAGES).ok()?;
        std::fs::write(NR_HUGEPAGES, pages.to_string()).ok()?;
        Some(HugePagePool {
            old: old.trim().to_string(),
        })
    }

    fn free() -> u64 {
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for HugePagePool {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.old);
    }
}

/// hull with its API socket, a tiny guest as boot source and `machine` as machine-config.
fn configured(label: &str, guest: &str, machine: serde_json::Value) -> Hull {
    let hull = Hull::with_api(label, &[]);
    let api = hull.api();
    api.expect_ok(
        "PUT",
        "/boot-source",
        &json!({ "kernel_image_path": tiny_guest(guest), "boot_args": "console=ttyS0" }),
    );
    api.expect_ok("PUT", "/machine-config", &machine);
    hull
}

fn start(hull: &Hull) -> hull_tests::ApiResponse {
    hull.request("PUT", "/actions", Some(r#"{"action_type": "InstanceStart"}"#))
}

/// Sums a `kB` field over every mapping in /proc/PID/smaps whose KernelPageSize is 2048 kB.
fn hugetlb_kib(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut total = 0;
    let mut size = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Size:"), Some(n)) => size = n.parse().unwrap_or(0),
            (Some("KernelPageSize:"), Some("2048")) => total += size,
            _ => {}
        }
    }
    total
}

#[test]
fn huge_pages_back_guest_memory_when_reserved() {
    require_kvm!("huge_pages_back_guest_memory_when_reserved");
    let _serial = HUGE_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_pool) = HugePagePool::set(80) else {
        eprintln!("skipped: cannot write {NR_HUGEPAGES}");
        return;
    };
    if HugePagePool::free() < 64 {
        eprintln!("skipped: the host gave only {} free 2 MiB pages", HugePagePool::free());
        return;
    }
    let mut hull = configured(
        "huge2m",
        "halt.elf",
        json!({ "vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M" }),
    );
    let reply = start(&hull);
    assert_eq!(reply.status, 204, "{}\n{}", reply.body, hull.report());
    hull.expect_output("hull-tiny: halt booted", EXIT_TIMEOUT);
    assert_eq!(hugetlb_kib(hull.pid()), 128 * 1024, "guest RAM on 2 MiB pages");
    // HugetlbPages counts the huge pages touched so far (the kernel image's); the mapping reserved all 64.
    let status = std::fs::read_to_string(format!("/proc/{}/status", hull.pid())).unwrap();
    let touched: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("HugetlbPages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    assert!(touched >= 2048 && touched.is_multiple_of(2048), "{status}");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let rsvd: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Rsvd:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(rsvd + touched / 2048, 64, "every page reserved at mmap time\n{meminfo}");
    let config = hull.request("GET", "/vm/config", None).json();
    assert_eq!(config["machine-config"]["huge_pages"], "2M");
    hull.kill();
}

#[test]
fn huge_pages_are_refused_without_free_pages_or_whole_pages() {
    require_kvm!("huge_pages_are_refused_without_free_pages_or_whole_pages");
    let _serial = HUGE_PAGES.lock().unwrap_or_else(|e| e.into_inner());
    let hull = configured("huge-none", "halt.elf", json!({ "vcpu_count": 1, "mem_size_mib": 128 }));
    let odd = hull.request(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 129, "huge_pages": "2M"}"#),
    );
    assert_eq!(odd.status, 400);
    assert_eq!(
        odd.fault_message().as_deref(),
        Some("The memory size (MiB) is either 0, or not a multiple of the configured page size.")
    );
    let Some(_pool) = HugePagePool::set(0) else {
        eprintln!("skipped: cannot write {NR_HUGEPAGES}");
        return;
    };
    hull.api()
        .expect_ok("PATCH", "/machine-config", &json!({ "huge_pages": "2M" }));
    let reply = start(&hull);
    assert_eq!(reply.status, 400, "{}", reply.body);
    let fault = reply.fault_message().unwrap_or_default();
    assert!(
        fault.contains("2 MiB huge pages") && fault.contains("vm.nr_hugepages"),
        "{fault}"
    );
}

#[test]
fn intel_templates_are_refused_on_amd_as_firecracker_refuses_them() {
    require_kvm!("intel_templates_are_refused_on_amd_as_firecracker_refuses_them");
    if !host_is_amd() {
        eprintln!("skipped: not an AMD host");
        return;
    }
    for template in ["C3", "T2", "T2S", "T2CL"] {
        let hull = configured(
            &format!("tmpl-{template}"),
            "halt.elf",
            json!({ "vcpu_count": 1, "mem_size_mib": 128, "cpu_template": template }),
        );
        let config = hull.request("GET", "/vm/config", None).json();
        assert_eq!(config["machine-config"]["cpu_template"], template);
        let reply = start(&hull);
        assert_eq!(reply.status, 400, "{template}: {}", reply.body);
        let fault = reply.fault_message().unwrap_or_default();
        assert!(
            fault.ends_with("Failed to get CPU template: CPU vendor mismatched between actual CPU and CPU template."),
            "{template}: {fault}"
        );
        assert_eq!(hull.request("GET", "/", None).json()["state"], "Not started");
    }
}

#[test]
fn t2a_and_a_cpuid_modifier_reach_the_guest() {
    require_kvm!("t2a_and_a_cpuid_modifier_reach_the_guest");
    if !host_is_amd() {
        eprintln!("skipped: T2A applies on AMD hosts only");
        return;
    }
    let mut hull = configured(
        "t2a",
        "smp.elf",
        json!({ "vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "T2A" }),
    );
    // CPUID leaf 1 EBX[31:24] (the initial APIC ID) forced to 5; the guest prints it.
    let template = json!({
        "kvm_capabilities": ["!36"],
        "cpuid_modifiers": [{
            "leaf": "0x1", "subleaf": "0x0", "flags": 0,
            "modifiers": [{ "register": "ebx", "bitmap": "0b00000101xxxxxxxxxxxxxxxxxxxxxxxx" }]
        }]
    });
    let bad = hull.request(
        "PUT",
        "/cpu-config",
        Some(
            r#"{"cpuid_modifiers": [{"leaf": 1, "subleaf": 0, "modifiers": [{"register": "esp", "bitmap": "0b1"}]}]}"#,
        ),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.fault_message()
            .unwrap_or_default()
            .contains("Invalid register \"esp\""),
        "{}",
        bad.body
    );
    hull.api().expect_ok("PUT", "/cpu-config", &template);
    let config = hull.request("GET", "/vm/config", None).json();
    assert_eq!(config["cpu-config"]["cpuid_modifiers"][0]["leaf"], "0x1");
    let reply = start(&hull);
    assert_eq!(reply.status, 204, "{}\n{}", reply.body, hull.report());
    let status = hull.expect_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(0), "{}", hull.report());
    let line = hull.expect_output("hull-tiny: cpu 0 alive", Duration::ZERO);
    assert_eq!(line, "hull-tiny: cpu 0 alive cpuid_apic_id=5 bsp");
}

#[test]
fn a_missing_kvm_capability_is_refused_at_start() {
    require_kvm!("a_missing_kvm_capability_is_refused_at_start");
    let hull = configured("caps", "halt.elf", json!({ "vcpu_count": 1, "mem_size_mib": 128 }));
    hull.api()
        .expect_ok("PUT", "/cpu-config", &json!({ "kvm_capabilities": ["999999"] }));
    let reply = start(&hull);
    assert_eq!(reply.status, 400, "{}", reply.body);
    let fault = reply.fault_message().unwrap_or_default();
    assert!(fault.contains("Missing KVM capability 999999"), "{fault}");
}
