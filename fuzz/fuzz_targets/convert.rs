#![no_main]
//! The form, text and JSON converters of aggregate answers.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::convert(data));
