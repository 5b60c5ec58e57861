#![no_main]
//! libFuzzer entry for the `vhost_user_relay` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("vhost_user_relay").expect("target").run)(data));
