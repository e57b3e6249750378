//! `sched`: context switches and forks, counted by the kernel programs in
//! `exporter-ebpf/src/sched.rs` and summed over CPUs here.

use aya::{Ebpf, maps::MapError};
use exporter_common::sched::{SCHED_COUNTERS_MAP, SchedCounters};

use super::{Collector, CollectorError, CollectorSpec, PerCpuRead, Tracepoint};
use crate::encode::{Encoder, Family};

const CONTEXT_SWITCHES: Family = Family::counter(
    "kernel_sched_context_switches_total",
    "Context switches on all CPUs (sched:sched_switch), as ctxt in /proc/stat.",
);
const FORKS: Family = Family::counter(
    "kernel_sched_forks_total",
    "Tasks created, threads included (sched:sched_process_fork), as processes in /proc/stat.",
);

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "sched",
    help: "context switches and forks from scheduler tracepoints",
    default_enabled: true,
    tracepoints: &[
        Tracepoint {
            program: "sched_switch",
            category: "sched",
            name: "sched_switch",
        },
        Tracepoint {
            program: "sched_process_fork",
            category: "sched",
            name: "sched_process_fork",
        },
    ],
    #[cfg(test)]
    families: &[CONTEXT_SWITCHES, FORKS],
    open,
};

fn open(ebpf: &mut Ebpf) -> Result<Box<dyn Collector>, CollectorError> {
    let counters = super::take_per_cpu_array::<SchedCounters>(ebpf, SCHED_COUNTERS_MAP)?;
    Ok(Box::new(Sched { counters }))
}

struct Sched<M> {
    counters: M,
}

impl<M: PerCpuRead<SchedCounters>> Collector for Sched<M> {
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut total = SchedCounters::default();
        self.counters
            .for_each_cpu(0, &mut |cpu| total = total.merged(*cpu))?;
        out.single(&CONTEXT_SWITCHES, total.context_switches);
        out.single(&FORKS, total.forks);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::collectors::testing::FakePerCpu;

    #[test]
    fn sums_every_cpu() {
        let sched = Sched {
            counters: FakePerCpu {
                cpus: vec![
                    vec![SchedCounters {
                        context_switches: 10,
                        forks: 1,
                    }],
                    vec![SchedCounters {
                        context_switches: 32,
                        forks: 0,
                    }],
                    vec![SchedCounters {
                        context_switches: u64::MAX - 41,
                        forks: 2,
                    }],
                ],
            },
        };
        let mut buf = BytesMut::new();
        sched.collect(&mut Encoder::new(&mut buf)).unwrap();
        let text = std::str::from_utf8(&buf).unwrap();
        // Sums wrap like the kernel's own counters rather than panic.
        assert!(
            text.contains("\nkernel_sched_context_switches_total 0\n"),
            "{text}"
        );
        assert!(text.contains("\nkernel_sched_forks_total 3\n"), "{text}");
    }

    #[test]
    fn map_errors_are_reported() {
        let sched = Sched {
            counters: FakePerCpu::<SchedCounters> { cpus: vec![vec![]] },
        };
        let mut buf = BytesMut::new();
        assert!(sched.collect(&mut Encoder::new(&mut buf)).is_err());
    }
}
