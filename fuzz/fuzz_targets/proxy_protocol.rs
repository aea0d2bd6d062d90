#![no_main]
//! The PROXY protocol (v1 and v2) header reader of listeners with `proxy_protocol`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::proxy_protocol(data));
