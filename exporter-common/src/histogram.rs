//! The one layout of every latency histogram: log2 buckets of nanoseconds,
//! kept per CPU in the kernel and merged at scrape time.
//!
//! Bucket `i` counts values in `[2^i, 2^(i+1))` ns (bucket 0 also holds 0).
//! The last bucket holds everything from `2^(LOG2_BUCKETS-1)` ns (about 34
//! seconds) up: a histogram at its top bucket saturates there instead of
//! losing the event. The daemon exposes cumulative buckets at power-of-two
//! bounds, which fall exactly on bucket edges, so nothing is interpolated.

/// Number of buckets; the top one is open-ended.
pub const LOG2_BUCKETS: usize = 36;

/// A per-CPU latency histogram.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Log2Histogram {
    /// Events per log2 bucket.
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
        let bucket = log2_bucket(ns);
        // `log2_bucket` is already bounded; the explicit check is what lets
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

/// `floor(log2(ns))` clamped to the last bucket, without loops or a count-
/// leading-zeros instruction (BPF has none): six halving steps.
#[inline(always)]
pub const fn log2_bucket(ns: u64) -> usize {
    let mut value = ns;
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
    if log >= LOG2_BUCKETS { LOG2_BUCKETS - 1 } else { log }
}

crate::user_pod!(Log2Histogram);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_floor_log2_and_saturate() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 0);
        assert_eq!(log2_bucket(2), 1);
        assert_eq!(log2_bucket(3), 1);
        assert_eq!(log2_bucket(1023), 9);
        assert_eq!(log2_bucket(1024), 10);
        for shift in 0..LOG2_BUCKETS {
            assert_eq!(log2_bucket(1 << shift), shift);
            assert_eq!(log2_bucket((1 << shift) + 1).min(shift), shift);
        }
        assert_eq!(log2_bucket(1 << 40), LOG2_BUCKETS - 1);
        assert_eq!(log2_bucket(u64::MAX), LOG2_BUCKETS - 1);
    }

    #[test]
    fn record_and_merge() {
        let mut a = Log2Histogram::default();
        a.record(1500);
        a.record(u64::MAX / 2);
        let mut b = Log2Histogram::default();
        b.record(1);
        b.merge(&a);
        assert_eq!(b.count(), 3);
        assert_eq!(b.buckets[0], 1);
        assert_eq!(b.buckets[10], 1);
        assert_eq!(b.buckets[LOG2_BUCKETS - 1], 1);
    }

    #[test]
    fn the_top_bucket_takes_any_size_and_everything_wraps_at_u64() {
        let mut h = Log2Histogram::default();
        h.record(u64::MAX);
        h.record(1 << 35);
        assert_eq!(h.buckets[LOG2_BUCKETS - 1], 2, "saturates in the top bucket, nothing lost");
        // The sum wraps (2^64 ns is 584 years of recorded time).
        assert_eq!(h.sum_ns, (1 << 35) - 1);

        let mut full = Log2Histogram::default();
        full.buckets[3] = u64::MAX;
        full.sum_ns = u64::MAX;
        full.merge(&h);
        assert_eq!(full.count(), 1, "u64::MAX + 2 wraps to 1");
        assert_eq!(full.sum_ns, (1 << 35) - 2);
    }
}
