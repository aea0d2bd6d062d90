#![no_main]
//! `trusted_proxies`: the client address from X-Forwarded-For and Forwarded.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::forwarded_for(data));
