//! `cgroup` collector: on-CPU time and runqueue latency per cgroup v2 id.
//!
//! There is no program of its own: a second program on `sched_switch` would
//! cost the kernel's per-program floor (~70 ns here) on every switch, so the
//! `sched_switch` program in `sched.rs` calls [`account_switch`] when the
//! daemon turned the collector on ([`enabled`]).
//!
//! Both figures are charged at the switch-out of the task they belong to,
//! when it is still `current` and its cgroup is the one
//! `bpf_get_current_cgroup_id()` names (read here with the helper's own
//! four loads, `task->cgroups->dfl_cgrp->kn->id`, which are plain loads in
//! a BTF tracepoint):
//! - on-CPU time: at a switch the outgoing task is still current; its run
//!   time is the runqueue's task clock now minus the clock when it switched
//!   in, kept in this CPU's [`SWITCHED_IN`] slot.
//! - runqueue wait: `sched.rs` computes the incoming task's wait; it waits
//!   in the same slot until that task's own switch-out on this CPU, when it
//!   is current. A running task cannot change CPU without switching out
//!   first, so the task leaving a CPU is the one that last switched in on
//!   it; the slot keeps that task's address and nothing is charged when it
//!   does not match (the first switch after attaching, a switch missed).
//!
//! Counts reach the per-cgroup map through a small per-CPU cache
//! ([`Pending`]): the map lookup would be most of the collector's cost.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, LruPerCpuHashMap, PerCpuArray},
};
use exporter_common::{
    cgroup::{CGROUP_STATS_ENTRIES, CgroupStats},
    map_updates,
};

use crate::{
    kernel::{kernel_offset, load_member},
    maps::{this_cpu, update_failed},
};

/// 1 when the `cgroup` collector is on (`CGROUP_ON_GLOBAL`), written before
/// load. Read-only data, so the verifier drops the accounting when it is 0.
#[unsafe(no_mangle)]
static CGROUP_ON: u32 = 0;

kernel_offset!(
    /// Offset of `rq.clock_task`.
    RQ_CLOCK_TASK
);
kernel_offset!(
    /// Offset of `task_struct.pid`.
    TASK_STRUCT_PID
);
kernel_offset!(
    /// Offset of `task_struct.cgroups`.
    TASK_STRUCT_CGROUPS
);
kernel_offset!(
    /// Offset of `css_set.dfl_cgrp`.
    CSS_SET_DFL_CGRP
);
kernel_offset!(
    /// Offset of `cgroup.kn`.
    CGROUP_KN
);
kernel_offset!(
    /// Offset of `kernfs_node.id`.
    KERNFS_NODE_ID
);

/// Bound: `CGROUP_STATS_ENTRIES` cgroups (LRU: the least recently used id
/// is evicted when a new one comes); the daemon bounds the `cgroup` label
/// to `--collector.cgroup.max-series` values.
#[map]
static CGROUP_STATS: LruPerCpuHashMap<u64, CgroupStats> = LruPerCpuHashMap::with_max_entries(CGROUP_STATS_ENTRIES, 0);

/// The zero value new ids start from: 304 bytes are too many for the BPF
/// stack next to everything else. Bound: one entry; nobody writes it.
#[map]
static NEW_CGROUP: Array<CgroupStats> = Array::with_max_entries(1, 0);

/// `EEXIST`: another CPU created the id first, which is fine.
const EEXIST: i64 = 17;

/// Counts of one cgroup on one CPU not yet added to [`CGROUP_STATS`].
///
/// A hash-map lookup costs about 90 ns per switch on this kind of machine
/// (more than everything else the program does together), so each CPU keeps
/// a small two-way set-associative cache of the cgroups it runs, in an array, and adds
/// to the map only when another cgroup needs the slot, when the CPU goes
/// idle, and at least every [`FLUSH_AFTER_NS`] of the cgroup's running.
/// The daemon reads the map only, so a scrape misses at most that much of a
/// busy cgroup's time, and never sees a count twice.
#[repr(C)]
struct Pending {
    /// The cgroup whose counts these are; 0 for none yet.
    id: u64,
    /// `rq.clock_task` when the slot was last flushed.
    flushed_at: u64,
    /// 1 when `stats` holds counts not yet flushed.
    dirty: u64,
    stats: CgroupStats,
}

