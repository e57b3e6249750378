//! The `sched` collector's map layout.
//!
//! One per-CPU array slot holds every scheduler counter, so the kernel side
//! bumps a field of its own CPU's copy (no atomics, no shared cache line) and
//! the daemon reads all counters of all CPUs with a single map lookup.

/// Name of the per-CPU array holding [`SchedCounters`] at index 0.
///
/// Bound: exactly one entry ([`SCHED_COUNTERS_ENTRIES`]); no label comes from
/// this map.
pub const SCHED_COUNTERS_MAP: &str = "SCHED_COUNTERS";

/// Number of entries in [`SCHED_COUNTERS_MAP`].
pub const SCHED_COUNTERS_ENTRIES: u32 = 1;

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
}

const _: () = assert!(size_of::<SchedCounters>() == 16);

impl SchedCounters {
    /// Adds another CPU's counters to these, wrapping as the kernel's own
    /// counters do.
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            context_switches: self.context_switches.wrapping_add(other.context_switches),
            forks: self.forks.wrapping_add(other.forks),
        }
    }
}

crate::user_pod!(SchedCounters);
