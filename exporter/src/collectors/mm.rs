//! `mm`: page-fault exceptions, OOM kills and direct-reclaim latency,
//! counted by the kernel programs in `exporter-ebpf/src/mm.rs` and summed
//! over CPUs here.

use aya::{Ebpf, maps::MapError};
use exporter_common::{
    histogram::Log2Histogram,
    mm::{DIRECT_RECLAIM_LATENCY_MAP, MM_COUNTERS_MAP, MmCounters},
};

use super::{Collector, CollectorError, CollectorOptions, CollectorSpec, PerCpuRead, Tracepoint};
use crate::{
    encode::{Encoder, Family, Series},
    histogram::HistogramSeries,
};

const PAGE_FAULTS: Family = Family::counter(
    "kernel_mm_page_faults_total",
    "Page-fault exceptions by the CPU mode they interrupted (x86 exceptions:page_fault_user and \
     exceptions:page_fault_kernel); pgfault in /proc/vmstat counts faults handled by the memory manager instead.",
);
const OOM_KILLS: Family = Family::counter(
    "kernel_mm_oom_kills_total",
    "Tasks the OOM killer marked as victims, system-wide and cgroup OOMs alike (oom:mark_victim): those it \
     killed, as oom_kill in /proc/vmstat, and the rare task already exiting that it lets use reserves instead.",
);
const DIRECT_RECLAIM_LATENCY: Family = Family::histogram(
    "kernel_mm_direct_reclaim_latency_seconds",
    "Time an allocating task spent reclaiming memory itself under host-wide memory pressure \
     (vmscan:mm_vmscan_direct_reclaim_begin to _end); reclaim to stay within a cgroup's limit is not included.",
);

const fn tracepoint(category: &'static str, name: &'static str) -> Tracepoint {
    // Programs are named after the tracepoint they attach to.
    Tracepoint { program: name, category, name }
}

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "mm",
    help: "page faults, OOM kills and direct-reclaim latency from exception, oom and vmscan tracepoints",
    default_enabled: true,
    tracepoints: &[
        // x86 only: other architectures report this collector down.
        tracepoint("exceptions", "page_fault_user"),
        tracepoint("exceptions", "page_fault_kernel"),
        tracepoint("oom", "mark_victim"),
        tracepoint("vmscan", "mm_vmscan_direct_reclaim_begin"),
        tracepoint("vmscan", "mm_vmscan_direct_reclaim_end"),
    ],
    offsets: &[],
    #[cfg(test)]
    families: &[PAGE_FAULTS, OOM_KILLS, DIRECT_RECLAIM_LATENCY],
    open,
};

fn open(ebpf: &mut Ebpf, _options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    let counters = super::take_per_cpu_array::<MmCounters>(ebpf, MM_COUNTERS_MAP)?;
    let reclaim = super::take_per_cpu_array::<Log2Histogram>(ebpf, DIRECT_RECLAIM_LATENCY_MAP)?;
    Ok(Box::new(Mm::new(counters, reclaim)))
}

struct Mm<C, R> {
    counters: C,
    reclaim: R,
    /// `mode="user"` and `mode="kernel"`: the label's only two values.
    user_faults: Series,
    kernel_faults: Series,
    reclaim_series: HistogramSeries,
}

impl<C, R> Mm<C, R> {
    fn new(counters: C, reclaim: R) -> Self {
        Self {
            counters,
            reclaim,
            user_faults: Series::new(&PAGE_FAULTS, &[("mode", "user")]),
            kernel_faults: Series::new(&PAGE_FAULTS, &[("mode", "kernel")]),
            reclaim_series: HistogramSeries::new(&DIRECT_RECLAIM_LATENCY, &[]),
        }
    }
}

impl<C, R> Collector for Mm<C, R>
where
    C: PerCpuRead<MmCounters>,
    R: PerCpuRead<Log2Histogram>,
{
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut total = MmCounters::default();
        self.counters.for_each_cpu(0, &mut |cpu| total = total.merged(*cpu))?;
        out.family(&PAGE_FAULTS);
        out.sample(&self.user_faults, total.page_faults_user);
        out.sample(&self.kernel_faults, total.page_faults_kernel);
        out.single(&OOM_KILLS, total.oom_kills);

        let mut latency = Log2Histogram::default();
        self.reclaim.for_each_cpu(0, &mut |cpu| latency.merge(cpu))?;
        out.family(&DIRECT_RECLAIM_LATENCY);
        out.histogram(&self.reclaim_series, &latency);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::collectors::testing::{FakePerCpu, scrape};

    fn counters(user: u64, kernel: u64, oom: u64) -> MmCounters {
        MmCounters { page_faults_user: user, page_faults_kernel: kernel, oom_kills: oom }
    }

    #[test]
    fn sums_every_cpu() {
        let mut slow = Log2Histogram::default();
        slow.record(2_000_000);
        let mm = Mm::new(
            FakePerCpu { cpus: vec![vec![counters(100, 7, 0)], vec![counters(23, 0, 1)], vec![counters(0, 5, 2)]] },
            FakePerCpu { cpus: vec![vec![slow], vec![Log2Histogram::default()], vec![slow]] },
        );
        let text = scrape(&mm);
        assert!(text.contains("\nkernel_mm_page_faults_total{mode=\"user\"} 123\n"), "{text}");
        assert!(text.contains("\nkernel_mm_page_faults_total{mode=\"kernel\"} 12\n"), "{text}");
        assert!(text.contains("\nkernel_mm_oom_kills_total 3\n"), "{text}");
        assert!(text.contains("# TYPE kernel_mm_direct_reclaim_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("\nkernel_mm_direct_reclaim_latency_seconds_count 2\n"), "{text}");
        assert!(text.contains("\nkernel_mm_direct_reclaim_latency_seconds_sum 0.004\n"), "{text}");
    }

    #[test]
    fn mode_has_two_values_and_sums_wrap() {
        let mm = Mm::new(
            FakePerCpu { cpus: vec![vec![counters(u64::MAX, 1, 0)], vec![counters(2, 0, 0)]] },
            FakePerCpu { cpus: vec![vec![Log2Histogram::default()]; 2] },
        );
        let text = scrape(&mm);
        // Sums wrap like the kernel's own counters rather than panic.
        assert!(text.contains("\nkernel_mm_page_faults_total{mode=\"user\"} 1\n"), "{text}");
        assert_eq!(text.matches("kernel_mm_page_faults_total{").count(), 2, "{text}");
    }

    #[test]
    fn map_errors_are_reported() {
        let mm = Mm::new(FakePerCpu::<MmCounters> { cpus: vec![vec![]] }, FakePerCpu::<Log2Histogram> { cpus: vec![] });
        let mut buf = BytesMut::new();
        assert!(mm.collect(&mut Encoder::new(&mut buf)).is_err());
    }
}
