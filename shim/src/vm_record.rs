//! `hull-vm.json`: what the serving shim writes into each container's bundle at Create so that `delete`, run
//! after the shim died, can find the VM it left (its processes and its directory) and clean up.
//!
//! The file is read back by a later process, possibly after the bundle was tampered with or the PIDs were
//! reused: a record that does not parse is ignored, and [`crate::shim`] checks every PID and path it names
//! before acting on it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in the bundle.
pub const VM_RECORD: &str = "hull-vm.json";

/// `{"shim_pid": 123, "vm_pids": [124, 125], "work_dir": "/run/hull/shim/hull-run-..."}`; a missing field
/// reads as empty.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmRecord {
    /// The shim serving the pod.
    pub shim_pid: u32,
    /// Every process of the VM (the VMM and its device backends).
    pub vm_pids: Vec<u32>,
    /// The VM's own directory (sockets, logs, images made for it alone).
    pub work_dir: PathBuf,
    /// The cgroup directories the shim made for the pod (parents first), removed after the VM is killed.
    pub cgroups: Vec<PathBuf>,
}

impl VmRecord {
    /// Writes the record into `bundle`, owner-only (best effort: without it only a dead shim's cleanup is
    /// lost).
    pub fn write(&self, bundle: &Path) {
        use std::io::Write;
        match serde_json::to_string(self) {
            Ok(text) => {
                let written = hull_runtime::guard::create_private_file(&bundle.join(VM_RECORD))
                    .and_then(|mut f| f.write_all(text.as_bytes()));
                if let Err(e) = written {
                    log::warn!("writing {}/{VM_RECORD}: {e}", bundle.display());
                }
            }
            Err(e) => log::warn!("encoding the VM record: {e}"),
        }
    }

    /// The record in `bundle`, if there is one that parses.
    pub fn read(bundle: &Path) -> Option<VmRecord> {
        let text = std::fs::read_to_string(bundle.join(VM_RECORD)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn remove(bundle: &Path) {
        let _ = std::fs::remove_file(bundle.join(VM_RECORD));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_reads_the_older_untyped_form() {
        let r = VmRecord {
            shim_pid: 7,
            vm_pids: vec![8, 9],
            work_dir: PathBuf::from("/run/hull/shim/hull-run-x"),
            cgroups: Vec::new(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<VmRecord>(&text).unwrap(), r);
        // What serde_json::json! wrote before the record was typed: same names, any key order.
        let old = r#"{"vm_pids":[8,9],"shim_pid":7,"work_dir":"/run/hull/shim/hull-run-x"}"#;
        assert_eq!(serde_json::from_str::<VmRecord>(old).unwrap(), r);
        assert_eq!(serde_json::from_str::<VmRecord>("{}").unwrap(), VmRecord::default());
        assert!(serde_json::from_str::<VmRecord>(r#"{"vm_pids":"x"}"#).is_err());
    }
}
