//! Exposing the kernel's log2 histograms
//! ([`exporter_common::histogram::Log2Histogram`]) as Prometheus histograms.
//!
//! The exposed bounds are the powers of two from 2^10 ns (about 1 µs) to
//! 2^33 ns (about 8.6 s): 24 bounds plus `+Inf`. Each falls exactly on a
//! kernel bucket edge, so the cumulative counts need no interpolation: the
//! bucket `le=2^k ns` counts the values below 2^k ns (a value of exactly
//! 2^k ns, a one-in-2^k case, is counted from the next bound on). Values
//! under 1 µs all land in the first bucket, values over 8.6 s only in `+Inf`.
//!
//! At the extremes (unit-tested below): a value of any size is counted,
//! in the kernel's open-ended top bucket (2^35 ns, 34 s, and up) and so in
//! `+Inf` and `_count`, never dropped; `_sum` is exact up to 2^64 ns of
//! total recorded time (584 years) and wraps there. Counts are u64 written
//! as exact integers; like every counter of this exporter and the
//! kernel's own, they wrap to 0 after 2^64 events, which Prometheus
//! treats as a counter reset (584 years at a billion events a second).

use exporter_common::histogram::{LOG2_BUCKETS, Log2Histogram};

use crate::exposition::encode::{Encoder, Family, Series};

/// log2 of the smallest exposed bound, in nanoseconds.
const FIRST_BOUND_LOG2: usize = 10;
/// log2 of the largest exposed bound, in nanoseconds.
const LAST_BOUND_LOG2: usize = 33;
/// Number of finite bounds.
const BOUNDS: usize = LAST_BOUND_LOG2 - FIRST_BOUND_LOG2 + 1;

// Prometheus histograms cost one series per bound; keep it near two dozen.
const _: () = assert!(BOUNDS <= 24);

const _: () = assert!(LAST_BOUND_LOG2 < LOG2_BUCKETS);

/// The `le` value of bound `k` (2^k ns) in seconds, as it is written.
fn bound_label(log2_ns: usize) -> String {
    let seconds = (1u64 << log2_ns) as f64 / 1e9;
    let mut digits = ryu::Buffer::new();
    digits.format_finite(seconds).to_owned()
}

/// The precomputed series of one histogram (one label set).
pub(crate) struct HistogramSeries {
    buckets: Box<[Series]>,
    infinity: Series,
    sum: Series,
    count: Series,
}

impl HistogramSeries {
    pub(crate) fn new(family: &Family, labels: &[(&str, &str)]) -> Self {
        let bucket_name = format!("{}_bucket", family.name);
        let with_le = |le: &str| {
            let mut labels = labels.to_vec();
            labels.push(("le", le));
            Series::named(&bucket_name, &labels)
        };
        Self {
            buckets: (FIRST_BOUND_LOG2..=LAST_BOUND_LOG2).map(|k| with_le(&bound_label(k))).collect(),
            infinity: with_le("+Inf"),
            sum: Series::named(&format!("{}_sum", family.name), labels),
            count: Series::named(&format!("{}_count", family.name), labels),
        }
    }
}

