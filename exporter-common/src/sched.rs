//! The `sched` collector's map layout.
//!
//! One per-CPU array slot holds every scheduler counter, so the kernel side
//! bumps a field of its own CPU's copy (no atomics, no shared cache line) and
//! the daemon reads all counters of all CPUs with a single map lookup.

/// Per-CPU array of [`SchedCounters`], one entry.
///
/// Bound: [`SCHED_COUNTERS_ENTRIES`] entry per CPU; no label comes from it.
pub const SCHED_COUNTERS_MAP: &str = "SCHED_COUNTERS";

/// Number of entries in [`SCHED_COUNTERS_MAP`].
pub const SCHED_COUNTERS_ENTRIES: u32 = 1;

/// Per-CPU array of [`crate::histogram::Log2Histogram`], one entry: wakeup
/// (or new-task wakeup) until the task runs.
pub const RUNQUEUE_LATENCY_MAP: &str = "RUNQUEUE_LATENCY";

/// LRU hash: task id → `bpf_ktime_get_ns()` of its last wakeup, until it
/// runs. Bound: [`WAKEUP_TIMES_ENTRIES`]; when more tasks wait to run at
/// once, the oldest timestamps are evicted and those wakeups go unmeasured
/// (never mismeasured). Nothing in it becomes a label.
pub const WAKEUP_TIMES_MAP: &str = "WAKEUP_TIMES";

/// Number of entries in [`WAKEUP_TIMES_MAP`]: far more tasks than ever wait
/// in the runqueues of a large host at once.
pub const WAKEUP_TIMES_ENTRIES: u32 = 16_384;

/// Per-CPU array of [`CpuIdle`], one entry. The `cpu` label's values are
/// the host's possible CPUs, bounded by the kernel's `nr_cpu_ids`.
pub const CPU_IDLE_MAP: &str = "CPU_IDLE";

/// Names of the tracepoint field offsets the daemon writes into the BPF
/// object before loading it (read from tracefs `format` files).
pub mod offsets {
    /// `sched_switch.prev_pid`.
    pub const SWITCH_PREV_PID: &str = "SCHED_SWITCH_PREV_PID";
    /// `sched_switch.next_pid`.
    pub const SWITCH_NEXT_PID: &str = "SCHED_SWITCH_NEXT_PID";
    /// `sched_wakeup.pid` (and `sched_wakeup_new.pid`, the same event class).
    pub const WAKEUP_PID: &str = "SCHED_WAKEUP_PID";
}

/// Scheduler event counters of one CPU since the programs were attached.
///
/// Counters only ever grow; the daemon sums the CPUs' copies at scrape time.
/// At one increment per nanosecond a `u64` would take 584 years to wrap.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedCounters {
    /// `sched/sched_switch` events: context switches (as `ctxt` in
    /// `/proc/stat`).
    pub context_switches: u64,
    /// `sched/sched_process_fork` events: new tasks, threads included (as
    /// `processes` in `/proc/stat`).
    pub forks: u64,
    /// `sched/sched_process_exec` events: successful execs.
    pub execs: u64,
    /// `sched/sched_process_exit` events: tasks (threads included) exiting.
    pub exits: u64,
    /// `sched/sched_migrate_task` events: tasks moved between CPUs.
    pub migrations: u64,
}

const _: () = assert!(size_of::<SchedCounters>() == 40);

impl SchedCounters {
    /// Adds another CPU's counters to these, wrapping as the kernel's own
    /// counters do.
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            context_switches: self.context_switches.wrapping_add(other.context_switches),
            forks: self.forks.wrapping_add(other.forks),
            execs: self.execs.wrapping_add(other.execs),
            exits: self.exits.wrapping_add(other.exits),
            migrations: self.migrations.wrapping_add(other.migrations),
        }
    }
}

/// Idle-time accounting of one CPU, from `sched_switch` into and out of the
/// idle task (pid 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuIdle {
    /// `bpf_ktime_get_ns()` when the CPU last switched to its idle task, or 0
    /// while it runs something else (or before it was first seen idle).
    pub idle_since_ns: u64,
    /// Completed idle periods, in nanoseconds.
    pub idle_ns: u64,
}

const _: () = assert!(size_of::<CpuIdle>() == 16);

crate::user_pod!(SchedCounters, CpuIdle);
