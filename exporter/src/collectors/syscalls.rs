//! `syscalls`: calls and errors per syscall, labelled with the syscall's
//! name on x86_64 and aarch64 ([`super::syscall_names`]).
//!
//! Only syscalls that ever counted are exposed, so a host shows the few
//! dozen it uses rather than hundreds of zeros. The label is bounded by the
//! table size, `MAX_SYSCALLS`.
//!
//! A 32-bit (compat) task's syscall reaches the tracepoint with its compat
//! number and is counted under the native syscall of that number; such
//! tasks are rare on 64-bit hosts.
//!
//! Cost: the two programs run on every syscall of every task, one per-CPU
//! array increment each (tens of nanoseconds); `--no-collector.syscalls`
//! removes them.

use aya::{Ebpf, maps::MapError};
use exporter_common::syscalls::{MAX_SYSCALLS, SYSCALL_COUNTS_MAP, SyscallCounts, offsets};

use super::{
    Collector, CollectorError, CollectorOptions, CollectorSpec, KernelOffset, PerCpuRead, Tracepoint,
    syscall_names::syscall_name,
};
use crate::exposition::encode::{Encoder, Family, Series};

const CALLS: Family =
    Family::counter("kernel_syscalls_total", "Syscalls entered, by syscall (raw_syscalls:sys_enter).");
const ERRORS: Family = Family::counter(
    "kernel_syscall_errors_total",
    "Syscalls that returned an error (-4095..-1), by syscall (raw_syscalls:sys_exit).",
);

/// Where `pt_regs` keeps the number of the syscall in progress.
#[cfg(target_arch = "aarch64")]
const SYSCALL_NR: KernelOffset =
    KernelOffset { global: offsets::PT_REGS_SYSCALL_NR, type_name: "pt_regs", member: "syscallno", size: 4 };
#[cfg(not(target_arch = "aarch64"))]
const SYSCALL_NR: KernelOffset =
    KernelOffset { global: offsets::PT_REGS_SYSCALL_NR, type_name: "pt_regs", member: "orig_ax", size: 8 };

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "syscalls",
    help: "calls and errors per syscall from the raw_syscalls tracepoints. Off by default: any program there \
           moves every syscall of every task to the kernel's traced slow path, about 120 ns per syscall on a \
           virtual machine (a syscall-bound workload ran 82% slower)",
    default_enabled: false,
    tracepoints: &[
        Tracepoint::raw("sys_enter", "raw_syscalls", "sys_enter"),
        Tracepoint::raw("sys_exit", "raw_syscalls", "sys_exit"),
    ],
    offsets: &[SYSCALL_NR],
    kernel_values: None,
    options: &[],
    #[cfg(test)]
    families: &[CALLS, ERRORS],
    open,
};

fn open(ebpf: &mut Ebpf, _options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    let counts = super::take_per_cpu_array::<SyscallCounts>(ebpf, SYSCALL_COUNTS_MAP)?;
    Ok(Box::new(Syscalls::new(counts)))
}

#[cfg(test)]
pub(super) fn for_test(counts: impl PerCpuRead<SyscallCounts> + 'static) -> Box<dyn Collector> {
    Box::new(Syscalls::new(counts))
}

/// The label value of syscall `nr`: its name, or `unknown_NR` for a number
/// this build's table does not name (a syscall newer than the table).
fn label(nr: usize) -> String {
    u32::try_from(nr).ok().and_then(syscall_name).map_or_else(|| format!("unknown_{nr}"), str::to_owned)
}

struct Syscalls<M> {
    counts: M,
    calls: Box<[Series]>,
    errors: Box<[Series]>,
}

impl<M> Syscalls<M> {
    fn new(counts: M) -> Self {
        let series = |family: &Family| -> Box<[Series]> {
            (0..MAX_SYSCALLS).map(|nr| Series::new(family, &[("syscall", &label(nr))])).collect()
        };
        Self { counts, calls: series(&CALLS), errors: series(&ERRORS) }
    }
}

impl<M: PerCpuRead<SyscallCounts>> Collector for Syscalls<M> {
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        // 8 KiB on the stack, well within a worker thread's 2 MiB.
        let mut total = SyscallCounts::default();
        self.counts.for_each_cpu(0, &mut |cpu| total.merge(cpu))?;
        for (family, series, counts) in [(&CALLS, &self.calls, &total.calls), (&ERRORS, &self.errors, &total.errors)] {
            out.family(family);
            for (series, &count) in series.iter().zip(counts.iter()) {
                if count != 0 {
                    out.sample(series, count);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::collectors::testing::FakePerCpu;

    #[test]
    fn only_counted_syscalls_appear_and_cpus_are_summed() {
        let mut cpu0 = SyscallCounts::default();
        cpu0.calls[3] = 5;
        cpu0.errors[3] = 2;
        cpu0.calls[MAX_SYSCALLS - 1] = 1;
        let mut cpu1 = SyscallCounts::default();
        cpu1.calls[3] = 10;
        cpu1.calls[0] = 7;
        let syscalls = Syscalls::new(FakePerCpu { cpus: vec![vec![cpu0], vec![cpu1]] });
        let mut buf = BytesMut::new();
        syscalls.collect(&mut Encoder::new(&mut buf)).unwrap();
        let text = std::str::from_utf8(&buf).unwrap();
        let samples: Vec<&str> = text.lines().filter(|line| !line.starts_with('#')).collect();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            samples,
            [
                "kernel_syscalls_total{syscall=\"read\"} 7",
                "kernel_syscalls_total{syscall=\"close\"} 15",
                "kernel_syscalls_total{syscall=\"unknown_511\"} 1",
                "kernel_syscall_errors_total{syscall=\"close\"} 2",
            ]
        );
        assert_eq!(samples.len(), 4, "{text}");
        assert!(text.contains("# TYPE kernel_syscall_errors_total counter\n"), "{text}");
    }

    #[test]
    fn labels_are_bounded_and_unique() {
        let labels: std::collections::HashSet<String> = (0..MAX_SYSCALLS).map(label).collect();
        assert_eq!(labels.len(), MAX_SYSCALLS);
    }
}