/// Slots of [`PENDING`] per CPU, a power of two: 32 sets of two.
const PENDING_SLOTS: u32 = 64;

/// How long (of a CPU's task clock) counts may wait in [`PENDING`]: 50 ms.
const FLUSH_AFTER_NS: u64 = 50_000_000;

/// Bound: [`PENDING_SLOTS`] entries per CPU (about 20 KB); nothing in it
/// becomes a label.
#[map]
static PENDING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(PENDING_SLOTS, 0);

/// What this CPU's last switch left for the next one.
#[repr(C)]
struct SwitchedIn {
    /// `rq.clock_task` when `task` switched in; 0 before the first switch.
    clock_task: u64,
    /// Address of the task that switched in.
    task: u64,
    /// Its runqueue wait, not yet charged; [`NO_WAIT`] when it had none.
    wait_ns: u64,
    /// Turn of the [`PENDING`] slot the next switch checks for flushing.
    sweep: u64,
}

/// [`SwitchedIn::wait_ns`] of a task that did not wait (the idle task, a
/// task that yielded without being queued).
const NO_WAIT: u64 = u64::MAX;

/// Bound: one entry per CPU; nothing in it becomes a label.
#[map]
static SWITCHED_IN: PerCpuArray<SwitchedIn> = PerCpuArray::with_max_entries(1, 0);

/// Whether the daemon turned the collector on.
#[inline(always)]
pub(crate) fn enabled() -> bool {
    // SAFETY: volatile so the loaded value is read, not the default.
    unsafe { core::ptr::read_volatile(&CGROUP_ON) != 0 }
}

/// Charges `prev`'s run time and its pending runqueue wait to its cgroup,
/// and leaves `next`'s switch-in clock and `wait_ns` (its runqueue wait, if
/// it had one) for `next`'s own switch-out.
///
/// # Safety
///
/// `prev` and `next` are the `task_struct` arguments of a BTF
/// `sched_switch` tracepoint and `rq` the runqueue loaded from `next`, all
/// BTF-typed pointers (see [`load_member`]).
#[inline(always)]
pub(crate) unsafe fn account_switch<C: EbpfContext>(
    ctx: &C,
    prev: *const u8,
    next: *const u8,
    rq: *const u8,
    wait_ns: Option<u64>,
) {
    let Some(slot) = this_cpu(&SWITCHED_IN) else { return };
    // SAFETY: `rq` is a BTF-typed `struct rq *` (the caller's contract).
    let now: u64 = unsafe { load_member(rq, &RQ_CLOCK_TASK) };
    let since = slot.clock_task;
    let owner = slot.task;
    let pending = slot.wait_ns;
    slot.clock_task = now;
    slot.task = next as u64;
    slot.wait_ns = wait_ns.unwrap_or(NO_WAIT);
    if since == 0 || owner != prev as u64 {
        return;
    }
    // SAFETY: `prev` is a BTF-typed `struct task_struct *`.
    let pid: i32 = unsafe { load_member(prev, &TASK_STRUCT_PID) };
    // Idle time belongs to no cgroup (the idle tasks sit in the root one).
    if pid == 0 {
        return;
    }
    // What `bpf_get_current_cgroup_id()` returns for `prev` (current until
    // the switch completes), `task->cgroups->dfl_cgrp->kn->id`, read with
    // four plain loads: cheaper here than a helper call, which costs 25-35 ns
    // on a machine with return-stack mitigations.
    // SAFETY: `prev` is a BTF-typed `struct task_struct *`; each pointer
    // loaded keeps its BTF type (an RCU-protected one is read as untrusted,
    // which a load may still go through, and a freed one reads as 0).
    let id: u64 = unsafe {
        let css_set: *const u8 = load_member(prev, &TASK_STRUCT_CGROUPS);
        let cgroup: *const u8 = load_member(css_set, &CSS_SET_DFL_CGRP);
        let kn: *const u8 = load_member(cgroup, &CGROUP_KN);
        load_member(kn, &KERNFS_NODE_ID)
    };
    // SAFETY: `next` is a BTF-typed `struct task_struct *`.
    let next_pid: i32 = unsafe { load_member(next, &TASK_STRUCT_PID) };
    let Some(entry) = pending_entry(ctx, id) else { return };
    entry.stats.cpu_ns = entry.stats.cpu_ns.wrapping_add(now.saturating_sub(since));
    if pending != NO_WAIT {
        entry.stats.runqueue.record(pending);
    }
    entry.dirty = 1;
    // Going idle: nothing else may come to flush it soon.
    if next_pid == 0 || now.wrapping_sub(entry.flushed_at) > FLUSH_AFTER_NS {
        flush(ctx, entry);
        entry.flushed_at = now;
    }
    // One other slot per switch, in turn, so a cgroup that stopped running
    // on a busy CPU is flushed too.
    slot.sweep = slot.sweep.wrapping_add(1);
    if let Some(other) = PENDING.get_ptr_mut((slot.sweep as u32) & (PENDING_SLOTS - 1)) {
        // SAFETY: as above.
        let other = unsafe { &mut *other };
        if other.dirty != 0 && now.wrapping_sub(other.flushed_at) > FLUSH_AFTER_NS {
            flush(ctx, other);
            other.flushed_at = now;
        }
    }
}

