//! The `hull` binary: parses the command line, then runs the Firecracker-compatible mode: listen on the
//! API socket (first, so clients can connect within milliseconds), boot from `--config-file` if given, and
//! serve until the guest ends or a termination signal arrives. The process exits with the guest's exit
//! code (0 after a guest reset), 128 + signal on a signal, 152 for a bad configuration, 1 otherwise.

mod cli;
mod config_file;
mod devices;
mod http;
mod instance;
mod logging;
mod routes;
mod run;
mod server;
mod signals;
mod vhost_user_cmd;

use clap::Parser;
use vmm::{SerialOutput, VmmOptions};

use crate::cli::{Cli, VmmArgs};
use crate::instance::Instance;
use crate::server::ApiSocket;
use crate::signals::SignalFd;

/// Exit status for a configuration that cannot boot (Firecracker's `BadConfiguration`).
const EXIT_BAD_CONFIGURATION: i32 = 152;
/// Exit status for any other failure of hull itself.
const EXIT_GENERIC_ERROR: i32 = 1;

fn main() {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        match command {
            cli::Command::VhostUser(cmd) => std::process::exit(vhost_user_cmd::run(cmd)),
            cli::Command::Run(args) => std::process::exit(run::run(*args)),
        }
    }
    logging::init(cli.vmm.log_level);
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = match SignalFd::for_termination_signals() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up signal handling");
            std::process::exit(EXIT_GENERIC_ERROR);
        }
    };
    let code = run_vmm(cli.vmm, &signals);
    std::process::exit(code);
}

/// The Firecracker-compatible mode. Returns the process exit status; the API socket is removed before
/// this returns.
fn run_vmm(args: VmmArgs, signals: &SignalFd) -> i32 {
    let socket = match args.api_sock.as_deref().map(ApiSocket::bind).transpose() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_GENERIC_ERROR;
        }
    };
    if let Some(socket) = &socket {
        tracing::info!("API server listening on {}", socket.path().display());
    }

    let serial = match args.serial_out {
        Some(path) => SerialOutput::File(path),
        None => SerialOutput::Stdout,
    };
    let mut instance = Instance::new(
        args.id,
        VmmOptions {
            boot_timer: args.boot_timer,
            serial,
        },
    );

    if let Some(path) = &args.config_file {
        if let Err(e) = config_file::boot_from_file(path, &mut instance) {
            tracing::error!("{e}");
            return EXIT_BAD_CONFIGURATION;
        }
    }

    let outcome = server::run(&mut instance, socket.as_ref(), signals);
    // The socket goes first: whatever happens to the VM below, clients must not find a dead socket.
    drop(socket);
    match outcome {
        Ok(outcome @ server::Outcome::GuestExited(_)) => {
            // The vCPU threads have ended; dropping the VM joins them and releases its resources.
            drop(instance);
            outcome.exit_code()
        }
        Ok(outcome @ server::Outcome::Signal(_)) => {
            // Asked to stop while the guest may still run: leave the VM to the kernel's process
            // clean-up rather than wait on vCPU threads, so a termination signal always ends hull.
            std::mem::forget(instance);
            outcome.exit_code()
        }
        Err(e) => {
            tracing::error!("{e}");
            std::mem::forget(instance);
            EXIT_GENERIC_ERROR
        }
    }
}
