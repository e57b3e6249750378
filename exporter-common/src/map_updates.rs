//! Failed map updates, counted per map in the kernel for
//! `kernel_exporter_bpf_map_update_failures_total{map}`.
//!
//! A program that cannot create an entry (a full hash map, an allocation
//! the kernel refuses) loses that event's count; the daemon cannot see that
//! from the map itself. Each such failure bumps a per-CPU counter of the
//! map here and logs one line through aya-log, which the daemon forwards to
//! its log, rate-limited.

/// Per-CPU array of [`MapUpdateFailures`], one entry. Bound: one entry per
/// CPU; the `map` label takes the [`UPDATED_MAPS`] names.
///
/// (Programs get the map's name as a string literal at each call site: a
/// table of string pointers in the object would not be relocated.)
pub const MAP_UPDATE_FAILURES_MAP: &str = "MAP_UPDATE_FAILURES";

/// A map programs create entries in: its slot in
/// [`MapUpdateFailures::counts`] and its name (the `map` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdatedMap {
    /// Index into [`MapUpdateFailures::counts`].
    pub index: u32,
    /// The map's name, as in the object.
    pub name: &'static str,
}

/// Per-source counters of the allowlist socket filter.
pub const ALLOWLIST_SOURCES: UpdatedMap = UpdatedMap { index: 0, name: crate::allowlist::SOURCES_MAP };
/// Per-disk and operation block statistics.
pub const BLOCK_IO: UpdatedMap = UpdatedMap { index: 1, name: crate::block::BLOCK_IO_MAP };
/// Issue times of block requests in flight.
pub const ISSUE_TIMES: UpdatedMap = UpdatedMap { index: 2, name: crate::block::ISSUE_TIMES_MAP };
/// Tasks in direct reclaim.
pub const DIRECT_RECLAIM_STARTS: UpdatedMap = UpdatedMap { index: 3, name: crate::mm::DIRECT_RECLAIM_STARTS_MAP };
/// Sockets waiting for their connect.
pub const TCP_CONNECT_STARTS: UpdatedMap = UpdatedMap { index: 4, name: crate::tcp::CONNECT_STARTS_MAP };
/// Per-cgroup CPU time and runqueue latency.
pub const CGROUP_STATS: UpdatedMap = UpdatedMap { index: 5, name: crate::cgroup::CGROUP_STATS_MAP };

/// Every [`UpdatedMap`], in index order: the `map` label's values.
pub const UPDATED_MAPS: [UpdatedMap; 6] =
    [ALLOWLIST_SOURCES, BLOCK_IO, ISSUE_TIMES, DIRECT_RECLAIM_STARTS, TCP_CONNECT_STARTS, CGROUP_STATS];

/// Failed updates of one CPU, per map of [`UPDATED_MAPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapUpdateFailures {
    /// Failures per map index; the two spare slots keep the size a
    /// multiple of 64 bytes and room for more maps.
    pub counts: [u64; 8],
}

const _: () = assert!(size_of::<MapUpdateFailures>() == 64);
const _: () = {
    assert!(UPDATED_MAPS.len() <= 8);
    let mut i = 0;
    while i < UPDATED_MAPS.len() {
        assert!(UPDATED_MAPS[i].index as usize == i);
        i += 1;
    }
};

crate::user_pod!(MapUpdateFailures);
