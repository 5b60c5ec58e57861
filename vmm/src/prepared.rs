//! The part of a microVM that can be built before `InstanceStart` (a "pre-build"): KVM opened and its
//! capabilities checked, the VM with its irqchip and PIT, guest memory mapped and registered, the kernel
//! and initrd loaded, and the vCPUs created and configured. It depends only on the machine configuration,
//! the boot source's files and the custom CPU template, so the API builds it as soon as those are known
//! (`builder::prepare_vm`), and `InstanceStart` finishes it (devices, command line, boot structures,
//! threads) — but only when it still fits the final configuration ([`PreparedVm::fits`]); otherwise it is
//! dropped and the whole VM is built from scratch, so the guest never sees a difference.
//!
//! The kernel and initrd files are recognised by path and by their inode, size and change times taken
//! before they were read: a file replaced or rewritten after the pre-build makes it stale.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::boot::{InitrdRegion, LoadedKernel};
use crate::config::{ConfigError, MachineConfig, MicroVmConfig};
use crate::cpu_config::CustomCpuTemplate;
use crate::cpu_template::CpuTemplate;
use crate::memory::GuestMemoryMmap;

/// Which file was read: its identity and the times that change whenever it is written or replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        Ok(FileStamp {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Everything a pre-build depends on. Two configurations with equal keys give the same prepared part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PreparedKey {
    /// vCPU count, memory size, SMT, CPU template, dirty-page tracking, huge pages.
    machine: MachineConfig,
    kernel: FileStamp,
    initrd: Option<FileStamp>,
    cpu_config: Option<CustomCpuTemplate>,
}

impl PreparedKey {
    /// The key of `config`, reading the boot files' metadata now (before they are loaded).
    pub(crate) fn of(config: &MicroVmConfig) -> Result<PreparedKey, ConfigError> {
        let boot = config.boot_source.as_ref().ok_or(ConfigError::MissingBootSource)?;
        let kernel = FileStamp::of(&boot.kernel_image_path).map_err(|e| ConfigError::KernelFile {
            path: boot.kernel_image_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let initrd = match &boot.initrd_path {
            Some(path) => Some(FileStamp::of(path).map_err(|e| ConfigError::InitrdFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        Ok(PreparedKey {
            machine: config.machine.clone(),
            kernel,
            initrd,
            cpu_config: config.cpu_config.clone(),
        })
    }
}

/// A pre-built VM, not yet running: see the module documentation.
pub struct PreparedVm {
    pub(crate) key: PreparedKey,
    pub(crate) template: CpuTemplate,
    pub(crate) kvm: Kvm,
    pub(crate) vm: VmFd,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) kernel: LoadedKernel,
    pub(crate) initrd: Option<InitrdRegion>,
    pub(crate) vcpus: Vec<VcpuFd>,
    /// The CPUID each vCPU was given (kept for snapshots).
    pub(crate) cpuids: Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>,
}

impl PreparedVm {
    /// Builds what `config`'s machine configuration, boot source and CPU configuration determine. Its errors
    /// are those `InstanceStart` would report for the same configuration.
    pub fn new(config: &MicroVmConfig) -> Result<PreparedVm, crate::VmmError> {
        crate::builder::prepare_vm(config)
    }

    /// Whether this pre-build is exactly what building `config` from scratch would make now.
    pub fn fits(&self, config: &MicroVmConfig) -> bool {
        PreparedKey::of(config).is_ok_and(|key| key == self.key)
    }
}

impl std::fmt::Debug for PreparedVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedVm")
            .field("key", &self.key)
            .field("vcpus", &self.vcpus.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BootSourceConfig, CpuTemplateName, HugePages};

    struct Files {
        dir: PathBuf,
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn files(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("hull-prepared-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["k1", "k2", "i1"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        Files { dir }
    }

    fn config(files: &Files) -> MicroVmConfig {
        MicroVmConfig {
            boot_source: Some(BootSourceConfig {
                kernel_image_path: files.dir.join("k1"),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: Some(files.dir.join("i1")),
            }),
            ..Default::default()
        }
    }

    fn key(c: &MicroVmConfig) -> PreparedKey {
        PreparedKey::of(c).unwrap()
    }

    #[test]
    fn the_same_machine_and_boot_files_fit_whatever_the_command_line_and_devices() {
        let f = files("same");
        let base = config(&f);
        let mut other = base.clone();
        other.boot_source.as_mut().unwrap().boot_args = Some("console=ttyS0 quiet".into());
        other.vsock = Some(crate::config::VsockConfig {
            vsock_id: None,
            guest_cid: 3,
            uds_path: f.dir.join("v.sock"),
        });
        assert_eq!(key(&base), key(&other));
    }

    #[test]
    fn any_machine_field_or_cpu_configuration_change_makes_it_stale() {
        let f = files("machine");
        let base = config(&f);
        let changes: Vec<fn(&mut MachineConfig)> = vec![
            |m| m.mem_size_mib = 256,
            |m| m.vcpu_count = 2,
            |m| m.smt = true,
            |m| m.cpu_template = CpuTemplateName::SoftKvm,
            |m| m.track_dirty_pages = true,
            |m| m.huge_pages = HugePages::Hugetlbfs2M,
        ];
        for (i, change) in changes.into_iter().enumerate() {
            let mut c = base.clone();
            change(&mut c.machine);
            assert_ne!(key(&base), key(&c), "machine change {i}");
        }
        let mut c = base.clone();
        c.cpu_config = Some(CustomCpuTemplate::default());
        assert_ne!(key(&base), key(&c), "a custom CPU template");
    }

    #[test]
    fn another_kernel_or_initrd_path_makes_it_stale() {
        let f = files("paths");
        let base = config(&f);
        let mut c = base.clone();
        c.boot_source.as_mut().unwrap().kernel_image_path = f.dir.join("k2");
        assert_ne!(key(&base), key(&c));
        let mut c = base.clone();
        c.boot_source.as_mut().unwrap().initrd_path = None;
        assert_ne!(key(&base), key(&c));
    }

    #[test]
    fn a_kernel_file_rewritten_or_replaced_in_place_makes_it_stale() {
        let f = files("rewrite");
        let base = config(&f);
        let before = key(&base);
        // Same path, new contents: the change time moves (and the size here).
        std::fs::write(f.dir.join("k1"), "a longer kernel").unwrap();
        assert_ne!(before, key(&base));
        let before = key(&base);
        // Same path, another file renamed over it: another inode.
        std::fs::rename(f.dir.join("k2"), f.dir.join("k1")).unwrap();
        assert_ne!(before, key(&base));
        std::fs::remove_file(f.dir.join("k1")).unwrap();
        assert!(PreparedKey::of(&base).is_err(), "a missing kernel has no key");
    }
}
