#![no_main]
//! libFuzzer entry for the `http_request` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("http_request").expect("target").run)(data));