impl Encoder<'_> {
    /// Writes one histogram's buckets, sum and count (the family header is
    /// the caller's).
    pub(crate) fn histogram(&mut self, series: &HistogramSeries, histogram: &Log2Histogram) {
        // Cumulative count of every kernel bucket below 2^FIRST_BOUND_LOG2.
        let mut cumulative = histogram.buckets[..FIRST_BOUND_LOG2].iter().fold(0u64, |sum, n| sum.wrapping_add(*n));
        for (bucket, bound) in series.buckets.iter().zip(FIRST_BOUND_LOG2..) {
            // le = 2^bound ns holds every kernel bucket i < bound; the
            // previous step counted up to bound - 1.
            if bound > FIRST_BOUND_LOG2 {
                cumulative = cumulative.wrapping_add(histogram.buckets[bound - 1]);
            }
            self.sample(bucket, cumulative);
        }
        let count = histogram.count();
        self.sample(&series.infinity, count);
        self.sample_f64(&series.sum, histogram.sum_ns as f64 / 1e9);
        self.sample(&series.count, count);
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    const LATENCY: Family = Family::histogram("kernel_test_latency_seconds", "Test latency.");

    fn encode(histogram: &Log2Histogram) -> Vec<(String, String)> {
        let series = HistogramSeries::new(&LATENCY, &[("op", "read")]);
        let mut buf = BytesMut::new();
        Encoder::new(&mut buf).histogram(&series, histogram);
        std::str::from_utf8(&buf)
            .unwrap()
            .lines()
            .map(|line| {
                let (key, value) = line.rsplit_once(' ').unwrap();
                (key.to_owned(), value.to_owned())
            })
            .collect()
    }

    #[test]
    fn about_two_dozen_exact_bounds() {
        assert_eq!(BOUNDS, 24);
        assert_eq!(bound_label(10), "1.024e-6");
        assert_eq!(bound_label(20), "0.001048576");
        assert_eq!(bound_label(30), "1.073741824");
        assert_eq!(bound_label(33), "8.589934592");
    }

    #[test]
    fn buckets_are_cumulative_and_exact() {
        let mut histogram = Log2Histogram::default();
        histogram.record(5); // below the first bound
        histogram.record(1023); // still below 2^10 ns
        histogram.record(1024); // kernel bucket [2^10, 2^11)
        histogram.record(3_000_000); // 3 ms: bucket 21
        histogram.record(60_000_000_000); // 60 s: over the last bound
        let lines = encode(&histogram);
        assert_eq!(lines.len(), BOUNDS + 3);
        let value = |key: &str| lines.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap();

        // Values in [2^10, 2^11) ns are counted from le=2^11 ns on.
        assert_eq!(value("kernel_test_latency_seconds_bucket{op=\"read\",le=\"1.024e-6\"}"), "2");
        assert_eq!(value("kernel_test_latency_seconds_bucket{op=\"read\",le=\"2.048e-6\"}"), "3");
        assert_eq!(value("kernel_test_latency_seconds_bucket{op=\"read\",le=\"0.002097152\"}"), "3");
        assert_eq!(value("kernel_test_latency_seconds_bucket{op=\"read\",le=\"0.004194304\"}"), "4");
        assert_eq!(value("kernel_test_latency_seconds_bucket{op=\"read\",le=\"8.589934592\"}"), "4");
        assert_eq!(value("kernel_test_latency_seconds_bucket{op=\"read\",le=\"+Inf\"}"), "5");
        assert_eq!(value("kernel_test_latency_seconds_count{op=\"read\"}"), "5");
        let sum: f64 = value("kernel_test_latency_seconds_sum{op=\"read\"}").parse().unwrap();
        assert!((sum - 60.003_002_052).abs() < 1e-9, "{sum}");

        // Monotonic non-decreasing.
        let counts: Vec<u64> = lines[..=BOUNDS].iter().map(|(_, v)| v.parse().unwrap()).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    }

    #[test]
    fn values_at_the_top_bucket_are_counted_in_inf_only() {
        let mut histogram = Log2Histogram::default();
        // 34.4 s (the kernel's top bucket starts here), an hour, a day.
        for ns in [1u64 << 35, 3_600_000_000_000, 86_400_000_000_000] {
            histogram.record(ns);
        }
        assert_eq!(histogram.buckets[LOG2_BUCKETS - 1], 3);
        let lines = encode(&histogram);
        for (key, value) in &lines[..BOUNDS] {
            assert_eq!(value, "0", "{key}");
        }
        assert_eq!(lines[BOUNDS], ("kernel_test_latency_seconds_bucket{op=\"read\",le=\"+Inf\"}".into(), "3".into()));
        assert_eq!(lines[BOUNDS + 2].1, "3");
        let sum: f64 = lines[BOUNDS + 1].1.parse().unwrap();
        assert!((sum - (34.359_738_368 + 3_600.0 + 86_400.0)).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn counts_near_u64_max_are_written_exactly() {
        let mut histogram = Log2Histogram::default();
        histogram.buckets[0] = u64::MAX - 5;
        histogram.buckets[LOG2_BUCKETS - 1] = 5;
        let lines = encode(&histogram);
        // Exact decimal integers, not rounded through f64 (2^64 - 6 has no
        // f64 of its own).
        assert_eq!(lines[0].1, "18446744073709551610");
        assert_eq!(lines[BOUNDS - 1].1, "18446744073709551610");
        assert_eq!(lines[BOUNDS].1, "18446744073709551615");
        assert_eq!(lines[BOUNDS + 2].1, "18446744073709551615");

        // One more event on another CPU wraps the count to 0, as the
        // kernel's counters wrap; the top bucket is still exact.
        let mut other_cpu = Log2Histogram::default();
        other_cpu.record(1 << 40);
        histogram.merge(&other_cpu);
        assert_eq!(histogram.buckets[LOG2_BUCKETS - 1], 6);
        let lines = encode(&histogram);
        assert_eq!(lines[BOUNDS].1, "0");
        assert_eq!(lines[BOUNDS + 2].1, "0");
    }
}
