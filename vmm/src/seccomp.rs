//! Seccomp filters on the threads the VMM starts. The policy (which system calls each kind of thread may
//! make) is not decided here: the `hull` binary compiles it (`hull/src/seccomp/`) and hands the programs
//! over in [`VmmOptions`](crate::VmmOptions). This file only installs them, first thing in each thread,
//! before the thread touches guest memory, a device or a guest-controlled exit.

use std::sync::Arc;

pub use seccompiler::BpfProgram;

/// The filters for the VMM's own threads. `None` leaves that kind of thread with only what it inherits
/// from the thread that started it (`--no-seccomp`, or library tests).
#[derive(Clone, Debug, Default)]
pub struct ThreadFilters {
    /// The event loop (`hull_events`): device emulation for virtio queues and host-side fds.
    pub event_loop: Option<Arc<BpfProgram>>,
    /// Each vCPU thread (`hull_vcpuN`): KVM_RUN and the exits it routes to the buses.
    pub vcpu: Option<Arc<BpfProgram>>,
}

/// Installing a filter on the calling thread failed; the thread must not go on.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the seccomp filter of thread {thread}: {reason}")]
pub struct SeccompError {
    pub thread: String,
    pub reason: String,
}

/// Installs `filter` (if any) on the calling thread. Filters stack: the thread keeps the one it inherited.
pub(crate) fn install(filter: Option<&BpfProgram>) -> Result<(), SeccompError> {
    let Some(filter) = filter else { return Ok(()) };
    seccompiler::apply_filter(filter).map_err(|e| SeccompError {
        thread: std::thread::current().name().unwrap_or("unnamed").to_string(),
        reason: e.to_string(),
    })
}
