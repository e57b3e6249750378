//! The fuzz targets' way into the daemon's parsers, and the properties each
//! input is checked against. Not an API: hidden from the documentation,
//! and nothing but `fuzz/` and the corpus replay test may use it.
//!
//! Each function takes the raw bytes libFuzzer made up, feeds them to a
//! parser the daemon runs on text it did not write, and panics when a
//! property does not hold; libFuzzer reports the panic as a crash and saves
//! the input. The same functions replay the committed corpora and crash
//! reproducers as ordinary tests (`exporter/tests/fuzz_corpus.rs`), so
//! `cargo test` needs neither nightly nor libFuzzer.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::OnceLock,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hyper::header::HeaderValue;

use bytes::BytesMut;
use exporter_common::histogram::Log2Histogram;

use crate::{
    collectors::LoadedCollector,
    collectors::{CollectorError, REGISTRY},
    exposition::{
        encode::{Encoder, Family, Format, Series},
        histogram::HistogramSeries,
    },
    front_door::allowlist,
    front_door::auth,
    front_door::routes,
    front_door::tls,
    front_door::web_config::{self, Cidr, WebConfig},
    scrape::self_metrics::SelfMetrics,
    scrape::{Scraper, SelectError},
};

/// A fuzz target's function: panics on a property it finds broken.
pub type Target = fn(&[u8]);

/// Every target: its name (`fuzz/fuzz_targets/<name>.rs`,
/// `fuzz/corpus/<name>/`, `fuzz/regressions/<name>/`) and its function.
pub const TARGETS: &[(&str, Target)] = &[
    ("web_config", web_config),
    ("authorization", authorization),
    ("negotiation", negotiation),
    ("cidr", cidr),
    ("query_filters", query_filters),
    ("client_certificate", client_certificate),
];

/// Fuzz targets whose property needs a decoder that is no part of the
/// daemon: the target (`fuzz/fuzz_targets/<name>.rs`) and the corpus
/// replay check them with `fuzz/<name>.rs`.
pub const DECODED_TARGETS: &[&str] = &["protobuf_round_trip"];

/// Where the fuzzed web config claims to live; relative PEM paths resolve
/// under it, and nothing is ever read from there.
const CONFIG_PATH: &str = "/nonexistent/fuzz/web.yml";

/// `--web.config.file` text, validated as start-up and SIGHUP do. Errors
/// name the file and are one line; a valid config's ranges survive
/// printing and re-parsing; inline PEM (never a file) goes on to rustls.
pub fn web_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new(CONFIG_PATH);
    let config = match WebConfig::parse(path, text) {
        Ok(config) => config,
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains(CONFIG_PATH), "the error does not name the file: {message}");
            assert!(!message.contains(['\n', '\r']), "the error is not one line: {message:?}");
            return;
        }
    };
    for cidr in config.allowed_sources.iter().flatten() {
        check_cidr(cidr);
    }
    for user in config.users.keys() {
        assert!(!user.contains(':'), "user {user:?} would be split at its colon");
    }
    assert_eq!(config.watched_files().first().map(|file| file.as_path()), Some(path));
    if let Some(settings) = &config.tls {
        assert!(settings.min_version <= settings.max_version, "{settings:?}");
        let pems = [Some(&settings.cert), Some(&settings.key), settings.client_ca.as_ref()];
        if pems.into_iter().flatten().all(|pem| pem.file().is_none()) {
            // Errors are fine (the PEM is made up); panics are not.
            let _ = tls::server_config(settings, config.http2);
        }
    }
}

/// An `Authorization` header value. What parses yields exactly the user
/// and password it encodes; the access log's user name is bounded and
/// printable. The input is also taken as `user:password` and encoded.
pub fn authorization(data: &[u8]) {
    if let Some((user, password)) = auth::parse_basic(data) {
        assert!(!user.contains(&b':'), "user {user:?} holds the separator");
        let again = format!("Basic {}", STANDARD.encode([&user[..], b":", &password[..]].concat()));
        assert_eq!(auth::parse_basic(again.as_bytes()), Some((user, password)), "{again}");
    }
    if let Ok(value) = HeaderValue::from_bytes(data)
        && let Some(user) = auth::claimed_user(Some(&value))
    {
        assert!(user.chars().count() <= 64, "{user:?} is longer than 64 characters");
        assert!(!user.chars().any(char::is_control), "{user:?} holds control characters");
    }
    // The user ends at the first colon; the password may hold more.
    let expected =
        data.iter().position(|&b| b == b':').map(|colon| (data[..colon].to_vec(), data[colon + 1..].to_vec()));
    let encoded = STANDARD.encode(data);
    for header in [format!("Basic {encoded}"), format!("basic {encoded}"), format!("BASIC  {encoded} ")] {
        assert_eq!(auth::parse_basic(header.as_bytes()), expected, "{header}");
    }
}

