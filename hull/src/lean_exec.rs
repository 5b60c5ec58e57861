//! `hull` started as a microVM (no subcommand) replaces its image with the lean `hull-vmm` beside it, in
//! the same process (same PID, arguments, environment and file descriptors), before it does anything else.
//! The microVM then carries none of the subcommands' code: per microVM process that is about 50 KiB less
//! private memory (a static PIE's relocated data) and 0.9 MiB less resident code (README, issue 14).
//!
//! Only a `hull-vmm` of the same build is run, decided as hull's runtime decides which binary a VMM runs
//! (`hull_runtime::vmm_binary::for_vmm`, from the build-ID ELF note both files carry): a `hull-vmm` left
//! from another build, or one without the note, is not. Then, or without a `hull-vmm` beside it (e.g. in a
//! jail that holds `hull` alone), or when the exec fails, `hull` runs the microVM itself.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Execs `hull-vmm` from this executable's directory; returns only if it does not (see the module doc).
pub fn exec_lean_vmm() {
    let Ok(me) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let vmm = hull_runtime::vmm_binary::for_vmm(&me);
    if vmm != me {
        exec_with_this_command_line(&vmm);
    }
}

/// Execs `program` with this process's arguments (`argv[0]` included) and environment; returns only if
/// that fails.
fn exec_with_this_command_line(program: &Path) {
    let Ok(path) = CString::new(program.as_os_str().as_bytes()) else {
        return;
    };
    let Ok(args) = std::env::args_os()
        .map(|arg| CString::new(arg.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|arg| arg.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: `path` and every argument are NUL-terminated strings that outlive the call, and `argv` ends
    // with a null pointer. execv returns only on failure.
    unsafe { libc::execv(path.as_ptr(), argv.as_ptr()) };
}
