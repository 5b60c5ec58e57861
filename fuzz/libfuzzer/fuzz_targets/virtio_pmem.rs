#![no_main]
//! libFuzzer entry for the `virtio_pmem` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("virtio_pmem").expect("target").run)(data));
