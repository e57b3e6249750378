//! `cargo xtask soak --minutes N`: the release daemon behind its whole front
//! door (mutual TLS, basic auth, the allowlist) on loopback, scraped without
//! pause by good clients while bad ones hammer it, for N minutes.
//!
//! Good clients (curl with the dev PKI's client certificate and the right
//! password) scrape over kept-alive HTTP/1.1 and HTTP/2 connections and over
//! a new connection each time, in both exposition formats, gzip and not;
//! every body is checked. Bad clients: a wrong password, no client
//! certificate, garbage instead of a TLS ClientHello, plain HTTP on the TLS
//! port, connections that stay silent, a 512 KiB request header, and a
//! source outside the allowlist. Each must get its refusal (401, no
//! handshake, a closed connection, 400, a close by the handshake timeout,
//! 431 or an HTTP/2 reset, a dropped SYN) and nothing else.
//!
//! Every minute it prints the daemon's RSS and open descriptors and the
//! outcomes per client kind; at the end a table of start against end, and
//! the daemon's log lines that are not the expected ones (start-up lines,
//! access-log lines). It fails when a good scrape fails, a bad client gets
//! anything but its refusal, RSS grows by more than [`RSS_TOLERANCE_MIB`]
//! MiB or [`RSS_TOLERANCE_PERCENT`] % (whichever is larger) between the
//! first and the last minute after warm-up, the descriptors open at rest
//! differ between start and end, or the daemon logs an unexpected warning
//! or error.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use kernel_exporter_fixtures::{
    credentials::{self, PASSWORD, USER},
    daemon::Daemon,
};

use crate::{
    prereq::{self, Toolchain, say},
    run,
};

/// RSS may grow this much (MiB) after warm-up...
const RSS_TOLERANCE_MIB: f64 = 2.0;
/// ...or this much (percent), whichever is larger.
const RSS_TOLERANCE_PERCENT: f64 = 10.0;

/// How often RSS and descriptors are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// A silent connection must be closed by the daemon within this (its TLS
/// handshake timeout is 10 s).
const IDLE_CLOSE_BOUND: Duration = Duration::from_secs(15);

/// Silent connections held open at once.
const IDLE_CONNECTIONS: usize = 10;

/// A source on `lo` outside the allowlist (127.0.0.1/32).
const OUTSIDE: &str = "127.0.0.2";

/// The client kinds, good ones first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    KeepAliveHttp1,
    KeepAliveHttp2,
    NewConnection,
    WrongPassword,
    NoClientCert,
    GarbageTls,
    PlainHttp,
    Idle,
    OversizedHeader,
    OutsideAllowlist,
}

impl Kind {
    const ALL: [Self; 10] = [
        Self::KeepAliveHttp1,
        Self::KeepAliveHttp2,
        Self::NewConnection,
        Self::WrongPassword,
        Self::NoClientCert,
        Self::GarbageTls,
        Self::PlainHttp,
        Self::Idle,
        Self::OversizedHeader,
        Self::OutsideAllowlist,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::KeepAliveHttp1 => "good, keep-alive HTTP/1.1",
            Self::KeepAliveHttp2 => "good, keep-alive HTTP/2",
            Self::NewConnection => "good, new connection each",
            Self::WrongPassword => "wrong password → 401",
            Self::NoClientCert => "no client cert → no handshake",
            Self::GarbageTls => "garbage ClientHello → closed",
            Self::PlainHttp => "plain HTTP → 400",
            Self::Idle => "silent connection → closed",
            Self::OversizedHeader => "512 KiB header → 431 / h2 reset",
            Self::OutsideAllowlist => "127.0.0.2 → SYN dropped",
        }
    }

    /// For the progress lines.
    const fn short(self) -> &'static str {
        match self {
            Self::KeepAliveHttp1 => "keep-alive h1",
            Self::KeepAliveHttp2 => "keep-alive h2",
            Self::NewConnection => "new conn",
            Self::WrongPassword => "wrong pw",
            Self::NoClientCert => "no cert",
            Self::GarbageTls => "garbage TLS",
            Self::PlainHttp => "plain HTTP",
            Self::Idle => "silent",
            Self::OversizedHeader => "big header",
            Self::OutsideAllowlist => "outside",
        }
    }

    /// Pause between rounds.
    const fn pause(self) -> Duration {
        match self {
            Self::OversizedHeader | Self::OutsideAllowlist => Duration::from_secs(2),
            Self::Idle => Duration::ZERO,
            _ => Duration::from_secs(1),
        }
    }
}

