//! `net` collector: packets and bytes per network device, received and
//! transmitted, and packets dropped per drop reason.
//!
//! Receive is counted at `net/netif_receive_skb`, where every packet a
//! device hands to the stack passes once (after GRO, as drivers like
//! loopback and veth count their own), transmit at `net/net_dev_xmit` once
//! the driver took the packet. Only devices and sockets of the exporter's
//! network namespace count, so the numbers are those `/proc/net/dev` shows
//! it.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{map, raw_tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};
use exporter_common::net::{DeviceCounters, DropCounts, NET_DEVICE_ENTRIES};

use crate::kernel::{in_exporter_netns, kernel_offset, read_member};

/// Bound: [`NET_DEVICE_ENTRIES`] devices of the exporter's namespace; the
/// daemon deletes the entries of devices that are gone. The `device` label
/// has one value per entry.
#[map]
static NET_DEVICE_COUNTERS: PerCpuHashMap<u32, DeviceCounters> = PerCpuHashMap::with_max_entries(NET_DEVICE_ENTRIES, 0);

/// Bound: one entry per CPU; the `reason` label has at most
/// `MAX_DROP_REASONS` + 1 values.
#[map]
static NET_DROPS: PerCpuArray<DropCounts> = PerCpuArray::with_max_entries(1, 0);

kernel_offset!(
    /// Offset of `sk_buff.dev`.
    SK_BUFF_DEV
);
kernel_offset!(
    /// Offset of `sk_buff.sk`.
    SK_BUFF_SK
);
kernel_offset!(
    /// Offset of `sk_buff.len`.
    SK_BUFF_LEN
);
kernel_offset!(
    /// Offset of `sk_buff.head`.
    SK_BUFF_HEAD
);
kernel_offset!(
    /// Offset of `sk_buff.data`.
    SK_BUFF_DATA
);
kernel_offset!(
    /// Offset of `sk_buff.mac_header`.
    SK_BUFF_MAC_HEADER
);
kernel_offset!(
    /// Offset of `net_device.ifindex`.
    NET_DEVICE_IFINDEX
);
kernel_offset!(
    /// Offset of `net_device.nd_net.net`.
    NET_DEVICE_NET
);
kernel_offset!(
    /// Offset of `sock_common.skc_net.net` (`sock_common` starts every
    /// `struct sock`).
    SOCK_COMMON_NET
);

/// `mac_header` of a packet whose link-layer header was never set.
const MAC_HEADER_UNSET: u16 = u16::MAX;

/// Link-layer headers longer than this are taken for garbage (an unset or
/// stale `mac_header`) and not added; Ethernet's is 14 bytes, the longest
/// real ones a few dozen.
const MAX_LINK_HEADER: u64 = 128;

/// This CPU's counters of the device at `dev`, created on its first packet;
/// `None` for a device of another network namespace (or a full map).
#[inline(always)]
fn device_counters(dev: u64) -> Option<&'static mut DeviceCounters> {
    if !in_exporter_netns(read_member::<u64>(dev, &NET_DEVICE_NET)?) {
        return None;
    }
    let ifindex = read_member::<i32>(dev, &NET_DEVICE_IFINDEX)? as u32;
    let counters = match NET_DEVICE_COUNTERS.get_ptr_mut(ifindex) {
        Some(counters) => counters,
        None => {
            // A new entry starts at zero on every CPU but this one, which
            // gets the value given; another CPU may have created it first.
            let _ = NET_DEVICE_COUNTERS.insert(ifindex, DeviceCounters::default(), u64::from(BPF_NOEXIST));
            NET_DEVICE_COUNTERS.get_ptr_mut(ifindex)?
        }
    };
    // SAFETY: this CPU's copy of a per-CPU hash entry, valid for the
    // program's run (an entry the daemon deletes under us is freed after an
    // RCU grace period); a program does not nest in itself on one CPU, and
    // receive and transmit bump different fields.
    Some(unsafe { &mut *counters })
}

/// Bytes of the link-layer header the driver already pulled off the
/// packet at `skb` (`eth_type_trans` pulls Ethernet's 14): drivers count
/// them in `/proc/net/dev`, and `sk_buff.len` no longer does.
#[inline(always)]
fn pulled_link_header(skb: u64) -> u64 {
    let (Some(head), Some(data), Some(mac)) = (
        read_member::<u64>(skb, &SK_BUFF_HEAD),
        read_member::<u64>(skb, &SK_BUFF_DATA),
        read_member::<u16>(skb, &SK_BUFF_MAC_HEADER),
    ) else {
        return 0;
    };
    if mac == MAC_HEADER_UNSET {
        return 0;
    }
    let pulled = data.wrapping_sub(head).wrapping_sub(u64::from(mac));
    if pulled <= MAX_LINK_HEADER { pulled } else { 0 }
}

#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub(crate) fn netif_receive_skb(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sk_buff *skb)
    let skb: u64 = ctx.arg(0);
    let Some(counters) = read_member::<u64>(skb, &SK_BUFF_DEV).and_then(device_counters) else { return 0 };
    let len = read_member::<u32>(skb, &SK_BUFF_LEN).unwrap_or(0);
    counters.rx_packets += 1;
    counters.rx_bytes += u64::from(len) + pulled_link_header(skb);
    0
}

#[raw_tracepoint(tracepoint = "net_dev_xmit")]
pub(crate) fn net_dev_xmit(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sk_buff *skb, int rc, struct net_device *dev,
    //          unsigned int skb_len)
    let rc: i32 = ctx.arg(1);
    // Anything but NETDEV_TX_OK: the driver did not take the packet (busy,
    // to be requeued), so it has not counted it either.
    if rc != 0 {
        return 0;
    }
    let skb_len: u32 = ctx.arg(3);
    if let Some(counters) = device_counters(ctx.arg(2)) {
        counters.tx_packets += 1;
        counters.tx_bytes += u64::from(skb_len);
    }
    0
}

/// The network namespace a dropped packet belongs to: its socket's when it
/// has one (a packet queued on a socket reuses `sk_buff.dev` for other
/// data), else its device's.
#[inline(always)]
fn drop_netns(skb: u64) -> Option<u64> {
    match read_member::<u64>(skb, &SK_BUFF_SK) {
        Some(sk) if sk != 0 => read_member::<u64>(sk, &SOCK_COMMON_NET),
        _ => read_member::<u64>(read_member::<u64>(skb, &SK_BUFF_DEV)?, &NET_DEVICE_NET),
    }
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub(crate) fn kfree_skb(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct sk_buff *skb, void *location,
    //          enum skb_drop_reason reason, struct sock *rx_sk)
    // rx_sk (Linux 6.12+) is not read, so the program attaches to older
    // kernels too: a raw tracepoint program may not read past the
    // tracepoint's arguments.
    let skb: u64 = ctx.arg(0);
    let reason: u32 = ctx.arg(2);
    // Packets with neither a socket nor a device cannot be placed in a
    // namespace and are not counted.
    if !drop_netns(skb).is_some_and(in_exporter_netns) {
        return 0;
    }
    let Some(drops) = NET_DROPS.get_ptr_mut(0) else { return 0 };
    // SAFETY: this CPU's slot of a per-CPU map, valid for the program's run;
    // a program does not nest in itself on one CPU.
    let drops = unsafe { &mut *drops };
    // The array index is the bound on the label; the rest count as other.
    match drops.reasons.get_mut(reason as usize) {
        Some(count) => *count += 1,
        None => drops.other += 1,
    }
    0
}
