#![no_main]
//! Durations and sizes of the config.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::units(data));
