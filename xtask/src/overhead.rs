//! `cargo xtask bench --overhead`: what the exporter's kernel programs cost
//! the host's own work, that is how much more CPU time ordinary workloads
//! take while the exporter is attached.
//!
//! Six bounded workloads, each stressing one kind of kernel event the
//! collectors trace: syscalls (`dd bs=64`), small packets (64-byte UDP
//! datagrams over loopback), page faults (touching every page of a fresh
//! anonymous mapping), context switches (two threads pinned to one CPU
//! bouncing a byte), fork/exec (`/bin/true` in a loop) and a mixed real
//! workload (`git log -p --stat` over this repository's history, at a commit
//! fixed when the run starts). Each is measured with the exporter off, with
//! its default collectors, and with every collector alone (those off by
//! default included). Nothing scrapes the exporter while a workload runs:
//! the cost measured is the per-event cost of the kernel programs.
//!
//! Why CPU time and not wall time: a tracepoint program runs in the context
//! of the task that hits the tracepoint, so its cost is charged to that
//! task's CPU time (user + system). Wall time also counts every moment the
//! workload waited for a CPU that something else held; on the project's
//! 2-core VM, shared with builds, the exporter-off baseline's wall time moved
//! by ±13–31% from one round to the next and overheads came out negative.
//! So every workload runs in child processes of its own and its figure is
//! the CPU time the kernel accounted to them, from `wait4(2)`'s rusage
//! (`ru_utime + ru_stime` of the child and of the descendants it waited
//! for), divided by the number of events. `dd`, `git` and `iperf3` are those
//! children themselves; page faults, context switches and fork/exec run in
//! this xtask re-executed with the hidden `overhead-workload` subcommand, so
//! the mapping is touched, both ping-pong threads run (pinned to one CPU) and
//! the `/bin/true`s are spawned and waited for inside that child. The child's
//! own start-up (about a millisecond) is included, alike in every
//! configuration. This kernel has no `CONFIG_IRQ_TIME_ACCOUNTING`: softirq
//! work done on the way out of a task's system call (loopback receive on
//! `local_bh_enable`) is charged to that task, and steal time is not
//! (`CONFIG_PARAVIRT_TIME_ACCOUNTING`). Wall time per event is still recorded
//! in `overhead.json` as a secondary figure, and the baseline's wall-time
//! spread is printed next to its CPU-time spread for comparison.
//!
//! Why alternating rounds and medians: CPU time is far steadier than wall
//! time, but not immune to neighbours (shared caches, frequency, interrupts
//! landing on the workload's CPU). Measuring every configuration once per
//! round, the exporter-off baseline twice (first and halfway), and rotating
//! the order of the others from round to round spreads any drift over all of
//! them alike instead of letting it land on whichever ran last. The median of
//! the rounds then drops the one round that a burst of neighbour activity
//! spoilt, which a mean would not. The baseline's spread is printed next to
//! its median: an overhead smaller than that is noise.
//!
//! Small packets go through iperf3 (`-u -l 64 -b 0`, Debian's `iperf3`): the
//! figure is the CPU time of the client and of the one-off server (`-s -1`),
//! both children of the bench, per datagram the client sent (from its JSON
//! report). The client carries the send path and, on loopback, most of the
//! receive path too: the softirq that delivers each datagram to the server's
//! socket queue (or drops it when the queue is full) runs in the client's
//! context when its `sendmsg` re-enables bottom halves. The server carries
//! its `recvmsg` calls: dequeuing and copying the datagrams it keeps up with.
//! iperf3 was chosen over an in-process socket pair because it is what an
//! operator would run and is reproducible outside the xtask; a failed run
//! (port race, early exit) is retried once before giving up.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{ChildStdout, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use kernel_exporter_fixtures::daemon::Daemon;
use serde_json::{Value, json};

use crate::{
    bench,
    prereq::{self, say},
};

/// Rounds of every configuration (medians reported).
const ROUNDS: usize = 5;
const QUICK_ROUNDS: usize = 3;

/// How long the exporter may take to attach its programs and answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the exporter may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Quiet time after the readiness scrape, before a workload is timed.
const SETTLE: Duration = Duration::from_millis(300);

/// How much work each workload does in one timed run (each about 0.5–2 s on
/// the project's 2-core VM).
#[derive(Clone, Copy, Debug)]
struct Sizes {
    dd_blocks: u64,
    udp_seconds: u64,
    pages: usize,
    round_trips: u64,
    spawns: u32,
    git_runs: u32,
}

const FULL: Sizes =
    Sizes { dd_blocks: 1_000_000, udp_seconds: 2, pages: 512 * 1024, round_trips: 200_000, spawns: 1_000, git_runs: 8 };
const QUICK: Sizes =
    Sizes { dd_blocks: 400_000, udp_seconds: 1, pages: 128 * 1024, round_trips: 60_000, spawns: 400, git_runs: 3 };

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Syscalls,
    SmallPackets,
    PageFaults,
    ContextSwitches,
    ForkExec,
    Git,
}

impl Workload {
    const ALL: [Self; 6] =
        [Self::Syscalls, Self::SmallPackets, Self::PageFaults, Self::ContextSwitches, Self::ForkExec, Self::Git];

