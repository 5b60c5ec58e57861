//! Every way the jailer can fail, one variant each, with the path or value a person needs to act. The
//! messages follow Firecracker's jailer where it has one (`Invalid instance ID: ...`, `Failed to pivot
//! root: ...`), so scripts written for it read ours. Any error ends the jailer with exit status 1.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum JailerError {
    #[error("Invalid instance ID: {0}")]
    InvalidInstanceId(String),
    #[error("Failed to canonicalize path {0}: {1}")]
    Canonicalize(PathBuf, io::Error),
    #[error("{0} is not a file")]
    NotAFile(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("Failed to extract filename from path {0}")]
    ExtractFileName(PathBuf),
    #[error("Invalid format for resources limits: {0}")]
    ResLimitFormat(String),
    #[error("Invalid resource argument: {0}")]
    ResLimitArgument(String),
    #[error("Invalid limit value for resource: {0}: {1}")]
    ResLimitValue(String, String),
    #[error("Failed to set limit for resource: {0}: {1}")]
    Setrlimit(&'static str, io::Error),
    #[error("{0} is an invalid cgroup version specifier")]
    CgroupInvalidVersion(String),
    #[error("Invalid format for cgroups: {0}")]
    CgroupFormat(String),
    #[error("Cgroup invalid file: {0}")]
    CgroupInvalidFile(String),
    #[error("Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'")]
    CgroupInvalidParentPath,
    #[error("Controller {0} is unavailable")]
    CgroupControllerUnavailable(String),
    #[error("Hierarchy not found: {0}")]
    CgroupHierarchyMissing(String),
    #[error("Failed to move process to cgroup ({0}): {1}")]
    CgroupMove(PathBuf, io::Error),
    #[error("Failed to close inherited file descriptors: {0}")]
    CloseRange(io::Error),
    #[error("Failed to create directory {0}: {1}")]
    CreateDir(PathBuf, io::Error),
    #[error("Failed to change permissions on {0}: {1}")]
    Chmod(PathBuf, io::Error),
    #[error("Failed to change owner for {0}: {1}")]
    ChangeFileOwner(PathBuf, io::Error),
    #[error("Failed to open {0}: {1}")]
    Open(PathBuf, io::Error),
    #[error("Failed to read {0}: {1}")]
    Read(PathBuf, io::Error),
    #[error("Failed to write to {0}: {1}")]
    Write(PathBuf, io::Error),
    #[error("Failed to copy {0} to {1}: {2}")]
    Copy(PathBuf, PathBuf, io::Error),
    #[error("Failed to hard-link {0} to {1}: {2}")]
    HardLinkExec(PathBuf, PathBuf, io::Error),
    #[error("Failed to find the shared libraries of {0}: {1}")]
    Libraries(PathBuf, String),
    #[error("Detected hard link at: {0}")]
    HardLink(PathBuf),
    #[error("Failed to join network namespace: netns: {0}")]
    SetNetNs(io::Error),
    #[error("Failed to unshare into new mount namespace: {0}")]
    UnshareNewNs(io::Error),
    #[error("Failed to change the propagation type to private: {0}")]
    MountPropagationPrivate(io::Error),
    #[error("Failed to bind mount the jail root directory: {0}")]
    MountBind(io::Error),
    #[error("Failed to create the jail root directory before pivoting root: {0}")]
    MkdirOldRoot(io::Error),
    #[error("Failed to chdir into chroot directory: {0}")]
    ChdirNewRoot(io::Error),
    #[error("Failed to pivot root: {0}")]
    PivotRoot(io::Error),
    #[error("Failed to unmount the old jail root: {0}")]
    UmountOldRoot(io::Error),
    #[error("Failed to remove old jail root directory: {0}")]
    RmOldRootDir(io::Error),
    #[error("Failed to chroot: {0}")]
    Chroot(io::Error),
    #[error("Failed to create {1} via mknod inside the jail: {0}")]
    MknodDev(io::Error, &'static str),
    #[error("Failed to daemonize: {0}")]
    Daemonize(io::Error),
    #[error("Failed to daemonize: setsid: {0}")]
    SetSid(io::Error),
    #[error("Failed to duplicate fd: {0}")]
    Dup2(io::Error),
    #[error("Failed cloning into a new child process: {0}")]
    Clone(io::Error),
    #[error("Failed to drop privileges to uid {0} gid {1}: {2}")]
    DropPrivileges(u32, u32, io::Error),
    #[error("Failed to exec into {0}: {1}")]
    Exec(PathBuf, io::Error),
}
