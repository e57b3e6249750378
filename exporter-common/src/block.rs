//! The `block` collector's map layout.
//!
//! Completed block requests are counted per device and operation in a
//! per-CPU hash, so a completion on any CPU bumps its own copy without
//! atomics; the daemon sums the CPUs at scrape time. The device is the
//! kernel's `dev_t` of the whole disk (`request.q->disk`), named in
//! userspace as `/proc/diskstats` names it.

/// Per-CPU hash [`BlockIoKey`] → [`BlockIoStats`].
///
/// Bound: [`BLOCK_IO_ENTRIES`] keys = devices × [`OPS`] operations, so
/// up to 204 disks with every operation in use. The `device` label takes
/// one value per disk with a key, the `op` label the five of [`OP_LABELS`].
/// The daemon deletes the keys of disks that are gone, so device churn
/// (loop devices, hot-plug) does not fill it; when it is full anyway,
/// completions of new device/op pairs are not counted until room is made.
pub const BLOCK_IO_MAP: &str = "BLOCK_IO";

/// Number of entries in [`BLOCK_IO_MAP`]. Preallocated: each costs
/// `size_of::<BlockIoStats>()` (312 bytes) per possible CPU.
pub const BLOCK_IO_ENTRIES: u32 = 1024;

/// LRU hash: `struct request` address → `bpf_ktime_get_ns()` of its issue
/// to the driver (`block_rq_issue`), until it completes.
///
/// Bound: [`ISSUE_TIMES_ENTRIES`] requests in flight at once; beyond that
/// the oldest stamps are evicted and those requests are counted but not
/// timed. Requests are preallocated per hardware queue tag, so a stamp
/// left behind (a request issued before a restart of the daemon never
/// completes under it) is overwritten when the request is issued again.
/// Nothing in it becomes a label.
pub const ISSUE_TIMES_MAP: &str = "ISSUE_TIMES";

/// Number of entries in [`ISSUE_TIMES_MAP`]: well above what a host's
/// disks hold in flight at once (an NVMe queue is 1,023 deep, and busy
/// hosts keep a few hundred requests in flight).
pub const ISSUE_TIMES_ENTRIES: u32 = 16_384;

/// Global holding the kernel's `RQF_FLUSH_SEQ` request flag, written in by
/// the daemon from BTF because its value moved between kernels.
pub const RQF_FLUSH_SEQ_GLOBAL: &str = "RQF_FLUSH_SEQ";

/// Bits of `request.cmd_flags` holding the operation (`REQ_OP_MASK`,
/// `REQ_OP_BITS` = 8 since Linux 4.10).
pub const REQ_OP_MASK: u32 = 0xff;

/// `REQ_OP_READ` (`enum req_op`, UAPI-stable numbering).
pub const REQ_OP_READ: u32 = 0;
/// `REQ_OP_WRITE`.
pub const REQ_OP_WRITE: u32 = 1;
/// `REQ_OP_FLUSH`.
pub const REQ_OP_FLUSH: u32 = 2;
/// `REQ_OP_DISCARD`.
pub const REQ_OP_DISCARD: u32 = 3;

/// Index of the `op="read"` label in [`OP_LABELS`].
pub const OP_READ: u32 = 0;
/// Index of `op="write"`.
pub const OP_WRITE: u32 = 1;
/// Index of `op="discard"`.
pub const OP_DISCARD: u32 = 2;
/// Index of `op="flush"`.
pub const OP_FLUSH: u32 = 3;
/// Index of `op="other"`: secure erase, write zeroes, zone management,
/// driver-private (passthrough) commands.
pub const OP_OTHER: u32 = 4;

/// Number of operation classes.
pub const OPS: usize = 5;

/// The `op` label's values, by index.
pub const OP_LABELS: [&str; OPS] = ["read", "write", "discard", "flush", "other"];

/// The operation class of a request from its `cmd_flags`.
#[inline(always)]
pub const fn op_index(cmd_flags: u32) -> u32 {
    match cmd_flags & REQ_OP_MASK {
        REQ_OP_READ => OP_READ,
        REQ_OP_WRITE => OP_WRITE,
        REQ_OP_DISCARD => OP_DISCARD,
        REQ_OP_FLUSH => OP_FLUSH,
        _ => OP_OTHER,
    }
}

/// Bits of the minor number in the kernel's internal `dev_t`
/// (`MINORBITS`); this is not the userspace `dev_t` encoding.
pub const MINOR_BITS: u32 = 20;

