//! The microVM instance as the API and the config file see it: the configuration gathered before boot,
//! then the running [`MicroVm`]. Both front ends (REST routes and `--config-file`) change it only through
//! these methods, so the rules (validate on every change, nothing pre-boot after `InstanceStart`) hold for
//! both. Every value arriving here was sent by a user and is validated before it is stored.

use std::os::fd::RawFd;

use serde::{Deserialize, Serialize};
use vmm::cpu_config::CustomCpuTemplate;
use vmm::{
    BalloonDeviceConfig, BalloonError, BalloonStats, BootSourceConfig, ConfigError, CpuTemplateName, ExitReason,
    HugePages, MachineConfig, MicroVm, MicroVmConfig, SerialConfig, SerialOutput, VmState, VmmError, VmmOptions,
};

use crate::devices::{DeviceConfigs, DeviceError};
use crate::logger::{LoggerConfig, MetricsConfig};
use crate::mmds::{MmdsConfig, MmdsError, MmdsService};

/// The `app_name` reported by `GET /`.
pub const APP_NAME: &str = "hull";

/// Why an operation on the instance was refused. All of these are the client's to fix (HTTP 400); the
/// `Display` text is the `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("The requested operation is not supported after starting the microVM.")]
    NotAllowedAfterStart,
    #[error("The requested operation is not supported before starting the microVM.")]
    NotAllowedBeforeStart,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("Invalid logger configuration: {0}")]
    Logger(String),
    #[error("Invalid metrics configuration: {0}")]
    Metrics(String),
    #[error(transparent)]
    Mmds(#[from] MmdsError),
    #[error("Loading a microVM snapshot not allowed after configuring boot-specific resources.")]
    LoadSnapshotNotAllowed,
    #[error(transparent)]
    Snapshot(#[from] vmm::snapshot::SnapshotError),
    #[error("Invalid serial configuration: {0}")]
    Serial(String),
    #[error("No balloon device found.")]
    NoBalloon,
    #[error(transparent)]
    Balloon(#[from] BalloonError),
}

/// `PATCH /balloon`: Firecracker's `BalloonUpdate`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`: Firecracker's `BalloonStatsUpdate`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    pub stats_polling_interval_s: u16,
}

/// `PATCH /machine-config`: any subset of the machine-config fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<usize>,
    pub smt: Option<bool>,
    pub cpu_template: Option<CpuTemplateName>,
    pub track_dirty_pages: Option<bool>,
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    pub fn is_empty(&self) -> bool {
        *self == MachineConfigUpdate::default()
    }

    fn applied_to(&self, base: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            cpu_template: self.cpu_template.unwrap_or(base.cpu_template),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(base.huge_pages),
        }
    }
}

/// `PATCH /vm`: the state asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum RequestedVmState {
    Paused,
    Resumed,
}

/// `GET /`.
#[derive(Debug, Serialize)]
pub struct InstanceInfo<'a> {
    pub id: &'a str,
    pub state: &'static str,
    pub vmm_version: &'static str,
    pub app_name: &'static str,
}

/// `GET /vm/config`: Firecracker's FullVmConfiguration; the same keys a config file takes, so the output
/// can be fed back to `--config-file`.
#[derive(Debug, Serialize)]
pub struct FullVmConfig<'a> {
    #[serde(rename = "boot-source", skip_serializing_if = "Option::is_none")]
    pub boot_source: Option<&'a BootSourceConfig>,
    #[serde(rename = "machine-config")]
    pub machine_config: &'a MachineConfig,
    #[serde(flatten)]
    pub devices: &'a DeviceConfigs,
    #[serde(rename = "cpu-config", skip_serializing_if = "Option::is_none")]
    pub cpu_config: Option<&'a CustomCpuTemplate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logger: Option<&'a LoggerConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<&'a MetricsConfig>,
    #[serde(rename = "mmds-config", skip_serializing_if = "Option::is_none")]
    pub mmds_config: Option<&'a MmdsConfig>,
}

