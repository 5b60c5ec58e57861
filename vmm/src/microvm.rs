//! The running microVM: a handle over the KVM VM, its vCPU threads and devices. It pauses, resumes,
//! injects Ctrl-Alt-Del and tells how and when the guest ended.
//! (Interface first; the builder fills it in.)

use std::os::fd::RawFd;

use crate::config::{VmConfig, VmmOptions};

/// Lifecycle state, as the API reports it (`GET /`: "Not started" | "Running" | "Paused").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Running,
    Paused,
    Exited,
}

/// How the guest ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset, as Linux's `reboot=k` does): a normal end.
    GuestReset,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// A vCPU stopped on something the VMM could not handle; the text says what.
    VcpuError(String),
}

impl ExitReason {
    /// The `hull` process's exit status for this ending.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset => 0,
            ExitReason::TripleFault => 3,
            ExitReason::VcpuError(_) => 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("Invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Build(String),
    #[error("The microVM is not running")]
    NotRunning,
    #[error("The microVM is already paused")]
    AlreadyPaused,
    #[error("The microVM is not paused")]
    NotPaused,
}

/// A started microVM.
pub struct MicroVm {
    _private: (),
}

impl MicroVm {
    /// Validates `config`, builds the VM and starts its vCPUs.
    pub fn start(config: &VmConfig, _options: VmmOptions) -> Result<MicroVm, VmmError> {
        config.validate()?;
        Err(VmmError::Build("not implemented yet".into()))
    }

    pub fn state(&self) -> VmState {
        VmState::Exited
    }

    /// Stops every vCPU; guest time stands still until `resume`.
    pub fn pause(&self) -> Result<(), VmmError> {
        Err(VmmError::NotRunning)
    }

    pub fn resume(&self) -> Result<(), VmmError> {
        Err(VmmError::NotRunning)
    }

    /// Presses Ctrl-Alt-Del on the guest's i8042 keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), VmmError> {
        Err(VmmError::NotRunning)
    }

    /// An eventfd that becomes readable once the guest has ended (poll it; do not read it).
    pub fn exit_fd(&self) -> RawFd {
        -1
    }

    /// How the guest ended, once it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        None
    }

    /// Blocks until the guest ends.
    pub fn wait(&self) -> ExitReason {
        ExitReason::VcpuError("not implemented".into())
    }
}
