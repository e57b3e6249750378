//! `tcp` collector: connections opened, connect latency, retransmitted
//! segments and resets, for sockets of the exporter's network namespace.
//!
//! Each counter is bumped where the kernel bumps its own in
//! `/proc/net/snmp` (`ActiveOpens`, `PassiveOpens`, `RetransSegs`,
//! `OutRsts`), so the two agree event for event; where they differ,
//! `exporter_common::tcp::TcpCounters` says how.

use crate::maps::{this_cpu, update_failed};
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use exporter_common::map_updates;
use exporter_common::{
    histogram::Log2Histogram,
    tcp::{CONNECT_STARTS_ENTRIES, TCP_COUNTERS_ENTRIES, TcpCounters},
};

use crate::kernel::{in_exporter_netns, kernel_offset, read_member};

/// Bound: one entry per CPU; the `direction` labels have two values each.
#[map]
static TCP_COUNTERS: PerCpuArray<TcpCounters> = PerCpuArray::with_max_entries(TCP_COUNTERS_ENTRIES, 0);

/// Bound: one histogram per CPU; no labels.
#[map]
static TCP_CONNECT_LATENCY: PerCpuArray<Log2Histogram> = PerCpuArray::with_max_entries(1, 0);

/// Bound: [`CONNECT_STARTS_ENTRIES`] pending connects; LRU eviction beyond.
#[map]
static TCP_CONNECT_STARTS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(CONNECT_STARTS_ENTRIES, 0);

kernel_offset!(
    /// Offset of `sock.__sk_common.skc_net.net`.
    TCP_SOCK_NET
);
kernel_offset!(
    /// Offset of `sock.sk_protocol`.
    TCP_SOCK_PROTOCOL
);
kernel_offset!(
    /// Offset of `sk_buff.dev`.
    TCP_SKB_DEV
);
kernel_offset!(
    /// Offset of `net_device.nd_net.net`.
    TCP_NET_DEVICE_NET
);
kernel_offset!(
    /// Offset of `sk_buff.head`.
    TCP_SKB_HEAD
);
kernel_offset!(
    /// Offset of `sk_buff.end`.
    TCP_SKB_END
);
kernel_offset!(
    /// Offset of `skb_shared_info.gso_segs`.
    TCP_SHINFO_GSO_SEGS
);

// TCP states (include/net/tcp_states.h), part of the kernel's ABI: the
// tracepoint's own format prints them by these numbers.
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

const IPPROTO_TCP: u16 = 6;

/// Applies `bump` to this CPU's counters.
#[inline(always)]
fn count(bump: impl FnOnce(&mut TcpCounters)) {
    if let Some(counters) = this_cpu(&TCP_COUNTERS) {
        bump(counters);
    }
}

/// Whether the socket (full, request or time-wait: all start with
/// `sock_common`) at `sk` is in the exporter's network namespace.
#[inline(always)]
fn sock_in_exporter_netns(sk: u64) -> bool {
    read_member::<u64>(sk, &TCP_SOCK_NET).is_some_and(in_exporter_netns)
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub(crate) fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let interesting =
        (old == TCP_CLOSE && new == TCP_SYN_SENT) || (old == TCP_LISTEN && new == TCP_SYN_RECV) || old == TCP_SYN_SENT;
    // Every state change of every inet socket passes here: the cheap test
    // on the arguments comes before any read of the socket.
    if !interesting || read_member::<u16>(sk, &TCP_SOCK_PROTOCOL) != Some(IPPROTO_TCP) || !sock_in_exporter_netns(sk) {
        return 0;
    }
    if old == TCP_SYN_SENT {
        // Any way out of SYN_SENT ends the wait; only ESTABLISHED measures
        // it. A failed connect (refused, timed out, simultaneous open)
        // leaves no stale start behind for the next socket at the address.
        // SAFETY: the value is copied out at once; an entry evicted under
        // us yields a wrong timestamp at worst, never a fault.
        if let Some(&started) = unsafe { TCP_CONNECT_STARTS.get(sk) } {
            let _ = TCP_CONNECT_STARTS.remove(sk);
            if new == TCP_ESTABLISHED
                && let Some(histogram) = this_cpu(&TCP_CONNECT_LATENCY)
            {
                let now = unsafe { bpf_ktime_get_ns() };
                histogram.record(now.saturating_sub(started));
            }
        }
    } else if new == TCP_SYN_SENT {
        count(|c| c.active_opens += 1);
        let now = unsafe { bpf_ktime_get_ns() };
        if let Err(error) = TCP_CONNECT_STARTS.insert(sk, now, 0) {
            update_failed(
                &ctx,
                map_updates::TCP_CONNECT_STARTS,
                exporter_common::tcp::CONNECT_STARTS_MAP,
                error,
                "connecting socket",
            );
        }
    } else {
        // LISTEN -> SYN_RECV happens only to the child socket a listener
        // clones for a new connection (inet_csk_clone_lock), which is where
        // the kernel counts PassiveOpens; a simultaneous open reaches
        // SYN_RECV from SYN_SENT and is not a passive open.
        count(|c| c.passive_opens += 1);
    }
    0
}

/// `tcp_skb_pcount(skb)`: the segments the skb at `skb` stands for
/// (`skb_shinfo(skb)->gso_segs`, where the shared info sits at `head +
/// end`). At least 1: the kernel counts an skb that is no GSO skb as one.
#[inline(always)]
fn segments(skb: u64) -> u64 {
    let (Some(head), Some(end)) = (read_member::<u64>(skb, &TCP_SKB_HEAD), read_member::<u32>(skb, &TCP_SKB_END))
    else {
        return 1;
    };
    let shinfo = head.wrapping_add(u64::from(end));
    read_member::<u16>(shinfo, &TCP_SHINFO_GSO_SEGS).map_or(1, |segs| u64::from(segs).max(1))
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub(crate) fn tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb, int err)
    // Since Linux 6.17 the tracepoint also fires for retransmits that did
    // not happen; err is 0 for those that left.
    let err: i32 = ctx.arg(2);
    let sk: u64 = ctx.arg(0);
    if err != 0 || !sock_in_exporter_netns(sk) {
        return 0;
    }
    let segments = segments(ctx.arg(1));
    count(|c| c.retransmits += segments);
    0
}

#[raw_tracepoint(tracepoint = "tcp_retransmit_synack")]
pub(crate) fn tcp_retransmit_synack(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct request_sock *req): the
    // listener (or Fast Open child), after the SYN-ACK left, where the
    // kernel adds 1 to RetransSegs.
    if sock_in_exporter_netns(ctx.arg(0)) {
        count(|c| c.retransmits += 1);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub(crate) fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const struct sk_buff *skb,
    //          const enum sk_rst_reason reason)
    let sk: u64 = ctx.arg(0);
    let ours = if sk != 0 {
        sock_in_exporter_netns(sk)
    } else {
        // No socket: the reply to a segment for a port nobody listens on.
        // The kernel counts it in the namespace the segment arrived in,
        // which is its device's. A segment without a device cannot be
        // placed and is not counted.
        let skb: u64 = ctx.arg(1);
        read_member::<u64>(skb, &TCP_SKB_DEV)
            .filter(|&dev| dev != 0)
            .and_then(|dev| read_member::<u64>(dev, &TCP_NET_DEVICE_NET))
            .is_some_and(in_exporter_netns)
    };
    if ours {
        count(|c| c.resets_sent += 1);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub(crate) fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sock *sk)
    if sock_in_exporter_netns(ctx.arg(0)) {
        count(|c| c.resets_received += 1);
    }
    0
}
