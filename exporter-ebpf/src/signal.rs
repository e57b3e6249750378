//! `signal` collector: signals generated, per signal number.
//!
//! `signal/signal_generate` fires for every attempt to send a signal to a
//! task, whatever became of it (delivered, ignored, already pending, queue
//! full), so every attempt is counted; its `result` field is not read.

use crate::maps::this_cpu;
use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use exporter_common::signal::{SIGNALS_GENERATED_ENTRIES, SignalCounts};

/// Bound: one entry per CPU; the `signal` label has at most `MAX_SIGNAL`
/// values, one per array index `1..=MAX_SIGNAL`.
#[map]
static SIGNALS_GENERATED: PerCpuArray<SignalCounts> = PerCpuArray::with_max_entries(SIGNALS_GENERATED_ENTRIES, 0);

#[raw_tracepoint(tracepoint = "signal_generate")]
pub(crate) fn signal_generate(ctx: RawTracePointContext) -> i32 {
    // The argument is an `int`; read unsigned, a negative number (a kernel
    // bug) lands past the array like any other out-of-range one, with a
    // single bounds check the verifier can follow.
    // TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task,
    // int group, int result)
    let sig: u32 = ctx.arg(0);
    // Signal 0 (a permission probe) never gets here; slot 0 stays unused.
    if sig == 0 {
        return 0;
    }
    let Some(counts) = this_cpu(&SIGNALS_GENERATED) else { return 0 };
    if let Some(count) = counts.generated.get_mut(sig as usize) {
        *count += 1;
    }
    0
}