/// An `Accept` header (the first line) and an `Accept-Encoding` header (the
/// rest). Media types, codings and parameter names are case-insensitive
/// (RFC 9110), and a range or coding refused with `q=0` or unknown to the
/// exporter changes nothing.
pub fn negotiation(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (accept, accept_encoding) = text.split_once('\n').unwrap_or((&text, ""));

    let format = Format::negotiate(Some(accept));
    assert!([Format::Text, Format::OpenMetrics, Format::Protobuf].contains(&format), "{format:?}");
    for variant in [accept.to_ascii_uppercase(), accept.to_ascii_lowercase()] {
        assert_eq!(Format::negotiate(Some(&variant)), format, "{accept:?} and {variant:?}");
    }
    for refused in ["application/openmetrics-text;q=0", "text/plain;q=0", "application/json"] {
        let longer = format!("{accept},{refused}");
        assert_eq!(Format::negotiate(Some(&longer)), format, "{accept:?} and {longer:?}");
    }

    let gzip = routes::accepts_gzip(Some(accept_encoding));
    for variant in [accept_encoding.to_ascii_uppercase(), accept_encoding.to_ascii_lowercase()] {
        assert_eq!(routes::accepts_gzip(Some(&variant)), gzip, "{accept_encoding:?} and {variant:?}");
    }
    for refused in ["gzip;q=0", "identity", "br"] {
        let longer = format!("{accept_encoding},{refused}");
        assert_eq!(routes::accepts_gzip(Some(&longer)), gzip, "{accept_encoding:?} and {longer:?}");
    }
}

/// A CIDR range (the first line) and an address to test against it (the
/// second), then every line as an `allowed_sources` list. A parsed range
/// prints and re-parses to itself, and for any address it agrees with the
/// kernel's LPM trie, which the socket filter looks sources up in.
pub fn cidr(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    if let Some(Ok(cidr)) = lines.next().map(str::parse::<Cidr>) {
        check_cidr(&cidr);
        if let Some(Ok(probe)) = lines.next().map(|line| line.trim().parse::<IpAddr>()) {
            check_probe(&cidr, probe);
        }
    }
    let texts: Vec<String> = text.lines().map(str::to_owned).collect();
    if let Ok(cidrs) = web_config::parse_allowed_sources(&texts) {
        assert_eq!(cidrs.len(), texts.len());
        cidrs.iter().for_each(check_cidr);
    }
}

fn check_cidr(cidr: &Cidr) {
    let bits = if cidr.addr.is_ipv4() { 32 } else { 128 };
    assert!(cidr.prefix <= bits, "{cidr:?}");
    let shown = cidr.to_string();
    assert_eq!(shown.parse::<Cidr>(), Ok(*cidr), "{cidr:?} printed as {shown}");
    assert!(cidr.contains(cidr.addr), "{cidr} does not contain its own address");

    // Just inside and just outside the range, and the usual suspects.
    let flip = |bit: u8| match cidr.addr {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) ^ (1 << (31 - u32::from(bit))))),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) ^ (1 << (127 - u32::from(bit))))),
    };
    let mut probes = vec![
        cidr.addr,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ];
    if cidr.prefix > 0 {
        probes.push(flip(cidr.prefix - 1));
    }
    if cidr.prefix < bits {
        probes.push(flip(bits - 1));
    }
    for probe in probes {
        check_probe(cidr, probe);
    }
}

