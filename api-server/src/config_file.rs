//! `--config-file`: a JSON file in Firecracker's shape (`boot-source`, `machine-config`, `drives`,
//! `network-interfaces`, `vsock`, `pmem`, `balloon`, `entropy`, `serial`, `logger`, `metrics`, `mmds-config`), applied to the [`Instance`] through the same
//! methods the API uses, then booted. The file is user input: unknown keys are refused and every value is
//! validated by the instance.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use vmm::{BootSourceConfig, MachineConfig};

use crate::devices;
use crate::instance::{Instance, InstanceError};
use crate::logger::{LoggerConfig, MetricsConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("Cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("Invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("Invalid config file {path}: {section}: {source}")]
    Section {
        path: PathBuf,
        section: &'static str,
        source: InstanceError,
    },
    #[error("Cannot start the microVM from {path}: {source}")]
    Start { path: PathBuf, source: InstanceError },
}

/// The file's contents. Sections hull has nothing for yet are kept as raw JSON and handed to
/// [`devices::DeviceConfigs`], which decides what it accepts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSourceConfig>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<vmm::cpu_config::CustomCpuTemplate>,
    #[serde(default)]
    pub drives: Vec<Value>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<Value>,
    #[serde(default)]
    pub vsock: Option<Value>,
    #[serde(default)]
    pub entropy: Option<Value>,
    #[serde(default)]
    pub balloon: Option<Value>,
    #[serde(default)]
    pub pmem: Vec<Value>,
    #[serde(default)]
    pub serial: Option<vmm::SerialConfig>,
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<crate::mmds::MmdsConfig>,
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<ConfigFile, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Applies every section to `instance`, in the order a Firecracker client would send them.
    pub fn apply(self, instance: &mut Instance) -> Result<(), (&'static str, InstanceError)> {
        if let Some(logger) = self.logger {
            instance.put_logger(logger).map_err(|e| ("logger", e))?;
        }
        if let Some(metrics) = self.metrics {
            instance.put_metrics(metrics).map_err(|e| ("metrics", e))?;
        }
        if let Some(serial) = self.serial {
            instance.put_serial(serial).map_err(|e| ("serial", e))?;
        }
        if let Some(machine) = self.machine_config {
            instance
                .put_machine_config(machine)
                .map_err(|e| ("machine-config", e))?;
        }
        if let Some(template) = self.cpu_config {
            instance.put_cpu_config(template).map_err(|e| ("cpu-config", e))?;
        }
        if let Some(boot_source) = self.boot_source {
            instance.put_boot_source(boot_source).map_err(|e| ("boot-source", e))?;
        }
        let in_section = |section| move |e: devices::DeviceError| (section, InstanceError::Device(e));
        for drive in self.drives {
            let id = devices::entry_id(&drive, "drive_id").to_string();
            let devices = instance.devices_mut().map_err(|e| ("drives", e))?;
            devices.put_drive(&id, drive).map_err(in_section("drives"))?;
        }
        for iface in self.network_interfaces {
            let id = devices::entry_id(&iface, "iface_id").to_string();
            let devices = instance.devices_mut().map_err(|e| ("network-interfaces", e))?;
            devices
                .put_network_interface(&id, iface)
                .map_err(in_section("network-interfaces"))?;
        }
        if let Some(vsock) = self.vsock {
            let devices = instance.devices_mut().map_err(|e| ("vsock", e))?;
            devices.put_vsock(vsock).map_err(in_section("vsock"))?;
        }
        if let Some(mmds) = self.mmds_config {
            instance.put_mmds_config(mmds).map_err(|e| ("mmds-config", e))?;
        }
        for pmem in self.pmem {
            let id = devices::entry_id(&pmem, "id").to_string();
            let devices = instance.devices_mut().map_err(|e| ("pmem", e))?;
            devices.put_pmem(&id, pmem).map_err(in_section("pmem"))?;
        }
        if let Some(balloon) = self.balloon {
            instance.put_balloon(balloon).map_err(|e| ("balloon", e))?;
        }
        if let Some(entropy) = self.entropy {
            let devices = instance.devices_mut().map_err(|e| ("entropy", e))?;
            devices.put_entropy(entropy).map_err(in_section("entropy"))?;
        }
        Ok(())
    }
}

