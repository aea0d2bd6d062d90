#![no_main]
//! Cache-Control, Vary, Expires, Age and the cache key of the cache plugin.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::cache_control(data));
