#![no_main]
//! The upstream HTTP/1.1 response parser against hyper's client.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::h1_response(data));
