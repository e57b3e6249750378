//! `sched` collector: scheduler events and runqueue latency.
//!
//! Every counter is bumped where the kernel bumps its own (`ctxt` and
//! `processes` in `/proc/stat`), so the two agree event for event. Idle
//! time is not counted here: the kernel keeps it per CPU anyway (`/proc/stat`),
//! and timing idle periods cost a clock read on every switch into idle.
//!
//! `sched_switch` is the hottest tracepoint a default collector uses, so its
//! program is a BTF tracepoint (`tp_btf`): the verifier knows the type of
//! `next`, and the task and runqueue fields are read with plain loads
//! instead of `bpf_probe_read_kernel` calls (25–35 ns each on this kind of
//! machine). The other scheduler events are rare and stay raw tracepoints.

use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::PerCpuArray,
    programs::{BtfTracePointContext, RawTracePointContext},
};
use exporter_common::{
    histogram::Log2Histogram,
    sched::{SCHED_COUNTERS_ENTRIES, SchedCounters},
};

use crate::{
    cgroup,
    kernel::{kernel_offset, load_member},
    maps::this_cpu,
};

/// Bound: one entry per CPU; no labels.
#[map]
static SCHED_COUNTERS: PerCpuArray<SchedCounters> = PerCpuArray::with_max_entries(SCHED_COUNTERS_ENTRIES, 0);

/// Bound: one histogram per CPU; no labels.
#[map]
static RUNQUEUE_LATENCY: PerCpuArray<Log2Histogram> = PerCpuArray::with_max_entries(1, 0);

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
    if let Some(counters) = this_cpu(&SCHED_COUNTERS) {
        bump(counters);
    }
}

/// 1 when the `sched` collector is on (`SCHED_ON_GLOBAL`), written before
/// load: this program also runs for the `cgroup` collector alone.
#[unsafe(no_mangle)]
static SCHED_ON: u32 = 0;

/// Counts the switch and records how long `next` waited on this CPU's
/// runqueue: the runqueue's clock, which `__schedule()` has just updated,
/// minus the stamp the scheduler put on the task when it queued it.
/// `sched_info_arrive()` computes the same difference right after this
/// tracepoint and adds it to the task's `run_delay`. With the `cgroup`
/// collector on, the same run charges the switch to the tasks' cgroups.
#[btf_tracepoint(function = "sched_switch")]
pub(crate) fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: volatile so the loaded value is read, not the default.
    let sched_on = unsafe { core::ptr::read_volatile(&SCHED_ON) } != 0;
    let cgroup_on = cgroup::enabled();
    if sched_on {
        count(|c| c.context_switches += 1);
    }
    // TP_PROTO(bool preempt, struct task_struct *prev,
    //          struct task_struct *next, unsigned int prev_state)
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    // SAFETY: `next` is a `struct task_struct *` the verifier knows by its
    // BTF type, and the offsets come from the same BTF: each load is checked
    // against the type at verification time and cannot fault at run time.
    let queued: u64 = unsafe { load_member(next, &TASK_STRUCT_LAST_QUEUED) };
    // 0 when the task was not queued (the idle task, a task that just ran).
    if queued == 0 && !cgroup_on {
        return 0;
    }
    // `next` is switching in on this CPU, so its `se.cfs_rq` (set for tasks
    // of every scheduling class) belongs to this CPU's runqueue.
    // SAFETY: as above; each pointer loaded keeps its BTF type.
    let rq: *const u8 = unsafe {
        let cfs_rq: *const u8 = load_member(next, &TASK_STRUCT_CFS_RQ);
        load_member(cfs_rq, &CFS_RQ_RQ)
    };
    let wait = if queued == 0 {
        None
    } else {
        // SAFETY: as above.
        let clock: u64 = unsafe { load_member(rq, &RQ_CLOCK) };
        Some(clock.saturating_sub(queued))
    };
    if sched_on
        && let Some(wait) = wait
        && let Some(histogram) = this_cpu(&RUNQUEUE_LATENCY)
    {
        histogram.record(wait);
    }
    if cgroup_on {
        // SAFETY: the tracepoint's own task arguments and the runqueue
        // loaded from `next`, all BTF-typed.
        unsafe { cgroup::account_switch(&ctx, prev, next, rq, wait) };
    }
    0
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
