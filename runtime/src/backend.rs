//! The two VM backends behind one interface, used by `hull run` and the containerd shim:
//!
//! - `kvm`: the hull VMM in its own `hull` process, configured through its API socket (boot source,
//!   machine config, the rootfs drive, vsock, network interface) and started with InstanceStart.
//! - `qemu`: `qemu-system-x86_64 -M microvm` under TCG with hull's own vhost-user backends
//!   (`hull vhost-user blk|vsock|net`), for hosts where KVM cannot run guest user space.
//!
//! Both give the guest the same devices (vda = the rootfs image, read-only; eth0 when a TAP is given; vsock
//! with CID 3) and the host the same hybrid vsock socket. `auto` picks `kvm` when /dev/kvm is usable and is
//! not the software `kvm_pvm` (which cannot run Linux user space), else `qemu`, and says why.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::api_client::ApiClient;
use crate::guard::{wait_for_listener, wait_for_path, ChildGuard};
use crate::image::RootfsImage;
use crate::jail::{jail_id, Access, Jail, JailConfig};
use crate::output::{self, CappedOutput};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Auto,
    Kvm,
    Qemu,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("starting {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("{what} did not come up (log: {log})")]
    NotUp { what: String, log: String },
    #[error("hull API {path}: {detail}")]
    Api { path: String, detail: String },
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error("{0} needs the kvm backend (the hull VMM); the qemu backend has none")]
    Unsupported(&'static str),
}

/// A block device for the guest: the rootfs first, then volumes. `id` is the drive id (kvm) and the
/// virtio-blk serial (qemu: `hull vhost-user blk --id`), which the agent finds devices by.
pub struct Drive {
    pub id: String,
    pub image: RootfsImage,
    pub read_only: bool,
}

/// How a backend launches a VM: the guest (kernel, initramfs, size, disks, NIC) and where its processes run.
/// Not the hull VMM's own `vmm::MicroVmConfig`, which the kvm backend's `hull` process builds from API calls.
#[derive(Clone)]
pub struct VmLaunchConfig<'a> {
    /// The `hull` binary (the kvm backend's VMM, and the vhost-user device backends of the qemu backend).
    pub hull: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cpus: u8,
    pub mem_mib: u32,
    pub drives: &'a [Drive],
    /// Spare disk slots (ids `slot0`, `slot1`, ...): empty at boot, given an image later with
    /// [`Vm::attach_disk`] (the guest sees the capacity change).
    pub slots: usize,
    /// Spare disk slots that take read-write images (ids `wslot0`, `wslot1`, ...), after the read-only ones:
    /// a restored template's scratch disk and volumes go there.
    pub rw_slots: usize,
    pub tap: Option<&'a str>,
    /// The guest NIC's MAC address (default: the backend's choice).
    pub mac: Option<&'a str>,
    /// Run the VM's processes in this network namespace (where the TAP lives).
    pub netns: Option<&'a Path>,
    pub cmdline_extra: String,
    /// Confine the VM's processes (hull through hull-jailer; QEMU as the jail uid/gid); `None` runs them as
    /// the caller, unconfined (`hull run --no-jail`).
    pub jail: Option<&'a JailConfig>,
    /// Which agent calls the guest serves: put on the kernel command line (`hull.policy=`), where the agent
    /// reads it once at start and nothing inside the guest can change it.
    pub agent_policy: hull_agent_protocol::policy::Policy,
    pub dir: &'a Path,
}

pub trait Vm: Send {
    /// The host end of the hybrid vsock.
    fn vsock_uds(&self) -> &Path;
    /// Whether the VM's process still runs.
    fn alive(&mut self) -> bool;
    /// The PID of the process that runs the guest (QEMU or the hull VMM).
    fn vmm_pid(&self) -> u32;
    /// Every PID this VM started (the VMM and its device backends).
    fn pids(&self) -> Vec<u32>;
    /// Where the guest console goes.
    fn console_log(&self) -> PathBuf;
    /// Waits up to `grace` for the VM to end by itself, then kills everything it started.
    fn stop(&mut self, grace: Duration);
    /// Gives spare slot `slot` (`slot0`, ...) the disk image `image` (replacing what it had).
    fn attach_disk(&mut self, slot: &str, image: &Path, read_only: bool) -> Result<(), BackendError>;
    /// Lets a VM restored Paused ([`restore_in_cgroup`]) run. The kvm backend only.
    fn resume(&mut self) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("resuming a restored VM"))
    }
    /// Pauses the VM and writes a full snapshot of it to `to`. The kvm backend only.
    fn snapshot(&mut self, _to: &SnapshotFiles) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("snapshots"))
    }
}

/// The id of spare slot `i`.
pub fn slot_id(i: usize) -> String {
    format!("slot{i}")
}

/// The id of spare read-write slot `i`.
pub fn rw_slot_id(i: usize) -> String {
    format!("wslot{i}")
}

/// The guest device a drive or slot shows up as, for the agent's `Storage.device`: the disk's virtio-blk
/// serial, which both backends set to the drive id; the kvm backend's first drive is `vda`.
pub fn guest_device(kind: BackendKind, index: usize, id: &str) -> String {
    if kind == BackendKind::Kvm && index == 0 {
        "vda".into()
    } else {
        format!("serial:{id}")
    }
}

