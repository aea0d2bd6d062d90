#![no_main]
//! Config text → spec → snapshot never panics.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::config(data));
