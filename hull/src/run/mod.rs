//! `hull run`: run one OCI workload in a fresh microVM and exit with its status.
//!
//! Sequence: choose the backend (and say which) → turn the rootfs into a block image → boot the VM with the
//! agent's initramfs (with `--from-snapshot`: restore a clone of a template made by `hull template create`,
//! give its slots the disks, resume it) → connect to hull-agent over the hybrid vsock → sync the guest
//! clock (and, in a clone, reseed the guest's RNG) → create the
//! container (spec from [`spec`], the agent's request from [`hull_runtime::container`] as the shim builds it)
//! → attach stdio streams → start → forward signals and terminal size while streaming stdio → wait → drain
//! output → kill the VM and its backends (after removing the container and a clean power-off only when a
//! disk of the caller's own was mounted read-write, or the agent policy lets other clients in), remove the
//! run directory. The exit
//! status is the container's (128+N when signal N ended it), 127/126 when its program is missing or cannot
//! be run, 125 when hull itself failed. Everything created
//! is owned by a guard ([`guard`]), so early returns and Ctrl-C leave nothing.
//!
//! Trust: the guest is not trusted; what the agent answers is only used as numbers and bytes to copy.

pub mod template;
mod tty;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Args;
use hull_agent_protocol::policy::{Policy, ALLOW_VSOCK_ANNOTATION, INIT_ANNOTATION};
use hull_agent_protocol::stdio::Stream;

use crate::logging::LogLevel;
use hull_runtime::backend::{self, BackendKind, VmLaunchConfig};
use hull_runtime::container::{GuestDisk, NewContainer, Streams, VolumeMount};
use hull_runtime::image_cache::ImageCache;
use hull_runtime::template::Template;
use hull_runtime::{agent, console_tail, guard, image, jail, spec};

