//! Exposing the kernel's log2 histograms
//! ([`exporter_common::histogram::Log2Histogram`]) as Prometheus histograms:
//! classic buckets in every format, and in protobuf also the native part.
//!
//! Classic: the bounds are the powers of two of seconds from 2^-20 s
//! (0.95 µs) to 2^3 s (8 s): 24 bounds plus `+Inf`, 27 series with `_sum`
//! and `_count`. Each is a kernel bucket's upper edge, so the cumulative
//! counts are exact: `le=2^k` counts the values up to and including 2^k s.
//! Values under 0.95 µs all land in the first bucket, values over 8 s only
//! in `+Inf`.
//!
//! Native (protobuf only): schema 0, whose bucket `i` is `(2^(i-1), 2^i]`
//! seconds: exactly kernel bucket `i + 30`, so every kernel bucket is
//! exposed as it is, one series per histogram. The zero bucket is kernel
//! bucket 0 (0 ns) with threshold 2^-30 s. A native histogram has no
//! open-ended bucket, and Prometheus rejects one whose buckets do not add
//! up to its count, so the kernel's open-ended top bucket (over 2^10 s, 17
//! minutes) is written as native bucket 11, (2^10, 2^11] s: the native
//! histogram saturates there (a value over 2^11 s is counted, as "over 17
//! minutes", not placed). No latency the collectors time gets near it.
//!
//! At the extremes (unit-tested below): a value of any size is counted,
//! never dropped; `_sum` is exact up to 2^64 ns of total recorded time
//! (584 years) and wraps there. Counts are u64 written as exact integers;
//! like every counter of this exporter and the kernel's own, they wrap to
//! 0 after 2^64 events, which Prometheus treats as a counter reset (584
//! years at a billion events a second).

use exporter_common::histogram::{
    CLASSIC_FIRST_BOUND, CLASSIC_LAST_BOUND, LOG2_BUCKETS, Log2Histogram, NATIVE_INDEX_OFFSET, TOP_FINITE_BUCKET,
};

use crate::exposition::{
    encode::{Encoder, Family, Format, Series},
    protobuf::Native,
};

/// Number of finite classic bounds.
const BOUNDS: usize = (CLASSIC_LAST_BOUND - CLASSIC_FIRST_BOUND + 1) as usize;

// Classic histograms cost one series per bound; keep it near two dozen.
const _: () = assert!(BOUNDS <= 24);

/// Kernel bucket whose upper edge is the first classic bound.
const FIRST_BOUND_BUCKET: usize = (CLASSIC_FIRST_BOUND + NATIVE_INDEX_OFFSET) as usize;

const _: () = assert!(FIRST_BOUND_BUCKET >= 1 && FIRST_BOUND_BUCKET + BOUNDS <= TOP_FINITE_BUCKET + 1);

/// The native zero bucket's threshold, 2^-30 s: it holds 0 ns only.
const ZERO_THRESHOLD: f64 = 1.0 / (1u64 << 30) as f64;

/// Classic bound `k` (2^k s).
fn bound(log2_seconds: i32) -> f64 {
    2f64.powi(log2_seconds)
}

/// The `le` value of bound `k` (2^k s), as it is written: the shortest
/// decimal that reads back as exactly 2^k.
fn bound_label(log2_seconds: i32) -> String {
    let mut digits = ryu::Buffer::new();
    digits.format_finite(bound(log2_seconds)).to_owned()
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
            buckets: (CLASSIC_FIRST_BOUND..=CLASSIC_LAST_BOUND).map(|k| with_le(&bound_label(k))).collect(),
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
        let count = histogram.count();
        let sum = histogram.sum_ns as f64 / 1e9;
        // Cumulative count of every kernel bucket below the first bound's.
        let below = histogram.buckets[..FIRST_BOUND_BUCKET].iter().fold(0u64, |sum, n| sum.wrapping_add(*n));
        // le = 2^k s holds every kernel bucket up to and including k + 30.
        let classic =
            histogram.buckets[FIRST_BOUND_BUCKET..FIRST_BOUND_BUCKET + BOUNDS].iter().scan(below, |cumulative, n| {
                *cumulative = cumulative.wrapping_add(*n);
                Some(*cumulative)
            });
        if self.format() == Format::Protobuf {
            let classic = (CLASSIC_FIRST_BOUND..).map(bound).zip(classic);
            let native = Native {
                zero_threshold: ZERO_THRESHOLD,
                zero_count: histogram.buckets[0],
                first_index: 1 - NATIVE_INDEX_OFFSET,
                // The open top bucket saturates into native bucket 11.
                counts: &histogram.buckets[1..],
            };
            self.proto_histogram(series.sum.proto_labels(), count, sum, classic, Some(native));
            return;
        }
        for (bucket, cumulative) in series.buckets.iter().zip(classic) {
            self.sample(bucket, cumulative);
        }
        self.sample(&series.infinity, count);
        self.sample_f64(&series.sum, sum);
        self.sample(&series.count, count);
    }
}