pub struct Instance {
    id: String,
    config: MicroVmConfig,
    devices: DeviceConfigs,
    logger: Option<LoggerConfig>,
    metrics: Option<MetricsConfig>,
    metrics_file: Option<std::sync::Arc<std::fs::File>>,
    startup: crate::metrics::Startup,
    options: VmmOptions,
    mmds: MmdsService,
    vm: Option<MicroVm>,
    /// `PUT`/`PATCH /machine-config` was called (the defaults alone do not start a pre-build: a client that
    /// sends its machine configuration after the boot source would make it stale at once).
    machine_configured: bool,
    /// The VM pre-built for the configuration as it stands, once boot source and machine are known.
    prebuild: Option<PreBuild>,
    /// A boot-specific resource (boot source, machine, CPU or device configuration) was set: from then
    /// on a snapshot can no longer be loaded, as in Firecracker.
    boot_resources_configured: bool,
}

impl Instance {
    pub fn new(id: String, options: VmmOptions) -> Instance {
        Instance {
            id,
            config: MicroVmConfig::default(),
            devices: DeviceConfigs::default(),
            logger: None,
            metrics: None,
            metrics_file: None,
            startup: Default::default(),
            options,
            mmds: MmdsService::default(),
            vm: None,
            machine_configured: false,
            prebuild: None,
            boot_resources_configured: false,
        }
    }

