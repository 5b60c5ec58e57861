//! The container's namespaces, planned from the spec before anything starts: which ones `hull-init` is
//! cloned into, which it joins, the user namespace's id maps and the time namespace's clock offsets.
//!
//! - **New namespaces** (no `path`): mnt, pid, uts, ipc, net are clone flags; cgroup is unshared by
//!   `hull-init` once it is in its cgroup; user is a clone flag too, and the agent writes the child's
//!   `uid_map`/`gid_map` before the child (still the agent's code) becomes root in it and execs `hull-init`,
//!   so every other new namespace is owned by the container's user namespace, as under runc; time is
//!   unshared by `hull-init`, which writes the offsets and then enters it (see `crate::init`).
//! - **Joining by path**: one VM is one pod, so the namespaces worth joining are those of another container
//!   in the same VM. A spec names one as `/run/hull/ns/<container-id>/<type>` (the shim rewrites CRI's
//!   `/proc/<sandbox pid>/ns/<type>` into that form); the agent resolves it to that container's init. Any
//!   other path names something outside the VM (a host path means nothing here) and is refused with an
//!   error naming it. pid is joined by the spawning thread (it applies to children), the others by the
//!   child before it execs. Joining a user or mount namespace, or joining anything together with a new user
//!   namespace, is refused: the new namespaces would be owned by the wrong user namespace.
//!
//! Everything here is the spec's data and checked: a bad map or offset is an error, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, LinuxIdMapping, LinuxNamespaceType, LinuxTimeOffset};

/// Where a spec names another container's namespace: `/run/hull/ns/<container-id>/<type>`.
pub const JOIN_PREFIX: &str = "/run/hull/ns/";

/// The kernel's limit on lines in `uid_map`/`gid_map` (since Linux 4.15).
const MAX_MAP_LINES: usize = 340;

/// A namespace to join: its short name (as in `/proc/PID/ns`) and the container whose namespace it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub name: &'static str,
    pub container: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// CLONE_NEW* flags for the clone that starts `hull-init`.
    pub clone_flags: libc::c_int,
    /// The namespaces `hull-exec` enters later, by short name.
    pub names: Vec<String>,
    pub cgroup_ns: bool,
    /// uid_map and gid_map contents for a new user namespace.
    pub id_maps: Option<(String, String)>,
    /// `/proc/self/timens_offsets` contents for a new time namespace.
    pub time_offsets: Option<String>,
    pub joins: Vec<Join>,
}

fn short_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Time => "time",
    }
}

/// The container id a join path names, for a namespace of short name `name`.
fn join_target(name: &str, path: &Path) -> Result<String, String> {
    let shown = path.display();
    let rest = path.to_str().and_then(|p| p.strip_prefix(JOIN_PREFIX)).ok_or_else(|| {
        format!(
            "namespace {name}: path {shown} is not inside this VM; only another container's namespace can be \
             joined, named {JOIN_PREFIX}<container-id>/{name}"
        )
    })?;
    let (id, kind) = rest
        .split_once('/')
        .ok_or_else(|| format!("namespace {name}: path {shown} names no namespace type"))?;
    if kind != name {
        return Err(format!("namespace {name}: path {shown} names a {kind} namespace"));
    }
    hull_agent_protocol::ids::validate_id(id).map_err(|_| format!("namespace {name}: bad container id in {shown}"))?;
    Ok(id.to_string())
}

/// The text of a uid_map/gid_map: each line "inside outside count". The ranges must be non-empty, fit in
/// 32 bits, and map the container's root (which `hull-init` becomes).
fn id_map(what: &str, maps: &[LinuxIdMapping]) -> Result<String, String> {
    if maps.is_empty() {
        return Err(format!("a user namespace needs {what}"));
    }
    if maps.len() > MAX_MAP_LINES {
        return Err(format!(
            "{what}: {} ranges (the kernel takes at most {MAX_MAP_LINES})",
            maps.len()
        ));
    }
    let mut text = String::new();
    let mut root_mapped = false;
    for m in maps {
        let (inside, outside, size) = (m.container_id() as u64, m.host_id() as u64, m.size() as u64);
        if size == 0 || inside + size > 1 << 32 || outside + size > 1 << 32 {
            return Err(format!("{what}: bad range {inside} {outside} {size}"));
        }
        root_mapped |= inside == 0;
        text.push_str(&format!("{inside} {outside} {size}\n"));
    }
    if !root_mapped {
        return Err(format!("{what}: the container's root (id 0) must be mapped"));
    }
    Ok(text)
}

