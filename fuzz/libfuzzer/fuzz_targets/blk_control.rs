#![no_main]
//! libFuzzer entry for the `blk_control` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("blk_control").expect("target").run)(data));