    pub fn info(&self) -> InstanceInfo<'_> {
        let state = match self.vm.as_ref().map(MicroVm::state) {
            None => "Not started",
            Some(VmState::Running) => "Running",
            Some(VmState::Paused) => "Paused",
            // Only seen in the moment between the guest's end and the process's exit.
            Some(VmState::Exited) => "Exited",
        };
        InstanceInfo {
            id: &self.id,
            state,
            vmm_version: vmm::VMM_VERSION,
            app_name: APP_NAME,
        }
    }

    pub fn machine_config(&self) -> &MachineConfig {
        &self.config.machine
    }

    pub fn full_config(&self) -> FullVmConfig<'_> {
        FullVmConfig {
            boot_source: self.config.boot_source.as_ref(),
            machine_config: &self.config.machine,
            cpu_config: self.config.cpu_config.as_ref(),
            devices: &self.devices,
            logger: self.logger.as_ref(),
            metrics: self.metrics.as_ref(),
            mmds_config: self.mmds.config(),
        }
    }

    /// Before boot, for requests that configure the machine: refused after start, and marks the
    /// instance as configured (no snapshot load any more).
    fn configure(&mut self) -> Result<(), InstanceError> {
        self.ensure_not_started()?;
        self.boot_resources_configured = true;
        Ok(())
    }

    fn ensure_not_started(&self) -> Result<(), InstanceError> {
        match self.vm {
            Some(_) => Err(InstanceError::NotAllowedAfterStart),
            None => Ok(()),
        }
    }

    fn running_vm(&self) -> Result<&MicroVm, InstanceError> {
        self.vm.as_ref().ok_or(InstanceError::NotAllowedBeforeStart)
    }

    pub fn put_boot_source(&mut self, boot_source: BootSourceConfig) -> Result<(), InstanceError> {
        self.configure()?;
        boot_source.validate()?;
        self.config.boot_source = Some(boot_source);
        self.refresh_prebuild();
        Ok(())
    }

    /// `PUT /cpu-config`: a custom CPU template (already parsed and checked), pre-boot only.
    pub fn put_cpu_config(&mut self, template: CustomCpuTemplate) -> Result<(), InstanceError> {
        self.configure()?;
        self.config.cpu_config = Some(template);
        self.refresh_prebuild();
        Ok(())
    }

    pub fn put_machine_config(&mut self, machine: MachineConfig) -> Result<(), InstanceError> {
        self.configure()?;
        machine.validate()?;
        self.config.machine = machine;
        self.machine_configured = true;
        self.refresh_prebuild();
        Ok(())
    }

    /// Applies a partial update; nothing changes unless the result as a whole is valid.
    pub fn patch_machine_config(&mut self, update: &MachineConfigUpdate) -> Result<(), InstanceError> {
        self.configure()?;
        let machine = update.applied_to(&self.config.machine);
        machine.validate()?;
        self.config.machine = machine;
        self.machine_configured = true;
        self.refresh_prebuild();
        Ok(())
    }

    pub fn devices_mut(&mut self) -> Result<&mut DeviceConfigs, InstanceError> {
        self.configure()?;
        Ok(&mut self.devices)
    }

    /// `PATCH /drives/{id}`: a new `path_on_host` and/or `rate_limiter`. Before boot only the stored
    /// configuration changes; on a running microVM the drive takes the new file first (capacity from its
    /// size, a config-change interrupt for the guest), then the new buckets, and the stored configuration
    /// follows only when that worked.
    pub fn patch_drive(&mut self, id: &str, update: serde_json::Value) -> Result<(), InstanceError> {
        let prepared = self.devices.prepare_drive_update(id, update)?;
        if let Some(vm) = &self.vm {
            if let Some(path) = &prepared.path_on_host {
                let capacity = vm.update_drive(id, path)?;
                tracing::info!(drive_id = id, path = %path.display(), capacity, "drive updated on the running microVM");
            }
            if let Some(limiter) = &prepared.rate_limiter {
                vm.update_drive_rate_limiter(id, limiter)?;
            }
        }
        self.devices.replace(prepared.devices);
        Ok(())
    }

    /// `PATCH /network-interfaces/{id}`: new `rx_rate_limiter` and/or `tx_rate_limiter` buckets for a
    /// running interface (after boot only, as in Firecracker); the stored configuration follows.
    pub fn patch_network_interface(&mut self, id: &str, update: serde_json::Value) -> Result<(), InstanceError> {
        let vm = self.running_vm()?;
        let (prepared, update) = self.devices.prepare_network_interface_update(id, update)?;
        vm.update_net_rate_limiters(id, update.rx_rate_limiter.as_ref(), update.tx_rate_limiter.as_ref())?;
        self.devices.replace(prepared);
        Ok(())
    }

    pub fn put_logger(&mut self, logger: LoggerConfig) -> Result<(), InstanceError> {
        // Pre-boot only, as in Firecracker (ensure_not_started). The api-running seccomp filter still allows
        // openat (PATCH /drives needs it), so this check is what keeps logger files from opening after boot.
        self.ensure_not_started()?;
        logger.validate().map_err(InstanceError::Logger)?;
        if crate::logger::sink().is_some() {
            return Err(InstanceError::Logger(
                "the logger is configured already and cannot be changed".into(),
            ));
        }
        if let Some(path) = &logger.log_path {
            let file = crate::logger::open_sink(path)
                .map_err(|e| InstanceError::Logger(format!("cannot open {}: {e}", path.display())))?;
            let level = match &logger.level {
                Some(level) => crate::logger::LogLevel::parse(level).map_err(InstanceError::Logger)?,
                None => crate::logger::LogLevel::Info,
            };
            let sink = crate::logger::LogSink {
                file,
                level,
                show_level: logger.show_level.unwrap_or(false),
                show_log_origin: logger.show_log_origin.unwrap_or(false),
                module: logger.module.clone(),
            };
            if crate::logger::install(sink).is_err() {
                return Err(InstanceError::Logger(
                    "the logger is configured already and cannot be changed".into(),
                ));
            }
            tracing::info!(log_path = %path.display(), "logger configured");
        }
        self.logger = Some(logger);
        Ok(())
    }

    /// `PUT /metrics` (or `--metrics-path`): opens the file (pre-boot only, like the logger); the lines go
    /// there on `FlushMetrics` and every 60 s.
    pub fn put_metrics(&mut self, metrics: MetricsConfig) -> Result<(), InstanceError> {
        self.ensure_not_started()?;
        if self.metrics_file.is_some() {
            return Err(InstanceError::Metrics(
                "the metrics system is configured already".into(),
            ));
        }
        let file = crate::logger::open_sink(&metrics.metrics_path)
            .map_err(|e| InstanceError::Metrics(format!("cannot open {}: {e}", metrics.metrics_path.display())))?;
        let file = std::sync::Arc::new(file);
        // HULL_METRICS_FLUSH_MS shortens Firecracker's 60 s period, for tests.
        let period = std::env::var("HULL_METRICS_FLUSH_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis)
            .unwrap_or(crate::metrics::FLUSH_PERIOD);
        crate::metrics::start_periodic_flush(file.clone(), self.startup, period)
            .map_err(|e| InstanceError::Metrics(format!("cannot start the periodic flush: {e}")))?;
        self.metrics_file = Some(file);
        self.metrics = Some(metrics);
        Ok(())
    }

    /// The data store's size limit (`--mmds-size-limit`); set at start-up, before any data is put.
    pub fn set_mmds_size_limit(&mut self, limit: usize) {
        self.mmds = MmdsService::new(limit);
    }

    /// `PUT`/`PATCH`/`GET /mmds`: the data store, before and after boot.
    pub fn mmds(&self) -> &MmdsService {
        &self.mmds
    }

    /// `PUT /mmds/config`: pre-boot only, naming network interfaces configured already.
    pub fn put_mmds_config(&mut self, config: MmdsConfig) -> Result<(), InstanceError> {
        self.ensure_not_started()?;
        let ids: Vec<&str> = self
            .devices
            .network_interfaces
            .iter()
            .map(|n| n.iface_id.as_str())
            .collect();
        Ok(self.mmds.put_config(config, &ids)?)
    }

    /// `PUT /balloon`: pre-boot only; the target must fit in guest memory.
    pub fn put_balloon(&mut self, balloon: serde_json::Value) -> Result<(), InstanceError> {
        self.ensure_not_started()?;
        let mem = self.config.machine.mem_size_mib;
        Ok(self.devices.put_balloon(balloon, mem)?)
    }

    /// `GET /balloon`: the configuration, with the running device's current target after boot.
    pub fn balloon_config(&self) -> Result<BalloonDeviceConfig, InstanceError> {
        let stored = self.devices.balloon.clone().ok_or(InstanceError::NoBalloon)?;
        let running = self.vm.as_ref().and_then(MicroVm::balloon).and_then(|b| b.config());
        Ok(match running {
            Some((amount_mib, deflate_on_oom, stats_polling_interval_s)) => BalloonDeviceConfig {
                amount_mib,
                deflate_on_oom,
                stats_polling_interval_s,
            },
            None => stored,
        })
    }

    /// `PATCH /balloon`: a new target, before boot (stored) or after (the driver is told; refused while no
    /// driver runs the device, as Firecracker refuses it).
    pub fn patch_balloon(&mut self, update: BalloonUpdate) -> Result<(), InstanceError> {
        let stored = self.devices.balloon.as_mut().ok_or(InstanceError::NoBalloon)?;
        BalloonDeviceConfig::check_size(update.amount_mib, self.config.machine.mem_size_mib)?;
        if let Some(vm) = &self.vm {
            vm.balloon()
                .ok_or(InstanceError::NoBalloon)?
                .update_size(update.amount_mib)?;
        }
        stored.amount_mib = update.amount_mib;
        Ok(())
    }

    /// `GET /balloon/statistics`: after boot only, and only with statistics enabled.
    pub fn balloon_stats(&self) -> Result<BalloonStats, InstanceError> {
        let vm = self.running_vm()?;
        Ok(vm.balloon().ok_or(InstanceError::NoBalloon)?.stats()?)
    }

    /// `PATCH /balloon/statistics`: a new polling interval; statistics cannot be turned on or off this way.
    pub fn patch_balloon_stats(&mut self, update: BalloonStatsUpdate) -> Result<(), InstanceError> {
        let stored = self.devices.balloon.as_mut().ok_or(InstanceError::NoBalloon)?;
        let interval = update.stats_polling_interval_s;
        match &self.vm {
            Some(vm) => vm
                .balloon()
                .ok_or(InstanceError::NoBalloon)?
                .update_stats_interval(interval)?,
            None if interval != stored.stats_polling_interval_s
                && (interval == 0 || stored.stats_polling_interval_s == 0) =>
            {
                return Err(BalloonError::StatisticsStateChange.into());
            }
            None => {}
        }
        stored.stats_polling_interval_s = interval;
        Ok(())
    }

    /// `PUT /serial`: the guest console goes to `serial_out_path` (appended; created owner-only) instead of
    /// standard output, pre-boot only. The file is opened here so a bad path is refused now, not at boot. A
    /// size cap from `--serial-out-max-bytes` stays in force for the new file.
    pub fn put_serial(&mut self, serial: SerialConfig) -> Result<(), InstanceError> {
        self.ensure_not_started()?;
        let Some(path) = serial.serial_out_path else {
            self.options.serial = SerialOutput::Stdout;
            return Ok(());
        };
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| InstanceError::Serial(format!("cannot open serial_out_path {}: {e}", path.display())))?;
        self.options.serial = match self.options.serial {
            SerialOutput::CappedFile { max_bytes, .. } => SerialOutput::CappedFile { path, max_bytes },
            _ => SerialOutput::File(path),
        };
        Ok(())
    }

    /// Firecracker's start-up figures for the `api_server` metrics section.
    pub fn set_startup(&mut self, startup: crate::metrics::Startup) {
        self.startup = startup;
    }

    /// `InstanceStart`: validates the whole configuration and boots.
    pub fn start(&mut self) -> Result<(), InstanceError> {
        self.ensure_not_started()?;
        self.devices.apply_to(&mut self.config);
        self.config.mmds = self.mmds.attachment();
        self.config.validate()?;
        let prepared = self.prebuild.take().and_then(PreBuild::finish);
        let vm = MicroVm::start_prepared(&self.config, self.options.clone(), prepared)?;
        crate::metrics::attach_vm(vm.metric_sources());
        tracing::debug!(id = %self.id, "InstanceStart done");
        self.vm = Some(vm);
        Ok(())
    }

    /// After a change to the boot source, machine or CPU configuration: once boot source and machine are
    /// both known, pre-build the VM for them (`vmm::PreparedVm`), replacing a pre-build made for other
    /// values. A failure here never fails the request: the pre-build is dropped, and `InstanceStart`
    /// builds from scratch and reports the error as it always did.
    fn refresh_prebuild(&mut self) {
        if !self.machine_configured || self.config.boot_source.is_none() {
            return;
        }
        let basis = PreBuild::basis(&self.config);
        if self.prebuild.as_ref().is_some_and(|p| p.basis == basis) {
            return;
        }
        // A stale one is finished and dropped first: never two VMs' memory at once.
        drop(self.prebuild.take().and_then(PreBuild::finish));
        self.prebuild = Some(PreBuild::start(basis));
    }

    /// `PUT /snapshot/create`: the microVM must be paused.
    pub fn create_snapshot(&self, params: &vmm::snapshot::CreateParams) -> Result<(), InstanceError> {
        let vm = self.running_vm()?;
        let started = std::time::Instant::now();
        vm.create_snapshot(params)?;
        let key = match params.snapshot_type {
            vmm::snapshot::SnapshotType::Full => "full_create_snapshot",
            vmm::snapshot::SnapshotType::Diff => "diff_create_snapshot",
        };
        crate::metrics::record_latency(key, started.elapsed());
        Ok(())
    }

    /// `PUT /snapshot/load`: only as the first configuration of the instance (Firecracker's rule); the
    /// restored microVM then stands for `InstanceStart`.
    pub fn load_snapshot(&mut self, params: &vmm::snapshot::LoadParams) -> Result<(), InstanceError> {
        self.ensure_not_started()?;
        if self.boot_resources_configured {
            return Err(InstanceError::LoadSnapshotNotAllowed);
        }
        let started = std::time::Instant::now();
        let vm = MicroVm::restore(params, self.options.clone())?;
        crate::metrics::attach_vm(vm.metric_sources());
        crate::metrics::record_latency("load_snapshot", started.elapsed());
        // GET /vm/config and PATCH /drives see the restored machine's devices.
        let saved = vm.saved_config();
        self.config.machine = saved.machine.clone();
        self.devices.drives = saved.drives.clone();
        self.devices.network_interfaces = saved.net.clone();
        self.devices.vsock = saved.vsock.clone();
        self.devices.apply_to(&mut self.config);
        self.vm = Some(vm);
        Ok(())
    }

    pub fn send_ctrl_alt_del(&self) -> Result<(), InstanceError> {
        Ok(self.running_vm()?.send_ctrl_alt_del()?)
    }

    /// `FlushMetrics`: one line to the metrics file. Refused before boot, as Firecracker refuses it.
    pub fn flush_metrics(&self) -> Result<(), InstanceError> {
        self.running_vm()?;
        let file = self
            .metrics_file
            .as_ref()
            .ok_or_else(|| InstanceError::Metrics("the metrics system is not configured (PUT /metrics)".into()))?;
        crate::metrics::flush_to(file.as_ref(), &self.startup)
            .map_err(|e| InstanceError::Metrics(format!("cannot write the metrics: {e}")))
    }

    pub fn set_vm_state(&self, state: RequestedVmState) -> Result<(), InstanceError> {
        let vm = self.running_vm()?;
        let started = std::time::Instant::now();
        let key = match state {
            RequestedVmState::Paused => {
                vm.pause()?;
                "pause_vm"
            }
            RequestedVmState::Resumed => {
                vm.resume()?;
                "resume_vm"
            }
        };
        crate::metrics::record_latency(key, started.elapsed());
        Ok(())
    }

    /// The eventfd that becomes readable when the guest ends, once the microVM runs.
    pub fn exit_fd(&self) -> Option<RawFd> {
        self.vm.as_ref().map(MicroVm::exit_fd).filter(|fd| *fd >= 0)
    }

    /// How the guest ended; call once `exit_fd` is readable.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        let vm = self.vm.as_ref()?;
        Some(vm.exit_reason().unwrap_or_else(|| vm.wait()))
    }
}

