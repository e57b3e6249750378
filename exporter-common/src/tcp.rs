//! The `tcp` collector's map layout.
//!
//! The counters share one per-CPU array slot, as the scheduler's do, so the
//! kernel side bumps its own CPU's copy and the daemon reads every counter
//! of every CPU with one map lookup. Connect latency uses the one histogram
//! layout, [`crate::histogram::Log2Histogram`].
//!
//! Everything is counted for sockets of the exporter's own network
//! namespace only, the namespace whose `/proc/net/snmp` the exporter sees
//! (the programs compare each socket's namespace with
//! [`crate::net::NETNS_INUM_GLOBAL`]).

/// Per-CPU array of [`TcpCounters`], one entry.
///
/// Bound: [`TCP_COUNTERS_ENTRIES`] entry per CPU. The labels fed from it
/// take two values each, one per field: `direction` is `active` or
/// `passive` for opens, `sent` or `received` for resets.
pub const TCP_COUNTERS_MAP: &str = "TCP_COUNTERS";

/// Number of entries in [`TCP_COUNTERS_MAP`].
pub const TCP_COUNTERS_ENTRIES: u32 = 1;

/// Per-CPU array of [`crate::histogram::Log2Histogram`], one entry: time
/// from a socket entering `SYN_SENT` (in `connect()`, just before the SYN
/// goes out) until it is `ESTABLISHED`. No labels.
pub const CONNECT_LATENCY_MAP: &str = "TCP_CONNECT_LATENCY";

/// LRU hash: socket address → `bpf_ktime_get_ns()` when it entered
/// `SYN_SENT`, until it leaves that state. Bound:
/// [`CONNECT_STARTS_ENTRIES`]; when more connects than that are pending at
/// once, the oldest start times are evicted and those connects go
/// unmeasured (never mismeasured: every exit from `SYN_SENT` deletes the
/// entry, so a reused socket address never meets a stale start). Nothing
/// in it becomes a label.
pub const CONNECT_STARTS_MAP: &str = "TCP_CONNECT_STARTS";

/// Number of entries in [`CONNECT_STARTS_MAP`]: connects waiting for their
/// SYN-ACK at one moment. A busy proxy dialing a slow upstream may have
/// thousands; beyond this many the latency histogram samples instead.
pub const CONNECT_STARTS_ENTRIES: u32 = 16_384;

/// TCP event counters of one CPU since the programs were attached.
///
/// Counters only grow; the daemon sums the CPUs' copies at scrape time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Sockets going from `CLOSE` to `SYN_SENT` (`sock/inet_sock_set_state`):
    /// `connect()` calls starting a handshake. The kernel's `ActiveOpens`
    /// counts the same calls a moment later, in `tcp_connect()`, so a
    /// connect that fails before its SYN is built (no free local port, no
    /// route) is counted here and not there.
    pub active_opens: u64,
    /// Sockets going from `LISTEN` to `SYN_RECV` (`sock/inet_sock_set_state`):
    /// the child socket a listener clones when a handshake completes (or a
    /// Fast Open SYN arrives), in `tcp_create_openreq_child()`, exactly
    /// where the kernel counts `PassiveOpens`.
    pub passive_opens: u64,
    /// Segments retransmitted: `tcp/tcp_retransmit_skb` events with
    /// `err == 0`, each weighted by the skb's segment count
    /// (`tcp_skb_pcount`), plus `tcp/tcp_retransmit_synack` events (one
    /// segment each). The kernel's `RetransSegs` adds the same segment
    /// counts just before transmitting, so it also holds the retransmits
    /// the local stack then failed to send, which it counts again in
    /// `TcpExt: TCPRetransFail`: this counter is `RetransSegs -
    /// TCPRetransFail`.
    pub retransmits: u64,
    /// `tcp/tcp_send_reset` events: RSTs sent, in reply to a segment (also
    /// for segments to ports nobody listens on) or to abort a connection,
    /// as the kernel's `OutRsts`.
    pub resets_sent: u64,
    /// `tcp/tcp_receive_reset` events: RSTs a socket accepted (`tcp_reset()`),
    /// refusing a connect or aborting a connection. The kernel has no
    /// counter of its own for these.
    pub resets_received: u64,
}

const _: () = assert!(size_of::<TcpCounters>() == 40);

impl TcpCounters {
    /// Adds another CPU's counters to these, wrapping as the kernel's own
    /// counters do.
    #[must_use]
    pub const fn merged(self, other: Self) -> Self {
        Self {
            active_opens: self.active_opens.wrapping_add(other.active_opens),
            passive_opens: self.passive_opens.wrapping_add(other.passive_opens),
            retransmits: self.retransmits.wrapping_add(other.retransmits),
            resets_sent: self.resets_sent.wrapping_add(other.resets_sent),
            resets_received: self.resets_received.wrapping_add(other.resets_received),
        }
    }
}

/// The kernel struct members the programs read; the daemon writes each
/// member's offset (from BTF) into the global of this name.
pub mod offsets {
    /// `sock.__sk_common.skc_net.net`: a socket's network namespace
    /// (`sock_common` also starts time-wait and request sockets).
    pub const SOCK_NET: &str = "TCP_SOCK_NET";
    /// `sk_buff.dev`: the device a packet came in on.
    pub const SKB_DEV: &str = "TCP_SKB_DEV";
    /// `net_device.nd_net.net`: a device's network namespace.
    pub const NET_DEVICE_NET: &str = "TCP_NET_DEVICE_NET";
    /// `sock.sk_protocol` (`u16`): TCP is `IPPROTO_TCP`; MPTCP sockets
    /// (`IPPROTO_MPTCP`) change state through the same tracepoint.
    pub const SOCK_PROTOCOL: &str = "TCP_SOCK_PROTOCOL";
    /// `sk_buff.head`: start of the buffer, where `end` counts from.
    pub const SKB_HEAD: &str = "TCP_SKB_HEAD";
    /// `sk_buff.end` (`u32` offset from `head` on 64-bit kernels): where
    /// `struct skb_shared_info` starts.
    pub const SKB_END: &str = "TCP_SKB_END";
    /// `skb_shared_info.gso_segs` (`u16`): the segments one skb stands for,
    /// `tcp_skb_pcount()`.
    pub const SHINFO_GSO_SEGS: &str = "TCP_SHINFO_GSO_SEGS";
}

crate::user_pod!(TcpCounters);
