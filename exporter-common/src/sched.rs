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

/// Idle-time accounting of one CPU, kept at every `sched_switch` on it.
///
/// At each switch the time since the previous switch is credited to the
/// task that ran in between (`prev`): idle time when that was the idle task
/// (pid 0). Accounting by the outgoing task rather than pairing "enter
/// idle" with "leave idle" events means a switch the CPU somehow did not
/// report costs only the one interval it covered, never a whole idle period.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuIdle {
    /// `bpf_ktime_get_ns()` of this CPU's last context switch.
    pub last_switch_ns: u64,
    /// Idle time credited so far, in nanoseconds.
    pub idle_ns: u64,
    /// 1 while the task switched in last is the idle task, else 0: the
    /// daemon then adds the open interval since `last_switch_ns`.
    pub running_idle: u64,
}

const _: () = assert!(size_of::<CpuIdle>() == 24);

/// Global holding `CLOCK_MONOTONIC` nanoseconds just before the object was
/// loaded, written in by the daemon. A CPU whose first switch after attach
/// leaves the idle task was idle since before the attach; crediting it from
/// load rather than attach over-counts by at most the milliseconds between
/// the two.
pub const LOAD_TIME_GLOBAL: &str = "LOAD_TIME_NS";

/// The kernel struct members the programs read, as `(global, struct,
/// member, size)`; the daemon writes each member's offset into the global.
pub mod offsets {
    /// `task_struct.pid`, read from the tasks `sched_switch` and
    /// `sched_wakeup(_new)` pass.
    pub const TASK_PID: &str = "TASK_STRUCT_PID";
}

crate::user_pod!(SchedCounters, CpuIdle);
