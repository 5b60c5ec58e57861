//! `hull --api-sock PATH` / `hull --no-api --config-file FILE`: the Firecracker-compatible mode, one microVM
//! per process. It listens on the API socket first (so clients can connect within milliseconds), boots from
//! `--config-file` if given, and serves until the guest ends or a termination signal arrives. Requests and
//! config files are handled by the `api_server` library; this file owns the order of those steps and the
//! process exit status: the guest's (0 after a guest reset), 128 + signal on a signal, 152 for a bad
//! configuration, 1 otherwise.

use api_server::config_file;
use api_server::instance::Instance;
use api_server::server::{self, ApiSocket};
use vmm::{SerialOutput, ThreadFilters, VmmOptions};

use crate::seccomp::{Filters, ThreadKind};
use crate::signals::SignalFd;
use crate::vmm_cli::VmmArgs;

/// Exit status for a configuration that cannot boot (Firecracker's `BadConfiguration`).
pub const EXIT_BAD_CONFIGURATION: i32 = 152;
/// Exit status for any other failure of hull itself.
pub const EXIT_GENERIC_ERROR: i32 = 1;

/// Runs the Firecracker-compatible mode. Returns the process exit status; the API socket is removed
/// before this returns.
pub fn run(args: VmmArgs, signals: &SignalFd, metadata: Option<serde_json::Value>) -> i32 {
    let kinds = [
        ThreadKind::Api,
        ThreadKind::ApiRunning,
        ThreadKind::EventLoop,
        ThreadKind::Vcpu,
    ];
    let filters = match Filters::load(&args.seccomp, &kinds) {
        Ok(filters) => filters,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_BAD_CONFIGURATION;
        }
    };
    // Firecracker listens on its default socket when none is given; so does hull, unless --no-api.
    let api_sock = match (&args.api_sock, args.no_api) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => Some(std::path::PathBuf::from(crate::vmm_cli::DEFAULT_API_SOCK)),
        (None, true) => None,
    };
    let socket = match api_sock.as_deref().map(ApiSocket::bind).transpose() {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_GENERIC_ERROR;
        }
    };
    if let Some(socket) = &socket {
        tracing::info!("API server listening on {}", socket.path().display());
    }
    // Before the first client byte or config file is read; every thread started later inherits it.
    if let Err(e) = filters.apply_to_current_thread(ThreadKind::Api) {
        tracing::error!("{e}");
        return EXIT_GENERIC_ERROR;
    }

    let serial = match args.serial_out {
        Some(path) => SerialOutput::CappedFile {
            path,
            max_bytes: args.output.serial_out_max_bytes,
        },
        None => SerialOutput::Stdout,
    };
    let mut instance = Instance::new(
        args.id,
        VmmOptions {
            boot_timer: args.boot_timer,
            serial,
            enable_pci: args.firecracker.enable_pci,
            seccomp: ThreadFilters {
                event_loop: filters.get(ThreadKind::EventLoop),
                vcpu: filters.get(ThreadKind::Vcpu),
            },
        },
    );

    instance.set_startup(api_server::metrics::Startup {
        process_startup_time_us: since(libc::CLOCK_MONOTONIC, args.firecracker.start_time_us),
        process_startup_time_cpu_us: since(libc::CLOCK_PROCESS_CPUTIME_ID, args.firecracker.start_time_cpu_us),
    });
    instance.set_mmds_size_limit(args.firecracker.mmds_limit());
    if let Some(metadata) = metadata {
        if let Err(e) = instance.mmds().put(metadata) {
            tracing::error!("--metadata: {e}");
            return EXIT_BAD_CONFIGURATION;
        }
    }
    if let Some(path) = args.firecracker.metrics_path.clone() {
        let metrics = api_server::logger::MetricsConfig { metrics_path: path };
        if let Err(e) = instance.put_metrics(metrics) {
            tracing::error!("--metrics-path: {e}");
            return EXIT_BAD_CONFIGURATION;
        }
    }

    if let Some(path) = &args.config_file {
        if let Err(e) = config_file::boot_from_file(path, &mut instance) {
            tracing::error!("{e}");
            return EXIT_BAD_CONFIGURATION;
        }
    }

    // Once the VM runs, this thread only serves the API and cleans up: narrow its filter to that. The
    // stack pages that building the VM dirtied go first (the narrowed filter has no `openat` to find them).
    let mut after_start = || {
        crate::release_stack_below_here();
        filters
            .apply_to_current_thread(ThreadKind::ApiRunning)
            .map_err(|e| e.to_string())?;
        release_free_heap();
        Ok(())
    };
    let outcome = server::run(&mut instance, socket.as_ref(), signals, &mut after_start);
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

/// Hands the heap that building the VM used and freed (file contents, parsed config, KVM set-up buffers)
/// back to the kernel: glibc keeps freed memory mapped, and it stays in every idle VMM's RSS and PSS
/// otherwise. Uses only brk and madvise(MADV_DONTNEED), which every thread's seccomp filter allows.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Microseconds on `clock` since `start` (Firecracker's start-up metrics); 0 without a start.
fn since(clock: libc::clockid_t, start: Option<u64>) -> u64 {
    let Some(start) = start else { return 0 };
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only the timespec it is given, which lives on this stack.
    unsafe { libc::clock_gettime(clock, &mut now) };
    (now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000).saturating_sub(start)
}
