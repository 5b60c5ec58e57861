//! Reading a process's memory from `/proc/PID/smaps`: every mapping with its size and resident set, and
//! the split of hull's RSS into "guest memory" (the anonymous mapping of exactly the configured guest size)
//! and everything else (binary, libraries, heap, thread stacks, other anonymous memory).
//!
//! The text comes from the kernel but is parsed defensively: unknown lines are skipped, malformed numbers
//! make the mapping count as zero rather than panic.

/// One mapping of `/proc/PID/smaps`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    /// The pathname column: a file, `[heap]`, `[stack]`, ... or empty for anonymous memory.
    pub path: String,
    pub size_kib: u64,
    pub rss_kib: u64,
    pub anonymous_kib: u64,
}

/// Parses the whole text of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(m) = parse_header(line) {
            maps.push(m);
            continue;
        }
        let Some(cur) = maps.last_mut() else { continue };
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kib = || rest.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0);
        match key {
            "Size" => cur.size_kib = kib(),
            "Rss" => cur.rss_kib = kib(),
            "Anonymous" => cur.anonymous_kib = kib(),
            _ => {}
        }
    }
    maps
}

/// A mapping header: "7f12a000-7f12b000 rw-p 00000000 00:00 0      [heap]".
fn parse_header(line: &str) -> Option<Mapping> {
    let mut words = line.split_whitespace();
    let range = words.next()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = words.next()?;
    if perms.len() != 4 {
        return None;
    }
    let _offset = words.next()?;
    let _dev = words.next()?;
    let _inode = words.next()?;
    let path = words.collect::<Vec<_>>().join(" ");
    Some(Mapping {
        start,
        end,
        perms: perms.to_string(),
        path,
        ..Mapping::default()
    })
}

/// hull's resident memory split into the guest's RAM and the rest.
#[derive(Clone, Debug, PartialEq)]
pub struct RssSplit {
    pub total_rss_kib: u64,
    pub guest_rss_kib: u64,
    pub guest_size_kib: u64,
    /// Resident memory of every other mapping: what hull itself costs.
    pub rest_rss_kib: u64,
    /// The rest by kind: (kind, KiB), largest first.
    pub rest_by_kind: Vec<(String, u64)>,
    /// Set when the guest mapping was not found at exactly the configured size.
    pub warning: Option<String>,
}

/// Splits the mappings of a VMM whose guest has `guest_kib` of RAM in one anonymous mapping.
/// `exe` is the VMM's executable path (its mappings are counted as "binary").
pub fn split_rss(maps: &[Mapping], guest_kib: u64, exe: &str) -> Result<RssSplit, String> {
    let anonymous = |m: &Mapping| m.path.is_empty();
    let mut warning = None;
    let guest = match maps.iter().position(|m| anonymous(m) && m.size_kib == guest_kib) {
        Some(i) => i,
        None => {
            // The kernel may have merged the guest mapping with an adjacent anonymous one of the same flags.
            let i = maps
                .iter()
                .enumerate()
                .filter(|(_, m)| anonymous(m) && m.size_kib >= guest_kib)
                .max_by_key(|(_, m)| m.size_kib)
                .map(|(i, _)| i)
                .ok_or_else(|| format!("no anonymous mapping of at least {guest_kib} KiB (the guest's RAM)"))?;
            warning = Some(format!(
                "no anonymous mapping of exactly {guest_kib} KiB; took the largest ({} KiB), which may include \
                 merged neighbours",
                maps[i].size_kib
            ));
            i
        }
    };
    let total: u64 = maps.iter().map(|m| m.rss_kib).sum();
    let mut kinds: Vec<(String, u64)> = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        if i == guest {
            continue;
        }
        let kind = if m.path == exe {
            "hull binary".to_string()
        } else if m.path.starts_with('/') {
            "shared libraries and other files".to_string()
        } else if m.path.is_empty() {
            "anonymous (heap arenas, thread stacks, buffers)".to_string()
        } else {
            m.path.clone()
        };
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, kib)) => *kib += m.rss_kib,
            None => kinds.push((kind, m.rss_kib)),
        }
    }
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(RssSplit {
        total_rss_kib: total,
        guest_rss_kib: maps[guest].rss_kib,
        guest_size_kib: maps[guest].size_kib,
        rest_rss_kib: total - maps[guest].rss_kib,
        rest_by_kind: kinds,
        warning,
    })
}

