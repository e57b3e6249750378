//! `mm`: page faults from the kernel's own counters (`/proc/vmstat`), and
//! OOM kills and direct-reclaim latency, counted by the kernel programs in
//! `exporter-ebpf/src/mm.rs` and summed over CPUs here.

use aya::{Ebpf, maps::MapError};
use exporter_common::{
    histogram::Log2Histogram,
    mm::{DIRECT_RECLAIM_LATENCY_MAP, MM_COUNTERS_MAP, MmCounters},
};

use super::{
    Collector, CollectorError, CollectorOptions, CollectorSpec, PerCpuRead, Tracepoint,
    procfs::{self, ProcFile},
};
use crate::{
    exposition::encode::{Encoder, Family},
    exposition::histogram::HistogramSeries,
};

const PAGE_FAULTS: Family = Family::counter(
    "kernel_mm_page_faults_total",
    "Page faults the memory manager handled, major ones included (pgfault in /proc/vmstat).",
);
const MAJOR_PAGE_FAULTS: Family = Family::counter(
    "kernel_mm_major_page_faults_total",
    "Page faults that had to wait for I/O to bring the page in (pgmajfault in /proc/vmstat).",
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
    Tracepoint::raw(name, category, name)
}

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "mm",
    help: "page faults (from /proc/vmstat), OOM kills and direct-reclaim latency; its programs fire only under \
           memory pressure",
    default_enabled: true,
    tracepoints: &[
        tracepoint("oom", "mark_victim"),
        tracepoint("vmscan", "mm_vmscan_direct_reclaim_begin"),
        tracepoint("vmscan", "mm_vmscan_direct_reclaim_end"),
    ],
    offsets: &[],
    kernel_values: None,
    options: &[],
    #[cfg(test)]
    families: &[PAGE_FAULTS, MAJOR_PAGE_FAULTS, OOM_KILLS, DIRECT_RECLAIM_LATENCY],
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
    vmstat: ProcFile,
    reclaim_series: HistogramSeries,
}

impl<C, R> Mm<C, R> {
    fn new(counters: C, reclaim: R) -> Self {
        Self {
            counters,
            reclaim,
            vmstat: ProcFile::new("/proc/vmstat"),
            reclaim_series: HistogramSeries::new(&DIRECT_RECLAIM_LATENCY, &[]),
        }
    }
}

/// `pgfault` and `pgmajfault` of `/proc/vmstat`. Two counters rather than
/// a minor/major split: the kernel bumps `pgfault` when a fault starts and
/// `pgmajfault` later, so a difference of the two could step back.
fn page_faults(vmstat: &[u8]) -> Result<(u64, u64), MapError> {
    let value = |key: &str| {
        procfs::keyed_value(vmstat, key.as_bytes()).ok_or_else(|| {
            MapError::IoError(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("/proc/vmstat has no {key} line"),
            ))
        })
    };
    Ok((value("pgfault")?, value("pgmajfault")?))
}

impl<C, R> Collector for Mm<C, R>
where
    C: PerCpuRead<MmCounters>,
    R: PerCpuRead<Log2Histogram>,
{
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut total = MmCounters::default();
        self.counters.for_each_cpu(0, &mut |cpu| total = total.merged(*cpu))?;
        let (faults, major) = self.vmstat.read(page_faults).map_err(MapError::IoError)??;
        out.single(&PAGE_FAULTS, faults);
        out.single(&MAJOR_PAGE_FAULTS, major);
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

    fn counters(oom: u64) -> MmCounters {
        MmCounters { oom_kills: oom }
    }

    #[test]
    fn sums_every_cpu() {
        let mut slow = Log2Histogram::default();
        slow.record(2_000_000);
        let mm = Mm::new(
            FakePerCpu { cpus: vec![vec![counters(0)], vec![counters(1)], vec![counters(2)]] },
            FakePerCpu { cpus: vec![vec![slow], vec![Log2Histogram::default()], vec![slow]] },
        );
        let text = scrape(&mm);
        assert!(text.contains("\nkernel_mm_oom_kills_total 3\n"), "{text}");
        assert!(text.contains("# TYPE kernel_mm_direct_reclaim_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("\nkernel_mm_direct_reclaim_latency_seconds_count 2\n"), "{text}");
        assert!(text.contains("\nkernel_mm_direct_reclaim_latency_seconds_sum 0.004\n"), "{text}");
        // This machine's own /proc/vmstat.
        assert!(text.contains("\nkernel_mm_page_faults_total "), "{text}");
        assert!(text.contains("\nkernel_mm_major_page_faults_total "), "{text}");
    }

    #[test]
    fn page_faults_are_the_kernels_two_counters() {
        let vmstat = b"nr_free_pages 100\npgfault 123456\npgmajfault 78\noom_kill 0\n";
        assert_eq!(page_faults(vmstat).expect("both"), (123_456, 78));
        let error = page_faults(b"pgfault 1\n").expect_err("no pgmajfault");
        assert!(error.to_string().contains("pgmajfault") || format!("{error:?}").contains("pgmajfault"), "{error:?}");
    }

    #[test]
    fn map_errors_are_reported() {
        let mm = Mm::new(FakePerCpu::<MmCounters> { cpus: vec![vec![]] }, FakePerCpu::<Log2Histogram> { cpus: vec![] });
        let mut buf = BytesMut::new();
        assert!(mm.collect(&mut Encoder::new(&mut buf)).is_err());
    }
}
