//! The microVM mode of hull, one microVM per process (Firecracker's flags and REST API), as a library that
//! both binaries run:
//!
//! - `hull-vmm` (`src/bin/hull-vmm.rs`) is nothing else: the image every microVM process runs. Everything in
//!   a process's image costs each microVM, even code it never calls: a static PIE's relocated data is a
//!   private copy in every process, and the kernel maps code 64 KiB at a time around each page that runs.
//! - `hull` (`src/main.rs`) adds the subcommands (`hull run`, `hull vhost-user`, `hull template`,
//!   `hull rebase-snap`). Started without one, it execs the `hull-vmm` beside it, so a microVM started as
//!   `hull --api-sock ...` runs the lean image too, in the same process.
//!
//! [`vmm_main`] runs the mode: logging, the Firecracker-only flags and files, signals, then [`vmm_mode`].

pub mod logging;
pub mod seccomp;
pub mod signals;
pub mod vmm_cli;
pub mod vmm_mode;

use crate::signals::SignalFd;
use crate::vmm_cli::VmmArgs;

/// This build's identity, the same in `hull` and `hull-vmm` built together: `build.rs` makes a new one
/// whenever a source file of hull, its VMM crates or the lock file changes.
pub const BUILD_ID: &str = env!("HULL_BUILD_ID");
/// [`BUILD_ID`] as an ELF note (name `hull`, type [`BUILD_NOTE_TYPE`], the ID's bytes zero-padded to 64), in
/// both binaries' note segment at the front of the file: `hull` (before it execs `hull-vmm`) and hull's
/// runtime read it from both files to tell, without running either, whether they are of one build
/// (`hull_runtime::vmm_binary`).
#[link_section = ".note.hull.build"]
#[used]
pub static BUILD_NOTE: BuildNote = BuildNote::new(BUILD_ID);

/// The type of the `hull` ELF note that holds the build ID.
pub const BUILD_NOTE_TYPE: u32 = 1;

/// An ELF note's layout (`Elf64_Nhdr`, then the name and the descriptor, each padded to 4 bytes).
#[repr(C, align(4))]
pub struct BuildNote {
    namesz: u32,
    descsz: u32,
    kind: u32,
    name: [u8; 8],
    desc: [u8; 64],
}

impl BuildNote {
    const fn new(id: &str) -> BuildNote {
        let bytes = id.as_bytes();
        let mut desc = [0u8; 64];
        let mut i = 0;
        while i < bytes.len() && i < desc.len() {
            desc[i] = bytes[i];
            i += 1;
        }
        BuildNote {
            namesz: 5,
            descsz: 64,
            kind: BUILD_NOTE_TYPE,
            name: *b"hull\0\0\0\0",
            desc,
        }
    }
}

/// Runs the microVM mode with its parsed command line and exits with its status.
pub fn vmm_main(vmm: VmmArgs) -> ! {
    if let Some(code) = firecracker_only_flags(&vmm.firecracker) {
        std::process::exit(code);
    }
    let fc = &vmm.firecracker;
    match &fc.log_path {
        Some(path) => {
            let log = logging::FileLog {
                path: path.clone(),
                show_level: fc.show_level,
                show_log_origin: fc.show_log_origin,
                module: fc.module.clone(),
                instance_id: vmm.id.clone(),
            };
            if let Err(e) = logging::init_file(vmm.log_level, log) {
                eprintln!("hull: cannot open --log-path {}: {e}", path.display());
                std::process::exit(vmm_mode::EXIT_GENERIC_ERROR);
            }
        }
        None => logging::init_with_sink(vmm.log_level, vmm.output.log_format, vmm.id.clone()),
    }
    let metadata = match check_firecracker_files(fc) {
        Ok(metadata) => metadata,
        Err(e) => {
            tracing::error!("{e}");
            std::process::exit(vmm_mode::EXIT_BAD_CONFIGURATION);
        }
    };
    // The VMM serves one VM (a whole pod under the shim): its security events name it by --id.
    hull_logging::security::set_identity(&vmm.id, "");
    // Before any thread exists, so every thread inherits the blocked mask.
    let signals = match SignalFd::for_termination_signals() {
        Ok(signals) => signals,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up signal handling");
            std::process::exit(vmm_mode::EXIT_GENERIC_ERROR);
        }
    };
    let code = vmm_mode::run(vmm, &signals, metadata);
    std::process::exit(code);
}

/// Before any thread starts: hull's few threads (a VMM's event loop and vCPUs) allocate little and rarely,
/// yet glibc gives every thread that allocates an arena of its own, private dirty pages in every process;
/// they share the main one instead (each thread's cache of small blocks still spares most allocations the
/// arena's lock).
pub fn one_heap_for_all_threads() {
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
pub fn release_stack_below_here() {
    // Everything more than this below the current frame is dead: reading /proc/self/maps has returned by
    // the time madvise runs, and madvise's own frames take a few hundred bytes. (8 KiB kept one more
    // page dirty in every idle VMM: 24 -> 16-20 KiB of main-thread stack, measured.)
    const MARGIN: usize = 4 * 1024;
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
fn firecracker_only_flags(fc: &vmm_cli::FirecrackerArgs) -> Option<i32> {
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

/// Reads the files Firecracker's flags name, before any seccomp filter: `--metadata` must be JSON within
/// the MMDS size limit (it becomes the data store's initial content); `--metrics-path` is opened by
/// `vmm_mode`.
fn check_firecracker_files(fc: &vmm_cli::FirecrackerArgs) -> Result<Option<serde_json::Value>, String> {
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
