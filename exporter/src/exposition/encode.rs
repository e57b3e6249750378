//! Prometheus text exposition format 0.0.4, OpenMetrics 1.0.0 and the
//! delimited protobuf format (`io.prometheus.client.MetricFamily`, see
//! [`super::protobuf`]), written straight into one reused buffer.
//!
//! Everything about a series except its value is known before the first
//! scrape: metric families are `const`s, and a labelled series' bytes
//! (`name{a="x"} `, and its labels as protobuf `LabelPair`s) are built once,
//! escaped, when the series first appears ([`Series`]). A scrape then only copies those bytes and formats one
//! integer per line, with no allocation per series.
//!
//! Counter values are u64 written as exact decimal integers, never rounded
//! through f64 (Prometheus stores floats, so the server rounds above 2^53).
//! Sums over CPUs wrap at 2^64 as the kernel's own counters do, rather than
//! saturate: Prometheus reads the drop as a counter reset, and `rate()`
//! stays right but for the one interval. At a billion events a second a
//! counter takes 584 years to get there.

use bytes::{BufMut as _, BytesMut};

use super::protobuf;

/// The exposition formats this exporter writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Format {
    /// Prometheus text format 0.0.4, the default.
    #[default]
    Text,
    /// OpenMetrics 1.0.0: counter families are named without `_total`, and
    /// the body ends with `# EOF`.
    OpenMetrics,
    /// Length-delimited `io.prometheus.client.MetricFamily` messages, the
    /// only format that carries native histograms.
    Protobuf,
}

impl Format {
    pub(crate) const fn content_type(self) -> &'static str {
        match self {
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            // What client_golang answers with, and what Prometheus' parser
            // selects on (the media type; the parameters name the message).
            Self::Protobuf => {
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            }
        }
    }

    /// The format an `Accept` header asks for, in the order Prometheus'
    /// own negotiation (`expfmt.NegotiateIncludingOpenMetrics`) picks it:
    /// the acceptable media ranges by falling quality, the first one this
    /// exporter can write wins, text 0.0.4 otherwise.
    pub(crate) fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else { return Self::Text };
        let mut ranges: Vec<(f32, Option<Self>)> = accept
            .split(',')
            .filter_map(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next()?.to_ascii_lowercase();
                let mut quality = 1.0f32;
                let mut version = None;
                let mut proto = None;
                let mut encoding = None;
                for parameter in parts {
                    let (key, value) = parameter.split_once('=')?;
                    let value = value.trim().trim_matches('"');
                    match key.trim().to_ascii_lowercase().as_str() {
                        "q" => quality = value.parse().ok()?,
                        "version" => version = Some(value.to_owned()),
                        "proto" => proto = Some(value.to_owned()),
                        "encoding" => encoding = Some(value.to_owned()),
                        _ => {}
                    }
                }
                let format = match (media.as_str(), version.as_deref()) {
                    ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => Some(Self::OpenMetrics),
                    ("text/plain", None | Some("0.0.4")) => Some(Self::Text),
                    // Only the delimited MetricFamily stream: the text and
                    // compact-text protobuf encodings are not written here.
                    ("application/vnd.google.protobuf", _)
                        if proto
                            .as_deref()
                            .is_some_and(|p| p.eq_ignore_ascii_case("io.prometheus.client.MetricFamily"))
                            && encoding.as_deref().is_some_and(|e| e.eq_ignore_ascii_case("delimited")) =>
                    {
                        Some(Self::Protobuf)
                    }
                    _ => None,
                };
                (quality > 0.0).then_some((quality, format))
            })
            .collect();
        // Stable: equal qualities keep the client's order.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        ranges.into_iter().find_map(|(_, format)| format).unwrap_or(Self::Text)
    }
}

/// The metric types this exporter writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A metric family: its name, help text and type.
///
/// Names and help texts are compile-time constants of this project, so
/// they are checked by tests ([`Family::is_valid`]) instead of escaped at
/// every scrape.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Family {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
    pub(crate) kind: MetricType,
}

