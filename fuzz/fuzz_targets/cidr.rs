//! A CIDR range, an address to test it against, then the lines as `allowed_sources`.
//! The properties checked are in `kernel_exporter::fuzzing::cidr`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kernel_exporter::fuzzing::cidr(data));