/// A spare slot: its id, its empty placeholder image, and whether it takes read-write images.
struct Slot {
    id: String,
    placeholder: PathBuf,
    writable: bool,
}

/// Creates the empty placeholder image of every slot: the read-only ones, then the read-write ones.
fn slot_placeholders(cfg: &VmLaunchConfig) -> Result<Vec<Slot>, BackendError> {
    let ids = (0..cfg.slots)
        .map(|i| (slot_id(i), false))
        .chain((0..cfg.rw_slots).map(|i| (rw_slot_id(i), true)));
    ids.map(|(id, writable)| {
        let placeholder = cfg.dir.join(format!("{id}.empty"));
        crate::guard::create_private_file(&placeholder).map_err(|source| BackendError::Spawn {
            what: format!("slot placeholder {}", placeholder.display()),
            source,
        })?;
        Ok(Slot {
            id,
            placeholder,
            writable,
        })
    })
    .collect()
}

/// Decides the backend; returns it with the reason, which the caller prints.
pub fn choose(requested: BackendKind) -> (BackendKind, String) {
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let kvm_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    match requested {
        BackendKind::Kvm => (BackendKind::Kvm, "requested".into()),
        BackendKind::Qemu => (BackendKind::Qemu, "requested".into()),
        BackendKind::Auto if kvm_ok && !pvm => (BackendKind::Kvm, "/dev/kvm is hardware KVM".into()),
        BackendKind::Auto if pvm => (
            BackendKind::Qemu,
            "/dev/kvm is the software kvm_pvm, which cannot run guest user space".into(),
        ),
        BackendKind::Auto => (BackendKind::Qemu, "/dev/kvm is not usable".into()),
    }
}

pub fn start(kind: BackendKind, cfg: &VmLaunchConfig) -> Result<Box<dyn Vm>, BackendError> {
    start_in_cgroup(kind, cfg, &[])
}

/// Starts the VM with every process it spawns (the VMM or QEMU, and the device backends) in the cgroups
/// whose `cgroup.procs` files are `cgroup_procs` (one per hierarchy; the containerd shim's pod cgroup).
pub fn start_in_cgroup(
    kind: BackendKind,
    cfg: &VmLaunchConfig,
    cgroup_procs: &[PathBuf],
) -> Result<Box<dyn Vm>, BackendError> {
    let Some(jail) = cfg.jail else {
        return start_as_configured(kind, cfg, cgroup_procs);
    };
    // Jailed, the VM's processes run as a uid no other VM has, claimed until the VM is dropped.
    let (own, claim) = crate::jail_uid::claim(jail)?;
    let cfg = VmLaunchConfig {
        jail: Some(&own),
        ..cfg.clone()
    };
    let vm = start_as_configured(kind, &cfg, cgroup_procs)?;
    Ok(Box::new(crate::jail_uid::ClaimedVm::new(vm, claim)))
}

fn start_as_configured(
    kind: BackendKind,
    cfg: &VmLaunchConfig,
    cgroup_procs: &[PathBuf],
) -> Result<Box<dyn Vm>, BackendError> {
    match kind {
        BackendKind::Kvm => Ok(Box::new(KvmVm::start(cfg, cgroup_procs)?)),
        _ => Ok(Box::new(QemuVm::start(cfg, cgroup_procs)?)),
    }
}