    /// The key in the JSON report.
    fn key(self) -> &'static str {
        match self {
            Self::Syscalls => "syscalls",
            Self::SmallPackets => "small_packets",
            Self::PageFaults => "page_faults",
            Self::ContextSwitches => "context_switches",
            Self::ForkExec => "fork_exec",
            Self::Git => "git_log",
        }
    }

    /// The row label in the table.
    fn label(self) -> &'static str {
        match self {
            Self::Syscalls => "syscalls (dd bs=64)",
            Self::SmallPackets => "UDP 64 B (iperf3)",
            Self::PageFaults => "page faults (4 KiB)",
            Self::ContextSwitches => "context switches",
            Self::ForkExec => "fork/exec /bin/true",
            Self::Git => "git log -p --stat",
        }
    }

    /// What one value measures (time per event, CPU or wall); lower is
    /// better for every workload.
    fn unit(self) -> &'static str {
        match self {
            Self::Syscalls => "ns/block",
            Self::SmallPackets => "ns/packet",
            Self::PageFaults => "ns/page",
            Self::ContextSwitches => "ns/switch",
            Self::ForkExec => "us/spawn",
            Self::Git => "ms/run",
        }
    }

    /// The amount of work of one timed run, for the report.
    fn work(self, sizes: &Sizes) -> String {
        match self {
            Self::Syscalls => format!("dd if=/dev/zero of=/dev/null bs=64 count={}", sizes.dd_blocks),
            Self::SmallPackets => {
                format!("iperf3 -u -l 64 -b 0 -t {} over 127.0.0.1 (client and server CPU time)", sizes.udp_seconds)
            }
            Self::PageFaults => {
                format!("mmap, touch and munmap {} anonymous pages in a re-executed xtask", sizes.pages)
            }
            Self::ContextSwitches => format!(
                "{} round trips between two threads of a re-executed xtask pinned to one CPU",
                sizes.round_trips
            ),
            Self::ForkExec => {
                format!("{} sequential spawns of /bin/true by a re-executed xtask", sizes.spawns)
            }
            Self::Git => format!("{} runs of git log -p --stat", sizes.git_runs),
        }
    }

    /// The workload a key names.
    fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.key() == key)
    }

    /// Runs the workload once, in child processes; CPU and wall time per
    /// event, in [`Self::unit`].
    fn run(self, sizes: &Sizes, env: &Env) -> anyhow::Result<Sample> {
        match self {
            Self::Syscalls => dd(sizes.dd_blocks),
            Self::SmallPackets => iperf3(sizes.udp_seconds).or_else(|first| {
                say("warn", &format!("iperf3 failed ({first:#}); retrying once"));
                iperf3(sizes.udp_seconds)
            }),
            Self::PageFaults => {
                let pages = sizes.pages as u64;
                let usage = in_child(self, pages)?;
                // One fault per page, or the figure is not per fault
                // (transparent huge pages despite MADV_NOHUGEPAGE).
                if usage.minor_faults < pages {
                    bail!("touching {pages} pages took only {} page faults", usage.minor_faults);
                }
                Ok(usage.per_event(pages as f64, 1e9))
            }
            // A round trip is two switches.
            Self::ContextSwitches => {
                Ok(in_child(self, sizes.round_trips)?.per_event(2.0 * sizes.round_trips as f64, 1e9))
            }
            Self::ForkExec => Ok(in_child(self, u64::from(sizes.spawns))?.per_event(f64::from(sizes.spawns), 1e6)),
            Self::Git => git_log(&env.repository, &env.commit, sizes.git_runs),
        }
    }
}

/// One run of a workload: CPU time and wall time per event, in the
/// workload's unit.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    cpu: f64,
    wall: f64,
}

/// What the kernel accounted to a finished child.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Usage {
    /// `ru_utime + ru_stime` of the child and its waited-for descendants.
    cpu: Duration,
    /// From spawning it to reaping it.
    wall: Duration,
    minor_faults: u64,
}

impl Usage {
    fn add(self, other: Self) -> Self {
        Self {
            cpu: self.cpu + other.cpu,
            wall: self.wall + other.wall,
            minor_faults: self.minor_faults + other.minor_faults,
        }
    }

    /// Time per event, in seconds × `scale` (1e9 for ns, 1e6 for µs, …).
    fn per_event(self, events: f64, scale: f64) -> Sample {
        Sample { cpu: self.cpu.as_secs_f64() * scale / events, wall: self.wall.as_secs_f64() * scale / events }
    }
}

/// What the workloads need from the run.
struct Env {
    repository: PathBuf,
    /// The commit `git log` starts from, fixed for the whole run so that
    /// commits made meanwhile do not change the work.
    commit: String,
}

/// One exporter configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Config {
    /// No exporter: the baseline.
    Off,
    /// The exporter with no collector flags.
    Default,
    /// `--collector.disable-defaults --collector.NAME`.
    Alone(String),
}

impl Config {
    fn label(&self) -> String {
        match self {
            Self::Off => "off".to_owned(),
            Self::Default => "default".to_owned(),
            Self::Alone(name) => name.clone(),
        }
    }

    fn args(&self) -> Vec<String> {
        match self {
            Self::Off | Self::Default => Vec::new(),
            Self::Alone(name) => vec!["--collector.disable-defaults".to_owned(), format!("--collector.{name}")],
        }
    }
}

/// A collector the daemon offers, from its `--help`.
#[derive(Debug, PartialEq, Eq)]
struct Collector {
    name: String,
    default_enabled: bool,
}

