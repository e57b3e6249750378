//! `cargo xtask fuzz [--seconds N] [--cmin] [TARGET]`: runs the fuzz
//! targets in `fuzz/` (libFuzzer through cargo-fuzz, AddressSanitizer,
//! debug assertions) one after the other, N seconds each.
//!
//! Each target grows its corpus in `fuzz/corpus/<target>/`, also reads the
//! crash reproducers in `fuzz/regressions/<target>/`, and mutates with the
//! keywords in `fuzz/dicts/<target>.dict` where there is one. Progress is one
//! line per target every tenth of its time; each target ends with a line of
//! libFuzzer's figures (runs, coverage, corpus), the run with one summary
//! line. A crash, a hang (an input running over [`INPUT_TIMEOUT_SECS`]) or
//! running out of memory fails the command and names the reproducer file;
//! the other targets still run. libFuzzer's whole output is kept in
//! `fuzz/target/logs/<target>.log`.
//!
//! The targets are built once, then their binaries run directly: a source
//! edit during a long run does not rebuild anything under it.

use std::{
    collections::VecDeque,
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::prereq::{self, Toolchain, say};

/// The cargo-fuzz release this project runs with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// An input that runs longer than this is a hang, reported like a crash.
const INPUT_TIMEOUT_SECS: u64 = 10;

/// Above this RSS, libFuzzer reports the input as out of memory.
const RSS_LIMIT_MB: u64 = 2048;

/// libFuzzer's last lines shown when a target fails...
const TAIL_LINES: usize = 12;
/// ...after at most this many of the panic message's.
const PANIC_LINES: usize = 16;

/// Where cargo-fuzz puts the target binaries.
const BINARIES: &str = "target/x86_64-unknown-linux-gnu/release";

pub(crate) fn fuzz(seconds: u64, only: Option<&str>, cmin: bool) -> anyhow::Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let toolchain = Toolchain::ensure()?;
    ensure_cargo_fuzz(&toolchain)?;
    let fuzz_dir = prereq::workspace_root().join("fuzz");

    let listed = command_stdout(toolchain.nightly_cargo().args(["fuzz", "list"]), "cargo fuzz list")?;
    let all: Vec<String> = listed.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect();
    let targets = match only {
        None => all,
        Some(target) if all.iter().any(|known| known == target) => vec![target.to_owned()],
        Some(target) => bail!("there is no fuzz target {target:?}; the targets are {}", all.join(", ")),
    };

    say("build", "fuzz targets (cargo +nightly fuzz build: optimized, debug assertions, AddressSanitizer)");
    let mut build = toolchain.nightly_cargo();
    build.args(["fuzz", "build"]);
    if let [target] = targets.as_slice() {
        build.arg(target);
    }
    prereq::run_checked(&mut build, "cargo fuzz build")?;

    let logs = fuzz_dir.join("target/logs");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut outcomes = Vec::new();
    for target in &targets {
        let outcome = run_target(&fuzz_dir, target, seconds, &logs)?;
        outcome.report(target);
        outcomes.push((target.as_str(), outcome));
    }

    let runs: u64 = outcomes.iter().map(|(_, outcome)| outcome.runs).sum();
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(target, outcome)| {
            outcome.failure.as_ref().map(|failure| format!("{target} ({}: {})", failure.kind, failure.reproducer))
        })
        .collect();
    let summary = format!(
        "{} target(s) x {seconds} s: {} runs, {} crashed{}{}",
        targets.len(),
        thousands(runs),
        failed.len(),
        if failed.is_empty() { "" } else { ": " },
        failed.join(", ")
    );
    if !failed.is_empty() {
        println!("xtask: fuzz: {summary}");
        bail!(
            "fuzzing found inputs that break a property: replay one with `cargo +nightly fuzz run TARGET FILE`; \
             once fixed, add it under fuzz/regressions/TARGET/ (cargo test replays it) with a unit test"
        );
    }

    if cmin {
        for target in &targets {
            let corpus = fuzz_dir.join("corpus").join(target);
            let before = count_files(&corpus);
            say("cmin", &format!("{target}: minimizing fuzz/corpus/{target} ({before} inputs)"));
            let mut minimize = toolchain.nightly_cargo();
            // The fewest inputs that hit every edge the corpus hits (not
            // every hit count): a small corpus to commit, which fuzzing
            // grows back in seconds.
            minimize
                .args(["fuzz", "cmin", target, "--", "-set_cover_merge=1", "-use_counters=0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            prereq::run_checked(&mut minimize, &format!("cargo fuzz cmin {target}"))?;
            say("ok", &format!("{target}: {before} -> {} inputs", count_files(&corpus)));
        }
    }
    println!("xtask: fuzz: {summary}");
    Ok(())
}

/// Installs cargo-fuzz into `$CARGO_HOME/bin` unless that release is there.
fn ensure_cargo_fuzz(toolchain: &Toolchain) -> anyhow::Result<()> {
    let cargo_home = prereq::cargo_home()?;
    let installed = cargo_home.join("bin/cargo-fuzz");
    let version = Command::new(&installed)
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    match version {
        Some(version) if version.split_whitespace().nth(1) == Some(CARGO_FUZZ_VERSION) => {
            say("ok", &format!("cargo-fuzz {CARGO_FUZZ_VERSION} present"));
            return Ok(());
        }
        Some(version) => say("setup", &format!("replacing {version} with cargo-fuzz {CARGO_FUZZ_VERSION}")),
        None => say("setup", &format!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (a few minutes)")),
    }
    let spec = format!("cargo-fuzz@{CARGO_FUZZ_VERSION}");
    let mut install = toolchain.cargo();
    install.args(["install", &spec, "--locked", "--force", "--root"]).arg(&cargo_home);
    prereq::run_checked(&mut install, &format!("cargo install {spec}"))
        .with_context(|| format!("cannot install cargo-fuzz; run `cargo install {spec} --locked`"))?;
    say("ok", &format!("cargo-fuzz {CARGO_FUZZ_VERSION} installed in {}", cargo_home.join("bin").display()));
    Ok(())
}

/// What one target's run came to, from libFuzzer's output.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    runs: u64,
    seconds: u64,
    /// The last status line's figures.
    status: Status,
    /// Files in the corpus folder before and after.
    corpus_files: (usize, usize),
    peak_rss_mb: u64,
    failure: Option<Failure>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Status {
    runs: u64,
    /// Coverage counters (edges) hit.
    cov: u64,
    /// Features (edges with hit counts, compared values...).
    ft: u64,
    corpus_units: u64,
    corpus_bytes: String,
    exec_per_sec: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Failure {
    /// crash, timeout or out-of-memory.
    kind: &'static str,
    reproducer: String,
}

impl Outcome {
    /// Folds one line of libFuzzer's output in.
    fn read(&mut self, line: &str) {
        if let Some(status) = Status::parse(line) {
            self.status = status;
        } else if let Some(value) = line.strip_prefix("stat::number_of_executed_units:") {
            self.runs = value.trim().parse().unwrap_or(self.runs);
        } else if let Some(value) = line.strip_prefix("stat::peak_rss_mb:") {
            self.peak_rss_mb = value.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // `Done 1923102 runs in 16 second(s)`
            let words: Vec<&str> = rest.split_whitespace().collect();
            if let [runs, "runs", "in", seconds, ..] = words.as_slice() {
                self.runs = runs.parse().unwrap_or(self.runs);
                self.seconds = seconds.parse().unwrap_or(0);
            }
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            let kind = match path.trim().rsplit('/').next().and_then(|name| name.split('-').next()) {
                Some("timeout") => "timeout",
                Some("oom") => "out-of-memory",
                Some("slow") => return,
                _ => "crash",
            };
            self.failure = Some(Failure { kind, reproducer: path.trim().to_owned() });
        }
    }

    fn report(&self, target: &str) {
        let status = &self.status;
        match &self.failure {
            None => say(
                "ok",
                &format!(
                    "{target}: {} runs in {} s ({}/s), cov {}, ft {}, corpus {} inputs ({}; files {} -> {}), peak RSS {} MB",
                    thousands(self.runs),
                    self.seconds,
                    thousands(self.runs / self.seconds.max(1)),
                    status.cov,
                    status.ft,
                    status.corpus_units,
                    status.corpus_bytes,
                    self.corpus_files.0,
                    self.corpus_files.1,
                    self.peak_rss_mb,
                ),
            ),
            Some(failure) => say(
                "FAIL",
                &format!(
                    "{target}: {} after {} runs (cov {}); reproducer: {}",
                    failure.kind,
                    thousands(self.runs.max(status.runs)),
                    status.cov,
                    failure.reproducer
                ),
            ),
        }
    }
}

impl Status {
    /// `#1048576 pulse  cov: 455 ft: 774 corp: 9/235b lim: 4096 exec/s: 30959 rss: 60Mb`
    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix('#')?;
        let (runs, rest) = rest.split_once(char::is_whitespace)?;
        let runs = runs.parse().ok()?;
        let words: Vec<&str> = rest.split_whitespace().collect();
        let field = |name: &str| words.iter().position(|word| *word == name).and_then(|i| words.get(i + 1)).copied();
        let number = |name: &str| field(name).and_then(|value| value.parse().ok());
        let (corpus_units, corpus_bytes) = field("corp:")?.split_once('/')?;
        Some(Self {
            runs,
            cov: number("cov:")?,
            ft: number("ft:").unwrap_or(0),
            corpus_units: corpus_units.parse().ok()?,
            corpus_bytes: corpus_bytes.to_owned(),
            exec_per_sec: number("exec/s:").unwrap_or(0),
        })
    }
}

/// Runs one target's binary for `seconds`, printing progress.
fn run_target(fuzz_dir: &Path, target: &str, seconds: u64, logs: &Path) -> anyhow::Result<Outcome> {
    let binary = fuzz_dir.join(BINARIES).join(target);
    let corpus = fuzz_dir.join("corpus").join(target);
    let regressions = fuzz_dir.join("regressions").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let mut log = fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;

    let files_before = count_files(&corpus);
    say(
        "fuzz",
        &format!(
            "{target}: {seconds} s on fuzz/corpus/{target} ({files_before} inputs), log in {}",
            relative(&log_path).display()
        ),
    );
    let mut command = Command::new(&binary);
    command
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        // New inputs go to the first folder; the others are only read.
        .arg(&corpus);
    if regressions.is_dir() {
        command.arg(&regressions);
    }
    let dictionary = fuzz_dir.join("dicts").join(format!("{target}.dict"));
    if dictionary.is_file() {
        command.arg(format!("-dict={}", dictionary.display()));
    }
    let mut child = command
        .current_dir(fuzz_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}; did `cargo fuzz build` succeed?", binary.display()))?;
    let stderr = child.stderr.take().context("piped stderr")?;

    let started = Instant::now();
    let every = Duration::from_secs((seconds / 10).max(10));
    let mut next_report = every;
    let mut outcome = Outcome { seconds, ..Outcome::default() };
    // Printed if the target fails: the panic and its message, and
    // libFuzzer's last lines (the input and where it was written); the
    // stack traces between them are in the log.
    let mut panic: Vec<String> = Vec::new();
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    // Not `lines()`: a panic message may quote the input, UTF-8 or not.
    for line in BufReader::new(stderr).split(b'\n') {
        let line = line.with_context(|| format!("reading {target}'s output"))?;
        let line = String::from_utf8_lossy(&line).into_owned();
        writeln!(log, "{line}").with_context(|| format!("writing {}", log_path.display()))?;
        outcome.read(&line);
        let in_panic = panic
            .last()
            .is_some_and(|last| !["note:", "==", "stack backtrace:"].iter().any(|end| last.starts_with(end)));
        if line.contains("panicked at") || (in_panic && panic.len() < PANIC_LINES) {
            panic.push(line.clone());
        }
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
        let elapsed = started.elapsed();
        if elapsed >= next_report && outcome.failure.is_none() {
            // libFuzzer can be quiet for a while: skip the marks passed.
            while next_report <= elapsed {
                next_report += every;
            }
            let status = &outcome.status;
            say(
                "fuzz",
                &format!(
                    "{target}: {}/{seconds} s, {} runs, cov {}, ft {}, corpus {} ({}), {}/s",
                    elapsed.as_secs(),
                    thousands(status.runs),
                    status.cov,
                    status.ft,
                    status.corpus_units,
                    status.corpus_bytes,
                    thousands(status.exec_per_sec),
                ),
            );
        }
    }
    let exit = child.wait().with_context(|| format!("waiting for {target}"))?;
    outcome.corpus_files = (files_before, count_files(&corpus));
    if !exit.success() {
        for line in panic.iter().chain([&"...".to_owned()]).chain(&tail) {
            println!("    {line}");
        }
        if outcome.failure.is_none() {
            let reproducer = format!("none written ({exit}); see {}", relative(&log_path).display());
            outcome.failure = Some(Failure { kind: "crash", reproducer });
        }
    }
    Ok(outcome)
}

fn count_files(dir: &Path) -> usize {
    fs::read_dir(dir).map(|entries| entries.filter_map(Result::ok).filter(|e| e.path().is_file()).count()).unwrap_or(0)
}

fn command_stdout(command: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = command.stderr(Stdio::inherit()).output().with_context(|| format!("cannot start `{what}`"))?;
    if !out.status.success() {
        bail!("`{what}` failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// 12345678 as 12,345,678.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `path` from the workspace root, for shorter lines.
fn relative(path: &Path) -> PathBuf {
    path.strip_prefix(prereq::workspace_root()).map(Path::to_path_buf).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let mut outcome = Outcome::default();
        for line in [
            "INFO: Seed: 1234",
            "#10\tINITED cov: 455 ft: 774 corp: 9/235b exec/s: 0 rss: 55Mb",
            "#1048576\tpulse  cov: 460 ft: 800 corp: 12/1024b lim: 4096 exec/s: 30959 rss: 60Mb",
            "#1923102\tDONE   cov: 461 ft: 802 corp: 13/1Kb lim: 4096 exec/s: 120193 rss: 61Mb",
            "Done 1923102 runs in 16 second(s)",
            "stat::number_of_executed_units: 1923102",
            "stat::peak_rss_mb:              61",
        ] {
            outcome.read(line);
        }
        assert_eq!(outcome.runs, 1_923_102);
        assert_eq!(outcome.seconds, 16);
        assert_eq!(outcome.peak_rss_mb, 61);
        assert_eq!(
            outcome.status,
            Status {
                runs: 1_923_102,
                cov: 461,
                ft: 802,
                corpus_units: 13,
                corpus_bytes: "1Kb".into(),
                exec_per_sec: 120_193
            }
        );
        assert_eq!(outcome.failure, None);
    }

    #[test]
    fn names_the_reproducer() {
        let mut outcome = Outcome::default();
        outcome
            .read("artifact_prefix='/w/fuzz/artifacts/cidr/'; Test unit written to /w/fuzz/artifacts/cidr/crash-846d");
        assert_eq!(
            outcome.failure,
            Some(Failure { kind: "crash", reproducer: "/w/fuzz/artifacts/cidr/crash-846d".into() })
        );
        outcome.read("artifact_prefix='/w/a/'; Test unit written to /w/a/timeout-12ab");
        assert_eq!(outcome.failure.map(|failure| failure.kind), Some("timeout"));
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }
}
