#![no_main]
//! libFuzzer entry for the `virtio_block` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("virtio_block").expect("target").run)(data));
