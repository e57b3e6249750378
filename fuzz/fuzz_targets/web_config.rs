//! `--web.config.file` text, validated as start-up and SIGHUP do.
//! The properties checked are in `kernel_exporter::fuzzing::web_config`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kernel_exporter::fuzzing::web_config(data));
