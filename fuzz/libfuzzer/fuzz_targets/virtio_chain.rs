#![no_main]
//! libFuzzer entry for the `virtio_chain` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("virtio_chain").expect("target").run)(data));
