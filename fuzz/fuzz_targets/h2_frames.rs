#![no_main]
//! The HTTP/2 frame scanner across any split of reads.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::h2_frames(data));