/// The text of `/proc/self/timens_offsets` for the spec's `timeOffsets`: only the clocks a time namespace
/// offsets (monotonic, boottime), nanoseconds below one second.
fn time_offsets(offsets: &HashMap<String, LinuxTimeOffset>) -> Result<String, String> {
    let mut clocks: Vec<_> = offsets.iter().collect();
    clocks.sort_by_key(|(k, _)| k.as_str());
    let mut text = String::new();
    for (clock, o) in clocks {
        if clock != "monotonic" && clock != "boottime" {
            return Err(format!("timeOffsets: unknown clock {clock:?} (monotonic or boottime)"));
        }
        let nanos = o.nanosecs().unwrap_or(0);
        if nanos >= 1_000_000_000 {
            return Err(format!(
                "timeOffsets: {clock}: nanosecs {nanos} is not below one second"
            ));
        }
        text.push_str(&format!("{clock} {} {nanos}\n", o.secs().unwrap_or(0)));
    }
    Ok(text)
}

/// Plans the namespaces of `linux` (the spec's `linux` section).
pub fn plan(linux: &Linux) -> Result<Plan, String> {
    let mut p = Plan::default();
    let mut user = false;
    let mut time = false;
    for ns in linux.namespaces().clone().unwrap_or_default() {
        let name = short_name(ns.typ());
        if p.names.iter().any(|n| n == name) {
            return Err(format!("namespace {name} is listed twice"));
        }
        p.names.push(name.to_string());
        if let Some(path) = ns.path().as_ref().filter(|p| !p.as_os_str().is_empty()) {
            if matches!(ns.typ(), LinuxNamespaceType::User | LinuxNamespaceType::Mount) {
                return Err(format!(
                    "namespace {name}: joining a {name} namespace by path ({}) is not supported; the container \
                     needs one of its own",
                    path.display()
                ));
            }
            p.joins.push(Join {
                name,
                container: join_target(name, path)?,
            });
            continue;
        }
        p.clone_flags |= match ns.typ() {
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            LinuxNamespaceType::User => {
                user = true;
                libc::CLONE_NEWUSER
            }
            LinuxNamespaceType::Cgroup => {
                p.cgroup_ns = true;
                0
            }
            LinuxNamespaceType::Time => {
                time = true;
                0
            }
        };
    }
    if p.clone_flags & libc::CLONE_NEWNS == 0 {
        return Err("a mount namespace is required".into());
    }
    // Without one the container would share the guest's PID namespace, where the agent and every other
    // container's processes are.
    if !p.names.iter().any(|n| n == "pid") {
        return Err("a PID namespace is required (the guest's own is the agent's)".into());
    }
    let (uids, gids) = (
        linux.uid_mappings().clone().unwrap_or_default(),
        linux.gid_mappings().clone().unwrap_or_default(),
    );
    if user {
        if !p.joins.is_empty() {
            return Err("joining a namespace by path together with a new user namespace is not supported".into());
        }
        p.id_maps = Some((id_map("uidMappings", &uids)?, id_map("gidMappings", &gids)?));
    } else if !uids.is_empty() || !gids.is_empty() {
        return Err("uidMappings/gidMappings are given but the spec has no user namespace".into());
    }
    match (time, linux.time_offsets()) {
        (true, offsets) => p.time_offsets = Some(time_offsets(&offsets.clone().unwrap_or_default())?),
        (false, Some(o)) if !o.is_empty() => {
            return Err("timeOffsets are given but the spec has no new time namespace".into())
        }
        _ => {}
    }
    // The order `hull-exec` enters them in: the user namespace first (the others are owned by it), the mount
    // namespace last (after /proc/<pid>/ns was read).
    p.names.sort_by_key(|n| match n.as_str() {
        "user" => 0,
        "mnt" => 2,
        _ => 1,
    });
    Ok(p)
}

