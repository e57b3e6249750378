//! The delimited protobuf exposition format: a stream of
//! `io.prometheus.client.MetricFamily` messages, each prefixed by its
//! length as a varint (prometheus/client_model `metrics.proto`).
//!
//! Written by hand into the scrape's one buffer, like the text formats: no
//! message tree, no allocation per series. A message's length comes before
//! its body, so a `MetricFamily` (and a histogram's `Metric` and
//! `Histogram`) reserves [`LEN_RESERVED`] bytes, writes its body, then
//! writes the real varint and moves the body back over the unused bytes: a
//! `memmove` of the message, cheaper than sizing it twice. Counters' and
//! gauges' `Metric`s have a size known up front and are written directly.
//!
//! It also transcodes the exporter's own metrics, which prometheus-client
//! renders as text ([`Encoder::transcode_text`]): prometheus-client's own
//! protobuf encoder builds a message tree and needs `protoc` or a protobuf
//! compiler crate to build, for some twenty series on a cold path.

use bytes::{BufMut as _, BytesMut};

use super::encode::{Encoder, MetricType, OpenFamily};

/// Bytes reserved for a nested message's length: 5 varint bytes reach 32 GiB.
const LEN_RESERVED: usize = 5;

// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// `tag` of field `number` with `wire` type; every field used here has a
/// number below 16, so the tag is one byte.
const fn tag(number: u8, wire: u8) -> u8 {
    number << 3 | wire
}

// io.prometheus.client.MetricFamily
const FAMILY_NAME: u8 = tag(1, LEN);
const FAMILY_HELP: u8 = tag(2, LEN);
const FAMILY_TYPE: u8 = tag(3, VARINT);
const FAMILY_METRIC: u8 = tag(4, LEN);
// Metric
const METRIC_LABEL: u8 = tag(1, LEN);
const METRIC_GAUGE: u8 = tag(2, LEN);
const METRIC_COUNTER: u8 = tag(3, LEN);
const METRIC_UNTYPED: u8 = tag(5, LEN);
const METRIC_HISTOGRAM: u8 = tag(7, LEN);
// LabelPair
const LABEL_NAME: u8 = tag(1, LEN);
const LABEL_VALUE: u8 = tag(2, LEN);
// Counter, Gauge, Untyped: `double value = 1`.
const VALUE: u8 = tag(1, FIXED64);
// Histogram
const SAMPLE_COUNT: u8 = tag(1, VARINT);
const SAMPLE_SUM: u8 = tag(2, FIXED64);
const BUCKET: u8 = tag(3, LEN);
const SCHEMA: u8 = tag(5, VARINT);
const ZERO_THRESHOLD: u8 = tag(6, FIXED64);
const ZERO_COUNT: u8 = tag(7, VARINT);
const POSITIVE_SPAN: u8 = tag(12, LEN);
const POSITIVE_DELTA: u8 = tag(13, LEN);
// Bucket
const CUMULATIVE_COUNT: u8 = tag(1, VARINT);
const UPPER_BOUND: u8 = tag(2, FIXED64);
// BucketSpan
const SPAN_OFFSET: u8 = tag(1, VARINT);
const SPAN_LENGTH: u8 = tag(2, VARINT);

/// `MetricType` enum values.
const fn type_number(kind: MetricType) -> u64 {
    match kind {
        MetricType::Counter => 0,
        MetricType::Gauge => 1,
        MetricType::Histogram => 4,
    }
}