/// The daemon answers `probe` (as the peer address a dual-stack socket
/// reports, IPv4 as IPv4-mapped IPv6, or as plain IPv4) as the kernel's
/// trie does for the packet.
fn check_probe(cidr: &Cidr, probe: IpAddr) {
    // The key the socket filter looks up: IPv4 packets' sources as
    // IPv4-mapped IPv6, IPv6 ones as they are.
    let key = match probe {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let ranges = allowlist::ranges(Some(std::slice::from_ref(cidr)));
    let kernel = ranges.iter().any(|&(prefix, network)| {
        let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
        key & mask == u128::from_be_bytes(network)
    });
    let peers = match probe {
        IpAddr::V4(v4) => [probe, IpAddr::V6(v4.to_ipv6_mapped())],
        IpAddr::V6(_) => [probe, probe.to_canonical()],
    };
    for peer in peers {
        assert_eq!(cidr.contains(peer), kernel, "{cidr} and {peer}: the kernel's trie says {kernel}");
    }
}

/// The query string of a scrape: `collect[]`/`exclude[]` decode and select
/// as documented, and any decoded name, percent-encoded again, decodes to
/// itself.
pub fn query_filters(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (collect, exclude) = routes::collector_filters(Some(&text));

    for (key, names) in [("collect%5B%5D", &collect), ("exclude[]", &exclude)] {
        let query: Vec<String> = names.iter().map(|name| format!("{key}={}", percent_encode(name))).collect();
        let (again_collect, again_exclude) = routes::collector_filters(Some(&query.join("&")));
        let again = if key.starts_with("collect") { again_collect } else { again_exclude };
        assert_eq!(&again, names, "{query:?}");
    }

    let scraper = scraper();
    let selected = scraper.select(&collect, &exclude);
    let names = match (collect.is_empty(), exclude.is_empty()) {
        (true, true) => return assert_eq!(selected, Ok(scraper.all())),
        (false, false) => return assert_eq!(selected, Err(SelectError::Both)),
        (false, true) => &collect,
        (true, false) => &exclude,
    };
    let unknown = names.iter().find(|name| !REGISTRY.iter().any(|spec| spec.name == name.as_str()));
    let selection = match (selected, unknown) {
        (Ok(selection), None) => selection,
        (Err(SelectError::Unknown(name)), Some(unknown)) => return assert_eq!(&name, unknown),
        (selected, unknown) => panic!("{names:?} selected {selected:?}, {unknown:?} is unknown"),
    };
    // `collect[]=` some collectors selects what `exclude[]=` the others
    // does, and the other way round.
    let others: Vec<String> =
        REGISTRY.iter().map(|spec| spec.name.to_owned()).filter(|name| !names.contains(name)).collect();
    if collect.is_empty() {
        if !others.is_empty() {
            assert_eq!(scraper.select(&others, &[]), Ok(selection), "{exclude:?}");
        }
    } else {
        assert_eq!(scraper.select(&[], &others), Ok(selection), "{collect:?}");
    }
}

/// Every registered collector, none of them loaded: selecting reads names
/// only, never the kernel.
fn scraper() -> &'static Scraper {
    static SCRAPER: OnceLock<Scraper> = OnceLock::new();
    SCRAPER.get_or_init(|| {
        let collectors = REGISTRY
            .iter()
            .map(|spec| LoadedCollector {
                name: spec.name,
                state: Err(CollectorError::MissingTracepoint { category: "fuzz", name: spec.name }),
            })
            .collect();
        Scraper::new(collectors, SelfMetrics::new())
    })
}

/// Every byte but the unreserved ones as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes().fold(String::new(), |mut out, byte| {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
        out
    })
}

/// A client certificate's DER, as a client presents it to a listener that
/// takes any certificate (`RequireAnyClientCert`): the SANs and the subject
/// CN are read without a panic, and the CN logged is bounded and printable.
pub fn client_certificate(data: &[u8]) {
    let _ = tls::san_values(data);
    if let Some(name) = tls::subject_common_name(data) {
        let value = name.strip_prefix("CN=").unwrap_or_else(|| panic!("{name:?} lacks CN="));
        assert!(value.chars().count() <= 128, "{name:?} is longer than 128 characters");
        assert!(!value.chars().any(char::is_control), "{name:?} holds control characters");
    }
}

/// A family [`protobuf_exposition`] wrote, described without the encoder:
/// what an independent decoder must read back.
#[derive(Debug)]
pub struct ExpectedFamily {
    /// The family's name.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// `io.prometheus.client.MetricType`: 0 counter, 1 gauge, 4 histogram.
    pub kind: i32,
    /// Its metrics, in order.
    pub metrics: Vec<ExpectedMetric>,
}

/// One metric of an [`ExpectedFamily`].
#[derive(Debug)]
pub struct ExpectedMetric {
    /// Label names and values, in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: ExpectedValue,
}

/// A counter's or gauge's value, or a histogram's parts.
#[derive(Debug)]
pub enum ExpectedValue {
    /// A counter's or gauge's value (compared bit for bit).
    Scalar(f64),
    /// A kernel histogram: classic (bound, cumulative count) without
    /// `+Inf`, the zero bucket, and native (schema-0 index, count) of the
    /// non-empty buckets.
    Histogram {
        /// Every value, including the open-ended top bucket's.
        count: u64,
        /// Seconds.
        sum: f64,
        /// (upper bound in seconds, cumulative count).
        classic: Vec<(f64, u64)>,
        /// Values of 0 ns.
        zero_count: u64,
        /// (native index, count) of the non-empty buckets, in order.
        native: Vec<(i32, u64)>,
    },
}