pub(crate) fn overhead(
    quick: bool,
    only: Option<&[String]>,
    exporter: Option<&Path>,
    rounds: Option<usize>,
) -> anyhow::Result<()> {
    let (_toolchain, binary, report_dir) = bench::prepare_with(exporter)?;
    prereq::ensure_debian_packages(&[("iperf3", "iperf3"), ("dd", "coreutils"), ("git", "git")])?;
    let sizes = if quick { QUICK } else { FULL };
    let rounds = rounds.unwrap_or(if quick { QUICK_ROUNDS } else { ROUNDS }).max(1);

    let collectors = daemon_collectors(&binary)?;
    let names: Vec<&str> = collectors.iter().map(|c| c.name.as_str()).collect();
    let chosen: Vec<String> = match only {
        None => names.iter().map(|&n| n.to_owned()).collect(),
        Some(only) => {
            for name in only {
                if !names.contains(&name.as_str()) {
                    bail!("--overhead-collectors: the daemon has no collector {name:?} (it has {})", names.join(", "));
                }
            }
            let mut chosen: Vec<String> = Vec::new();
            for name in only {
                if !chosen.contains(name) {
                    chosen.push(name.clone());
                }
            }
            chosen
        }
    };
    let defaults: Vec<&str> = collectors.iter().filter(|c| c.default_enabled).map(|c| c.name.as_str()).collect();
    let env = Env { commit: git_head(&prereq::workspace_root())?, repository: prereq::workspace_root() };
    let log = report_dir.join("overhead-exporter.log");
    fs::write(&log, "").with_context(|| format!("cannot create {}", log.display()))?;
    check_memory(sizes.pages)?;

    let mut on: Vec<Config> = vec![Config::Default];
    on.extend(chosen.iter().cloned().map(Config::Alone));
    say(
        "bench",
        &format!(
            "overhead: {rounds} alternating rounds of {} configurations x {} workloads (defaults: {}); exporter log in {}",
            on.len() + 1,
            Workload::ALL.len(),
            defaults.join(", "),
            log.display()
        ),
    );

    // One untimed pass first: the first run of each workload pays for cold
    // caches (binaries, git's pack, the page allocator's free lists).
    say("bench", "warm-up: every workload once, untimed, exporter off");
    for workload in Workload::ALL {
        workload.run(&sizes, &env).with_context(|| format!("warm-up of {}", workload.label()))?;
    }
    let busy_before = background_busy_percent()?;
    if busy_before > 5.0 {
        say(
            "warn",
            &format!(
                "the CPUs are {busy_before:.0}% busy while we are idle: something else runs; expect noisy figures"
            ),
        );
    }

    let mut samples: BTreeMap<String, Vec<Vec<Sample>>> = BTreeMap::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    for round in 0..rounds {
        let order = schedule(&on, round);
        for (step, config) in order.iter().enumerate() {
            let label = config.label();
            if skipped.iter().any(|(name, _)| *name == label) {
                continue;
            }
            say("bench", &format!("round {}/{rounds}, {}/{}: {}", round + 1, step + 1, order.len(), describe(config)));
            match measure(config, &binary, &log, &sizes, &env) {
                Ok(values) => {
                    let columns = samples.entry(label).or_insert_with(|| vec![Vec::new(); Workload::ALL.len()]);
                    for (column, value) in columns.iter_mut().zip(values) {
                        column.push(value);
                    }
                }
                // A collector that cannot attach on this kernel is reported,
                // not fatal; the baseline and the default set must work.
                Err(error) if matches!(config, Config::Alone(_)) && error.is::<StartError>() => {
                    say("warn", &format!("skipping collector {label}: {error:#}"));
                    samples.remove(&label);
                    skipped.push((label, format!("{error:#}")));
                }
                Err(error) => return Err(error.context(format!("measuring {}", describe(config)))),
            }
        }
    }

    let busy = (busy_before, background_busy_percent()?);
    let report = Report::new(&samples, &on, &sizes, rounds);
    println!("\n{}", report.render(&defaults, &skipped, busy));
    let mut json = report.json(quick, &env.commit, &binary, &defaults, &skipped);
    json["background_cpu_busy_percent"] = json!({"before": busy.0, "after": busy.1});
    let path = report_dir.join("overhead.json");
    let text = serde_json::to_string_pretty(&json).context("cannot serialize the overhead report")?;
    fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    say("ok", &format!("report written to {}", path.display()));
    Ok(())
}

fn describe(config: &Config) -> String {
    match config {
        Config::Off => "exporter off".to_owned(),
        Config::Default => "exporter with its default collectors".to_owned(),
        Config::Alone(name) => format!("exporter with {name} alone"),
    }
}

/// The order of one round: the baseline first and again halfway, the
/// exporter configurations rotated by the round's number so that none is
/// always the one timed furthest from a baseline.
fn schedule(on: &[Config], round: usize) -> Vec<Config> {
    let mut rotated = on.to_vec();
    if !rotated.is_empty() {
        let shift = round % rotated.len();
        rotated.rotate_left(shift);
    }
    let half = rotated.len().div_ceil(2);
    let mut order = vec![Config::Off];
    order.extend(rotated[..half].iter().cloned());
    order.push(Config::Off);
    order.extend(rotated[half..].iter().cloned());
    order
}

/// The exporter failed to start: the configuration cannot be measured.
#[derive(Debug)]
struct StartError(String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Every workload once under `config`, in [`Workload::ALL`] order.
fn measure(config: &Config, binary: &Path, log: &Path, sizes: &Sizes, env: &Env) -> anyhow::Result<Vec<Sample>> {
    let exporter = match config {
        Config::Off => None,
        _ => Some(Exporter::start(binary, &config.args(), log)?),
    };
    thread::sleep(SETTLE);
    let mut values = Vec::with_capacity(Workload::ALL.len());
    for workload in Workload::ALL {
        let value = workload.run(sizes, env).with_context(|| format!("workload {}", workload.label()))?;
        values.push(value);
    }
    if let Some(exporter) = exporter {
        exporter.stop()?;
    }
    Ok(values)
}

/// The daemon, started as root and stopped with SIGTERM.
struct Exporter(Daemon);

impl Exporter {
    /// Starts it on a free loopback port and waits until `/metrics` answers
    /// (its programs are attached by then).
    fn start(binary: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        let port = kernel_exporter_fixtures::free_port()?;
        let mut file =
            fs::OpenOptions::new().append(true).open(log).with_context(|| format!("cannot open {}", log.display()))?;
        writeln!(file, "--- kernel-exporter {}", args.join(" "))
            .with_context(|| format!("cannot write {}", log.display()))?;
        let mut daemon = Daemon::spawn(Command::new(binary), SocketAddr::from(([127, 0, 0, 1], port)), args, log)?;
        daemon
            .wait_until("answer on /metrics", START_TIMEOUT, |_| metrics_answers(port))
            .map_err(|error| StartError(error.to_string()))?;
        Ok(Self(daemon))
    }

    /// SIGTERM, then waits for it to exit.
    fn stop(mut self) -> anyhow::Result<()> {
        let (status, _) = self.0.stop(libc::SIGTERM, STOP_TIMEOUT)?;
        if !status.success() {
            say("warn", &format!("kernel-exporter exited with {status} after SIGTERM"));
        }
        Ok(())
    }
}

/// Whether `GET /metrics` on the port answers 200.
fn metrics_answers(port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(response.starts_with(b"HTTP/1.1 200") || response.starts_with(b"HTTP/1.0 200"))
    };
    attempt().unwrap_or(false)
}