pub(super) fn put_varint(buf: &mut impl bytes::BufMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8(value as u8 | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

pub(super) const fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

const fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn put_bytes_field(buf: &mut impl bytes::BufMut, tag: u8, bytes: &[u8]) {
    buf.put_u8(tag);
    put_varint(buf, bytes.len() as u64);
    buf.put_slice(bytes);
}

fn put_double_field(buf: &mut impl bytes::BufMut, tag: u8, value: f64) {
    buf.put_u8(tag);
    buf.put_f64_le(value);
}

/// Appends one `Metric.label` field (a `LabelPair`).
pub(super) fn put_label_pair(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let pair = 2 + varint_len(name.len() as u64) + name.len() + varint_len(value.len() as u64) + value.len();
    buf.push(METRIC_LABEL);
    put_varint(buf, pair as u64);
    put_bytes_field(buf, LABEL_NAME, name);
    put_bytes_field(buf, LABEL_VALUE, value);
}

/// Reserves room for a length prefix; returns where it starts.
fn begin(buf: &mut BytesMut) -> usize {
    let start = buf.len();
    buf.put_bytes(0, LEN_RESERVED);
    start
}

/// Writes the length of everything after the reserved prefix at `start`
/// and closes the gap.
fn end(buf: &mut BytesMut, start: usize) {
    let body = buf.len() - start - LEN_RESERVED;
    let mut prefix = [0u8; LEN_RESERVED];
    let mut writer = &mut prefix[..];
    put_varint(&mut writer, body as u64);
    let used = varint_len(body as u64);
    let len = buf.len();
    buf.copy_within(start + LEN_RESERVED..len, start + used);
    buf[start..start + used].copy_from_slice(&prefix[..used]);
    buf.truncate(len - (LEN_RESERVED - used));
}

/// One native-histogram bucket span: `offset` buckets after the previous
/// span (the first: from index 0), `length` buckets long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) offset: i32,
    pub(super) length: u32,
}

/// The native part of a histogram (schema 0, positive buckets only).
pub(super) struct Native<'a> {
    pub(super) zero_threshold: f64,
    pub(super) zero_count: u64,
    /// Native index of each count's bucket: `first_index + i`.
    pub(super) first_index: i32,
    /// Counts of consecutive buckets; empty ones split spans.
    pub(super) counts: &'a [u64],
}

impl Encoder<'_> {
    /// Closes the open family (if any) and opens a new `MetricFamily`.
    pub(super) fn open_family(&mut self, name: &str, help: &str, kind: MetricType) {
        self.close_family();
        let start = begin(self.buf);
        put_bytes_field(self.buf, FAMILY_NAME, name.as_bytes());
        put_bytes_field(self.buf, FAMILY_HELP, help.as_bytes());
        self.buf.put_u8(FAMILY_TYPE);
        put_varint(self.buf, type_number(kind));
        self.open = Some(OpenFamily { start, kind, has_metrics: false });
    }

    /// Patches the open family's length in; a family without metrics is
    /// dropped (Prometheus skips them anyway).
    pub(super) fn close_family(&mut self) {
        let Some(family) = self.open.take() else { return };
        if family.has_metrics {
            end(self.buf, family.start);
        } else {
            self.buf.truncate(family.start);
        }
    }

    /// One counter or gauge `Metric` with the given encoded labels.
    pub(super) fn scalar(&mut self, labels: &[u8], value: f64) {
        let Some(family) = self.open.as_mut() else {
            debug_assert!(false, "a sample outside a family");
            return;
        };
        family.has_metrics = true;
        let field = match family.kind {
            MetricType::Counter => METRIC_COUNTER,
            MetricType::Gauge => METRIC_GAUGE,
            // Not reached: histograms are written by `histogram`.
            MetricType::Histogram => METRIC_UNTYPED,
        };
        // labels + (tag, length 9, the value's tag and 8 bytes)
        self.buf.put_u8(FAMILY_METRIC);
        put_varint(self.buf, (labels.len() + 11) as u64);
        self.buf.put_slice(labels);
        self.buf.put_u8(field);
        self.buf.put_u8(9);
        put_double_field(self.buf, VALUE, value);
    }

    /// One histogram `Metric`: classic buckets as (upper bound, cumulative
    /// count), without `+Inf` (the count is its value), and optionally the
    /// native part.
    pub(super) fn proto_histogram(
        &mut self,
        labels: &[u8],
        count: u64,
        sum: f64,
        classic: impl Iterator<Item = (f64, u64)>,
        native: Option<Native<'_>>,
    ) {
        let Some(family) = self.open.as_mut() else {
            debug_assert!(false, "a histogram outside a family");
            return;
        };
        family.has_metrics = true;
        self.buf.put_u8(FAMILY_METRIC);
        let metric = begin(self.buf);
        self.buf.put_slice(labels);
        self.buf.put_u8(METRIC_HISTOGRAM);
        let histogram = begin(self.buf);
        self.buf.put_u8(SAMPLE_COUNT);
        put_varint(self.buf, count);
        put_double_field(self.buf, SAMPLE_SUM, sum);
        for (bound, cumulative) in classic {
            self.buf.put_u8(BUCKET);
            self.buf.put_u8((1 + varint_len(cumulative) + 9) as u8);
            self.buf.put_u8(CUMULATIVE_COUNT);
            put_varint(self.buf, cumulative);
            put_double_field(self.buf, UPPER_BOUND, bound);
        }
        if let Some(native) = native {
            self.native(&native);
        }
        end(self.buf, histogram);
        end(self.buf, metric);
    }

    fn native(&mut self, native: &Native<'_>) {
        self.buf.put_u8(SCHEMA);
        put_varint(self.buf, zigzag(0));
        put_double_field(self.buf, ZERO_THRESHOLD, native.zero_threshold);
        self.buf.put_u8(ZERO_COUNT);
        put_varint(self.buf, native.zero_count);
        // Spans: runs of non-empty buckets; the offset of the first is its
        // index, of the others the gap after the previous run.
        for span in spans(native.first_index, native.counts) {
            let offset = span.offset;
            self.buf.put_u8(POSITIVE_SPAN);
            let length = 2 + varint_len(zigzag(offset.into())) + varint_len(span.length.into());
            self.buf.put_u8(length as u8);
            self.buf.put_u8(SPAN_OFFSET);
            put_varint(self.buf, zigzag(offset.into()));
            self.buf.put_u8(SPAN_LENGTH);
            put_varint(self.buf, span.length.into());
        }
        // Deltas (packed): each non-empty bucket's count minus the previous
        // one's, the first against 0. Counts wrap at 2^64 like every counter
        // here; the wrapping difference sums back to the same u64.
        let mut deltas = native.counts.iter().filter(|count| **count != 0).peekable();
        if deltas.peek().is_none() {
            return;
        }
        self.buf.put_u8(POSITIVE_DELTA);
        let packed = begin(self.buf);
        let mut previous = 0u64;
        for &count in deltas {
            put_varint(self.buf, zigzag(count.wrapping_sub(previous) as i64));
            previous = count;
        }
        end(self.buf, packed);
    }
}

