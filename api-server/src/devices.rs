//! Device configuration: drives, network interfaces and the vsock, from the API (`PUT /drives/{id}`,
//! `PUT /network-interfaces/{id}`, `PUT /vsock`) and the config file alike. This is the one place where
//! they are accepted into the instance: each body is decoded into the VMM's typed config (Firecracker's
//! shapes, unknown fields refused), validated on its own and against the devices already configured, and
//! kept until `InstanceStart` hands them to the [`MicroVmConfig`]. `PATCH /drives/{id}` changes a drive's
//! `path_on_host` and/or `rate_limiter` (before boot: the stored config; after boot the instance also
//! updates the running drive), `PATCH /network-interfaces/{id}` an interface's `rx_rate_limiter` and/or
//! `tx_rate_limiter` (after boot, as in Firecracker). In a rate limiter patch each bucket given replaces
//! the bucket, and omitted ones stay. The JSON received is user input and is not trusted.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vmm::{
    BalloonDeviceConfig, BlockDeviceConfig, ConfigError, EntropyDeviceConfig, MicroVmConfig, NetworkInterfaceConfig,
    PmemConfig, RateLimiterConfig, VsockConfig,
};

/// Why a device was refused. The `Display` text is the API's `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("An error occurred when deserializing the json body of a request: {0}.")]
    Body(#[from] serde_json::Error),
    #[error("The id from the path does not match the id from the body!")]
    IdMismatch,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Invalid drive {0:?}: no drive with this id is configured.")]
    NoSuchDrive(String),
    #[error("Nothing to update for drive {0:?}: PATCH /drives takes path_on_host and/or rate_limiter.")]
    EmptyDriveUpdate(String),
    #[error("Invalid network interface {0:?}: no network interface with this id is configured.")]
    NoSuchNetworkInterface(String),
    #[error(
        "Nothing to update for network interface {0:?}: PATCH /network-interfaces takes rx_rate_limiter and/or tx_rate_limiter."
    )]
    EmptyNetworkInterfaceUpdate(String),
}