/// This CPU's [`PENDING`] entry for cgroup `id`: one of the two slots of
/// its set (a multiplicative hash; ids are inode numbers, often
/// consecutive), taken over from another cgroup when `id` has neither. Of
/// two cgroups in a set, the one flushed longer ago gives way, after its
/// counts went to the map.
#[inline(always)]
fn pending_entry<C: EbpfContext>(ctx: &C, id: u64) -> Option<&'static mut Pending> {
    let first = ((id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as u32) & (PENDING_SLOTS - 1) & !1;
    // SAFETY: this CPU's entry of a per-CPU array; the program does not
    // nest in itself on one CPU.
    let a = unsafe { &mut *PENDING.get_ptr_mut(first)? };
    if a.id == id {
        return Some(a);
    }
    // SAFETY: as above, another entry.
    let b = unsafe { &mut *PENDING.get_ptr_mut(first | 1)? };
    if b.id == id {
        return Some(b);
    }
    let victim = if a.dirty == 0 || (b.dirty != 0 && a.flushed_at <= b.flushed_at) { a } else { b };
    flush(ctx, victim);
    victim.id = id;
    Some(victim)
}

/// Adds what `entry` holds to its cgroup's counts in [`CGROUP_STATS`] and
/// empties it.
#[inline(always)]
fn flush<C: EbpfContext>(ctx: &C, entry: &mut Pending) {
    if entry.dirty == 0 {
        return;
    }
    entry.dirty = 0;
    if let Some(stats) = stats_of(ctx, entry.id) {
        stats.cpu_ns = stats.cpu_ns.wrapping_add(entry.stats.cpu_ns);
        stats.runqueue.merge(&entry.stats.runqueue);
    }
    entry.stats.cpu_ns = 0;
    entry.stats.runqueue.sum_ns = 0;
    for count in entry.stats.runqueue.buckets.iter_mut() {
        *count = 0;
    }
}

/// This CPU's statistics of cgroup `id`, created at its first switch.
#[inline(always)]
fn stats_of<C: EbpfContext>(ctx: &C, id: u64) -> Option<&'static mut CgroupStats> {
    if let Some(stats) = CGROUP_STATS.get_ptr_mut(id) {
        // SAFETY: this CPU's value of a per-CPU map; the program does not
        // nest in itself on one CPU.
        return Some(unsafe { &mut *stats });
    }
    let zero = NEW_CGROUP.get_ptr(0)?;
    // SAFETY: the entry of a one-entry array, valid for the program's run.
    if let Err(error) = CGROUP_STATS.insert(id, unsafe { &*zero }, u64::from(BPF_NOEXIST))
        && i64::from(error) != -EEXIST
    {
        update_failed(ctx, map_updates::CGROUP_STATS, exporter_common::cgroup::CGROUP_STATS_MAP, error, "cgroup");
        return None;
    }
    // SAFETY: as above.
    CGROUP_STATS.get_ptr_mut(id).map(|stats| unsafe { &mut *stats })
}
