#![no_main]
//! libFuzzer entry for the `virtio_balloon` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("virtio_balloon").expect("target").run)(data));
