//! `net` collector: packets dropped per drop reason.
//!
//! One program run per dropped packet (`skb/kfree_skb`; packets consumed
//! normally go through `consume_skb`, another tracepoint). Packets and bytes
//! per device are the drivers' own counters, read by the daemon: no program
//! runs per packet sent or received. Only sockets and devices of the
//! exporter's network namespace count.

use crate::maps::this_cpu;
use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use exporter_common::net::DropCounts;

use crate::kernel::{in_exporter_netns, kernel_offset, load_member};

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
/// data), else its device's; 0 for neither.
///
/// # Safety
///
/// `skb` must be the BTF-typed `struct sk_buff *` of a BTF tracepoint.
#[inline(always)]
unsafe fn drop_netns(skb: *const u8) -> u64 {
    // SAFETY: each pointer loaded from a BTF-typed one keeps its type, so
    // every load below is checked by the verifier and cannot fault.
    unsafe {
        let sk: *const u8 = load_member(skb, &SK_BUFF_SK);
        if !sk.is_null() {
            // `sock_common` is the first member of `struct sock`.
            return load_member::<*const u8>(sk, &SOCK_COMMON_NET) as u64;
        }
        let dev: *const u8 = load_member(skb, &SK_BUFF_DEV);
        if dev.is_null() {
            return 0;
        }
        load_member::<*const u8>(dev, &NET_DEVICE_NET) as u64
    }
}

/// A BTF tracepoint: under a flood of drops (a full socket buffer drops
/// every datagram) this runs per packet, and plain loads keep it to a few
/// nanoseconds above the kernel's floor where probe reads cost 25-35 ns each.
#[btf_tracepoint(function = "kfree_skb")]
pub(crate) fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct sk_buff *skb, void *location,
    //          enum skb_drop_reason reason, struct sock *rx_sk)
    let skb: *const u8 = ctx.arg(0);
    let reason: u32 = ctx.arg(2);
    // Packets with neither a socket nor a device cannot be placed in a
    // namespace and are not counted.
    // SAFETY: `skb` is the tracepoint's BTF-typed first argument.
    if !in_exporter_netns(unsafe { drop_netns(skb) }) {
        return 0;
    }
    let Some(drops) = this_cpu(&NET_DROPS) else { return 0 };
    // The array index is the bound on the label; the rest count as other.
    match drops.reasons.get_mut(reason as usize) {
        Some(count) => *count += 1,
        None => drops.other += 1,
    }
    0
}