/// Reused space for [`Encoder::transcode_text`], so a warmed-up scrape
/// allocates nothing for it.
#[derive(Default)]
pub(crate) struct Transcoding {
    help: String,
    value: String,
    labels: Vec<u8>,
    histogram_labels: Vec<u8>,
    buckets: Vec<(f64, u64)>,
}

/// A histogram being gathered from its `_bucket`, `_sum` and `_count` lines.
#[derive(Default)]
struct Gathering {
    open: bool,
    count: u64,
    sum: f64,
}

impl Encoder<'_> {
    /// Appends the families of a Prometheus text (0.0.4) body as protobuf:
    /// counters, gauges and classic histograms; anything else (no text
    /// this exporter writes has it) is left out. For the exporter's own
    /// metrics, which prometheus-client renders as text.
    pub(crate) fn transcode_text(&mut self, text: &str, scratch: &mut Transcoding) {
        let mut family: Option<(&str, MetricType)> = None;
        let mut histogram = Gathering::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                self.flush_histogram(&mut histogram, scratch);
                scratch.help.clear();
                unescape(rest.split_once(' ').map_or("", |(_, help)| help), &mut scratch.help);
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                self.flush_histogram(&mut histogram, scratch);
                let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
                let kind = match kind {
                    "counter" => Some(MetricType::Counter),
                    "gauge" => Some(MetricType::Gauge),
                    "histogram" => Some(MetricType::Histogram),
                    _ => None,
                };
                family = kind.map(|kind| (name, kind));
                match kind {
                    Some(kind) => self.open_family(name, &scratch.help, kind),
                    None => self.close_family(),
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let Some((family_name, kind)) = family else { continue };
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}').unwrap_or(labels)),
                None => (series, ""),
            };
            let Some(value) = parse_value(value) else { continue };
            scratch.labels.clear();
            let mut le = None;
            for (label, raw) in (LabelIter { rest: labels }) {
                if kind == MetricType::Histogram && label == "le" {
                    le = parse_value(raw);
                } else {
                    scratch.value.clear();
                    unescape(raw, &mut scratch.value);
                    put_label_pair(&mut scratch.labels, label.as_bytes(), scratch.value.as_bytes());
                }
            }
            if kind != MetricType::Histogram {
                self.scalar(&scratch.labels, value);
                continue;
            }
            if histogram.open && scratch.labels != scratch.histogram_labels {
                self.flush_histogram(&mut histogram, scratch);
            }
            if !histogram.open {
                histogram.open = true;
                scratch.histogram_labels.clear();
                scratch.histogram_labels.extend_from_slice(&scratch.labels);
            }
            match name.strip_prefix(family_name) {
                Some("_bucket") => {
                    if let Some(le) = le.filter(|le| le.is_finite()) {
                        scratch.buckets.push((le, value as u64));
                    }
                }
                Some("_sum") => histogram.sum = value,
                Some("_count") => histogram.count = value as u64,
                _ => {}
            }
        }
        self.flush_histogram(&mut histogram, scratch);
    }

    fn flush_histogram(&mut self, histogram: &mut Gathering, scratch: &mut Transcoding) {
        let gathered = std::mem::take(histogram);
        if gathered.open {
            let buckets = scratch.buckets.iter().copied();
            self.proto_histogram(&scratch.histogram_labels, gathered.count, gathered.sum, buckets, None);
        }
        scratch.buckets.clear();
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// Text-format escapes (`\\`, `\"`, `\n`) undone into `out`.
fn unescape(text: &str, out: &mut String) {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
}

/// The `name="value"` pairs of a text series' label block, values still
/// escaped.
struct LabelIter<'t> {
    rest: &'t str,
}

