//! `kernel-exporter`: a Prometheus exporter whose numbers come from eBPF
//! programs on stable kernel tracepoints. The process entry point; the
//! daemon itself is the library (`lib.rs`), so the fuzz targets reach its
//! parsers.

use std::process::ExitCode;

fn main() -> ExitCode {
    kernel_exporter::main()
}
