//! `hull` started as a microVM (no subcommand) replaces its image with the lean `hull-vmm` beside it, in
//! the same process (same PID, arguments, environment and file descriptors), before it does anything else.
//! The microVM then carries none of the subcommands' code: per microVM process that is about 50 KiB less
//! private memory (a static PIE's relocated data) and 0.9 MiB less resident code (README, issue 14).
//!
//! Only a `hull-vmm` of the same build is run: `hull` passes its build ID ([`hull::BUILD_ID`]) in
//! [`EXPECT_BUILD`], and a `hull-vmm` of another build (say, left over from an earlier `cargo build`) execs
//! `hull` back with [`NO_LEAN_EXEC`] set, which then runs the microVM itself ([`hull::lean_vmm_start`]).
//! Without a `hull-vmm` beside it (e.g. in a jail that holds `hull` alone), or when the exec fails, `hull`
//! runs the microVM itself.

use hull::{EXPECT_BUILD, NO_LEAN_EXEC};

/// Execs `hull-vmm` from this executable's directory; returns only if it does not (see the module doc).
pub fn exec_lean_vmm() {
    if std::env::var_os(NO_LEAN_EXEC).is_some() {
        std::env::remove_var(NO_LEAN_EXEC);
        return;
    }
    let Ok(me) = std::fs::read_link("/proc/self/exe") else {
        return;
    };
    let lean = me.with_file_name("hull-vmm");
    if !lean.is_file() {
        return;
    }
    std::env::set_var(EXPECT_BUILD, hull::BUILD_ID);
    hull::exec_with_this_command_line(&lean);
    std::env::remove_var(EXPECT_BUILD);
}
