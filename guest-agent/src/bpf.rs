//! The few eBPF pieces the agent's cgroup programs share: the instruction encoding, the opcodes they use,
//! and loading a program and attaching it to a cgroup with the bpf(2) system call. The programs themselves
//! are built by their owners ([`crate::device_filter`], [`crate::vsock_guard`]); no other library is needed
//! for programs of a dozen instructions.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;

/// One eBPF instruction, as `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

#[cfg(test)]
impl Insn {
    pub fn dst(&self) -> usize {
        (self.regs & 0xf) as usize
    }

    pub fn src(&self) -> usize {
        (self.regs >> 4) as usize
    }
}

pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0xf),
        off,
        imm,
    }
}

// Opcodes: class | op | source.
pub const LDX_MEM_W: u8 = 0x61;
pub const ALU64_AND_K: u8 = 0x57;
pub const ALU64_RSH_K: u8 = 0x77;
pub const ALU64_MOV_K: u8 = 0xb7;
pub const ALU64_MOV_X: u8 = 0xbf;
pub const JMP_JNE_K: u8 = 0x55;
pub const JMP_JNE_X: u8 = 0x5d;
pub const EXIT: u8 = 0x95;

/// What a program is and where it goes: `bpf_prog_type`, `bpf_attach_type`, and a name (at most 15 bytes)
/// that `bpftool prog` shows.
#[derive(Debug, Clone, Copy)]
pub struct Kind {
    pub prog_type: u32,
    pub attach_type: u32,
    pub name: &'static str,
}

fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> io::Result<i32> {
    // SAFETY: bpf(2) reads (and for some commands writes) at most `size` bytes of the attribute buffer.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as libc::c_uint) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// `BPF_PROG_LOAD` of `insns`; with `log`, the verifier writes its reasoning there (level 1).
fn load_once(kind: Kind, insns: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&kind.prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&(insns.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    if let Some(log) = log {
        attr[24..28].copy_from_slice(&1u32.to_ne_bytes());
        attr[28..32].copy_from_slice(&(log.len() as u32).to_ne_bytes());
        attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    }
    let name = kind.name.as_bytes();
    let n = name.len().min(15);
    attr[48..48 + n].copy_from_slice(&name[..n]);
    attr[68..72].copy_from_slice(&kind.attach_type.to_ne_bytes());
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: bpf(BPF_PROG_LOAD) returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads `insns`; a refusal carries the verifier's last lines.
pub fn load(kind: Kind, insns: &[Insn]) -> io::Result<OwnedFd> {
    load_once(kind, insns, None).map_err(|e| {
        // Load again, only to say why.
        let mut log = vec![0u8; 1 << 20];
        let _ = load_once(kind, insns, Some(&mut log));
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        io::Error::new(e.kind(), format!("loading {}: {e}: {}", kind.name, tail.join(" | ")))
    })
}

/// Loads `insns` and attaches the program to the cgroup directory open as `cgroup_fd`, with no flags: no
/// program of the same attach type can be added below it, and the attachment keeps the program alive (its
/// descriptor is closed here).
pub fn attach_to_cgroup(kind: Kind, insns: &[Insn], cgroup_fd: i32) -> io::Result<()> {
    let prog = load(kind, insns)?;
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&(cgroup_fd as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(prog.as_raw_fd() as u32).to_ne_bytes());
    attr[8..12].copy_from_slice(&kind.attach_type.to_ne_bytes());
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|e| io::Error::new(e.kind(), format!("attaching {}: {e}", kind.name)))?;
    Ok(())
}
