//! `irq`: device interrupt handlers run, and softirqs run and timed per
//! vector, counted by the kernel programs in `exporter-ebpf/src/irq.rs` and
//! summed over CPUs here.

use aya::{Ebpf, maps::MapError};
use exporter_common::irq::{IRQ_COUNTERS_MAP, IrqCounters, NR_SOFTIRQS};

use super::{Collector, CollectorError, CollectorOptions, CollectorSpec, PerCpuRead, Tracepoint};
use crate::exposition::encode::{Encoder, Family, Series};

const HARDIRQS: Family = Family::counter(
    "kernel_hardirqs_total",
    "Device interrupt handlers run, once per handler of a shared line (irq:irq_handler_entry); \
     unlike intr in /proc/stat, without the CPU's own interrupts (local timer, IPIs, NMIs).",
);
const SOFTIRQS: Family = Family::counter(
    "kernel_softirqs_total",
    "Softirqs run, by vector (irq:softirq_entry), as the rows of /proc/softirqs summed over CPUs.",
);
const SOFTIRQ_SECONDS: Family = Family::counter(
    "kernel_softirq_seconds_total",
    "Time spent running softirqs, by vector, from irq:softirq_entry to irq:softirq_exit.",
);

/// The `vector` label's values, indexed by vector number: the kernel's
/// `softirq_to_name` in lower case, as `/proc/softirqs` names its rows.
const VECTORS: [&str; NR_SOFTIRQS] =
    ["hi", "timer", "net_tx", "net_rx", "block", "irq_poll", "tasklet", "sched", "hrtimer", "rcu"];

const fn tracepoint(name: &'static str) -> Tracepoint {
    // Programs are named after the tracepoint they attach to.
    Tracepoint::raw(name, "irq", name)
}

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "irq",
    help: "hard interrupts, and softirqs and their time per vector, from irq tracepoints. Off by default: it \
           times every softirq (two programs and two clock reads, about 250 ns on a virtual machine, several \
           percent of a small-packet workload)",
    default_enabled: false,
    tracepoints: &[tracepoint("irq_handler_entry"), tracepoint("softirq_entry"), tracepoint("softirq_exit")],
    offsets: &[],
    kernel_values: None,
    options: &[],
    #[cfg(test)]
    families: &[HARDIRQS, SOFTIRQS, SOFTIRQ_SECONDS],
    open,
};

fn open(ebpf: &mut Ebpf, _options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    let counters = super::take_per_cpu_array::<IrqCounters>(ebpf, IRQ_COUNTERS_MAP)?;
    Ok(Box::new(Irq::new(counters)))
}

struct Irq<C> {
    counters: C,
    softirq_series: [Series; NR_SOFTIRQS],
    seconds_series: [Series; NR_SOFTIRQS],
}

impl<C> Irq<C> {
    fn new(counters: C) -> Self {
        Self {
            counters,
            softirq_series: VECTORS.map(|vector| Series::new(&SOFTIRQS, &[("vector", vector)])),
            seconds_series: VECTORS.map(|vector| Series::new(&SOFTIRQ_SECONDS, &[("vector", vector)])),
        }
    }
}

impl<C: PerCpuRead<IrqCounters>> Collector for Irq<C> {
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut total = IrqCounters::default();
        self.counters.for_each_cpu(0, &mut |cpu| total.merge(cpu))?;
        out.single(&HARDIRQS, total.hardirqs);
        out.family(&SOFTIRQS);
        for (series, count) in self.softirq_series.iter().zip(total.softirqs) {
            out.sample(series, count);
        }
        out.family(&SOFTIRQ_SECONDS);
        for (series, ns) in self.seconds_series.iter().zip(total.softirq_ns) {
            out.sample_f64(series, ns as f64 / 1e9);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::collectors::testing::{FakePerCpu, scrape};

    fn cpu(hardirqs: u64, net_rx: u64, net_rx_ns: u64) -> IrqCounters {
        let mut counters = IrqCounters { hardirqs, ..IrqCounters::default() };
        counters.softirqs[1] = 1;
        counters.softirqs[3] = net_rx;
        counters.softirq_ns[3] = net_rx_ns;
        counters
    }

    #[test]
    fn sums_every_cpu() {
        let irq = Irq::new(FakePerCpu {
            cpus: vec![vec![cpu(5, 10, 1_500_000_000)], vec![cpu(u64::MAX, 32, 500_000_000)], vec![cpu(1, 0, 0)]],
        });
        let text = scrape(&irq);
        // Sums wrap like the kernel's own counters rather than panic.
        assert!(text.contains("\nkernel_hardirqs_total 5\n"), "{text}");
        assert!(text.contains("\nkernel_softirqs_total{vector=\"timer\"} 3\n"), "{text}");
        assert!(text.contains("\nkernel_softirqs_total{vector=\"net_rx\"} 42\n"), "{text}");
        assert!(text.contains("\nkernel_softirq_seconds_total{vector=\"net_rx\"} 2.0\n"), "{text}");
        assert!(text.contains("\nkernel_softirq_seconds_total{vector=\"hi\"} 0.0\n"), "{text}");
    }

    #[test]
    fn vector_label_is_bounded_and_named_as_in_proc_softirqs() {
        let text = scrape(&Irq::new(FakePerCpu { cpus: vec![vec![IrqCounters::default()]] }));
        for family in ["kernel_softirqs_total", "kernel_softirq_seconds_total"] {
            let vectors: Vec<&str> = text
                .lines()
                .filter_map(|line| line.strip_prefix(family)?.strip_prefix("{vector=\"")?.split('"').next())
                .collect();
            assert_eq!(vectors, VECTORS, "{text}");
        }
        assert_eq!(VECTORS.len(), NR_SOFTIRQS);
        assert!(VECTORS.iter().all(|v| v.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }

    #[test]
    fn map_errors_are_reported() {
        let irq = Irq::new(FakePerCpu::<IrqCounters> { cpus: vec![vec![]] });
        let mut buf = BytesMut::new();
        assert!(irq.collect(&mut Encoder::new(&mut buf)).is_err());
    }
}