/// The collectors named in the daemon's `--help`.
fn daemon_collectors(binary: &Path) -> anyhow::Result<Vec<Collector>> {
    let out = Command::new(binary)
        .arg("--help")
        .output()
        .with_context(|| format!("cannot run {} --help", binary.display()))?;
    if !out.status.success() {
        bail!("{} --help failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    let collectors = collectors_from_help(&String::from_utf8_lossy(&out.stdout));
    if collectors.is_empty() {
        bail!("{} --help names no --collector.NAME flag", binary.display());
    }
    Ok(collectors)
}

/// `--collector.NAME` flags (not `--collector.disable-defaults`, not options
/// such as `--collector.net.device-exclude`), each on by default when its
/// help says "enabled by default".
fn collectors_from_help(help: &str) -> Vec<Collector> {
    let lines: Vec<&str> = help.lines().map(str::trim).collect();
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("--collector.") else { continue };
        let end = rest.find(|c: char| c.is_whitespace() || c == '=' || c == ',' || c == '<').unwrap_or(rest.len());
        let name = &rest[..end];
        if name.is_empty() || name.contains('.') || name == "disable-defaults" {
            continue;
        }
        // The flag's help runs until the next flag; clap may wrap it.
        let mut text = rest[end..].to_owned();
        for next in &lines[index + 1..] {
            if next.starts_with('-') {
                break;
            }
            text.push(' ');
            text.push_str(next);
        }
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !found.iter().any(|c: &Collector| c.name == name) {
            found.push(Collector { name: name.to_owned(), default_enabled: text.contains("enabled by default") });
        }
    }
    found
}

/// How busy the CPUs are while we do nothing, in percent of all of them
/// (steal included): over one idle second, from `/proc/stat`.
fn background_busy_percent() -> anyhow::Result<f64> {
    let before = cpu_times()?;
    thread::sleep(Duration::from_secs(1));
    let after = cpu_times()?;
    Ok(busy_percent(before, after))
}

/// (busy, total) jiffies of all CPUs, from the `cpu` line of `/proc/stat`.
fn cpu_times() -> anyhow::Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_cpu_line(&stat).context("no cpu line in /proc/stat")
}

fn parse_cpu_line(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|line| line.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already counted in user).
    let fields: Vec<u64> = line.split_whitespace().skip(1).take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3)? + fields.get(4)?;
    Some((total - idle, total))
}

fn busy_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 { 0.0 } else { after.0.saturating_sub(before.0) as f64 * 100.0 / total as f64 }
}

