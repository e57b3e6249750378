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

/// Per-CPU array of [`crate::histogram::Log2Histogram`], one entry: how long
/// each task that got a CPU had waited for it on the runqueue.
///
/// The wait is the kernel's own: the scheduler stamps a task's
/// `sched_info.last_queued` with its runqueue's clock when the task becomes
/// runnable (woken, new, or preempted while still runnable), and at
/// `sched_switch` the program subtracts that from the runqueue's clock. That
/// is the same difference the kernel adds to the task's `run_delay`
/// (`/proc/PID/schedstat`), with no program on the wakeup tracepoints and no
/// map of waiting tasks.
///
/// Per-CPU idle time has no map: the daemon reads the kernel's own
/// accounting (`idle` + `iowait` in `/proc/stat`) at scrape time.
pub const RUNQUEUE_LATENCY_MAP: &str = "RUNQUEUE_LATENCY";

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

/// The kernel struct members the programs read, as `(global, struct,
/// member, size)`; the daemon writes each member's offset into the global.
pub mod offsets {
    /// `task_struct.sched_info.last_queued`: when the task was queued to
    /// wait for a CPU, in its runqueue's clock.
    pub const TASK_LAST_QUEUED: &str = "TASK_STRUCT_LAST_QUEUED";
    /// `task_struct.se.cfs_rq`: the task's group's CFS runqueue on the task's
    /// CPU, set for tasks of every scheduling class
    /// (`CONFIG_FAIR_GROUP_SCHED`).
    pub const TASK_CFS_RQ: &str = "TASK_STRUCT_CFS_RQ";
    /// `cfs_rq.rq`: the CPU's runqueue.
    pub const CFS_RQ_RQ: &str = "CFS_RQ_RQ";
    /// `rq.clock`, the clock `last_queued` is stamped with, updated by
    /// `__schedule()` just before `sched_switch`.
    pub const RQ_CLOCK: &str = "RQ_CLOCK";
}

crate::user_pod!(SchedCounters);
