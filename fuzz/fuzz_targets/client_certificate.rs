//! A client certificate's DER: its SANs and subject CN.
//! The properties checked are in `kernel_exporter::fuzzing::client_certificate`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kernel_exporter::fuzzing::client_certificate(data));
