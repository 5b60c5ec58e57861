//! hull's virtual machine monitor: one KVM microVM per process.
//!
//! `MicroVm::start` builds a VM from a [`VmConfig`] as a readable sequence of steps (see `builder.rs`) and
//! returns a handle that pauses, resumes, sends Ctrl-Alt-Del and reports how the guest ended.

pub mod config;
pub mod layout;
mod microvm;

pub use config::{
    BootSourceConfig, ConfigError, CpuTemplateName, MachineConfig, SerialOutput, VmConfig, VmmOptions,
};
pub use microvm::{ExitReason, MicroVm, VmState, VmmError};

/// The version reported by the API (`GET /version`, `GET /`).
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
