//! `sched` collector: scheduler events, runqueue latency and per-CPU idle
//! time.
//!
//! Every counter is bumped where the kernel bumps its own (`ctxt` and
//! `processes` in `/proc/stat`), so the two agree event for event.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use exporter_common::{
    histogram::Log2Histogram,
    sched::{CpuIdle, SCHED_COUNTERS_ENTRIES, SchedCounters, WAKEUP_TIMES_ENTRIES},
};

use crate::tracepoint::{field_offset, read_field};

/// Bound: one entry per CPU; no labels.
#[map]
static SCHED_COUNTERS: PerCpuArray<SchedCounters> = PerCpuArray::with_max_entries(SCHED_COUNTERS_ENTRIES, 0);

/// Bound: one histogram per CPU; no labels.
#[map]
static RUNQUEUE_LATENCY: PerCpuArray<Log2Histogram> = PerCpuArray::with_max_entries(1, 0);

/// Bound: [`WAKEUP_TIMES_ENTRIES`] waiting tasks; LRU eviction beyond.
#[map]
static WAKEUP_TIMES: LruHashMap<u32, u64> = LruHashMap::with_max_entries(WAKEUP_TIMES_ENTRIES, 0);

/// Bound: one entry per CPU; the `cpu` label ranges over possible CPUs.
#[map]
static CPU_IDLE: PerCpuArray<CpuIdle> = PerCpuArray::with_max_entries(1, 0);

field_offset!(
    /// `sched_switch.prev_pid`.
    SCHED_SWITCH_PREV_PID = 24
);
field_offset!(
    /// `sched_switch.next_pid`.
    SCHED_SWITCH_NEXT_PID = 56
);
field_offset!(
    /// `sched_wakeup.pid`, shared by `sched_wakeup_new`.
    SCHED_WAKEUP_PID = 24
);

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
pub(crate) fn sched_switch(ctx: TracePointContext) -> u32 {
    count(|c| c.context_switches += 1);
    let now = unsafe { bpf_ktime_get_ns() };
    let prev = read_field::<i32>(&ctx, &SCHED_SWITCH_PREV_PID);
    let next = read_field::<i32>(&ctx, &SCHED_SWITCH_NEXT_PID);
    account_idle(now, prev == Some(0), next == Some(0));
    if let Some(next) = next
        && next != 0
    {
        record_runqueue_latency(now, next as u32);
    }
    0
}

/// The idle task is pid 0 on every CPU: switching to it starts an idle
/// period, switching away from it ends one.
#[inline(always)]
fn account_idle(now: u64, leaving_idle: bool, entering_idle: bool) {
    let Some(idle) = CPU_IDLE.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot of a per-CPU map; see `count`.
    let idle = unsafe { &mut *idle };
    if leaving_idle && idle.idle_since_ns != 0 {
        idle.idle_ns += now.saturating_sub(idle.idle_since_ns);
        idle.idle_since_ns = 0;
    }
    if entering_idle {
        idle.idle_since_ns = now;
    }
}

#[inline(always)]
fn record_runqueue_latency(now: u64, pid: u32) {
    // SAFETY: the value is copied out at once; an entry evicted under us
    // yields a wrong timestamp at worst, never a fault.
    let Some(&woken) = (unsafe { WAKEUP_TIMES.get(pid) }) else { return };
    let _ = WAKEUP_TIMES.remove(pid);
    if let Some(histogram) = RUNQUEUE_LATENCY.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU map; see `count`.
        unsafe { &mut *histogram }.record(now.saturating_sub(woken));
    }
}

#[inline(always)]
fn record_wakeup(ctx: &TracePointContext) {
    if let Some(pid) = read_field::<i32>(ctx, &SCHED_WAKEUP_PID)
        && pid != 0
    {
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = WAKEUP_TIMES.insert(pid as u32, now, 0);
    }
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub(crate) fn sched_wakeup(ctx: TracePointContext) -> u32 {
    record_wakeup(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub(crate) fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    record_wakeup(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub(crate) fn sched_process_fork(_ctx: TracePointContext) -> u32 {
    count(|c| c.forks += 1);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub(crate) fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    count(|c| c.execs += 1);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub(crate) fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    count(|c| c.exits += 1);
    0
}

#[tracepoint(category = "sched", name = "sched_migrate_task")]
pub(crate) fn sched_migrate_task(_ctx: TracePointContext) -> u32 {
    count(|c| c.migrations += 1);
    0
}
