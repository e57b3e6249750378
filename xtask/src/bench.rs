//! `cargo xtask bench`: kernel-exporter against node_exporter on this
//! machine, in one run, alternating, plus criterion micro-benchmarks of the
//! encoder and the per-event cost of the kernel programs.
//!
//! Machines here are shared and noisy: every comparison is made between
//! runs interleaved in time, and reported as a ratio.

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kernel_exporter_fixtures::daemon::Daemon;

use crate::{
    floor,
    formats::{self, BucketCosts, FormatCost, SeriesCount},
    prereq::{self, Toolchain, say},
};

/// Rounds of (kernel-exporter, node_exporter) load runs.
const ROUNDS: usize = 3;
/// Length of one load run.
const RUN: Duration = Duration::from_secs(5);
/// Concurrent keep-alive clients, as the issue asks.
const CLIENTS: usize = 4;
/// getppid calls per probe-overhead measurement.
const PROBE_CALLS: u64 = 2_000_000;
/// Ping-pong round trips per context-switch overhead measurement.
const ROUND_TRIPS: u64 = 100_000;
/// Alternating rounds of the probe-overhead measurements (medians reported).
const PROBE_ROUNDS: usize = 5;

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// What every benchmark needs: root, tracefs, the daemon and target/bench/
/// (created). The daemon is `binary` (an earlier build, to compare with)
/// when one is given, else a fresh release build. Returns the toolchain, the
/// daemon and the folder.
pub(crate) fn prepare_with(binary: Option<&Path>) -> anyhow::Result<(Toolchain, PathBuf, PathBuf)> {
    let toolchain = Toolchain::ensure()?;
    if !prereq::is_root() {
        bail!("the benchmark loads BPF programs and needs root; run `sudo -E env PATH=\"$PATH\" cargo xtask bench`");
    }
    prereq::ensure_tracefs()?;
    let binary = match binary {
        Some(binary) => {
            say("bench", &format!("exporter under test: {} (not rebuilt)", binary.display()));
            binary.to_owned()
        }
        None => toolchain.build(true)?,
    };
    let report_dir = prereq::target_dir().join("bench");
    fs::create_dir_all(&report_dir).with_context(|| format!("cannot create {}", report_dir.display()))?;
    Ok((toolchain, binary, report_dir))
}

pub(crate) fn bench(quick: bool, probes_only: bool, exporter_binary: Option<&Path>) -> anyhow::Result<()> {
    let (toolchain, binary, report_dir) = prepare_with(exporter_binary)?;
    prereq::ensure_debian_packages(&[("wrk", "wrk"), ("prometheus-node-exporter", "prometheus-node-exporter")])?;
    if probes_only {
        say("bench", "probe overhead only");
        let probes = probe_overhead(&binary)?;
        let buckets = bucket_costs()?;
        println!("\n{}\n{}", render_probes(&probes), render_buckets(&buckets));
        return Ok(());
    }

    say(
        "bench",
        "criterion micro-benchmarks of the encoder and of reading each map type (cargo bench -p kernel-exporter)",
    );
    let mut criterion = toolchain.cargo();
    criterion.args(["bench", "--package", "kernel-exporter", "--bench", "encode", "--bench", "maps", "--"]);
    if quick {
        criterion.args(["--warm-up-time", "1", "--measurement-time", "2"]);
    }
    prereq::run_checked(&mut criterion, "cargo bench -p kernel-exporter")?;
    let encoder = criterion_estimates(&prereq::target_dir().join("criterion"))?;

    say(
        "bench",
        &format!("end to end: {ROUNDS} alternating rounds of {}s, {CLIENTS} keep-alive clients", RUN.as_secs()),
    );
    let ours_port = kernel_exporter_fixtures::free_port()?;
    let node_port = kernel_exporter_fixtures::free_port()?;
    let mut ours = Server::start("kernel-exporter", Command::new(&binary), ours_port, &[])?;
    let mut node = Server::start("node_exporter", Command::new(NODE_EXPORTER), node_port, &[])?;
    let mut ours_runs = Vec::new();
    let mut node_runs = Vec::new();
    for round in 1..=ROUNDS {
        say("bench", &format!("round {round}/{ROUNDS}: kernel-exporter"));
        ours_runs.push(ours.load()?);
        say("bench", &format!("round {round}/{ROUNDS}: node_exporter"));
        node_runs.push(node.load()?);
    }
    let ours_summary = Summary::of(&ours_runs, ours.peak_rss_kib()?, ours.scrape_size()?);
    let node_summary = Summary::of(&node_runs, node.peak_rss_kib()?, node.scrape_size()?);
    node.stop();
    say("bench", "exposition formats: text, OpenMetrics and protobuf, alternating, one keep-alive connection");
    let (scrapes, rounds) = if quick { (300, 2) } else { (2_000, ROUNDS) };
    let (format_costs, series) = formats::format_costs(ours.port, &|| ours.cpu_seconds(), scrapes, rounds)?;
    ours.stop();

    say("bench", "probe overhead: getppid and ping-pong loops with no program, an empty program, and ours");
    let probes = probe_overhead(&binary)?;
    let buckets = bucket_costs()?;

    let table = render(&ours_summary, &node_summary, &encoder, &probes);
    println!("\n{table}\n{}{}", formats::render(&format_costs, &series), render_buckets(&buckets));
    let json = report_json(&ours_summary, &node_summary, &encoder, &probes, (&format_costs, &series, &buckets));
    let report = report_dir.join("report.json");
    fs::write(&report, json).with_context(|| format!("cannot write {}", report.display()))?;
    say("ok", &format!("report written to {}", report.display()));
    Ok(())
}

