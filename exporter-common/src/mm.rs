//! The `mm` collector's map layout.
//!
//! The counters share one per-CPU array slot, as the scheduler's do, so the
//! kernel side bumps its own CPU's copy and the daemon reads every counter of
//! every CPU with one map lookup. Direct-reclaim latency uses the one
//! histogram layout, [`crate::histogram::Log2Histogram`].

/// Per-CPU array of [`MmCounters`], one entry.
///
/// Bound: [`MM_COUNTERS_ENTRIES`] entry per CPU; no label comes from it.
///
/// Page faults have no map: the kernel counts them itself (`pgfault`,
/// `pgmajfault` in `/proc/vmstat`), and a program on the fault path would
/// cost every fault about 85 ns to count them again.
pub const MM_COUNTERS_MAP: &str = "MM_COUNTERS";

/// Number of entries in [`MM_COUNTERS_MAP`].
pub const MM_COUNTERS_ENTRIES: u32 = 1;

/// Per-CPU array of [`crate::histogram::Log2Histogram`], one entry: time a
/// task spent in direct reclaim (`try_to_free_pages`, host-wide memory
/// pressure), begin to end. Reclaim forced by a memory cgroup's limit has
/// tracepoints of its own and is not in it. No labels.
pub const DIRECT_RECLAIM_LATENCY_MAP: &str = "DIRECT_RECLAIM_LATENCY";

/// LRU hash: task id → `bpf_ktime_get_ns()` when it entered direct reclaim,
/// until it leaves. Bound: [`DIRECT_RECLAIM_STARTS_ENTRIES`]; if more tasks
/// than that are in direct reclaim at once, the oldest start times are
/// evicted and those reclaims go unmeasured (never mismeasured). Nothing in
/// it becomes a label.
pub const DIRECT_RECLAIM_STARTS_MAP: &str = "DIRECT_RECLAIM_STARTS";

/// Number of entries in [`DIRECT_RECLAIM_STARTS_MAP`]. A task is in direct
/// reclaim only while one of its allocations waits for memory, and reclaim
/// does not nest, so even a host thrashing with thousands of threads stays
/// below this.
pub const DIRECT_RECLAIM_STARTS_ENTRIES: u32 = 4096;

/// Memory-management event counters of one CPU since the programs were
/// attached. Counters only grow; the daemon sums the CPUs' copies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmCounters {
    /// `oom/mark_victim` events: tasks the OOM killer marked as victims,
    /// system-wide and cgroup OOMs alike. That is every task it kills (the
    /// kernel's `oom_kill` count) plus a task that hits an OOM while already
    /// exiting, which is given memory reserves instead of being killed. It
    /// fires once per task: the kernel returns early if the task was
    /// already marked.
    pub oom_kills: u64,
}

const _: () = assert!(size_of::<MmCounters>() == 8);

impl MmCounters {
    /// Adds another CPU's counters to these, wrapping as the kernel's own
    /// counters do.
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self { oom_kills: self.oom_kills.wrapping_add(other.oom_kills) }
    }
}

crate::user_pod!(MmCounters);
