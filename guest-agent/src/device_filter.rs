//! The device cgroup of cgroup v2: the OCI spec's `linux.resources.devices` rules, followed by the devices
//! runc always allows (mknod of any device; /dev/null, zero, full, random, urandom, tty, console, ptmx,
//! pts, net/tun), compiled into an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE` and attached to the
//! container's cgroup, as runc does. The kernel runs it for every open and mknod of a device node by a
//! process of the cgroup: a container that makes `b 254:0` (the VM's first disk) can create the node but not
//! open it.
//!
//! Semantics: the last rule that matches the access decides; an access no rule matches is allowed (cgroup
//! v1's default), so a list starting with a deny-all rule (containerd's, hull run's) is an allow list. A rule
//! matches when its type (`a`, `b`, `c`) fits, its major and minor (absent: any) equal the device's, and the
//! access asked for (read, write, mknod) is within the rule's `access` (absent: `rwm`).

use std::io;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::bpf::*;

/// `bpf_cgroup_dev_ctx.access_type`: the device type in the low 16 bits, the access in the high ones.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// `BPF_PROG_TYPE_CGROUP_DEVICE` at `BPF_CGROUP_DEVICE`.
const KIND: Kind = Kind {
    prog_type: 15,
    attach_type: 6,
    name: "devices",
};

/// One rule in the form the program tests: `None` is "any".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub typ: Option<i32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// `ACC_*` bits.
    pub access: i32,
}

/// The rules runc appends to every container's list.
fn runc_defaults() -> Vec<Rule> {
    let dev = |typ, major, minor: Option<u32>, access| Rule {
        allow: true,
        typ: Some(typ),
        major,
        minor,
        access,
    };
    let rwm = ACC_READ | ACC_WRITE | ACC_MKNOD;
    vec![
        dev(DEV_CHAR, None, None, ACC_MKNOD),
        dev(DEV_BLOCK, None, None, ACC_MKNOD),
        dev(DEV_CHAR, Some(1), Some(3), rwm),    // null
        dev(DEV_CHAR, Some(1), Some(8), rwm),    // random
        dev(DEV_CHAR, Some(1), Some(7), rwm),    // full
        dev(DEV_CHAR, Some(5), Some(0), rwm),    // tty
        dev(DEV_CHAR, Some(1), Some(5), rwm),    // zero
        dev(DEV_CHAR, Some(1), Some(9), rwm),    // urandom
        dev(DEV_CHAR, Some(5), Some(1), rwm),    // console
        dev(DEV_CHAR, Some(136), None, rwm),     // pts
        dev(DEV_CHAR, Some(5), Some(2), rwm),    // ptmx
        dev(DEV_CHAR, Some(10), Some(200), rwm), // net/tun
    ]
}

/// The spec's rules, checked, then runc's defaults. Bad rules are errors, never guessed at.
pub fn rules(spec_rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>, String> {
    let mut out = Vec::with_capacity(spec_rules.len() + 12);
    for r in spec_rules {
        let typ = match r.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => None,
            LinuxDeviceType::B => Some(DEV_BLOCK),
            LinuxDeviceType::C | LinuxDeviceType::U => Some(DEV_CHAR),
            LinuxDeviceType::P => return Err("device rule of type p: a FIFO is not a device".into()),
        };
        let number = |n: Option<i64>, what: &str| -> Result<Option<u32>, String> {
            match n {
                None | Some(-1) => Ok(None),
                Some(v) => u32::try_from(v)
                    .map(Some)
                    .map_err(|_| format!("device rule {what} number {v} is out of range")),
            }
        };
        let mut access = 0;
        let text = r.access().as_deref().unwrap_or("rwm");
        for c in text.chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => return Err(format!("device rule access {text:?}: only r, w and m")),
            };
        }
        if text.is_empty() {
            access = ACC_READ | ACC_WRITE | ACC_MKNOD;
        }
        out.push(Rule {
            allow: r.allow(),
            typ,
            major: number(r.major(), "major")?,
            minor: number(r.minor(), "minor")?,
            access,
        });
    }
    out.extend(runc_defaults());
    Ok(out)
}

