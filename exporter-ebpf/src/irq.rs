//! `irq` collector: device interrupt handlers run, and softirqs run and
//! timed per vector.
//!
//! Softirqs are counted at `softirq_entry`, right after the kernel bumps
//! its own `/proc/softirqs` counter, so the two agree event for event.

use crate::maps::this_cpu;
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use exporter_common::irq::{IRQ_COUNTERS_ENTRIES, IrqCounters, SoftirqEntered};

/// Bound: one entry per CPU; the `vector` label has at most `NR_SOFTIRQS`
/// values, one per array index.
#[map]
static IRQ_COUNTERS: PerCpuArray<IrqCounters> = PerCpuArray::with_max_entries(IRQ_COUNTERS_ENTRIES, 0);

/// Bound: one entry per CPU (softirqs do not nest on a CPU); no labels.
#[map]
static SOFTIRQ_ENTERED: PerCpuArray<SoftirqEntered> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's counters.
#[inline(always)]
fn counters() -> Option<&'static mut IrqCounters> {
    // SAFETY: this CPU's slot of a per-CPU map, valid for the program's run;
    // a raw tracepoint program does not nest in itself on one CPU (the kernel
    // skips a recursive run), so nothing else writes it.
    this_cpu(&IRQ_COUNTERS)
}

#[raw_tracepoint(tracepoint = "irq_handler_entry")]
pub(crate) fn irq_handler_entry(_ctx: RawTracePointContext) -> i32 {
    if let Some(counters) = counters() {
        counters.hardirqs += 1;
    }
    0
}

#[raw_tracepoint(tracepoint = "softirq_entry")]
pub(crate) fn softirq_entry(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(unsigned int vec_nr)
    let vec: u32 = ctx.arg(0);
    // The array index is the bound on the label: a vector past the known
    // ones is neither counted nor timed.
    let Some(count) = counters().and_then(|c| c.softirqs.get_mut(vec as usize)) else { return 0 };
    *count += 1;
    if let Some(entered) = this_cpu(&SOFTIRQ_ENTERED) {
        entered.since_ns = unsafe { bpf_ktime_get_ns() };
        entered.vec = vec;
    }
    0
}

#[raw_tracepoint(tracepoint = "softirq_exit")]
pub(crate) fn softirq_exit(ctx: RawTracePointContext) -> i32 {
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(entered) = this_cpu(&SOFTIRQ_ENTERED) else { return 0 };
    let since = entered.since_ns;
    // Closed either way: a period is timed at most once.
    entered.since_ns = 0;
    let vec: u32 = ctx.arg(0);
    // An entry that was not seen (programs attached mid-softirq) leaves nothing to time.
    if since == 0 || vec != entered.vec {
        return 0;
    }
    if let Some(ns) = counters().and_then(|c| c.softirq_ns.get_mut(vec as usize)) {
        *ns += now.saturating_sub(since);
    }
    0
}
