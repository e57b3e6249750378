//! Exposition formats, compression and per-request collector filters, as
//! Prometheus and curl see them.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::TcpStream,
    process::{Command, Stdio},
};

use kernel_exporter_tests::{Exporter, promtool_check_metrics};

/// What Prometheus 2.42 sends by default.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A GET with extra headers over a plain socket; returns (head, body).
fn get(exporter: &Exporter, path: &str, headers: &[(&str, &str)]) -> (String, Vec<u8>) {
    use std::io::Read as _;
    let mut stream = TcpStream::connect(exporter.addr).expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", exporter.addr);
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("header block") + 4;
    (String::from_utf8_lossy(&raw[..split]).to_lowercase(), raw[split..].to_vec())
}

/// Samples parsed by the prometheus-client package's reference parser for
/// `format` ("text" or "openmetrics").
fn parse(format: &str, body: &[u8]) -> BTreeMap<String, f64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/parse_exposition.py");
    let mut child = Command::new("python3")
        .args([script, format])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (cargo xtask test installs prometheus-client)");
    child.stdin.take().expect("stdin").write_all(body).expect("feed parser");
    let out = child.wait_with_output().expect("parser ran");
    assert!(
        out.status.success(),
        "the {format} parser rejected the body: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(body)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .map(|line| {
            let (key, value) = line.rsplit_once(' ').expect("key value");
            (key.to_owned(), value.parse().expect("number"))
        })
        .collect()
}

#[test]
fn openmetrics_when_prometheus_asks_and_values_agree_with_text() {
    let exporter = Exporter::start(&[]);
    let (head, before) = get(&exporter, "/metrics", &[]);
    assert!(head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
    let (head, openmetrics) = get(&exporter, "/metrics", &[("Accept", PROMETHEUS_ACCEPT)]);
    assert!(head.contains(&format!("content-type: {OPENMETRICS}")), "{head}");
    let (_, after) = get(&exporter, "/metrics", &[]);

    assert!(openmetrics.ends_with(b"\n# EOF\n"), "OpenMetrics body must end with # EOF");
    promtool_check_metrics(std::str::from_utf8(&before).unwrap()).unwrap_or_else(|found| panic!("promtool: {found}"));

    let before = parse("text", &before);
    let openmetrics = parse("openmetrics", &openmetrics);
    let after = parse("text", &after);
    // Every series is in both formats; counters (and histogram buckets and
    // counts) read between two text scrapes lie between their values.
    // Gauges (open files, memory, durations) may move either way.
    let stable = |key: &str| key.contains("_total{") || key.contains("_bucket{") || key.contains("_count{");
    for (key, value) in &openmetrics {
        // A series that first counted between the scrapes (a syscall made
        // for the first time) starts from zero.
        let low = before.get(key).unwrap_or(&0.0);
        let Some(high) = after.get(key) else {
            panic!("{key} is in the OpenMetrics body but not in the later text body");
        };
        if stable(key) {
            assert!(low <= value && value <= high, "{key}: text {low} .. {high}, OpenMetrics {value}");
        }
    }
    let missing: Vec<&String> = before.keys().filter(|key| !openmetrics.contains_key(*key)).collect();
    assert!(missing.is_empty(), "in the text body but not in the OpenMetrics one: {missing:?}");
}

#[test]
fn gzip_when_the_client_accepts_it() {
    let exporter = Exporter::start(&[]);
    let (head, compressed) = get(&exporter, "/metrics", &[("Accept-Encoding", "gzip")]);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(compressed.starts_with(&[0x1f, 0x8b]), "not a gzip stream");
    let (head, plain) = get(&exporter, "/metrics", &[]);
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(compressed.len() * 3 < plain.len(), "gzip {} bytes vs {} plain", compressed.len(), plain.len());

    // curl decompresses it into a valid body.
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--compressed", &format!("http://{}/metrics", exporter.addr)])
        .output()
        .expect("run curl");
    assert!(out.status.success());
    promtool_check_metrics(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|found| panic!("promtool: {found}"));
}

#[test]
fn collect_and_exclude_filter_collectors() {
    let exporter = Exporter::start(&["--collector.syscalls"]);
    let only_sched = exporter.request("GET", "/metrics?collect%5B%5D=sched");
    assert_eq!(only_sched.status, 200);
    assert!(only_sched.body.contains("kernel_sched_context_switches_total "));
    assert!(only_sched.body.contains("kernel_exporter_collector_up{collector=\"sched\"} 1"));
    assert!(!only_sched.body.contains("kernel_syscalls_total"), "{}", only_sched.body);
    assert!(!only_sched.body.contains("collector=\"syscalls\""));

    let without_sched = exporter.request("GET", "/metrics?exclude[]=sched");
    assert_eq!(without_sched.status, 200);
    assert!(!without_sched.body.contains("kernel_sched_"), "{}", without_sched.body);
    assert!(without_sched.body.contains("kernel_syscalls_total"));

    let both = exporter.request("GET", "/metrics?collect[]=sched&exclude[]=irq");
    assert_eq!(both.status, 400);
    assert!(both.body.contains("collect[] and exclude[] cannot be used together"), "{}", both.body);
    let unknown = exporter.request("GET", "/metrics?collect[]=nope");
    assert_eq!(unknown.status, 400);
    assert!(unknown.body.contains("\"nope\""), "{}", unknown.body);
}
