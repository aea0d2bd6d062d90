#![no_main]
//! Accept-Encoding negotiation and the media ranges of compression.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::accept_encoding(data));