impl Family {
    pub(crate) const fn counter(name: &'static str, help: &'static str) -> Self {
        Self { name, help, kind: MetricType::Counter }
    }

    pub(crate) const fn gauge(name: &'static str, help: &'static str) -> Self {
        Self { name, help, kind: MetricType::Gauge }
    }

    /// A latency histogram; `name` ends in `_seconds` and carries no
    /// `_bucket`/`_sum`/`_count` suffix.
    pub(crate) const fn histogram(name: &'static str, help: &'static str) -> Self {
        Self { name, help, kind: MetricType::Histogram }
    }

    /// A valid metric name, a help text that needs no escaping, and the
    /// naming rules: counters end in `_total`, nothing else does.
    #[cfg(test)]
    pub(crate) fn is_valid(&self) -> bool {
        let mut chars = self.name.chars();
        let name_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let help_ok = !self.help.is_empty() && !self.help.contains(['\\', '\n']);
        let suffix_ok = self.name.ends_with("_total") == (self.kind == MetricType::Counter)
            && (self.kind != MetricType::Histogram || self.name.ends_with("_seconds"));
        name_ok && help_ok && suffix_ok
    }
}

/// The precomputed bytes of one labelled series: `name{k="v",...} ` for
/// the text formats and the labels as protobuf `Metric.label` fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Series {
    text: Box<[u8]>,
    proto: Box<[u8]>,
}

impl Series {
    /// Builds the series prefix once; label values are escaped here so
    /// scrapes never have to.
    pub(crate) fn new(family: &Family, labels: &[(&str, &str)]) -> Self {
        Self::named(family.name, labels)
    }

    /// As [`Series::new`] for a sample whose name is not the family's
    /// (a histogram's `_bucket`, `_sum` and `_count`).
    pub(crate) fn named(name: &str, labels: &[(&str, &str)]) -> Self {
        let mut bytes = Vec::with_capacity(name.len() + 2 + labels.len() * 24);
        bytes.extend_from_slice(name.as_bytes());
        if !labels.is_empty() {
            bytes.push(b'{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    bytes.push(b',');
                }
                bytes.extend_from_slice(name.as_bytes());
                bytes.extend_from_slice(b"=\"");
                for &b in value.as_bytes() {
                    match b {
                        b'\\' => bytes.extend_from_slice(b"\\\\"),
                        b'"' => bytes.extend_from_slice(b"\\\""),
                        b'\n' => bytes.extend_from_slice(b"\\n"),
                        b => bytes.push(b),
                    }
                }
                bytes.push(b'"');
            }
            bytes.push(b'}');
        }
        bytes.push(b' ');
        let mut proto = Vec::new();
        for (name, value) in labels {
            protobuf::put_label_pair(&mut proto, name.as_bytes(), value.as_bytes());
        }
        Self { text: bytes.into_boxed_slice(), proto: proto.into_boxed_slice() }
    }

    /// The labels as encoded `Metric.label` fields.
    pub(crate) fn proto_labels(&self) -> &[u8] {
        &self.proto
    }
}

/// Writes families and samples into a caller-owned buffer.
pub(crate) struct Encoder<'a> {
    pub(super) buf: &'a mut BytesMut,
    format: Format,
    /// Protobuf only: the `MetricFamily` being written, whose length is
    /// patched in when the next family starts or the body ends.
    pub(super) open: Option<OpenFamily>,
}

/// A protobuf `MetricFamily` still being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct OpenFamily {
    /// Where its length prefix starts.
    pub(super) start: usize,
    pub(super) kind: MetricType,
    /// Whether a metric was written: empty families are dropped, as
    /// client_golang drops them.
    pub(super) has_metrics: bool,
}

/// A position to roll back to: the buffer's length, between two families.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark(usize);

impl<'a> Encoder<'a> {
    /// An encoder of the text format 0.0.4.
    #[cfg(test)]
    pub(crate) fn new(buf: &'a mut BytesMut) -> Self {
        Self::with_format(buf, Format::Text)
    }

