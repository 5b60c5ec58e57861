//! The `hull` binary: parses the command line and hands it to one of three commands.
//!
//! - no subcommand: the Firecracker-compatible microVM with its REST API and/or config file ([`vmm_mode`],
//!   on top of the `api_server` library);
//! - `hull run`: a container in a fresh microVM, through hull-agent ([`run`]);
//! - `hull vhost-user {blk,vsock,net}`: one virtio device served to a vhost-user frontend ([`vhost_user`]);
//! - `hull rebase-snap`: merges a diff snapshot's memory file onto its base (Firecracker's rebase-snap).

mod cli;
mod logging;
mod run;
mod seccomp;
mod signals;
mod vhost_user;
mod vmm_mode;

use crate::signals::SignalFd;

fn main() {
    one_heap_for_all_threads();
    let cli = cli::parse_args();
    release_stack_below_here();
    if let Some(command) = cli.command {
        match command {
            cli::Command::VhostUser(cmd) => std::process::exit(vhost_user::run(cmd)),
            cli::Command::Run(args) => std::process::exit(run::run(*args)),
            cli::Command::RebaseSnap(args) => std::process::exit(rebase_snap(&args)),
            cli::Command::Template(cmd) => std::process::exit(run::template::run(cmd)),
        }
    }
    if let Some(code) = firecracker_only_flags(&cli.vmm.firecracker) {
        std::process::exit(code);
    }
    let fc = &cli.vmm.firecracker;
    match &fc.log_path {
        Some(path) => {
            let log = logging::FileLog {
                path: path.clone(),
                show_level: fc.show_level,
                show_log_origin: fc.show_log_origin,
                module: fc.module.clone(),
                instance_id: cli.vmm.id.clone(),
            };
            if let Err(e) = logging::init_file(cli.vmm.log_level, log) {
                eprintln!("hull: cannot open --log-path {}: {e}", path.display());
                std::process::exit(vmm_mode::EXIT_GENERIC_ERROR);
            }
        }
        None => logging::init_with_sink(cli.vmm.log_level, cli.vmm.output.log_format, cli.vmm.id.clone()),
    }
    let metadata = match check_firecracker_files(fc) {
        Ok(metadata) => metadata,
        Err(e) => {
            tracing::error!("{e}");
            std::process::exit(vmm_mode::EXIT_BAD_CONFIGURATION);
        }
    };
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
    let code = vmm_mode::run(cli.vmm, &signals, metadata);
    std::process::exit(code);
}

/// Before any thread starts: hull's few threads (a VMM's event loop and vCPUs) allocate little and rarely,
/// yet glibc gives every thread that allocates an arena of its own, private dirty pages in every process;
/// they share the main one instead (each thread's cache of small blocks still spares most allocations the
/// arena's lock).
fn one_heap_for_all_threads() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's tuning, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// clap's derive builds the whole command tree (every flag of every subcommand, `hull run`'s 32 among them)
/// in a few very large stack frames, about 40 KiB of the main thread's stack below `main`. Once the command
/// line is parsed those pages are dead, but they would stay dirty for the life of the process, in every idle
/// VMM: give them back. Later calls that reach as deep get fresh zeroed pages, as for any stack growth.
/// The VMM calls it again once the VM runs (`vmm_mode`), for the frames that built the VM. Must only be
/// called on the main thread, while its filter still allows `openat` (it reads `/proc/self/maps`).
#[inline(never)]
pub(crate) fn release_stack_below_here() {
    // Everything more than this below the current frame is dead: the calls made from here (reading
    // /proc/self/maps, madvise) have returned or use far less.
    const MARGIN: usize = 8 * 1024;
    let here = std::hint::black_box(0u8);
    let here = std::ptr::addr_of!(here) as usize;
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let Some(start) = maps
        .lines()
        .find(|line| line.ends_with("[stack]"))
        .and_then(|line| line.split('-').next())
        .and_then(|start| usize::from_str_radix(start, 16).ok())
    else {
        return;
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let end = here.saturating_sub(MARGIN) & !(page - 1);
    if (start..here).contains(&end) && end > start {
        // SAFETY: [start, end) is the main thread's stack below this frame by more than MARGIN, which
        // nothing live lies in (this is the main thread, and the frames that used it have returned).
        // MADV_DONTNEED on it only makes those pages read as zero when touched again.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// `--snapshot-version` prints the snapshot format hull writes; `--describe-snapshot FILE` the format of
/// FILE (its header only; a file that is not a hull snapshot is refused, exit 1). Both then exit.
fn firecracker_only_flags(fc: &cli::FirecrackerArgs) -> Option<i32> {
    if fc.snapshot_version {
        println!("{}", vmm::snapshot::format::FORMAT_VERSION);
        return Some(0);
    }
    if let Some(file) = &fc.describe_snapshot {
        return Some(match vmm::snapshot::describe(file) {
            Ok(version) => {
                println!("{version}");
                0
            }
            Err(e) => {
                eprintln!("hull: --describe-snapshot: {e}");
                vmm_mode::EXIT_GENERIC_ERROR
            }
        });
    }
    None
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

/// Reads the files Firecracker's flags name, before any seccomp filter: `--metadata` must be JSON within
/// the MMDS size limit (it becomes the data store's initial content); `--metrics-path` is opened by
/// `vmm_mode`.
fn check_firecracker_files(fc: &cli::FirecrackerArgs) -> Result<Option<serde_json::Value>, String> {
    let mut metadata = None;
    if let Some(path) = &fc.metadata {
        let text = std::fs::read(path).map_err(|e| format!("--metadata {}: {e}", path.display()))?;
        if text.len() > fc.mmds_limit() {
            return Err(format!(
                "--metadata {}: {} bytes, over the MMDS size limit of {} bytes",
                path.display(),
                text.len(),
                fc.mmds_limit()
            ));
        }
        let value = serde_json::from_slice::<serde_json::Value>(&text)
            .map_err(|e| format!("--metadata {}: not JSON: {e}", path.display()))?;
        metadata = Some(value);
    }
    if fc.enable_pci {
        tracing::info!("--enable-pci: the virtio devices are virtio-pci functions on PCI bus 0 (MSI-X interrupts)");
    }
    Ok(metadata)
}
