//! Snapshot state files (`vmm/src/snapshot/`): the file format (magic, version, length, CRC-64) and, for
//! inputs that pass it, the JSON state and its cross-checks, as `PUT /snapshot/load` reads them before it
//! creates anything. The input is the whole file; a second pass wraps it in a valid header and checksum,
//! so the JSON decoding and `validate` are reached too.

use vmm::snapshot::{format, MicroVmState};

fn decode_state(payload: &[u8]) {
    if let Ok(state) = serde_json::from_slice::<MicroVmState>(payload) {
        let _ = state.validate();
        let _ = state.memory_bytes();
    }
}

pub fn state_file(data: &[u8]) {
    if let Ok(payload) = format::decode("fuzz", data, data.len() as u64) {
        decode_state(&payload);
    }
    let wrapped = format::encode(data);
    let payload = format::decode("fuzz", &wrapped, wrapped.len() as u64).expect("a file we encoded decodes");
    assert_eq!(payload, data);
    decode_state(&payload);
}
