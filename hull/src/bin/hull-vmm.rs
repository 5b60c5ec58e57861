//! `hull-vmm`: the image of every microVM process. It takes exactly the flags of `hull` without a
//! subcommand (Firecracker's flags: `--api-sock`, `--config-file`, `--no-api`, ...) and runs that mode,
//! and nothing else is linked into it (see the `hull` library's top), not even clap: its command line is
//! read by [`hull::vmm_cli::parse_lean`]. `hull --api-sock ...` execs it.

use hull::vmm_cli::{parse_lean, LeanCommand, LEAN_HELP};

/// clap's exit status for a command line it refuses.
const EXIT_USAGE: i32 = 2;

fn main() {
    hull::one_heap_for_all_threads();
    let args = match parse_lean(std::env::args_os()) {
        Ok(LeanCommand::Run(args)) => args,
        Ok(LeanCommand::Help) => {
            print!("{LEAN_HELP}");
            std::process::exit(0);
        }
        Ok(LeanCommand::Version) => {
            println!("hull {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!(
                "error: {e}\n\nUsage: hull [OPTIONS]\n       hull <COMMAND>\n\nFor more information, try '--help'."
            );
            std::process::exit(EXIT_USAGE);
        }
    };
    hull::release_stack_below_here();
    hull::vmm_main(*args)
}
