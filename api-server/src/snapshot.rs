//! The bodies of `PUT /snapshot/create` and `PUT /snapshot/load` (Firecracker's SnapshotCreateParams and
//! SnapshotLoadParams) and their translation into the VMM's parameters, with Firecracker's rules: a load
//! names its memory either through `mem_backend` or the deprecated `mem_file_path`, never both;
//! `enable_diff_snapshots` is the deprecated name of `track_dirty_pages`. Bodies are client input,
//! decoded strictly (unknown fields are refused).

use std::path::PathBuf;

use serde::Deserialize;
use vmm::snapshot::{
    CreateParams, DriveOverride, LoadParams, MemBackend, NetworkOverride, SnapshotType, VsockOverride,
};

/// `PUT /snapshot/create`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateBody {
    pub mem_file_path: PathBuf,
    pub snapshot_path: PathBuf,
    #[serde(default)]
    pub snapshot_type: SnapshotType,
}

impl From<SnapshotCreateBody> for CreateParams {
    fn from(b: SnapshotCreateBody) -> Self {
        CreateParams {
            snapshot_path: b.snapshot_path,
            mem_file_path: b.mem_file_path,
            snapshot_type: b.snapshot_type,
        }
    }
}

/// `mem_backend.backend_type`.
#[derive(Debug, Deserialize)]
pub enum BackendType {
    File,
    Uffd,
}

/// `mem_backend`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackendBody {
    pub backend_type: BackendType,
    pub backend_path: PathBuf,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadBody {
    pub snapshot_path: PathBuf,
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    #[serde(default)]
    pub mem_backend: Option<MemBackendBody>,
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub resume_vm: bool,
    #[serde(default)]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default)]
    pub vsock_override: Option<VsockOverride>,
    /// A hull extension: other backing files for the snapshot's drives.
    #[serde(default)]
    pub drive_overrides: Vec<DriveOverride>,
}

/// A load body that names its memory wrongly (Firecracker's messages).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoadBodyError {
    #[error("too many fields: either `mem_backend` or `mem_file_path` exclusively is required.")]
    BothMemSources,
    #[error("missing field: either `mem_backend` or `mem_file_path` is required.")]
    NoMemSource,
}

impl TryFrom<SnapshotLoadBody> for LoadParams {
    type Error = LoadBodyError;

    fn try_from(b: SnapshotLoadBody) -> Result<Self, LoadBodyError> {
        let mem_backend = match (b.mem_file_path, b.mem_backend) {
            (Some(_), Some(_)) => return Err(LoadBodyError::BothMemSources),
            (None, None) => return Err(LoadBodyError::NoMemSource),
            (Some(path), None) => MemBackend::File(path),
            (None, Some(m)) => match m.backend_type {
                BackendType::File => MemBackend::File(m.backend_path),
                BackendType::Uffd => MemBackend::Uffd(m.backend_path),
            },
        };
        Ok(LoadParams {
            snapshot_path: b.snapshot_path,
            mem_backend,
            track_dirty_pages: b.track_dirty_pages || b.enable_diff_snapshots,
            resume_vm: b.resume_vm,
            network_overrides: b.network_overrides,
            vsock_override: b.vsock_override,
            drive_overrides: b.drive_overrides,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<LoadParams, LoadBodyError> {
        LoadParams::try_from(serde_json::from_str::<SnapshotLoadBody>(json).unwrap())
    }

    #[test]
    fn load_bodies_name_their_memory_once() {
        let p = load(r#"{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},"enable_diff_snapshots":true}"#)
            .unwrap();
        assert_eq!(p.mem_backend, MemBackend::File("m".into()));
        assert!(p.track_dirty_pages && !p.resume_vm);
        let p = load(r#"{"snapshot_path":"s","mem_file_path":"m","resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]}"#).unwrap();
        assert_eq!(p.mem_backend, MemBackend::File("m".into()));
        assert_eq!(p.network_overrides[0].host_dev_name, "tap1");
        let p = load(
            r#"{"snapshot_path":"s","mem_file_path":"m","vsock_override":{"uds_path":"/v.sock","guest_cid":7},
                "drive_overrides":[{"drive_id":"slot0","path_on_host":"/e"}]}"#,
        )
        .unwrap();
        let v = p.vsock_override.unwrap();
        assert_eq!((v.uds_path, v.guest_cid), ("/v.sock".into(), Some(7)));
        assert_eq!(p.drive_overrides[0].drive_id, "slot0");
        assert!(serde_json::from_str::<SnapshotLoadBody>(
            r#"{"snapshot_path":"s","mem_file_path":"m","vsock_override":{"uds_path":"/v","cid":7}}"#
        )
        .is_err());
        let both = load(
            r#"{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_type":"Uffd","backend_path":"u"}}"#,
        );
        assert_eq!(both.unwrap_err(), LoadBodyError::BothMemSources);
        assert_eq!(
            load(r#"{"snapshot_path":"s"}"#).unwrap_err(),
            LoadBodyError::NoMemSource
        );
        let c: SnapshotCreateBody = serde_json::from_str(r#"{"snapshot_path":"s","mem_file_path":"m"}"#).unwrap();
        assert_eq!(CreateParams::from(c).snapshot_type, SnapshotType::Full);
        assert!(
            serde_json::from_str::<SnapshotCreateBody>(r#"{"snapshot_path":"s","mem_file_path":"m","x":1}"#).is_err()
        );
    }
}
