//! The OCI runtime spec `hull run` hands the agent: runc's defaults (mount, pid, uts, ipc and cgroup
//! namespaces; proc, a tmpfs /dev with devpts, shm and mqueue, read-only sysfs and cgroup; Docker's default
//! capability set in bounding/effective/permitted; masked and read-only /proc paths; no_new_privileges)
//! plus what the command line says (args, env, cwd, user, terminal, pids and memory limits). The VM is the
//! sandbox's network boundary, so there is no network namespace: the container uses the VM's interfaces.

use serde_json::{json, Value};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux 6.1 knows, for `--cap-add` to check names against.
pub const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// A capability name as `docker run --cap-add` takes it (`NET_ADMIN`, `cap_net_admin`, `CAP_NET_ADMIN`), in
/// the spec's form, or `ALL` (every capability).
pub fn capability_name(name: &str) -> Result<String, String> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if ALL_CAPS.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(format!("unknown capability {name:?}"))
    }
}

pub struct ProcessOptions<'a> {
    pub args: &'a [String],
    /// Capabilities granted on top of Docker's default set (spec names, `CAP_...`, or `ALL`).
    pub cap_add: &'a [String],
    pub env: &'a [String],
    pub cwd: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub terminal: bool,
}

/// An OCI `process` object.
pub fn process(p: &ProcessOptions) -> Value {
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    if p.terminal {
        env.push("TERM=xterm".into());
    }
    env.push("HOME=/root".into());
    for e in p.env {
        // A later K=V replaces an earlier one with the same K.
        let key = e.split('=').next().unwrap_or_default();
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    // Capabilities as the runtime spec defines them: root gets the set; other users keep only the bounding
    // set (effective/permitted empty), as runc and Docker do.
    let mut caps: Vec<&str> = CAPS.to_vec();
    for c in p.cap_add {
        let add: Vec<&str> = if c == "ALL" {
            ALL_CAPS.to_vec()
        } else {
            vec![c.as_str()]
        };
        for c in add {
            if !caps.contains(&c) {
                caps.push(c);
            }
        }
    }
    let granted: Vec<&str> = if p.uid == 0 { caps.clone() } else { vec![] };
    json!({
        "terminal": p.terminal,
        "user": { "uid": p.uid, "gid": p.gid },
        "args": p.args,
        "env": env,
        "cwd": p.cwd,
        "capabilities": {
            "bounding": caps, "effective": granted, "permitted": granted, "inheritable": [], "ambient": []
        },
        "rlimits": [ { "type": "RLIMIT_NOFILE", "hard": 1048576u64, "soft": 1048576u64 } ],
        "noNewPrivileges": true
    })
}

pub struct Limits {
    pub pids: Option<i64>,
    pub memory_bytes: Option<i64>,
}

/// The whole spec (config.json).
pub fn spec(process: Value, hostname: &str, limits: &Limits) -> Value {
    // Devices: nothing but what the runtime allows every container (runc's list, which the agent appends),
    // as containerd's default spec says.
    let mut resources = json!({ "devices": [ { "allow": false, "access": "rwm" } ] });
    if let Some(p) = limits.pids {
        resources["pids"] = json!({ "limit": p });
    }
    if let Some(m) = limits.memory_bytes {
        // No swap: the limit is the limit.
        resources["memory"] = json!({ "limit": m, "swap": m });
    }
    json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": { "path": "rootfs", "readonly": false },
        "hostname": hostname,
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "resources": resources,
            "namespaces": [ { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" } ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [ "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger" ]
        }
    })
}

/// Where the agent writes the DNS servers of ConfigureNetwork, in the guest.
const GUEST_RESOLV_CONF: &str = "/run/hull/resolv.conf";

/// Binds the guest's resolv.conf (written by the agent) read-only onto the container's /etc/resolv.conf.
pub fn add_resolv_conf(spec: &mut Value) {
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(json!({
            "destination": "/etc/resolv.conf", "type": "bind", "source": GUEST_RESOLV_CONF, "options": ["rbind", "ro"]
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_caps_by_user() {
        let args = vec!["sh".to_string()];
        let env = vec!["PATH=/x".to_string(), "A=1".to_string()];
        let p = process(&ProcessOptions {
            args: &args,
            cap_add: &[],
            env: &env,
            cwd: "/",
            uid: 1000,
            gid: 1000,
            terminal: false,
        });
        let env: Vec<&str> = p["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(env, vec!["HOME=/root", "PATH=/x", "A=1"]);
        assert!(p["capabilities"]["effective"].as_array().unwrap().is_empty());
        assert_eq!(p["capabilities"]["bounding"].as_array().unwrap().len(), CAPS.len());
        let s = spec(
            p,
            "h",
            &Limits {
                pids: Some(10),
                memory_bytes: None,
            },
        );
        assert_eq!(s["linux"]["resources"]["pids"]["limit"], 10);
    }

    #[test]
    fn added_capabilities_join_every_set_root_holds() {
        assert_eq!(capability_name("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(capability_name("CAP_SYS_ADMIN").unwrap(), "CAP_SYS_ADMIN");
        assert_eq!(capability_name("all").unwrap(), "ALL");
        assert!(capability_name("FLY").unwrap_err().contains("FLY"));
        let args = vec!["sh".to_string()];
        let all = process(&ProcessOptions {
            args: &args,
            cap_add: &["ALL".to_string()],
            env: &[],
            cwd: "/",
            uid: 0,
            gid: 0,
            terminal: false,
        });
        assert_eq!(
            all["capabilities"]["bounding"].as_array().unwrap().len(),
            ALL_CAPS.len()
        );
        let add = vec![capability_name("SYS_ADMIN").unwrap()];
        let p = process(&ProcessOptions {
            args: &args,
            cap_add: &add,
            env: &[],
            cwd: "/",
            uid: 0,
            gid: 0,
            terminal: false,
        });
        for set in ["bounding", "effective", "permitted"] {
            let names: Vec<&str> = p["capabilities"][set]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            assert!(names.contains(&"CAP_SYS_ADMIN"), "{set}: {names:?}");
            assert_eq!(names.len(), CAPS.len() + 1, "{set}");
        }
    }
}
