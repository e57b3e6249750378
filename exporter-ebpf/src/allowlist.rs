//! The allowlist: a socket filter attached to every listening socket before
//! `listen()` (accepted sockets inherit it). It drops packets whose source
//! is outside the active allowlist trie — for a listener that means the
//! SYN, so no connection, TLS handshake or line of userspace code is spent
//! on the source — and counts what it saw per source and in total.
//!
//! There are two tries, [`ALLOWLIST`] and [`ALLOWLIST_NEXT`], and
//! [`ALLOWLIST_ACTIVE`] says which one is in force: the daemon builds a new
//! policy in the other one, reads it back, and flips the index, so a reload
//! is one atomic switch whatever the sizes of the old and new lists, and a
//! failed one leaves the policy in force untouched.
//!
//! On TCP sockets `skb->data` is the TCP header; the IP header is read
//! relative to the network header.

use crate::maps::{this_cpu, update_failed};
use aya_ebpf::{
    bindings::bpf_hdr_start_off::BPF_HDR_START_NET,
    helpers::bpf_ktime_get_ns,
    helpers::generated::bpf_skb_load_bytes_relative,
    macros::{map, socket_filter},
    maps::{Array, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, lpm_trie::Key},
    programs::SkBuffContext,
};
use exporter_common::allowlist::{ALLOWLIST_ENTRIES, BANNED_ENTRIES, SOURCES_DEFAULT_ENTRIES, SourceCounters};
use exporter_common::map_updates;

/// Trie 0. Bound: [`ALLOWLIST_ENTRIES`] ranges (the daemon refuses more). No label.
#[map]
static ALLOWLIST: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(ALLOWLIST_ENTRIES, 0);

/// Trie 1, the same bound as [`ALLOWLIST`].
#[map]
static ALLOWLIST_NEXT: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(ALLOWLIST_ENTRIES, 0);

/// Bound: one entry, the index (0 or 1) of the trie in force.
#[map]
static ALLOWLIST_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Bound: [`SOURCES_DEFAULT_ENTRIES`] sources, or
/// `--web.allowlist-sources-tracked` (set before load); LRU eviction
/// beyond. The `source` label's values are its keys.
#[map]
static ALLOWLIST_SOURCES: LruPerCpuHashMap<[u8; 16], SourceCounters> =
    LruPerCpuHashMap::with_max_entries(SOURCES_DEFAULT_ENTRIES, 0);

/// Bound: [`BANNED_ENTRIES`] sources (LRU). Source → end of its ban
/// (`bpf_ktime_get_ns`); written by the daemon only.
#[map]
static ALLOWLIST_BANNED: LruHashMap<[u8; 16], u64> = LruHashMap::with_max_entries(BANNED_ENTRIES, 0);

/// Bound: one entry per CPU; feeds `kernel_exporter_packets_total{verdict}`.
#[map]
static ALLOWLIST_TOTALS: PerCpuArray<SourceCounters> = PerCpuArray::with_max_entries(1, 0);

const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Returns 0 (drop) or the packet's length (keep it whole).
#[socket_filter]
pub(crate) fn allowlist(ctx: SkBuffContext) -> i64 {
    let flags = ctx.load::<u8>(TCP_FLAGS_OFFSET).unwrap_or(0);
    let syn = u64::from(flags & (TCP_SYN | TCP_ACK) == TCP_SYN);
    let source = source_address(&ctx);
    // Fail closed: a packet whose source cannot be read is not allowed.
    let allowed = source.is_some_and(|addr| {
        let key = Key::new(128, addr);
        // An array's one entry always exists; anything but 1 means trie 0.
        match ALLOWLIST_ACTIVE.get(0).copied().unwrap_or(0) {
            1 => ALLOWLIST_NEXT.get(key).is_some(),
            _ => ALLOWLIST.get(key).is_some(),
        }
    });
    // Only an allowed source can be banned: the others are dropped anyway.
    let banned = allowed
        && source.is_some_and(|addr| {
            // SAFETY: the value, a u64 the daemon writes whole, is read once
            // in place; bpf_ktime_get_ns takes no argument.
            unsafe { ALLOWLIST_BANNED.get(&addr) }.is_some_and(|&until| unsafe { bpf_ktime_get_ns() } < until)
        });
    let allowed = allowed && !banned;
    let banned = u64::from(banned);
    let bump = |counters: &mut SourceCounters| {
        if allowed {
            counters.syns_allowed += syn;
            counters.packets_allowed += 1;
        } else {
            counters.syns_dropped += syn;
            counters.packets_dropped += 1;
            counters.syns_banned += syn * banned;
            counters.packets_banned += banned;
        }
    };
    if let Some(totals) = this_cpu(&ALLOWLIST_TOTALS) {
        bump(totals);
    }
    if let Some(addr) = source {
        count_source(&ctx, &addr, bump);
    }
    if allowed { i64::from(ctx.len()) } else { 0 }
}

/// This CPU's counters of `addr`, created on first sight (evicting the
/// least recently used source when the map is full).
#[inline(always)]
fn count_source(ctx: &SkBuffContext, addr: &[u8; 16], bump: impl FnOnce(&mut SourceCounters)) {
    let mut slot = ALLOWLIST_SOURCES.get_ptr_mut(addr);
    if slot.is_none() {
        // BPF_NOEXIST: another CPU may have created it meanwhile; its
        // entry (with this CPU's slot zero) is as good.
        if let Err(error) = ALLOWLIST_SOURCES.insert(addr, SourceCounters::default(), 1)
            && i64::from(error) != -EEXIST
        {
            update_failed(
                ctx,
                map_updates::ALLOWLIST_SOURCES,
                exporter_common::allowlist::SOURCES_MAP,
                error,
                "source address",
            );
        }
        slot = ALLOWLIST_SOURCES.get_ptr_mut(addr);
    }
    if let Some(counters) = slot {
        // SAFETY: this CPU's value of a per-CPU map; see `allowlist`.
        bump(unsafe { &mut *counters });
    }
}

/// The packet's IP source address, IPv4 as IPv4-mapped IPv6.
#[inline(always)]
fn source_address(ctx: &SkBuffContext) -> Option<[u8; 16]> {
    let mut first = [0u8; 1];
    load_net(ctx, 0, &mut first)?;
    let mut addr = [0u8; 16];
    match first[0] >> 4 {
        4 => {
            let mut v4 = [0u8; 4];
            // struct iphdr: saddr at byte 12.
            load_net(ctx, 12, &mut v4)?;
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..].copy_from_slice(&v4);
        }
        // struct ipv6hdr: saddr at byte 8.
        6 => load_net(ctx, 8, &mut addr)?,
        _ => return None,
    }
    Some(addr)
}

/// Copies `dst.len()` bytes at `offset` from the network header.
#[inline(always)]
fn load_net<const N: usize>(ctx: &SkBuffContext, offset: u32, dst: &mut [u8; N]) -> Option<()> {
    // SAFETY: the helper writes at most N bytes into `dst`, which holds N.
    let rc = unsafe {
        bpf_skb_load_bytes_relative(ctx.skb.skb.cast(), offset, dst.as_mut_ptr().cast(), N as u32, BPF_HDR_START_NET)
    };
    (rc == 0).then_some(())
}

/// What an insert with `BPF_NOEXIST` returns when the key is there.
const EEXIST: i64 = 17;
