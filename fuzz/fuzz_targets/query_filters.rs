//! A scrape's query string: `collect[]` and `exclude[]`.
//! The properties checked are in `kernel_exporter::fuzzing::query_filters`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kernel_exporter::fuzzing::query_filters(data));