/// Exit status when hull itself failed (Docker's convention).
const EXIT_HULL_FAILED: i32 = 125;
const CONTAINER_ID: &str = "run";
/// The image cache's directory in the build cache ([`hull_runtime::build_cache`]).
const ROOTFS_IMAGE_CACHE: &str = "rootfs-images";
/// `--cpus` and `--mem` when not given.
pub(crate) const DEFAULT_CPUS: u8 = 1;
pub(crate) const DEFAULT_MEM_MIB: u32 = 256;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Container root file system: a directory (packed into an ext4 image, kept in the image cache for the
    /// next run of the same unchanged directory) or an ext4/erofs image file.
    #[arg(long, value_name = "DIR|IMAGE")]
    pub rootfs: PathBuf,
    /// Pack a rootfs directory for this run alone, neither using nor filling the image cache
    /// (`$HULL_CACHE/rootfs-images`, else `~/.cache/hull/rootfs-images`).
    #[arg(long)]
    pub no_image_cache: bool,
    #[command(flatten)]
    pub machine: MachineArgs,
    /// Allocate a terminal for the container (interactive).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variable K=V (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR", default_value = "/")]
    pub workdir: String,
    /// User (and group) inside the container, as numbers.
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// Attach the VM's eth0 to this existing TAP device.
    #[arg(long, value_name = "TAP")]
    pub net: Option<String>,
    /// eth0's IPv4 address in CIDR form (with --net).
    #[arg(long, value_name = "CIDR", requires = "net")]
    pub ip: Option<String>,
    /// Default gateway (with --net).
    #[arg(long, value_name = "IP", requires = "net")]
    pub gateway: Option<String>,
    /// DNS server (with --net; repeatable).
    #[arg(long, value_name = "IP", requires = "net")]
    pub dns: Vec<String>,
    /// Extra block device: SRC (a directory, packed into ext4 — changes die with the VM — or an ext4/erofs
    /// image file) mounted at DEST in the container; `:ro` for read-only (repeatable).
    #[arg(short = 'v', long = "volume", value_name = "SRC:DEST[:ro]", value_parser = parse_volume)]
    pub volumes: Vec<VolumeArg>,
    /// OCI seccomp profile (the `linux.seccomp` object, JSON) for the container's processes.
    #[arg(long, value_name = "FILE")]
    pub seccomp: Option<PathBuf>,
    /// Add a capability to Docker's default set (`NET_ADMIN`, `CAP_SYS_ADMIN`, `ALL`; repeatable), as
    /// `docker run --cap-add`: root holds it, other users have it in their bounding set.
    #[arg(long = "cap-add", value_name = "CAP", value_parser = spec::capability_name)]
    pub cap_add: Vec<String>,
    /// Let the container's processes create AF_VSOCK sockets, which the agent's vsock guard otherwise refuses
    /// (EAFNOSUPPORT). The guest has no vsock loopback, and the agent serves only the host, either way.
    #[arg(long)]
    pub allow_vsock: bool,
    /// Run an init as the container's PID 1 (as `docker run --init`): it reaps orphans and forwards signals to
    /// the program. Without it the program is PID 1, as under runc, and gets only the signals it handles.
    #[arg(long)]
    pub init: bool,
    /// Which agent calls the guest serves, fixed at boot: comma-separated `+Call`/`-Call` items (method names
    /// of agent.proto) on hull run's default (the calls hull run makes: no ExecProcess, ReadFile, ...), or a
    /// list starting with `all` or `none`. `all` lets a second client exec into the container.
    #[arg(long, value_name = "POLICY", value_parser = parse_policy)]
    pub agent_policy: Option<Policy>,
    /// Size of the VM's scratch disk in MiB, which holds what the container writes to its root file system (a
    /// sparse file in the run directory: only what is written takes room). 0: a tmpfs in the guest's RAM.
    #[arg(long, value_name = "MiB", default_value_t = image::DEFAULT_SCRATCH_MIB,
          value_parser = clap::value_parser!(u64).range(0..=image::MAX_SCRATCH_MIB))]
    pub scratch_size: u64,
    /// Container pids limit (cgroup pids.max).
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Container memory limit in MiB (cgroup memory.max).
    #[arg(long, value_name = "MiB")]
    pub memory_limit: Option<i64>,
    /// Restore the VM from a template made by `hull template create DIR` instead of booting one (kvm
    /// backend): its vCPUs, memory, agent policy and NIC are the template's; the rootfs, volumes and scratch
    /// disk are attached to its slots after the restore.
    #[arg(long, value_name = "DIR")]
    pub from_snapshot: Option<PathBuf>,
    #[command(flatten)]
    pub vm: VmArgs,
    /// How long the guest may take to boot, in seconds.
    #[arg(long, default_value_t = 120)]
    pub boot_timeout: u64,
    /// Print how long the boot, the container and the whole run took (on standard error).
    #[arg(long)]
    pub timing: bool,
    /// Log level on standard error.
    #[arg(long, value_name = "LEVEL", default_value = "Warning", value_parser = LogLevel::parse)]
    pub log_level: LogLevel,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The VM's backend and size: shared by `hull run` and `hull template create` (whose clones get its size).
#[derive(Debug, Args)]
pub struct MachineArgs {
    /// VM backend: kvm (the hull VMM), qemu (QEMU TCG with hull's vhost-user devices), or auto (kvm on
    /// hardware KVM). A template is a snapshot of the hull VMM: kvm only.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// vCPUs.
    #[arg(long, default_value_t = DEFAULT_CPUS, value_parser = clap::value_parser!(u8).range(1..=32))]
    pub cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = DEFAULT_MEM_MIB, value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub mem: u32,
}

