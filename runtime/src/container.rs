//! The agent's `CreateContainerRequest`, built in one place for `hull run` and the containerd shim. Both
//! give the agent the same parts: the rootfs disk (mounted read-only under an overlay with a tmpfs upper
//! layer, so writes behave as with runc and vanish with the container), a disk per volume, files copied
//! into the guest, which standard streams the host attaches, and the OCI spec as JSON. Where those come
//! from is the caller's: `hull run` boots a VM with its command line's rootfs and volumes as drives and
//! writes the spec from runc's defaults ([`crate::spec`]); the shim attaches the OCI bundle's rootfs and
//! volumes to a running pod VM and fits the bundle's spec for the guest.
//!
//! What goes in here is the host's; the agent still checks devices, paths and the spec before acting.

use hull_agent_protocol::agent::{CreateContainerRequest, File, StdioConfig, Storage};

use crate::backend::{self, BackendKind, Drive};

/// A disk as a container mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDisk {
    /// How the agent finds the device ([`backend::guest_device`]: `vda` or `serial:<drive id>`).
    pub device: String,
    pub fstype: String,
    pub read_only: bool,
}

impl GuestDisk {
    /// Boot drive `index` (0 is the rootfs) of a VM of backend `kind`.
    pub fn of_drive(kind: BackendKind, index: usize, drive: &Drive) -> GuestDisk {
        GuestDisk {
            device: backend::guest_device(kind, index, &drive.id),
            fstype: drive.image.fstype.into(),
            read_only: drive.read_only,
        }
    }
}

/// A volume: a disk mounted at `container_path` (absolute) in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub disk: GuestDisk,
    pub container_path: String,
}

/// A file copied into the guest; the spec's mounts name it as source `hull-file:<name>`.
pub struct GuestFile<'a> {
    pub name: &'a str,
    pub content: &'a [u8],
    pub mode: u32,
    /// The host will read it back at exit (a read-write file mount): the agent's ReadFile serves only these.
    pub copy_back: bool,
}

/// Which standard streams of a process the host attaches (the others are /dev/null in the guest). With a
/// terminal, the host attaches the one terminal stream instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streams {
    pub terminal: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Streams {
    /// The agent's view: which pipes to keep for the host (none with a terminal).
    pub fn config(&self) -> StdioConfig {
        let mut s = StdioConfig::new();
        if !self.terminal {
            s.stdin = self.stdin;
            s.stdout = self.stdout;
            s.stderr = self.stderr;
        }
        s
    }
}

/// Everything the agent needs to create a container.
pub struct NewContainer<'a> {
    pub id: &'a str,
    /// The OCI runtime spec (config.json) as the guest must see it.
    pub oci_spec: &'a serde_json::Value,
    /// Always mounted read-only, with a writable overlay on top.
    pub rootfs: GuestDisk,
    /// The VM's scratch disk ([`crate::image::scratch`]), which holds the overlay's writable layer; without
    /// one it is a tmpfs in the guest's RAM.
    pub scratch: Option<GuestDisk>,
    pub volumes: Vec<VolumeMount>,
    pub files: Vec<GuestFile<'a>>,
    pub streams: Streams,
}

impl NewContainer<'_> {
    pub fn request(&self) -> CreateContainerRequest {
        let mut req = CreateContainerRequest::new();
        req.container_id = self.id.into();
        let mut rootfs = Storage::new();
        rootfs.device = self.rootfs.device.clone();
        rootfs.fstype = self.rootfs.fstype.clone();
        rootfs.read_only = true;
        rootfs.writable_overlay = true;
        if let Some(s) = &self.scratch {
            rootfs.upper_device = s.device.clone();
        }
        req.rootfs = Some(rootfs).into();
        for v in &self.volumes {
            let mut m = Storage::new();
            m.device = v.disk.device.clone();
            m.fstype = v.disk.fstype.clone();
            m.read_only = v.disk.read_only;
            m.container_path = v.container_path.clone();
            req.mounts.push(m);
        }
        for f in &self.files {
            let mut af = File::new();
            af.name = f.name.into();
            af.content = f.content.to_vec();
            af.mode = f.mode;
            af.copy_back = f.copy_back;
            req.files.push(af);
        }
        req.stdio = Some(self.streams.config()).into();
        req.oci_spec_json = self.oci_spec.to_string().into_bytes();
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::RootfsImage;

    #[test]
    fn the_request_carries_disks_files_streams_and_spec() {
        let drive = |id: &str, read_only| Drive {
            id: id.into(),
            image: RootfsImage {
                path: "/x".into(),
                fstype: "ext4",
            },
            read_only,
        };
        let spec = serde_json::json!({ "process": { "args": ["true"] } });
        let c = NewContainer {
            id: "c1",
            oci_spec: &spec,
            rootfs: GuestDisk::of_drive(BackendKind::Kvm, 0, &drive("rootfs", true)),
            scratch: Some(GuestDisk::of_drive(BackendKind::Kvm, 2, &drive("scratch", false))),
            volumes: vec![VolumeMount {
                disk: GuestDisk::of_drive(BackendKind::Kvm, 1, &drive("vol0", false)),
                container_path: "/data".into(),
            }],
            files: vec![GuestFile {
                name: "f0",
                content: b"x",
                mode: 0o644,
                copy_back: true,
            }],
            streams: Streams {
                terminal: false,
                stdin: false,
                stdout: true,
                stderr: true,
            },
        };
        let r = c.request();
        assert_eq!(r.container_id, "c1");
        assert_eq!(
            (r.rootfs.device.as_str(), r.rootfs.read_only, r.rootfs.writable_overlay),
            ("vda", true, true)
        );
        assert_eq!(r.rootfs.upper_device, "serial:scratch");
        assert_eq!(
            (r.mounts[0].device.as_str(), r.mounts[0].read_only),
            ("serial:vol0", false)
        );
        assert_eq!(r.mounts[0].container_path, "/data");
        assert_eq!(
            (r.files[0].name.as_str(), r.files[0].mode, r.files[0].copy_back),
            ("f0", 0o644, true)
        );
        assert!(!r.stdio.stdin && r.stdio.stdout && r.stdio.stderr);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&r.oci_spec_json).unwrap(),
            spec
        );
        let qemu = GuestDisk::of_drive(BackendKind::Qemu, 0, &drive("rootfs", true));
        assert_eq!(qemu.device, "serial:rootfs");
        let tty = Streams {
            terminal: true,
            stdin: true,
            stdout: true,
            stderr: true,
        };
        assert_eq!(tty.config(), StdioConfig::new());
    }
}
