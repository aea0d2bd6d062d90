#![no_main]
//! Request heads through decode, normalisation, routing and hop-by-hop stripping.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::request_head(data));