/// A pre-build and the configuration it was made for (boot files, machine, CPU configuration; the rest
/// of the configuration does not change it). It is made on the API thread, within the request that made
/// both known: a client sends `InstanceStart` right after its last configuration request, and a
/// background thread that `InstanceStart` joins measured no faster there (hull-bench compare: the start
/// request waited for the thread) while costing a thread start; this way no thread is added at all.
struct PreBuild {
    basis: MicroVmConfig,
    result: Result<vmm::PreparedVm, VmmError>,
}

impl PreBuild {
    /// What a pre-build for `config` depends on.
    fn basis(config: &MicroVmConfig) -> MicroVmConfig {
        MicroVmConfig {
            boot_source: config.boot_source.as_ref().map(|b| BootSourceConfig {
                boot_args: None,
                ..b.clone()
            }),
            machine: config.machine.clone(),
            cpu_config: config.cpu_config.clone(),
            ..Default::default()
        }
    }

    fn start(basis: MicroVmConfig) -> PreBuild {
        let started = std::time::Instant::now();
        let result = vmm::PreparedVm::new(&basis);
        match &result {
            Ok(_) => tracing::info!(
                prebuild_ms = started.elapsed().as_millis() as u64,
                "VM pre-built for InstanceStart"
            ),
            // InstanceStart builds from scratch and reports this error then.
            Err(e) => tracing::info!(error = %e, "no pre-build: InstanceStart will build the whole VM"),
        }
        PreBuild { basis, result }
    }

