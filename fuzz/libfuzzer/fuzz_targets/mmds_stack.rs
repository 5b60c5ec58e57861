#![no_main]
//! libFuzzer entry for the `mmds_stack` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("mmds_stack").expect("target").run)(data));
