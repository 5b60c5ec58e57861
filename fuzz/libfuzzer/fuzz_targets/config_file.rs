#![no_main]
//! libFuzzer entry for the `config_file` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("config_file").expect("target").run)(data));