/// Where a container's init's namespace `name` is, in the agent's view.
pub fn init_ns_path(init_pid: i32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{init_pid}/ns/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(v: serde_json::Value) -> Linux {
        serde_json::from_value(v).unwrap()
    }

    fn base(extra: serde_json::Value) -> serde_json::Value {
        let mut namespaces = vec![serde_json::json!({ "type": "mount" })];
        if !extra.as_array().is_some_and(|a| a.iter().any(|n| n["type"] == "pid")) {
            namespaces.push(serde_json::json!({ "type": "pid" }));
        }
        namespaces.extend(extra.as_array().cloned().unwrap_or_default());
        serde_json::json!({ "namespaces": namespaces })
    }

    #[test]
    fn new_namespaces_become_clone_flags_and_exec_order() {
        let p = plan(&linux(base(
            serde_json::json!([{ "type": "pid" }, { "type": "cgroup" }, { "type": "uts" }]),
        )))
        .unwrap();
        assert_eq!(
            p.clone_flags,
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS
        );
        assert!(p.cgroup_ns);
        assert_eq!(p.names, ["pid", "cgroup", "uts", "mnt"]);
        assert!(plan(&linux(serde_json::json!({ "namespaces": [{ "type": "mount" }] })))
            .unwrap_err()
            .contains("PID namespace"));
        assert!(p.id_maps.is_none() && p.time_offsets.is_none() && p.joins.is_empty());
        assert!(plan(&linux(serde_json::json!({ "namespaces": [{ "type": "pid" }] })))
            .unwrap_err()
            .contains("mount namespace"));
    }

    #[test]
    fn a_user_namespace_needs_maps_that_map_root() {
        let mut v = base(serde_json::json!([{ "type": "user" }, { "type": "pid" }]));
        assert!(plan(&linux(v.clone())).unwrap_err().contains("uidMappings"));
        v["uidMappings"] = serde_json::json!([{ "containerID": 0, "hostID": 100000, "size": 65536 }]);
        v["gidMappings"] = serde_json::json!([{ "containerID": 0, "hostID": 200000, "size": 1 },
                                              { "containerID": 5, "hostID": 200005, "size": 1 }]);
        let p = plan(&linux(v.clone())).unwrap();
        assert_eq!(p.clone_flags & libc::CLONE_NEWUSER, libc::CLONE_NEWUSER);
        assert_eq!(
            p.id_maps,
            Some(("0 100000 65536\n".into(), "0 200000 1\n5 200005 1\n".into()))
        );
        assert_eq!(p.names[0], "user");
        v["uidMappings"] = serde_json::json!([{ "containerID": 1, "hostID": 100000, "size": 10 }]);
        assert!(plan(&linux(v.clone())).unwrap_err().contains("root"));
        v["uidMappings"] = serde_json::json!([{ "containerID": 0, "hostID": 4294967295u32, "size": 2 }]);
        assert!(plan(&linux(v.clone())).unwrap_err().contains("bad range"));
        v["uidMappings"] = serde_json::json!([{ "containerID": 0, "hostID": 1, "size": 0 }]);
        assert!(plan(&linux(v)).unwrap_err().contains("bad range"));
        let mut no_ns = base(serde_json::json!([]));
        no_ns["uidMappings"] = serde_json::json!([{ "containerID": 0, "hostID": 1, "size": 1 }]);
        assert!(plan(&linux(no_ns)).unwrap_err().contains("no user namespace"));
    }

    #[test]
    fn time_offsets_are_checked() {
        let mut v = base(serde_json::json!([{ "type": "time" }]));
        v["timeOffsets"] =
            serde_json::json!({ "monotonic": { "secs": 86400 }, "boottime": { "secs": -5, "nanosecs": 7 } });
        let p = plan(&linux(v.clone())).unwrap();
        assert_eq!(p.time_offsets.as_deref(), Some("boottime -5 7\nmonotonic 86400 0\n"));
        assert_eq!(
            p.clone_flags,
            libc::CLONE_NEWNS | libc::CLONE_NEWPID,
            "time is unshared by hull-init"
        );
        v["timeOffsets"] = serde_json::json!({ "realtime": { "secs": 1 } });
        assert!(plan(&linux(v.clone())).unwrap_err().contains("unknown clock"));
        v["timeOffsets"] = serde_json::json!({ "monotonic": { "nanosecs": 1000000000u32 } });
        assert!(plan(&linux(v)).unwrap_err().contains("below one second"));
        let mut no_ns = base(serde_json::json!([]));
        no_ns["timeOffsets"] = serde_json::json!({ "monotonic": { "secs": 1 } });
        assert!(plan(&linux(no_ns)).unwrap_err().contains("no new time namespace"));
    }

    #[test]
    fn only_namespaces_of_containers_in_the_vm_can_be_joined() {
        let p = plan(&linux(base(serde_json::json!([
            { "type": "pid", "path": "/run/hull/ns/sandbox-1/pid" },
            { "type": "ipc", "path": "/run/hull/ns/sandbox-1/ipc" },
        ]))))
        .unwrap();
        assert_eq!(p.clone_flags, libc::CLONE_NEWNS);
        assert_eq!(
            p.joins,
            [
                Join {
                    name: "pid",
                    container: "sandbox-1".into()
                },
                Join {
                    name: "ipc",
                    container: "sandbox-1".into()
                }
            ]
        );
        assert_eq!(p.names, ["pid", "ipc", "mnt"]);
        let refused = |ns: serde_json::Value| plan(&linux(base(serde_json::json!([ns])))).unwrap_err();
        assert!(
            refused(serde_json::json!({ "type": "network", "path": "/proc/1234/ns/net" }))
                .contains("not inside this VM")
        );
        assert!(refused(serde_json::json!({ "type": "pid", "path": "/run/hull/ns/x/ipc" })).contains("ipc namespace"));
        assert!(
            refused(serde_json::json!({ "type": "pid", "path": "/run/hull/ns/../pid" })).contains("bad container id")
        );
        assert!(
            refused(serde_json::json!({ "type": "user", "path": "/run/hull/ns/x/user" })).contains("not supported")
        );
        let mut both = base(serde_json::json!([{ "type": "user" }, { "type": "ipc", "path": "/run/hull/ns/x/ipc" }]));
        both["uidMappings"] = serde_json::json!([{ "containerID": 0, "hostID": 1, "size": 1 }]);
        both["gidMappings"] = serde_json::json!([{ "containerID": 0, "hostID": 1, "size": 1 }]);
        assert!(plan(&linux(both))
            .unwrap_err()
            .contains("together with a new user namespace"));
    }
}
