//! `sched` collector: scheduler events, runqueue latency and per-CPU idle
//! time.
//!
//! Every counter is bumped where the kernel bumps its own (`ctxt` and
//! `processes` in `/proc/stat`), so the two agree event for event.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use exporter_common::{
    histogram::Log2Histogram,
    sched::{CpuIdle, SCHED_COUNTERS_ENTRIES, SchedCounters},
};

use crate::kernel::{kernel_offset, read_member};

/// Bound: one entry per CPU; no labels.
#[map]
static SCHED_COUNTERS: PerCpuArray<SchedCounters> = PerCpuArray::with_max_entries(SCHED_COUNTERS_ENTRIES, 0);

/// Bound: one histogram per CPU; no labels.
#[map]
static RUNQUEUE_LATENCY: PerCpuArray<Log2Histogram> = PerCpuArray::with_max_entries(1, 0);

/// Bound: one entry per CPU; the `cpu` label ranges over possible CPUs.
#[map]
static CPU_IDLE: PerCpuArray<CpuIdle> = PerCpuArray::with_max_entries(1, 0);

/// What `sched_switch` learns about its CPU once and reuses.
#[repr(C)]
#[derive(Clone, Copy)]
struct CpuContext {
    /// Address of this CPU's `struct rq`; 0 until learned.
    rq: u64,
    /// Address of this CPU's idle task; 0 until its first switch out of idle.
    idle_task: u64,
}

/// Bound: one entry per CPU; kernel-side only, never read by the daemon.
#[map]
static CPU_CONTEXT: PerCpuArray<CpuContext> = PerCpuArray::with_max_entries(1, 0);

/// `CLOCK_MONOTONIC` ns just before load, written in by the daemon; see
/// `exporter_common::sched::LOAD_TIME_GLOBAL`.
#[unsafe(no_mangle)]
static LOAD_TIME_NS: u64 = 0;

kernel_offset!(
    /// Offset of `task_struct.sched_info.last_queued`.
    TASK_STRUCT_LAST_QUEUED
);
kernel_offset!(
    /// Offset of `task_struct.se.cfs_rq`.
    TASK_STRUCT_CFS_RQ
);
kernel_offset!(
    /// Offset of `cfs_rq.rq`.
    CFS_RQ_RQ
);
kernel_offset!(
    /// Offset of `rq.clock`.
    RQ_CLOCK
);

/// Applies `bump` to this CPU's counters.
#[inline(always)]
fn count(bump: impl FnOnce(&mut SchedCounters)) {
    if let Some(counters) = SCHED_COUNTERS.get_ptr_mut(0) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU map, valid for
        // the program's run; a program does not nest in itself on one CPU, and
        // the programs sharing the slot bump different fields.
        bump(unsafe { &mut *counters });
    }
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub(crate) fn sched_switch(ctx: RawTracePointContext) -> i32 {
    count(|c| c.context_switches += 1);
    // TP_PROTO(bool preempt, struct task_struct *prev,
    //          struct task_struct *next, unsigned int prev_state)
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let Some(context) = CPU_CONTEXT.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot of a per-CPU map, used only by this program.
    let context = unsafe { &mut *context };
    // Once this CPU's idle task is known, comparing addresses tells; until
    // then its pid does (0; `prev` is still current, so the helper reads it
    // without a probe).
    let prev_is_idle =
        if context.idle_task != 0 { prev == context.idle_task } else { bpf_get_current_pid_tgid() as u32 == 0 };
    if prev_is_idle {
        context.idle_task = prev;
    }
    // Unknown (0) until this CPU's first switch out of idle, which the
    // daemon's start-up makes happen on every CPU: until then a switch into
    // idle counts as into a busy task, which only delays the open-period
    // estimate of that one period.
    let next_is_idle = next == context.idle_task;
    if context.rq == 0 {
        // `next` is switching in on this CPU, so its `se.cfs_rq` (set for
        // tasks of every scheduling class) belongs to this CPU's runqueue.
        context.rq = read_member::<u64>(next, &TASK_STRUCT_CFS_RQ)
            .and_then(|cfs_rq| read_member::<u64>(cfs_rq, &CFS_RQ_RQ))
            .unwrap_or(0);
    }
    let Some(clock) = read_member::<u64>(context.rq, &RQ_CLOCK) else { return 0 };
    account_idle(clock, prev_is_idle, next_is_idle);
    if !next_is_idle {
        record_runqueue_latency(clock, next);
    }
    0
}

/// Credits the interval since this CPU's previous switch to idle time when
/// the task leaving the CPU is the idle task.
#[inline(always)]
fn account_idle(clock: u64, prev_is_idle: bool, next_is_idle: bool) {
    let Some(idle) = CPU_IDLE.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot of a per-CPU map, written only by this program.
    let idle = unsafe { &mut *idle };
    if prev_is_idle {
        idle.idle_ns += if idle.last_switch_clock_ns != 0 {
            clock.saturating_sub(idle.last_switch_clock_ns)
        } else {
            // First switch on this CPU since attach, out of idle: it was idle
            // since before the programs attached.
            // SAFETY: volatile so the loaded value is read, not the default.
            let loaded = unsafe { core::ptr::read_volatile(&LOAD_TIME_NS) };
            unsafe { bpf_ktime_get_ns() }.saturating_sub(loaded)
        };
    }
    idle.last_switch_clock_ns = clock;
    if next_is_idle {
        idle.idle_since_ns = unsafe { bpf_ktime_get_ns() };
    }
    idle.running_idle = u64::from(next_is_idle);
}

/// Records how long `next` waited on this CPU's runqueue: the runqueue's
/// clock, which `__schedule()` has just updated, minus the stamp the
/// scheduler put on the task when it queued it. `sched_info_arrive()`
/// computes the same difference right after this tracepoint.
#[inline(always)]
fn record_runqueue_latency(clock: u64, next: u64) {
    // 0 when not stamped, as for the idle task.
    let Some(queued) = read_member::<u64>(next, &TASK_STRUCT_LAST_QUEUED) else { return };
    if queued == 0 {
        return;
    }
    if let Some(histogram) = RUNQUEUE_LATENCY.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU map; see `count`.
        unsafe { &mut *histogram }.record(clock.saturating_sub(queued));
    }
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub(crate) fn sched_process_fork(_ctx: RawTracePointContext) -> i32 {
    count(|c| c.forks += 1);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub(crate) fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    count(|c| c.execs += 1);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub(crate) fn sched_process_exit(_ctx: RawTracePointContext) -> i32 {
    count(|c| c.exits += 1);
    0
}

#[raw_tracepoint(tracepoint = "sched_migrate_task")]
pub(crate) fn sched_migrate_task(_ctx: RawTracePointContext) -> i32 {
    count(|c| c.migrations += 1);
    0
}
