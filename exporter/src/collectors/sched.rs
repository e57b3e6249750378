//! `sched`: scheduler events and runqueue latency, counted by the kernel
//! programs in `exporter-ebpf/src/sched.rs` and summed over CPUs here, and
//! per-CPU idle time from the kernel's own accounting in `/proc/stat`.

use std::sync::{Mutex, PoisonError};

use aya::{Ebpf, maps::MapError};
use exporter_common::{
    cgroup::SCHED_ON_GLOBAL,
    histogram::Log2Histogram,
    sched::{RUNQUEUE_LATENCY_MAP, SCHED_COUNTERS_MAP, SchedCounters, offsets},
};

use super::{
    Collector, CollectorError, CollectorOptions, CollectorSpec, KernelOffset, PerCpuRead, Tracepoint,
    procfs::{self, ProcFile},
};
use crate::{
    exposition::encode::{Encoder, Family, Series},
    exposition::histogram::HistogramSeries,
    kernel::btf::Btf,
};

const CONTEXT_SWITCHES: Family = Family::counter(
    "kernel_sched_context_switches_total",
    "Context switches on all CPUs (sched:sched_switch), as ctxt in /proc/stat.",
);
const FORKS: Family = Family::counter(
    "kernel_sched_forks_total",
    "Tasks created, threads included (sched:sched_process_fork), as processes in /proc/stat.",
);
const EXECS: Family = Family::counter("kernel_sched_execs_total", "Successful execs (sched:sched_process_exec).");
const EXITS: Family = Family::counter(
    "kernel_sched_process_exits_total",
    "Tasks that exited, threads included (sched:sched_process_exit).",
);
const MIGRATIONS: Family =
    Family::counter("kernel_sched_migrations_total", "Tasks moved from one CPU to another (sched:sched_migrate_task).");
const RUNQUEUE_LATENCY: Family = Family::histogram(
    "kernel_sched_runqueue_latency_seconds",
    "Time tasks waited on a runqueue (woken, new or preempted) before they got a CPU, as schedstat run_delay counts it.",
);
const CPU_IDLE: Family = Family::counter(
    "kernel_cpu_idle_seconds_total",
    "Time each CPU spent idle, waiting for I/O included (idle + iowait in /proc/stat).",
);

const fn tracepoint(name: &'static str) -> Tracepoint {
    // Programs are named after the tracepoint they attach to.
    Tracepoint::raw(name, "sched", name)
}

/// The context-switch program, shared with the `cgroup` collector: with
/// both on it is loaded once and does both jobs in one run.
pub(super) const SWITCH: Tracepoint =
    // The hot one: a BTF tracepoint reads task and runqueue fields with
    // plain loads instead of probe-read calls.
    Tracepoint::btf("sched_switch", "sched", "sched_switch");

/// The members [`SWITCH`] reads, for every collector that enables it.
pub(super) const LAST_QUEUED: KernelOffset = KernelOffset {
    global: offsets::TASK_LAST_QUEUED,
    type_name: "task_struct",
    member: "sched_info.last_queued",
    size: 8,
};
pub(super) const CFS_RQ: KernelOffset =
    KernelOffset { global: offsets::TASK_CFS_RQ, type_name: "task_struct", member: "se.cfs_rq", size: 8 };
pub(super) const CFS_RQ_RQ: KernelOffset =
    KernelOffset { global: offsets::CFS_RQ_RQ, type_name: "cfs_rq", member: "rq", size: 8 };
pub(super) const RQ_CLOCK: KernelOffset =
    KernelOffset { global: offsets::RQ_CLOCK, type_name: "rq", member: "clock", size: 8 };

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "sched",
    help: "scheduler events, runqueue latency and CPU idle time (from /proc/stat); fires on every context switch, \
           about 30 ns above the kernel's floor for any program on sched_switch, and on forks, execs, exits and \
           migrations",
    default_enabled: true,
    tracepoints: &[
        SWITCH,
        tracepoint("sched_process_fork"),
        tracepoint("sched_process_exec"),
        tracepoint("sched_process_exit"),
        tracepoint("sched_migrate_task"),
    ],
    offsets: &[LAST_QUEUED, CFS_RQ, CFS_RQ_RQ, RQ_CLOCK],
    kernel_values: Some(kernel_values),
    options: &[],
    #[cfg(test)]
    families: &[CONTEXT_SWITCHES, FORKS, EXECS, EXITS, MIGRATIONS, RUNQUEUE_LATENCY, CPU_IDLE],
    open,
};