impl<'t> Iterator for LabelIter<'t> {
    type Item = (&'t str, &'t str);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest.trim_start_matches([',', ' ']);
        let (name, rest) = rest.split_once("=\"")?;
        // The closing quote is the first one not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, b) in rest.bytes().enumerate() {
            match b {
                b'\\' if !escaped => escaped = true,
                b'"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end?;
        self.rest = &rest[end + 1..];
        Some((name.trim(), &rest[..end]))
    }
}

/// The spans of the non-empty buckets among `counts`, the first at native
/// index `first_index`.
pub(super) fn spans(first_index: i32, counts: &[u64]) -> impl Iterator<Item = Span> + '_ {
    let mut position = 0usize;
    // Native index just past the previous span.
    let mut after_previous: Option<i32> = None;
    std::iter::from_fn(move || {
        let start = position + counts.get(position..)?.iter().position(|count| *count != 0)?;
        let length = counts[start..].iter().take_while(|count| **count != 0).count();
        position = start + length;
        let index = first_index + start as i32;
        let offset = match after_previous {
            None => index,
            Some(after) => index - after,
        };
        after_previous = Some(index + length as i32);
        Some(Span { offset, length: length as u32 })
    })
}

#[cfg(test)]
mod tests {
    //! (Imports used only by `#[test]` functions are inside them: the
    //! encoder benchmark compiles this module without its tests.)

    use bytes::BytesMut;

    use super::*;
    use crate::exposition::encode::{Family, Format};

    use crate::exposition::metrics_proto as proto;

    const FORKS: Family = Family::counter("kernel_sched_forks_total", "New tasks.");
    const UP: Family = Family::gauge("kernel_exporter_collector_up", "Whether it works.");
    const LATENCY: Family = Family::histogram("kernel_test_latency_seconds", "Test latency.");

