//! The command line, Firecracker's jailer flags with their meaning, and its validation into a [`JailSpec`]:
//! the instance id (letters, digits and `-`, 1 to 64 characters), the exec file (must be a file), the chroot
//! base (must be a directory), `--cgroup FILE=VALUE`, `--parent-cgroup` (relative, no `.`/`..`) and
//! `--resource-limit fsize=N|no-file=N`. All inputs are the operator's and trusted as Firecracker trusts
//! them; the checks are there to catch mistakes and to keep `--id` from naming a path outside the base.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use clap::Parser;

use crate::error::JailerError;

/// Firecracker's default base of the chroot jails.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
const MAX_INSTANCE_ID_LEN: usize = 64;
/// `no-file` when no `--resource-limit` sets it (Firecracker's default).
pub const DEFAULT_NO_FILE: u64 = 2048;

#[derive(Debug, Parser)]
#[command(
    name = "hull-jailer",
    version,
    about = "Jail hull (or another binary): chroot in a new mount namespace, device nodes, cgroups, rlimits, \
             then drop to --uid/--gid and exec. Arguments after `--` go to the jailed binary."
)]
pub struct Args {
    /// Unique VM id: letters, digits and '-', at most 64 characters.
    #[arg(long, value_name = "ID")]
    pub id: String,
    /// The binary to copy into the jail and exec (hull).
    #[arg(long, value_name = "FILE")]
    pub exec_file: PathBuf,
    /// The uid the jailed binary runs as.
    #[arg(long, value_name = "UID")]
    pub uid: u32,
    /// The gid the jailed binary runs as.
    #[arg(long, value_name = "GID")]
    pub gid: u32,
    /// Base folder of the chroot jails: the jail is <base>/<exec file name>/<id>/root.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_CHROOT_BASE)]
    pub chroot_base_dir: PathBuf,
    /// Path of a network namespace handle to join (e.g. /var/run/netns/NAME).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// setsid() and standard input, output and error to /dev/null before exec.
    #[arg(long)]
    pub daemonize: bool,
    /// Exec the binary as PID 1 of a new PID namespace (its PID goes to <jail>/<exec file name>.pid).
    #[arg(long)]
    pub new_pid_ns: bool,
    /// cgroup hierarchy for --cgroup: 1 or 2.
    #[arg(long, value_name = "1|2", default_value = "1")]
    pub cgroup_version: String,
    /// A cgroup value, <cgroup_file>=<value> (e.g. cpuset.cpus=0); repeatable.
    #[arg(long, value_name = "FILE=VALUE")]
    pub cgroup: Vec<String>,
    /// Where under the cgroup root the VM's cgroup <id> goes (default: the exec file's name).
    #[arg(long, value_name = "PATH")]
    pub parent_cgroup: Option<PathBuf>,
    /// A resource bound, fsize=<bytes> or no-file=<n>; repeatable (no-file defaults to 2048).
    #[arg(long, value_name = "RESOURCE=VALUE")]
    pub resource_limit: Vec<String>,
    /// hull's addition: hard-link the exec file into the jail instead of copying it (falls back to a copy
    /// across file systems). Jailed processes then share the binary's pages with each other; Firecracker
    /// always copies.
    #[arg(long)]
    pub hardlink_exec: bool,
    /// Arguments for the jailed binary.
    #[arg(last = true, value_name = "ARGS")]
    pub extra: Vec<OsString>,
}

/// A cgroup value to write: `file` (e.g. `pids.max`) under the controller named by its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupValue {
    pub controller: String,
    pub file: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    pub fsize: Option<u64>,
    pub no_file: u64,
}

/// The validated jail: everything the steps in `main` need.
#[derive(Debug)]
pub struct JailSpec {
    pub id: String,
    pub exec_file: PathBuf,
    pub exec_name: String,
    pub chroot_dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub netns: Option<PathBuf>,
    pub daemonize: bool,
    pub new_pid_ns: bool,
    pub cgroup_version: CgroupVersion,
    pub cgroups: Vec<CgroupValue>,
    pub parent_cgroup: PathBuf,
    pub limits: ResourceLimits,
    pub hardlink_exec: bool,
    pub extra: Vec<OsString>,
}

