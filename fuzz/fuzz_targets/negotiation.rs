//! An `Accept` header line, then an `Accept-Encoding` header.
//! The properties checked are in `kernel_exporter::fuzzing::negotiation`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kernel_exporter::fuzzing::negotiation(data));
