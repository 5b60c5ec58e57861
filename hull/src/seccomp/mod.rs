//! Seccomp for every thread hull runs, on by default (Firecracker's model). The policy is data in
//! [`policy`]: one table per kind of thread. This file compiles those tables (or a `--seccomp-filter` file)
//! into BPF, installs them, and reports a forbidden call: filters *trap*, and the SIGSYS handler here
//! writes `hull: seccomp: thread <tid> made the forbidden system call <nr> (<name>)` to stderr and ends the
//! process with status [`EXIT_BAD_SYSCALL`] (Firecracker's 148).
//!
//! Where each filter goes on (all before the thread reads a client byte or touches guest data):
//! - `api`: hull's main thread, right after the API socket is bound (`vmm_mode`), and `api-running` on top
//!   of it as soon as the VM runs (the API server's `after_start` hook);
//! - `vmm` and `vcpu`: first thing in the event loop and each vCPU thread (`vmm::seccomp`);
//! - `vhost-user-*`: the backend's main thread before it binds its socket, inherited by every thread the
//!   vhost-user-backend crate starts later (`vhost_user`).
//!
//! `--no-seccomp` turns all of this off; `--seccomp-filter FILE` replaces the built-in tables with a file
//! in seccompiler's JSON format (Firecracker's `resources/seccomp/*.json`), keyed by the thread-kind names
//! above. Filters are inherited and stack, so a custom `api` filter must also allow what the `vmm` and
//! `vcpu` threads need.

#[cfg(test)]
mod compile;
// The build script compiles the tables into the binary (`builtin`); at run time only the tests read them.
#[cfg_attr(not(test), allow(dead_code))]
pub mod policy;
mod syscall_names;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use seccompiler::{sock_filter, BpfProgram, TargetArch};

#[cfg(test)]
use self::policy::Table;
use self::policy::VhostUserDevice;

/// Exit status after a forbidden system call (Firecracker's `BadSyscall`).
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// The seccomp flags every `hull` command that runs devices or a VM takes (Firecracker's names).
#[derive(Debug, Clone, Default, Args)]
pub struct SeccompArgs {
    /// Run without seccomp filters (for debugging only).
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,
    /// Use the filters in FILE (seccompiler JSON, keyed by thread kind: api, vmm, vcpu,
    /// vhost-user-blk|vsock|net|rng) instead of hull's built-in ones.
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,
}

/// The kinds of thread that get a filter of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    Api,
    /// The main thread once the VM runs: a second filter stacked on `Api`.
    ApiRunning,
    EventLoop,
    Vcpu,
    VhostUser(VhostUserDevice),
}