/// An exporter under load.
struct Server {
    name: &'static str,
    daemon: Daemon,
    port: u16,
}

/// One load run's figures.
struct Run {
    /// Largest resident set sampled during the run (every 50 ms).
    serving_rss_kib: u64,
    scrapes_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_seconds: f64,
    scrapes: f64,
}

impl Server {
    /// Starts `command` on `port`, its log in `target/bench/NAME.log`,
    /// and waits until it accepts connections.
    fn start(name: &'static str, command: Command, port: u16, args: &[&str]) -> anyhow::Result<Self> {
        let log = prereq::target_dir().join("bench").join(format!("{name}.log"));
        let _ = fs::remove_file(&log);
        let mut daemon = Daemon::spawn(command, SocketAddr::from(([127, 0, 0, 1], port)), args, &log)?;
        daemon.wait_until_accepting(Duration::from_secs(20))?;
        Ok(Self { name, daemon, port })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    /// CPU seconds (user + system) the process has used so far.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.daemon.pid()))?;
        let rest = &stat[stat.rfind(')').context("malformed stat")? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields
            .get(11)
            .zip(fields.get(12))
            .map_or(Ok(0.0), |(u, s)| Ok::<_, anyhow::Error>(u.parse::<f64>()? + s.parse::<f64>()?))?;
        Ok(ticks / 100.0)
    }

    /// `VmHWM`: the peak resident set since start, start-up included.
    fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.daemon.pid(), "VmHWM:")
    }

    /// Bytes and series of one plain scrape.
    fn scrape_size(&self) -> anyhow::Result<(usize, usize)> {
        let out = Command::new("curl").args(["-sS", "--fail", &self.url()]).output()?;
        if !out.status.success() {
            bail!("curl {} failed", self.url());
        }
        let series = out.stdout.split(|&b| b == b'\n').filter(|line| !line.is_empty() && line[0] != b'#').count();
        Ok((out.stdout.len(), series))
    }

    fn load(&mut self) -> anyhow::Result<Run> {
        let cpu_before = self.cpu_seconds()?;
        let pid = self.daemon.pid();
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let sampling = std::sync::Arc::clone(&sampling);
            thread::spawn(move || {
                let mut peak = 0;
                while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(status_kib(pid, "VmRSS:").unwrap_or(0));
                    thread::sleep(Duration::from_millis(50));
                }
                peak
            })
        };
        let out = Command::new("wrk")
            .args(["--latency", "-t", "2", "-c", &CLIENTS.to_string(), "-d", &format!("{}s", RUN.as_secs())])
            .arg(self.url())
            .output()
            .context("cannot run wrk")?;
        let cpu = self.cpu_seconds()? - cpu_before;
        sampling.store(false, std::sync::atomic::Ordering::Relaxed);
        let serving_rss_kib = sampler.join().unwrap_or(0);
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.contains("Non-2xx") {
            bail!("wrk against {} failed:\n{text}", self.name);
        }
        let requests = text
            .lines()
            .find_map(|line| line.split_once(" requests in").map(|(n, _)| n.trim()))
            .and_then(|n| n.parse::<f64>().ok())
            .context("wrk printed no request count")?;
        let rate = text
            .lines()
            .find_map(|line| line.strip_prefix("Requests/sec:"))
            .and_then(|n| n.trim().parse().ok())
            .context("wrk printed no Requests/sec")?;
        let percentile = |p: &str| {
            text.lines()
                .find_map(|line| line.trim().strip_prefix(p).map(str::trim))
                .and_then(duration_ms)
                .with_context(|| format!("wrk printed no {p} latency"))
        };
        Ok(Run {
            serving_rss_kib,
            scrapes_per_second: rate,
            p50_ms: percentile("50%")?,
            p99_ms: percentile("99%")?,
            cpu_seconds: cpu,
            scrapes: requests,
        })
    }

    fn stop(&mut self) {
        self.daemon.kill();
    }
}

