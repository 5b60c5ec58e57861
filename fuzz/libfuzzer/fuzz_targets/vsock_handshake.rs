#![no_main]
//! libFuzzer entry for the `vsock_handshake` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("vsock_handshake").expect("target").run)(data));