/// Outcomes of one kind.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, for the report.
    examples: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut examples = self.examples.lock().unwrap_or_else(PoisonError::into_inner);
                if examples.len() < 5 {
                    examples.push(why);
                }
            }
        }
    }

    fn counts(&self) -> (u64, u64) {
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// Where the clients find the daemon and their credentials.
struct Target {
    addr: SocketAddr,
    pki: PathBuf,
    /// Scratch space: response bodies, the oversized header.
    dir: PathBuf,
}

impl Target {
    fn url(&self) -> String {
        format!("https://{}/metrics", self.addr)
    }

    fn file(&self, name: &str) -> String {
        self.pki.join(name).display().to_string()
    }
}

/// One RSS and descriptor sample.
#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

pub(crate) fn soak(minutes: u64) -> anyhow::Result<()> {
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    let binary = prepare()?;
    let target = Arc::new(Target::prepare()?);
    let mut daemon = start_daemon(&binary, &target)?;
    let rest_start = prime(&target, &daemon)?;
    let run = run_clients(&target, &mut daemon, minutes, rest_start)?;
    let end = wind_down(&target, daemon)?;
    let figures = Figures::of(&run);
    print!("{}", report(&target, &run, &figures, &end, minutes));
    verdict(&run, &figures, &end)
}

/// Builds the release daemon and checks what the soak needs: root, tracefs,
/// curl and openssl.
fn prepare() -> anyhow::Result<PathBuf> {
    let toolchain = Toolchain::ensure()?;
    let binary = toolchain.build(true)?;
    if !run::can_load_bpf() {
        bail!("the soak runs the daemon, which needs root or CAP_BPF and CAP_PERFMON; run it as root");
    }
    prereq::ensure_tracefs()?;
    prereq::ensure_debian_packages(&[("curl", "curl"), ("openssl", "openssl")])?;
    Ok(binary)
}

impl Target {
    /// The dev PKI, a scratch folder with the soak's web config (mutual TLS,
    /// basic auth, 127.0.0.1/32 allowed) and the oversized header, and a
    /// free loopback port.
    fn prepare() -> anyhow::Result<Self> {
        let pki = run::dev_pki()?;
        let dir = prereq::target_dir().join("soak");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let pki_file = |name: &str| pki.join(name).display().to_string();
        fs::write(
            dir.join("web.yml"),
            format!(
                "# Made by `cargo xtask soak`.\ntls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n  \
                 client_auth_type: RequireAndVerifyClientCert\n{}allowed_sources: [127.0.0.1/32]\n",
                pki_file("server.crt"),
                pki_file("server.key"),
                pki_file("ca.crt"),
                credentials::basic_auth_users(),
            ),
        )?;
        let mut header = String::from("X-Soak-Padding: ");
        header.extend(std::iter::repeat_n('a', 512 * 1024));
        fs::write(dir.join("oversized-header.txt"), header + "\n")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], kernel_exporter_fixtures::free_port()?));
        Ok(Self { addr, pki, dir })
    }
}

/// Starts the daemon with the soak's web config; ready once it logs that it
/// listens (a probe connection would count as a failed handshake).
fn start_daemon(binary: &Path, target: &Target) -> anyhow::Result<Daemon> {
    let log = target.dir.join("exporter.log");
    say("soak", &format!("starting {} on {} (log: {})", binary.display(), target.addr, log.display()));
    let config = format!("--web.config.file={}", target.dir.join("web.yml").display());
    let mut daemon = Daemon::spawn(Command::new(binary), target.addr, &[config], &log)?;
    daemon.wait_until_logged("msg=listening", Duration::from_secs(30))?;
    Ok(daemon)
}