/// A `kB` field of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// wrk's "1.23ms", "456.78us", "1.02s" in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// Medians over the rounds.
struct Summary {
    scrapes_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_ms_per_1000: f64,
    serving_rss_mib: f64,
    peak_rss_mib: f64,
    bytes: usize,
    series: usize,
}

/// The middle value (the mean of the two middle ones for an even count);
/// NaN for none.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 0 => (values[middle - 1] + values[middle]) / 2.0,
        _ => values[middle],
    }
}

impl Summary {
    fn of(runs: &[Run], peak_rss_kib: u64, (bytes, series): (usize, usize)) -> Self {
        Self {
            scrapes_per_second: median(runs.iter().map(|r| r.scrapes_per_second).collect()),
            p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
            p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
            cpu_ms_per_1000: median(runs.iter().map(|r| r.cpu_seconds * 1000.0 / r.scrapes * 1000.0).collect()),
            serving_rss_mib: runs.iter().map(|r| r.serving_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
            peak_rss_mib: peak_rss_kib as f64 / 1024.0,
            bytes,
            series,
        }
    }
}

/// Criterion's mean estimates (ns per iteration) by benchmark id.
fn criterion_estimates(dir: &Path) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let mut found = Vec::new();
    for group in fs::read_dir(dir).with_context(|| format!("no criterion results in {}", dir.display()))? {
        let group = group?.path();
        for bench in fs::read_dir(&group)?.filter_map(Result::ok).map(|e| e.path()) {
            let estimates = bench.join("new/estimates.json");
            let benchmark = bench.join("new/benchmark.json");
            let (Ok(estimates), Ok(benchmark)) = (fs::read_to_string(&estimates), fs::read_to_string(&benchmark))
            else {
                continue;
            };
            let mean = json_number(&estimates, "\"mean\"", "\"point_estimate\"");
            let elements = json_number(&benchmark, "\"throughput\"", "\"Elements\"");
            if let Some(mean) = mean {
                let id = format!(
                    "{}/{}",
                    group.file_name().unwrap_or_default().to_string_lossy(),
                    bench.file_name().unwrap_or_default().to_string_lossy()
                );
                let per_second = elements.map_or(f64::NAN, |elements| elements * 1e9 / mean);
                found.push((id, mean, per_second));
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// The first number after `key` then `field` in a JSON text: enough for
/// criterion's two small files, without a JSON dependency.
fn json_number(text: &str, key: &str, field: &str) -> Option<f64> {
    let rest = &text[text.find(key)?..];
    let rest = &rest[rest.find(field)? + field.len()..];
    let rest = rest.trim_start_matches([':', ' ', '{', '"']);
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-' || c == '+'))?;
    rest[..end].parse().ok()
}

/// Per-event costs of the kernel programs, each next to the kernel's own
/// floor: the same tracepoints with an empty program attached.
struct Probes {
    getppid_baseline_ns: f64,
    /// Wall clock added per event (a getppid is two: sys_enter, sys_exit).
    syscalls_ns_per_event: f64,
    syscalls_floor_ns_per_event: f64,
    all_collectors_getppid_ns: f64,
    /// A round trip between two threads pinned to one CPU: two switches.
    pingpong_baseline_ns: f64,
    /// Wall clock added per context switch by the sched collector (its
    /// runqueue-latency histogram is recorded there: one event per wait).
    switch_ns: f64,
    switch_floor_ns: f64,
    /// The sched_switch program's own run time per run, from the kernel's
    /// run statistics, minus the empty program's under the same load.
    switch_body_ns: f64,
    /// As `switch_ns`, with the cgroup collector on too (one shared program).
    switch_with_cgroup_ns: f64,
    /// As `switch_body_ns`, for sched and cgroup together and cgroup alone.
    switch_with_cgroup_body_ns: f64,
    cgroup_alone_body_ns: f64,
}

fn probe_overhead(binary: &Path) -> anyhow::Result<Probes> {
    let getppid = || -> f64 {
        let started = Instant::now();
        for _ in 0..PROBE_CALLS {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc_getppid() };
        }
        started.elapsed().as_nanos() as f64 / PROBE_CALLS as f64
    };
    let pingpong = || -> f64 { pinned_ping_pong(ROUND_TRIPS) };
    let exporter = |args: &[&str]| -> anyhow::Result<Server> {
        let port = kernel_exporter_fixtures::free_port()?;
        Server::start("kernel-exporter", Command::new(binary), port, args)
    };
    let with = |args: &[&str], measure: &dyn Fn() -> f64| -> anyhow::Result<f64> {
        let _server = exporter(args)?;
        Ok(measure())
    };
    let floor = |tracepoints: &[&str], measure: &dyn Fn() -> f64| -> anyhow::Result<f64> {
        let _empty = floor::Program::attach(tracepoints)?;
        Ok(measure())
    };
    let (mut baseline, mut syscalls, mut syscalls_floor, mut all) = (vec![], vec![], vec![], vec![]);
    let (mut pp_base, mut pp_sched, mut pp_floor, mut pp_cgroup) = (vec![], vec![], vec![], vec![]);
    // Alternating, so that a noisy neighbour hits every variant alike.
    for round in 1..=PROBE_ROUNDS {
        say("bench", &format!("probe round {round}/{PROBE_ROUNDS}"));
        baseline.push(getppid());
        syscalls_floor.push(floor(&["sys_enter", "sys_exit"], &getppid)?);
        syscalls.push(with(&["--collector.disable-defaults", "--collector.syscalls"], &getppid)?);
        all.push(with(&[], &getppid)?);
        pp_base.push(pingpong());
        pp_floor.push(floor(&["sched_switch"], &pingpong)?);
        pp_sched.push(with(&["--collector.disable-defaults", "--collector.sched"], &pingpong)?);
        pp_cgroup.push(with(&["--collector.disable-defaults", "--collector.sched", "--collector.cgroup"], &pingpong)?);
    }
    let base = median(baseline);
    let pp = median(pp_base);

    // Body cost from run statistics (they add two clock reads to every run,
    // which is why they are not on for the wall-clock figures above).
    let per_run = |collectors: &[&str]| -> anyhow::Result<f64> {
        let args: Vec<&str> =
            ["--collector.disable-defaults", "--bpf.run-stats"].into_iter().chain(collectors.iter().copied()).collect();
        let server = exporter(&args)?;
        let before = program_run_stats(&server, "sched_switch")?;
        pinned_ping_pong(ROUND_TRIPS);
        let after = program_run_stats(&server, "sched_switch")?;
        Ok((after.0 - before.0) * 1e9 / (after.1 - before.1).max(1.0))
    };
    let ours_per_run = per_run(&["--collector.sched"])?;
    let both_per_run = per_run(&["--collector.sched", "--collector.cgroup"])?;
    let cgroup_per_run = per_run(&["--collector.cgroup"])?;
    let floor_per_run = {
        let _stats = floor::RunStats::enable()?;
        let empty = floor::Program::attach(&["sched_switch"])?;
        let before = empty.run_stats()?;
        pinned_ping_pong(ROUND_TRIPS);
        let after = empty.run_stats()?;
        (after.0 - before.0) as f64 / (after.1 - before.1).max(1) as f64
    };
    Ok(Probes {
        getppid_baseline_ns: base,
        syscalls_ns_per_event: (median(syscalls) - base) / 2.0,
        syscalls_floor_ns_per_event: (median(syscalls_floor) - base) / 2.0,
        all_collectors_getppid_ns: median(all) - base,
        pingpong_baseline_ns: pp,
        switch_ns: (median(pp_sched) - pp) / 2.0,
        switch_floor_ns: (median(pp_floor) - pp) / 2.0,
        switch_body_ns: ours_per_run - floor_per_run,
        switch_with_cgroup_ns: (median(pp_cgroup) - pp) / 2.0,
        switch_with_cgroup_body_ns: both_per_run - floor_per_run,
        cgroup_alone_body_ns: cgroup_per_run - floor_per_run,
    })
}

/// (run seconds, runs) of one of the exporter's programs, from its own
/// metrics.
fn program_run_stats(server: &Server, program: &str) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("curl").args(["-sS", "--fail", &server.url()]).output().context("cannot run curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value = |family: &str| {
        let key = format!("{family}{{program=\"{program}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .with_context(|| format!("no {key} in the exporter's metrics"))
    };
    Ok((value("kernel_exporter_bpf_program_run_seconds_total")?, value("kernel_exporter_bpf_program_runs_total")?))
}

/// `getppid()` without a libc dependency in the xtask.
unsafe fn libc_getppid() -> i32 {
    unsafe extern "C" {
        fn getppid() -> i32;
    }
    // SAFETY: getppid has no arguments and cannot fail.
    unsafe { getppid() }
}

/// Pins the calling thread to CPU 0.
fn pin_to_first_cpu() {
    unsafe extern "C" {
        fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
    }
    let mask = [1u64; 1];
    // SAFETY: the mask outlives the call and its size is given; a failure
    // leaves the thread unpinned, which only makes the figure noisier.
    unsafe { sched_setaffinity(0, size_of_val(&mask), mask.as_ptr()) };
}

/// Two threads on one CPU bouncing a byte over a socket pair; ns per round
/// trip. Sharing a CPU keeps idle periods and cross-CPU wakeups out: a round
/// trip is exactly two context switches.
pub(crate) fn pinned_ping_pong(round_trips: u64) -> f64 {
    use std::{
        io::{Read as _, Write as _},
        os::unix::net::UnixStream,
    };
    let Ok((mut left, mut right)) = UnixStream::pair() else { return f64::NAN };
    let measure = thread::spawn(move || {
        pin_to_first_cpu();
        let echo = thread::spawn(move || {
            pin_to_first_cpu();
            let mut byte = [0u8; 1];
            for _ in 0..round_trips {
                if right.read_exact(&mut byte).is_err() || right.write_all(&byte).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        let mut byte = [1u8; 1];
        for _ in 0..round_trips {
            if left.write_all(&byte).is_err() || left.read_exact(&mut byte).is_err() {
                break;
            }
        }
        let ns = started.elapsed().as_nanos() as f64 / round_trips as f64;
        let _ = echo.join();
        ns
    });
    measure.join().unwrap_or(f64::NAN)
}

fn render(ours: &Summary, node: &Summary, encoder: &[(String, f64, f64)], probes: &Probes) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<34} {:>16} {:>16} {:>12}",
        "end to end (median of rounds)", "kernel-exporter", "node_exporter", "ratio"
    );
    let mut row = |name: &str, a: f64, b: f64| {
        let _ = writeln!(t, "{name:<34} {a:>16.3} {b:>16.3} {:>12.4}", a / b);
    };
    row("scrapes/s", ours.scrapes_per_second, node.scrapes_per_second);
    row("p50 scrape latency (ms)", ours.p50_ms, node.p50_ms);
    row("p99 scrape latency (ms)", ours.p99_ms, node.p99_ms);
    row("CPU ms per 1,000 scrapes", ours.cpu_ms_per_1000, node.cpu_ms_per_1000);
    row("peak RSS while serving (MiB)", ours.serving_rss_mib, node.serving_rss_mib);
    row("peak RSS incl. start-up (MiB)", ours.peak_rss_mib, node.peak_rss_mib);
    row("bytes per scrape", ours.bytes as f64, node.bytes as f64);
    row("series per scrape", ours.series as f64, node.series as f64);
    let _ = writeln!(t, "\n{:<48} {:>14} {:>18}", "encoder and map reads (criterion)", "ns/iter", "series|entries/s");
    for (id, ns, per_second) in encoder {
        let _ = writeln!(t, "{id:<48} {ns:>14.1} {per_second:>18.0}");
    }
    t.push('\n');
    t.push_str(&render_probes(probes));
    t
}

/// The bucket computations' per-event cost on sys_enter.
fn bucket_costs() -> anyhow::Result<BucketCosts> {
    say("bench", "latency bucket computation per event: old and new, in the kernel, alternating");
    formats::bucket_costs(PROBE_ROUNDS, PROBE_CALLS / 4, &|calls| {
        for _ in 0..calls {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc_getppid() };
        }
    })
}

fn render_buckets(buckets: &BucketCosts) -> String {
    format!(
        "latency bucket per event (kernel run statistics; a program that only reads the clock: {:.1} ns): \
         log2 of ns (before issue 17) +{:.1} ns, log2 in 2^-30 s (now) +{:.1} ns\n",
        buckets.clock_only_ns,
        buckets.log2_nanoseconds_ns - buckets.clock_only_ns,
        buckets.log2_seconds_ns - buckets.clock_only_ns
    )
}

fn render_probes(probes: &Probes) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "probe overhead (ns added, median of {PROBE_ROUNDS} alternating rounds)");
    let _ = writeln!(t, "{:<44} {:>10} {:>16} {:>10}", "", "ours", "empty program", "body");
    let mut probe = |name: &str, ours: f64, floor: f64| {
        let _ = writeln!(t, "{name:<44} {ours:>10.1} {floor:>16.1} {:>10.1}", ours - floor);
    };
    probe("syscalls, per event (getppid = 2 events)", probes.syscalls_ns_per_event, probes.syscalls_floor_ns_per_event);
    probe("sched, per context switch (wall clock)", probes.switch_ns, probes.switch_floor_ns);
    probe("sched + cgroup, per context switch (wall clock)", probes.switch_with_cgroup_ns, probes.switch_floor_ns);
    let mut body = |name: &str, ns: f64| {
        let _ = writeln!(t, "{name:<44} {:>10} {:>16} {ns:>10.1}", "", "");
    };
    body("sched_switch body, sched (run statistics)", probes.switch_body_ns);
    body("sched_switch body, sched + cgroup", probes.switch_with_cgroup_body_ns);
    body("sched_switch body, cgroup alone", probes.cgroup_alone_body_ns);
    let _ = writeln!(t, "{:<44} {:>10.1}", "all default collectors, per getppid", probes.all_collectors_getppid_ns);
    let _ = writeln!(
        t,
        "baselines: getppid {:.1} ns, pinned ping-pong {:.0} ns per round trip",
        probes.getppid_baseline_ns, probes.pingpong_baseline_ns
    );
    t
}

