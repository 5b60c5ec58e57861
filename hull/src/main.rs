//! The `hull` binary: parses the command line and hands it to one of three commands.
//!
//! - no subcommand: the Firecracker-compatible microVM with its REST API and/or config file ([`vmm_mode`],
//!   on top of the `api_server` library);
//! - `hull run`: a container in a fresh microVM, through hull-agent ([`run`]);
//! - `hull vhost-user {blk,vsock,net}`: one virtio device served to a vhost-user frontend ([`vhost_user`]).

mod cli;
mod logging;
mod run;
mod seccomp;
mod signals;
mod vhost_user;
mod vmm_mode;

use clap::Parser;

use crate::cli::Cli;
use crate::signals::SignalFd;

fn main() {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        match command {
            cli::Command::VhostUser(cmd) => std::process::exit(vhost_user::run(cmd)),
            cli::Command::Run(args) => std::process::exit(run::run(*args)),
        }
    }
    logging::init_with_format(cli.vmm.log_level, cli.vmm.output.log_format);
    // The VMM serves one VM (a whole pod under the shim): its security events name it by --id.
    hull_logging::security::set_identity(&cli.vmm.id, "");
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = match SignalFd::for_termination_signals() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up signal handling");
            std::process::exit(vmm_mode::EXIT_GENERIC_ERROR);
        }
    };
    let code = vmm_mode::run(cli.vmm, &signals);
    std::process::exit(code);
}
