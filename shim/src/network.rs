//! Pod networking the Kata "tcfilter" way. CNI has put a veth (with the pod's address and routes) into the
//! pod's network namespace. The shim creates a TAP next to it in that namespace and joins the two with tc
//! `mirred` redirects both ways, so every frame from the veth goes to the VM and back; the guest's NIC gets
//! the veth's MAC, addresses, routes and MTU, so the rest of the network cannot tell the difference. The
//! VM's processes run inside the namespace (they open the TAP there). hostNetwork pods have no namespace
//! path in their spec and get no NIC.

use std::path::{Path, PathBuf};
use std::process::Command;

use hull_agent_protocol::agent::{ConfigureNetworkRequest, Interface, Route};
use serde_json::Value;

pub const TAP: &str = "tap0_hull";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {0}: {1}")]
    Netns(String, std::io::Error),
    #[error("`{cmd}` in the pod's network namespace failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("the pod's network namespace has no interface besides lo")]
    NoInterface,
    #[error("network namespace {0} is the host's (or the shim's own): its traffic will not be redirected into a VM")]
    HostNamespace(String),
}

pub struct PodNetwork {
    pub netns: PathBuf,
    pub veth: String,
    pub mac: String,
    pub guest: ConfigureNetworkRequest,
}

/// Runs a command inside the network namespace at `netns`; returns its stdout.
pub fn in_netns(netns: &Path, args: &[&str]) -> Result<String, NetError> {
    let ns = std::fs::File::open(netns).map_err(|e| NetError::Netns(netns.display().to_string(), e))?;
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    // SAFETY: setns is async-signal-safe; the descriptor stays open until output() returns.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().map_err(|e| NetError::Command {
        cmd: args.join(" "),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetError::Command {
            cmd: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(netns: &Path, args: &[&str]) -> Result<Vec<Value>, NetError> {
    let text = in_netns(netns, args)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| NetError::Command {
        cmd: args.join(" "),
        detail: format!("unexpected output: {e}"),
    })?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Reads the pod's interface, creates the TAP and the redirects; returns what the guest must be told.
pub fn setup(netns: &Path, hostname: Option<&str>, dns: Vec<String>) -> Result<PodNetwork, NetError> {
    refuse_host_namespace(netns)?;
    let links = json(netns, &["ip", "-j", "link", "show"])?;
    let link = links
        .iter()
        .find(|l| {
            let name = l["ifname"].as_str().unwrap_or_default();
            name != "lo" && name != TAP && l["link_type"] == "ether"
        })
        .ok_or(NetError::NoInterface)?;
    let veth = link["ifname"].as_str().unwrap_or_default().to_string();
    let mac = link["address"].as_str().unwrap_or_default().to_string();
    let mtu = link["mtu"].as_u64().unwrap_or(1500) as u32;
    let addrs = json(netns, &["ip", "-j", "-4", "addr", "show", "dev", &veth])?;
    let mut iface = Interface::new();
    iface.name = "eth0".into();
    iface.mtu = mtu;
    // The VM gets this MAC at boot; a VM restored from a template (fast_start) has the template's until
    // the agent sets it.
    iface.mac = mac.clone();
    for a in addrs
        .iter()
        .flat_map(|a| a["addr_info"].as_array().cloned().unwrap_or_default())
    {
        if let (Some(ip), Some(len)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
            iface.addresses.push(format!("{ip}/{len}"));
        }
    }
    let mut guest = ConfigureNetworkRequest::new();
    guest.interfaces.push(iface);
    for r in json(netns, &["ip", "-j", "-4", "route", "show"])? {
        if r["dev"].as_str() != Some(veth.as_str()) || r["protocol"] == "kernel" {
            continue;
        }
        let mut route = Route::new();
        route.destination = r["dst"].as_str().unwrap_or("default").to_string();
        route.gateway = r["gateway"].as_str().unwrap_or_default().to_string();
        route.device = "eth0".into();
        guest.routes.push(route);
    }
    guest.dns_servers = dns;
    guest.hostname = hostname.unwrap_or_default().to_string();

    let net = PodNetwork {
        netns: netns.to_path_buf(),
        veth,
        mac,
        guest,
    };
    if let Err(e) = net.redirect(mtu) {
        net.teardown();
        return Err(e);
    }
    Ok(net)
}

/// A spec may name any namespace file: the one the shim (or the host's init) lives in would have the host's
/// own interface redirected into the VM. CNI always makes the pod a namespace of its own.
fn refuse_host_namespace(netns: &Path) -> Result<(), NetError> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::metadata(netns).map_err(|e| NetError::Netns(netns.display().to_string(), e))?;
    for own in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        if let Ok(m) = std::fs::metadata(own) {
            if (m.dev(), m.ino()) == (target.dev(), target.ino()) {
                return Err(NetError::HostNamespace(netns.display().to_string()));
            }
        }
    }
    Ok(())
}

impl PodNetwork {
    /// Creates the TAP and the tc redirects between it and the veth.
    fn redirect(&self, mtu: u32) -> Result<(), NetError> {
        let (netns, veth) = (self.netns.as_path(), self.veth.as_str());
        let mtu_s = mtu.to_string();
        let _ = in_netns(netns, &["ip", "link", "del", TAP]);
        in_netns(netns, &["ip", "tuntap", "add", "dev", TAP, "mode", "tap"])?;
        in_netns(netns, &["ip", "link", "set", TAP, "mtu", &mtu_s, "up"])?;
        for (from, to) in [(veth, TAP), (TAP, veth)] {
            let _ = in_netns(netns, &["tc", "qdisc", "del", "dev", from, "ingress"]);
            in_netns(netns, &["tc", "qdisc", "add", "dev", from, "ingress"])?;
            in_netns(
                netns,
                &[
                    "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u8",
                    "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
                ],
            )?;
        }
        Ok(())
    }

    /// Removes the TAP and the veth's redirect (the namespace itself is CNI's).
    pub fn teardown(&self) {
        let _ = in_netns(&self.netns, &["tc", "qdisc", "del", "dev", &self.veth, "ingress"]);
        let _ = in_netns(&self.netns, &["ip", "link", "del", TAP]);
    }
}

/// The `nameserver` lines of a resolv.conf text.
pub fn nameservers(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|s| s.trim().to_string())
        .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn nameservers_are_read_strictly() {
        let t = "search x\nnameserver 10.0.0.10\nnameserver bogus\n  nameserver 1.1.1.1 \n";
        assert_eq!(super::nameservers(t), vec!["10.0.0.10", "1.1.1.1"]);
    }

    #[test]
    fn the_shims_own_network_namespace_is_refused() {
        let e = super::setup(std::path::Path::new("/proc/self/ns/net"), None, Vec::new()).err();
        assert!(matches!(e, Some(super::NetError::HostNamespace(_))), "{e:?}");
    }
}