/// Makes `cmd`'s process join the cgroups of `cgroup_procs` between fork and exec (writing `0` moves the
/// writer), so it never runs, and never allocates, outside them. A failed join fails the spawn.
fn join_cgroups(cmd: &mut Command, cgroup_procs: &[PathBuf]) -> Result<(), BackendError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    if cgroup_procs.is_empty() {
        return Ok(());
    }
    let files = cgroup_procs
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .map_err(|source| BackendError::Spawn {
                    what: format!("joining cgroup {}", p.display()),
                    source,
                })
        })
        .collect::<Result<Vec<std::fs::File>, _>>()?;
    // SAFETY: write(2) is async-signal-safe; the descriptors (close-on-exec) belong to the closure, which
    // `cmd` keeps until the spawn is over.
    unsafe {
        cmd.pre_exec(move || {
            for f in &files {
                if libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

/// Kernel parameters for a guest on QEMU TCG, where every timer-driven calibration costs real time:
/// `lpj` presets the delay loop (its calibration takes about 100 ms; the value is a few times what TCG
/// measures here, so delays err long, never short), and `noapictimer` leaves the ticks to the PIT instead
/// of calibrating the local APIC timer against it (about 250 ms under TCG). Measured: agent ready about
/// 250 ms sooner. Hardware KVM guests have neither cost (kvmclock and TSC deadline timers).
const TCG_CMDLINE: &str = "lpj=2000000 noapictimer";

/// The agent policy's parameter, then the caller's extra parameters.
fn cmdline_extra(cfg: &VmLaunchConfig) -> String {
    format!("{} {}", cfg.agent_policy.cmdline_param(), cfg.cmdline_extra)
}

fn base_cmdline(extra: &str) -> String {
    // no_timer_check: under a loaded host, TCG can miss the IO-APIC timer check, which then panics.
    // pci=off: the microvm machine has no PCI bus (devices are virtio-mmio); hull adds it itself.
    format!("console=ttyS0 reboot=k panic=-1 quiet loglevel=3 no_timer_check pci=off {extra}")
}

/// A capped file for a child's stdout and stderr: the child writes into the FIFO of the returned
/// [`CappedOutput`], never into `file` itself, which stays under [`output::MAX_BYTES`] (plus `file.1`).
fn capped(file: &Path) -> Result<CappedOutput, BackendError> {
    CappedOutput::create(file, output::MAX_BYTES).map_err(|source| BackendError::Spawn {
        what: format!("the output file {}", file.display()),
        source,
    })
}

/// A `hull vhost-user` backend started, its socket not yet checked for ([`StartingBackend::up`]).
struct StartingBackend {
    name: String,
    child: ChildGuard,
    socket: PathBuf,
    log: PathBuf,
}

impl StartingBackend {
    /// Waits for the backend's socket: the backend, ready to serve QEMU.
    fn up(mut self) -> Result<ChildGuard, BackendError> {
        if !wait_for_path(&self.socket, &mut self.child, Duration::from_secs(20)) {
            return Err(BackendError::NotUp {
                what: self.name,
                log: self.log.display().to_string(),
            });
        }
        Ok(self.child)
    }
}

/// Starts `hull vhost-user <args>`; the backends of a VM start together and are waited for together.
fn vhost_user(
    cfg: &VmLaunchConfig,
    files: &ProcFiles,
    name: &str,
    socket: &Path,
    args: &[std::ffi::OsString],
    cgroup_procs: &[PathBuf],
) -> Result<StartingBackend, BackendError> {
    let mut all: Vec<std::ffi::OsString> = vec!["vhost-user".into()];
    all.extend(args.iter().cloned());
    all.extend(["--log-level".into(), "Warning".into()]);
    all.extend(["--vm-id".into(), jail_id(cfg.dir, "").into()]);
    // Jailed: each backend in a chroot of its own; they share the hull binary (hard links), as they are many.
    let mut cmd = files.command(&all, true);
    join_cgroups(&mut cmd, cgroup_procs)?;
    let log = cfg.dir.join(format!("{name}.log"));
    let output = capped(&log)?;
    let child = ChildGuard::spawn(name, cmd, output.fifo(), cfg.netns).map_err(|source| BackendError::Spawn {
        what: name.into(),
        source,
    })?;
    Ok(StartingBackend {
        name: name.into(),
        child,
        socket: socket.to_path_buf(),
        log,
    })
}

/// QEMU's arguments for vhost-user disk `i` served on `sock`.
fn vhost_user_blk_args(i: usize, sock: &Path) -> [String; 4] {
    [
        "-chardev".to_string(),
        format!("socket,id=blk{i},path={}", sock.display()),
        "-device".to_string(),
        format!("vhost-user-blk,chardev=blk{i}"),
    ]
}

/// How long the backends may take to end by themselves once QEMU has gone, when the VM was stopped with a grace.
const BACKEND_GRACE: Duration = Duration::from_millis(200);

pub struct QemuVm {
    uds: PathBuf,
    console: PathBuf,
    qemu: ChildGuard,
    backends: Vec<ChildGuard>,
    /// Each slot's `hull vhost-user blk --control` socket (host path) and its backend's files.
    controls: Vec<(String, PathBuf, ProcFiles)>,
    /// The other backends' files and jails, kept until the processes are gone (then removed).
    _jails: Vec<ProcFiles>,
    attached: usize,
}

/// Jailed, the hybrid vsock socket is in a jail; `<run dir>/vsock.sock` links to it, for clients that look
/// for it in the VM's directory (a second agent client, tools). The runtime itself uses the real path.
fn link_vsock_uds(cfg: &VmLaunchConfig, uds: &Path) -> Result<(), BackendError> {
    let link = cfg.dir.join("vsock.sock");
    if cfg.jail.is_none() || link == uds {
        return Ok(());
    }
    std::os::unix::fs::symlink(uds, &link).map_err(|source| BackendError::Spawn {
        what: format!("link {} to {}", link.display(), uds.display()),
        source,
    })
}

/// QEMU's sandbox: its seccomp filter on, and no obsolete system calls, no privilege changes, no new
/// processes, no scheduler or CPU-affinity changes.
pub const QEMU_SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// `s` as an argument.
fn os(s: impl AsRef<std::ffi::OsStr>) -> std::ffi::OsString {
    s.as_ref().to_os_string()
}

impl QemuVm {
    fn start(cfg: &VmLaunchConfig, cgroup_procs: &[PathBuf]) -> Result<QemuVm, BackendError> {
        let d = cfg.dir;
        let mut starting = Vec::new();
        let mut blk_args = Vec::new();
        let mut jails = Vec::new();
        for (i, drive) in cfg.drives.iter().enumerate() {
            let files = ProcFiles::new(cfg, &format!("blk{i}"))?;
            let (sock, sock_arg) = files.own(&format!("blk{i}.sock"));
            let access = if drive.read_only {
                Access::Read
            } else {
                Access::ReadWrite
            };
            let image = files.give(&drive.image.path, &format!("{}.img", drive.id), access)?;
            let mut args = vec![os("blk"), os("--socket"), os(sock_arg), os("--path"), os(image)];
            args.extend([os("--id"), os(&drive.id)]);
            if drive.read_only {
                args.push(os("--read-only"));
            }
            let name = format!("vhost-user-blk{i}");
            starting.push(vhost_user(cfg, &files, &name, &sock, &args, cgroup_procs)?);
            blk_args.extend(vhost_user_blk_args(i, &sock));
            jails.push(files);
        }
        let mut controls = Vec::new();
        for (j, Slot { id, placeholder, .. }) in slot_placeholders(cfg)?.into_iter().enumerate() {
            let i = cfg.drives.len() + j;
            let files = ProcFiles::new(cfg, &id)?;
            let (sock, sock_arg) = files.own(&format!("blk{i}.sock"));
            let (control, control_arg) = files.own(&format!("{id}.ctl"));
            // The backend opens its slot's file for writing (a later image may be read-write); it is empty
            // and the VM's own.
            let placeholder = files.give(&placeholder, &format!("{id}.empty"), Access::ReadWrite)?;
            let args = [
                os("blk"),
                os("--socket"),
                os(sock_arg),
                os("--path"),
                os(placeholder),
                os("--id"),
                os(&id),
                os("--control"),
                os(control_arg),
            ];
            let name = format!("vhost-user-{id}");
            starting.push(vhost_user(cfg, &files, &name, &sock, &args, cgroup_procs)?);
            blk_args.extend(vhost_user_blk_args(i, &sock));
            controls.push((id, control, files));
        }
        let files = ProcFiles::new(cfg, "vsock")?;
        let (vsock_sock, vsock_sock_arg) = files.own("vsock-vu.sock");
        let (uds, uds_arg) = files.own("vsock.sock");
        let args = [
            os("vsock"),
            os("--socket"),
            os(vsock_sock_arg),
            os("--guest-cid"),
            os(hull_agent_protocol::GUEST_CID.to_string()),
            os("--uds-path"),
            os(uds_arg),
        ];
        starting.push(vhost_user(
            cfg,
            &files,
            "vhost-user-vsock",
            &vsock_sock,
            &args,
            cgroup_procs,
        )?);
        jails.push(files);
        let mut net_sock = PathBuf::new();
        if let Some(tap) = cfg.tap {
            let files = ProcFiles::new(cfg, "net")?;
            let (sock, sock_arg) = files.own("net.sock");
            if let Some(j) = cfg.jail {
                crate::jail::set_tap_owner(tap, cfg.netns, j.uid, j.gid)?;
            }
            let args = [os("net"), os("--socket"), os(sock_arg), os("--tap"), os(tap)];
            starting.push(vhost_user(cfg, &files, "vhost-user-net", &sock, &args, cgroup_procs)?);
            jails.push(files);
            net_sock = sock;
        }
        // QEMU connects to every backend's socket as it starts.
        let backends = starting
            .into_iter()
            .map(StartingBackend::up)
            .collect::<Result<Vec<_>, _>>()?;
        let console = d.join("console.log");
        link_vsock_uds(cfg, &uds)?;
        // Jailed, QEMU runs as the jail uid/gid in a directory of its own inside the VM's (`qemu/`, 0700,
        // owned by the jail uid; the VM's directory stays root's): it opens the kernel and the initramfs by
        // names relative to it, entered as root, so it needs no access to the directories above; the device
        // backends' sockets are in their jails, which the jail uid can reach.
        let qemu_dir = match cfg.jail {
            Some(_) => d.join("qemu"),
            None => d.to_path_buf(),
        };
        let (kernel, initrd, qemu_user) = match cfg.jail {
            Some(j) => {
                let io = |what: &'static str, path: &Path| {
                    let path = path.to_path_buf();
                    move |source| crate::jail::JailError::Io {
                        id: "qemu".into(),
                        what,
                        path,
                        source,
                    }
                };
                {
                    use std::os::unix::fs::DirBuilderExt;
                    let mut b = std::fs::DirBuilder::new();
                    b.mode(0o700).create(&qemu_dir).map_err(io("creating", &qemu_dir))?;
                }
                std::os::unix::fs::chown(&qemu_dir, Some(j.uid), Some(j.gid)).map_err(io("chown", &qemu_dir))?;
                for (host, name) in [(cfg.kernel, "vmlinux"), (cfg.initrd, "initrd")] {
                    let dst = qemu_dir.join(name);
                    let _ = std::fs::remove_file(&dst);
                    if std::fs::hard_link(host, &dst).is_err() {
                        std::fs::copy(host, &dst).map_err(io("copying", &dst))?;
                    }
                    crate::jail::grant(&dst, j.uid, j.gid, Access::Read).map_err(io("granting access to", &dst))?;
                }
                (PathBuf::from("vmlinux"), PathBuf::from("initrd"), Some((j.uid, j.gid)))
            }
            None => (cfg.kernel.to_path_buf(), cfg.initrd.to_path_buf(), None),
        };
        let mem = cfg.mem_mib;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-M",
            "microvm,x-option-roms=off,rtc=on,acpi=off,memory-backend=mem",
            "-accel",
            "tcg",
            "-cpu",
            "max",
        ])
        .args(["-smp", &cfg.cpus.to_string(), "-m", &mem.to_string()])
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-object", &format!("memory-backend-memfd,id=mem,size={mem}M,share=on")])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .args(["-sandbox", QEMU_SANDBOX])
        // The VM's directory as its name, so `ps` (and the tests) can tell whose QEMU this is: jailed, its
        // other arguments name only relative paths and the device backends' jails.
        .args([
            "-name",
            &format!("guest={}", d.display().to_string().replace(',', ",,")),
        ])
        // The console, and QEMU's own messages, on its standard output and error: a FIFO this process copies
        // into console.log under a cap (a guest printing in a loop cannot fill the disk), opened before
        // QEMU starts, so a jailed QEMU needs no access to the file.
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            &base_cmdline(&format!("{TCG_CMDLINE} {}", cmdline_extra(cfg))),
        ])
        .args(&blk_args)
        .args([
            "-chardev",
            &format!("socket,id=vsock0,path={}", vsock_sock.display()),
            "-device",
            "vhost-user-vsock-device,chardev=vsock0",
        ]);
        if cfg.tap.is_some() {
            cmd.args(["-chardev", &format!("socket,id=net0,path={}", net_sock.display())])
                .args(["-netdev", "vhost-user,id=n0,chardev=net0"])
                .args([
                    "-device",
                    &match cfg.mac {
                        Some(mac) => format!("virtio-net-device,netdev=n0,mac={mac}"),
                        None => "virtio-net-device,netdev=n0".into(),
                    },
                ]);
        }
        join_cgroups(&mut cmd, cgroup_procs)?;
        cmd.current_dir(&qemu_dir);
        let console_output = capped(&console)?;
        let qemu =
            ChildGuard::spawn_as("qemu", cmd, console_output.fifo(), cfg.netns, qemu_user).map_err(|source| {
                BackendError::Spawn {
                    what: "qemu-system-x86_64 (scripts/install-qemu.sh installs it)".into(),
                    source,
                }
            })?;
        tracing::debug!(pid = qemu.pid(), "qemu started");
        Ok(QemuVm {
            uds,
            console,
            qemu,
            backends,
            controls,
            _jails: jails,
            attached: 0,
        })
    }
}

