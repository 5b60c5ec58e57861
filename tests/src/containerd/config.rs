//! The private containerd's configuration: its config.toml (own root, state and sockets, the runc and hull
//! handlers) and the CNI conflist of the test network.

use super::*;

/// The config.toml of an instance whose private directory is `d`.
pub fn config_toml(d: &Path, socket: &Path, options: &ContainerdOptions) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    let mut hull_options = String::new();
    if let Some(path) = &options.hull_config_path {
        hull_options.push_str(&format!("        ConfigPath = {}\n", q(path)));
    }
    format!(
        r#"# Written by hull-tests (tests/src/containerd/) for one test's private containerd.
version = 2
root = {root}
state = {state}
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = {grpc}

[ttrpc]
  address = {ttrpc}

[debug]
  address = {debug}
  level = {level}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[{cri}]
  restrict_oom_score_adj = true
  sandbox_image = {pause}
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {cni}
    max_conf_num = 1

  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "{RUNC_HANDLER}"

    [{cri}.containerd.runtimes.{RUNC_HANDLER}]
      runtime_type = "{RUNC_RUNTIME_TYPE}"
      [{cri}.containerd.runtimes.{RUNC_HANDLER}.options]
        Root = {runc_root}

    [{cri}.containerd.runtimes.{HULL_HANDLER}]
      runtime_type = "{HULL_RUNTIME_TYPE}"
{hull_runtime}      [{cri}.containerd.runtimes.{HULL_HANDLER}.options]
{hull_options}
{extra}
"#,
        root = q(&d.join("root")),
        state = q(&d.join("state")),
        grpc = q(socket),
        ttrpc = q(&d.join("containerd.sock.ttrpc")),
        debug = q(&d.join("debug.sock")),
        level = toml_string(&options.log_level),
        opt = q(&d.join("opt")),
        pause = toml_string(oci_image::PAUSE_IMAGE),
        cni = q(&d.join("cni")),
        runc_root = q(&d.join("runc")),
        hull_runtime = indent(&options.hull_runtime_toml, "      "),
        extra = options.extra_toml,
    )
}

pub(super) fn indent(text: &str, by: &str) -> String {
    text.lines().map(|l| format!("{by}{}\n", l.trim_start())).collect()
}

/// A TOML basic string.
pub(super) fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The CNI network: a bridge (the one [`create_netns`] made) with host-local IPAM on the instance's subnet,
/// allocations kept in `ipam_dir`. containerd adds the loopback network itself.
pub fn cni_conflist(network: &TestNetwork, ipam_dir: &Path) -> String {
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": network.netns,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": network.subnet, "gateway": network.gateway.to_string() }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam_dir.to_string_lossy(),
            },
        }],
    });
    serde_json::to_string_pretty(&conf).expect("serialize the conflist")
}
