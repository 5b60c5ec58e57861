//! hull's virtual machine monitor: one KVM microVM per process.
//!
//! `MicroVm::start` builds a VM from a [`MicroVmConfig`] as a readable sequence of steps (`builder.rs`)
//! and returns a handle that pauses, resumes, sends Ctrl-Alt-Del and reports how the guest ended.
//! [`PreparedVm`] builds the part that depends only on the machine and boot source ahead of that.

pub mod boot;
mod builder;
pub mod config;
pub mod cpu_config;
pub mod cpu_template;
mod event_loop;
mod exit;
pub mod layout;
pub mod memory;
pub mod metrics;
mod microvm;
pub mod mptable;
pub mod msi_routing;
pub mod pmem;
mod prepared;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
mod virtio_devices;

pub use builder::BuildError;
pub use config::{
    BalloonDeviceConfig, BlockDeviceConfig, BootSourceConfig, CacheType, ConfigError, CpuTemplateName,
    EntropyDeviceConfig, HugePages, IoEngine, MachineConfig, MicroVmConfig, MmdsAttachment, NetworkInterfaceConfig,
    PmemConfig, RateLimiterConfig, SerialConfig, SerialOutput, TokenBucketConfig, VmmOptions, VsockConfig,
};
pub use devices::virtio::balloon::{BalloonError, BalloonStats};
pub use exit::ExitReason;
pub use metrics::{MetricSources, VcpuMetrics};
pub use microvm::{MicroVm, VmState, VmmError};
pub use prepared::PreparedVm;
pub use seccomp::ThreadFilters;
pub use virtio_devices::BalloonHandle;

/// The version reported by the API (`GET /version`, `GET /`).
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