impl Vm for QemuVm {
    fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    fn alive(&mut self) -> bool {
        !self.qemu.exited()
    }

    fn vmm_pid(&self) -> u32 {
        self.qemu.pid()
    }

    fn pids(&self) -> Vec<u32> {
        std::iter::once(&self.qemu)
            .chain(&self.backends)
            .map(ChildGuard::pid)
            .collect()
    }

    fn console_log(&self) -> PathBuf {
        self.console.clone()
    }

    fn attach_disk(&mut self, slot: &str, image: &Path, read_only: bool) -> Result<(), BackendError> {
        use std::io::{BufRead, BufReader, Read, Write};
        let err = |detail: String| BackendError::Api {
            path: format!("{slot} control"),
            detail,
        };
        let (_, control, files) = self
            .controls
            .iter()
            .find(|(id, _, _)| id == slot)
            .ok_or_else(|| err("no such slot".into()))?;
        // Jailed, the backend sees the image linked into its chroot, under a fresh name per attach.
        self.attached += 1;
        let access = if read_only { Access::Read } else { Access::ReadWrite };
        let image = files.give(image, &format!("{slot}-{}.img", self.attached), access)?;
        let mut s = std::os::unix::net::UnixStream::connect(control).map_err(|e| err(e.to_string()))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let line = format!("attach {} {}\n", image.display(), if read_only { "ro" } else { "rw" });
        s.write_all(line.as_bytes()).map_err(|e| err(e.to_string()))?;
        let mut answer = String::new();
        BufReader::new((&s).take(4096))
            .read_line(&mut answer)
            .map_err(|e| err(e.to_string()))?;
        match answer.trim_end() {
            "ok" => Ok(()),
            other => Err(err(other.to_string())),
        }
    }