/// `PATCH /drives/{id}`: Firecracker's partial drive (`BlockDeviceUpdateConfig`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<PathBuf>,
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// A checked `PATCH /drives/{id}`: the device set as it will be, and what changes on a running drive.
#[derive(Debug)]
pub struct PreparedDriveUpdate {
    pub devices: DeviceConfigs,
    pub path_on_host: Option<PathBuf>,
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{id}`: Firecracker's partial network interface.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    pub iface_id: String,
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// The devices configured so far, in Firecracker's `GET /vm/config` shape.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceConfigs {
    pub drives: Vec<BlockDeviceConfig>,
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pmem: Vec<PmemConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonDeviceConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDeviceConfig>,
}

impl DeviceConfigs {
    /// Checks a candidate set of devices the way `InstanceStart` will; only a valid set is kept.
    fn commit(&mut self, candidate: DeviceConfigs) -> Result<(), DeviceError> {
        let vm = MicroVmConfig {
            drives: candidate.drives,
            net: candidate.network_interfaces,
            vsock: candidate.vsock,
            entropy: candidate.entropy,
            balloon: candidate.balloon,
            pmem: candidate.pmem,
            ..Default::default()
        };
        vm.validate_devices()?;
        self.balloon = vm.balloon;
        self.pmem = vm.pmem;
        self.drives = vm.drives;
        self.network_interfaces = vm.net;
        self.vsock = vm.vsock;
        self.entropy = vm.entropy;
        Ok(())
    }

    /// Adds or replaces drive `id` (`PUT /drives/{id}`, or one entry of `drives` in a config file). A
    /// replaced drive keeps its place in the order.
    pub fn put_drive(&mut self, id: &str, drive: Value) -> Result<(), DeviceError> {
        let drive: BlockDeviceConfig = serde_json::from_value(drive)?;
        if drive.drive_id != id {
            return Err(DeviceError::IdMismatch);
        }
        let mut candidate = self.clone();
        match candidate.drives.iter_mut().find(|d| d.drive_id == id) {
            Some(existing) => *existing = drive,
            None => candidate.drives.push(drive),
        }
        self.commit(candidate)?;
        tracing::debug!(drive_id = id, "drive configured");
        Ok(())
    }

    /// Adds or replaces network interface `id`.
    pub fn put_network_interface(&mut self, id: &str, iface: Value) -> Result<(), DeviceError> {
        let iface: NetworkInterfaceConfig = serde_json::from_value(iface)?;
        if iface.iface_id != id {
            return Err(DeviceError::IdMismatch);
        }
        let mut candidate = self.clone();
        match candidate.network_interfaces.iter_mut().find(|n| n.iface_id == id) {
            Some(existing) => *existing = iface,
            None => candidate.network_interfaces.push(iface),
        }
        self.commit(candidate)?;
        tracing::debug!(iface_id = id, "network interface configured");
        Ok(())
    }

    /// Sets (or replaces) the vsock device.
    pub fn put_vsock(&mut self, vsock: Value) -> Result<(), DeviceError> {
        let vsock: VsockConfig = serde_json::from_value(vsock)?;
        let mut candidate = self.clone();
        candidate.vsock = Some(vsock);
        self.commit(candidate)?;
        tracing::debug!("vsock configured");
        Ok(())
    }

    /// Adds or replaces pmem device `id` (`PUT /pmem/{id}`, or one entry of `pmem` in a config file). A
    /// replaced device keeps its place in the order.
    pub fn put_pmem(&mut self, id: &str, pmem: Value) -> Result<(), DeviceError> {
        let pmem: PmemConfig = serde_json::from_value(pmem)?;
        if pmem.id != id {
            return Err(DeviceError::IdMismatch);
        }
        let mut candidate = self.clone();
        match candidate.pmem.iter_mut().find(|p| p.id == id) {
            Some(existing) => *existing = pmem,
            None => candidate.pmem.push(pmem),
        }
        self.commit(candidate)?;
        tracing::debug!(id, "pmem device configured");
        Ok(())
    }

    /// Sets (or replaces) the balloon device (`PUT /balloon`, or `balloon` in a config file); `mem_size_mib`
    /// is the guest memory it must fit in.
    pub fn put_balloon(&mut self, balloon: Value, mem_size_mib: usize) -> Result<(), DeviceError> {
        let balloon: BalloonDeviceConfig = serde_json::from_value(balloon)?;
        BalloonDeviceConfig::check_size(balloon.amount_mib, mem_size_mib)?;
        let mut candidate = self.clone();
        candidate.balloon = Some(balloon);
        self.commit(candidate)?;
        tracing::debug!("balloon device configured");
        Ok(())
    }

    /// Sets (or replaces) the entropy device (`PUT /entropy`, or `entropy` in a config file).
    pub fn put_entropy(&mut self, entropy: Value) -> Result<(), DeviceError> {
        let entropy: EntropyDeviceConfig = serde_json::from_value(entropy)?;
        let mut candidate = self.clone();
        candidate.entropy = Some(entropy);
        self.commit(candidate)?;
        tracing::debug!("entropy device configured");
        Ok(())
    }

    /// Checks `PATCH /drives/{id}` against the configured drives without changing anything: returns the
    /// device set with the new `path_on_host` (validated like `PUT`: the file exists and opens the way the
    /// drive uses it) and/or the patched `rate_limiter`, and what the running drive must take. The caller
    /// commits it with [`DeviceConfigs::replace`] once the running drive (if any) took it too.
    pub fn prepare_drive_update(&self, id: &str, update: Value) -> Result<PreparedDriveUpdate, DeviceError> {
        let update: DriveUpdate = serde_json::from_value(update)?;
        if update.drive_id != id {
            return Err(DeviceError::IdMismatch);
        }
        if update.path_on_host.is_none() && update.rate_limiter.is_none() {
            return Err(DeviceError::EmptyDriveUpdate(id.to_string()));
        }
        let mut candidate = self.clone();
        let drive = candidate
            .drives
            .iter_mut()
            .find(|d| d.drive_id == id)
            .ok_or_else(|| DeviceError::NoSuchDrive(id.to_string()))?;
        if let Some(path) = &update.path_on_host {
            drive.path_on_host = path.clone();
        }
        drive.rate_limiter = RateLimiterConfig::patched(drive.rate_limiter, update.rate_limiter);
        let vm = MicroVmConfig {
            drives: candidate.drives.clone(),
            ..Default::default()
        };
        vm.validate_devices()?;
        Ok(PreparedDriveUpdate {
            devices: candidate,
            path_on_host: update.path_on_host,
            rate_limiter: update.rate_limiter,
        })
    }

    /// Checks `PATCH /network-interfaces/{id}` without changing anything: returns the device set with the
    /// patched rate limiters and the update for the running interface. Commit with
    /// [`DeviceConfigs::replace`] once the running interface took it.
    pub fn prepare_network_interface_update(
        &self,
        id: &str,
        update: Value,
    ) -> Result<(DeviceConfigs, NetworkInterfaceUpdate), DeviceError> {
        let update: NetworkInterfaceUpdate = serde_json::from_value(update)?;
        if update.iface_id != id {
            return Err(DeviceError::IdMismatch);
        }
        if update.rx_rate_limiter.is_none() && update.tx_rate_limiter.is_none() {
            return Err(DeviceError::EmptyNetworkInterfaceUpdate(id.to_string()));
        }
        let mut candidate = self.clone();
        let iface = candidate
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == id)
            .ok_or_else(|| DeviceError::NoSuchNetworkInterface(id.to_string()))?;
        iface.rx_rate_limiter = RateLimiterConfig::patched(iface.rx_rate_limiter, update.rx_rate_limiter);
        iface.tx_rate_limiter = RateLimiterConfig::patched(iface.tx_rate_limiter, update.tx_rate_limiter);
        iface.validate()?;
        Ok((candidate, update))
    }

    /// Takes a device set prepared by [`DeviceConfigs::prepare_drive_update`].
    pub fn replace(&mut self, prepared: DeviceConfigs) {
        *self = prepared;
    }

    /// Hands the devices to the VMM's configuration (at `InstanceStart`).
    pub fn apply_to(&self, config: &mut MicroVmConfig) {
        config.drives = self.drives.clone();
        config.net = self.network_interfaces.clone();
        config.vsock = self.vsock.clone();
        config.entropy = self.entropy.clone();
        config.balloon = self.balloon.clone();
        config.pmem = self.pmem.clone();
    }
}

/// The ID inside a device entry of a config file (`drive_id`, `iface_id`), or "" when absent.
pub fn entry_id<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry.get(key).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn image(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("hull-api-devices-{}-{name}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        path
    }

    #[test]
    fn drives_are_typed_validated_and_replaced_in_place() {
        let img = image("drives");
        let mut devices = DeviceConfigs::default();
        let root = json!({"drive_id": "rootfs", "path_on_host": img, "is_root_device": true, "is_read_only": false});
        devices.put_drive("rootfs", root.clone()).unwrap();
        devices
            .put_drive(
                "data",
                json!({"drive_id": "data", "path_on_host": img, "is_root_device": false}),
            )
            .unwrap();
        // A second root device is refused and changes nothing.
        let e = devices
            .put_drive(
                "other",
                json!({"drive_id": "other", "path_on_host": img, "is_root_device": true}),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("root device"), "{e}");
        assert_eq!(devices.drives.len(), 2);
        // Replacing keeps the order.
        let mut ro = root.clone();
        ro["is_read_only"] = json!(true);
        devices.put_drive("rootfs", ro).unwrap();
        assert_eq!(devices.drives[0].drive_id, "rootfs");
        assert!(devices.drives[0].is_read_only);
        // Bodies with unknown fields, a missing file or another id are refused with the reason.
        let e = devices
            .put_drive("x", json!({"drive_id": "x", "bogus": 1}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = devices
            .put_drive(
                "x",
                json!({"drive_id": "x", "path_on_host": "/no/such.ext4", "is_root_device": false}),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such.ext4"), "{e}");
        assert!(matches!(
            devices.put_drive(
                "x",
                json!({"drive_id": "y", "path_on_host": img, "is_root_device": false})
            ),
            Err(DeviceError::IdMismatch)
        ));
        let mut vm = MicroVmConfig::default();
        devices.apply_to(&mut vm);
        assert_eq!(vm.drives.len(), 2);
        std::fs::remove_file(img).unwrap();
    }

    #[test]
    fn network_interfaces_and_vsock_are_validated() {
        let mut devices = DeviceConfigs::default();
        let e = devices
            .put_network_interface(
                "eth0",
                json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("guest_mac"), "{e}");
        devices
            .put_network_interface(
                "eth0",
                json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}),
            )
            .unwrap();
        let e = devices
            .put_vsock(json!({"guest_cid": 1, "uds_path": "/tmp/v.sock"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("guest_cid"), "{e}");
        devices
            .put_vsock(json!({"guest_cid": 3, "uds_path": "/tmp/v.sock"}))
            .unwrap();
        let json = serde_json::to_value(&devices).unwrap();
        assert_eq!(json["network-interfaces"][0]["host_dev_name"], "tap0");
        assert_eq!(json["vsock"]["guest_cid"], 3);
    }

    #[test]
    fn network_interface_updates_patch_rate_limiters_bucket_by_bucket() {
        let mut devices = DeviceConfigs::default();
        devices
            .put_network_interface(
                "eth0",
                json!({"iface_id": "eth0", "host_dev_name": "tap0",
                       "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}},
                       "tx_rate_limiter": {"ops": {"size": 10, "one_time_burst": 5, "refill_time": 1000}}}),
            )
            .unwrap();
        let (prepared, update) = devices
            .prepare_network_interface_update(
                "eth0",
                json!({"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 50, "refill_time": 1000}}}),
            )
            .unwrap();
        assert!(update.tx_rate_limiter.is_none());
        assert!(update.rx_rate_limiter.unwrap().bandwidth.is_none());
        devices.replace(prepared);
        let json = serde_json::to_value(&devices).unwrap();
        let iface = &json["network-interfaces"][0];
        // RX keeps its bandwidth bucket and gains ops; TX is untouched.
        assert_eq!(iface["rx_rate_limiter"]["bandwidth"]["size"], 1000);
        assert_eq!(iface["rx_rate_limiter"]["ops"]["size"], 50);
        assert_eq!(iface["tx_rate_limiter"]["ops"]["one_time_burst"], 5);

        let refused = [
            (json!({"iface_id": "eth0"}), "Nothing to update"),
            (
                json!({"iface_id": "eth0", "host_dev_name": "tap1"}),
                "unknown field `host_dev_name`",
            ),
            (
                json!({"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 1}}}),
                "missing field `refill_time`",
            ),
            (
                json!({"iface_id": "eth0", "tx_rate_limiter": {"ops": {"size": 1, "refill_time": u64::MAX}}}),
                "tx_rate_limiter.ops.refill_time",
            ),
            (json!({"iface_id": "eth1", "tx_rate_limiter": {}}), "does not match"),
        ];
        for (body, expected) in refused {
            let e = devices
                .prepare_network_interface_update("eth0", body.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{body}: {e}");
        }
        let e = devices
            .prepare_network_interface_update("eth9", json!({"iface_id": "eth9", "rx_rate_limiter": {}}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "Invalid network interface \"eth9\": no network interface with this id is configured."
        );
    }

    #[test]
    fn drive_updates_change_only_path_on_host_and_only_when_valid() {
        let (img, other) = (image("update-a"), image("update-b"));
        let mut devices = DeviceConfigs::default();
        devices
            .put_drive(
                "slot0",
                json!({"drive_id": "slot0", "path_on_host": img, "is_root_device": false, "is_read_only": true}),
            )
            .unwrap();
        let prepared = devices
            .prepare_drive_update(
                "slot0",
                json!({"drive_id": "slot0", "path_on_host": other, "rate_limiter": null}),
            )
            .unwrap();
        assert_eq!(prepared.path_on_host.as_ref(), Some(&other));
        assert!(prepared.rate_limiter.is_none());
        assert_eq!(devices.drives[0].path_on_host, img, "nothing changes before replace");
        devices.replace(prepared.devices);
        assert_eq!(devices.drives[0].path_on_host, other);
        assert!(devices.drives[0].is_read_only);

        // A rate limiter alone; then one bucket of it, the other staying.
        let prepared = devices
            .prepare_drive_update(
                "slot0",
                json!({"drive_id": "slot0", "rate_limiter": {
                    "bandwidth": {"size": 1048576, "refill_time": 1000},
                    "ops": {"size": 100, "refill_time": 1000}}}),
            )
            .unwrap();
        assert!(prepared.path_on_host.is_none());
        devices.replace(prepared.devices);
        let prepared = devices
            .prepare_drive_update(
                "slot0",
                json!({"drive_id": "slot0", "rate_limiter": {"ops": {"size": 0, "refill_time": 0}}}),
            )
            .unwrap();
        devices.replace(prepared.devices);
        let limiter = devices.drives[0].rate_limiter.unwrap();
        assert_eq!(limiter.bandwidth.unwrap().size, 1048576);
        assert_eq!(limiter.ops.unwrap().size, 0);
        assert_eq!(devices.drives[0].path_on_host, other);

        let refused = [
            (json!({"drive_id": "slot0"}), "Nothing to update"),
            (
                json!({"drive_id": "slot0", "path_on_host": "/no/such.img"}),
                "/no/such.img",
            ),
            (
                json!({"drive_id": "slot0", "path_on_host": img, "is_read_only": false}),
                "unknown field `is_read_only`",
            ),
            (
                json!({"drive_id": "slot0", "rate_limiter": {"bandwidth": {"refill_time": 10}}}),
                "missing field `size`",
            ),
            (
                json!({"drive_id": "slot0", "rate_limiter": {"iops": {"size": 1, "refill_time": 10}}}),
                "unknown field `iops`",
            ),
            (
                json!({"drive_id": "slot0", "rate_limiter": {"ops": {"size": 1, "refill_time": -10}}}),
                "invalid value: integer `-10`",
            ),
            (json!({"drive_id": "other", "path_on_host": img}), "does not match"),
        ];
        for (body, expected) in refused {
            let e = devices
                .prepare_drive_update("slot0", body.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{body}: {e}");
        }
        let e = devices
            .prepare_drive_update("nope", json!({"drive_id": "nope", "path_on_host": img}))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "Invalid drive \"nope\": no drive with this id is configured.");
        assert_eq!(devices.drives[0].path_on_host, other);
        std::fs::remove_file(img).unwrap();
        std::fs::remove_file(other).unwrap();
    }

    #[test]
    fn empty_lists_serialize_like_firecracker() {
        let json = serde_json::to_value(DeviceConfigs::default()).unwrap();
        assert_eq!(json, serde_json::json!({ "drives": [], "network-interfaces": [] }));
    }
}