/// Where the guest's kernel and initramfs come from and how the VM's processes are confined: shared by
/// `hull run` and `hull template create`.
#[derive(Debug, Args)]
pub struct VmArgs {
    /// Guest kernel (default: $HULL_KERNEL, else the newest in ~/.cache/hull).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs with hull-agent (default: $HULL_INITRD, else the newest in ~/.cache/hull).
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Run the VM's processes unconfined, as the caller (for debugging): without it, hull (the VMM, or the
    /// device backends of the qemu backend) starts through hull-jailer in a chroot under --jail-base, and
    /// hull and QEMU run as --jail-gid and a uid of the VM's own (from --jail-uid, see --jail-uid-count).
    #[arg(long)]
    pub no_jail: bool,
    /// The first uid the VM's processes may run as: each VM gets the first of --jail-uid-count uids from here
    /// that no other VM holds and no process uses.
    #[arg(long, value_name = "UID", default_value_t = jail::DEFAULT_JAIL_ID)]
    pub jail_uid: u32,
    /// How many uids from --jail-uid the VMs draw from.
    #[arg(long, value_name = "N", default_value_t = jail::DEFAULT_JAIL_UID_COUNT)]
    pub jail_uid_count: u32,
    /// The gid the VM's processes run as.
    #[arg(long, value_name = "GID", default_value_t = jail::DEFAULT_JAIL_ID)]
    pub jail_gid: u32,
    /// Where the chroot jails go (hull-jailer's --chroot-base-dir).
    #[arg(long, value_name = "DIR", default_value = jail::DEFAULT_BASE_DIR)]
    pub jail_base: PathBuf,
    /// The hull-jailer binary (default: next to hull).
    #[arg(long, value_name = "FILE")]
    pub jailer: Option<PathBuf>,
}

fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() && !k.contains('\0') => Ok(s.to_string()),
        _ => Err("expected K=V".into()),
    }
}

#[derive(Debug, Clone)]
pub struct VolumeArg {
    pub source: PathBuf,
    pub dest: String,
    pub read_only: bool,
}

fn parse_volume(s: &str) -> Result<VolumeArg, String> {
    let (rest, read_only) = match s.strip_suffix(":ro") {
        Some(r) => (r, true),
        None => (s.strip_suffix(":rw").unwrap_or(s), false),
    };
    let (src, dest) = rest.rsplit_once(':').ok_or("expected SRC:DEST[:ro]")?;
    if src.is_empty() || !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
        return Err("SRC must be set and DEST absolute, without '..'".into());
    }
    Ok(VolumeArg {
        source: PathBuf::from(src),
        dest: dest.to_string(),
        read_only,
    })
}

pub(crate) fn parse_policy(s: &str) -> Result<Policy, String> {
    Policy::parse_on(Policy::hull_run(), s).map_err(|e| e.to_string())
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    let uid = u.parse().map_err(|_| format!("bad uid {u:?}"))?;
    let gid = if s.contains(':') {
        g.parse().map_err(|_| format!("bad gid {g:?}"))?
    } else {
        uid
    };
    Ok((uid, gid))
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Backend(#[from] backend::BackendError),
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    #[error("the VM ended before the container did (guest console: {0})")]
    VmDied(String),
    #[error("{message}")]
    Program { status: i32, message: String },
}

/// Entry point: returns the process exit status.
pub fn run(args: RunArgs) -> i32 {
    crate::logging::init(args.log_level);
    // Security events (the agent refusing a call) name this run's VM and its one container.
    hull_logging::security::set_identity(&format!("hull-run-{}", std::process::id()), CONTAINER_ID);
    // Before any thread: these signals are taken by the signal thread only.
    let signals = tty::block_signals();
    match run_inner(&args, signals) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hull run: {e}");
            failure_status(&e)
        }
    }
}

/// As `docker run`: the container's program could not be started, with the status it gives for that.
fn failure_status(e: &RunError) -> i32 {
    match e {
        RunError::Program { status, .. } => *status,
        _ => EXIT_HULL_FAILED,
    }
}

/// 127 when CreateContainer failed because the container's program does not exist, 126 when it cannot be
/// run (the agent looks it up then and says `exec: ...`, as runc does); `None` for any other failure.
fn program_status(e: &agent::AgentError) -> Option<i32> {
    let text = e.to_string();
    let m = &text[text.find("exec: ")?..];
    if m.contains("executable file not found") || m.contains("No such file or directory") {
        Some(127)
    } else if m.contains("Permission denied") {
        Some(126)
    } else {
        None
    }
}

pub(crate) fn guest_files(args: &VmArgs) -> Result<(PathBuf, PathBuf), RunError> {
    hull_runtime::guest_files(args.kernel.as_deref(), args.initrd.as_deref()).map_err(|e| {
        RunError::Setup(match e {
            hull_runtime::GuestFilesError::Missing(what) => format!(
                "no guest {what}: pass --{} (bash resources/build-guest.sh prints it)",
                if what == "kernel" { "kernel" } else { "initrd" }
            ),
            other => other.to_string(),
        })
    })
}

