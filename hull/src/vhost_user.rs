//! `hull vhost-user {blk,vsock,net,rng}`: serve one virtio device to a vhost-user frontend (QEMU, Cloud
//! Hypervisor) on a unix socket, until that frontend disconnects. The device cores and the protocol live
//! in `devices::vhost_user`; this file only owns the argument shapes and the exit status.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::logging::LogLevel;
use crate::seccomp::policy::VhostUserDevice;
use crate::seccomp::{Filters, SeccompArgs, ThreadKind};

/// `hull vhost-user <device> ...`
#[derive(Debug, Subcommand)]
pub enum VhostUserCommand {
    /// A raw-file virtio-blk disk.
    Blk(BlkArgs),
    /// virtio-vsock with Firecracker's hybrid unix-socket backend.
    Vsock(VsockArgs),
    /// virtio-net over an existing TAP device.
    Net(NetArgs),
    /// virtio-rng (entropy) from the host's getrandom.
    Rng(RngArgs),
}

/// What every backend takes besides its device's own arguments.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Log level on standard error.
    #[arg(long, value_name = "LEVEL", default_value = "Info", value_parser = LogLevel::parse)]
    pub log_level: LogLevel,
    /// The VM this backend serves: named (as `vm_id`) in its security events, e.g. a guest's log flood.
    #[arg(long, value_name = "ID", default_value = "")]
    pub vm_id: String,
    #[command(flatten)]
    pub seccomp: SeccompArgs,
}

#[derive(Debug, Args)]
pub struct BlkArgs {
    /// vhost-user socket to listen on (a stale one is replaced).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Raw disk image; an empty file makes a placeholder slot of capacity 0 (see --control).
    #[arg(long, value_name = "FILE")]
    pub path: PathBuf,
    /// Refuse guest writes (VIRTIO_BLK_F_RO).
    #[arg(long)]
    pub read_only: bool,
    /// Drive id returned by GET_ID (first 20 bytes; default: the image's file name).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Control socket for swapping the disk while the guest runs: lines `attach <absolute-path> ro|rw` and
    /// `detach`, each answered `ok` or `error: <reason>`; the frontend is sent a config-change message.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct VsockArgs {
    /// vhost-user socket to listen on.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// The guest's context id (3 or more).
    #[arg(long, value_name = "CID")]
    pub guest_cid: u64,
    /// Host side: hosts connect here and send `CONNECT <port>`; guest connects to port P reach `<PATH>_P`.
    #[arg(long, value_name = "PATH")]
    pub uds_path: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct NetArgs {
    /// vhost-user socket to listen on.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Name of the TAP device to attach to (created if missing and allowed).
    #[arg(long, value_name = "NAME")]
    pub tap: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct RngArgs {
    /// vhost-user socket to listen on.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Runs the backend; returns the process exit status (0 once the frontend disconnected cleanly).
pub fn run(cmd: VhostUserCommand) -> i32 {
    use devices::vhost_user;
    let (common, device) = match &cmd {
        VhostUserCommand::Blk(a) => (&a.common, VhostUserDevice::Blk),
        VhostUserCommand::Vsock(a) => (&a.common, VhostUserDevice::Vsock),
        VhostUserCommand::Net(a) => (&a.common, VhostUserDevice::Net),
        VhostUserCommand::Rng(a) => (&a.common, VhostUserDevice::Rng),
    };
    crate::logging::init(common.log_level);
    hull_logging::security::set_identity(&common.vm_id, "");
    let seccomp = &common.seccomp;
    // On this, the only thread so far, before any socket or file is opened: the threads the backend
    // starts later (vhost-user-backend's workers, the control socket's) inherit it.
    let kind = ThreadKind::VhostUser(device);
    if let Err(e) = Filters::load(seccomp, &[kind]).and_then(|f| f.apply_to_current_thread(kind)) {
        tracing::error!(error = %e, "vhost-user backend not started");
        return 1;
    }
    let result = match cmd {
        VhostUserCommand::Blk(a) => vhost_user::blk::run(&vhost_user::blk::BlkArgs {
            socket: a.socket,
            path: a.path,
            read_only: a.read_only,
            id: a.id,
            control: a.control,
        }),
        VhostUserCommand::Vsock(a) => vhost_user::vsock::run(&vhost_user::vsock::VsockArgs {
            socket: a.socket,
            guest_cid: a.guest_cid,
            uds_path: a.uds_path,
        }),
        VhostUserCommand::Net(a) => vhost_user::net::run(&vhost_user::net::NetArgs {
            socket: a.socket,
            tap: a.tap,
        }),
        VhostUserCommand::Rng(a) => vhost_user::rng::run(&vhost_user::rng::RngArgs { socket: a.socket }),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "vhost-user backend failed");
            1
        }
    }
}