/// What is open at rest, counted after one round of every good variant (so
/// whatever the daemon opens once on first use is already open).
#[derive(Clone, Copy)]
struct AtRest {
    fds: usize,
    rss_kib: u64,
}

fn prime(target: &Target, daemon: &Daemon) -> anyhow::Result<AtRest> {
    for kind in [Kind::KeepAliveHttp1, Kind::KeepAliveHttp2] {
        for outcome in round(kind, target, 0) {
            outcome.map_err(|why| anyhow::anyhow!("priming scrape ({}) failed: {why}", kind.name()))?;
        }
    }
    thread::sleep(Duration::from_secs(1));
    Ok(AtRest { fds: fds(daemon.pid())?, rss_kib: rss_kib(daemon.pid())? })
}

/// The load phase: what was sampled and tallied.
struct ClientsRun {
    rest_start: AtRest,
    total: Duration,
    warm_up: Duration,
    samples: Vec<Sample>,
    tallies: BTreeMap<Kind, Tally>,
}

/// Runs every client kind in its own thread for `minutes`, sampling the
/// daemon's RSS and descriptors and printing progress every minute.
fn run_clients(
    target: &Arc<Target>,
    daemon: &mut Daemon,
    minutes: u64,
    rest_start: AtRest,
) -> anyhow::Result<ClientsRun> {
    let total = Duration::from_secs(minutes * 60);
    let warm_up = if minutes >= 3 { Duration::from_secs(60) } else { total / 5 };
    say(
        "soak",
        &format!(
            "{minutes} min of mixed clients ({} s warm-up); at rest: RSS {}, {} fds",
            warm_up.as_secs(),
            mib(rest_start.rss_kib),
            rest_start.fds
        ),
    );
    let tallies: Arc<BTreeMap<Kind, Tally>> =
        Arc::new(Kind::ALL.iter().map(|&kind| (kind, Tally::default())).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = Kind::ALL
        .iter()
        .map(|&kind| {
            let (target, tallies, stop) = (Arc::clone(target), Arc::clone(&tallies), Arc::clone(&stop));
            thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for outcome in round(kind, &target, n) {
                        tallies[&kind].record(outcome);
                    }
                    n += 1;
                    sleep_unless(&stop, kind.pause());
                }
            })
        })
        .collect();

    let sampled = sample_until(daemon, total, &tallies, minutes);
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    let samples = sampled?;
    let tallies = Arc::try_unwrap(tallies).map_err(|_| anyhow::anyhow!("a client thread outlived the soak"))?;
    Ok(ClientsRun { rest_start, total, warm_up, samples, tallies })
}

/// Samples RSS and descriptors every [`SAMPLE_EVERY`] for `total`; fails at
/// once if the daemon exits.
fn sample_until(
    daemon: &mut Daemon,
    total: Duration,
    tallies: &BTreeMap<Kind, Tally>,
    minutes: u64,
) -> anyhow::Result<Vec<Sample>> {
    let began = Instant::now();
    let mut samples = Vec::new();
    let mut next_report = Duration::from_secs(60);
    while began.elapsed() < total {
        thread::sleep(SAMPLE_EVERY.min(total.saturating_sub(began.elapsed())));
        if daemon.try_wait()?.is_some() {
            bail!("the daemon exited during the soak; {}", daemon.log_tail(40));
        }
        let sample = Sample { at: began.elapsed(), rss_kib: rss_kib(daemon.pid())?, fds: fds(daemon.pid())? };
        samples.push(sample);
        if sample.at >= next_report {
            println!("{}", progress(&sample, minutes, tallies));
            next_report += Duration::from_secs(60);
        }
    }
    Ok(samples)
}

/// The daemon after the clients stopped: at rest again, then SIGTERM.
struct End {
    rest: AtRest,
    own_metrics: String,
    status: std::process::ExitStatus,
    log: String,
}