    fn stop(&mut self, grace: Duration) {
        if grace.is_zero() {
            // Nothing more is wanted from the VM: QEMU and every backend get SIGKILL together, so their ends
            // (QEMU's guest memory above all) overlap and no one waits for another.
            self.qemu.start_kill();
            for b in &mut self.backends {
                b.start_kill();
            }
        }
        self.qemu.wait_timeout(grace);
        self.qemu.kill();
        // With a grace, the backends end when QEMU disconnects: give them a moment (together) to finish the
        // guest's last requests, then make sure.
        let deadline = std::time::Instant::now() + if grace.is_zero() { Duration::ZERO } else { BACKEND_GRACE };
        for b in &mut self.backends {
            b.wait_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
            b.kill();
        }
    }
}

pub struct KvmVm {
    uds: PathBuf,
    console: PathBuf,
    hull: ChildGuard,
    api: ApiClient,
    /// hull's files and jail (dropped after `hull`, which is killed first); disks attached later are linked in.
    files: ProcFiles,
    attached: usize,
    /// The spare slots configured read-write (the others take read-only images only).
    writable_slots: Vec<String>,
}

/// Where one hull process (the VMM, or a device backend) finds its files: in the VM's directory as they
/// are, or, jailed, in its own chroot (hard-linked in, and named by their path inside). Owns the jail.
struct ProcFiles {
    dir: PathBuf,
    /// The binary the process runs.
    exec: PathBuf,
    jail: Option<Jail>,
}

