#![no_main]
//! libFuzzer entry for the `snapshot_state` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("snapshot_state").expect("target").run)(data));