/// The kernel's `MKDEV(major, minor)`.
#[inline(always)]
pub const fn make_dev(major: u32, minor: u32) -> u32 {
    (major << MINOR_BITS) | (minor & ((1 << MINOR_BITS) - 1))
}

/// A disk and an operation class.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockIoKey {
    /// [`make_dev`] of the disk's major and first minor.
    pub dev: u32,
    /// One of `OP_READ`..=`OP_OTHER`.
    pub op: u32,
}

const _: () = assert!(size_of::<BlockIoKey>() == 8);

impl BlockIoKey {
    /// The disk's major number.
    pub const fn major(&self) -> u32 {
        self.dev >> MINOR_BITS
    }

    /// The disk's (first) minor number.
    pub const fn minor(&self) -> u32 {
        self.dev & ((1 << MINOR_BITS) - 1)
    }
}

/// Completed requests of one disk and operation class, on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockIoStats {
    /// Requests completed in full (a request the driver completes in
    /// several parts counts once, at its last part).
    pub requests: u64,
    /// Bytes completed, every part of a request counted as it completes.
    pub bytes: u64,
    /// Issue to the driver (`block_rq_issue`) until completion, of the
    /// completed requests whose issue was seen.
    pub latency: crate::histogram::Log2Histogram,
}

const _: () = assert!(size_of::<BlockIoStats>() == 16 + size_of::<crate::histogram::Log2Histogram>());

impl BlockIoStats {
    /// Adds another CPU's counts to these, wrapping as kernel counters do.
    pub fn merge(&mut self, other: &Self) {
        self.requests = self.requests.wrapping_add(other.requests);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.latency.merge(&other.latency);
    }
}

/// The kernel struct members the programs read, as globals the daemon
/// writes the offsets into.
pub mod offsets {
    /// `request.q`: the request's queue.
    pub const REQUEST_Q: &str = "REQUEST_Q";
    /// `request.cmd_flags`: operation and flags.
    pub const REQUEST_CMD_FLAGS: &str = "REQUEST_CMD_FLAGS";
    /// `request.rq_flags`: the block layer's own flags.
    pub const REQUEST_RQ_FLAGS: &str = "REQUEST_RQ_FLAGS";
    /// `request.__data_len`: bytes not yet completed.
    pub const REQUEST_DATA_LEN: &str = "REQUEST_DATA_LEN";
    /// `request_queue.disk`: the queue's disk.
    pub const QUEUE_DISK: &str = "QUEUE_DISK";
    /// `gendisk.major`.
    pub const GENDISK_MAJOR: &str = "GENDISK_MAJOR";
    /// `gendisk.first_minor`: the whole disk's minor.
    pub const GENDISK_FIRST_MINOR: &str = "GENDISK_FIRST_MINOR";
}

crate::user_pod!(BlockIoKey, BlockIoStats);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_map_to_their_class() {
        assert_eq!(op_index(0), OP_READ);
        assert_eq!(op_index(1), OP_WRITE);
        assert_eq!(op_index(2), OP_FLUSH);
        assert_eq!(op_index(3), OP_DISCARD);
        // Flags above the operation bits do not change the class:
        // REQ_SYNC | REQ_FUA | REQ_PREFLUSH on a write is still a write.
        assert_eq!(op_index(1 | (1 << 11) | (1 << 17) | (1 << 18)), OP_WRITE);
        // Secure erase (5), write zeroes (9), zone reset (17), driver in/out (34, 35).
        for op in [5, 7, 9, 11, 17, 19, 34, 35, 255] {
            assert_eq!(op_index(op), OP_OTHER, "{op}");
        }
        assert_eq!(OP_LABELS[OP_READ as usize], "read");
        assert_eq!(OP_LABELS[OP_WRITE as usize], "write");
        assert_eq!(OP_LABELS[OP_DISCARD as usize], "discard");
        assert_eq!(OP_LABELS[OP_FLUSH as usize], "flush");
        assert_eq!(OP_LABELS[OP_OTHER as usize], "other");
    }

    #[test]
    fn dev_round_trips() {
        let key = BlockIoKey { dev: make_dev(259, 65_536), op: OP_READ };
        assert_eq!((key.major(), key.minor()), (259, 65_536));
        let key = BlockIoKey { dev: make_dev(7, 3), op: OP_READ };
        assert_eq!((key.major(), key.minor()), (7, 3));
    }
}
