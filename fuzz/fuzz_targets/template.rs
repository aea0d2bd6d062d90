#![no_main]
//! The templates of aggregate calls.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::template(data));
