//! Device configuration: drives, network interfaces and the vsock, from the API (`PUT /drives/{id}`, ...)
//! and the config file alike. This is the one place where they are accepted into the instance; until
//! the VMM has virtio devices, every device is refused with an error saying so, while the empty lists a
//! Firecracker config carries (`"drives": []`) pass. The JSON received is user input and is not trusted.

use serde::Serialize;
use serde_json::Value;

/// Which kind of device a request concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Drive,
    NetworkInterface,
    Vsock,
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceKind::Drive => "Block devices (drives)",
            DeviceKind::NetworkInterface => "Network interfaces",
            DeviceKind::Vsock => "The vsock device",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("{kind} are not supported yet: hull's virtio devices are still being built (refused: {what}).")]
    NotSupportedYet { kind: DeviceKind, what: String },
}

/// The devices configured so far. Entries stay raw JSON until the VMM has typed device configs; those
/// will replace `Value` here and be handed to `VmConfig`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeviceConfigs {
    pub drives: Vec<Value>,
    #[serde(rename = "network-interfaces")]
    pub network_interfaces: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Value>,
}

impl DeviceConfigs {
    /// Adds or replaces drive `id` (`PUT /drives/{id}`, or one entry of `drives` in a config file).
    pub fn put_drive(&mut self, id: &str, _drive: Value) -> Result<(), DeviceError> {
        Err(DeviceError::NotSupportedYet { kind: DeviceKind::Drive, what: format!("drive {id:?}") })
    }

    /// Adds or replaces network interface `id`.
    pub fn put_network_interface(&mut self, id: &str, _iface: Value) -> Result<(), DeviceError> {
        Err(DeviceError::NotSupportedYet {
            kind: DeviceKind::NetworkInterface,
            what: format!("network interface {id:?}"),
        })
    }

    /// Sets the vsock device.
    pub fn put_vsock(&mut self, _vsock: Value) -> Result<(), DeviceError> {
        Err(DeviceError::NotSupportedYet { kind: DeviceKind::Vsock, what: "vsock".into() })
    }

    /// Post-boot updates (`PATCH /drives/{id}`, `PATCH /network-interfaces/{id}`): rate limiters, backing
    /// file. With no devices, no ID exists.
    pub fn patch(&mut self, kind: DeviceKind, id: &str, _update: Value) -> Result<(), DeviceError> {
        Err(DeviceError::NotSupportedYet { kind, what: format!("update of {id:?}") })
    }
}

/// The ID inside a device entry of a config file (`drive_id`, `iface_id`), or "" when absent.
pub fn entry_id<'a>(entry: &'a Value, key: &str) -> &'a str {
    entry.get(key).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_refused_with_a_message_saying_why() {
        let mut devices = DeviceConfigs::default();
        let err = devices.put_drive("rootfs", serde_json::json!({})).unwrap_err().to_string();
        assert!(err.contains("drives") && err.contains("not supported yet") && err.contains("rootfs"), "{err}");
        assert!(devices.put_network_interface("eth0", Value::Null).is_err());
        assert!(devices.put_vsock(Value::Null).is_err());
    }

    #[test]
    fn empty_lists_serialize_like_firecracker() {
        let json = serde_json::to_value(DeviceConfigs::default()).unwrap();
        assert_eq!(json, serde_json::json!({ "drives": [], "network-interfaces": [] }));
    }
}
