#![no_main]
//! A disk cache entry as it is read back.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::cache_entry(data));
