//! The `net` collector's map layout.
//!
//! Drops per reason sit in one per-CPU array slot indexed by the kernel's
//! `enum skb_drop_reason`, whose names the daemon reads from the running
//! kernel's BTF. Packets and bytes per device have no map: every driver
//! counts them already (`/proc/net/dev`), and a program on the receive and
//! transmit tracepoints would cost every packet to count them again.

/// Per-CPU array of [`DropCounts`], one entry.
///
/// Bound: the `reason` label takes at most one value per enumerator of the
/// running kernel's `enum skb_drop_reason` below [`MAX_DROP_REASONS`], plus
/// `other`.
pub const NET_DROPS_MAP: &str = "NET_DROPS";

/// Drop reasons counted one by one: `0..MAX_DROP_REASONS`. The core
/// subsystem's reasons are numbered from 0 up (128 of them in Linux 6.18);
/// other subsystems' reasons carry their subsystem in the high 16 bits and
/// count as `other`, as does any reason at or past this bound.
pub const MAX_DROP_REASONS: usize = 512;

/// Global holding the inode number of the exporter's network namespace
/// (`stat /proc/self/ns/net`), written in by the daemon before load. The
/// programs count only devices and sockets whose namespace has this inode.
pub const NETNS_INUM_GLOBAL: &str = "NETNS_INUM";

/// Names of the kernel member offsets the daemon writes in before load.
pub mod offsets {
    /// `sk_buff.dev`: the device a packet was received on or is sent by.
    pub const SK_BUFF_DEV: &str = "SK_BUFF_DEV";
    /// `sk_buff.sk`: the socket owning a packet, if any.
    pub const SK_BUFF_SK: &str = "SK_BUFF_SK";
    /// `net_device.nd_net.net`: the device's network namespace.
    pub const NET_DEVICE_NET: &str = "NET_DEVICE_NET";
    /// `sock_common.skc_net.net`: a socket's network namespace
    /// (`sock_common` is the first member of every `struct sock`).
    pub const SOCK_COMMON_NET: &str = "SOCK_COMMON_NET";
    /// `net.ns.inum`: a network namespace's inode number.
    pub const NET_NS_INUM: &str = "NET_NS_INUM";
}

/// Packets dropped on one CPU, per drop reason (`skb/kfree_skb`), about 4
/// KiB.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropCounts {
    /// Drops with reason `r`, for `r < MAX_DROP_REASONS`.
    pub reasons: [u64; MAX_DROP_REASONS],
    /// Drops with a reason at or past [`MAX_DROP_REASONS`] (other
    /// subsystems' reasons, or a future kernel's long enum).
    pub other: u64,
}

const _: () = assert!(size_of::<DropCounts>() == (MAX_DROP_REASONS + 1) * 8);

impl Default for DropCounts {
    fn default() -> Self {
        Self { reasons: [0; MAX_DROP_REASONS], other: 0 }
    }
}

impl DropCounts {
    /// Adds another CPU's counters to these.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.reasons.iter_mut().zip(other.reasons.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
        self.other = self.other.wrapping_add(other.other);
    }
}

crate::user_pod!(DropCounts);
