//! The test hooks of builds without the `test-hooks` feature (the release
//! binary among them): the calls `test_hooks.rs` answers, answered without
//! reading any environment variable, so no fault can be injected.

use super::programs::Programs;

/// The embedded object, always.
pub(crate) struct BpfObject(&'static [u8]);

impl BpfObject {
    pub(crate) fn bytes(&self) -> &[u8] {
        self.0
    }
}

pub(crate) fn bpf_object<S: Programs>(embedded: &'static [u8], _specs: &[&S]) -> BpfObject {
    BpfObject(embedded)
}

/// The tracepoint's own name, always.
pub(crate) fn tracepoint_name(_spec: &impl Programs, name: &'static str) -> &'static str {
    name
}

/// No map is resized, always.
pub(crate) fn map_max_entries() -> Option<(String, u32)> {
    None
}

/// The kernel decides whether map reads need CAP_BPF, always.
pub(crate) fn assume_maps_need_cap_bpf() -> Option<String> {
    None
}
