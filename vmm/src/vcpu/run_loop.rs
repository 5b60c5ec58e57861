//! The thread each vCPU runs on and its run loop: KVM_RUN, then route the exit — port I/O to the PIO
//! bus, MMIO to the MMIO bus (virtio-mmio, the boot timer), HLT parks the thread, a reset, triple
//! fault or KVM error ends the VM with an [`ExitReason`]. Every exit is handled or logged; whatever
//! the guest does, the loop ends with an `ExitReason`, never a panic. Unmapped addresses read as
//! 0xff (ports) or 0 (MMIO). Port and MMIO exits and failed runs are counted in [`VcpuMetrics`] (one
//! relaxed atomic add each).

use std::sync::Arc;

use devices::bus::Bus;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use super::control::{install_kick_handler, VcpuControl};
use super::VcpuError;
use crate::exit::ExitReason;
use crate::metrics::VcpuMetrics;
use crate::seccomp::{self, BpfProgram};

/// What a vCPU thread needs besides its fd.
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub control: Arc<VcpuControl>,
    /// Written by the i8042 when the guest resets the machine.
    pub reset_evt: EventFd,
    /// Exit counters, shared by every vCPU.
    pub metrics: Arc<VcpuMetrics>,
    /// The MSRs a snapshot saves (KVM_GET_MSR_INDEX_LIST).
    pub msr_list: Vec<u32>,
    /// The CPUID each vCPU was given (by index), for snapshots.
    pub cpuids: Vec<Vec<kvm_bindings::kvm_cpuid_entry2>>,
}

enum Next {
    Continue,
    Halted,
    Stop(ExitReason),
    InternalError,
}

const I8042_PORTS: [u16; 2] = [0x60, 0x64];

fn handle_exit(index: u8, exit: VcpuExit<'_>, ctx: &VcpuContext) -> Next {
    match exit {
        VcpuExit::IoOut(port, data) => {
            ctx.metrics.exit_io_out.inc();
            if !ctx.pio.write(u64::from(port), data) {
                hull_logging::guest_debug!(
                    vcpu = index,
                    port = format_args!("{port:#x}"),
                    "port write with no device"
                );
            }
            if I8042_PORTS.contains(&port) && ctx.reset_evt.read().is_ok() {
                return Next::Stop(ExitReason::GuestReset);
            }
            Next::Continue
        }
        VcpuExit::IoIn(port, data) => {
            ctx.metrics.exit_io_in.inc();
            if !ctx.pio.read(u64::from(port), data) {
                hull_logging::guest_debug!(
                    vcpu = index,
                    port = format_args!("{port:#x}"),
                    "port read with no device"
                );
                data.fill(0xff);
            }
            Next::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            ctx.metrics.exit_mmio_read.inc();
            if !ctx.mmio.read(addr, data) {
                hull_logging::guest_debug!(
                    vcpu = index,
                    addr = format_args!("{addr:#x}"),
                    "MMIO read of an unmapped address"
                );
                data.fill(0);
            }
            Next::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            ctx.metrics.exit_mmio_write.inc();
            if !ctx.mmio.write(addr, data) {
                hull_logging::guest_debug!(
                    vcpu = index,
                    addr = format_args!("{addr:#x}"),
                    "MMIO write to an unmapped address"
                );
            }
            Next::Continue
        }
        VcpuExit::Intr => Next::Continue,
        VcpuExit::Hlt => Next::Halted,
        VcpuExit::Shutdown => {
            tracing::error!(vcpu = index, "KVM_EXIT_SHUTDOWN: the guest triple-faulted");
            Next::Stop(ExitReason::TripleFault)
        }
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN | kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                Next::Stop(ExitReason::GuestReset)
            }
            other => Next::Stop(ExitReason::VcpuError(format!("vCPU {index}: system event {other}"))),
        },
        VcpuExit::InternalError => Next::InternalError,
        VcpuExit::FailEntry(reason, cpu) => Next::Stop(ExitReason::VcpuError(format!(
            "vCPU {index}: KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x} on host CPU {cpu}"
        ))),
        other => Next::Stop(ExitReason::VcpuError(format!(
            "vCPU {index}: unexpected KVM exit {other:?}"
        ))),
    }
}