/// Firecracker's instance id rule; the message names the first offence.
pub fn validate_id(id: &str) -> Result<(), JailerError> {
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN {
        return Err(JailerError::InvalidInstanceId(format!(
            "Invalid len ({});  the length must be between 1 and {MAX_INSTANCE_ID_LEN}",
            id.len()
        )));
    }
    if let Some((i, c)) = id
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(JailerError::InvalidInstanceId(format!(
            "Invalid char ({c}) at position {i}"
        )));
    }
    Ok(())
}

/// A relative path without `.`, `..` or a root.
fn is_plain_relative(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

pub fn parse_resource_limits(args: &[String]) -> Result<ResourceLimits, JailerError> {
    let mut limits = ResourceLimits {
        fsize: None,
        no_file: DEFAULT_NO_FILE,
    };
    for arg in args {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| JailerError::ResLimitFormat(arg.clone()))?;
        let n = value
            .parse::<u64>()
            .map_err(|e| JailerError::ResLimitValue(value.to_string(), e.to_string()))?;
        match name {
            "fsize" => limits.fsize = Some(n),
            "no-file" => limits.no_file = n,
            other => return Err(JailerError::ResLimitArgument(other.to_string())),
        }
    }
    Ok(limits)
}

pub fn parse_cgroup(arg: &str) -> Result<CgroupValue, JailerError> {
    let (file, value) = match arg.split_once('=') {
        Some((f, v)) if !f.is_empty() && !v.is_empty() && !v.contains('=') => (f, v),
        _ => return Err(JailerError::CgroupFormat(arg.to_string())),
    };
    if !is_plain_relative(Path::new(file)) || file.contains('/') {
        return Err(JailerError::CgroupInvalidFile(arg.to_string()));
    }
    let controller = match file.split_once('.') {
        Some((c, rest)) if !c.is_empty() && !rest.is_empty() => c,
        _ => return Err(JailerError::CgroupInvalidFile(arg.to_string())),
    };
    Ok(CgroupValue {
        controller: controller.to_string(),
        file: file.to_string(),
        value: value.to_string(),
    })
}