fn wind_down(target: &Target, mut daemon: Daemon) -> anyhow::Result<End> {
    // Silent connections of the last round are closed by now; give the
    // daemon a moment to finish the rest.
    thread::sleep(Duration::from_secs(2));
    let rest = AtRest { fds: fds(daemon.pid())?, rss_kib: rss_kib(daemon.pid())? };
    let own_metrics = good_scrape_body(target).unwrap_or_default();
    let (status, _) = daemon.stop(libc::SIGTERM, Duration::from_secs(5))?;
    Ok(End { rest, own_metrics, status, log: daemon.log() })
}

/// Medians of the first and the last window after warm-up: the first and
/// the last minute (or a third of what is left, on short runs).
struct Figures {
    rss_first: u64,
    rss_last: u64,
    fds_first: u64,
    fds_last: u64,
    rss_peak: u64,
    rss_allowed_kib: f64,
    rss_growth_kib: f64,
}

impl Figures {
    fn of(run: &ClientsRun) -> Self {
        let window = Duration::from_secs(60).min(run.total.saturating_sub(run.warm_up) / 3);
        let first: Vec<Sample> =
            run.samples.iter().copied().filter(|s| s.at >= run.warm_up && s.at < run.warm_up + window).collect();
        let last: Vec<Sample> = run.samples.iter().copied().filter(|s| s.at + window >= run.total).collect();
        let median = |window: &[Sample], key: fn(&Sample) -> u64| {
            let mut values: Vec<u64> = window.iter().map(key).collect();
            values.sort_unstable();
            values.get(values.len() / 2).copied().unwrap_or(0)
        };
        let rss_first = median(&first, |s| s.rss_kib);
        let rss_last = median(&last, |s| s.rss_kib);
        Self {
            rss_first,
            rss_last,
            fds_first: median(&first, |s| s.fds as u64),
            fds_last: median(&last, |s| s.fds as u64),
            rss_peak: run.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
            rss_allowed_kib: (RSS_TOLERANCE_MIB * 1024.0).max(rss_first as f64 * RSS_TOLERANCE_PERCENT / 100.0),
            rss_growth_kib: rss_last as f64 - rss_first as f64,
        }
    }
}

/// The table printed at the end: start against end, outcomes per client
/// kind, the daemon's refusal counters, its unexpected log lines.
fn report(target: &Target, run: &ClientsRun, figures: &Figures, end: &End, minutes: u64) -> String {
    let mut report = String::new();
    let _ = writeln!(
        report,
        "\nsoak: {minutes} min against {}, warm-up {} s, {} samples",
        target.addr,
        run.warm_up.as_secs(),
        run.samples.len()
    );
    let _ = writeln!(report, "{:<54} {:>12} {:>12} {:>10} {:>12}", "", "start", "end", "change", "allowed");
    let _ = writeln!(
        report,
        "{:<54} {:>12} {:>12} {:>+10.2} {:>12}",
        "RSS MiB (median of first / last minute after warm-up)",
        format!("{:.2}", figures.rss_first as f64 / 1024.0),
        format!("{:.2}", figures.rss_last as f64 / 1024.0),
        figures.rss_growth_kib / 1024.0,
        format!("+{:.2}", figures.rss_allowed_kib / 1024.0),
    );
    let _ = writeln!(
        report,
        "{:<54} {:>12} {:>12} {:>+10} {:>12}",
        "open fds under load (median)",
        figures.fds_first,
        figures.fds_last,
        figures.fds_last as i64 - figures.fds_first as i64,
        "(report)"
    );
    let _ = writeln!(
        report,
        "{:<54} {:>12} {:>12} {:>+10} {:>12}",
        "open fds at rest (before / after)",
        run.rest_start.fds,
        end.rest.fds,
        end.rest.fds as i64 - run.rest_start.fds as i64,
        "0"
    );
    let _ = writeln!(
        report,
        "{:<54} {:>12} {:>12} {:>10} {:>12}",
        "RSS MiB at rest (before / after), peak",
        format!("{:.2}", run.rest_start.rss_kib as f64 / 1024.0),
        format!("{:.2}", end.rest.rss_kib as f64 / 1024.0),
        format!("peak {:.2}", figures.rss_peak as f64 / 1024.0),
        ""
    );
    let _ = writeln!(report, "\n{:<54} {:>10} {:>10}", "client kind", "as expected", "not");
    for (kind, tally) in &run.tallies {
        let (ok, failed) = tally.counts();
        let _ = writeln!(report, "{:<54} {ok:>10} {failed:>10}", kind.name());
    }
    for line in end.own_metrics.lines().filter(|line| {
        [
            "kernel_exporter_tls_handshake_failures_total{",
            "kernel_exporter_auth_failures_total{",
            "kernel_exporter_packets_total{",
        ]
        .iter()
        .any(|prefix| line.starts_with(prefix))
            && !line.ends_with(" 0")
    }) {
        let _ = writeln!(report, "  daemon: {line}");
    }
    let unexpected = unexpected_log_lines(&end.log);
    let _ = writeln!(report, "\ndaemon log: {} lines, {} unexpected", end.log.lines().count(), unexpected.len());
    for (line, count) in &unexpected {
        let _ = writeln!(report, "  {count:>5} × {line}");
    }
    report
}

