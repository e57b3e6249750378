//! The one layout of every latency histogram: log2 buckets of seconds with
//! Prometheus' `(lower, upper]` convention, kept per CPU in the kernel and
//! merged at scrape time.
//!
//! Bucket `b` (1 ≤ b ≤ [`TOP_FINITE_BUCKET`]) counts values `v` with
//! `2^(b-31) s < v <= 2^(b-30) s`: its upper edge is exactly a power of two
//! of seconds, which is both a classic `le` bound and the upper edge of
//! native-histogram bucket `b - 30` of schema 0 ([`NATIVE_INDEX_OFFSET`]).
//! Bucket 0 holds 0 ns only, the native zero bucket (its threshold 2^-30 s
//! is below 1 ns). The last bucket ([`LOG2_BUCKETS`] - 1) holds everything
//! above 2^10 s (17 minutes): a histogram saturates there instead of losing
//! the event. Native histograms have no open-ended bucket, so the daemon
//! writes it as the native bucket (2^10, 2^11] s, where the native
//! histogram saturates; no latency the collectors time comes near 17
//! minutes (TCP gives up connecting after about 2).
//!
//! Timestamps are integer nanoseconds, so `v <= 2^k s` is
//! `ns <= floor(1e9 * 2^k)` and the bucket is found with integers only:
//! `ceil(ns * 2^30 / 1e9)`, the value in units of 2^-30 s rounded up
//! (`ns * 2^21 / 5^9`, one shift and one division by a constant), then a
//! ceiling log2 by six halving steps. Every edge is exact (unit-tested at
//! each edge and 1 ns either side against 128-bit arithmetic).

/// Number of buckets: the zero bucket, [`TOP_FINITE_BUCKET`] finite log2
/// buckets up to 2^10 s, and the open-ended top one. 42 u64 plus the sum is
/// 344 bytes per histogram and CPU; a classic exposition shows 24 of the
/// bounds ([`CLASSIC_FIRST_BOUND`] ..= [`CLASSIC_LAST_BOUND`]).
pub const LOG2_BUCKETS: usize = 42;

/// The highest bucket with a finite upper edge (2^10 s).
pub const TOP_FINITE_BUCKET: usize = LOG2_BUCKETS - 2;

/// Schema-0 native bucket index of kernel bucket `b` is `b - NATIVE_INDEX_OFFSET`.
pub const NATIVE_INDEX_OFFSET: i32 = 30;

/// log2 of the smallest classic `le` bound, in seconds (2^-20 s, 0.95 µs).
pub const CLASSIC_FIRST_BOUND: i32 = -20;
/// log2 of the largest classic `le` bound, in seconds (2^3 s, 8 s).
pub const CLASSIC_LAST_BOUND: i32 = 3;

/// The upper edge of [`TOP_FINITE_BUCKET`] in nanoseconds: 2^10 s.
pub const TOP_FINITE_NS: u64 = 1_024_000_000_000;

/// 5^9: 1e9 = 5^9 * 2^9, so `ns * 2^30 / 1e9 = ns * 2^21 / 5^9`.
const FIVE_POW_9: u64 = 1_953_125;

const _: () = assert!(TOP_FINITE_BUCKET as i32 - NATIVE_INDEX_OFFSET == 10);
// `ns << 21` cannot overflow below the top edge.
const _: () = assert!(TOP_FINITE_NS < 1 << 43);

/// A per-CPU latency histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Log2Histogram {
    /// Events per bucket (see the module documentation for the edges).
    pub buckets: [u64; LOG2_BUCKETS],
    /// Sum of all recorded values, in nanoseconds (wraps after 584 years).
    pub sum_ns: u64,
}

const _: () = assert!(size_of::<Log2Histogram>() == (LOG2_BUCKETS + 1) * 8);

impl Default for Log2Histogram {
    fn default() -> Self {
        Self { buckets: [0; LOG2_BUCKETS], sum_ns: 0 }
    }
}

impl Log2Histogram {
    /// Records one value.
    #[inline(always)]
    pub fn record(&mut self, ns: u64) {
        let bucket = bucket(ns);
        // `bucket` is already bounded; the explicit check is what lets
        // the verifier prove the index in range.
        if let Some(count) = self.buckets.get_mut(bucket) {
            *count += 1;
        }
        self.sum_ns = self.sum_ns.wrapping_add(ns);
    }

    /// Adds another CPU's histogram to this one.
    pub fn merge(&mut self, other: &Self) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine = mine.wrapping_add(*theirs);
        }
        self.sum_ns = self.sum_ns.wrapping_add(other.sum_ns);
    }

    /// Number of recorded values.
    pub fn count(&self) -> u64 {
        self.buckets.iter().fold(0u64, |sum, n| sum.wrapping_add(*n))
    }
}

