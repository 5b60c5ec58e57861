//! The `hull` binary: parses the command line and hands it to one of its commands.
//!
//! - no subcommand: the Firecracker-compatible microVM with its REST API and/or config file. It execs the
//!   lean `hull-vmm` binary beside it when there is one from the same build ([`exec_lean_vmm`]), else runs
//!   the same mode in this process (the `hull` library, [`hull::vmm_main`]);
//! - `hull run`: a container in a fresh microVM, through hull-agent ([`run`]);
//! - `hull vhost-user {blk,vsock,net}`: one virtio device served to a vhost-user frontend ([`vhost_user`]);
//! - `hull template create`: a snapshot to start containers from ([`run::template`]);
//! - `hull rebase-snap`: merges a diff snapshot's memory file onto its base (Firecracker's rebase-snap).

mod cli;
mod lean_exec;
mod run;
mod vhost_user;

// `crate::logging` and `crate::seccomp` in the subcommands' modules are the library's.
use hull::{logging, seccomp, vmm_mode};

fn main() {
    if !cli::may_name_a_subcommand() {
        lean_exec::exec_lean_vmm();
    }
    hull::one_heap_for_all_threads();
    let cli = cli::parse_args();
    hull::release_stack_below_here();
    if let Some(command) = cli.command {
        match command {
            cli::Command::VhostUser(cmd) => std::process::exit(vhost_user::run(cmd)),
            cli::Command::Run(args) => std::process::exit(run::run(*args)),
            cli::Command::RebaseSnap(args) => std::process::exit(rebase_snap(&args)),
            cli::Command::Template(cmd) => std::process::exit(run::template::run(cmd)),
        }
    }
    hull::vmm_main(cli.vmm)
}

/// `hull rebase-snap`: lays a diff snapshot's memory file onto the full one it follows (Firecracker's
/// rebase-snap tool), so the result restores with the diff's state file.
fn rebase_snap(args: &cli::RebaseSnapArgs) -> i32 {
    match vmm::snapshot::memory::merge_diff(&args.diff_file, &args.base_file) {
        Ok(bytes) => {
            println!(
                "merged {bytes} bytes of {} onto {}",
                args.diff_file.display(),
                args.base_file.display()
            );
            0
        }
        Err(e) => {
            eprintln!("hull rebase-snap: {e}");
            vmm_mode::EXIT_GENERIC_ERROR
        }
    }
}