impl ProcFiles {
    /// The files of the process `role` (`vmm`, `blk0`, `vsock`, ...) of the VM `cfg` describes. The VMM
    /// runs `hull-vmm` when it is beside `hull` and of its build (`crate::vmm_binary`), the backends `hull`.
    fn new(cfg: &VmLaunchConfig, role: &str) -> Result<ProcFiles, BackendError> {
        let exec = match role {
            "vmm" => crate::vmm_binary::for_vmm(cfg.hull),
            _ => cfg.hull.to_path_buf(),
        };
        let jail = cfg
            .jail
            .map(|j| Jail::prepare(j, &exec, &jail_id(cfg.dir, role)))
            .transpose()?;
        Ok(ProcFiles {
            dir: cfg.dir.to_path_buf(),
            exec,
            jail,
        })
    }

    /// A file the process creates or serves (`api.sock`, `console.log`): (host path, path it is given).
    fn own(&self, name: &str) -> (PathBuf, PathBuf) {
        match &self.jail {
            Some(j) => (j.host_path(name), Path::new("/").join(name)),
            None => (self.dir.join(name), self.dir.join(name)),
        }
    }

    /// A file the process opens (kernel, disk): the path it is given.
    fn give(&self, host: &Path, name: &str, access: Access) -> Result<PathBuf, BackendError> {
        match &self.jail {
            Some(j) => Ok(j.link_in(host, name, access)?),
            None => Ok(host.to_path_buf()),
        }
    }

    /// `hull <args>` (or `hull-vmm`, see [`ProcFiles::new`]), through hull-jailer when jailed
    /// (`hardlink_exec`: share one binary).
    fn command(&self, args: &[std::ffi::OsString], hardlink_exec: bool) -> Command {
        match &self.jail {
            Some(j) => j.command(args, hardlink_exec),
            None => {
                let mut c = Command::new(&self.exec);
                c.args(args);
                c
            }
        }
    }
}

/// A `hull` process spawned for a VM, its API socket answering, nothing configured yet.
struct SpawnedHull {
    hull: ChildGuard,
    files: ProcFiles,
    api: ApiClient,
    /// The hybrid vsock socket: its host path, and the path hull is given.
    uds: (PathBuf, PathBuf),
    console: PathBuf,
}

/// A spare slot's empty placeholder as the VMM process is given it.
struct GivenSlot {
    id: String,
    path: PathBuf,
    writable: bool,
}

impl SpawnedHull {
    /// Every spare slot's fresh placeholder of this VM, given to the process (linked into its jail).
    fn give_slots(&self, cfg: &VmLaunchConfig) -> Result<Vec<GivenSlot>, BackendError> {
        slot_placeholders(cfg)?
            .into_iter()
            .map(|slot| {
                let access = if slot.writable { Access::ReadWrite } else { Access::Read };
                let path = self
                    .files
                    .give(&slot.placeholder, &format!("{}.empty", slot.id), access)?;
                Ok(GivenSlot {
                    id: slot.id,
                    path,
                    writable: slot.writable,
                })
            })
            .collect()
    }

    /// The VM this process runs once configured (booted or restored) with `slots`.
    fn into_vm(self, slots: Vec<GivenSlot>) -> KvmVm {
        KvmVm {
            uds: self.uds.0,
            console: self.console,
            hull: self.hull,
            api: self.api,
            files: self.files,
            attached: 0,
            writable_slots: slots.into_iter().filter(|s| s.writable).map(|s| s.id).collect(),
        }
    }
}

