//! The agent's cgroup v2 statistics of a container, converted to what containerd's Stats call carries:
//! `io.containerd.cgroups.v2.Metrics` in an `Any`. The numbers come from the guest and are copied as they are
//! (they are only reported, never used to decide anything on the host); the per-device list is cut at
//! [`MAX_IO_DEVICES`].

use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use hull_agent_protocol::agent::StatsContainerResponse;

pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// The most block devices whose I/O counters are reported (a VM has a handful of disks).
pub const MAX_IO_DEVICES: usize = 64;

/// cgroup v2 metrics from the agent's statistics.
pub fn metrics(s: &StatsContainerResponse) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    let mut cpu = v2::CPUStat::new();
    let mut mem = v2::MemoryStat::new();
    let mut pids = v2::PidsStat::new();
    if let Some(c) = s.cpu.as_ref() {
        cpu.usage_usec = c.usage_usec;
        cpu.user_usec = c.user_usec;
        cpu.system_usec = c.system_usec;
        cpu.nr_periods = c.nr_periods;
        cpu.nr_throttled = c.nr_throttled;
        cpu.throttled_usec = c.throttled_usec;
    }
    if let Some(x) = s.memory.as_ref() {
        mem.usage = x.current;
        mem.usage_limit = x.max;
        mem.anon = x.anon;
        mem.file = x.file;
    }
    if let Some(p) = s.pids.as_ref() {
        pids.current = p.current;
        pids.limit = p.max;
    }
    let mut io = v2::IOStat::new();
    for d in s.io.iter().take(MAX_IO_DEVICES) {
        let mut e = v2::IOEntry::new();
        e.major = d.major as u64;
        e.minor = d.minor as u64;
        e.rbytes = d.rbytes;
        e.wbytes = d.wbytes;
        e.rios = d.rios;
        e.wios = d.wios;
        io.usage.push(e);
    }
    m.cpu = Some(cpu).into();
    m.memory = Some(mem).into();
    m.pids = Some(pids).into();
    m.io = Some(io).into();
    m
}

/// The metrics as the `Any` of a StatsResponse.
pub fn metrics_any(s: &StatsContainerResponse) -> Result<Any, containerd_shim::protos::protobuf::Error> {
    let mut any = Any::new();
    any.type_url = METRICS_TYPE_URL.into();
    any.value = metrics(s).write_to_bytes()?;
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_agent_protocol::agent::{IoDeviceStats, MemoryStats};

    #[test]
    fn the_guests_numbers_are_copied_into_cgroup_v2_metrics() {
        let mut s = StatsContainerResponse::new();
        let mut mem = MemoryStats::new();
        mem.current = 5 << 20;
        mem.max = 64 << 20;
        s.memory = Some(mem).into();
        let mut d = IoDeviceStats::new();
        d.major = 254;
        d.rbytes = 4096;
        s.io.push(d);
        let any = metrics_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((m.memory.usage, m.memory.usage_limit), (5 << 20, 64 << 20));
        assert_eq!((m.io.usage[0].major, m.io.usage[0].rbytes), (254, 4096));
        assert_eq!(m.cpu.usage_usec, 0);
        s.io = vec![IoDeviceStats::new(); 10_000];
        assert_eq!(metrics(&s).io.usage.len(), MAX_IO_DEVICES, "a flood of devices is cut");
    }
}