/// The program: load type, access, major and minor from the context (r1), then one block per rule from the
/// last to the first, each returning its verdict when everything it tests matches; 1 (allow) at the end,
/// unless a rule that matches everything ended the program before.
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor; r6 is scratch.
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // Each test jumps past the block's end when it fails; offsets are fixed once the block is built.
        let mut block: Vec<Insn> = Vec::new();
        if let Some(t) = r.typ {
            block.push(insn(JMP_JNE_K, 2, 0, 0, t));
        }
        if r.access != ACC_READ | ACC_WRITE | ACC_MKNOD {
            block.push(insn(ALU64_MOV_X, 6, 3, 0, 0));
            block.push(insn(ALU64_AND_K, 6, 0, 0, r.access));
            block.push(insn(JMP_JNE_X, 6, 3, 0, 0));
        }
        if let Some(m) = r.major {
            block.push(insn(JMP_JNE_K, 4, 0, 0, m as i32));
        }
        if let Some(m) = r.minor {
            block.push(insn(JMP_JNE_K, 5, 0, 0, m as i32));
        }
        let matches_everything = block.is_empty();
        block.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(r.allow)));
        block.push(insn(EXIT, 0, 0, 0, 0));
        if matches_everything {
            // The rules before it, and the default, can never decide: the verifier refuses unreachable code.
            p.extend(block);
            return p;
        }
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JMP_JNE_K || ins.code == JMP_JNE_X {
                ins.off = (len - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Loads the program for `rules` and attaches it to the cgroup directory open as `cgroup_fd`.
pub fn attach(rules: &[Rule], cgroup_fd: i32) -> io::Result<()> {
    crate::bpf::attach_to_cgroup(KIND, &program(rules), cgroup_fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel would, on (type, access, major, minor): a tiny interpreter for the
    /// instructions [`program`] emits, so the rules' meaning is tested here and the encoding in the VM.
    fn run(p: &[Insn], typ: i32, access: i32, major: u32, minor: u32) -> bool {
        let ctx = [((access as u32) << 16) | typ as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = (i.dst(), i.src());
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[i.off as usize / 4]),
                ALU64_AND_K => r[dst] &= i.imm as u64,
                ALU64_RSH_K => r[dst] >>= i.imm,
                ALU64_MOV_K => r[dst] = i.imm as u64,
                ALU64_MOV_X => r[dst] = r[src],
                JMP_JNE_K if r[dst] != i.imm as u64 => pc += i.off as usize,
                JMP_JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JMP_JNE_K | JMP_JNE_X => {}
                EXIT => return r[0] == 1,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn spec_rules(json: &str) -> Vec<LinuxDeviceCgroup> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_deny_all_list_allows_only_what_follows_and_runcs_defaults() {
        let p = program(
            &rules(&spec_rules(
                r#"[{"allow":false,"access":"rwm"},{"allow":true,"type":"b","major":8,"minor":0,"access":"r"}]"#,
            ))
            .unwrap(),
        );
        // The VM's disk (254:0): mknod yes (runc's default), read and write no.
        assert!(run(&p, DEV_BLOCK, ACC_MKNOD, 254, 0));
        assert!(!run(&p, DEV_BLOCK, ACC_READ, 254, 0));
        assert!(!run(&p, DEV_BLOCK, ACC_WRITE, 254, 0));
        // The listed one: read only.
        assert!(run(&p, DEV_BLOCK, ACC_READ, 8, 0));
        assert!(!run(&p, DEV_BLOCK, ACC_READ | ACC_WRITE, 8, 0));
        assert!(!run(&p, DEV_CHAR, ACC_READ, 8, 0), "type matters");
        // runc's defaults.
        assert!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 1, 3));
        assert!(run(&p, DEV_CHAR, ACC_READ | ACC_WRITE, 136, 7));
        assert!(!run(&p, DEV_CHAR, ACC_READ, 1, 1), "/dev/mem");
    }

    #[test]
    fn the_last_matching_rule_wins_and_no_rule_means_allowed() {
        let p = program(&rules(&spec_rules(r#"[{"allow":true,"type":"c","major":1,"access":"rwm"},{"allow":false,"type":"c","major":1,"minor":1}]"#)).unwrap());
        assert!(!run(&p, DEV_CHAR, ACC_READ, 1, 1));
        assert!(run(&p, DEV_CHAR, ACC_READ, 1, 2));
        assert!(run(&p, DEV_BLOCK, ACC_READ, 7, 0), "nothing denies it");
        // A later deny of /dev/null does not beat runc's default, which comes after every spec rule.
        let p = program(&rules(&spec_rules(r#"[{"allow":false,"type":"c","major":1,"minor":3}]"#)).unwrap());
        assert!(run(&p, DEV_CHAR, ACC_READ, 1, 3));
    }

    #[test]
    fn nothing_follows_a_rule_that_matches_everything() {
        let p = program(&rules(&spec_rules(r#"[{"allow":true,"access":"r"},{"allow":false}]"#)).unwrap());
        // The last spec rule denies all; runc's defaults come after it and still allow theirs.
        assert!(!run(&p, DEV_BLOCK, ACC_READ, 8, 0));
        assert!(run(&p, DEV_CHAR, ACC_READ, 1, 3));
        let all = [Rule {
            allow: false,
            typ: None,
            major: None,
            minor: None,
            access: ACC_READ | ACC_WRITE | ACC_MKNOD,
        }];
        let p = program(&all);
        assert_eq!(p.last().map(|i| i.code), Some(EXIT));
        assert_eq!(
            p.len(),
            6 + 2,
            "the loads, then the one verdict: no unreachable default"
        );
        assert!(!run(&p, DEV_CHAR, ACC_READ, 1, 3));
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(rules(&spec_rules(r#"[{"allow":true,"access":"rwx"}]"#)).is_err());
        assert!(rules(&spec_rules(r#"[{"allow":true,"type":"p"}]"#)).is_err());
        assert!(rules(&spec_rules(r#"[{"allow":true,"major":4294967296}]"#)).is_err());
        assert!(rules(&spec_rules(r#"[{"allow":true,"major":-1,"minor":-1}]"#)).is_ok());
    }
}