fn report_json(
    ours: &Summary,
    node: &Summary,
    encoder: &[(String, f64, f64)],
    probes: &Probes,
    (format_costs, series, buckets): (&[FormatCost], &SeriesCount, &BucketCosts),
) -> String {
    let summary = |s: &Summary| {
        format!(
            "{{\"scrapes_per_second\": {:.3}, \"p50_ms\": {:.4}, \"p99_ms\": {:.4}, \"cpu_ms_per_1000_scrapes\": {:.3}, \"serving_rss_mib\": {:.2}, \"peak_rss_mib\": {:.2}, \"bytes_per_scrape\": {}, \"series_per_scrape\": {}}}",
            s.scrapes_per_second,
            s.p50_ms,
            s.p99_ms,
            s.cpu_ms_per_1000,
            s.serving_rss_mib,
            s.peak_rss_mib,
            s.bytes,
            s.series
        )
    };
    let encoder: Vec<String> = encoder
        .iter()
        .map(|(id, ns, per_second)| {
            format!("{{\"id\": \"{id}\", \"ns_per_iter\": {ns:.2}, \"series_per_second\": {per_second:.0}}}")
        })
        .collect();
    let format_costs: Vec<String> = format_costs
        .iter()
        .map(|cost| {
            format!(
                "{{\"format\": \"{}\", \"bytes\": {}, \"gzip_bytes\": {}, \"cpu_us_per_scrape\": {:.2}}}",
                cost.name, cost.bytes, cost.gzip_bytes, cost.cpu_us_per_scrape
            )
        })
        .collect();
    let exposition = format!(
        "{{\"formats\": [{}], \"kernel_histograms\": {}, \"series_classic\": {}, \"series_native\": {}, \"bucket_ns\": {{\"clock_only\": {:.2}, \"log2_nanoseconds\": {:.2}, \"log2_seconds\": {:.2}}}}}",
        format_costs.join(", "),
        series.kernel_histograms,
        series.classic,
        series.native,
        buckets.clock_only_ns,
        buckets.log2_nanoseconds_ns,
        buckets.log2_seconds_ns
    );
    format!(
        "{{\n  \"rounds\": {ROUNDS},\n  \"run_seconds\": {},\n  \"clients\": {CLIENTS},\n  \"kernel_exporter\": {},\n  \"node_exporter\": {},\n  \"ratios\": {{\"cpu_per_scrape\": {:.5}, \"p50\": {:.5}, \"serving_rss\": {:.4}, \"peak_rss\": {:.4}}},\n  \"encoder\": [{}],\n  \"probes_ns\": {{\"getppid_baseline\": {:.2}, \"syscalls_per_event\": {:.2}, \"syscalls_empty_program_per_event\": {:.2}, \"all_collectors_per_getppid\": {:.2}, \"pinned_pingpong_baseline\": {:.1}, \"sched_per_switch\": {:.2}, \"sched_empty_program_per_switch\": {:.2}, \"sched_switch_body\": {:.2}, \"sched_cgroup_per_switch\": {:.2}, \"sched_cgroup_switch_body\": {:.2}, \"cgroup_switch_body\": {:.2}}},\n  \"exposition\": {}\n}}\n",
        RUN.as_secs(),
        summary(ours),
        summary(node),
        ours.cpu_ms_per_1000 / node.cpu_ms_per_1000,
        ours.p50_ms / node.p50_ms,
        ours.serving_rss_mib / node.serving_rss_mib,
        ours.peak_rss_mib / node.peak_rss_mib,
        encoder.join(", "),
        probes.getppid_baseline_ns,
        probes.syscalls_ns_per_event,
        probes.syscalls_floor_ns_per_event,
        probes.all_collectors_getppid_ns,
        probes.pingpong_baseline_ns,
        probes.switch_ns,
        probes.switch_floor_ns,
        probes.switch_body_ns,
        probes.switch_with_cgroup_ns,
        probes.switch_with_cgroup_body_ns,
        probes.cgroup_alone_body_ns,
        exposition,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn parses_wrk_durations() {
        assert_eq!(duration_ms("1.50ms"), Some(1.5));
        assert_eq!(duration_ms("250.00us"), Some(0.25));
        assert_eq!(duration_ms("1.20s"), Some(1200.0));
        assert_eq!(duration_ms("fast"), None);
    }

    #[test]
    fn reads_criterion_numbers() {
        let estimates =
            r#"{"mean":{"confidence_interval":{"lower_bound":1.0},"point_estimate":1234.5,"standard_error":2.0}}"#;
        assert_eq!(json_number(estimates, "\"mean\"", "\"point_estimate\""), Some(1234.5));
        let benchmark = r#"{"group_id":"encode","throughput":{"Elements":1000},"full_id":"x"}"#;
        assert_eq!(json_number(benchmark, "\"throughput\"", "\"Elements\""), Some(1000.0));
        assert_eq!(json_number("{}", "\"mean\"", "\"point_estimate\""), None);
    }
}
