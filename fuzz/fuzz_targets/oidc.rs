#![no_main]
//! The session cookies and login redirect targets of oidc.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::oidc(data));
