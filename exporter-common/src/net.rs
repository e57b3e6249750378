//! The `net` collector's map layout.
//!
//! Packets and bytes per network device sit in a per-CPU hash keyed by the
//! device's ifindex, so each CPU bumps its own copy and devices that come
//! and go (container veths) use an entry only while they exist: the daemon
//! deletes the entries of devices that are gone. Drops per reason sit in
//! one per-CPU array slot indexed by the kernel's `enum skb_drop_reason`,
//! whose names the daemon reads from the running kernel's BTF.

/// Per-CPU hash: ifindex (`u32`) → [`DeviceCounters`].
///
/// Only devices of the exporter's own network namespace are counted (the
/// view `/proc/net/dev` gives it). Bound: [`NET_DEVICE_ENTRIES`] devices,
/// so the `device` label takes at most that many values; the daemon
/// deletes the entry of a device once it is gone, so only devices that
/// exist at once count against the bound. Beyond it, further devices are
/// not counted until entries free up.
pub const NET_DEVICE_COUNTERS_MAP: &str = "NET_DEVICE_COUNTERS";

/// Number of entries in [`NET_DEVICE_COUNTERS_MAP`]: far more devices than
/// a host has at once, containers' veth halves included (a busy Kubernetes
/// node has a few hundred).
pub const NET_DEVICE_ENTRIES: u32 = 4096;

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
    /// `sk_buff.dev`: the device a packet is received on.
    pub const SK_BUFF_DEV: &str = "SK_BUFF_DEV";
    /// `sk_buff.sk`: the socket owning a packet, if any.
    pub const SK_BUFF_SK: &str = "SK_BUFF_SK";
    /// `sk_buff.len`: the bytes of the packet from `data` on.
    pub const SK_BUFF_LEN: &str = "SK_BUFF_LEN";
    /// `sk_buff.head`: start of the packet's buffer.
    pub const SK_BUFF_HEAD: &str = "SK_BUFF_HEAD";
    /// `sk_buff.data`: start of the packet's data.
    pub const SK_BUFF_DATA: &str = "SK_BUFF_DATA";
    /// `sk_buff.mac_header`: offset of the link-layer header from `head`.
    pub const SK_BUFF_MAC_HEADER: &str = "SK_BUFF_MAC_HEADER";
    /// `net_device.ifindex`.
    pub const NET_DEVICE_IFINDEX: &str = "NET_DEVICE_IFINDEX";
    /// `net_device.nd_net.net`: the device's network namespace.
    pub const NET_DEVICE_NET: &str = "NET_DEVICE_NET";
    /// `sock_common.skc_net.net`: a socket's network namespace
    /// (`sock_common` is the first member of every `struct sock`).
    pub const SOCK_COMMON_NET: &str = "SOCK_COMMON_NET";
    /// `net.ns.inum`: a network namespace's inode number.
    pub const NET_NS_INUM: &str = "NET_NS_INUM";
}

/// Traffic of one device on one CPU since the programs were attached.
///
/// Counters only grow; the daemon sums the CPUs' copies at scrape time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// `net/netif_receive_skb` events: packets the stack received on the
    /// device (after GRO merged them, as drivers count theirs).
    pub rx_packets: u64,
    /// Their bytes, link-layer header included as drivers count it.
    pub rx_bytes: u64,
    /// `net/net_dev_xmit` events the driver accepted (`NETDEV_TX_OK`).
    pub tx_packets: u64,
    /// Their bytes (the tracepoint's `skb_len`, link-layer header included).
    pub tx_bytes: u64,
}

const _: () = assert!(size_of::<DeviceCounters>() == 32);

impl DeviceCounters {
    /// Adds another CPU's counters to these, wrapping as the kernel's own
    /// counters do.
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            rx_packets: self.rx_packets.wrapping_add(other.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_add(other.rx_bytes),
            tx_packets: self.tx_packets.wrapping_add(other.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_add(other.tx_bytes),
        }
    }
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

crate::user_pod!(DeviceCounters, DropCounts);
