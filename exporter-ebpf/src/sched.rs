//! `sched` collector: scheduler events, runqueue latency and per-CPU idle
//! time.
//!
//! Every counter is bumped where the kernel bumps its own (`ctxt` and
//! `processes` in `/proc/stat`), so the two agree event for event.

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use exporter_common::{
    histogram::Log2Histogram,
    sched::{CpuIdle, SCHED_COUNTERS_ENTRIES, SchedCounters, WAKEUP_TIMES_ENTRIES},
};

use crate::kernel::{kernel_offset, read_member};

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

/// `CLOCK_MONOTONIC` ns just before load, written in by the daemon; see
/// `exporter_common::sched::LOAD_TIME_GLOBAL`.
#[unsafe(no_mangle)]
static LOAD_TIME_NS: u64 = 0;

kernel_offset!(
    /// Offset of `task_struct.pid`.
    TASK_STRUCT_PID
);

/// The pid of the `task_struct` at `task`; 0 is the idle task.
#[inline(always)]
fn pid_of(task: u64) -> Option<i32> {
    read_member::<i32>(task, &TASK_STRUCT_PID)
}

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
    let now = unsafe { bpf_ktime_get_ns() };
    // TP_PROTO(bool preempt, struct task_struct *prev,
    //          struct task_struct *next, unsigned int prev_state)
    let prev = pid_of(ctx.arg(1));
    let next = pid_of(ctx.arg(2));
    account_idle(now, prev == Some(0), next == Some(0));
    if let Some(next) = next
        && next != 0
    {
        record_runqueue_latency(now, next as u32);
    }
    0
}

/// Credits the interval since this CPU's previous switch to idle time when
/// the task leaving the CPU is the idle task (pid 0 on every CPU).
#[inline(always)]
fn account_idle(now: u64, prev_is_idle: bool, next_is_idle: bool) {
    let Some(idle) = CPU_IDLE.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot of a per-CPU map, written only by this program.
    let idle = unsafe { &mut *idle };
    if prev_is_idle {
        let started = if idle.last_switch_ns != 0 {
            idle.last_switch_ns
        } else {
            // First switch on this CPU since attach, out of idle: it was idle
            // since before the programs attached.
            // SAFETY: volatile so the loaded value is read, not the default.
            unsafe { core::ptr::read_volatile(&LOAD_TIME_NS) }
        };
        idle.idle_ns += now.saturating_sub(started);
    }
    idle.last_switch_ns = now;
    idle.running_idle = u64::from(next_is_idle);
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

/// Stamps the wakeup of the task in argument 0 (TP_PROTO(struct
/// task_struct *p) for both wakeup tracepoints).
#[inline(always)]
fn record_wakeup(ctx: &RawTracePointContext) {
    if let Some(pid) = pid_of(ctx.arg(0))
        && pid != 0
    {
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = WAKEUP_TIMES.insert(pid as u32, now, 0);
    }
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub(crate) fn sched_wakeup(ctx: RawTracePointContext) -> i32 {
    record_wakeup(&ctx);
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub(crate) fn sched_wakeup_new(ctx: RawTracePointContext) -> i32 {
    record_wakeup(&ctx);
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
