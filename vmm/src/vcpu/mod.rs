//! vCPUs: their x86_64 boot state (`setup.rs`), the thread each one runs on and the run loop that routes
//! KVM exits to the buses (`run_loop.rs`), and the [`VcpuControl`] that pauses, resumes and stops them
//! all (`control.rs`). Whatever the guest does, a vCPU thread ends with an [`ExitReason`](crate::ExitReason),
//! never a panic.

mod control;
mod run_loop;
mod setup;

pub use control::{kick_signal, VcpuControl};
pub use run_loop::{spawn_vcpu, VcpuContext};
pub use setup::{configure_vcpu, gdt_entry, segment_from_gdt};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {index}: {what} failed: {source}")]
    Kvm {
        index: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {index}: KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs { index: u8, set: usize, wanted: usize },
    #[error("cannot write boot page tables or GDT into guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
    #[error("cannot start the thread of vCPU {index}: {source}")]
    Thread { index: u8, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("vCPU {index}: {source}")]
    Seccomp {
        index: u8,
        source: crate::seccomp::SeccompError,
    },
}