impl ThreadKind {
    /// The key of this kind in a `--seccomp-filter` file.
    pub fn category(self) -> &'static str {
        match self {
            ThreadKind::Api => "api",
            ThreadKind::ApiRunning => "api-running",
            ThreadKind::EventLoop => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::VhostUser(VhostUserDevice::Blk) => "vhost-user-blk",
            ThreadKind::VhostUser(VhostUserDevice::Vsock) => "vhost-user-vsock",
            ThreadKind::VhostUser(VhostUserDevice::Net) => "vhost-user-net",
            ThreadKind::VhostUser(VhostUserDevice::Rng) => "vhost-user-rng",
        }
    }

    /// hull's built-in table for this kind (compiled into the binary by the build script, see [`builtin`]).
    #[cfg(test)]
    pub fn table(self) -> Table {
        match self {
            ThreadKind::Api => policy::api(),
            ThreadKind::ApiRunning => policy::api_running(),
            ThreadKind::EventLoop => policy::event_loop(),
            ThreadKind::Vcpu => policy::vcpu(),
            ThreadKind::VhostUser(device) => policy::vhost_user(device),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[cfg(test)]
    #[error("cannot compile the built-in seccomp filter for {category} threads: {reason}")]
    Compile { category: &'static str, reason: String },
    #[error("cannot read the seccomp filter file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("the seccomp filter file {path} is invalid: {reason}")]
    ParseFile { path: PathBuf, reason: String },
    #[error("the seccomp filter file {path} has no filter for `{category}` threads")]
    MissingCategory { path: PathBuf, category: &'static str },
    #[error("cannot install the seccomp filter for {category} threads: {reason}")]
    Install { category: &'static str, reason: String },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The filters of one process, by thread kind; empty with `--no-seccomp`.
#[derive(Debug, Default)]
pub struct Filters {
    programs: HashMap<ThreadKind, Program>,
}

/// One thread kind's filter: built into the binary, or compiled at start from a `--seccomp-filter` file.
#[derive(Debug)]
enum Program {
    Builtin(&'static [sock_filter]),
    FromFile(Arc<BpfProgram>),
}

impl Program {
    fn instructions(&self) -> &[sock_filter] {
        match self {
            Program::Builtin(program) => program,
            Program::FromFile(program) => program,
        }
    }
}

impl Filters {
    /// Compiles the filters for `kinds`, from the built-in policy or `--seccomp-filter`. With filters on,
    /// this also installs the SIGSYS handler that reports a forbidden call.
    pub fn load(args: &SeccompArgs, kinds: &[ThreadKind]) -> Result<Filters, SeccompError> {
        if args.no_seccomp {
            tracing::warn!("--no-seccomp: hull's threads run without seccomp filters");
            return Ok(Filters::default());
        }
        let programs = match &args.seccomp_filter {
            Some(path) => from_file(path, kinds)?
                .into_iter()
                .map(|(kind, program)| (kind, Program::FromFile(program)))
                .collect(),
            None => kinds
                .iter()
                .map(|&kind| (kind, Program::Builtin(builtin(kind))))
                .collect(),
        };
        sigsys::install().map_err(SeccompError::Handler)?;
        Ok(Filters { programs })
    }

    /// The program for `kind`, if filters are on.
    pub fn get(&self, kind: ThreadKind) -> Option<Arc<BpfProgram>> {
        self.programs.get(&kind).map(|program| match program {
            Program::Builtin(instructions) => Arc::new(instructions.to_vec()),
            Program::FromFile(program) => Arc::clone(program),
        })
    }

    /// Installs the filter for `kind` on the calling thread (and so on every thread it starts later).
    pub fn apply_to_current_thread(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        let Some(program) = self.programs.get(&kind) else {
            return Ok(());
        };
        seccompiler::apply_filter(program.instructions()).map_err(|e| SeccompError::Install {
            category: kind.category(),
            reason: e.to_string(),
        })?;
        tracing::debug!(category = kind.category(), "seccomp filter installed");
        Ok(())
    }
}

/// One table as BPF at run time (the tests; the binary carries the built-in tables compiled, [`builtin`]).
#[cfg(test)]
pub fn compile(table: &Table, category: &'static str) -> Result<BpfProgram, SeccompError> {
    compile::to_bpf(table).map_err(|reason| SeccompError::Compile { category, reason })
}

/// hull's built-in tables as BPF, compiled by the build script from [`policy`] (with [`compile::to_bpf`],
/// as a unit test checks): read-only data in the binary, shared by every hull process, and nothing to
/// compile before the API socket is served.
mod builtin_programs {
    use seccompiler::sock_filter;

    include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));
}

/// The built-in program for `kind`.
pub fn builtin(kind: ThreadKind) -> &'static [sock_filter] {
    use builtin_programs as p;
    match kind {
        ThreadKind::Api => p::API,
        ThreadKind::ApiRunning => p::API_RUNNING,
        ThreadKind::EventLoop => p::VMM,
        ThreadKind::Vcpu => p::VCPU,
        ThreadKind::VhostUser(VhostUserDevice::Blk) => p::VHOST_USER_BLK,
        ThreadKind::VhostUser(VhostUserDevice::Vsock) => p::VHOST_USER_VSOCK,
        ThreadKind::VhostUser(VhostUserDevice::Net) => p::VHOST_USER_NET,
        ThreadKind::VhostUser(VhostUserDevice::Rng) => p::VHOST_USER_RNG,
    }
}

fn from_file(path: &Path, kinds: &[ThreadKind]) -> Result<HashMap<ThreadKind, Arc<BpfProgram>>, SeccompError> {
    let file = std::fs::File::open(path).map_err(|source| SeccompError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut map = seccompiler::compile_from_json(std::io::BufReader::new(file), TargetArch::x86_64).map_err(|e| {
        SeccompError::ParseFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    let mut programs = HashMap::new();
    for &kind in kinds {
        match map.remove(kind.category()) {
            Some(program) => {
                programs.insert(kind, Arc::new(program));
            }
            // Narrowing the main thread after the start is an extra; a file may leave it out.
            None if kind == ThreadKind::ApiRunning => {}
            None => {
                return Err(SeccompError::MissingCategory {
                    path: path.to_path_buf(),
                    category: kind.category(),
                })
            }
        }
    }
    Ok(programs)
}

/// Reporting a forbidden call: the filters return SECCOMP_RET_TRAP, the kernel sends SIGSYS to the thread,
/// and this handler names the call and ends the process.
mod sigsys {
    use std::io;

    use super::EXIT_BAD_SYSCALL;

    /// Offset of `si_syscall` in x86_64's siginfo_t (after si_signo, si_errno, si_code, padding and
    /// `si_call_addr`); the libc crate does not expose the field.
    const SI_SYSCALL_OFFSET: usize = 24;

    extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
        // Async-signal-safe only: no allocation, no locks; raw write(2) and _exit(2), which every table allows.
        // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler; for SIGSYS from seccomp,
        // si_syscall is an int at this offset.
        let nr = unsafe { std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL_OFFSET) as *const i32) };
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let mut buf = [0u8; 160];
        let mut len = 0;
        for part in [
            Text::Str("hull: seccomp: thread "),
            Text::Num(tid as i64),
            Text::Str(" made the forbidden system call "),
            Text::Num(i64::from(nr)),
            Text::Str(" ("),
            Text::Str(super::syscall_names::name(i64::from(nr))),
            Text::Str("); exiting\n"),
        ] {
            len += part.write(&mut buf[len..]);
        }
        // SAFETY: `buf[..len]` is initialised; writing to stderr and exiting are async-signal-safe.
        unsafe {
            libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
            libc::_exit(EXIT_BAD_SYSCALL);
        }
    }

    enum Text {
        Str(&'static str),
        Num(i64),
    }

    impl Text {
        /// Writes into `out` as far as it fits; returns the bytes written.
        fn write(&self, out: &mut [u8]) -> usize {
            let mut digits = [0u8; 20];
            let bytes: &[u8] = match self {
                Text::Str(s) => s.as_bytes(),
                Text::Num(n) => {
                    let mut v = n.unsigned_abs();
                    let mut i = digits.len();
                    loop {
                        i -= 1;
                        digits[i] = b'0' + (v % 10) as u8;
                        v /= 10;
                        if v == 0 {
                            break;
                        }
                    }
                    &digits[i..]
                }
            };
            let n = bytes.len().min(out.len());
            out[..n].copy_from_slice(&bytes[..n]);
            n
        }
    }

    pub fn install() -> io::Result<()> {
        // SAFETY: a zeroed sigaction is valid; the fields are set before use.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: installing a handler for SIGSYS with a valid sigaction.
        if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