/// Fixed families (their names and help texts are `&'static`, as the
/// collectors' are).
const FUZZ_FAMILIES: [Family; 6] = [
    Family::counter("fuzz_events_total", "Events."),
    Family::counter("fuzz_other_total", "Other events, with \"quotes\" and \u{e9}."),
    Family::gauge("fuzz_level", "A level."),
    Family::gauge("fuzz_ratio", ""),
    Family::histogram("fuzz_latency_seconds", "A latency."),
    Family::histogram("fuzz_other_seconds", "Another latency."),
];
const FUZZ_LABELS: [&str; 3] = ["a", "op", "device"];

/// Reads made-up values off the fuzzer's bytes; zeros once they run out.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(b, rest)| (*b, rest));
        self.0 = rest;
        first
    }

    fn u64(&mut self) -> u64 {
        // A length byte first, so small values are as likely as huge ones.
        let len = usize::from(self.byte() % 9);
        (0..len).fold(0u64, |value, i| value | u64::from(self.byte()) << (8 * i))
    }

    fn text(&mut self) -> String {
        let len = usize::from(self.byte() % 24).min(self.0.len());
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8_lossy(text).into_owned()
    }
}

/// The kernel histogram's exposition, computed from the bucket layout's
/// definition rather than the encoder's code: bucket `b` holds
/// (2^(b-31), 2^(b-30)] s, 0 ns is the zero bucket, the last is open
/// and saturates into native bucket 11.
fn expected_histogram(h: &Log2Histogram) -> ExpectedValue {
    let top = h.buckets.len() - 1;
    let cumulative = |b: usize| h.buckets[..=b].iter().fold(0u64, |sum, n| sum.wrapping_add(*n));
    ExpectedValue::Histogram {
        count: cumulative(top),
        sum: h.sum_ns as f64 / 1e9,
        classic: (-20..=3).map(|k: i32| (2f64.powi(k), cumulative((k + 30) as usize))).collect(),
        zero_count: h.buckets[0],
        native: (1..=top).filter(|b| h.buckets[*b] != 0).map(|b| (b as i32 - 30, h.buckets[b])).collect(),
    }
}

/// Builds families, series and values out of `data`, writes them with the
/// daemon's protobuf encoder (collectors that fail half-way included,
/// rolled back as a scrape does) and returns the body and what it must
/// decode to. The check is the fuzz target's, which has the decoder.
pub fn protobuf_exposition(data: &[u8]) -> (Vec<u8>, Vec<ExpectedFamily>) {
    let mut input = Cursor(data);
    let mut buf = BytesMut::new();
    let mut out = Encoder::with_format(&mut buf, Format::Protobuf);
    let mut expected = Vec::new();
    for _ in 0..16 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte();
        let family = FUZZ_FAMILIES[usize::from(op % 6)];
        // A collector that fails after writing: a scrape rolls it back.
        let failing = op & 0x80 != 0;
        let mark = out.mark();
        out.family(&family);
        let mut metrics = Vec::new();
        for _ in 0..input.byte() % 5 {
            let labels: Vec<(String, String)> = FUZZ_LABELS[..usize::from(input.byte() % 4).min(3)]
                .iter()
                .map(|name| ((*name).to_owned(), input.text()))
                .collect();
            let borrowed: Vec<(&str, &str)> = labels.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let value = match family.kind {
                crate::exposition::encode::MetricType::Counter => {
                    let value = input.u64();
                    out.sample(&Series::new(&family, &borrowed), value);
                    ExpectedValue::Scalar(value as f64)
                }
                crate::exposition::encode::MetricType::Gauge => {
                    let value = f64::from_bits(input.u64());
                    out.sample_f64(&Series::new(&family, &borrowed), value);
                    ExpectedValue::Scalar(value)
                }
                crate::exposition::encode::MetricType::Histogram => {
                    let mut histogram = Log2Histogram::default();
                    for bucket in &mut histogram.buckets {
                        if input.byte() & 1 == 1 {
                            *bucket = input.u64();
                        }
                    }
                    histogram.sum_ns = input.u64();
                    out.histogram(&HistogramSeries::new(&family, &borrowed), &histogram);
                    expected_histogram(&histogram)
                }
            };
            metrics.push(ExpectedMetric { labels, value });
        }
        if failing {
            out.rollback(mark);
        } else if !metrics.is_empty() {
            let kind = match family.kind {
                crate::exposition::encode::MetricType::Counter => 0,
                crate::exposition::encode::MetricType::Gauge => 1,
                crate::exposition::encode::MetricType::Histogram => 4,
            };
            expected.push(ExpectedFamily { name: family.name, help: family.help, kind, metrics });
        }
    }
    out.finish();
    (buf.to_vec(), expected)
}