/// Turns this collector's counting on in the `sched_switch` program, which
/// also runs for the `cgroup` collector alone.
fn kernel_values(_: &Btf) -> Result<Vec<(&'static str, u32)>, CollectorError> {
    Ok(vec![(SCHED_ON_GLOBAL, 1)])
}

fn open(ebpf: &mut Ebpf, _options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    let counters = super::take_per_cpu_array::<SchedCounters>(ebpf, SCHED_COUNTERS_MAP)?;
    let runqueue = super::take_per_cpu_array::<Log2Histogram>(ebpf, RUNQUEUE_LATENCY_MAP)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| CollectorError::Io {
        what: "read the possible CPUs (/sys/devices/system/cpu/possible)",
        source,
    })?;
    Ok(Box::new(Sched::new(counters, runqueue, cpus)))
}

struct Sched<C, R> {
    counters: C,
    runqueue: R,
    runqueue_series: HistogramSeries,
    stat: ProcFile,
    ticks_per_second: f64,
    idle_series: Box<[Series]>,
    /// The idle ticks last exposed per CPU: the kernel's `iowait` of a CPU
    /// can step back a little when a task's I/O wait is reassigned, and a
    /// counter must never go backwards.
    idle_exposed_ticks: Mutex<Box<[u64]>>,
}

impl<C, R> Sched<C, R> {
    fn new(counters: C, runqueue: R, cpus: usize) -> Self {
        Self {
            counters,
            runqueue,
            runqueue_series: HistogramSeries::new(&RUNQUEUE_LATENCY, &[]),
            stat: ProcFile::new("/proc/stat"),
            ticks_per_second: procfs::clock_ticks_per_second() as f64,
            idle_series: (0..cpus).map(|cpu| Series::new(&CPU_IDLE, &[("cpu", &cpu.to_string())])).collect(),
            idle_exposed_ticks: Mutex::new(vec![0; cpus].into_boxed_slice()),
        }
    }
}

/// Calls `each` with the CPU number and `idle + iowait` ticks of every
/// `cpuN` line of `/proc/stat` (online CPUs only).
fn idle_ticks_per_cpu(stat: &[u8], mut each: impl FnMut(usize, u64)) {
    for line in procfs::lines(stat) {
        let mut fields = procfs::fields(line);
        let Some(cpu) = fields.next().and_then(|name| name.strip_prefix(b"cpu")) else { continue };
        // The `cpu` line (all CPUs) has no number; nothing after the cpu
        // lines starts with "cpu".
        let Some(cpu) = procfs::parse_u64(cpu).and_then(|n| usize::try_from(n).ok()) else { continue };
        // user nice system idle iowait ...
        let mut times = fields.skip(3).map(procfs::parse_u64);
        if let (Some(Some(idle)), Some(Some(iowait))) = (times.next(), times.next()) {
            each(cpu, idle.saturating_add(iowait));
        }
    }
}