    fn encode(write: impl FnOnce(&mut Encoder<'_>)) -> Vec<proto::MetricFamily> {
        let mut buf = BytesMut::new();
        let mut out = Encoder::with_format(&mut buf, Format::Protobuf);
        write(&mut out);
        out.finish();
        proto::decode_delimited(&buf).expect("decodes")
    }

    #[test]
    fn varints_and_lengths() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX.into(), u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value), "{value}");
        }
        assert_eq!(zigzag(0), 0);
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
        assert_eq!(zigzag(i64::MIN), u64::MAX);
        // A length that needs every reserved byte, and one that needs one.
        for body in [0usize, 1, 127, 128, 20_000, 3_000_000] {
            let mut buf = BytesMut::from(&b"xy"[..]);
            let start = begin(&mut buf);
            buf.put_bytes(7, body);
            end(&mut buf, start);
            assert_eq!(buf.len(), 2 + varint_len(body as u64) + body);
            let mut rest = &buf[2..];
            assert_eq!(prost::encoding::decode_varint(&mut rest).unwrap(), body as u64);
            assert!(rest.iter().all(|b| *b == 7));
        }
    }

    #[test]
    fn counters_gauges_and_labels_decode() {
        use crate::exposition::encode::Series;
        let up = Series::new(&UP, &[("collector", "sched"), ("odd", "a\"b\\c\nd é")]);
        let families = encode(|out| {
            out.single(&FORKS, u64::MAX);
            out.family(&UP);
            out.sample(&up, 1);
            out.sample_f64(&up, 0.25);
            // An empty family is dropped.
            out.family(&FORKS);
        });
        assert_eq!(families.len(), 2, "{families:?}");
        assert_eq!(families[0].name, "kernel_sched_forks_total");
        assert_eq!(families[0].help, "New tasks.");
        assert_eq!(families[0].r#type, proto::MetricType::Counter as i32);
        assert_eq!(families[0].metric[0].counter.as_ref().unwrap().value, u64::MAX as f64);
        assert!(families[0].metric[0].label.is_empty());
        assert_eq!(families[1].r#type, proto::MetricType::Gauge as i32);
        let labels: Vec<(&str, &str)> =
            families[1].metric[0].label.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
        // Raw values: protobuf needs no escaping.
        assert_eq!(labels, [("collector", "sched"), ("odd", "a\"b\\c\nd é")]);
        assert_eq!(families[1].metric[0].gauge.as_ref().unwrap().value, 1.0);
        assert_eq!(families[1].metric[1].gauge.as_ref().unwrap().value, 0.25);
    }

    #[test]
    fn rollback_restores_the_open_family() {
        use crate::exposition::encode::Series;
        let up = Series::new(&UP, &[("collector", "a")]);
        let families = encode(|out| {
            out.family(&UP);
            out.sample(&up, 1);
            // A mark ends the open family (its length is written).
            let mark = out.mark();
            out.single(&FORKS, 3);
            out.family(&LATENCY);
            out.rollback(mark);
            out.family(&UP);
            out.sample(&up, 2);
        });
        assert_eq!(families.len(), 2, "{families:?}");
        assert_eq!(families[0].metric.len(), 1);
        assert_eq!(families[1].metric[0].gauge.as_ref().unwrap().value, 2.0);
    }

    /// A histogram's classic and native parts against the kernel buckets.
    #[test]
    fn histograms_carry_exact_classic_and_native_buckets() {
        use exporter_common::histogram::{Log2Histogram, TOP_FINITE_NS};

        use crate::exposition::histogram::HistogramSeries;
        let mut histogram = Log2Histogram::default();
        let values = [0u64, 0, 1, 900, 1_000, 1_500, 3_000_000, 1_000_000_000, 1_000_000_001, 60_000_000_000];
        for ns in values {
            histogram.record(ns);
        }
        histogram.record(TOP_FINITE_NS + 1);
        let series = HistogramSeries::new(&LATENCY, &[("op", "read")]);
        let families = encode(|out| {
            out.family(&LATENCY);
            out.histogram(&series, &histogram);
        });
        assert_eq!(families[0].r#type, proto::MetricType::Histogram as i32);
        let metric = &families[0].metric[0];
        assert_eq!(metric.label, [proto::LabelPair { name: "op".into(), value: "read".into() }]);
        let h = metric.histogram.as_ref().unwrap();
        assert_eq!(h.sample_count, 11);
        assert!((h.sample_sum - 1_086.003_003_403).abs() < 1e-6, "{}", h.sample_sum);
        // Classic: 2^-20 .. 2^3 s, cumulative, le inclusive.
        assert_eq!(h.bucket.len(), 24);
        assert_eq!(h.bucket[0].upper_bound, 2f64.powi(-20));
        assert_eq!(h.bucket[23].upper_bound, 8.0);
        let cumulative = |le: f64| h.bucket.iter().find(|b| b.upper_bound == le).unwrap().cumulative_count;
        assert_eq!(cumulative(2f64.powi(-20)), 4, "0, 0, 1 and 900 ns are <= 953.67 ns");
        assert_eq!(cumulative(2f64.powi(-19)), 6);
        assert_eq!(cumulative(2f64.powi(-8)), 7, "3 ms <= 3.9 ms");
        assert_eq!(cumulative(1.0), 8, "1 s exactly is in le=1");
        assert_eq!(cumulative(2.0), 9);
        assert_eq!(cumulative(8.0), 9);
        // Native: schema 0, zero bucket 0 ns.
        assert_eq!(h.schema, 0);
        assert_eq!(h.zero_threshold, 2f64.powi(-30));
        assert_eq!(h.zero_count, 2);
        let native = h.native_buckets();
        // Index i holds (2^(i-1), 2^i] s.
        // The value over 2^10 s saturates into (2^10, 2^11].
        let expected = [(-29, 1), (-20, 1), (-19, 2), (-8, 1), (0, 1), (1, 1), (6, 1), (11, 1)];
        assert_eq!(native, expected);
        for (index, _) in native.iter().copied().filter(|(index, _)| *index <= 10) {
            let upper = 2f64.powi(index);
            assert!(values.iter().any(|ns| {
                let s = *ns as f64 / 1e9;
                s > upper / 2.0 && s <= upper
            }));
        }
        // Prometheus rejects a native histogram whose buckets do not add up
        // to its count.
        let in_buckets: u64 = h.zero_count + h.native_buckets().iter().map(|(_, n)| n).sum::<u64>();
        assert_eq!(in_buckets, h.sample_count);
    }

    #[test]
    fn empty_and_full_histograms() {
        use exporter_common::histogram::{LOG2_BUCKETS, Log2Histogram};

        use crate::exposition::histogram::HistogramSeries;
        let series = HistogramSeries::new(&LATENCY, &[]);
        let mut full = Log2Histogram::default();
        for (i, bucket) in full.buckets.iter_mut().enumerate() {
            *bucket = if i % 3 == 0 { 0 } else { u64::MAX / 64 - i as u64 };
        }
        let families = encode(|out| {
            out.family(&LATENCY);
            out.histogram(&series, &Log2Histogram::default());
            out.histogram(&series, &full);
        });
        let empty = families[0].metric[0].histogram.as_ref().unwrap();
        assert_eq!(empty.sample_count, 0);
        assert!(empty.positive_span.is_empty() && empty.positive_delta.is_empty());
        assert!(empty.zero_threshold > 0.0, "recognised as native while empty");
        let h = families[0].metric[1].histogram.as_ref().unwrap();
        let expected: Vec<(i32, u64)> =
            (1..LOG2_BUCKETS).filter(|i| full.buckets[*i] != 0).map(|i| (i as i32 - 30, full.buckets[i])).collect();
        assert_eq!(h.native_buckets(), expected);
        assert_eq!(h.sample_count, full.count());
    }

    #[test]
    fn spans_split_at_empty_buckets() {
        let found: Vec<Span> = spans(-29, &[0, 1, 2, 0, 0, 3, 0, 4, 5, 6]).collect();
        assert_eq!(
            found,
            [Span { offset: -28, length: 2 }, Span { offset: 2, length: 1 }, Span { offset: 1, length: 3 }]
        );
        assert_eq!(spans(0, &[0, 0]).count(), 0);
    }

    #[test]
    fn text_transcodes_with_labels_and_classic_histograms() {
        let text = "# HELP a_total Things \\\\ done\\n.\n# TYPE a_total counter\na_total{reason=\"x\\\"y\"} 3\n\
                    a_total{reason=\"z\"} 4\n# HELP g A gauge.\n# TYPE g gauge\ng -1.5\n\
                    # HELP d_seconds Durations.\n# TYPE d_seconds histogram\nd_seconds_sum 0.5\nd_seconds_count 3\n\
                    d_seconds_bucket{le=\"0.1\"} 1\nd_seconds_bucket{le=\"1.0\"} 3\nd_seconds_bucket{le=\"+Inf\"} 3\n\
                    # TYPE u untyped\nu 1\n";
        let mut scratch = Transcoding::default();
        let families = encode(|out| out.transcode_text(text, &mut scratch));
        assert_eq!(families.len(), 3, "{families:?}");
        assert_eq!(families[0].help, "Things \\ done\n.");
        assert_eq!(families[0].metric[0].label[0].value, "x\"y");
        assert_eq!(families[0].metric[1].counter.as_ref().unwrap().value, 4.0);
        assert_eq!(families[1].metric[0].gauge.as_ref().unwrap().value, -1.5);
        let h = families[2].metric[0].histogram.as_ref().unwrap();
        assert_eq!((h.sample_count, h.sample_sum), (3, 0.5));
        assert_eq!(
            h.bucket,
            [
                proto::Bucket { cumulative_count: 1, upper_bound: 0.1 },
                proto::Bucket { cumulative_count: 3, upper_bound: 1.0 }
            ]
        );
        assert_eq!(h.zero_threshold, 0.0, "a classic-only histogram");
    }
}
