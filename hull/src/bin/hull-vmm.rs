//! `hull-vmm`: the image of every microVM process. It takes exactly the flags of `hull` without a
//! subcommand (Firecracker's flags: `--api-sock`, `--config-file`, `--no-api`, ...) and runs that mode,
//! and nothing else is linked into it (see the `hull` library's top). `hull --api-sock ...` execs it.

use clap::Parser;

fn main() {
    hull::lean_vmm_start();
    hull::one_heap_for_all_threads();
    let cli = hull::vmm_cli::VmmCli::parse();
    hull::release_stack_below_here();
    hull::vmm_main(cli.vmm)
}
