//! The running microVM: a handle over the KVM VM, its guest memory, vCPU threads, event loop and
//! devices. It pauses, resumes, presses Ctrl-Alt-Del, hands out its counters and tells how and when the
//! guest ended.
//! Dropping it stops the guest and joins every thread before guest memory is unmapped.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use devices::bus::lock;
use devices::legacy::I8042;
use kvm_ioctls::{Kvm, VmFd};

use crate::config::RateLimiterConfig;
use crate::config::{MicroVmConfig, VmmOptions};
use crate::exit::ExitReason;
use crate::memory::GuestMemoryMmap;
use crate::metrics::MetricSources;
use crate::vcpu::VcpuControl;
use crate::virtio_devices::{BalloonHandle, DriveUpdateError, Drives, NetInterfaces, NetUpdateError};

/// Lifecycle state, as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Running,
    Paused,
    Exited,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("Invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("Cannot build the microVM: {0}")]
    Build(#[from] crate::builder::BuildError),
    #[error("The microVM is not running")]
    NotRunning,
    #[error("The microVM is already paused")]
    AlreadyPaused,
    #[error("The microVM is not paused")]
    NotPaused,
    #[error("Cannot send Ctrl-Alt-Del: {0}")]
    CtrlAltDel(#[from] devices::legacy::i8042::I8042Error),
    #[error("Unable to patch the block device: {0}")]
    DriveUpdate(#[from] DriveUpdateError),
    #[error("Unable to patch the network interface: {0}")]
    NetUpdate(#[from] NetUpdateError),
}

/// A started microVM.
pub struct MicroVm {
    control: Arc<VcpuControl>,
    vcpu_threads: Vec<JoinHandle<()>>,
    event_thread: Option<JoinHandle<()>>,
    i8042: Arc<Mutex<I8042>>,
    vcpu_count: usize,
    drives: Drives,
    nets: NetInterfaces,
    balloon: Option<BalloonHandle>,
    metrics: MetricSources,
    snapshot: crate::snapshot::SnapshotParts,
    /// The userfaultfd of a microVM restored with the Uffd backend (its handler serves the pages).
    _uffd: Option<crate::snapshot::uffd::UffdBackend>,
    // Kept alive for the vCPUs; dropped after the threads are joined (see Drop).
    _mem: GuestMemoryMmap,
    _vm: VmFd,
    _kvm: Kvm,
}

impl MicroVm {
    /// Validates `config`, builds the VM and starts its vCPUs.
    pub fn start(config: &MicroVmConfig, options: VmmOptions) -> Result<MicroVm, VmmError> {
        crate::builder::build_microvm(config, options, None)
    }

    /// Like `start`, finishing `prepared` (built before `InstanceStart`) when it still fits `config`;
    /// otherwise it is dropped and the VM is built from scratch, with `start`'s errors.
    pub fn start_prepared(
        config: &MicroVmConfig,
        options: VmmOptions,
        prepared: Option<crate::PreparedVm>,
    ) -> Result<MicroVm, VmmError> {
        crate::builder::build_microvm(config, options, prepared)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        kvm: Kvm,
        vm: VmFd,
        mem: GuestMemoryMmap,
        control: Arc<VcpuControl>,
        vcpu_threads: Vec<JoinHandle<()>>,
        event_thread: JoinHandle<()>,
        i8042: Arc<Mutex<I8042>>,
        vcpu_count: usize,
        drives: Drives,
        nets: NetInterfaces,
        balloon: Option<BalloonHandle>,
        metrics: MetricSources,
        snapshot: crate::snapshot::SnapshotParts,
    ) -> Self {
        MicroVm {
            control,
            vcpu_threads,
            event_thread: Some(event_thread),
            i8042,
            vcpu_count,
            drives,
            nets,
            balloon,
            metrics,
            snapshot,
            _uffd: None,
            _mem: mem,
            _vm: vm,
            _kvm: kvm,
        }
    }

    /// The balloon device, when one is attached.
    pub fn balloon(&self) -> Option<&BalloonHandle> {
        self.balloon.as_ref()
    }

    pub fn state(&self) -> VmState {
        if self.control.exit_reason().is_some() {
            VmState::Exited
        } else if self.control.is_paused() {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    /// Stops every vCPU; guest time stands still until `resume`.
    pub fn pause(&self) -> Result<(), VmmError> {
        match self.state() {
            VmState::Exited => Err(VmmError::NotRunning),
            VmState::Paused => Err(VmmError::AlreadyPaused),
            VmState::Running => {
                if self.control.pause(self.vcpu_count) {
                    tracing::info!("microVM paused");
                    Ok(())
                } else {
                    Err(VmmError::NotRunning)
                }
            }
        }
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) -> Result<(), VmmError> {
        match self.state() {
            VmState::Exited => Err(VmmError::NotRunning),
            VmState::Running => Err(VmmError::NotPaused),
            VmState::Paused => {
                if self.control.resume() {
                    tracing::info!("microVM resumed");
                    Ok(())
                } else {
                    Err(VmmError::NotPaused)
                }
            }
        }
    }

    /// Presses Ctrl-Alt-Del on the guest's i8042 keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), VmmError> {
        if self.state() == VmState::Exited {
            return Err(VmmError::NotRunning);
        }
        lock(&self.i8042).trigger_ctrl_alt_del()?;
        Ok(())
    }

    /// Replaces drive `id`'s backing file with `path` (`PATCH /drives/{id}`): the device takes the new file
    /// between two requests, the capacity comes from its size, and the guest gets a config-change interrupt.
    /// Returns the new capacity in sectors.
    pub fn update_drive(&self, id: &str, path: &Path) -> Result<u64, VmmError> {
        if self.state() == VmState::Exited {
            return Err(VmmError::NotRunning);
        }
        Ok(self.drives.update(id, path)?)
    }

    /// Replaces the buckets `patch` gives of drive `id`'s rate limiter (`PATCH /drives/{id}`); omitted
    /// buckets stay.
    pub fn update_drive_rate_limiter(&self, id: &str, patch: &RateLimiterConfig) -> Result<(), VmmError> {
        if self.state() == VmState::Exited {
            return Err(VmmError::NotRunning);
        }
        Ok(self.drives.update_rate_limiter(id, patch)?)
    }

    /// Replaces the buckets the patches give of interface `id`'s RX and TX rate limiters
    /// (`PATCH /network-interfaces/{id}`); omitted buckets and limiters stay.
    pub fn update_net_rate_limiters(
        &self,
        id: &str,
        rx: Option<&RateLimiterConfig>,
        tx: Option<&RateLimiterConfig>,
    ) -> Result<(), VmmError> {
        if self.state() == VmState::Exited {
            return Err(VmmError::NotRunning);
        }
        Ok(self.nets.update_rate_limiters(id, rx, tx)?)
    }

    /// Writes a snapshot of the paused microVM (`PUT /snapshot/create`): its state file and its memory
    /// file (all of it, or with `Diff` only the pages written since the last snapshot).
    pub fn create_snapshot(
        &self,
        params: &crate::snapshot::CreateParams,
    ) -> Result<(), crate::snapshot::SnapshotError> {
        if self.state() != VmState::Paused {
            return Err(crate::snapshot::SnapshotError::NotPaused);
        }
        crate::snapshot::create(
            &crate::snapshot::LiveVm {
                vm: &self._vm,
                mem: &self._mem,
                control: &self.control,
                vcpu_count: self.vcpu_count,
                parts: &self.snapshot,
            },
            params,
        )
    }

    /// Builds a microVM from a snapshot (`PUT /snapshot/load`); it runs at once with `resume_vm`, else
    /// it stays paused.
    pub fn restore(
        params: &crate::snapshot::LoadParams,
        options: VmmOptions,
    ) -> Result<MicroVm, crate::snapshot::SnapshotError> {
        crate::snapshot::restore(params, options)
    }

    pub(crate) fn keep_uffd(&mut self, uffd: Option<crate::snapshot::uffd::UffdBackend>) {
        self._uffd = uffd;
    }

    /// Its machine configuration (after a restore: the snapshot's, with this load's dirty-page tracking).
    pub fn machine_config(&self) -> &crate::config::MachineConfig {
        &self.snapshot.config.machine
    }

    /// The configuration it was built from (after a restore: the snapshot's, with this load's network
    /// overrides and dirty-page tracking).
    pub fn saved_config(&self) -> &crate::snapshot::SavedConfig {
        &self.snapshot.config
    }

    /// The counters of its devices and vCPUs (shared: they keep counting while the microVM runs).
    pub fn metric_sources(&self) -> MetricSources {
        self.metrics.clone()
    }

    /// An eventfd that becomes readable once the guest has ended (poll it; do not read it).
    pub fn exit_fd(&self) -> RawFd {
        self.control.exit_evt.as_raw_fd()
    }

    /// How the guest ended, once it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.control.exit_reason()
    }

    /// Blocks until the guest ends.
    pub fn wait(&self) -> ExitReason {
        self.control.wait_exit()
    }

    /// Stops the guest now (host-initiated), as if it had been reset.
    pub fn stop(&self) {
        self.control.request_exit(ExitReason::GuestReset);
    }
}

impl Drop for MicroVm {
    fn drop(&mut self) {
        if self.control.exit_reason().is_none() {
            self.control.request_exit(ExitReason::GuestReset);
        }
        for t in self.vcpu_threads.drain(..) {
            let _ = t.join();
        }
        if let Some(t) = self.event_thread.take() {
            let _ = t.join();
        }
    }
}