    pub(crate) fn with_format(buf: &'a mut BytesMut, format: Format) -> Self {
        Self { buf, format, open: None }
    }

    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// The buffer, for encoders of their own (the exporter's self metrics
    /// in the text formats).
    pub(crate) fn buffer(&mut self) -> &mut BytesMut {
        self.buf
    }

    /// Ends the body as the format requires.
    pub(crate) fn finish(mut self) {
        match self.format {
            Format::OpenMetrics => self.buf.put_slice(b"# EOF\n"),
            Format::Protobuf => self.close_family(),
            Format::Text => {}
        }
    }

    /// A position to [`rollback`](Self::rollback) to. In protobuf it ends
    /// the open family: closing it later moves bytes before the mark.
    pub(crate) fn mark(&mut self) -> Mark {
        self.close_family();
        Mark(self.buf.len())
    }

    /// Drops everything written since `mark`.
    pub(crate) fn rollback(&mut self, mark: Mark) {
        self.buf.truncate(mark.0);
        self.open = None;
    }

    /// `# HELP` and `# TYPE` lines (protobuf: a new `MetricFamily`); call
    /// once per family, before its samples.
    pub(crate) fn family(&mut self, family: &Family) {
        if self.format == Format::Protobuf {
            self.open_family(family.name, family.help, family.kind);
            return;
        }
        // OpenMetrics names a counter family without the `_total` its
        // samples carry.
        let name = match (self.format, family.kind) {
            (Format::OpenMetrics, MetricType::Counter) => family.name.strip_suffix("_total").unwrap_or(family.name),
            _ => family.name,
        };
        for part in ["# HELP ", name, " ", family.help, "\n# TYPE ", name, " ", family.kind.as_str(), "\n"] {
            self.buf.put_slice(part.as_bytes());
        }
    }

    /// A family with a single, unlabelled sample.
    pub(crate) fn single(&mut self, family: &Family, value: u64) {
        self.family(family);
        if self.format == Format::Protobuf {
            // Counters and gauges are doubles in protobuf; Prometheus
            // stores floats either way.
            self.scalar(&[], value as f64);
            return;
        }
        self.buf.put_slice(family.name.as_bytes());
        self.buf.put_u8(b' ');
        self.integer(value);
    }

    /// One sample of a labelled series.
    pub(crate) fn sample(&mut self, series: &Series, value: u64) {
        if self.format == Format::Protobuf {
            self.scalar(&series.proto, value as f64);
            return;
        }
        self.buf.put_slice(&series.text);
        self.integer(value);
    }

    /// One sample with a fractional value (seconds).
    pub(crate) fn sample_f64(&mut self, series: &Series, value: f64) {
        if self.format == Format::Protobuf {
            self.scalar(&series.proto, value);
            return;
        }
        self.buf.put_slice(&series.text);
        self.float(value);
    }

    fn float(&mut self, value: f64) {
        if value.is_finite() {
            let mut digits = ryu::Buffer::new();
            self.buf.put_slice(digits.format_finite(value).as_bytes());
        } else if value.is_nan() {
            self.buf.put_slice(b"NaN");
        } else if value > 0.0 {
            self.buf.put_slice(b"+Inf");
        } else {
            self.buf.put_slice(b"-Inf");
        }
        self.buf.put_u8(b'\n');
    }