enum Event {
    Exited(Result<hull_agent_protocol::agent::WaitProcessResponse, agent::AgentError>),
    Signal(i32),
}

fn run_inner(args: &RunArgs, signals: tty::BlockedSignals) -> Result<i32, RunError> {
    let t0 = Instant::now();
    let (kind, why) = backend::choose(args.machine.backend);
    eprintln!(
        "hull run: backend {} ({why})",
        if kind == BackendKind::Kvm { "kvm" } else { "qemu" }
    );
    let (kernel, initrd) = guest_files(&args.vm)?;
    let dir = guard::RunDir::create().map_err(|e| RunError::Setup(format!("creating the run directory: {e}")))?;
    let image = rootfs_image(args, dir.path())?;
    tracing::info!(image = %image.path.display(), fstype = image.fstype, "rootfs image ready");
    timing_phase(args, "rootfs_ready", t0);
    let mut drives = vec![backend::Drive {
        id: "rootfs".into(),
        image,
        read_only: true,
    }];
    for (i, v) in args.volumes.iter().enumerate() {
        let id = format!("vol{i}");
        let image = image::prepare(&v.source, dir.path(), &id)?;
        drives.push(backend::Drive {
            id,
            image,
            read_only: v.read_only,
        });
    }
    // Then the scratch disk, last.
    if args.scratch_size > 0 {
        drives.push(backend::Drive {
            id: "scratch".into(),
            image: image::scratch(dir.path(), "scratch", args.scratch_size)?,
            read_only: false,
        });
    }

    let template = match &args.from_snapshot {
        Some(dir) => Some(open_template(args, kind, dir, &mut drives)?),
        None => None,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // This very binary, for `hull vhost-user ...` and the kvm backend's VMM: through /proc/self/exe, which
    // stays valid when the file is replaced while we run (a rebuild), unlike the path current_exe() reports.
    let hull = PathBuf::from("/proc/self/exe");
    let jail_cfg = jail_config(&args.vm, &hull)?;
    let mut cfg = VmLaunchConfig {
        hull: &hull,
        kernel: &kernel,
        initrd: &initrd,
        cpus: args.machine.cpus,
        mem_mib: args.machine.mem,
        drives: &drives,
        tap: args.net.as_deref(),
        slots: 0,
        rw_slots: 0,
        mac: None,
        netns: None,
        cmdline_extra: format!("hull.time={}.{:09}", now.as_secs(), now.subsec_nanos()),
        jail: jail_cfg.as_ref(),
        agent_policy: args.agent_policy.unwrap_or_else(Policy::hull_run),
        dir: dir.path(),
    };
    let mut vm = match &template {
        None => backend::start(kind, &cfg)?,
        Some((t, policy)) => {
            // The template's VM, with no drives: they go into its slots before it runs.
            cfg.cpus = t.manifest.cpus;
            cfg.mem_mib = t.manifest.mem_mib;
            cfg.slots = t.manifest.slots;
            cfg.rw_slots = t.manifest.rw_slots;
            cfg.agent_policy = *policy;
            cfg.drives = &[];
            cfg.cmdline_extra = String::new();
            let mut vm = t.restore(&cfg, &[]).map_err(|e| RunError::Setup(e.to_string()))?;
            for d in &drives {
                vm.attach_disk(&d.id, &d.image.path, d.read_only)?;
            }
            vm.resume()?;
            vm
        }
    };
    timing_phase(args, "vm_started", t0);
    let result = run_container(args, vm.as_mut(), kind, &drives, signals, t0);
    // Tear down. With the status and the output in, nothing more is needed from the VM, which is disposable:
    // it and its backends are killed at once, and the images and sockets go with the run directory. Only
    // when the guest may still owe something is it stopped as before (the container removed, its mounts with
    // it, and the agent asked to power off, syncing, with a short grace before the kill): a disk of the
    // caller's own that it may have written (`-v IMAGE:DEST`, read-write), or an agent policy wider than
    // hull run's own calls, under which another client (an exec, a signal) may be waiting for an answer.
    let callers_disk_written = drives
        .iter()
        .any(|d| !d.read_only && !d.image.path.starts_with(dir.path()));
    let other_clients = cfg.agent_policy != Policy::hull_run();
    let grace = match result.as_ref().map(|(_, a)| a) {
        Ok(Some(a)) if callers_disk_written || other_clients => {
            let _ = a.remove(CONTAINER_ID);
            if a.shutdown().is_ok() {
                Duration::from_millis(300)
            } else {
                Duration::ZERO
            }
        }
        _ => Duration::ZERO,
    };
    vm.stop(grace);
    let console = vm.console_log();
    drop(vm);
    if let Err(RunError::Agent(e)) = &result {
        if let Some((call, message)) = e.permission_denied() {
            hull_logging::security_event!(
                tracing::Level::WARN,
                event = "agent_permission_denied",
                reason = format_args!("the agent refused {call}: {message}"),
                call,
                "the agent refused {call}"
            );
        }
    }
    let out = match result {
        Ok((code, _)) => Ok(code),
        Err(RunError::Agent(e)) if program_status(&e).is_some() => Err(RunError::Program {
            status: program_status(&e).unwrap_or(EXIT_HULL_FAILED),
            message: e.to_string(),
        }),
        Err(RunError::Agent(e)) if !console.as_os_str().is_empty() => Err(RunError::Setup(format!(
            "{e}\nguest console {}",
            console_tail(&console)
        ))),
        Err(e) => Err(e),
    };
    drop(dir);
    timing_phase(args, "teardown_done", t0);
    if args.timing {
        eprintln!(
            "hull run: end to end {:.3} s (backend {})",
            t0.elapsed().as_secs_f64(),
            if kind == BackendKind::Kvm { "kvm" } else { "qemu" }
        );
    }
    out
}

/// `--from-snapshot DIR`: the template, checked against this run (the kvm backend; the template's size,
/// policy and NIC), and the run's drives renamed to the template's slots: the rootfs to `slot0` (which the
/// guest knows as vda), read-only volumes to `slot1`..., the scratch disk to `wslot0`, read-write volumes to
/// `wslot1`.... Returns the template and its agent policy.
fn open_template(
    args: &RunArgs,
    kind: BackendKind,
    dir: &std::path::Path,
    drives: &mut [backend::Drive],
) -> Result<(Template, Policy), RunError> {
    if kind != BackendKind::Kvm {
        return Err(RunError::Setup(
            "--from-snapshot restores a snapshot of the hull VMM: it needs the kvm backend (hardware KVM; \
             --backend kvm)"
                .into(),
        ));
    }
    let t = Template::open(dir).map_err(|e| RunError::Setup(e.to_string()))?;
    let m = &t.manifest;
    let policy = Policy::parse(&m.agent_policy)
        .map_err(|e| RunError::Setup(format!("the template's agent policy {:?}: {e}", m.agent_policy)))?;
    let mismatch = |what: &str, template: String, run: String| {
        RunError::Setup(format!(
            "--from-snapshot: the template has {what} {template}, this run asks for {run}"
        ))
    };
    if args.machine.cpus != DEFAULT_CPUS && args.machine.cpus != m.cpus {
        return Err(mismatch("--cpus", m.cpus.to_string(), args.machine.cpus.to_string()));
    }
    if args.machine.mem != DEFAULT_MEM_MIB && args.machine.mem != m.mem_mib {
        return Err(mismatch("--mem", m.mem_mib.to_string(), args.machine.mem.to_string()));
    }
    if let Some(p) = args.agent_policy.filter(|p| *p != policy) {
        return Err(mismatch("--agent-policy", policy.to_string(), p.to_string()));
    }
    if args.net.is_some() != m.net {
        return Err(mismatch(
            "a NIC:",
            m.net.to_string(),
            format!("--net {}", args.net.as_deref().unwrap_or("(none)")),
        ));
    }
    let (mut ro, mut rw) = (0, 0);
    for (i, d) in drives.iter_mut().enumerate() {
        d.id = if i == 0 {
            ro += 1;
            backend::slot_id(0)
        } else if d.id == "scratch" {
            backend::rw_slot_id(0)
        } else if d.read_only {
            ro += 1;
            backend::slot_id(ro - 1)
        } else {
            rw += 1;
            backend::rw_slot_id(rw)
        };
    }
    if ro > m.slots || rw + 1 > m.rw_slots {
        return Err(RunError::Setup(format!(
            "--from-snapshot: the template has room for {} read-only and {} read-write volumes, this run has {} \
             and {} (hull template create --ro-volumes/--rw-volumes)",
            m.slots.saturating_sub(1),
            m.rw_slots.saturating_sub(1),
            ro - 1,
            rw
        )));
    }
    Ok((t, policy))
}

/// The rootfs as a block image: a directory from the image cache (packed into it when it is not there yet),
/// or packed into the run directory with `--no-image-cache` or without a usable cache; an image file as it is.
fn rootfs_image(args: &RunArgs, run_dir: &std::path::Path) -> Result<image::RootfsImage, RunError> {
    let cache = match hull_runtime::build_cache() {
        Some(base) if !args.no_image_cache => ImageCache::open(&base.join(ROOTFS_IMAGE_CACHE)),
        _ => None,
    };
    Ok(match cache {
        Some(cache) => cache.prepare(&args.rootfs, run_dir, "rootfs")?,
        None => image::prepare(&args.rootfs, run_dir, "rootfs")?,
    })
}

/// The jail of the VM's processes, unless `--no-jail`; it needs root (chroot, device nodes, the uid change).
pub(crate) fn jail_config(args: &VmArgs, hull: &std::path::Path) -> Result<Option<jail::JailConfig>, RunError> {
    if args.no_jail {
        return Ok(None);
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(RunError::Setup(
            "jailing the VM's processes needs root; run as root, or pass --no-jail to run them unconfined".into(),
        ));
    }
    let mut cfg = jail::JailConfig::beside(hull);
    cfg.uid = args.jail_uid;
    cfg.uid_count = args.jail_uid_count;
    cfg.gid = args.jail_gid;
    cfg.base_dir = args.jail_base.clone();
    if let Some(j) = &args.jailer {
        cfg.jailer = j.clone();
    }
    Ok(Some(cfg))
}

/// With `--timing`, one line per phase for tools (hull-bench parses it): `hull run: phase NAME SECONDS`,
/// seconds since `hull run` started, in the order rootfs_ready, vm_started, agent_ready, container_created,
/// process_exited, teardown_done.
fn timing_phase(args: &RunArgs, name: &str, t0: Instant) {
    if args.timing {
        eprintln!("hull run: phase {name} {:.6}", t0.elapsed().as_secs_f64());
    }
}

fn run_container(
    args: &RunArgs,
    vm: &mut dyn backend::Vm,
    kind: BackendKind,
    drives: &[backend::Drive],
    signals: tty::BlockedSignals,
    t0: Instant,
) -> Result<(i32, Option<agent::Agent>), RunError> {
    let deadline = Duration::from_secs(args.boot_timeout);
    // Short attempts, so a VM that died during boot is noticed at once.
    let agent = loop {
        match agent::Agent::connect(vm.vsock_uds(), Duration::from_secs(1)) {
            Ok(a) => break a,
            Err(e) => {
                if !vm.alive() {
                    return Err(RunError::VmDied(console_tail(&vm.console_log())));
                }
                if t0.elapsed() >= deadline {
                    return Err(RunError::Setup(format!(
                        "the guest agent did not answer within --boot-timeout {} s ({e})\nguest console {}",
                        args.boot_timeout,
                        console_tail(&vm.console_log())
                    )));
                }
            }
        }
    };
    let booted = t0.elapsed();
    timing_phase(args, "agent_ready", t0);
    agent.sync_clock()?;
    if args.from_snapshot.is_some() {
        // Every clone of a template starts with the template's kernel RNG state: reseed it.
        agent.add_entropy()?;
    }
    let version = agent.version()?;
    tracing::info!(kernel = %version.kernel_release, agent = %version.agent_version, ?booted, "agent connected");
    if args.net.is_some() {
        let mut req = hull_agent_protocol::agent::ConfigureNetworkRequest::new();
        let mut iface = hull_agent_protocol::agent::Interface::new();
        iface.name = "eth0".into();
        iface.addresses = args.ip.iter().cloned().collect();
        req.interfaces.push(iface);
        if let Some(gw) = &args.gateway {
            let mut r = hull_agent_protocol::agent::Route::new();
            r.gateway = gw.clone();
            r.device = "eth0".into();
            req.routes.push(r);
        }
        req.dns_servers = args.dns.clone();
        agent.configure_network(req)?;
    }

    let (uid, gid) = args.user.unwrap_or((0, 0));
    let process = spec::process(&spec::ProcessOptions {
        args: &args.command,
        cap_add: &args.cap_add,
        env: &args.env,
        cwd: &args.workdir,
        uid,
        gid,
        terminal: args.tty,
    });
    let limits = spec::Limits {
        pids: args.pids_limit,
        memory_bytes: args.memory_limit.map(|m| m.saturating_mul(1 << 20)),
    };
    let mut oci = spec::spec(process, "hull", &limits);
    if let Some(path) = &args.seccomp {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RunError::Setup(format!("reading the seccomp profile {}: {e}", path.display())))?;
        let profile: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| RunError::Setup(format!("the seccomp profile {} is not JSON: {e}", path.display())))?;
        oci["linux"]["seccomp"] = profile;
    }
    if args.net.is_some() && !args.dns.is_empty() {
        spec::add_resolv_conf(&mut oci);
    }
    if args.allow_vsock {
        oci["annotations"][ALLOW_VSOCK_ANNOTATION] = "true".into();
    }
    if args.init {
        oci["annotations"][INIT_ANNOTATION] = "true".into();
    }
    // The drives are the rootfs, then one per --volume, in order, then the scratch disk.
    let scratch =
        (args.scratch_size > 0).then(|| GuestDisk::of_drive(kind, drives.len() - 1, &drives[drives.len() - 1]));
    let container = NewContainer {
        id: CONTAINER_ID,
        oci_spec: &oci,
        rootfs: GuestDisk::of_drive(kind, 0, &drives[0]),
        scratch,
        volumes: drives[1..]
            .iter()
            .zip(&args.volumes)
            .enumerate()
            .map(|(i, (drive, v))| VolumeMount {
                disk: GuestDisk::of_drive(kind, 1 + i, drive),
                container_path: v.dest.clone(),
            })
            .collect(),
        files: Vec::new(),
        streams: Streams {
            terminal: args.tty,
            stdin: true,
            stdout: true,
            stderr: true,
        },
    };
    agent.create(container.request())?;
    timing_phase(args, "container_created", t0);

    // The wait, on a connection of its own, is connected and sent before Start (the agent allows waiting
    // before Start): connecting after Start took longer, with the guest busy starting the program. The
    // connections are still made one after another, from this thread.
    let (tx, rx) = mpsc::channel();
    let waiter = agent::Agent::connect(vm.vsock_uds(), Duration::from_secs(10))?;
    let exit_tx = tx.clone();
    std::thread::spawn(move || {
        let _ = exit_tx.send(Event::Exited(waiter.wait(CONTAINER_ID, "")));
    });

    // Stdio before Start, so not a byte is missed.
    let mut outputs = Vec::new();
    let mut raw_guard = None;
    if args.tty {
        let term = agent.open_stream(CONTAINER_ID, "", Stream::Terminal)?;
        // Without a terminal on our side, a conventional 24x80.
        let (rows, cols) = tty::size().unwrap_or((24, 80));
        let _ = agent.resize(CONTAINER_ID, "", rows, cols);
        raw_guard = tty::RawMode::enter();
        let mut from_guest = term.try_clone().map_err(|e| RunError::Setup(e.to_string()))?;
        outputs.push(std::thread::spawn(move || {
            copy_to(&mut from_guest, &mut std::io::stdout())
        }));
        let mut to_guest = term;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || to_guest.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    } else {
        let mut out = agent.open_stream(CONTAINER_ID, "", Stream::Stdout)?;
        outputs.push(std::thread::spawn(move || copy_to(&mut out, &mut std::io::stdout())));
        let mut err = agent.open_stream(CONTAINER_ID, "", Stream::Stderr)?;
        outputs.push(std::thread::spawn(move || copy_to(&mut err, &mut std::io::stderr())));
        let stdin_conn = agent.open_stream(CONTAINER_ID, "", Stream::Stdin)?;
        let closer = agent::Agent::connect(vm.vsock_uds(), Duration::from_secs(10))?;
        std::thread::spawn(move || pump_stdin(stdin_conn, closer));
    }
    agent.start(CONTAINER_ID)?;
    tracing::info!(elapsed = ?t0.elapsed(), "container started");

    tty::forward_signals(signals, move |s| tx.send(Event::Signal(s)).is_ok());

    let mut interrupts = 0;
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Exited(r)) => {
                let status = r?;
                timing_phase(args, "process_exited", t0);
                break status;
            }
            Ok(Event::Signal(libc::SIGWINCH)) => {
                if let Some((rows, cols)) = tty::size() {
                    let _ = agent.resize(CONTAINER_ID, "", rows, cols);
                }
            }
            Ok(Event::Signal(sig)) => {
                interrupts += 1;
                // First: pass it on. Again: the user means it.
                let sig = if interrupts > 1 && sig != libc::SIGHUP {
                    libc::SIGKILL
                } else {
                    sig
                };
                tracing::info!(signal = sig, "forwarding a signal to the container");
                let _ = agent.signal(CONTAINER_ID, "", sig as u32, false);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !vm.alive() {
                    drop(raw_guard);
                    return Err(RunError::VmDied(console_tail(&vm.console_log())));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(RunError::Setup("lost the wait thread".into())),
        }
    };
    // Output ends when every writer in the guest is gone; don't wait forever for stray daemons.
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    for h in outputs {
        while !h.is_finished() && Instant::now() < drain_deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(raw_guard);
    let _ = std::io::stdout().flush();
    if status.oom_killed {
        eprintln!("hull run: the container was killed by the OOM killer (memory limit)");
    }
    let code = if status.signal > 0 {
        128 + status.signal.min(127)
    } else {
        status.exit_code.clamp(0, 255)
    };
    tracing::info!(code, elapsed = ?t0.elapsed(), "container exited");
    if args.timing {
        eprintln!(
            "hull run: agent answered after {:.3} s, container exited after {:.3} s",
            booted.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok((code, Some(agent)))
}

fn copy_to(from: &mut UnixStream, to: &mut dyn Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = to.flush();
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

/// Our stdin → the container's stdin; at end of file, tell the agent how many bytes there were.
fn pump_stdin(mut conn: UnixStream, agent: agent::Agent) {
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
                total += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = agent.close_stdin(CONTAINER_ID, "", total);
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_policies_build_on_hull_runs_default() {
        use hull_agent_protocol::policy::Call;
        assert_eq!(parse_policy("").unwrap(), Policy::hull_run());
        let p = parse_policy("+ExecProcess").unwrap();
        assert!(p.allows(Call::ExecProcess) && !p.allows(Call::ReadFile));
        assert_eq!(parse_policy("all").unwrap(), Policy::all());
        assert!(parse_policy("-Exec").is_err());
    }

    #[test]
    fn volumes_users_and_env_parse_strictly() {
        let v = parse_volume("/a/b:/data:ro").unwrap();
        assert_eq!(
            (v.source, v.dest.as_str(), v.read_only),
            (PathBuf::from("/a/b"), "/data", true)
        );
        let v = parse_volume("img.ext4:/scratch").unwrap();
        assert!(!v.read_only);
        for bad in ["/a", ":/x", "/a:rel", "/a:/x/../y", "/a:/x:ro:ro"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_user("1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("1000:5").unwrap(), (1000, 5));
        assert!(parse_user("root").is_err());
        assert!(parse_env("A=1").is_ok() && parse_env("A=").is_ok());
        assert!(parse_env("=1").is_err() && parse_env("A").is_err());
    }
}
