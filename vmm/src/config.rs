//! The microVM's configuration: plain structs that the REST API, the JSON config file and `hull run` all
//! produce, so there is exactly one way into the VMM. Field names and JSON shapes follow Firecracker's API
//! (`boot-source`, `machine-config`); every value arriving here is user input and is validated before use.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most vCPUs a microVM may have (Firecracker's limit too).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest memory hull accepts, in MiB.
pub const MIN_MEM_MIB: usize = 16;
/// Largest guest memory hull accepts, in MiB (the layout keeps RAM below the 64-bit MMIO hole end).
pub const MAX_MEM_MIB: usize = 256 * 1024;
/// Kernel command line used when the user gives none.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1";

/// Errors in a configuration the user supplied. The `Display` text is what the API reports as
/// `fault_message`, so it names the field and the offending value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("The kernel file cannot be opened: {path}: {reason}")]
    KernelFile { path: String, reason: String },
    #[error("The initrd file cannot be opened: {path}: {reason}")]
    InitrdFile { path: String, reason: String },
    #[error("The number of vCPUs must be between 1 and {MAX_VCPUS}, and 1 or even when SMT is enabled (got {0})")]
    InvalidVcpuCount(u64),
    #[error("The memory size (MiB) must be between {MIN_MEM_MIB} and {MAX_MEM_MIB} (got {0})")]
    InvalidMemorySize(u64),
    #[error("The kernel command line is invalid: {0}")]
    InvalidBootArgs(String),
    #[error("Missing boot source: configure the kernel with PUT /boot-source before starting the microVM")]
    MissingBootSource,
}

/// `boot-source`: what to boot and with which command line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Host path of the guest kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    pub kernel_image_path: PathBuf,
    /// Kernel command line; hull appends what the machine needs (devices, CPU-template switches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of an initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

impl BootSourceConfig {
    /// Checks that the files exist and can be read, and that the command line is acceptable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_readable(&self.kernel_image_path).map_err(|reason| ConfigError::KernelFile {
            path: self.kernel_image_path.display().to_string(),
            reason,
        })?;
        if let Some(initrd) = &self.initrd_path {
            check_readable(initrd).map_err(|reason| ConfigError::InitrdFile {
                path: initrd.display().to_string(),
                reason,
            })?;
        }
        if let Some(args) = &self.boot_args {
            if args.bytes().any(|b| b == 0) {
                return Err(ConfigError::InvalidBootArgs("it contains a NUL byte".into()));
            }
            if !args.is_ascii() {
                return Err(ConfigError::InvalidBootArgs("it must be ASCII".into()));
            }
            if args.len() > crate::layout::CMDLINE_MAX_SIZE / 2 {
                return Err(ConfigError::InvalidBootArgs(format!(
                    "it is {} bytes long; at most {} are accepted",
                    args.len(),
                    crate::layout::CMDLINE_MAX_SIZE / 2
                )));
            }
        }
        Ok(())
    }

    /// The command line the user asked for, or hull's default.
    pub fn boot_args_or_default(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}

fn check_readable(path: &std::path::Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    std::fs::File::open(path).map(|_| ()).map_err(|e| e.to_string())
}

/// CPU templates: which CPU features the guest is shown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplateName {
    /// Pass KVM's supported CPUID through, except on a software KVM (`kvm_pvm`), where `SoftKvm` is chosen.
    #[default]
    None,
    /// Hide what a software KVM cannot emulate (cmpxchg16b, popcnt, xsave, AVX, SSE4, ...).
    SoftKvm,
}

/// `machine-config`: vCPUs and memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: usize,
    /// Simultaneous multithreading in the guest topology.
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub cpu_template: CpuTemplateName,
    /// Accepted for Firecracker compatibility; hull has no snapshots, so nothing reads the dirty log.
    #[serde(default)]
    pub track_dirty_pages: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig { vcpu_count: 1, mem_size_mib: 128, smt: false, cpu_template: CpuTemplateName::None, track_dirty_pages: false }
    }
}

impl MachineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let n = self.vcpu_count;
        if n == 0 || n > MAX_VCPUS || (self.smt && n > 1 && n % 2 == 1) {
            return Err(ConfigError::InvalidVcpuCount(n.into()));
        }
        if self.mem_size_mib < MIN_MEM_MIB || self.mem_size_mib > MAX_MEM_MIB {
            return Err(ConfigError::InvalidMemorySize(self.mem_size_mib as u64));
        }
        Ok(())
    }
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialOutput {
    /// The `hull` process's standard output (Firecracker's behaviour).
    #[default]
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    Sink,
}

/// Everything needed to build and start one microVM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmConfig {
    pub boot_source: Option<BootSourceConfig>,
    pub machine: MachineConfig,
}

impl VmConfig {
    /// Checks the whole configuration before any VM resource is created.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.boot_source.as_ref().ok_or(ConfigError::MissingBootSource)?.validate()?;
        self.machine.validate()
    }
}

/// How the VMM runs, besides the VM's own configuration.
#[derive(Clone, Debug, Default)]
pub struct VmmOptions {
    /// Log `Guest-boot-time` when the guest writes 123 to the boot-timer MMIO address.
    pub boot_timer: bool,
    pub serial: SerialOutput,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_config_rejects_out_of_range_values() {
        let mut m = MachineConfig::default();
        assert!(m.validate().is_ok());
        m.vcpu_count = 0;
        assert_eq!(m.validate(), Err(ConfigError::InvalidVcpuCount(0)));
        m.vcpu_count = MAX_VCPUS + 1;
        assert!(m.validate().is_err());
        m.vcpu_count = 3;
        m.smt = true;
        assert!(m.validate().is_err());
        m.smt = false;
        m.mem_size_mib = 1;
        assert_eq!(m.validate(), Err(ConfigError::InvalidMemorySize(1)));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<MachineConfig, _> = serde_json::from_str(r#"{"vcpu_count":1,"mem_size_mib":128,"bogus":1}"#);
        assert!(r.unwrap_err().to_string().contains("unknown field"));
        let r: Result<BootSourceConfig, _> = serde_json::from_str(r#"{"boot_args":"x"}"#);
        assert!(r.unwrap_err().to_string().contains("missing field"));
    }

    #[test]
    fn missing_kernel_is_reported_with_its_path() {
        let b = BootSourceConfig { kernel_image_path: "/nonexistent/vmlinux".into(), ..Default::default() };
        let e = b.validate().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/vmlinux"), "{e}");
    }
}