    fn integer(&mut self, value: u64) {
        let mut digits = itoa::Buffer::new();
        self.buf.put_slice(digits.format(value).as_bytes());
        self.buf.put_u8(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORKS: Family = Family::counter("kernel_sched_forks_total", "New tasks.");
    const UP: Family = Family::gauge("kernel_exporter_collector_up", "Whether the collector works.");

    fn encode(write: impl FnOnce(&mut Encoder<'_>)) -> String {
        let mut buf = BytesMut::new();
        write(&mut Encoder::new(&mut buf));
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn writes_the_text_format() {
        let series = Series::new(&UP, &[("collector", "sched")]);
        let text = encode(|e| {
            e.single(&FORKS, 18_446_744_073_709_551_615);
            e.family(&UP);
            e.sample(&series, 1);
        });
        assert_eq!(
            text,
            "# HELP kernel_sched_forks_total New tasks.\n\
             # TYPE kernel_sched_forks_total counter\n\
             kernel_sched_forks_total 18446744073709551615\n\
             # HELP kernel_exporter_collector_up Whether the collector works.\n\
             # TYPE kernel_exporter_collector_up gauge\n\
             kernel_exporter_collector_up{collector=\"sched\"} 1\n"
        );
    }

    #[test]
    fn label_values_are_escaped_once() {
        let series = Series::new(&UP, &[("a", "back\\slash"), ("b", "\"quoted\"\nline")]);
        assert_eq!(
            &*series.text,
            b"kernel_exporter_collector_up{a=\"back\\\\slash\",b=\"\\\"quoted\\\"\\nline\"} ".as_slice()
        );
    }

    #[test]
    fn openmetrics_names_counter_families_without_total_and_ends_with_eof() {
        let mut buf = BytesMut::new();
        let mut out = Encoder::with_format(&mut buf, Format::OpenMetrics);
        out.single(&FORKS, 3);
        out.family(&UP);
        out.finish();
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            "# HELP kernel_sched_forks New tasks.\n# TYPE kernel_sched_forks counter\nkernel_sched_forks_total 3\n\
             # HELP kernel_exporter_collector_up Whether the collector works.\n\
             # TYPE kernel_exporter_collector_up gauge\n# EOF\n"
        );
    }

    #[test]
    fn negotiates_like_prometheus() {
        // What Prometheus 2.42 sends by default.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                          text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(Some("text/plain")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text")), Format::OpenMetrics);
        // Preference by quality, not position.
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text; version=1.0.0")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0.2,text/plain;version=0.0.4")),
            Format::Text
        );
        // Versions we do not write, q=0 and garbage fall back to text.
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;version=2.0.0")), Format::Text);
        assert_eq!(Format::negotiate(Some("application/openmetrics-text;q=0")), Format::Text);
        assert_eq!(Format::negotiate(Some(";;;,=,q=x")), Format::Text);
        // Protobuf: only the delimited MetricFamily stream.
        assert_eq!(
            Format::negotiate(Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
            )),
            Format::Text
        );
        // What Prometheus 2.42 sends with --enable-feature=native-histograms,
        // and 3.x's default scrape_protocols with native histograms on.
        let with_protobuf = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,\
                             application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,\
                             text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(with_protobuf)), Format::Protobuf);
        let prometheus_3 = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5,\
                            application/openmetrics-text;version=1.0.0;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,\
                            text/plain;version=0.0.4;q=0.2,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus_3)), Format::Protobuf);
        // Quality decides, as for the text formats.
        assert_eq!(
            Format::negotiate(Some(
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited; q=0.3, text/plain"
            )),
            Format::Text
        );
        assert_eq!(
            Format::Protobuf.content_type(),
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
        );
    }

    #[test]
    fn floats_round_trip() {
        let series = Series::named("x_seconds_sum", &[]);
        let text = encode(|e| {
            e.sample_f64(&series, 0.000_001_024);
            e.sample_f64(&series, 12.5);
            e.sample_f64(&series, 0.0);
            e.sample_f64(&series, f64::INFINITY);
        });
        assert_eq!(text, "x_seconds_sum 1.024e-6\nx_seconds_sum 12.5\nx_seconds_sum 0.0\nx_seconds_sum +Inf\n");
    }

    #[test]
    fn family_rules() {
        assert!(FORKS.is_valid());
        assert!(UP.is_valid());
        assert!(!Family::counter("kernel_forks", "x").is_valid());
        assert!(!Family::gauge("kernel_forks_total", "x").is_valid());
        assert!(!Family::gauge("1abc", "x").is_valid());
        assert!(!Family::gauge("abc", "multi\nline").is_valid());
        assert!(Family::histogram("kernel_x_latency_seconds", "x").is_valid());
        assert!(!Family::histogram("kernel_x_latency", "x").is_valid());
    }
}
