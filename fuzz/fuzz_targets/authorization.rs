//! An `Authorization` header value, and the same bytes as `user:password`.
//! The properties checked are in `kernel_exporter::fuzzing::authorization`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kernel_exporter::fuzzing::authorization(data));
