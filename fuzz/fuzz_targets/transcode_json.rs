#![no_main]
//! gRPC-JSON transcoding: JSON, path and query fields to a protobuf message and back.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzz::transcode_json(data));