/// The bucket of a value of `ns` nanoseconds: the smallest `b` with
/// `ns <= floor(1e9 * 2^(b-30))`, or the open-ended top bucket.
#[inline(always)]
pub const fn bucket(ns: u64) -> usize {
    if ns > TOP_FINITE_NS {
        return LOG2_BUCKETS - 1;
    }
    // The value in units of 2^-30 s, rounded up: v <= 2^k units exactly
    // when this is <= 2^k, because 2^k is an integer. Not `div_ceil`: that
    // is a division and a remainder, two instructions in the program.
    #[allow(clippy::manual_div_ceil)]
    let units = ((ns << 21) + (FIVE_POW_9 - 1)) / FIVE_POW_9;
    if units <= 1 { 0 } else { floor_log2(units - 1) + 1 }
}

/// `floor(log2(value))` for `value >= 1`, without loops or a count-leading-
/// zeros instruction (BPF has none): six halving steps.
#[inline(always)]
const fn floor_log2(mut value: u64) -> usize {
    let mut log = 0usize;
    if value >= 1 << 32 {
        value >>= 32;
        log += 32;
    }
    if value >= 1 << 16 {
        value >>= 16;
        log += 16;
    }
    if value >= 1 << 8 {
        value >>= 8;
        log += 8;
    }
    if value >= 1 << 4 {
        value >>= 4;
        log += 4;
    }
    if value >= 1 << 2 {
        value >>= 2;
        log += 2;
    }
    if value >= 1 << 1 {
        log += 1;
    }
    log
}

/// The upper edge of finite bucket `b` in nanoseconds: `floor(1e9 * 2^(b-30))`
/// (bucket 0: 0 ns).
pub const fn upper_edge_ns(b: usize) -> u64 {
    if b >= 30 { 1_000_000_000u64 << (b - 30) } else { (1_000_000_000u64 << b) >> 30 }
}

crate::user_pod!(Log2Histogram);

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket by exact rational arithmetic: smallest b with
    /// ns * 2^30 <= 1e9 * 2^b.
    fn reference(ns: u64) -> usize {
        (0..=TOP_FINITE_BUCKET).find(|&b| (ns as u128) << 30 <= 1_000_000_000u128 << b).unwrap_or(LOG2_BUCKETS - 1)
    }

    #[test]
    fn every_edge_and_one_nanosecond_either_side_is_exact() {
        for b in 0..=TOP_FINITE_BUCKET {
            let edge = upper_edge_ns(b);
            assert_eq!(edge as u128, (1_000_000_000u128 << b) >> 30, "edge of {b}");
            assert_eq!(bucket(edge), b, "{edge} ns is the top of bucket {b}");
            assert_eq!(bucket(edge + 1), b + 1, "{} ns is in the next bucket", edge + 1);
            if edge > 0 {
                assert_eq!(bucket(edge - 1), reference(edge - 1));
            }
        }
        assert_eq!(upper_edge_ns(TOP_FINITE_BUCKET), TOP_FINITE_NS);
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 1);
        assert_eq!(bucket(2), 2);
        assert_eq!(bucket(1_000_000_000), 30, "1 s is the top of the bucket le=1");
        assert_eq!(bucket(1_000_000_001), 31);
        assert_eq!(bucket(u64::MAX), LOG2_BUCKETS - 1);
    }

    #[test]
    fn matches_exact_arithmetic_everywhere() {
        // Dense near zero, then a deterministic spread over every magnitude.
        for ns in 0..100_000 {
            assert_eq!(bucket(ns), reference(ns), "{ns}");
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ns = x >> (x % 64);
            assert_eq!(bucket(ns), reference(ns), "{ns}");
        }
    }

    #[test]
    fn record_and_merge() {
        let mut a = Log2Histogram::default();
        a.record(1500);
        a.record(u64::MAX / 2);
        let mut b = Log2Histogram::default();
        b.record(0);
        b.merge(&a);
        assert_eq!(b.count(), 3);
        assert_eq!(b.buckets[0], 1);
        // 1500 ns is in (2^-20 s, 2^-19 s] = (953.7, 1907.3] ns.
        assert_eq!(b.buckets[11], 1);
        assert_eq!(b.buckets[LOG2_BUCKETS - 1], 1);
    }

    #[test]
    fn the_top_bucket_takes_any_size_and_everything_wraps_at_u64() {
        let mut h = Log2Histogram::default();
        h.record(u64::MAX);
        h.record(TOP_FINITE_NS + 1);
        h.record(TOP_FINITE_NS);
        assert_eq!(h.buckets[LOG2_BUCKETS - 1], 2, "saturates in the top bucket, nothing lost");
        assert_eq!(h.buckets[TOP_FINITE_BUCKET], 1);
        // The sum wraps (2^64 ns is 584 years of recorded time).
        assert_eq!(h.sum_ns, 2 * TOP_FINITE_NS);

        let mut full = Log2Histogram::default();
        full.buckets[3] = u64::MAX;
        full.sum_ns = u64::MAX;
        full.merge(&h);
        assert_eq!(full.count(), 2, "u64::MAX + 3 wraps to 2");
        assert_eq!(full.sum_ns, 2 * TOP_FINITE_NS - 1);
    }
}
