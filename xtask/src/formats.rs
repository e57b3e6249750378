//! The benchmark's exposition-format and histogram figures: bytes and CPU
//! per scrape for text 0.0.4, OpenMetrics and protobuf side by side, the
//! series Prometheus stores per histogram (classic against native), and the
//! in-kernel cost of the latency-bucket computation before and after issue
//! 17 (log2 of nanoseconds against log2 in units of 2^-30 s).

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    bench::median,
    floor::{self, Bucket, Program, Value},
    prereq::say,
};

/// The formats, with the `Accept` header Prometheus sends for each.
const FORMATS: [(&str, &str); 3] = [
    ("text 0.0.4", "text/plain;version=0.0.4"),
    ("OpenMetrics 1.0.0", "application/openmetrics-text;version=1.0.0"),
    (
        "protobuf (delimited)",
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
    ),
];

/// One format's figures.
pub(crate) struct FormatCost {
    pub(crate) name: &'static str,
    pub(crate) bytes: usize,
    pub(crate) gzip_bytes: usize,
    pub(crate) cpu_us_per_scrape: f64,
}

/// Series of one scrape, and what Prometheus stores of them.
pub(crate) struct SeriesCount {
    pub(crate) kernel_histograms: usize,
    /// Every series of a text scrape (classic histograms: 27 each).
    pub(crate) classic: usize,
    /// The same with each kernel histogram as one native series.
    pub(crate) native: usize,
}

/// One HTTP/1.1 keep-alive connection: a scrape's cost without a
/// connection's.
struct Client {
    reader: BufReader<TcpStream>,
    port: u16,
}

impl Client {
    fn connect(port: u16) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).context("cannot connect to the exporter")?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self { reader: BufReader::new(stream), port })
    }

    /// The body's length on the wire and the body.
    fn get(&mut self, accept: &str, gzip: bool) -> anyhow::Result<Vec<u8>> {
        let encoding = if gzip { "Accept-Encoding: gzip\r\n" } else { "" };
        write!(
            self.reader.get_mut(),
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: {accept}\r\n{encoding}\r\n",
            self.port
        )?;
        let mut length = None;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("scrape failed: {line}");
        }
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("no Content-Length")?];
        self.reader.read_exact(&mut body)?;
        Ok(body)
    }
}

/// `scrapes` scrapes per format per round, formats alternating; the
/// exporter's CPU per scrape is the median over `rounds`.
pub(crate) fn format_costs(
    port: u16,
    cpu_seconds: &dyn Fn() -> anyhow::Result<f64>,
    scrapes: usize,
    rounds: usize,
) -> anyhow::Result<(Vec<FormatCost>, SeriesCount)> {
    let mut client = Client::connect(port)?;
    let mut per_scrape = vec![Vec::new(); FORMATS.len()];
    for round in 1..=rounds {
        say("bench", &format!("formats round {round}/{rounds}: {scrapes} scrapes each over one connection"));
        for (i, (_, accept)) in FORMATS.iter().enumerate() {
            let before = cpu_seconds()?;
            for _ in 0..scrapes {
                client.get(accept, false)?;
            }
            per_scrape[i].push((cpu_seconds()? - before) * 1e6 / scrapes as f64);
        }
    }
    let mut costs = Vec::new();
    for ((name, accept), cpu) in FORMATS.iter().zip(per_scrape) {
        costs.push(FormatCost {
            name,
            bytes: client.get(accept, false)?.len(),
            gzip_bytes: client.get(accept, true)?.len(),
            cpu_us_per_scrape: median(cpu),
        });
    }
    let text = String::from_utf8(client.get(FORMATS[0].1, false)?).context("a text body")?;
    Ok((costs, count_series(&text)))
}

/// Series of a text body, and how many of them are kernel histograms
/// (`kernel_*` families of type histogram, each 27 series).
fn count_series(text: &str) -> SeriesCount {
    let histograms: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" histogram"))
        .filter(|name| name.starts_with("kernel_") && !name.starts_with("kernel_exporter_"))
        .collect();
    let samples: Vec<&str> = text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()).collect();
    let kernel_histograms = samples
        .iter()
        .filter(|line| {
            histograms.iter().any(|name| line.strip_prefix(name).is_some_and(|rest| rest.starts_with("_count")))
        })
        .count();
    SeriesCount {
        kernel_histograms,
        classic: samples.len(),
        native: samples.len().saturating_sub(kernel_histograms * 26),
    }
}

/// In-kernel cost per event of the bucket computations, in ns.
pub(crate) struct BucketCosts {
    /// A program that reads the clock and nothing else.
    pub(crate) clock_only_ns: f64,
    pub(crate) log2_nanoseconds_ns: f64,
    pub(crate) log2_seconds_ns: f64,
}