/// Passes, or fails naming every bound that was crossed.
fn verdict(run: &ClientsRun, figures: &Figures, end: &End) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for (kind, tally) in &run.tallies {
        let (ok, failed) = tally.counts();
        if failed > 0 {
            let examples = tally.examples.lock().unwrap_or_else(PoisonError::into_inner);
            failures.push(format!(
                "{}: {failed} of {} not as expected, e.g. {}",
                kind.name(),
                ok + failed,
                examples.join(" | ")
            ));
        }
        if ok == 0 {
            failures.push(format!("{}: never ran to completion", kind.name()));
        }
    }
    if figures.rss_growth_kib > figures.rss_allowed_kib {
        failures.push(format!(
            "RSS grew by {:.2} MiB after warm-up (allowed {:.2})",
            figures.rss_growth_kib / 1024.0,
            figures.rss_allowed_kib / 1024.0
        ));
    }
    if end.rest.fds != run.rest_start.fds {
        failures.push(format!("open descriptors at rest went from {} to {}", run.rest_start.fds, end.rest.fds));
    }
    let bad_lines = unexpected_log_lines(&end.log)
        .keys()
        .filter(|line| line.contains("level=warn") || line.contains("level=error"))
        .count();
    if bad_lines > 0 {
        failures.push(format!("{bad_lines} kinds of unexpected warning or error lines in the daemon's log"));
    }
    if !end.status.success() {
        failures.push(format!("the daemon exited with {} on SIGTERM", end.status));
    }
    if failures.is_empty() {
        say("ok", "soak passed");
        Ok(())
    } else {
        bail!("soak failed:\n  {}", failures.join("\n  "))
    }
}

fn sleep_unless(stop: &AtomicBool, pause: Duration) {
    let until = Instant::now() + pause;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        thread::sleep(Duration::from_millis(100).min(until.saturating_duration_since(Instant::now())));
    }
}

fn progress(sample: &Sample, minutes: u64, tallies: &BTreeMap<Kind, Tally>) -> String {
    let mut line = format!(
        "soak: minute {:>3}/{minutes}: RSS {}, {} fds | as expected/not:",
        sample.at.as_secs() / 60,
        mib(sample.rss_kib),
        sample.fds
    );
    for (kind, tally) in tallies {
        let (ok, failed) = tally.counts();
        let _ = write!(line, " {} {ok}/{failed};", kind.short());
    }
    line.pop();
    line
}

fn mib(kib: u64) -> String {
    format!("{:.2} MiB", kib as f64 / 1024.0)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    crate::bench::status_kib(pid, "VmRSS:")
}

fn fds(pid: u32) -> anyhow::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd")).context("cannot list the daemon's descriptors")?.count())
}

