//! Guest networking without netlink: interface flags, IPv4 addresses, netmasks and MTU through the classic
//! SIOCSIF* ioctls, routes through SIOCADDRT, DNS servers into /etc/resolv.conf (also copied to
//! /run/hull/resolv.conf for containers to bind). Addresses arrive from the host as text and are parsed
//! with std's IPv4 parser; nothing else reaches an ioctl.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use hull_agent_protocol::agent::ConfigureNetworkRequest;

use crate::sys::cvt;

fn socket() -> Result<OwnedFd, String> {
    // SAFETY: a fresh datagram socket, owned at once.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })
        .map_err(|e| e.to_string())?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    if name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err(format!("bad interface name {name:?}"));
    }
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        r.ifr_name[i] = b as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    // SAFETY: sockaddr_in and sockaddr have the same size; plain data.
    unsafe {
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(ip).to_be();
        std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin)
    }
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> Result<(), String> {
    // SAFETY: `arg` points at an ifreq or rtentry owned by the caller, as `req` expects.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) })
        .map(drop)
        .map_err(|e| format!("{what}: {e}"))
}

/// Brings an interface up.
pub fn link_up(name: &str) -> Result<(), String> {
    let s = socket()?;
    let mut r = ifreq(name)?;
    ioctl(&s, libc::SIOCGIFFLAGS, &mut r as *mut _ as *mut _, "SIOCGIFFLAGS")?;
    // SAFETY: the flags member of the union, just filled by the kernel.
    unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(&s, libc::SIOCSIFFLAGS, &mut r as *mut _ as *mut _, "SIOCSIFFLAGS")
}

fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let ip: Ipv4Addr = ip.parse().map_err(|_| format!("bad IPv4 address {cidr:?}"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= 32)
        .ok_or(format!("bad prefix length in {cidr:?}"))?;
    Ok((ip, len))
}

fn mask(len: u8) -> Ipv4Addr {
    Ipv4Addr::from(if len == 0 { 0 } else { u32::MAX << (32 - len as u32) })
}

/// Parses `aa:bb:cc:dd:ee:ff` into a unicast Ethernet address.
fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || format!("bad MAC address {text:?}");
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *b = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

/// Sets an interface's MAC address (virtio-net without a control queue takes it in the guest alone, up or
/// down: the device does not filter).
fn set_mac(s: &OwnedFd, name: &str, mac: [u8; 6]) -> Result<(), String> {
    let mut r = ifreq(name)?;
    // SAFETY: the hwaddr member of the union: a sockaddr, plain data.
    unsafe {
        r.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (i, b) in mac.iter().enumerate() {
            r.ifr_ifru.ifru_hwaddr.sa_data[i] = *b as libc::c_char;
        }
    }
    ioctl(s, libc::SIOCSIFHWADDR, &mut r as *mut _ as *mut _, "SIOCSIFHWADDR")
}

pub fn configure(req: &ConfigureNetworkRequest) -> Result<(), String> {
    let s = socket()?;
    for iface in &req.interfaces {
        if !iface.mac.is_empty() {
            set_mac(&s, &iface.name, parse_mac(&iface.mac)?)?;
        }
        for addr in &iface.addresses {
            let (ip, len) = parse_cidr(addr)?;
            let mut r = ifreq(&iface.name)?;
            r.ifr_ifru.ifru_addr = sockaddr(ip);
            ioctl(&s, libc::SIOCSIFADDR, &mut r as *mut _ as *mut _, "SIOCSIFADDR")?;
            r.ifr_ifru.ifru_netmask = sockaddr(mask(len));
            ioctl(&s, libc::SIOCSIFNETMASK, &mut r as *mut _ as *mut _, "SIOCSIFNETMASK")?;
        }
        if iface.mtu > 0 {
            let mut r = ifreq(&iface.name)?;
            r.ifr_ifru.ifru_mtu = iface.mtu.min(65535) as libc::c_int;
            ioctl(&s, libc::SIOCSIFMTU, &mut r as *mut _ as *mut _, "SIOCSIFMTU")?;
        }
        link_up(&iface.name)?;
    }
    for route in &req.routes {
        let (dst, len) = match route.destination.as_str() {
            "" | "default" => (Ipv4Addr::UNSPECIFIED, 0),
            d => parse_cidr(d)?,
        };
        // SAFETY: rtentry is plain data.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr(dst);
        rt.rt_genmask = sockaddr(mask(len));
        rt.rt_flags = libc::RTF_UP;
        if !route.gateway.is_empty() {
            let gw: Ipv4Addr = route
                .gateway
                .parse()
                .map_err(|_| format!("bad gateway {:?}", route.gateway))?;
            rt.rt_gateway = sockaddr(gw);
            rt.rt_flags |= libc::RTF_GATEWAY;
        }
        let dev = if route.device.is_empty() {
            None
        } else {
            Some(crate::sys::cstr(&route.device).map_err(|e| e.to_string())?)
        };
        if let Some(d) = &dev {
            ifreq(&route.device)?;
            rt.rt_dev = d.as_ptr() as *mut _;
        }
        ioctl(&s, libc::SIOCADDRT, &mut rt as *mut _ as *mut _, "SIOCADDRT")?;
    }
    if !req.dns_servers.is_empty() {
        let mut conf = String::new();
        for d in &req.dns_servers {
            let ip: std::net::IpAddr = d.parse().map_err(|_| format!("bad DNS server {d:?}"))?;
            conf += &format!("nameserver {ip}\n");
        }
        let _ = std::fs::create_dir_all("/etc");
        let _ = std::fs::create_dir_all("/run/hull");
        std::fs::write("/etc/resolv.conf", &conf).map_err(|e| format!("/etc/resolv.conf: {e}"))?;
        std::fs::write("/run/hull/resolv.conf", &conf).map_err(|e| format!("/run/hull/resolv.conf: {e}"))?;
    }
    if !req.hostname.is_empty() {
        crate::pid1::set_hostname(&req.hostname);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:aa:0b:cc:0d:ff").unwrap(), [2, 0xaa, 0xb, 0xcc, 0xd, 0xff]);
        for bad in [
            "",
            "02:aa:0b:cc:0d",
            "02:aa:0b:cc:0d:ff:00",
            "2:aa:0b:cc:0d:ff",
            "zz:aa:0b:cc:0d:ff",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_and_masks() {
        assert_eq!(parse_cidr("10.0.0.2/24").unwrap(), (Ipv4Addr::new(10, 0, 0, 2), 24));
        assert_eq!(mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(mask(0), Ipv4Addr::UNSPECIFIED);
        assert!(parse_cidr("10.0.0.2/33").is_err());
        assert!(parse_cidr("x/1").is_err());
        assert!(ifreq("eth0/..").is_err());
        assert!(ifreq(&"e".repeat(16)).is_err());
    }
}