const _: () = assert!(LOG2_BUCKETS == TOP_FINITE_BUCKET + 2);

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
    fn two_dozen_bounds_that_are_powers_of_two_of_seconds() {
        assert_eq!(BOUNDS, 24);
        assert_eq!(bound_label(-20), "9.5367431640625e-7");
        assert_eq!(bound_label(-10), "0.0009765625");
        assert_eq!(bound_label(0), "1.0");
        assert_eq!(bound_label(3), "8.0");
        for k in CLASSIC_FIRST_BOUND..=CLASSIC_LAST_BOUND {
            assert_eq!(bound_label(k).parse::<f64>().unwrap(), 2f64.powi(k), "le of 2^{k} reads back exactly");
            // The bound is the upper edge of kernel bucket k + 30.
            let edge = exporter_common::histogram::upper_edge_ns((k + NATIVE_INDEX_OFFSET) as usize);
            assert_eq!(edge, (2f64.powi(k) * 1e9).floor() as u64);
        }
    }

    #[test]
    fn buckets_are_cumulative_exact_and_inclusive() {
        let mut histogram = Log2Histogram::default();
        histogram.record(5); // below the first bound
        histogram.record(953); // 953 ns <= 2^-20 s (953.67 ns)
        histogram.record(954); // just above: counted from le=2^-19 on
        histogram.record(3_000_000); // 3 ms <= 2^-8 s (3.9 ms)
        histogram.record(1_000_000_000); // 1 s exactly: in le=1
        histogram.record(60_000_000_000); // 60 s: over the last bound
        let lines = encode(&histogram);
        assert_eq!(lines.len(), BOUNDS + 3);
        let value = |key: &str| lines.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap();
        let bucket = |le: &str| value(&format!("kernel_test_latency_seconds_bucket{{op=\"read\",le=\"{le}\"}}"));

        assert_eq!(bucket("9.5367431640625e-7"), "2");
        assert_eq!(bucket("1.9073486328125e-6"), "3");
        assert_eq!(bucket("0.001953125"), "3");
        assert_eq!(bucket("0.00390625"), "4");
        assert_eq!(bucket("0.5"), "4");
        assert_eq!(bucket("1.0"), "5");
        assert_eq!(bucket("8.0"), "5");
        assert_eq!(bucket("+Inf"), "6");
        assert_eq!(value("kernel_test_latency_seconds_count{op=\"read\"}"), "6");
        let sum: f64 = value("kernel_test_latency_seconds_sum{op=\"read\"}").parse().unwrap();
        assert!((sum - 61.003_001_912).abs() < 1e-9, "{sum}");

        // Monotonic non-decreasing.
        let counts: Vec<u64> = lines[..=BOUNDS].iter().map(|(_, v)| v.parse().unwrap()).collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    }

    #[test]
    fn values_over_the_last_bound_are_counted_in_inf_only() {
        let mut histogram = Log2Histogram::default();
        // Just over 8 s, an hour (the kernel's open top bucket), a day.
        for ns in [8_000_000_001u64, 3_600_000_000_000, 86_400_000_000_000] {
            histogram.record(ns);
        }
        assert_eq!(histogram.buckets[LOG2_BUCKETS - 1], 2);
        let lines = encode(&histogram);
        for (key, value) in &lines[..BOUNDS] {
            assert_eq!(value, "0", "{key}");
        }
        assert_eq!(lines[BOUNDS], ("kernel_test_latency_seconds_bucket{op=\"read\",le=\"+Inf\"}".into(), "3".into()));
        assert_eq!(lines[BOUNDS + 2].1, "3");
        let sum: f64 = lines[BOUNDS + 1].1.parse().unwrap();
        assert!((sum - (8.000_000_001 + 3_600.0 + 86_400.0)).abs() < 1e-6, "{sum}");
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
        other_cpu.record(1 << 50);
        histogram.merge(&other_cpu);
        assert_eq!(histogram.buckets[LOG2_BUCKETS - 1], 6);
        let lines = encode(&histogram);
        assert_eq!(lines[BOUNDS].1, "0");
        assert_eq!(lines[BOUNDS + 2].1, "0");
    }
}
