//! `io.prometheus.client` messages (prometheus/client_model `metrics.proto`,
//! as vendored in prometheus/prometheus `prompb/io/prometheus/client/`),
//! derived by hand for prost: an independent decoder of the exporter's
//! protobuf exposition, for the end-to-end tests, the exporter's unit tests
//! and the round-trip fuzz target (which include this file by path, so
//! there is one copy). Only the fields the exporter can write are declared;
//! prost skips the others. Never part of the daemon.
#![allow(missing_docs, unreachable_pub, dead_code, clippy::derive_partial_eq_without_eq)]

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPair {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    Counter = 0,
    Gauge = 1,
    Summary = 2,
    Untyped = 3,
    Histogram = 4,
    GaugeHistogram = 5,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Counter {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Untyped {
    #[prost(double, tag = "1")]
    pub value: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    #[prost(uint64, tag = "1")]
    pub sample_count: u64,
    #[prost(double, tag = "2")]
    pub sample_sum: f64,
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    #[prost(sint32, tag = "5")]
    pub schema: i32,
    #[prost(double, tag = "6")]
    pub zero_threshold: f64,
    #[prost(uint64, tag = "7")]
    pub zero_count: u64,
    #[prost(message, repeated, tag = "9")]
    pub negative_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "10")]
    pub negative_delta: Vec<i64>,
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    #[prost(sint64, repeated, tag = "13")]
    pub positive_delta: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Bucket {
    #[prost(uint64, tag = "1")]
    pub cumulative_count: u64,
    #[prost(double, tag = "2")]
    pub upper_bound: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BucketSpan {
    #[prost(sint32, tag = "1")]
    pub offset: i32,
    #[prost(uint32, tag = "2")]
    pub length: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    #[prost(message, optional, tag = "5")]
    pub untyped: Option<Untyped>,
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
    #[prost(int64, tag = "6")]
    pub timestamp_ms: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricFamily {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub help: String,
    #[prost(enumeration = "MetricType", tag = "3")]
    pub r#type: i32,
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
}

/// Every `MetricFamily` of a delimited stream; an error if any byte is left
/// over or a message does not decode.
pub fn decode_delimited(mut body: &[u8]) -> Result<Vec<MetricFamily>, prost::DecodeError> {
    let mut families = Vec::new();
    while !body.is_empty() {
        families.push(<MetricFamily as prost::Message>::decode_length_delimited(&mut body)?);
    }
    Ok(families)
}

impl Histogram {
    /// The native buckets as (schema-0 index, count), from spans and deltas.
    pub fn native_buckets(&self) -> Vec<(i32, u64)> {
        let mut buckets = Vec::new();
        let mut index = 0i32;
        let mut count = 0u64;
        let mut deltas = self.positive_delta.iter();
        // The first span's offset is absolute (from index 0); later ones
        // are the gap after the previous span.
        for span in &self.positive_span {
            index += span.offset;
            for _ in 0..span.length {
                count = count.wrapping_add(*deltas.next().expect("a delta per bucket") as u64);
                buckets.push((index, count));
                index += 1;
            }
        }
        assert!(deltas.next().is_none(), "more deltas than spanned buckets");
        buckets
    }
}
