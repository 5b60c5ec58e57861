#![no_main]
//! libFuzzer entry for the `api_routes` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("api_routes").expect("target").run)(data));
