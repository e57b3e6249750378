//! `sched`: scheduler events, runqueue latency and per-CPU idle time,
//! counted by the kernel programs in `exporter-ebpf/src/sched.rs` and summed
//! over CPUs here.

use std::sync::{Mutex, PoisonError};

use aya::{Ebpf, maps::MapError};
use exporter_common::{
    histogram::Log2Histogram,
    sched::{CPU_IDLE_MAP, CpuIdle, RUNQUEUE_LATENCY_MAP, SCHED_COUNTERS_MAP, SchedCounters, offsets},
};

use super::{Collector, CollectorError, CollectorOptions, CollectorSpec, KernelOffset, PerCpuRead, Tracepoint};
use crate::{
    encode::{Encoder, Family, Series},
    histogram::HistogramSeries,
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
    "Time each CPU spent running its idle task, from sched_switch timestamps.",
);

const fn tracepoint(name: &'static str) -> Tracepoint {
    // Programs are named after the tracepoint they attach to.
    Tracepoint { program: name, category: "sched", name }
}

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "sched",
    help: "scheduler events, runqueue latency and CPU idle time from scheduler tracepoints",
    default_enabled: true,
    tracepoints: &[
        tracepoint("sched_switch"),
        tracepoint("sched_process_fork"),
        tracepoint("sched_process_exec"),
        tracepoint("sched_process_exit"),
        tracepoint("sched_migrate_task"),
    ],
    offsets: &[
        KernelOffset {
            global: offsets::TASK_LAST_QUEUED,
            type_name: "task_struct",
            member: "sched_info.last_queued",
            size: 8,
        },
        KernelOffset { global: offsets::TASK_CFS_RQ, type_name: "task_struct", member: "se.cfs_rq", size: 8 },
        KernelOffset { global: offsets::CFS_RQ_RQ, type_name: "cfs_rq", member: "rq", size: 8 },
        KernelOffset { global: offsets::RQ_CLOCK, type_name: "rq", member: "clock", size: 8 },
    ],
    #[cfg(test)]
    families: &[CONTEXT_SWITCHES, FORKS, EXECS, EXITS, MIGRATIONS, RUNQUEUE_LATENCY, CPU_IDLE],
    open,
};

fn open(ebpf: &mut Ebpf, _options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    let counters = super::take_per_cpu_array::<SchedCounters>(ebpf, SCHED_COUNTERS_MAP)?;
    let runqueue = super::take_per_cpu_array::<Log2Histogram>(ebpf, RUNQUEUE_LATENCY_MAP)?;
    let idle = super::take_per_cpu_array::<CpuIdle>(ebpf, CPU_IDLE_MAP)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| CollectorError::Map {
        map: CPU_IDLE_MAP,
        source: Box::new(MapError::IoError(source)),
    })?;
    prime_every_cpu(cpus);
    Ok(Box::new(Sched::new(counters, runqueue, idle, cpus, crate::clock::monotonic_ns)))
}