/// `VmRSS` (KiB) from `/proc/PID/status` text.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The KiB value of a `Key:   123 kB` line (`/proc/PID/smaps_rollup`, `/proc/meminfo`, `/proc/PID/status`).
pub fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A plain number of `/proc/PID/status`, e.g. `Threads:\t4`.
pub fn status_number(text: &str, key: &str) -> Option<u64> {
    kib_field(text, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fe:01 123   /work/target/release/hull
Size:               1024 kB
Rss:                 900 kB
Anonymous:             0 kB
55d0c1000000-55d0c1021000 rw-p 00000000 00:00 0     [heap]
Size:                132 kB
Rss:                  40 kB
Anonymous:            40 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
KernelPageSize:        4 kB
Rss:                2048 kB
Anonymous:          2048 kB
VmFlags: rd wr mr mw me nr
7f0010000000-7f0010200000 rw-p 00000000 00:00 0 
Size:               2048 kB
Rss:                  16 kB
7f0020000000-7f0020100000 r-xp 00000000 fe:01 77    /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                 300 kB
";

    #[test]
    fn smaps_mappings_are_parsed() {
        let maps = parse_smaps(SAMPLE);
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].path, "/work/target/release/hull");
        assert_eq!((maps[0].size_kib, maps[0].rss_kib), (1024, 900));
        assert_eq!(maps[1].path, "[heap]");
        assert_eq!(maps[2].path, "");
        assert_eq!((maps[2].start, maps[2].end), (0x7f00_0000_0000, 0x7f00_0800_0000));
        assert_eq!(
            (maps[2].size_kib, maps[2].rss_kib, maps[2].anonymous_kib),
            (131072, 2048, 2048)
        );
        // "VmFlags" and "KernelPageSize" are not headers.
        assert_eq!(maps[4].perms, "r-xp");
    }

    #[test]
    fn rss_is_split_into_guest_and_rest() {
        let split = split_rss(&parse_smaps(SAMPLE), 128 * 1024, "/work/target/release/hull").unwrap();
        assert_eq!(split.total_rss_kib, 900 + 40 + 2048 + 16 + 300);
        assert_eq!(split.guest_rss_kib, 2048);
        assert_eq!(split.rest_rss_kib, 900 + 40 + 16 + 300);
        assert_eq!(split.rest_by_kind[0], ("hull binary".to_string(), 900));
        assert!(split.rest_by_kind.contains(&("[heap]".to_string(), 40)));
        assert!(split.warning.is_none());
    }

    #[test]
    fn a_merged_guest_mapping_is_used_with_a_warning() {
        let split = split_rss(&parse_smaps(SAMPLE), 64 * 1024, "/x").unwrap();
        assert_eq!(split.guest_size_kib, 131072);
        assert!(split.warning.is_some());
        assert!(split_rss(&parse_smaps(SAMPLE), 1 << 30, "/x").is_err());
    }

    #[test]
    fn rollup_meminfo_and_status_fields_are_read() {
        let rollup = "55d0c0000000-7ffd00000000 ---p 00000000 00:00 0  [rollup]\nRss:  4300 kB\nPss:   1234 kB\n\
                      Pss_Anon:  900 kB\n";
        assert_eq!(kib_field(rollup, "Rss"), Some(4300));
        assert_eq!(kib_field(rollup, "Pss"), Some(1234));
        assert_eq!(
            kib_field("MemTotal: 10 kB\nMemAvailable:   22487000 kB\n", "MemAvailable"),
            Some(22487000)
        );
        assert_eq!(status_number("Name:\thull\nThreads:\t4\n", "Threads"), Some(4));
        assert_eq!(kib_field(rollup, "Swap"), None);
        assert_eq!(kib_field("Pss: lots kB\n", "Pss"), None);
    }

    #[test]
    fn vm_rss_is_read_from_status() {
        assert_eq!(
            vm_rss_kib("Name:\thull\nVmRSS:\t   12345 kB\nVmData: 1 kB\n"),
            Some(12345)
        );
        assert_eq!(vm_rss_kib("Name:\thull\n"), None);
    }
}
