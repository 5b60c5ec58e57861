//! What machine the figures come from: KVM flavour (hardware or the software `kvm_pvm`), cores, memory,
//! CPU model, kernel, and the load average, which is read again at the start and end of each benchmark
//! because other builds share the cores.
//!
//! Reads only /proc and /sys; every field that cannot be read is reported as unknown rather than guessed.

use std::path::Path;

/// `/proc/loadavg` at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
    /// "running/total" scheduling entities.
    pub tasks: String,
}

impl Load {
    /// Reads `/proc/loadavg`; `None` if it is missing or malformed.
    pub fn now() -> Option<Load> {
        parse_loadavg(&std::fs::read_to_string("/proc/loadavg").ok()?)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "1min": self.one, "5min": self.five, "15min": self.fifteen, "tasks": self.tasks })
    }
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} {:.2} {:.2} ({} tasks runnable/total)",
            self.one, self.five, self.fifteen, self.tasks
        )
    }
}

/// Parses `/proc/loadavg`: "0.52 0.41 0.30 2/123 4567".
pub fn parse_loadavg(text: &str) -> Option<Load> {
    let mut words = text.split_whitespace();
    let one = words.next()?.parse().ok()?;
    let five = words.next()?.parse().ok()?;
    let fifteen = words.next()?.parse().ok()?;
    let tasks = words.next()?.to_string();
    Some(Load {
        one,
        five,
        fifteen,
        tasks,
    })
}

/// The machine as the header describes it.
#[derive(Clone, Debug)]
pub struct Machine {
    pub kvm_usable: bool,
    pub kvm_pvm: bool,
    pub cores: usize,
    pub cpu_model: String,
    pub mem_gib: f64,
    pub kernel: String,
    pub load: Option<Load>,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, m)| m.trim())
            })
            .unwrap_or("unknown CPU")
            .to_string();
        let mem_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_string()))
            })
            .and_then(|r| r.trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        Machine {
            kvm_usable: hull_tests::kvm_usable(),
            kvm_pvm: hull_tests::software_kvm(),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu_model,
            mem_gib: mem_kib / (1024.0 * 1024.0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            load: Load::now(),
        }
    }

    /// One paragraph for the top of the output.
    pub fn paragraph(&self) -> String {
        let kvm = match (self.kvm_usable, self.kvm_pvm) {
            (true, true) => "/dev/kvm is kvm_pvm, the SOFTWARE KVM (/sys/module/kvm_pvm exists): guest ring 0 is \
                             emulated (~1000x slower), guest ring 3 runs natively, so boot figures are far \
                             above what hardware KVM gives"
                .to_string(),
            (true, false) => "/dev/kvm is hardware KVM (no kvm_pvm module)".to_string(),
            (false, pvm) => {
                format!(
                    "/dev/kvm is NOT usable by this user{}",
                    if pvm { " (kvm_pvm is loaded)" } else { "" }
                )
            }
        };
        let load = match &self.load {
            Some(l) => format!("load average {l}"),
            None => "load average unknown".to_string(),
        };
        format!(
            "Machine: {} core(s) of {}, {:.1} GiB RAM, Linux {}; {}; {} at start (other engineers' builds may \
             share these cores: each benchmark also records the load at its start and end).",
            self.cores, self.cpu_model, self.mem_gib, self.kernel, kvm, load
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kvm_usable": self.kvm_usable,
            "kvm_pvm": self.kvm_pvm,
            "cores": self.cores,
            "cpu_model": self.cpu_model,
            "mem_gib": self.mem_gib,
            "kernel": self.kernel,
            "load": self.load.as_ref().map(Load::to_json),
        })
    }
}

/// Whether `path` is an executable regular file.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadavg_is_parsed() {
        let l = parse_loadavg("4.62 4.28 2.49 4/97 25526\n").unwrap();
        assert_eq!((l.one, l.five, l.fifteen, l.tasks.as_str()), (4.62, 4.28, 2.49, "4/97"));
        assert!(parse_loadavg("garbage").is_none());
        assert!(parse_loadavg("").is_none());
    }
}
