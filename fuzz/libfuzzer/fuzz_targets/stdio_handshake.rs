#![no_main]
//! libFuzzer entry for the `stdio_handshake` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("stdio_handshake").expect("target").run)(data));
