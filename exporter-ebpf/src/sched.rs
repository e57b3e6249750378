//! `sched` collector: context switches and forks.
//!
//! Both tracepoints fire where the kernel bumps its own counters (`ctxt` and
//! `processes` in `/proc/stat`), so the two agree event for event.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};
use exporter_common::sched::{SCHED_COUNTERS_ENTRIES, SchedCounters};

/// Bound: [`SCHED_COUNTERS_ENTRIES`] (one) entry per CPU; no labels.
#[map(name = "SCHED_COUNTERS")]
static SCHED_COUNTERS: PerCpuArray<SchedCounters> =
    PerCpuArray::with_max_entries(SCHED_COUNTERS_ENTRIES, 0);

/// Applies `bump` to this CPU's counters.
#[inline(always)]
fn count(bump: impl FnOnce(&mut SchedCounters)) {
    if let Some(counters) = SCHED_COUNTERS.get_ptr_mut(0) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU map, valid for
        // the program's run; tracepoint programs do not nest on one CPU, so
        // nothing else writes it concurrently.
        bump(unsafe { &mut *counters });
    }
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub(crate) fn sched_switch(_ctx: TracePointContext) -> u32 {
    count(|c| c.context_switches += 1);
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub(crate) fn sched_process_fork(_ctx: TracePointContext) -> u32 {
    count(|c| c.forks += 1);
    0
}
