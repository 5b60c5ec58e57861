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

pub struct ProcessOptions<'a> {
    pub args: &'a [String],
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
    let caps: Vec<&str> = CAPS.to_vec();
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
}
