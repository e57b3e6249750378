//! `block` collector: completed block requests, bytes and issue-to-
//! completion latency per disk and operation.
//!
//! Requests are counted where `/proc/diskstats` counts them: bytes as
//! each part of a request completes, the request once when its last part
//! does. The device is the request's disk (`request.q->disk`), so I/O to a
//! partition counts under its disk, as the disk's line in
//! `/proc/diskstats` does.

use crate::maps::update_failed;
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};
use exporter_common::block::{
    BLOCK_IO_ENTRIES, BlockIoKey, BlockIoStats, ISSUE_TIMES_ENTRIES, OP_FLUSH, make_dev, op_index,
};
use exporter_common::map_updates;

use crate::kernel::{kernel_offset, read_member};

/// Bound: [`BLOCK_IO_ENTRIES`] = disks × 5 operations; the daemon deletes
/// the keys of disks that are gone.
#[map]
static BLOCK_IO: PerCpuHashMap<BlockIoKey, BlockIoStats> = PerCpuHashMap::with_max_entries(BLOCK_IO_ENTRIES, 0);

/// Bound: [`ISSUE_TIMES_ENTRIES`] requests in flight; LRU eviction beyond
/// (those requests go untimed). Shared by all CPUs: a request is often
/// issued on one CPU and completed on another.
#[map]
static ISSUE_TIMES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(ISSUE_TIMES_ENTRIES, 0);

/// The kernel's `RQF_FLUSH_SEQ`, written in by the daemon; see
/// `exporter_common::block::RQF_FLUSH_SEQ_GLOBAL`.
#[unsafe(no_mangle)]
static RQF_FLUSH_SEQ: u32 = 0;

kernel_offset!(
    /// Offset of `request.q`.
    REQUEST_Q
);
kernel_offset!(
    /// Offset of `request.cmd_flags`.
    REQUEST_CMD_FLAGS
);
kernel_offset!(
    /// Offset of `request.rq_flags`.
    REQUEST_RQ_FLAGS
);
kernel_offset!(
    /// Offset of `request.__data_len`.
    REQUEST_DATA_LEN
);
kernel_offset!(
    /// Offset of `request_queue.disk`.
    QUEUE_DISK
);
kernel_offset!(
    /// Offset of `gendisk.major`.
    GENDISK_MAJOR
);
kernel_offset!(
    /// Offset of `gendisk.first_minor`.
    GENDISK_FIRST_MINOR
);

#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub(crate) fn block_rq_issue(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct request *rq)
    let rq: u64 = ctx.arg(0);
    if rq != 0 {
        let now = unsafe { bpf_ktime_get_ns() };
        // A requeued request is issued again: its latency then starts at
        // the last issue.
        if let Err(error) = ISSUE_TIMES.insert(rq, now, 0) {
            update_failed(
                &ctx,
                map_updates::ISSUE_TIMES,
                exporter_common::block::ISSUE_TIMES_MAP,
                error,
                "request in flight",
            );
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub(crate) fn block_rq_complete(ctx: RawTracePointContext) -> i32 {
    // TP_PROTO(struct request *rq, blk_status_t error, unsigned int nr_bytes)
    let rq: u64 = ctx.arg(0);
    let nr_bytes = ctx.arg::<u64>(2) as u32;
    let Some(dev) = disk_of(rq) else { return 0 };
    let (Some(cmd_flags), Some(rq_flags), Some(remaining)) = (
        read_member::<u32>(rq, &REQUEST_CMD_FLAGS),
        read_member::<u32>(rq, &REQUEST_RQ_FLAGS),
        read_member::<u32>(rq, &REQUEST_DATA_LEN),
    ) else {
        return 0;
    };
    let op = op_index(cmd_flags);
    // SAFETY: volatile so the loaded value is read, not the default.
    let flush_seq = unsafe { core::ptr::read_volatile(&RQF_FLUSH_SEQ) };
    // `__data_len` still holds what was left before this part. A write the
    // kernel follows with a cache flush (FUA or PREFLUSH on a disk that
    // cannot do them) completes its data here, inside the flush sequence,
    // and completes again, with no bytes, when the sequence ends: only
    // that last completion ends it, as in /proc/diskstats. The flush
    // request the sequence sends to the disk carries the flag too, and is
    // a request of its own.
    let in_flush_sequence = rq_flags & flush_seq != 0 && op != OP_FLUSH;
    let ends = nr_bytes >= remaining && !in_flush_sequence;

    let latency = if ends {
        // SAFETY: the value is copied out at once; an entry evicted under
        // us yields a wrong timestamp at worst, never a fault.
        let issued = unsafe { ISSUE_TIMES.get(rq) }.copied();
        if issued.is_some() {
            let _ = ISSUE_TIMES.remove(rq);
        }
        issued.map(|issued| unsafe { bpf_ktime_get_ns() }.saturating_sub(issued))
    } else {
        None
    };

    let key = BlockIoKey { dev, op };
    let Some(stats) = stats_of(&ctx, &key) else { return 0 };
    stats.bytes += u64::from(nr_bytes);
    if ends {
        stats.requests += 1;
        // Requests issued before the programs attached are not timed.
        if let Some(latency) = latency {
            stats.latency.record(latency);
        }
    }
    0
}

/// The kernel `dev_t` of the disk `rq` was sent to.
#[inline(always)]
fn disk_of(rq: u64) -> Option<u32> {
    let queue = read_member::<u64>(rq, &REQUEST_Q)?;
    let disk = read_member::<u64>(queue, &QUEUE_DISK)?;
    let major = read_member::<i32>(disk, &GENDISK_MAJOR)?;
    let minor = read_member::<i32>(disk, &GENDISK_FIRST_MINOR)?;
    Some(make_dev(major as u32, minor as u32))
}

/// This CPU's stats of `key`, created zeroed on first use.
#[inline(always)]
fn stats_of(ctx: &RawTracePointContext, key: &BlockIoKey) -> Option<&'static mut BlockIoStats> {
    if BLOCK_IO.get_ptr_mut(key).is_none() {
        // NOEXIST: another CPU creating the same key at once is not an
        // error; the lookup below finds it. A full map fails here and the
        // completion goes uncounted, counted as a failure instead.
        if let Err(error) = BLOCK_IO.insert(key, &BlockIoStats::default(), BPF_NOEXIST)
            && i64::from(error) != -EEXIST
        {
            update_failed(
                ctx,
                map_updates::BLOCK_IO,
                exporter_common::block::BLOCK_IO_MAP,
                error,
                "disk and operation",
            );
        }
    }
    // SAFETY: this CPU's copy of a per-CPU hash entry, valid for the
    // program's run; a program does not nest in itself on one CPU.
    BLOCK_IO.get_ptr_mut(key).map(|stats| unsafe { &mut *stats })
}

/// `BPF_NOEXIST` from `linux/bpf.h`.
const BPF_NOEXIST: u64 = 1;
/// What an insert with [`BPF_NOEXIST`] returns when the key is there.
const EEXIST: i64 = 17;
