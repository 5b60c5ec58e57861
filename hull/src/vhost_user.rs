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
    /// Serve MMDS (Firecracker's metadata service) on this interface: the guest's requests to the MMDS
    /// address are answered here and never reach the TAP.
    #[arg(long)]
    pub mmds: bool,
    /// The MMDS data store's content: a JSON file (needs --mmds).
    #[arg(long, value_name = "FILE", requires = "mmds")]
    pub metadata: Option<PathBuf>,
    /// The MMDS address, link-local (169.254.0.0/16).
    #[arg(long, value_name = "IPV4", default_value_t = devices::mmds::DEFAULT_IPV4, requires = "mmds")]
    pub mmds_ipv4: std::net::Ipv4Addr,
    /// V1 (plain GETs) or V2 (GETs need a session token from `PUT /latest/api/token`).
    #[arg(long, value_name = "VERSION", default_value = "V1", value_parser = ["V1", "V2"], requires = "mmds")]
    pub mmds_version: String,
    /// Answer in IMDS text whatever the guest's Accept header asks.
    #[arg(long, requires = "mmds")]
    pub mmds_imds_compat: bool,
    /// Largest MMDS data store in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = devices::mmds::DEFAULT_SIZE_LIMIT, requires = "mmds")]
    pub mmds_size_limit: usize,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Builds the MMDS a `--mmds` net backend serves, reading `--metadata` (before the seccomp filter, which
/// opens no files for a net backend).
fn net_mmds(a: &NetArgs) -> Result<Option<(devices::mmds::SharedMmds, std::net::Ipv4Addr)>, String> {
    use devices::mmds::{Mmds, MmdsVersion};
    if !a.mmds {
        return Ok(None);
    }
    if !a.mmds_ipv4.is_link_local() {
        return Err(format!(
            "--mmds-ipv4 {}: the MMDS IPv4 address is not link local",
            a.mmds_ipv4
        ));
    }
    let mut mmds = Mmds::new(a.mmds_size_limit);
    let version = if a.mmds_version == "V2" {
        MmdsVersion::V2
    } else {
        MmdsVersion::V1
    };
    mmds.configure(version, a.mmds_imds_compat);
    if let Some(path) = &a.metadata {
        let text = std::fs::read(path).map_err(|e| format!("--metadata {}: {e}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| format!("--metadata {}: not JSON: {e}", path.display()))?;
        mmds.data_store_mut()
            .put(value)
            .map_err(|e| format!("--metadata {}: {e}", path.display()))?;
    }
    Ok(Some((mmds.shared(), a.mmds_ipv4)))
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
    let mmds = match &cmd {
        VhostUserCommand::Net(a) => match net_mmds(a) {
            Ok(mmds) => mmds,
            Err(e) => {
                tracing::error!("{e}");
                return 1;
            }
        },
        _ => None,
    };
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
            mmds,
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn net_args(args: &[&str]) -> Result<NetArgs, clap::Error> {
        let line = ["hull", "vhost-user", "net", "--socket", "/tmp/n.sock", "--tap", "tap0"];
        let cli = Cli::try_parse_from(line.iter().chain(args))?;
        match cli.command {
            Some(Command::VhostUser(VhostUserCommand::Net(a))) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn mmds_flags_parse_and_need_mmds() {
        let a = net_args(&[]).unwrap();
        assert!(!a.mmds);
        assert!(net_mmds(&a).unwrap().is_none());
        let a = net_args(&["--mmds", "--mmds-version", "V2", "--mmds-ipv4", "169.254.170.2"]).unwrap();
        let (mmds, ip) = net_mmds(&a).unwrap().unwrap();
        assert_eq!(ip, std::net::Ipv4Addr::new(169, 254, 170, 2));
        assert_eq!(mmds.lock().unwrap().version(), devices::mmds::MmdsVersion::V2);
        assert!(
            net_args(&["--metadata", "/tmp/m.json"]).is_err(),
            "--metadata needs --mmds"
        );
        assert!(net_args(&["--mmds", "--mmds-version", "V3"]).is_err());
        let a = net_args(&["--mmds", "--mmds-ipv4", "10.0.0.1"]).unwrap();
        assert!(net_mmds(&a).unwrap_err().contains("not link local"));
        let a = net_args(&["--mmds", "--metadata", "/nonexistent/m.json"]).unwrap();
        assert!(net_mmds(&a).unwrap_err().contains("/nonexistent/m.json"));
    }
}