impl KvmVm {
    /// Starts `hull` (through hull-jailer when jailed) and waits for its API socket.
    fn spawn(cfg: &VmLaunchConfig, cgroup_procs: &[PathBuf]) -> Result<SpawnedHull, BackendError> {
        let d = cfg.dir;
        let files = ProcFiles::new(cfg, "vmm")?;
        let (api, api_arg) = files.own("run/api.sock");
        if let Some(parent) = api.parent().filter(|_| files.jail.is_none()) {
            crate::guard::create_private_dir(parent, false)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|source| BackendError::Spawn {
                    what: format!("the API socket's directory {}", parent.display()),
                    source,
                })?;
        }
        let (console, console_arg) = files.own("console.log");
        let (uds, uds_arg) = files.own("vsock.sock");
        let args = [
            "--api-sock".into(),
            api_arg.into_os_string(),
            "--serial-out".into(),
            console_arg.into_os_string(),
            "--log-level".into(),
            "Warning".into(),
        ];
        // Jailed, hull gets its own copy of the binary (no text shared with other VMMs) and the jailer passes
        // it `--id <jail id>`.
        let mut cmd = files.command(&args, false);
        if files.jail.is_none() {
            cmd.args(["--id", "hull-run"]);
        }
        if let (Some(tap), Some(j)) = (cfg.tap, cfg.jail) {
            crate::jail::set_tap_owner(tap, cfg.netns, j.uid, j.gid)?;
        }
        link_vsock_uds(cfg, &uds)?;
        let log = d.join("hull-vmm.log");
        let output = capped(&log)?;
        join_cgroups(&mut cmd, cgroup_procs)?;
        let mut hull =
            ChildGuard::spawn("hull", cmd, output.fifo(), cfg.netns).map_err(|source| BackendError::Spawn {
                what: "hull".into(),
                source,
            })?;
        if !wait_for_listener(&api, &mut hull, Duration::from_secs(10)) {
            return Err(BackendError::NotUp {
                what: "hull API socket".into(),
                log: log.display().to_string(),
            });
        }
        Ok(SpawnedHull {
            hull,
            files,
            api: ApiClient::new(&api),
            uds: (uds, uds_arg),
            console,
        })
    }

    fn start(cfg: &VmLaunchConfig, cgroup_procs: &[PathBuf]) -> Result<KvmVm, BackendError> {
        let spawned = KvmVm::spawn(cfg, cgroup_procs)?;
        let (files, client) = (&spawned.files, &spawned.api);
        let kernel = files.give(cfg.kernel, "vmlinux", Access::Read)?;
        let initrd = files.give(cfg.initrd, "initrd", Access::Read)?;
        let put = |path: &str, body: serde_json::Value| api_call(client, "PUT", path, &body);
        put(
            "/boot-source",
            serde_json::json!({
                "kernel_image_path": kernel, "initrd_path": initrd, "boot_args": base_cmdline(&cmdline_extra(cfg))
            }),
        )?;
        put(
            "/machine-config",
            serde_json::json!({
                "vcpu_count": cfg.cpus, "mem_size_mib": cfg.mem_mib, "cpu_template": cpu_template(),
                "track_dirty_pages": false
            }),
        )?;
        for drive in cfg.drives {
            let access = if drive.read_only {
                Access::Read
            } else {
                Access::ReadWrite
            };
            let path = files.give(&drive.image.path, &format!("{}.img", drive.id), access)?;
            put(
                &format!("/drives/{}", drive.id),
                serde_json::json!({
                    "drive_id": drive.id, "path_on_host": path, "is_root_device": false,
                    "is_read_only": drive.read_only
                }),
            )?;
        }
        let slots = spawned.give_slots(cfg)?;
        for slot in &slots {
            put(
                &format!("/drives/{}", slot.id),
                serde_json::json!({
                    "drive_id": slot.id, "path_on_host": slot.path, "is_root_device": false,
                    "is_read_only": !slot.writable
                }),
            )?;
        }
        put(
            "/vsock",
            serde_json::json!({ "guest_cid": hull_agent_protocol::GUEST_CID, "uds_path": spawned.uds.1 }),
        )?;
        if let Some(tap) = cfg.tap {
            put(
                "/network-interfaces/eth0",
                match cfg.mac {
                    Some(mac) => serde_json::json!({ "iface_id": "eth0", "host_dev_name": tap, "guest_mac": mac }),
                    None => serde_json::json!({ "iface_id": "eth0", "host_dev_name": tap }),
                },
            )?;
        }
        put("/actions", serde_json::json!({ "action_type": "InstanceStart" }))?;
        Ok(spawned.into_vm(slots))
    }

    /// Restores the template `snapshot` (state file and memory file) in a new `hull`, Paused: its vsock
    /// socket in this VM's directory (or jail) with the guest CID `guest_cid`, every slot on a fresh empty
    /// placeholder of this VM's own, the NIC (if the template has one) on `cfg.tap`. `cfg` must describe
    /// the VM the template was made from (its slots, NIC); the kernel and initramfs are not read.
    fn restore(
        cfg: &VmLaunchConfig,
        snapshot: &SnapshotFiles,
        guest_cid: u32,
        cgroup_procs: &[PathBuf],
    ) -> Result<KvmVm, BackendError> {
        let spawned = KvmVm::spawn(cfg, cgroup_procs)?;
        let files = &spawned.files;
        let state = files.give(&snapshot.state, "template.snap", Access::Read)?;
        // Mapped privately: the template's memory file is shared by every clone and written by none.
        let mem = files.give(&snapshot.memory, "template.mem", Access::Read)?;
        let slots = spawned.give_slots(cfg)?;
        let drive_overrides: Vec<_> = slots
            .iter()
            .map(|slot| serde_json::json!({ "drive_id": slot.id, "path_on_host": slot.path }))
            .collect();
        let mut body = serde_json::json!({
            "snapshot_path": state,
            "mem_backend": { "backend_type": "File", "backend_path": mem },
            "resume_vm": false,
            "vsock_override": { "uds_path": spawned.uds.1, "guest_cid": guest_cid },
            "drive_overrides": drive_overrides,
        });
        if let Some(tap) = cfg.tap {
            body["network_overrides"] = serde_json::json!([{ "iface_id": "eth0", "host_dev_name": tap }]);
        }
        api_call(&spawned.api, "PUT", "/snapshot/load", &body)?;
        Ok(spawned.into_vm(slots))
    }

    /// Pauses the VM and writes a full snapshot of it to `to` (the files are created by hull, in its jail
    /// when jailed, then moved there).
    fn write_snapshot(&self, to: &SnapshotFiles) -> Result<(), BackendError> {
        api_call(&self.api, "PATCH", "/vm", &serde_json::json!({ "state": "Paused" }))?;
        let (state_host, state_arg) = self.files.own("template.snap");
        let (mem_host, mem_arg) = self.files.own("template.mem");
        api_call(
            &self.api,
            "PUT",
            "/snapshot/create",
            &serde_json::json!({ "snapshot_path": state_arg, "mem_file_path": mem_arg, "snapshot_type": "Full" }),
        )?;
        for (from, to) in [(&state_host, &to.state), (&mem_host, &to.memory)] {
            move_file(from, to).map_err(|source| BackendError::Spawn {
                what: format!("moving {} to {}", from.display(), to.display()),
                source,
            })?;
        }
        Ok(())
    }
}

