#![no_main]
//! The TLS ClientHello SNI reader of `tls_passthrough` listeners.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::client_hello(data));
