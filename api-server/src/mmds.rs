//! MMDS from the host's side: `PUT /mmds/config` (pre-boot: version, the interfaces that serve it, its
//! address, IMDS compatibility), `PUT`/`PATCH`/`GET /mmds` (the data, before or after boot), the config
//! file's `mmds-config` and `--metadata`. The service itself (`devices::mmds`) is shared with the net
//! devices that serve it; this file owns the checks on what the client sends and Firecracker's error
//! texts and codes (400, and 413 when the data store would exceed its size limit).

use std::net::Ipv4Addr;

use devices::mmds::{DataStoreError, Mmds, MmdsVersion, SharedMmds, DEFAULT_IPV4, DEFAULT_SIZE_LIMIT};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use vmm::MmdsAttachment;

/// Why an MMDS request was refused. The `Display` text is the `fault_message`.
#[derive(Debug, thiserror::Error)]
pub enum MmdsError {
    #[error("The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    EmptyNetworkIfaceList,
    #[error("The MMDS IPv4 address is not link local.")]
    InvalidIpv4Addr,
    #[error(
        "The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface."
    )]
    InvalidNetworkInterfaceId,
    #[error(transparent)]
    DataStore(#[from] DataStoreError),
}

impl MmdsError {
    /// Firecracker's code: 413 for a data store over its limit, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            MmdsError::DataStore(DataStoreError::LimitExceeded { .. }) => 413,
            _ => 400,
        }
    }
}

/// `PUT /mmds/config` and the config file's `mmds-config`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    #[serde(default)]
    pub version: MmdsVersionName,
    pub network_interfaces: Vec<String>,
    #[serde(default = "default_ipv4")]
    pub ipv4_address: Ipv4Addr,
    #[serde(default)]
    pub imds_compat: bool,
}

fn default_ipv4() -> Ipv4Addr {
    DEFAULT_IPV4
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum MmdsVersionName {
    #[default]
    V1,
    V2,
}

/// The instance's MMDS: the shared service and its configuration.
#[derive(Debug)]
pub struct MmdsService {
    shared: SharedMmds,
    config: Option<MmdsConfig>,
}

impl Default for MmdsService {
    fn default() -> Self {
        MmdsService::new(DEFAULT_SIZE_LIMIT)
    }
}

impl MmdsService {
    /// A service whose data store holds at most `limit` bytes (`--mmds-size-limit`).
    pub fn new(limit: usize) -> Self {
        MmdsService {
            shared: Mmds::new(limit).shared(),
            config: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Mmds> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> Option<&MmdsConfig> {
        self.config.as_ref()
    }

    /// Checks `config` against the configured interfaces (`iface_ids`) and takes it.
    pub fn put_config(&mut self, config: MmdsConfig, iface_ids: &[&str]) -> Result<(), MmdsError> {
        if config.network_interfaces.is_empty() {
            return Err(MmdsError::EmptyNetworkIfaceList);
        }
        if !config
            .network_interfaces
            .iter()
            .all(|id| iface_ids.contains(&id.as_str()))
        {
            return Err(MmdsError::InvalidNetworkInterfaceId);
        }
        if !config.ipv4_address.is_link_local() {
            return Err(MmdsError::InvalidIpv4Addr);
        }
        let version = match config.version {
            MmdsVersionName::V1 => MmdsVersion::V1,
            MmdsVersionName::V2 => MmdsVersion::V2,
        };
        self.lock().configure(version, config.imds_compat);
        tracing::info!(?config, "MMDS configured");
        self.config = Some(config);
        Ok(())
    }

    /// `PUT /mmds`.
    pub fn put(&self, value: Value) -> Result<(), MmdsError> {
        Ok(self.lock().data_store_mut().put(value)?)
    }

    /// `PATCH /mmds`: a JSON merge patch.
    pub fn patch(&self, patch: &Value) -> Result<(), MmdsError> {
        Ok(self.lock().data_store_mut().patch(patch)?)
    }

    /// `GET /mmds`.
    pub fn get(&self) -> Value {
        self.lock().data_store().value().clone()
    }

    /// What `InstanceStart` hands the VMM: which interfaces serve MMDS, at which address.
    pub fn attachment(&self) -> Option<MmdsAttachment> {
        self.config.as_ref().map(|c| MmdsAttachment {
            network_interfaces: c.network_interfaces.clone(),
            ipv4_address: c.ipv4_address,
            mmds: self.shared.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(ifaces: &[&str], ip: &str) -> MmdsConfig {
        serde_json::from_value(json!({"network_interfaces": ifaces, "ipv4_address": ip})).unwrap()
    }

    #[test]
    fn config_defaults_and_checks() {
        let c: MmdsConfig = serde_json::from_value(json!({"network_interfaces": ["eth0"]})).unwrap();
        assert_eq!(
            (c.version, c.ipv4_address, c.imds_compat),
            (MmdsVersionName::V1, DEFAULT_IPV4, false)
        );
        assert!(serde_json::from_value::<MmdsConfig>(json!({"network_interfaces": [], "x": 1})).is_err());
        assert!(serde_json::from_value::<MmdsConfig>(json!({"version": "V3", "network_interfaces": []})).is_err());
        let mut s = MmdsService::default();
        assert!(matches!(
            s.put_config(config(&[], "169.254.1.1"), &["eth0"]),
            Err(MmdsError::EmptyNetworkIfaceList)
        ));
        assert!(matches!(
            s.put_config(config(&["eth1"], "169.254.1.1"), &["eth0"]),
            Err(MmdsError::InvalidNetworkInterfaceId)
        ));
        assert!(matches!(
            s.put_config(config(&["eth0"], "10.0.0.1"), &["eth0"]),
            Err(MmdsError::InvalidIpv4Addr)
        ));
        assert!(s.attachment().is_none());
        s.put_config(config(&["eth0"], "169.254.1.1"), &["eth0"]).unwrap();
        let a = s.attachment().unwrap();
        assert_eq!(
            (a.network_interfaces, a.ipv4_address),
            (vec!["eth0".to_string()], Ipv4Addr::new(169, 254, 1, 1))
        );
    }

    #[test]
    fn data_limit_is_413() {
        let s = MmdsService::new(10);
        let e = s.put(json!({"long": "0123456789"})).unwrap_err();
        assert_eq!(e.status(), 413);
        assert_eq!(s.patch(&json!({})).unwrap_err().status(), 400);
    }
}
