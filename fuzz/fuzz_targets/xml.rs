#![no_main]
//! The XML-to-JSON converter of aggregate calls.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::xml(data));