fn describe_position(vcpu: &VcpuFd) -> String {
    match vcpu.get_regs() {
        Ok(r) => format!("rip={:#x} rsp={:#x}", r.rip, r.rsp),
        Err(_) => "registers unavailable".into(),
    }
}

fn run_loop(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext, me: libc::pthread_t) {
    loop {
        let parked = {
            let cpuid = ctx
                .cpuids
                .get(usize::from(index))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut save =
                || crate::snapshot::VcpuState::save_boxed(index, vcpu, &ctx.msr_list, cpuid).map_err(|e| e.to_string());
            ctx.control.park_if_paused(index, &mut save)
        };
        if !parked {
            return;
        }
        let next = match vcpu.run() {
            Ok(exit) => handle_exit(index, exit, ctx),
            Err(e) if e.errno() == libc::EINTR => {
                vcpu.set_kvm_immediate_exit(0);
                Next::Continue
            }
            Err(e) if e.errno() == libc::EAGAIN => Next::Continue,
            Err(e) => Next::Stop(ExitReason::VcpuError(format!("vCPU {index}: KVM_RUN failed: {e}"))),
        };
        if matches!(next, Next::InternalError | Next::Stop(ExitReason::VcpuError(_))) {
            ctx.metrics.failures.inc();
        }
        match next {
            Next::Continue => {}
            Next::Halted => {
                tracing::info!(vcpu = index, "vCPU halted (KVM_EXIT_HLT)");
                ctx.control.park_until_exit(me);
                return;
            }
            Next::InternalError => {
                let internal = {
                    // SAFETY: the exit reason was KVM_EXIT_INTERNAL_ERROR, so `internal` is the live union field.
                    let run = vcpu.get_kvm_run();
                    unsafe { run.__bindgen_anon_1.internal }
                };
                let msg = format!(
                    "vCPU {index}: KVM internal error, suberror {} ({}), data {:x?}",
                    internal.suberror,
                    describe_position(vcpu),
                    &internal.data[..(internal.ndata as usize).min(internal.data.len())]
                );
                tracing::error!("{msg}");
                ctx.control.request_exit(ExitReason::VcpuError(msg));
                return;
            }
            Next::Stop(reason) => {
                if let ExitReason::VcpuError(msg) = &reason {
                    tracing::error!(vcpu = index, position = %describe_position(vcpu), "{msg}");
                }
                ctx.control.request_exit(reason);
                return;
            }
        }
    }
}

/// Starts vCPU `index` on its own thread, which installs `filter` before it runs the guest (and does
/// nothing else if it cannot).
pub fn spawn_vcpu(
    index: u8,
    mut vcpu: VcpuFd,
    ctx: Arc<VcpuContext>,
    filter: Option<Arc<BpfProgram>>,
) -> Result<std::thread::JoinHandle<()>, VcpuError> {
    install_kick_handler()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("hull_vcpu{index}"))
        .spawn(move || {
            if let Err(e) = seccomp::install(filter.as_deref()) {
                let _ = ready_tx.send(Err(e));
                return;
            }
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            ctx.control.enter_thread(me, vcpu.get_kvm_run() as *mut kvm_run);
            let _ = ready_tx.send(Ok(()));
            run_loop(index, &mut vcpu, &ctx, me);
            ctx.control.leave_thread(me);
        })
        .map_err(|source| VcpuError::Thread { index, source })?;
    // Wait until the thread can be kicked, so a pause right after start reaches it.
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => Err(VcpuError::Seccomp { index, source: e }),
        Err(_) => Err(VcpuError::Thread {
            index,
            source: std::io::Error::other("the thread ended before it started"),
        }),
    }
}
