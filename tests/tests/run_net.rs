//! End to end: `hull run --net TAP --ip --gateway --dns` gives the container the VM's eth0 with that
//! address and route (ping reaches the host end of the TAP) and a resolv.conf; the TAP, which the test
//! creates and owns, is left as it was. Skipped loudly when TAP devices cannot be created (no CAP_NET_ADMIN).

mod run_common;

use std::process::Command;

use run_common::*;

/// A TAP device with an address on the host side, deleted on drop.
struct Tap(String);

impl Tap {
    fn create(name: &str, host_cidr: &str) -> Option<Tap> {
        let ok = |args: &[&str]| Command::new("ip").args(args).status().is_ok_and(|s| s.success());
        let _ = Command::new("ip").args(["link", "del", name]).output();
        if !ok(&["tuntap", "add", "dev", name, "mode", "tap"]) {
            return None;
        }
        let tap = Tap(name.to_string());
        if !ok(&["addr", "add", host_cidr, "dev", name]) || !ok(&["link", "set", name, "up"]) {
            return None;
        }
        Some(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

#[test]
fn net_tap_address_route_and_dns() {
    ensure_tools();
    let name = format!("hrt{}", std::process::id() % 100_000);
    let Some(_tap) = Tap::create(&name, "10.78.0.1/24") else {
        hull_tests::skip(
            "net_tap_address_route_and_dns",
            "cannot create a TAP device (needs CAP_NET_ADMIN and ip)",
        );
        return;
    };
    let out = run(
        &["--net", &name, "--ip", "10.78.0.2/24", "--gateway", "10.78.0.1", "--dns", "10.78.0.53"],
        &["sh", "-c", "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default; ping -c 1 -W 5 10.78.0.1 >/dev/null && echo ping-ok; cat /etc/resolv.conf"],
    );
    assert_eq!(out.code(), 0, "{}\n{}", out.out(), out.stderr);
    let text = out.out();
    assert!(text.contains("inet 10.78.0.2/24"), "{text}");
    assert!(text.contains("default via 10.78.0.1"), "{text}");
    assert!(text.contains("ping-ok"), "{text}");
    assert!(text.contains("nameserver 10.78.0.53"), "{text}");
    assert!(
        std::path::Path::new("/sys/class/net").join(&name).exists(),
        "hull run must not remove a TAP it did not create"
    );
}
