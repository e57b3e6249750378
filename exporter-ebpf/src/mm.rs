//! `mm` collector: OOM kills and direct-reclaim latency. Both fire only
//! under memory pressure, so they cost nothing while there is none. Page
//! faults are the kernel's own counters (`/proc/vmstat`), read by the
//! daemon: no program sits on the fault path.

use crate::maps::{this_cpu, update_failed};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use exporter_common::map_updates;
use exporter_common::{
    histogram::Log2Histogram,
    mm::{DIRECT_RECLAIM_STARTS_ENTRIES, MM_COUNTERS_ENTRIES, MmCounters},
};

/// Bound: one entry per CPU; no labels.
#[map]
static MM_COUNTERS: PerCpuArray<MmCounters> = PerCpuArray::with_max_entries(MM_COUNTERS_ENTRIES, 0);

/// Bound: one histogram per CPU; no labels.
#[map]
static DIRECT_RECLAIM_LATENCY: PerCpuArray<Log2Histogram> = PerCpuArray::with_max_entries(1, 0);

/// Bound: [`DIRECT_RECLAIM_STARTS_ENTRIES`] tasks in direct reclaim at once;
/// LRU eviction beyond (those reclaims go unmeasured). No labels.
#[map]
static DIRECT_RECLAIM_STARTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(DIRECT_RECLAIM_STARTS_ENTRIES, 0);

/// Applies `bump` to this CPU's counters.
#[inline(always)]
fn count(bump: impl FnOnce(&mut MmCounters)) {
    if let Some(counters) = this_cpu(&MM_COUNTERS) {
        bump(counters);
    }
}

/// The current thread's id: the lower half of `pid_tgid` (the upper half is
/// the process id, shared by every thread, and two threads can reclaim at
/// once).
#[inline(always)]
fn current_task() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

/// Fires once per task (the kernel sets `TIF_MEMDIE` first and returns if it
/// was already set), so a victim is never counted twice.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub(crate) fn mark_victim(_ctx: RawTracePointContext) -> i32 {
    count(|c| c.oom_kills += 1);
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_begin")]
pub(crate) fn mm_vmscan_direct_reclaim_begin(ctx: RawTracePointContext) -> i32 {
    let now = unsafe { bpf_ktime_get_ns() };
    // Direct reclaim does not nest (PF_MEMALLOC stops recursion), so a task
    // has at most one open start.
    if let Err(error) = DIRECT_RECLAIM_STARTS.insert(current_task(), now, 0) {
        update_failed(
            &ctx,
            map_updates::DIRECT_RECLAIM_STARTS,
            exporter_common::mm::DIRECT_RECLAIM_STARTS_MAP,
            error,
            "task in direct reclaim",
        );
    }
    0
}

#[raw_tracepoint(tracepoint = "mm_vmscan_direct_reclaim_end")]
pub(crate) fn mm_vmscan_direct_reclaim_end(_ctx: RawTracePointContext) -> i32 {
    let task = current_task();
    // SAFETY: the value is copied out at once; an entry evicted under us
    // yields a wrong timestamp at worst, never a fault.
    let Some(&started) = (unsafe { DIRECT_RECLAIM_STARTS.get(task) }) else { return 0 };
    let _ = DIRECT_RECLAIM_STARTS.remove(task);
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(histogram) = this_cpu(&DIRECT_RECLAIM_LATENCY) {
        histogram.record(now.saturating_sub(started));
    }
    0
}