/// Lines of the daemon's log that are neither start-up, shutdown nor
/// access-log lines, with how often each occurred (timestamps removed).
fn unexpected_log_lines(log: &str) -> BTreeMap<String, usize> {
    const EXPECTED: [&str; 7] = [
        "source=access ",
        "msg=\"collector attached\"",
        "msg=listening",
        "msg=\"dropped every capability\"",
        "msg=\"web config: ",
        "msg=\"received signal\"",
        "msg=\"shutting down: detaching BPF programs\"",
    ];
    let mut unexpected = BTreeMap::new();
    for line in log.lines() {
        if EXPECTED.iter().any(|expected| line.contains(expected)) {
            continue;
        }
        let without_time =
            line.split_once(' ').filter(|(time, _)| time.starts_with("time=")).map_or(line, |(_, rest)| rest);
        *unexpected.entry(without_time.to_owned()).or_insert(0) += 1;
    }
    unexpected
}

/// One round of `kind`; one outcome per request or connection.
fn round(kind: Kind, target: &Target, n: u64) -> Vec<Result<(), String>> {
    match kind {
        Kind::KeepAliveHttp1 | Kind::KeepAliveHttp2 => {
            let http = if kind == Kind::KeepAliveHttp1 { "--http1.1" } else { "--http2" };
            let variants: Vec<Variant> = Variant::ALL.iter().map(|&(om, gzip)| Variant { http, om, gzip }).collect();
            good_scrapes(target, kind, &variants, true)
        }
        Kind::NewConnection => {
            let (om, gzip) = Variant::ALL[(n % 4) as usize];
            let http = if (n / 4).is_multiple_of(2) { "--http1.1" } else { "--http2" };
            good_scrapes(target, kind, &[Variant { http, om, gzip }], false)
        }
        Kind::WrongPassword => {
            // A handful of distinct wrong passwords, repeated: fresh ones
            // cost a bcrypt check each, repeats exercise the cache.
            let credentials = format!("{USER}:wrong-{}", n % 8);
            let out = curl(target, &with_client_cert(target, &["--http1.1", "-u", &credentials]), "/dev/null");
            vec![match out.codes.first() {
                Some(&(401, _)) => Ok(()),
                other => Err(format!("wrong password got {other:?}: {}", out.stderr)),
            }]
        }
        Kind::NoClientCert => {
            let credentials = format!("{USER}:{PASSWORD}");
            let out = curl(target, &["-u", &credentials], "/dev/null");
            // No HTTP status: the handshake failed (curl 35/56).
            vec![match out.codes.first() {
                Some(&(0, _)) if out.exit != 0 => Ok(()),
                other => Err(format!("no client certificate got {other:?} (curl exit {})", out.exit)),
            }]
        }
        Kind::OversizedHeader => {
            let credentials = format!("{USER}:{PASSWORD}");
            let header = format!("@{}", target.dir.join("oversized-header.txt").display());
            // HTTP/1.1 gets 431, and the connection closes: curl, still
            // sending, may see the close (exit 55/56) before the answer.
            // HTTP/2 (a header list over its limit) gets a reset, no status.
            let http = if n % 2 == 1 { "--http2" } else { "--http1.1" };
            let args = with_client_cert(target, &[http, "-u", &credentials, "-H", &header]);
            let out = curl(target, &args, "/dev/null");
            vec![match out.codes.first() {
                Some(&(431, _)) => Ok(()),
                Some(&(0, _)) if matches!(out.exit, 16 | 55 | 56) => Ok(()),
                other => {
                    Err(format!("a 512 KiB header ({http}) got {other:?}, curl exit {}: {}", out.exit, out.stderr))
                }
            }]
        }
        Kind::OutsideAllowlist => {
            let credentials = format!("{USER}:{PASSWORD}");
            let args =
                with_client_cert(target, &["--interface", OUTSIDE, "--connect-timeout", "1", "-u", &credentials]);
            let out = curl(target, &args, "/dev/null");
            // 28: timed out connecting, the SYN was dropped (a refusal with
            // RST would be 7).
            vec![if out.exit == 28 {
                Ok(())
            } else {
                Err(format!("from {OUTSIDE}: curl exit {}: {}", out.exit, out.stderr))
            }]
        }
        Kind::GarbageTls => vec![raw_exchange(target.addr, &garbage_client_hello(n), |answer| {
            if answer.windows(5).any(|w| w == b"HTTP/") { Err("answered garbage with HTTP".to_owned()) } else { Ok(()) }
        })],
        Kind::PlainHttp => vec![raw_exchange(target.addr, b"GET /metrics HTTP/1.1\r\nHost: soak\r\n\r\n", |answer| {
            // hyper answers a request it cannot use as HTTP/1.0.
            if answer.starts_with(b"HTTP/1.1 400") || answer.starts_with(b"HTTP/1.0 400") {
                Ok(())
            } else {
                Err(format!("plain HTTP got {:?}", String::from_utf8_lossy(&answer[..answer.len().min(40)])))
            }
        })],
        Kind::Idle => idle_round(target.addr),
    }
}