/// Renames `from` to `to`, or copies it when they are on different file systems; `to` ends up root's, 0600.
fn move_file(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to)?;
        std::fs::remove_file(from)?;
    }
    std::os::unix::fs::chown(to, Some(0), Some(0)).or_else(|e| {
        // Not root (an unjailed run by a user): the file is the caller's already.
        if e.raw_os_error() == Some(libc::EPERM) {
            Ok(())
        } else {
            Err(e)
        }
    })?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o600))
}

/// A snapshot's two files: the state file and the guest memory file.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    pub state: PathBuf,
    pub memory: PathBuf,
}

/// Restores a snapshot of a VM made from `cfg` (kvm backend only), Paused, as [`start_in_cgroup`] starts
/// one: jailed, under a uid of its own. `resume_vm` lets it run once the caller attached its disks.
pub fn restore_in_cgroup(
    cfg: &VmLaunchConfig,
    snapshot: &SnapshotFiles,
    guest_cid: u32,
    cgroup_procs: &[PathBuf],
) -> Result<Box<dyn Vm>, BackendError> {
    let Some(jail) = cfg.jail else {
        return Ok(Box::new(KvmVm::restore(cfg, snapshot, guest_cid, cgroup_procs)?));
    };
    let (own, claim) = crate::jail_uid::claim(jail)?;
    let cfg = VmLaunchConfig {
        jail: Some(&own),
        ..cfg.clone()
    };
    let vm = KvmVm::restore(&cfg, snapshot, guest_cid, cgroup_procs)?;
    Ok(Box::new(crate::jail_uid::ClaimedVm::new(Box::new(vm), claim)))
}

/// Starts a VM from `cfg` (kvm backend only) for a snapshot: [`SnapshottableVm::snapshot`] pauses it and
/// writes it out.
pub fn start_for_snapshot(cfg: &VmLaunchConfig) -> Result<Box<dyn Vm>, BackendError> {
    let Some(jail) = cfg.jail else {
        return Ok(Box::new(KvmVm::start(cfg, &[])?));
    };
    let (own, claim) = crate::jail_uid::claim(jail)?;
    let cfg = VmLaunchConfig {
        jail: Some(&own),
        ..cfg.clone()
    };
    let vm = KvmVm::start(&cfg, &[])?;
    Ok(Box::new(crate::jail_uid::ClaimedVm::new(Box::new(vm), claim)))
}

/// The CPU template hull is asked for: `SoftKvm` on the software KVM (`kvm_pvm`), decided here because a
/// jailed hull cannot see `/sys/module/kvm_pvm` to pick it itself; else `None` (KVM's CPUID).
fn cpu_template() -> &'static str {
    if Path::new("/sys/module/kvm_pvm").exists() {
        "SoftKvm"
    } else {
        "None"
    }
}

/// One request on the API socket; any status but 2xx is an error carrying the body (the fault message).
fn api_call(api: &ApiClient, method: &str, path: &str, body: &serde_json::Value) -> Result<(), BackendError> {
    let err = |detail: String| BackendError::Api {
        path: path.into(),
        detail,
    };
    let resp = api
        .request(method, path, Some(&body.to_string()))
        .map_err(|e| err(e.to_string()))?;
    if resp.is_success() {
        Ok(())
    } else {
        Err(err(format!("status {}: {}", resp.status, resp.body.trim())))
    }
}

impl Vm for KvmVm {
    fn vsock_uds(&self) -> &Path {
        &self.uds
    }

    fn alive(&mut self) -> bool {
        !self.hull.exited()
    }

    fn vmm_pid(&self) -> u32 {
        self.hull.pid()
    }

    fn pids(&self) -> Vec<u32> {
        vec![self.hull.pid()]
    }

    fn console_log(&self) -> PathBuf {
        self.console.clone()
    }

    fn attach_disk(&mut self, slot: &str, image: &Path, read_only: bool) -> Result<(), BackendError> {
        // Firecracker's semantics: PATCH replaces the backing file of a running VM's drive; its read-only
        // flag stays what the slot was configured with, so a read-only slot (a shared cached image stays
        // intact) takes only read-only images and a read-write slot only images the guest may write.
        let writable = self.writable_slots.iter().any(|s| s == slot);
        if writable == read_only {
            return Err(BackendError::Api {
                path: format!("/drives/{slot}"),
                detail: format!(
                    "slot {slot} takes {} images only",
                    if writable { "read-write" } else { "read-only" }
                ),
            });
        }
        // A fresh name per attach: the previous image may still be open in hull until the PATCH is done.
        self.attached += 1;
        let access = if read_only { Access::Read } else { Access::ReadWrite };
        let path = self
            .files
            .give(image, &format!("{slot}-{}.img", self.attached), access)?;
        api_call(
            &self.api,
            "PATCH",
            &format!("/drives/{slot}"),
            &serde_json::json!({ "drive_id": slot, "path_on_host": path }),
        )
    }

    fn stop(&mut self, grace: Duration) {
        self.hull.wait_timeout(grace);
        self.hull.kill();
    }

    fn resume(&mut self) -> Result<(), BackendError> {
        api_call(&self.api, "PATCH", "/vm", &serde_json::json!({ "state": "Resumed" }))
    }

    fn snapshot(&mut self, to: &SnapshotFiles) -> Result<(), BackendError> {
        self.write_snapshot(to)
    }
}
