//! `hull-jailer`: starts hull (or any binary) in a jail, with Firecracker's jailer flags and steps:
//!
//! 1. close inherited descriptors above 2 and clear the environment;
//! 2. parse and validate the flags ([`args`]): id, exec file, chroot base, cgroups, resource limits;
//! 3. create `<base>/<exec name>/<id>/root` and put the exec file in it ([`jail::place_exec_file`]); a
//!    dynamically linked one also gets its loader and libraries, read-only, at their paths (hull's addition:
//!    Firecracker's jailer expects a static binary);
//! 4. join `--netns`; set the resource limits (`no-file` 2048 unless given); create the cgroups and move
//!    this process in ([`cgroup`]);
//! 5. a new mount namespace whose root is the jail (pivot_root); create `/`, `/dev`, `/dev/net`, `/run`
//!    (0700) and the device nodes `/dev/kvm`, `/dev/net/tun`, `/dev/userfaultfd` (when the host has one),
//!    all owned by `--uid`/`--gid`;
//! 6. `--daemonize` (setsid, stdio to /dev/null); `--new-pid-ns` (fork into a new PID namespace);
//!    the PID of the process that will exec goes to `<exec name>.pid` in the jail;
//! 7. drop to `--uid`/`--gid` (no supplementary groups, no_new_privs) and exec `/<exec name> --id <id>
//!    <args after -->` with an empty environment (no `--id` before a subcommand such as `vhost-user`).
//!
//! Any failure prints the error on standard error and exits with status 1 (as Firecracker's jailer does);
//! `--help` and `--version` exit 0. The jailer must run as root; it trusts its arguments and the paths they
//! name (they are the operator's), and it creates nothing outside the jail but the cgroups.

mod args;
mod cgroup;
mod error;
mod jail;

use clap::Parser;

use crate::args::{Args, CgroupVersion, JailSpec};
use crate::error::JailerError;

/// Exit status of every failure.
const EXIT_FAILURE: i32 = 1;

fn main() {
    // Before anything else, Firecracker's sanitizing: nothing inherited reaches the jail.
    if let Err(e) = jail::close_inherited_fds() {
        eprintln!("hull-jailer: {e}");
        std::process::exit(EXIT_FAILURE);
    }
    jail::clear_env();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(EXIT_FAILURE);
        }
    };
    let e = match args.validate().and_then(run) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("hull-jailer: {e}");
    std::process::exit(EXIT_FAILURE);
}

/// The steps, in order; returns only on failure (success is an exec).
fn run(spec: JailSpec) -> Result<std::convert::Infallible, JailerError> {
    std::fs::create_dir_all(&spec.chroot_dir).map_err(|e| JailerError::CreateDir(spec.chroot_dir.clone(), e))?;
    let exec_in_jail = jail::place_exec_file(
        &spec.exec_file,
        &spec.exec_name,
        &spec.chroot_dir,
        spec.uid,
        spec.gid,
        spec.hardlink_exec,
    )?;
    jail::place_libraries(&jail::shared_libraries(&spec.exec_file)?, &spec.chroot_dir)?;
    if let Some(ns) = &spec.netns {
        jail::join_netns(ns)?;
    }
    jail::set_resource_limits(&spec.limits)?;
    if !spec.cgroups.is_empty() || spec.cgroup_version == CgroupVersion::V2 {
        let hierarchies = cgroup::Hierarchies::from_proc_mounts()?;
        if spec.cgroups.is_empty() {
            cgroup::join_existing_v2_parent(&hierarchies, &spec.parent_cgroup)?;
        } else {
            cgroup::setup(
                &hierarchies,
                spec.cgroup_version,
                &spec.cgroups,
                &spec.parent_cgroup,
                &spec.id,
            )?;
        }
    }
    let dev_null = spec
        .daemonize
        .then(|| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| JailerError::Open("/dev/null".into(), e))
        })
        .transpose()?;
    let uffd_minor = jail::userfaultfd_minor();

    jail::enter_chroot(&spec.chroot_dir)?;
    jail::make_jail_dirs(spec.uid, spec.gid)?;
    for dev in [jail::DEV_NET_TUN, jail::DEV_KVM] {
        jail::make_device(dev.path, dev.major, dev.minor, spec.uid, spec.gid)?;
    }
    if let Some(minor) = uffd_minor {
        jail::make_device(jail::DEV_USERFAULTFD, 10, minor, spec.uid, spec.gid)?;
    }

    if let Some(null) = dev_null {
        jail::daemonize(null)?;
    }
    let pid_file = std::path::PathBuf::from(format!("/{}.pid", spec.exec_name));
    if spec.new_pid_ns {
        jail::fork_into_new_pid_ns(&pid_file)?;
    } else {
        jail::write_pid_file(&pid_file, std::process::id())?;
    }
    jail::drop_privileges(spec.uid, spec.gid)?;
    Err(jail::exec(&exec_in_jail, &jail::exec_args(&spec.id, &spec.extra)))
}