/// A scrape's format and transport.
#[derive(Clone, Copy)]
struct Variant {
    http: &'static str,
    om: bool,
    gzip: bool,
}

impl Variant {
    /// (OpenMetrics, gzip).
    const ALL: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];
}

/// `args`, then the good client certificate's flags.
fn with_client_cert(target: &Target, args: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(|&arg| arg.to_owned()).collect();
    all.extend(["--cert".into(), target.file("client.crt"), "--key".into(), target.file("client.key")]);
    all
}

/// What curl reported: per transfer (HTTP status, `|`-separated
/// details), its exit code and error output.
struct CurlOutput {
    codes: Vec<(u16, String)>,
    exit: i32,
    stderr: String,
}

const WRITE_OUT: &str = "%{http_code}|%{num_connects}|%{http_version}|%{content_type}|%header{content-encoding}\n";

/// curl with one transfer of `args` to the metrics URL, body to `output`.
fn curl(target: &Target, args: &[impl AsRef<str>], output: &str) -> CurlOutput {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "--cacert", &target.file("ca.crt"), "-o", output, "-w", WRITE_OUT]);
    command.args(args.iter().map(AsRef::as_ref)).arg(target.url());
    run_curl(&mut command)
}

fn run_curl(command: &mut Command) -> CurlOutput {
    match command.stdin(Stdio::null()).output() {
        Ok(out) => CurlOutput {
            codes: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|line| {
                    let (code, rest) = line.split_once('|').unwrap_or((line, ""));
                    (code.parse().unwrap_or(0), rest.to_owned())
                })
                .collect(),
            exit: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        },
        Err(error) => CurlOutput { codes: Vec::new(), exit: -1, stderr: format!("cannot run curl: {error}") },
    }
}

/// Scrapes with the good credentials, one transfer per variant; on one
/// connection when `keep_alive` (curl `--next`). Checks status, format,
/// encoding, connection reuse and the body.
fn good_scrapes(target: &Target, kind: Kind, variants: &[Variant], keep_alive: bool) -> Vec<Result<(), String>> {
    let mut command = Command::new("curl");
    let credentials = format!("{USER}:{PASSWORD}");
    let bodies: Vec<PathBuf> = (0..variants.len()).map(|i| target.dir.join(format!("{kind:?}-{i}.body"))).collect();
    for (i, variant) in variants.iter().enumerate() {
        if i > 0 {
            command.arg("--next");
        }
        command.args(["-sS", "--max-time", "10", "--cacert", &target.file("ca.crt")]);
        command.args(with_client_cert(target, &["-u", &credentials, variant.http, "-w", WRITE_OUT]));
        command.arg("-o").arg(&bodies[i]);
        if variant.om {
            command.args(["-H", "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"]);
        }
        if variant.gzip {
            command.arg("--compressed");
        }
        command.arg(target.url());
    }
    let out = run_curl(&mut command);
    variants
        .iter()
        .enumerate()
        .map(|(i, variant)| {
            let Some((code, details)) = out.codes.get(i) else {
                return Err(format!("no transfer {i}: curl exit {}: {}", out.exit, out.stderr));
            };
            if *code != 200 {
                return Err(format!("status {code} (curl exit {}): {}", out.exit, out.stderr));
            }
            let fields: Vec<&str> = details.split('|').collect();
            let [connects, version, content_type, encoding] = fields[..] else {
                return Err(format!("unexpected curl output {details:?}"));
            };
            if keep_alive && i > 0 && connects != "0" {
                return Err(format!("transfer {i} opened a new connection instead of reusing the kept-alive one"));
            }
            let wanted_version = if variant.http == "--http2" { "2" } else { "1.1" };
            if version != wanted_version {
                return Err(format!("HTTP version {version}, wanted {wanted_version}"));
            }
            let wanted_type = if variant.om { "application/openmetrics-text" } else { "text/plain" };
            if !content_type.starts_with(wanted_type) {
                return Err(format!("content type {content_type}, wanted {wanted_type}"));
            }
            if (encoding == "gzip") != variant.gzip {
                return Err(format!("content encoding {encoding:?} with gzip {}", variant.gzip));
            }
            check_body(&bodies[i], variant.om)
        })
        .collect()
}

