//! `syscalls` collector: calls and errors per syscall number, from the
//! `raw_syscalls` tracepoints (every syscall of every task passes there).

use crate::maps::this_cpu;
use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use exporter_common::syscalls::{MAX_ERRNO, SyscallCounts};

use crate::kernel::{kernel_offset, read_member};

/// Bound: one entry per CPU; the `syscall` label has at most
/// `MAX_SYSCALLS` values.
#[map]
static SYSCALL_COUNTS: PerCpuArray<SyscallCounts> = PerCpuArray::with_max_entries(1, 0);

kernel_offset!(
    /// Offset in `struct pt_regs` of the syscall number (`orig_ax` on
    /// x86_64, `syscallno` on aarch64).
    PT_REGS_SYSCALL_NR
);

/// The syscall number saved in the `pt_regs` at `regs`.
#[inline(always)]
fn syscall_nr(regs: u64) -> Option<i64> {
    // aarch64 keeps it in an s32, x86_64 in an unsigned long.
    #[cfg(bpf_target_arch = "aarch64")]
    let nr = read_member::<i32>(regs, &PT_REGS_SYSCALL_NR).map(i64::from);
    #[cfg(not(bpf_target_arch = "aarch64"))]
    let nr = read_member::<i64>(regs, &PT_REGS_SYSCALL_NR);
    nr
}

/// This CPU's counters.
#[inline(always)]
fn counts() -> Option<&'static mut SyscallCounts> {
    // SAFETY: this CPU's slot of a per-CPU map, valid for the program's run;
    // a program does not nest in itself on one CPU.
    this_cpu(&SYSCALL_COUNTS)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub(crate) fn sys_enter(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long id)
    let id: i64 = ctx.arg(1);
    if let Some(counts) = counts()
        // Negative ids (-1 for a syscall a seccomp filter skipped) and ids
        // past the table are not counted: the array index is the bound.
        && let Some(calls) = usize::try_from(id).ok().and_then(|id| counts.calls.get_mut(id))
    {
        *calls += 1;
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub(crate) fn sys_exit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    if !(-MAX_ERRNO..0).contains(&ret) {
        return 0;
    }
    if let Some(id) = syscall_nr(ctx.arg(0))
        && let Some(counts) = counts()
        && let Some(errors) = usize::try_from(id).ok().and_then(|id| counts.errors.get_mut(id))
    {
        *errors += 1;
    }
    0
}
