#![no_main]
//! Request path normalisation and the route path policies.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::path(data));
