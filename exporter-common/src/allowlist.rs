//! The allowlist socket filter's map layout.
//!
//! Addresses are 16 bytes in network order, IPv4 as IPv4-mapped IPv6
//! (`::ffff:a.b.c.d`), so one trie and one counter map hold both families.

/// LPM trie: allowed source range → 1. Key: `{prefix_len: u32, addr:
/// [u8; 16]}` (aya's `Key<[u8; 16]>`); IPv4 ranges are stored with 96
/// added to their prefix length. An absent `allowed_sources` is the one
/// entry `::/0` (everything), so the daemon never swaps programs.
///
/// Bound: [`ALLOWLIST_ENTRIES`] ranges; a config with more is refused.
pub const ALLOWLIST_MAP: &str = "ALLOWLIST";

/// The second trie, of the same layout and bound as [`ALLOWLIST_MAP`]: a
/// reload fills whichever of the two is not in force and then switches
/// [`ACTIVE_MAP`] to it.
pub const ALLOWLIST_NEXT_MAP: &str = "ALLOWLIST_NEXT";

/// Array of one `u32`: 0 when [`ALLOWLIST_MAP`] is in force, 1 for
/// [`ALLOWLIST_NEXT_MAP`]. The filter reads it once per packet.
pub const ACTIVE_MAP: &str = "ALLOWLIST_ACTIVE";

/// Number of entries in each of [`ALLOWLIST_MAP`] and [`ALLOWLIST_NEXT_MAP`].
pub const ALLOWLIST_ENTRIES: u32 = 1024;

/// LRU per-CPU hash: source address → [`SourceCounters`]. The `source`
/// label of `kernel_exporter_connections_total` comes from its keys.
///
/// Bound: [`SOURCES_DEFAULT_ENTRIES`] sources unless
/// `--web.allowlist-sources-tracked` says otherwise; beyond it the least
/// recently seen source is evicted (its series disappear; the totals in
/// [`TOTALS_MAP`] keep counting).
pub const SOURCES_MAP: &str = "ALLOWLIST_SOURCES";

/// Default number of entries in [`SOURCES_MAP`].
pub const SOURCES_DEFAULT_ENTRIES: u32 = 4096;

/// Per-CPU array of [`SourceCounters`], one entry: every packet the filter
/// saw, never evicted, so the totals stay exact whatever the LRU does.
pub const TOTALS_MAP: &str = "ALLOWLIST_TOTALS";

/// LRU hash: banned source address → end of the ban, in
/// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`). The filter drops a
/// banned source's packets until then, as if it were outside the
/// allowlist, and counts them apart. The daemon adds a source after
/// `--web.ban-after-failures` failed handshakes or logins of a source that
/// completed a TCP handshake (so never a forged one).
///
/// Bound: [`BANNED_ENTRIES`] sources; beyond, the least recently seen ban
/// is forgotten early.
pub const BANNED_MAP: &str = "ALLOWLIST_BANNED";

/// Number of entries in [`BANNED_MAP`].
pub const BANNED_ENTRIES: u32 = 4096;

/// The socket filter program's name.
pub const PROGRAM: &str = "allowlist";

/// What the filter saw from one source (or from all, in [`TOTALS_MAP`]).
///
/// A SYN is a TCP segment with SYN set and ACK clear: a connection attempt
/// (retransmitted SYNs count again, as the kernel's own counters do).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceCounters {
    /// SYNs let through.
    pub syns_allowed: u64,
    /// SYNs dropped: the source is outside the allowlist.
    pub syns_dropped: u64,
    /// Packets let through, SYNs included.
    pub packets_allowed: u64,
    /// Packets dropped, SYNs included.
    pub packets_dropped: u64,
    /// SYNs dropped because the source is banned (also in `syns_dropped`).
    pub syns_banned: u64,
    /// Packets dropped because the source is banned (also in
    /// `packets_dropped`).
    pub packets_banned: u64,
}

const _: () = assert!(size_of::<SourceCounters>() == 48);

impl SourceCounters {
    /// Adds another CPU's counters to these.
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            syns_allowed: self.syns_allowed.wrapping_add(other.syns_allowed),
            syns_dropped: self.syns_dropped.wrapping_add(other.syns_dropped),
            packets_allowed: self.packets_allowed.wrapping_add(other.packets_allowed),
            packets_dropped: self.packets_dropped.wrapping_add(other.packets_dropped),
            syns_banned: self.syns_banned.wrapping_add(other.syns_banned),
            packets_banned: self.packets_banned.wrapping_add(other.packets_banned),
        }
    }
}

crate::user_pod!(SourceCounters);