/// Reads `path`, configures `instance` from it and starts the microVM. Never inlined: the parsed
/// configuration's frames then lie below the caller's, where the VMM gives them back once the VM runs.
#[inline(never)]
pub fn boot_from_file(path: &Path, instance: &mut Instance) -> Result<(), ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = ConfigFile::parse(&text).map_err(|source| ConfigFileError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    file.apply(instance)
        .map_err(|(section, source)| ConfigFileError::Section {
            path: path.to_path_buf(),
            section,
            source,
        })?;
    instance.start().map_err(|source| ConfigFileError::Start {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use vmm::VmmOptions;

    use super::*;

    fn instance() -> Instance {
        Instance::new("t".into(), VmmOptions::default())
    }

    #[test]
    fn cpu_config_is_read_from_its_key_and_checked() {
        let file = ConfigFile::parse(
            r#"{"cpu-config": {"kvm_capabilities": ["!36"], "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0",
                "flags": 0, "modifiers": [{"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"}]}]}}"#,
        )
        .unwrap();
        let mut instance = instance();
        file.apply(&mut instance).unwrap();
        let json = serde_json::to_value(instance.full_config()).unwrap();
        assert_eq!(json["cpu-config"]["kvm_capabilities"][0], "!36");
        assert_eq!(
            json["cpu-config"]["cpuid_modifiers"][0]["modifiers"][0]["bitmap"],
            "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"
        );
        let e = ConfigFile::parse(r#"{"cpu-config": {"msr_modifiers": [{"addr": "0x10", "bitmap": "0b2"}]}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Invalid bitmap"), "{e}");
    }

    #[test]
    fn a_firecracker_config_with_empty_device_lists_parses() {
        let text = r#"{
            "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
            "drives": [], "network-interfaces": [], "vsock": null, "logger": null, "metrics": null
        }"#;
        let file = ConfigFile::parse(text).unwrap();
        assert_eq!(file.boot_source.unwrap().boot_args.as_deref(), Some("console=ttyS0"));
        assert_eq!(file.machine_config.unwrap().vcpu_count, 2);
        assert!(file.drives.is_empty() && file.network_interfaces.is_empty() && file.vsock.is_none());
    }

    #[test]
    fn unknown_sections_and_fields_are_refused() {
        let e = ConfigFile::parse(r#"{"not-a-section": {}}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `not-a-section`"), "{e}");
        let e = ConfigFile::parse(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "x": 0}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `x`"), "{e}");
    }

    #[test]
    fn balloon_entropy_and_serial_sections_are_applied_and_checked() {
        let file = ConfigFile::parse(
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
                "balloon": {"amount_mib": 65, "deflate_on_oom": false}}"#,
        )
        .unwrap();
        let (section, e) = file.apply(&mut instance()).unwrap_err();
        assert_eq!(
            (section, e.to_string().as_str()),
            ("balloon", "Amount of pages requested is too large.")
        );
        let file = ConfigFile::parse(
            r#"{"balloon": {"amount_mib": 8, "deflate_on_oom": true, "stats_polling_interval_s": 2},
                "entropy": {"rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}},
                "serial": {}}"#,
        )
        .unwrap();
        let mut i = instance();
        file.apply(&mut i).unwrap();
        let json = serde_json::to_value(i.full_config()).unwrap();
        assert_eq!(json["balloon"]["stats_polling_interval_s"], 2);
        assert_eq!(json["entropy"]["rate_limiter"]["ops"]["size"], 10);
        let file = ConfigFile::parse(r#"{"entropy": {"rate_limiter": {"ops": {"size": 1}}}}"#).unwrap();
        assert_eq!(file.apply(&mut instance()).unwrap_err().0, "entropy");
        let file = ConfigFile::parse(r#"{"serial": {"serial_out_path": "/no/such/dir/console"}}"#).unwrap();
        assert_eq!(file.apply(&mut instance()).unwrap_err().0, "serial");
    }

    #[test]
    fn invalid_devices_are_refused_naming_the_section() {
        let file = ConfigFile::parse(r#"{"drives": [{"drive_id": "rootfs", "is_root_device": true}]}"#).unwrap();
        let (section, e) = file.apply(&mut instance()).unwrap_err();
        assert_eq!(section, "drives");
        assert!(e.to_string().contains("missing field `path_on_host`"), "{e}");
        let file = ConfigFile::parse(r#"{"vsock": {"guest_cid": 3, "uds_path": "/no/such/dir/v.sock"}}"#).unwrap();
        assert_eq!(file.apply(&mut instance()).unwrap_err().0, "vsock");
        let file = ConfigFile::parse(
            r#"{"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}, {"iface_id": "eth1", "host_dev_name": "tap0"}]}"#,
        )
        .unwrap();
        let (section, e) = file.apply(&mut instance()).unwrap_err();
        assert_eq!(section, "network-interfaces");
        assert!(e.to_string().contains("host_dev_name is already used"), "{e}");
        let file = ConfigFile::parse(
            r#"{"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "tx_rate_limiter": {"ops": {"size": 5}}}]}"#,
        )
        .unwrap();
        let (section, e) = file.apply(&mut instance()).unwrap_err();
        assert_eq!(section, "network-interfaces");
        assert!(e.to_string().contains("missing field `refill_time`"), "{e}");
    }

    #[test]
    fn devices_are_accepted_and_shown_in_vm_config() {
        let dir = std::env::temp_dir().join(format!("hull-config-file-devices-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("rootfs.ext4");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let text = serde_json::json!({
            "drives": [{"drive_id": "rootfs", "path_on_host": img, "is_root_device": true, "is_read_only": false,
                        "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 100}}}],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02",
                                    "rx_rate_limiter": {"ops": {"size": 1000, "one_time_burst": 100, "refill_time": 1000}},
                                    "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0}}}],
            "vsock": {"guest_cid": 3, "uds_path": dir.join("v.sock")}
        })
        .to_string();
        let mut i = instance();
        ConfigFile::parse(&text).unwrap().apply(&mut i).unwrap();
        let json = serde_json::to_value(i.full_config()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(json["drives"][0]["drive_id"], "rootfs");
        assert_eq!(json["network-interfaces"][0]["iface_id"], "eth0");
        assert_eq!(json["vsock"]["guest_cid"], 3);
        assert_eq!(json["drives"][0]["rate_limiter"]["bandwidth"]["size"], 1048576);
        let iface = &json["network-interfaces"][0];
        assert_eq!(iface["rx_rate_limiter"]["ops"]["one_time_burst"], 100);
        assert_eq!(iface["tx_rate_limiter"]["bandwidth"]["refill_time"], 0);
        // What GET /vm/config shows reads back as a config file.
        assert_eq!(ConfigFile::parse(&json.to_string()).unwrap().drives.len(), 1);
    }

    #[test]
    fn invalid_values_are_refused_naming_the_section() {
        let file = ConfigFile::parse(r#"{"machine-config": {"vcpu_count": 33, "mem_size_mib": 128}}"#).unwrap();
        assert_eq!(file.apply(&mut instance()).unwrap_err().0, "machine-config");
    }

    #[test]
    fn a_missing_kernel_stops_boot_with_its_path() {
        let dir = std::env::temp_dir().join(format!("hull-config-file-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.json");
        std::fs::write(
            &path,
            r#"{"boot-source": {"kernel_image_path": "/missing/vmlinux"}, "drives": []}"#,
        )
        .unwrap();
        let e = boot_from_file(&path, &mut instance()).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("boot-source") && e.contains("/missing/vmlinux"), "{e}");
    }

    #[test]
    fn vm_config_output_reads_back_as_a_config_file() {
        let mut i = instance();
        i.put_metrics(MetricsConfig {
            metrics_path: "/m".into(),
        })
        .unwrap();
        let text = serde_json::to_string(&i.full_config()).unwrap();
        let file = ConfigFile::parse(&text).unwrap();
        assert_eq!(file.machine_config, Some(MachineConfig::default()));
        assert_eq!(
            file.metrics,
            Some(MetricsConfig {
                metrics_path: "/m".into()
            })
        );
    }
}