impl<C, R> Collector for Sched<C, R>
where
    C: PerCpuRead<SchedCounters>,
    R: PerCpuRead<Log2Histogram>,
{
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut total = SchedCounters::default();
        self.counters.for_each_cpu(0, &mut |cpu| total = total.merged(*cpu))?;
        out.single(&CONTEXT_SWITCHES, total.context_switches);
        out.single(&FORKS, total.forks);
        out.single(&EXECS, total.execs);
        out.single(&EXITS, total.exits);
        out.single(&MIGRATIONS, total.migrations);

        let mut latency = Log2Histogram::default();
        self.runqueue.for_each_cpu(0, &mut |cpu| latency.merge(cpu))?;
        out.family(&RUNQUEUE_LATENCY);
        out.histogram(&self.runqueue_series, &latency);

        let mut exposed = self.idle_exposed_ticks.lock().unwrap_or_else(PoisonError::into_inner);
        out.family(&CPU_IDLE);
        self.stat
            .read(|stat| {
                idle_ticks_per_cpu(stat, |cpu, ticks| {
                    if let (Some(series), Some(last)) = (self.idle_series.get(cpu), exposed.get_mut(cpu)) {
                        *last = (*last).max(ticks);
                        out.sample_f64(series, *last as f64 / self.ticks_per_second);
                    }
                });
            })
            .map_err(MapError::IoError)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::collectors::testing::{FakePerCpu, scrape};

    fn counters(context_switches: u64, forks: u64) -> SchedCounters {
        SchedCounters { context_switches, forks, execs: 1, exits: 2, migrations: 3 }
    }

    #[test]
    fn sums_every_cpu() {
        let mut slow = Log2Histogram::default();
        slow.record(5_000_000);
        let sched = Sched::new(
            FakePerCpu { cpus: vec![vec![counters(10, 1)], vec![counters(32, 0)], vec![counters(u64::MAX - 41, 2)]] },
            FakePerCpu { cpus: vec![vec![slow], vec![slow], vec![Log2Histogram::default()]] },
            3,
        );
        let text = scrape(&sched);
        // Sums wrap like the kernel's own counters rather than panic.
        assert!(text.contains("\nkernel_sched_context_switches_total 0\n"), "{text}");
        assert!(text.contains("\nkernel_sched_forks_total 3\n"), "{text}");
        assert!(text.contains("\nkernel_sched_execs_total 3\n"), "{text}");
        assert!(text.contains("\nkernel_sched_process_exits_total 6\n"), "{text}");
        assert!(text.contains("\nkernel_sched_migrations_total 9\n"), "{text}");
        assert!(text.contains("\nkernel_sched_runqueue_latency_seconds_count 2\n"), "{text}");
        assert!(text.contains("\nkernel_sched_runqueue_latency_seconds_sum 0.01\n"), "{text}");
        assert!(text.contains("# TYPE kernel_sched_runqueue_latency_seconds histogram\n"), "{text}");
        // This machine's own /proc/stat: CPU 0 is always there.
        assert!(text.contains("\nkernel_cpu_idle_seconds_total{cpu=\"0\"} "), "{text}");
    }

    #[test]
    fn idle_is_idle_plus_iowait_of_each_numbered_cpu() {
        let stat = b"cpu  10 0 20 3000 40 0 0 0 0 0\ncpu0 5 0 10 1000 15 0 0 0 0 0\n\
                     cpu2 5 0 10 2000 25 0 0 0 0 0\nintr 12 0 0\nctxt 99\n";
        let mut seen = Vec::new();
        idle_ticks_per_cpu(stat, |cpu, ticks| seen.push((cpu, ticks)));
        assert_eq!(seen, [(0, 1015), (2, 2025)]);
    }

    #[test]
    fn idle_time_never_goes_back() {
        let sched = Sched::new(
            FakePerCpu { cpus: vec![vec![counters(0, 0)]] },
            FakePerCpu { cpus: vec![vec![Log2Histogram::default()]] },
            1,
        );
        // As if an earlier scrape had seen more idle time than there is now.
        *sched.idle_exposed_ticks.lock().unwrap() = vec![u64::MAX / 2].into_boxed_slice();
        let text = scrape(&sched);
        let expected = format!("\nkernel_cpu_idle_seconds_total{{cpu=\"0\"}} {:?}\n", (u64::MAX / 2) as f64 / 100.0);
        assert!(text.contains(&expected), "{text}");
    }

    #[test]
    fn map_errors_are_reported() {
        let sched = Sched::new(
            FakePerCpu::<SchedCounters> { cpus: vec![vec![]] },
            FakePerCpu::<Log2Histogram> { cpus: vec![] },
            1,
        );
        let mut buf = BytesMut::new();
        assert!(sched.collect(&mut Encoder::new(&mut buf)).is_err());
    }
}
