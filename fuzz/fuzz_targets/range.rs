#![no_main]
//! Range, If-Range, preconditions and Accept-Encoding of static files.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::range(data));