impl Args {
    /// Checks every argument and resolves the paths, in Firecracker's order: id, exec file, chroot base.
    pub fn validate(self) -> Result<JailSpec, JailerError> {
        validate_id(&self.id)?;
        let exec_file =
            std::fs::canonicalize(&self.exec_file).map_err(|e| JailerError::Canonicalize(self.exec_file.clone(), e))?;
        if !exec_file.is_file() {
            return Err(JailerError::NotAFile(exec_file));
        }
        let exec_name = exec_file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| JailerError::ExtractFileName(exec_file.clone()))?;
        let base = std::fs::canonicalize(&self.chroot_base_dir)
            .map_err(|e| JailerError::Canonicalize(self.chroot_base_dir.clone(), e))?;
        if !base.is_dir() {
            return Err(JailerError::NotADirectory(base));
        }
        let chroot_dir = base.join(&exec_name).join(&self.id).join("root");
        let parent_cgroup = self.parent_cgroup.clone().unwrap_or_else(|| PathBuf::from(&exec_name));
        if !is_plain_relative(&parent_cgroup) {
            return Err(JailerError::CgroupInvalidParentPath);
        }
        let cgroup_version = match self.cgroup_version.as_str() {
            "1" => CgroupVersion::V1,
            "2" => CgroupVersion::V2,
            other => return Err(JailerError::CgroupInvalidVersion(other.to_string())),
        };
        let cgroups = self.cgroup.iter().map(|c| parse_cgroup(c)).collect::<Result<_, _>>()?;
        let limits = parse_resource_limits(&self.resource_limit)?;
        Ok(JailSpec {
            id: self.id,
            exec_file,
            exec_name,
            chroot_dir,
            uid: self.uid,
            gid: self.gid,
            netns: self.netns,
            daemonize: self.daemonize,
            new_pid_ns: self.new_pid_ns,
            cgroup_version,
            cgroups,
            parent_cgroup,
            limits,
            hardlink_exec: self.hardlink_exec,
            extra: self.extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn ids_follow_firecrackers_rule() {
        validate_id("551e7604-e35c-42b3-b825-416853441234").unwrap();
        validate_id(&"a".repeat(64)).unwrap();
        let msg = |id: &str| validate_id(id).unwrap_err().to_string();
        assert_eq!(
            msg(""),
            "Invalid instance ID: Invalid len (0);  the length must be between 1 and 64"
        );
        assert!(msg(&"a".repeat(65)).contains("Invalid len (65)"));
        assert_eq!(msg("12_3aa"), "Invalid instance ID: Invalid char (_) at position 2");
        for bad in ["../x", "a/b", "a b", "a.b", "ä"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resource_limits_parse_strictly() {
        let l = parse_resource_limits(&[]).unwrap();
        assert_eq!(
            l,
            ResourceLimits {
                fsize: None,
                no_file: 2048
            }
        );
        let l = parse_resource_limits(&["fsize=250000000".into(), "no-file=1024".into()]).unwrap();
        assert_eq!(
            l,
            ResourceLimits {
                fsize: Some(250_000_000),
                no_file: 1024
            }
        );
        assert!(matches!(
            parse_resource_limits(&["fsize".into()]),
            Err(JailerError::ResLimitFormat(_))
        ));
        assert!(matches!(
            parse_resource_limits(&["nproc=3".into()]),
            Err(JailerError::ResLimitArgument(_))
        ));
        assert!(matches!(
            parse_resource_limits(&["no-file=-1".into()]),
            Err(JailerError::ResLimitValue(..))
        ));
    }

    #[test]
    fn cgroup_values_name_a_controller_file() {
        let c = parse_cgroup("cpuset.cpus=0-1").unwrap();
        assert_eq!(
            (c.controller.as_str(), c.file.as_str(), c.value.as_str()),
            ("cpuset", "cpuset.cpus", "0-1")
        );
        for bad in [
            "cpuset.cpus",
            "=1",
            "cpus=",
            "a=b=c",
            "../x.y=1",
            "a/b.c=1",
            "nodot=1",
            ".x=1",
        ] {
            assert!(parse_cgroup(bad).is_err(), "{bad}");
        }
        assert!(is_plain_relative(Path::new("all_uvms/external")));
        for bad in ["/abs", "a/../b", "./a", ""] {
            assert!(!is_plain_relative(Path::new(bad)), "{bad}");
        }
    }

    #[test]
    fn flags_parse_with_firecrackers_names() {
        let a = Args::try_parse_from([
            "hull-jailer",
            "--id",
            "vm-1",
            "--exec-file",
            "/bin/true",
            "--uid",
            "123",
            "--gid",
            "100",
            "--netns",
            "/var/run/netns/x",
            "--daemonize",
            "--new-pid-ns",
            "--cgroup-version",
            "2",
            "--cgroup",
            "pids.max=10",
            "--parent-cgroup",
            "uvms",
            "--resource-limit",
            "no-file=64",
            "--",
            "--api-sock",
            "/api.sock",
        ])
        .unwrap();
        assert_eq!(
            (a.uid, a.gid, a.chroot_base_dir.as_path()),
            (123, 100, Path::new(DEFAULT_CHROOT_BASE))
        );
        assert!(a.daemonize && a.new_pid_ns);
        let mut a = a;
        a.chroot_base_dir = std::env::temp_dir();
        assert_eq!(a.extra, vec![OsString::from("--api-sock"), OsString::from("/api.sock")]);
        let spec = a.validate().unwrap();
        assert_eq!(spec.cgroup_version, CgroupVersion::V2);
        assert_eq!(spec.exec_name, "true");
        assert!(spec.chroot_dir.ends_with("true/vm-1/root"));
        assert!(Args::try_parse_from(["hull-jailer", "--id", "x"]).is_err());
    }
}