/// Makes every online CPU switch tasks once, now that the programs are
/// attached. Until a CPU's first switch the daemon cannot tell whether it
/// is idle (a tickless idle CPU may not switch for seconds), so its idle
/// time would only appear, in one jump, at that first switch; a short-lived
/// thread pinned to each CPU forces the switch in and out.
fn prime_every_cpu(cpus: usize) {
    let threads: Vec<_> = (0..cpus)
        .map(|cpu| {
            std::thread::spawn(move || {
                // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET
                // writes within it; sched_setaffinity(0, ...) pins the
                // calling thread only.
                let pinned = unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) == 0
                };
                // Offline CPUs refuse the affinity: nothing to prime there.
                if pinned {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

struct Sched<C, R, I> {
    counters: C,
    runqueue: R,
    idle: I,
    runqueue_series: HistogramSeries,
    idle_series: Box<[Series]>,
    /// The idle seconds last exposed per CPU: the kernel's two idle fields
    /// are read without a lock, and a counter must never go backwards.
    idle_exposed_ns: Mutex<Box<[u64]>>,
    now_ns: fn() -> u64,
}

impl<C, R, I> Sched<C, R, I> {
    fn new(counters: C, runqueue: R, idle: I, cpus: usize, now_ns: fn() -> u64) -> Self {
        Self {
            counters,
            runqueue,
            idle,
            runqueue_series: HistogramSeries::new(&RUNQUEUE_LATENCY, &[]),
            idle_series: (0..cpus).map(|cpu| Series::new(&CPU_IDLE, &[("cpu", &cpu.to_string())])).collect(),
            idle_exposed_ns: Mutex::new(vec![0; cpus].into_boxed_slice()),
            now_ns,
        }
    }
}

impl<C, R, I> Collector for Sched<C, R, I>
where
    C: PerCpuRead<SchedCounters>,
    R: PerCpuRead<Log2Histogram>,
    I: PerCpuRead<CpuIdle>,
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

        let now = (self.now_ns)();
        let mut exposed = self.idle_exposed_ns.lock().unwrap_or_else(PoisonError::into_inner);
        let mut cpu = 0;
        out.family(&CPU_IDLE);
        self.idle.for_each_cpu(0, &mut |idle| {
            // A CPU idle right now has an open period to add.
            let open = if idle.running_idle != 0 && idle.idle_since_ns != 0 {
                now.saturating_sub(idle.idle_since_ns)
            } else {
                0
            };
            if let (Some(series), Some(last)) = (self.idle_series.get(cpu), exposed.get_mut(cpu)) {
                *last = (*last).max(idle.idle_ns.saturating_add(open));
                out.sample_f64(series, *last as f64 / 1e9);
            }
            cpu += 1;
        })?;
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
            FakePerCpu { cpus: vec![vec![CpuIdle::default()]; 3] },
            3,
            || 0,
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
    }

    #[test]
    fn idle_time_counts_open_periods_and_never_goes_back() {
        let sched = Sched::new(
            FakePerCpu { cpus: vec![vec![counters(0, 0)]; 2] },
            FakePerCpu { cpus: vec![vec![Log2Histogram::default()]; 2] },
            FakePerCpu {
                cpus: vec![
                    // Busy now, 1.5 s idle so far.
                    vec![CpuIdle { idle_since_ns: 9_500_000_000, idle_ns: 1_500_000_000, ..CpuIdle::default() }],
                    // Idle since t=9 s, 2 s idle before.
                    vec![CpuIdle {
                        idle_since_ns: 9_000_000_000,
                        idle_ns: 2_000_000_000,
                        running_idle: 1,
                        ..CpuIdle::default()
                    }],
                ],
            },
            2,
            || 10_000_000_000,
        );
        let text = scrape(&sched);
        assert!(text.contains("\nkernel_cpu_idle_seconds_total{cpu=\"0\"} 1.5\n"), "{text}");
        assert!(text.contains("\nkernel_cpu_idle_seconds_total{cpu=\"1\"} 3.0\n"), "{text}");

        // A torn read that looks smaller is not exposed.
        *sched.idle_exposed_ns.lock().unwrap() = vec![1_600_000_000, 0].into_boxed_slice();
        let text = scrape(&sched);
        assert!(text.contains("\nkernel_cpu_idle_seconds_total{cpu=\"0\"} 1.6\n"), "{text}");
    }

    #[test]
    fn map_errors_are_reported() {
        let sched = Sched::new(
            FakePerCpu::<SchedCounters> { cpus: vec![vec![]] },
            FakePerCpu::<Log2Histogram> { cpus: vec![] },
            FakePerCpu::<CpuIdle> { cpus: vec![] },
            1,
            || 0,
        );
        let mut buf = BytesMut::new();
        assert!(sched.collect(&mut Encoder::new(&mut buf)).is_err());
    }
}
