//! The kernel side: the embedded BPF object, loading it and attaching each
//! collector's programs, the kernel's BTF, batched map reads, tracefs, the
//! run statistics the kernel keeps for our programs, and the programs' own
//! log messages.
//!
//! It knows nothing of metrics: no metric names, no encoder, no HTTP.

pub(crate) mod batch;
pub(crate) mod bpf;
pub(crate) mod btf;
pub(crate) mod program_log;
pub(crate) mod programs;
// Fault injection for the end-to-end tests, only where asked for: see
// test_hooks.rs.
#[cfg(any(test, feature = "test-hooks"))]
pub(crate) mod test_hooks;
#[cfg(not(any(test, feature = "test-hooks")))]
#[path = "no_test_hooks.rs"]
pub(crate) mod test_hooks;
pub(crate) mod tracefs;
