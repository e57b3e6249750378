//! `cargo xtask`: builds, runs and tests kernel-exporter, and sets up what
//! it needs on the way (nightly `rust-src`, `bpf-linker` built against the
//! nightly's own LLVM, tracefs, Debian packages for the end-to-end tests).
//!
//! Every setup step prints one line; a step that cannot be done stops with
//! one line naming what is missing and the command that fixes it.

mod bench;
mod codegen;
mod floor;
mod formats;
mod fuzz;
mod image;
mod install;
mod overhead;
mod prereq;
mod run;
mod soak;
mod systemd_root;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Build, run and test kernel-exporter.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the BPF object and the daemon, installing what is missing.
    Build {
        /// Build with optimizations.
        #[arg(long)]
        release: bool,
    },
    /// Build, then start the exporter with safe defaults (127.0.0.1:9569).
    Run {
        /// Build with optimizations.
        #[arg(long)]
        release: bool,
        /// Serve mutual TLS with a local CA and certificates made under
        /// target/dev-pki/ (once); prints the matching curl command.
        #[arg(long)]
        tls: bool,
        /// Arguments for kernel-exporter, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Compare with node_exporter, benchmark the encoder and the probes;
    /// writes target/bench/report.json.
    Bench {
        /// Shorter criterion runs, for a quick look.
        #[arg(long)]
        quick: bool,
        /// Only the per-event cost of the kernel programs (no criterion, no
        /// node_exporter comparison).
        #[arg(long)]
        probes_only: bool,
        /// Only how much slower ordinary workloads (syscalls, small packets,
        /// page faults, context switches, fork/exec, git) run with the
        /// exporter attached: off, default collectors, each collector alone;
        /// writes target/bench/overhead.json.
        #[arg(long, conflicts_with = "probes_only")]
        overhead: bool,
        /// With --overhead: time only these collectors alone (default: every
        /// collector the daemon offers); the default set is always timed.
        #[arg(long, value_name = "NAME,...", value_delimiter = ',', requires = "overhead")]
        overhead_collectors: Option<Vec<String>>,
        /// With --overhead or --probes-only: measure this kernel-exporter
        /// binary instead of a fresh release build (an earlier commit's, for
        /// a before/after; the kernel programs are the same in a debug build).
        #[arg(long, value_name = "PATH")]
        exporter_binary: Option<std::path::PathBuf>,
        /// With --overhead: alternating rounds (default 5, 3 with --quick);
        /// more rounds narrow the medians on a noisy machine.
        #[arg(long, value_name = "N", requires = "overhead")]
        rounds: Option<usize>,
    },
    /// Build the container image kernel-exporter:VERSION (FROM scratch, one
    /// static musl binary) into the local container store.
    Image,
    /// Install the release binary, the systemd unit, the example web config
    /// and the system user, idempotently.
    Install {
        /// The binary goes to PREFIX/bin.
        #[arg(long, value_name = "DIR", default_value = "/usr/local")]
        prefix: std::path::PathBuf,
        /// Install into this root instead of /: an image or a test's folder.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: std::path::PathBuf,
        /// Install this already built daemon instead of building a release.
        #[arg(long, value_name = "PATH")]
        binary: Option<std::path::PathBuf>,
        /// Print each step that would be taken; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the release daemon behind mutual TLS, basic auth and the
    /// allowlist for N minutes against good and bad clients; fails if a good
    /// scrape fails, a bad client is not refused, or RSS or descriptors grow.
    Soak {
        /// How long to scrape.
        #[arg(long, value_name = "N", default_value_t = 10)]
        minutes: u64,
    },
    /// Fuzz the parsers of untrusted input (libFuzzer via cargo-fuzz on
    /// nightly), N seconds per target, growing fuzz/corpus/TARGET; fails on
    /// a crash and names the reproducer.
    Fuzz {
        /// How long to run each target.
        #[arg(long, value_name = "N", default_value_t = 60)]
        seconds: u64,
        /// Minimize each corpus afterwards (cargo fuzz cmin), before committing it.
        #[arg(long)]
        cmin: bool,
        /// Only this target (default: every one; `cargo fuzz list` names them).
        target: Option<String>,
    },
    /// Internal to `bench --overhead`: one workload (page_faults,
    /// context_switches, fork_exec) of SIZE events, run in a child process
    /// of the bench so that its CPU time can be read with wait4.
    #[command(hide = true)]
    OverheadWorkload { workload: String, size: u64 },
    /// Regenerate the generated sources (the syscall name tables) from
    /// their inputs (the kernel headers of Debian's linux-libc-dev).
    Codegen {
        /// Change nothing; fail if regenerating would change a file.
        #[arg(long)]
        check: bool,
    },
    /// Run the unit tests, then the end-to-end tests against the real kernel.
    Test {
        /// Only run end-to-end tests whose name contains this.
        filter: Option<String>,
        /// Also the deployment stage: the container image under podman or
        /// docker, and the systemd unit and socket under a real systemd
        /// booted in systemd-nspawn (a few minutes more; CI runs it).
        #[arg(long)]
        deploy: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build { release } => {
            prereq::Toolchain::ensure().and_then(|toolchain| toolchain.build(release).map(drop))
        }
        Command::Run { release, tls, args } => run::run(release, tls, &args),
        Command::Install { prefix, root, binary, dry_run } => {
            install::install(&install::Options { prefix, root, binary, dry_run })
        }
        Command::Test { filter, deploy } => test::test(filter.as_deref(), deploy),
        Command::Image => image::image(),
        Command::Codegen { check } => codegen::codegen(check),
        Command::Soak { minutes } => soak::soak(minutes),
        Command::Fuzz { seconds, cmin, target } => fuzz::fuzz(seconds, target.as_deref(), cmin),
        Command::Bench { quick, overhead: true, overhead_collectors, exporter_binary, rounds, .. } => {
            overhead::overhead(quick, overhead_collectors.as_deref(), exporter_binary.as_deref(), rounds)
        }
        Command::Bench { quick, probes_only, exporter_binary, .. } => {
            bench::bench(quick, probes_only, exporter_binary.as_deref())
        }
        Command::OverheadWorkload { workload, size } => overhead::workload_child(&workload, size),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