/// The bucket of `ns` as each layout defines it (the reference the
/// hand-assembled programs are checked against before they are timed).
fn reference(bucket: Bucket, ns: u64) -> u32 {
    match bucket {
        Bucket::None => ns as u32,
        Bucket::Log2Nanoseconds => ns.max(1).ilog2().min(35),
        Bucket::Log2Seconds => (0..=40u32).find(|&b| u128::from(ns) << 30 <= 1_000_000_000u128 << b).unwrap_or(41),
    }
}

/// Checks both bucket programs against [`reference`] in the kernel
/// (BPF_PROG_TEST_RUN), then times each on `sys_enter` under `getppid`
/// calls with the kernel's run statistics, alternating, medians of
/// `rounds`.
pub(crate) fn bucket_costs(rounds: usize, calls: u64, getppid: &dyn Fn(u64)) -> anyhow::Result<BucketCosts> {
    for bucket in [Bucket::Log2Nanoseconds, Bucket::Log2Seconds] {
        let program = Program::load_and_attach(b"xtask_bucket", &floor::bucket_program(Value::Argument, bucket), &[])?;
        let mut values: Vec<u64> = (0..64).flat_map(|s| [1u64 << s, (1u64 << s) - 1, (1u64 << s) + 1]).collect();
        values.extend((0..=40).flat_map(|b| {
            let edge = ((1_000_000_000u128 << b) >> 30) as u64;
            [edge.saturating_sub(1), edge, edge + 1]
        }));
        values.extend([0, 999, 1_000_000_000, 1_000_000_001, u64::MAX]);
        for ns in values {
            let got = program.test_run(ns)?;
            if got != reference(bucket, ns) {
                bail!("the {bucket:?} program puts {ns} ns in bucket {got}, not {}", reference(bucket, ns));
            }
        }
    }
    let _stats = floor::RunStats::enable()?;
    let mut per_run = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, bucket) in [Bucket::None, Bucket::Log2Nanoseconds, Bucket::Log2Seconds].into_iter().enumerate() {
            let program = Program::load_and_attach(
                b"xtask_bucket",
                &floor::bucket_program(Value::Clock, bucket),
                &["sys_enter"],
            )?;
            let before = program.run_stats()?;
            getppid(calls);
            let after = program.run_stats()?;
            per_run[i].push((after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64);
        }
    }
    let [clock, old, new] = per_run.map(median);
    Ok(BucketCosts { clock_only_ns: clock, log2_nanoseconds_ns: old, log2_seconds_ns: new })
}

pub(crate) fn render(costs: &[FormatCost], series: &SeriesCount) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<34} {:>14} {:>14} {:>18}",
        "exposition formats (one scrape)", "bytes", "gzip bytes", "CPU µs per scrape"
    );
    for cost in costs {
        let _ = writeln!(
            t,
            "{:<34} {:>14} {:>14} {:>18.1}",
            cost.name, cost.bytes, cost.gzip_bytes, cost.cpu_us_per_scrape
        );
    }
    let _ = writeln!(
        t,
        "series Prometheus stores: classic histograms 27 each (24 le + Inf + sum + count), native 1 each; \
         this scrape: {} kernel histograms, {} series with classic, {} with native",
        series.kernel_histograms, series.classic, series.native
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_agree_with_the_layouts() {
        assert_eq!(reference(Bucket::Log2Nanoseconds, 0), 0);
        assert_eq!(reference(Bucket::Log2Nanoseconds, 1024), 10);
        assert_eq!(reference(Bucket::Log2Nanoseconds, u64::MAX), 35);
        assert_eq!(reference(Bucket::Log2Seconds, 0), 0);
        assert_eq!(reference(Bucket::Log2Seconds, 1), 1);
        assert_eq!(reference(Bucket::Log2Seconds, 1_000_000_000), 30);
        assert_eq!(reference(Bucket::Log2Seconds, 1_000_000_001), 31);
        assert_eq!(reference(Bucket::Log2Seconds, u64::MAX), 41);
    }

    #[test]
    fn counts_classic_and_native_series() {
        let text = "# TYPE kernel_x_seconds histogram\nkernel_x_seconds_bucket{le=\"1.0\"} 1\nkernel_x_seconds_sum 1\n\
                    kernel_x_seconds_count{op=\"a\"} 1\nkernel_x_seconds_count{op=\"b\"} 1\n\
                    # TYPE kernel_exporter_y_seconds histogram\nkernel_exporter_y_seconds_count 1\n\
                    # TYPE kernel_z_total counter\nkernel_z_total 3\n";
        let count = count_series(text);
        assert_eq!(count.kernel_histograms, 2);
        assert_eq!(count.classic, 6);
        // (A real histogram has 27 series; these two have four between them.)
        assert_eq!(count.native, 0);
    }
}
