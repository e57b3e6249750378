//! The `cgroup` collector's map layout: on-CPU time and runqueue latency
//! per cgroup v2 id.
//!
//! The kernel side lives inside the `sched_switch` program (one program run
//! per switch serves both collectors); [`CGROUP_ON_GLOBAL`] turns its share
//! on at load time, and [`SCHED_ON_GLOBAL`] the `sched` collector's.

use crate::histogram::Log2Histogram;

/// Per-CPU LRU hash of [`CgroupStats`] keyed by the cgroup v2 id (`u64`,
/// the inode number of the cgroup's directory, what
/// `bpf_get_current_cgroup_id()` returns).
///
/// Bound: [`CGROUP_STATS_ENTRIES`] cgroups; when more cgroups run tasks, the
/// kernel evicts the least recently used id (the daemon folds its last
/// values into its label, so no counter goes back). The `cgroup` label is
/// bounded separately, by `--collector.cgroup.max-series`.
pub const CGROUP_STATS_MAP: &str = "CGROUP_STATS";

/// Number of cgroups [`CGROUP_STATS_MAP`] holds: 4,096 × (304 bytes per
/// possible CPU + key and LRU overhead), about 2.6 MB of kernel memory on a
/// 2-CPU host, 40 MB on 32 CPUs.
pub const CGROUP_STATS_ENTRIES: u32 = 4096;

/// Global (`u32`, 0 or 1) the daemon sets to 1 when the `cgroup` collector
/// is enabled; the `sched_switch` program skips the cgroup accounting
/// otherwise. Written before load into read-only data, so the verifier
/// prunes the branch that is off.
pub const CGROUP_ON_GLOBAL: &str = "CGROUP_ON";

/// Global (`u32`, 0 or 1) the daemon sets to 1 when the `sched` collector is
/// enabled: `sched_switch` attaches for either collector and counts the
/// `sched` collector's statistics only when it is on.
pub const SCHED_ON_GLOBAL: &str = "SCHED_ON";

/// One cgroup's statistics on one CPU since the programs were attached, or
/// since the id was (re)inserted after an eviction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Time tasks of the cgroup ran on this CPU, in nanoseconds of the
    /// runqueue's task clock (`rq.clock_task`, the clock the kernel charges
    /// `cpu.stat` `usage_usec` with).
    pub cpu_ns: u64,
    /// How long tasks of the cgroup waited on a runqueue before they got
    /// this CPU (as `run_delay` in `/proc/PID/schedstat`).
    pub runqueue: Log2Histogram,
}

const _: () = assert!(size_of::<CgroupStats>() == 8 + size_of::<Log2Histogram>());

/// The kernel struct members only the cgroup accounting reads.
pub mod offsets {
    /// `rq.clock_task`: the runqueue's clock without interrupt and steal
    /// time, which the kernel charges tasks' run time (and cgroups'
    /// `usage_usec`) with.
    pub const RQ_CLOCK_TASK: &str = "RQ_CLOCK_TASK";
    /// `task_struct.pid`: 0 for the idle tasks, whose time is not a
    /// cgroup's.
    pub const TASK_PID: &str = "TASK_STRUCT_PID";
    /// `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn` and
    /// `kernfs_node.id`: the path from a task to its cgroup v2 id.
    pub const TASK_CGROUPS: &str = "TASK_STRUCT_CGROUPS";
    /// See [`TASK_CGROUPS`].
    pub const CSS_SET_DFL_CGRP: &str = "CSS_SET_DFL_CGRP";
    /// See [`TASK_CGROUPS`].
    pub const CGROUP_KN: &str = "CGROUP_KN";
    /// See [`TASK_CGROUPS`].
    pub const KERNFS_NODE_ID: &str = "KERNFS_NODE_ID";
}

impl CgroupStats {
    /// Adds another CPU's statistics to these, wrapping as the kernel's own
    /// counters do.
    pub fn merge(&mut self, other: &Self) {
        self.cpu_ns = self.cpu_ns.wrapping_add(other.cpu_ns);
        self.runqueue.merge(&other.runqueue);
    }
}

crate::user_pod!(CgroupStats);