    /// The pre-built VM, if it could be made.
    fn finish(self) -> Option<vmm::PreparedVm> {
        self.result.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Instance {
        Instance::new("test".into(), VmmOptions::default())
    }

    #[test]
    fn a_new_instance_is_not_started_and_has_defaults() {
        let i = instance();
        let info = i.info();
        assert_eq!((info.id, info.state, info.app_name), ("test", "Not started", "hull"));
        assert_eq!(*i.machine_config(), MachineConfig::default());
    }

    #[test]
    fn patch_changes_only_what_it_names_and_only_when_valid() {
        let mut i = instance();
        i.patch_machine_config(&MachineConfigUpdate {
            mem_size_mib: Some(256),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(i.machine_config().mem_size_mib, 256);
        assert_eq!(i.machine_config().vcpu_count, 1);
        let bad = MachineConfigUpdate {
            vcpu_count: Some(2),
            mem_size_mib: Some(1),
            ..Default::default()
        };
        assert!(matches!(i.patch_machine_config(&bad), Err(InstanceError::Config(_))));
        assert_eq!(i.machine_config().vcpu_count, 1, "a failed update changes nothing");
    }

    #[test]
    fn post_boot_operations_are_refused_before_start() {
        let i = instance();
        let e = i.send_ctrl_alt_del().unwrap_err().to_string();
        assert_eq!(
            e,
            "The requested operation is not supported before starting the microVM."
        );
        assert!(i.set_vm_state(RequestedVmState::Paused).is_err());
    }

    #[test]
    fn start_without_boot_source_names_what_is_missing() {
        let e = instance().start().unwrap_err();
        assert!(
            matches!(e, InstanceError::Config(ConfigError::MissingBootSource)),
            "{e}"
        );
    }

    /// A readable file that is no kernel: the pre-build fails (without /dev/kvm too), its basis is kept.
    fn boot_source(dir: &std::path::Path, name: &str, args: &str) -> BootSourceConfig {
        let path = dir.join(name);
        std::fs::write(&path, b"not a kernel").unwrap();
        BootSourceConfig {
            kernel_image_path: path,
            boot_args: Some(args.into()),
            initrd_path: None,
        }
    }

    #[test]
    fn a_pre_build_starts_once_boot_source_and_machine_are_set_and_follows_their_changes() {
        let dir = std::env::temp_dir().join(format!("hull-instance-prebuild-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut i = instance();
        i.put_boot_source(boot_source(&dir, "k1", "console=ttyS0")).unwrap();
        assert!(i.prebuild.is_none(), "the default machine alone does not start one");
        i.put_machine_config(MachineConfig::default()).unwrap();
        let basis = |i: &Instance| i.prebuild.as_ref().map(|p| p.basis.clone());
        let first = basis(&i).expect("boot source and machine known: pre-built");
        assert_eq!(first.machine, MachineConfig::default());
        assert!(i.prebuild.as_ref().unwrap().result.is_err(), "no kernel in that file");

        // The command line and devices are InstanceStart's: the same pre-build stays.
        i.put_boot_source(boot_source(&dir, "k1", "console=ttyS0 quiet"))
            .unwrap();
        i.devices_mut()
            .unwrap()
            .put_vsock(serde_json::json!({ "guest_cid": 3, "uds_path": "/tmp/v.sock" }))
            .unwrap();
        assert_eq!(basis(&i).as_ref(), Some(&first));

        // Another memory size, kernel or CPU configuration: the stale one is replaced.
        i.patch_machine_config(&MachineConfigUpdate {
            mem_size_mib: Some(256),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(basis(&i).unwrap().machine.mem_size_mib, 256);
        i.put_boot_source(boot_source(&dir, "k2", "console=ttyS0")).unwrap();
        assert_eq!(
            basis(&i).unwrap().boot_source.unwrap().kernel_image_path,
            dir.join("k2")
        );
        i.put_cpu_config(CustomCpuTemplate::default()).unwrap();
        assert_eq!(basis(&i).unwrap().cpu_config, Some(CustomCpuTemplate::default()));

        // The failed pre-build never failed a request; InstanceStart reports the kernel error itself.
        let e = i.start().unwrap_err().to_string();
        assert!(
            e.contains("neither a loadable ELF nor a bzImage") || e.contains("/dev/kvm"),
            "{e}"
        );
        assert!(i.prebuild.is_none(), "InstanceStart consumed it");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_pre_build_does_not_allow_a_snapshot_load() {
        let dir = std::env::temp_dir().join(format!("hull-instance-prebuild-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut i = instance();
        i.put_machine_config(MachineConfig::default()).unwrap();
        i.put_boot_source(boot_source(&dir, "k", "console=ttyS0")).unwrap();
        assert!(i.prebuild.is_some());
        let params = vmm::snapshot::LoadParams {
            snapshot_path: dir.join("state"),
            mem_backend: vmm::snapshot::MemBackend::File(dir.join("mem")),
            track_dirty_pages: false,
            resume_vm: false,
            network_overrides: Vec::new(),
            vsock_override: None,
            drive_overrides: Vec::new(),
        };
        assert!(matches!(
            i.load_snapshot(&params),
            Err(InstanceError::LoadSnapshotNotAllowed)
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn full_config_has_firecracker_keys() {
        let i = instance();
        let json = serde_json::to_value(i.full_config()).unwrap();
        assert_eq!(json["drives"], serde_json::json!([]));
        assert_eq!(json["network-interfaces"], serde_json::json!([]));
        assert_eq!(json["machine-config"]["vcpu_count"], 1);
        assert!(json.get("boot-source").is_none());
    }
}
