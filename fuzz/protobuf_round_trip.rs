//! The `protobuf_round_trip` property, shared by the fuzz target and the
//! corpus replay (`exporter/tests/fuzz_corpus.rs`): what the daemon's
//! protobuf encoder wrote (`kernel_exporter::fuzzing::protobuf_exposition`)
//! decodes with an independent decoder (prost, `tests/src/metrics_proto.rs`,
//! which the includer declares as `metrics_proto` next to this module) to
//! exactly the families, labels and values that went in: every family
//! with a metric once, in order, counters and gauges bit for bit,
//! histograms' classic and native buckets as the bucket layout defines
//! them, and no byte left over.

use kernel_exporter::fuzzing::{ExpectedValue, protobuf_exposition};

use super::metrics_proto::{MetricType, decode_delimited};

pub(crate) fn check(data: &[u8]) {
    let (body, expected) = protobuf_exposition(data);
    let families = decode_delimited(&body).unwrap_or_else(|error| panic!("does not decode: {error}; {body:?}"));
    assert_eq!(families.len(), expected.len(), "{families:?}\nexpected {expected:?}");
    for (family, want) in families.iter().zip(&expected) {
        assert_eq!((family.name.as_str(), family.help.as_str(), family.r#type), (want.name, want.help, want.kind));
        assert_eq!(family.metric.len(), want.metrics.len(), "{}", want.name);
        for (metric, want) in family.metric.iter().zip(&want.metrics) {
            let labels: Vec<(String, String)> =
                metric.label.iter().map(|pair| (pair.name.clone(), pair.value.clone())).collect();
            assert_eq!(labels, want.labels);
            assert_eq!(metric.timestamp_ms, 0);
            match &want.value {
                ExpectedValue::Scalar(value) => {
                    let got = match MetricType::try_from(family.r#type) {
                        Ok(MetricType::Counter) => metric.counter.as_ref().map(|c| c.value),
                        Ok(MetricType::Gauge) => metric.gauge.as_ref().map(|g| g.value),
                        other => panic!("a scalar in a {other:?} family"),
                    };
                    assert_eq!(got.map(f64::to_bits), Some(value.to_bits()), "{}: {got:?} vs {value}", family.name);
                    assert!(metric.histogram.is_none());
                }
                ExpectedValue::Histogram { count, sum, classic, zero_count, native } => {
                    let h = metric.histogram.as_ref().expect("a histogram");
                    assert_eq!(h.sample_count, *count);
                    assert_eq!(h.sample_sum.to_bits(), sum.to_bits());
                    let buckets: Vec<(f64, u64)> =
                        h.bucket.iter().map(|b| (b.upper_bound, b.cumulative_count)).collect();
                    assert_eq!(&buckets, classic);
                    assert_eq!(h.schema, 0);
                    assert_eq!(h.zero_threshold, 2f64.powi(-30));
                    assert_eq!(h.zero_count, *zero_count);
                    assert_eq!(&h.native_buckets(), native);
                    // Prometheus rejects a native histogram whose buckets do
                    // not add up to its count (counts wrap like the kernel's).
                    let in_buckets = h.native_buckets().iter().fold(h.zero_count, |sum, (_, n)| sum.wrapping_add(*n));
                    assert_eq!(in_buckets, h.sample_count);
                    assert!(h.negative_span.is_empty() && h.negative_delta.is_empty());
                    // Spans are minimal: none empty, none adjacent.
                    assert!(h.positive_span.iter().all(|span| span.length > 0));
                    assert!(h.positive_span.iter().skip(1).all(|span| span.offset > 0));
                }
            }
        }
    }
}
