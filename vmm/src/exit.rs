//! How a microVM ends: the one value a vCPU thread, the VMM handle and the `hull` binary agree on.
//! It owns no state; the vCPU run loop produces it (`vcpu/run_loop.rs`), `VcpuControl` keeps the
//! first one (`vcpu/control.rs`) and `MicroVm` hands it to the API and to the process exit status.

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