fn check_body(path: &Path, om: bool) -> Result<(), String> {
    let body = fs::read_to_string(path).map_err(|error| format!("cannot read the body: {error}"))?;
    let ends_right = if om { body.ends_with("\n# EOF\n") } else { !body.contains("# EOF") && body.ends_with('\n') };
    if !ends_right || !body.contains("\nkernel_sched_context_switches_total ") {
        return Err(format!("malformed body ({} bytes, OpenMetrics {om})", body.len()));
    }
    let down: Vec<&str> =
        body.lines().filter(|line| line.starts_with("kernel_exporter_collector_up{") && line.ends_with(" 0")).collect();
    if !down.is_empty() {
        return Err(format!("collectors down: {down:?}"));
    }
    Ok(())
}

/// The body of one good text scrape (the daemon's own counters for the
/// report).
fn good_scrape_body(target: &Target) -> Option<String> {
    let path = target.dir.join("final.body");
    let credentials = format!("{USER}:{PASSWORD}");
    let out = curl(target, &with_client_cert(target, &["-u", &credentials]), &path.display().to_string());
    (out.codes.first().map(|(code, _)| *code) == Some(200)).then(|| fs::read_to_string(&path).ok()).flatten()
}

/// A TLS record header announcing a handshake, then noise.
fn garbage_client_hello(n: u64) -> Vec<u8> {
    let mut bytes = vec![0x16, 0x03, 0x01, 0x02, 0x00];
    let mut state = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
    for _ in 0..512 {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        bytes.push((state >> 56) as u8);
    }
    bytes
}

/// Sends `request` on a new connection and reads until the daemon closes
/// it (within [`IDLE_CLOSE_BOUND`]); `check` judges what came back.
fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    check: impl FnOnce(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(IDLE_CLOSE_BOUND)).map_err(|e| e.to_string())?;
    stream.write_all(request).map_err(|e| format!("send: {e}"))?;
    let answer = read_until_closed(&mut stream)?;
    check(&answer)
}

/// Everything until EOF or a reset; an error if the connection is still
/// open after the read timeout.
fn read_until_closed(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(answer),
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => return Ok(answer),
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(format!("still open after {IDLE_CLOSE_BOUND:?}"));
            }
            Err(error) => return Err(format!("read: {error}")),
        }
    }
}

/// [`IDLE_CONNECTIONS`] connections that send nothing; each must be closed
/// by the daemon within [`IDLE_CLOSE_BOUND`] of opening.
fn idle_round(addr: SocketAddr) -> Vec<Result<(), String>> {
    let opened = Instant::now();
    let streams: Vec<io::Result<TcpStream>> =
        (0..IDLE_CONNECTIONS).map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5))).collect();
    streams
        .into_iter()
        .map(|stream| {
            let mut stream = stream.map_err(|e| format!("connect: {e}"))?;
            let left = IDLE_CLOSE_BOUND.saturating_sub(opened.elapsed()).max(Duration::from_millis(1));
            stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            read_until_closed(&mut stream).and_then(|answer| {
                if answer.windows(5).any(|w| w == b"HTTP/") {
                    Err("a silent connection got an HTTP answer".to_owned())
                } else {
                    Ok(())
                }
            })
        })
        .collect()
}