fn git_head(repository: &Path) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(["rev-parse", "--verify", "HEAD"])
        .output()
        .context("cannot run git rev-parse")?;
    if !out.status.success() {
        bail!("git rev-parse HEAD failed in {}: {}", repository.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Refuses to start when the page-fault workload's mapping would not fit in
/// the memory available (touching it would wake the OOM killer instead).
fn check_memory(pages: usize) -> anyhow::Result<()> {
    let meminfo = fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemAvailable in /proc/meminfo")?;
    let needed_kib = (pages as u64 * page_size()? as u64) / 1024;
    if available_kib < needed_kib + 1024 * 1024 {
        bail!(
            "the page-fault workload maps {} MiB but only {} MiB are available; free memory or use --quick",
            needed_kib / 1024,
            available_kib / 1024
        );
    }
    Ok(())
}

fn page_size() -> anyhow::Result<usize> {
    // SAFETY: sysconf has no memory arguments.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|&size| size > 0).context("sysconf(_SC_PAGESIZE) failed")
}

/// A child process spawned by the bench, reaped with `wait4(2)` to read its
/// CPU time; killed and reaped on drop if still running.
struct Running {
    pid: libc::pid_t,
    what: String,
    started: Instant,
    stdout: Option<ChildStdout>,
    stderr: Option<thread::JoinHandle<Vec<u8>>>,
    exited: Option<(ExitStatus, Usage)>,
}

/// A reaped child.
struct Finished {
    status: ExitStatus,
    usage: Usage,
    stdout: Vec<u8>,
    stderr: String,
}

impl Running {
    /// Spawns `command` with stdin from /dev/null, stderr kept for an error
    /// message, stdout kept when `capture_stdout` (to /dev/null otherwise).
    fn spawn(command: &mut Command, what: &str, capture_stdout: bool) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(if capture_stdout { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {what}"))?;
        // std's Child is dropped here without waiting: wait4 below reaps it.
        let pid = libc::pid_t::try_from(child.id()).context("a pid does not fit a pid_t")?;
        let stderr = child.stderr.take().map(|mut pipe| {
            thread::spawn(move || {
                let mut text = Vec::new();
                let _ = pipe.read_to_end(&mut text);
                text
            })
        });
        Ok(Self { pid, what: what.to_owned(), started, stdout: child.stdout.take(), stderr, exited: None })
    }

    /// Whether it has exited (and is reaped), without blocking.
    fn poll(&mut self) -> anyhow::Result<bool> {
        if self.exited.is_none() {
            self.exited = wait4(self.pid, false).with_context(|| format!("cannot wait for {}", self.what))?;
            if let Some((_, usage)) = &mut self.exited {
                usage.wall = self.started.elapsed();
            }
        }
        Ok(self.exited.is_some())
    }

    /// Reads its stdout to the end and reaps it; killed after `timeout`
    /// (none: waits as long as it takes).
    fn finish(mut self, timeout: Option<Duration>) -> anyhow::Result<Finished> {
        let mut stdout = Vec::new();
        if let Some(mut pipe) = self.stdout.take() {
            pipe.read_to_end(&mut stdout).with_context(|| format!("cannot read the output of {}", self.what))?;
        }
        match timeout {
            None if self.exited.is_none() => {
                self.exited = wait4(self.pid, true).with_context(|| format!("cannot wait for {}", self.what))?;
                if let Some((_, usage)) = &mut self.exited {
                    usage.wall = self.started.elapsed();
                }
            }
            None => {}
            Some(timeout) => {
                let deadline = Instant::now() + timeout;
                while !self.poll()? {
                    if Instant::now() > deadline {
                        bail!("{} did not exit within {} s", self.what, timeout.as_secs());
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let (status, usage) = self.exited.with_context(|| format!("{} was not reaped", self.what))?;
        let stderr = self.stderr.take().and_then(|reader| reader.join().ok()).unwrap_or_default();
        Ok(Finished { status, usage, stdout, stderr: String::from_utf8_lossy(&stderr).trim().to_owned() })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // SAFETY: kill has no memory arguments; the pid is our own child,
            // not yet reaped, so it cannot have been reused.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = wait4(self.pid, true);
        }
    }
}

impl Finished {
    /// Fails unless it exited 0, with the first lines of its stderr.
    fn success(self, what: &str) -> anyhow::Result<Self> {
        if !self.status.success() {
            let tail: Vec<&str> = self.stderr.lines().take(4).collect();
            bail!("{what} failed ({}): {}", self.status, tail.join(" / "));
        }
        Ok(self)
    }
}

/// `wait4(pid)`: its exit status and CPU time (wall time left zero), or none
/// yet when not `block`ing.
fn wait4(pid: libc::pid_t, block: bool) -> std::io::Result<Option<(ExitStatus, Usage)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all zeroes is a valid value.
    let mut rusage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: status and rusage are valid for writes for the call.
        let reaped =
            unsafe { libc::wait4(pid, &raw mut status, if block { 0 } else { libc::WNOHANG }, &raw mut rusage) };
        match reaped {
            0 => return Ok(None),
            r if r == pid => break,
            _ => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    let cpu = timeval(rusage.ru_utime) + timeval(rusage.ru_stime);
    let minor_faults = u64::try_from(rusage.ru_minflt).unwrap_or(0);
    Ok(Some((ExitStatus::from_raw(status), Usage { cpu, wall: Duration::ZERO, minor_faults })))
}

fn timeval(time: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(time.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(time.tv_usec).unwrap_or(0))
}

/// Runs a command that must exit 0, its output discarded; what it used.
fn run_child(command: &mut Command, what: &str) -> anyhow::Result<Usage> {
    Ok(Running::spawn(command, what, false)?.finish(None)?.success(what)?.usage)
}

/// Runs a workload that has no tool of its own in this xtask re-executed
/// (`overhead-workload KEY SIZE`), so that it is a child too.
fn in_child(workload: Workload, size: u64) -> anyhow::Result<Usage> {
    let xtask = std::env::current_exe().context("cannot find the xtask's own executable")?;
    let what = format!("the {} workload", workload.key());
    run_child(Command::new(xtask).args(["overhead-workload", workload.key()]).arg(size.to_string()), &what)
}

/// The hidden `overhead-workload KEY SIZE` subcommand: one in-process
/// workload, in the child process whose CPU time the bench reads.
pub(crate) fn workload_child(key: &str, size: u64) -> anyhow::Result<()> {
    match Workload::from_key(key) {
        Some(Workload::PageFaults) => {
            page_faults(usize::try_from(size).context("too many pages")?)?;
        }
        Some(Workload::ContextSwitches) => {
            // Pinning the process before the ping-pong's threads exist makes
            // them inherit it, whatever the ping-pong's own pinning does.
            pin_to_one_cpu()?;
            if !bench::pinned_ping_pong(size).is_finite() {
                bail!("the pinned ping-pong failed (socket pair or thread)");
            }
            if allowed_cpus()? != 1 {
                bail!("the ping-pong's threads are not pinned to one CPU");
            }
        }
        Some(Workload::ForkExec) => {
            for _ in 0..size {
                let status = Command::new("/bin/true")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .context("cannot spawn /bin/true")?;
                if !status.success() {
                    bail!("/bin/true failed ({status})");
                }
            }
        }
        _ => bail!("overhead-workload: no in-process workload {key:?}"),
    }
    Ok(())
}

/// Pins the calling thread (and the threads it starts later) to the first
/// CPU it may run on; which one it is.
fn pin_to_one_cpu() -> anyhow::Result<usize> {
    // SAFETY: cpu_set_t is a plain bit set; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is valid for writes of its own size.
    if unsafe { libc::sched_getaffinity(0, size_of_val(&set), &raw mut set) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set; the index is below CPU_SETSIZE.
    let cpu = (0..libc::CPU_SETSIZE as usize)
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .context("the affinity mask is empty")?;
    // SAFETY: as above; the set is then given with its size.
    unsafe {
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
    }
    // SAFETY: the set outlives the call and its size is given.
    if unsafe { libc::sched_setaffinity(0, size_of_val(&set), &raw const set) } != 0 {
        bail!("cannot pin the ping-pong to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(cpu)
}

/// How many CPUs the calling thread may run on.
fn allowed_cpus() -> anyhow::Result<u32> {
    // SAFETY: as in pin_to_one_cpu.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is valid for writes of its own size.
    if unsafe { libc::sched_getaffinity(0, size_of_val(&set), &raw mut set) } != 0 {
        bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
    }
    // SAFETY: CPU_COUNT only reads the set.
    Ok(u32::try_from(unsafe { libc::CPU_COUNT(&set) }).unwrap_or(0))
}

fn dd(blocks: u64) -> anyhow::Result<Sample> {
    let count = format!("count={blocks}");
    let usage = run_child(Command::new("dd").args(["if=/dev/zero", "of=/dev/null", "bs=64", &count]), "dd")?;
    Ok(usage.per_event(blocks as f64, 1e9))
}

fn git_log(repository: &Path, commit: &str, runs: u32) -> anyhow::Result<Sample> {
    let mut total = Usage::default();
    for _ in 0..runs {
        total = total.add(run_child(
            Command::new("git").arg("-C").arg(repository).args(["log", "-p", "--stat", "--no-color", commit]),
            "git log -p --stat",
        )?);
    }
    Ok(total.per_event(f64::from(runs), 1e3))
}

/// Maps `pages` fresh anonymous pages (no transparent huge pages, so each
/// page is one fault), writes one byte to each, unmaps them. Runs in the
/// re-executed child.
fn page_faults(pages: usize) -> anyhow::Result<()> {
    let page = page_size()?;
    let length = pages.checked_mul(page).context("the mapping's size overflows")?;
    // SAFETY: a new private anonymous mapping; no existing memory is touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        bail!("cannot map {} MiB: {}", length >> 20, std::io::Error::last_os_error());
    }
    // SAFETY: the range is the mapping just made. Failure only leaves huge
    // pages possible, which the fault count the bench checks would show.
    unsafe { libc::madvise(base, length, libc::MADV_NOHUGEPAGE) };
    let bytes = base.cast::<u8>();
    for index in 0..pages {
        // SAFETY: index * page < length: inside the writable mapping.
        unsafe { bytes.add(index * page).write_volatile(1) };
    }
    // SAFETY: unmaps exactly the mapping made above; nothing refers to it.
    if unsafe { libc::munmap(base, length) } != 0 {
        bail!("cannot unmap the page-fault workload's mapping: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One iperf3 UDP run against a one-off local server: the CPU time of both
/// per datagram the client sent; wall time per datagram from the client's
/// report.
fn iperf3(seconds: u64) -> anyhow::Result<Sample> {
    let port = kernel_exporter_fixtures::free_port()?;
    let mut server = Running::spawn(
        Command::new("iperf3").args(["-s", "-1", "-B", "127.0.0.1", "-p"]).arg(port.to_string()),
        "iperf3 -s",
        false,
    )?;
    // Waiting on /proc rather than connecting: a probe connection would be
    // the one client the server accepts.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tcp = fs::read_to_string("/proc/net/tcp").context("cannot read /proc/net/tcp")?;
        if listening_on(&tcp, port) {
            break;
        }
        if server.poll()? {
            let finished = server.finish(None)?;
            bail!("iperf3 -s exited ({}) before listening on port {port}: {}", finished.status, finished.stderr);
        }
        if Instant::now() > deadline {
            bail!("iperf3 -s did not listen on 127.0.0.1:{port} within 5 s");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let client = Running::spawn(
        Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-u", "-l", "64", "-b", "0", "-J", "-p"])
            .arg(port.to_string())
            .arg("-t")
            .arg(seconds.to_string()),
        "iperf3 -c",
        true,
    )?
    .finish(None)?;
    let sent = iperf3_sent(&String::from_utf8_lossy(&client.stdout));
    if !client.status.success() {
        bail!("iperf3 -c failed ({}): {}", client.status, sent.err().map(|e| format!("{e:#}")).unwrap_or_default());
    }
    let (sent_seconds, packets) = sent?;
    // The one-off server exits after its client.
    let server = server.finish(Some(Duration::from_secs(5)))?.success("iperf3 -s")?;
    let mut sample = client.usage.add(server.usage).per_event(packets, 1e9);
    sample.wall = sent_seconds * 1e9 / packets;
    Ok(sample)
}

/// Whether `/proc/net/tcp` has a socket listening on 127.0.0.1 (or any
/// address) at `port`.
fn listening_on(proc_net_tcp: &str, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    proc_net_tcp.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.get(1), Some(local) if local.ends_with(&suffix)
            && (local.starts_with("0100007F") || local.starts_with("00000000")))
            && fields.get(3) == Some(&"0A")
    })
}

/// (seconds, datagrams) the client sent, from `iperf3 -c -J` output
/// (`end.sum_sent`, or `end.sum` before iperf3 3.x split it).
fn iperf3_sent(json: &str) -> anyhow::Result<(f64, f64)> {
    let report: Value = serde_json::from_str(json).context("iperf3 printed no JSON report")?;
    if let Some(error) = report.get("error").and_then(Value::as_str) {
        bail!("iperf3: {error}");
    }
    let end = report.get("end").context("iperf3's report has no \"end\"")?;
    let sum = end.get("sum_sent").or_else(|| end.get("sum")).context("iperf3's report has no end.sum_sent")?;
    let seconds = sum.get("seconds").and_then(Value::as_f64).context("no seconds in iperf3's sum")?;
    let packets = sum.get("packets").and_then(Value::as_f64).context("no packets in iperf3's sum")?;
    if packets <= 0.0 || seconds <= 0.0 {
        bail!("iperf3 sent {packets} packets in {seconds} s");
    }
    Ok((seconds, packets))
}

/// (on / off − 1) × 100: how much more time per event the workload took.
fn overhead_percent(on: f64, off: f64) -> f64 {
    (on / off - 1.0) * 100.0
}

/// (max − min) / median × 100 of a set of samples.
fn spread_percent(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    (max - min) / bench::median(values.to_vec()) * 100.0
}

/// Which figure of a [`Sample`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Figure {
    Cpu,
    Wall,
}

impl Figure {
    fn of(self, sample: &Sample) -> f64 {
        match self {
            Self::Cpu => sample.cpu,
            Self::Wall => sample.wall,
        }
    }
}

/// Medians per configuration and workload.
struct Report<'a> {
    samples: &'a BTreeMap<String, Vec<Vec<Sample>>>,
    /// Exporter configurations measured, in the order of the columns.
    columns: Vec<String>,
    sizes: Sizes,
    rounds: usize,
}

impl<'a> Report<'a> {
    fn new(samples: &'a BTreeMap<String, Vec<Vec<Sample>>>, on: &[Config], sizes: &Sizes, rounds: usize) -> Self {
        let columns = on.iter().map(Config::label).filter(|label| samples.contains_key(label)).collect();
        Self { samples, columns, sizes: *sizes, rounds }
    }

    /// One figure of every sample of a configuration and workload.
    fn values(&self, config: &str, workload: usize, figure: Figure) -> Vec<f64> {
        self.samples
            .get(config)
            .and_then(|columns| columns.get(workload))
            .map(|samples| samples.iter().map(|s| figure.of(s)).collect())
            .unwrap_or_default()
    }

    fn median(&self, config: &str, workload: usize, figure: Figure) -> f64 {
        bench::median(self.values(config, workload, figure))
    }

    fn overhead(&self, config: &str, workload: usize, figure: Figure) -> f64 {
        overhead_percent(self.median(config, workload, figure), self.median("off", workload, figure))
    }

    fn render(&self, defaults: &[&str], skipped: &[(String, String)], busy: (f64, f64)) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "overhead of the exporter on the host's own work: % more CPU time (user + system of the workload's \
             processes) per event than with it off (median of {} rounds; off: {} samples)",
            self.rounds,
            2 * self.rounds
        );
        let _ = write!(t, "{:<22} {:>10} {:<10} {:>6} {:>6}", "workload", "off CPU", "unit", "±off", "±wall");
        for column in &self.columns {
            let _ = write!(t, " {column:>8}");
        }
        t.push('\n');
        for (index, workload) in Workload::ALL.iter().enumerate() {
            let off = self.median("off", index, Figure::Cpu);
            let spread = spread_percent(&self.values("off", index, Figure::Cpu));
            let wall_spread = spread_percent(&self.values("off", index, Figure::Wall));
            let _ = write!(
                t,
                "{:<22} {off:>10.1} {:<10} {:>5.1}% {:>5.1}%",
                workload.label(),
                workload.unit(),
                spread / 2.0,
                wall_spread / 2.0
            );
            for column in &self.columns {
                let _ = write!(t, " {:>+7.1}%", self.overhead(column, index, Figure::Cpu));
            }
            t.push('\n');
        }
        let _ = writeln!(
            t,
            "±off: half the range of the baseline's CPU-time samples (±wall: of its wall-time samples, for \
             comparison); collectors on by default: {}",
            defaults.join(", ")
        );
        let _ = writeln!(
            t,
            "CPUs busy with other work while the bench idled: {:.0}% before the rounds, {:.0}% after",
            busy.0, busy.1
        );
        for (name, error) in skipped {
            let _ = writeln!(t, "skipped {name}: {}", error.lines().next().unwrap_or_default());
        }
        t
    }

    fn json(&self, quick: bool, commit: &str, binary: &Path, defaults: &[&str], skipped: &[(String, String)]) -> Value {
        let workloads: Vec<Value> = Workload::ALL
            .iter()
            .map(|w| json!({"key": w.key(), "label": w.label(), "unit": w.unit(), "work": w.work(&self.sizes)}))
            .collect();
        let figures = |label: &str, figure: Figure| -> Value {
            let mut samples = serde_json::Map::new();
            let mut medians = serde_json::Map::new();
            let mut percent = serde_json::Map::new();
            for (index, workload) in Workload::ALL.iter().enumerate() {
                samples.insert(workload.key().to_owned(), json!(self.values(label, index, figure)));
                medians.insert(workload.key().to_owned(), json!(self.median(label, index, figure)));
                percent.insert(workload.key().to_owned(), json!(self.overhead(label, index, figure)));
            }
            let mut value = json!({"samples": samples, "median": medians});
            if label != "off" {
                value["overhead_percent"] = Value::Object(percent);
            }
            value
        };
        let configuration = |label: &str| -> Value {
            let mut value = figures(label, Figure::Cpu);
            value["name"] = json!(label);
            value["wall"] = figures(label, Figure::Wall);
            value
        };
        let configurations: Vec<Value> =
            std::iter::once("off").chain(self.columns.iter().map(String::as_str)).map(configuration).collect();
        json!({
            "quick": quick,
            "rounds": self.rounds,
            "git_commit": commit,
            "exporter": binary.display().to_string(),
            "measure": "samples, median and overhead_percent: CPU time (ru_utime + ru_stime from wait4 of the \
                        workload's child processes, their waited-for descendants included) per event, in each \
                        workload's unit; wall: the same from wall-clock time (iperf3: its own send duration)",
            "collectors_on_by_default": defaults,
            "workloads": workloads,
            "configurations": configurations,
            "skipped": skipped.iter().map(|(name, error)| json!({"collector": name, "error": error})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_relative_to_the_baseline() {
        assert!((overhead_percent(110.0, 100.0) - 10.0).abs() < 1e-9);
        assert!((overhead_percent(95.0, 100.0) + 5.0).abs() < 1e-9);
        assert_eq!(overhead_percent(100.0, 100.0), 0.0);
        assert!((spread_percent(&[9.0, 10.0, 11.0]) - 20.0).abs() < 1e-9);
    }

    #[test]
    fn parses_iperf3_udp_reports() {
        let report = r#"{"start": {}, "intervals": [], "end": {
            "sum": {"seconds": 1.000357, "packets": 50080, "lost_packets": 34965, "sender": true},
            "sum_sent": {"seconds": 1.0, "packets": 50000, "lost_packets": 0, "sender": true},
            "sum_received": {"seconds": 1.000357, "packets": 50080, "sender": false}}}"#;
        assert_eq!(iperf3_sent(report).unwrap(), (1.0, 50_000.0));
        let old = r#"{"end": {"sum": {"seconds": 2.0, "packets": 1000000}}}"#;
        assert_eq!(iperf3_sent(old).unwrap(), (2.0, 1_000_000.0));
        let error = r#"{"start": {}, "end": {}, "error": "unable to connect to server: Connection refused"}"#;
        assert!(format!("{:#}", iperf3_sent(error).unwrap_err()).contains("Connection refused"));
        assert!(iperf3_sent("").is_err());
        assert!(iperf3_sent(r#"{"end": {"sum_sent": {"seconds": 1.0, "packets": 0}}}"#).is_err());
    }

    #[test]
    fn busy_share_of_cpu_time() {
        let before = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        let after = "cpu  150 0 100 850 50 0 0 50 0 0\ncpu0 75 0 50 425 25 0 0 25 0 0\n";
        let (before, after) = (parse_cpu_line(before).unwrap(), parse_cpu_line(after).unwrap());
        assert_eq!(before, (150, 1000));
        assert_eq!(busy_percent(before, after), 75.0);
        assert_eq!(busy_percent(after, after), 0.0);
        assert_eq!(parse_cpu_line("intr 1 2 3"), None);
    }

    #[test]
    fn finds_listening_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 195 1
   1: 0100007F:14B3 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 32534 1
   2: 0100007F:1F90 0100007F:14B3 01 00000000:00000000 00:00000000 00000000     0        0 32535 1
";
        assert!(listening_on(tcp, 0x14B3));
        assert!(listening_on(tcp, 2024));
        assert!(!listening_on(tcp, 0x1F90), "an established socket is not listening");
        assert!(!listening_on(tcp, 5201));
    }

    #[test]
    fn reads_collectors_from_help() {
        let help = "Usage: kernel-exporter [OPTIONS]

Collectors:
      --collector.block.device-exclude <REGEX>
          Devices to leave out
      --collector.disable-defaults
          Disable every collector that is on by default
      --collector.sched
          Enable the sched collector (enabled by default): scheduler
      --no-collector.sched
          Disable the sched collector
      --collector.syscalls
          Enable the syscalls collector (disabled by
          default): per-syscall counts
      --collector.mm  Enable the mm collector (enabled
                      by default): memory
";
        assert_eq!(
            collectors_from_help(help),
            vec![
                Collector { name: "sched".into(), default_enabled: true },
                Collector { name: "syscalls".into(), default_enabled: false },
                Collector { name: "mm".into(), default_enabled: true },
            ]
        );
    }

    #[test]
    fn usage_per_event_in_the_workloads_unit() {
        let usage = Usage { cpu: Duration::from_millis(500), wall: Duration::from_secs(1), minor_faults: 7 };
        assert_eq!(usage.per_event(1_000_000.0, 1e9), Sample { cpu: 500.0, wall: 1000.0 });
        assert_eq!(usage.per_event(4.0, 1e3), Sample { cpu: 125.0, wall: 250.0 });
        let both = usage.add(usage);
        assert_eq!((both.cpu, both.wall, both.minor_faults), (Duration::from_secs(1), Duration::from_secs(2), 14));
        assert_eq!(timeval(libc::timeval { tv_sec: 2, tv_usec: 250_000 }), Duration::from_millis(2_250));
    }

    #[test]
    fn in_process_workloads_are_named_by_their_key() {
        for workload in Workload::ALL {
            assert_eq!(Workload::from_key(workload.key()), Some(workload));
        }
        assert_eq!(Workload::from_key("nothing"), None);
        assert!(workload_child("syscalls", 1).is_err(), "dd is not an in-process workload");
    }

    #[test]
    fn children_report_their_cpu_time_and_status() {
        // A shell that burns some CPU in a grandchild it waits for: its time
        // counts as the child's.
        let usage = run_child(
            Command::new("sh").args(["-c", "sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done'"]),
            "a busy shell",
        )
        .unwrap();
        assert!(usage.cpu >= Duration::from_millis(20), "{usage:?}");
        assert!(usage.wall >= usage.cpu / 2, "{usage:?}");
        let error = run_child(Command::new("sh").args(["-c", "echo broken >&2; exit 3"]), "a failing shell");
        let message = format!("{:#}", error.unwrap_err());
        assert!(message.contains("a failing shell failed") && message.contains("broken"), "{message}");
        let mut slow = Running::spawn(Command::new("sleep").arg("10"), "sleep", false).unwrap();
        assert!(!slow.poll().unwrap());
        let message = format!("{:#}", slow.finish(Some(Duration::from_millis(50))).err().unwrap());
        assert!(message.contains("did not exit"), "{message}");
    }

    #[test]
    fn report_compares_cpu_time_medians_and_keeps_wall_time() {
        let sample = |cpu, wall| Sample { cpu, wall };
        let column = |values: &[(f64, f64)]| values.iter().map(|&(c, w)| sample(c, w)).collect::<Vec<_>>();
        let mut samples = BTreeMap::new();
        let off = column(&[(100.0, 200.0), (98.0, 300.0), (102.0, 100.0)]);
        let on = column(&[(110.0, 150.0), (111.0, 220.0), (109.0, 400.0)]);
        samples.insert("off".to_owned(), vec![off; Workload::ALL.len()]);
        samples.insert("default".to_owned(), vec![on; Workload::ALL.len()]);
        let on = [Config::Default, Config::Alone("missing".into())];
        let report = Report::new(&samples, &on, &QUICK, 3);
        assert_eq!(report.columns, ["default"], "a configuration without samples has no column");
        assert!((report.overhead("default", 0, Figure::Cpu) - 10.0).abs() < 1e-9);
        assert!((report.overhead("default", 0, Figure::Wall) - 10.0).abs() < 1e-9);
        let table = report.render(&["sched"], &[], (3.0, 4.0));
        let row = table.lines().find(|line| line.starts_with("syscalls")).unwrap();
        assert!(
            row.contains("100.0") && row.contains("2.0%") && row.contains("50.0%") && row.contains("+10.0%"),
            "{row}"
        );
        let json = report.json(true, "abc", Path::new("/bin/x"), &["sched"], &[]);
        let default = &json["configurations"][1];
        assert_eq!(default["name"], "default");
        assert_eq!(default["median"]["syscalls"], 110.0);
        assert_eq!(default["wall"]["median"]["syscalls"], 220.0);
        assert!(json["configurations"][0].get("overhead_percent").is_none());
    }

    #[test]
    fn rounds_alternate_the_baseline_and_rotate_the_rest() {
        let on = vec![Config::Default, Config::Alone("a".into()), Config::Alone("b".into())];
        let labels = |round| schedule(&on, round).iter().map(Config::label).collect::<Vec<_>>();
        assert_eq!(labels(0), ["off", "default", "a", "off", "b"]);
        assert_eq!(labels(1), ["off", "a", "b", "off", "default"]);
        assert_eq!(labels(3), labels(0));
        assert_eq!(schedule(&[], 0), vec![Config::Off, Config::Off]);
    }
}
