#![no_main]
//! libFuzzer entry for the `agent_reply` target (`hull_fuzz::TARGETS`).

libfuzzer_sys::fuzz_target!(|data: &[u8]| (hull_fuzz::target("agent_reply").expect("target").run)(data));
