//! `net` collector: packets dropped per drop reason.
//!
//! One program run per dropped packet (`skb/kfree_skb`; packets consumed
//! normally go through `consume_skb`, another tracepoint). Packets and bytes
//! per device are the drivers' own counters, read by the daemon: no program
//! runs per packet sent or received. Only sockets and devices of the
//! exporter's network namespace count.

use aya_ebpf::{
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use exporter_common::net::DropCounts;

use crate::kernel::{in_exporter_netns, kernel_offset, read_member};

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
    /// Offset of `net_device.nd_net.net`.
    NET_DEVICE_NET
);
kernel_offset!(
    /// Offset of `sock_common.skc_net.net` (`sock_common` starts every
    /// `struct sock`).
    SOCK_COMMON_NET
);

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
