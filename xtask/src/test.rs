//! `cargo xtask test`: unit tests, then the end-to-end tests, which start
//! the real daemon as root against the real kernel, one at a time (they
//! share the kernel's state and ports).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::prereq::{self, Toolchain, say};

/// Commands the end-to-end tests run, and the Debian packages that have them.
const E2E_COMMANDS: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    // The front door tests: a real Prometheus server scrapes over mutual
    // TLS; certificates come from the openssl CLI.
    ("prometheus", "prometheus"),
    ("openssl", "openssl"),
    ("curl", "curl"),
    ("setpriv", "util-linux"),
    // The hostile-client tests start the daemon under a low open-files limit.
    ("prlimit", "util-linux"),
    // `ip` and `tc` (one package) build the tcp test's lossy namespace.
    ("ip", "iproute2"),
    // The deploy tests check the systemd unit with `systemd-analyze verify`,
    // and its system-call filter against what strace sees the daemon call.
    ("systemd-analyze", "systemd"),
    ("strace", "strace"),
    // The allowlist tests count the entries of the kernel's trie in force
    // with `bpftool map dump`, independently of the daemon's own gauge.
    ("bpftool", "bpftool"),
    // The hostile tests measure check-config's peak RSS with /usr/bin/time.
    ("time", "time"),
];

/// Python modules the end-to-end tests use, and their PyPI packages: the
/// reference parsers of both exposition formats (promtool 2.42 only reads
/// the text format), and the Kubernetes schemas the DaemonSet is validated
/// against (shipped in the package, so offline).
const E2E_PYTHON_MODULES: &[(&str, &str)] =
    &[("prometheus_client", "prometheus-client"), ("kubernetes_validate", "kubernetes-validate")];

/// The deployment stage's tests (`tests/tests/e2e/deployment.rs`): they need
/// the image and the systemd root this module prepares, so the ordinary
/// end-to-end stage leaves them out.
const DEPLOYMENT_TESTS: &str = "deployment::";

pub(crate) fn test(filter: Option<&str>, deploy: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let toolchain = Toolchain::ensure()?;
    if !prereq::is_root() {
        bail!(
            "the end-to-end tests load BPF programs and need root; run `sudo -E env PATH=\"$PATH\" cargo xtask test`"
        );
    }
    prereq::ensure_tracefs()?;
    prereq::ensure_debian_packages(E2E_COMMANDS)?;
    prereq::ensure_python_modules(E2E_PYTHON_MODULES)?;
    // With the fault-injection hooks the faults tests need; no other build has them.
    let binary = toolchain.build_for_tests()?;

    // Generated files must be what their generator makes, before anything
    // is built from them.
    crate::codegen::codegen(true)?;

    let mut tally = Tally::default();
    // `--deploy deployment::…`: only that stage.
    let only_deployment = deploy && filter.is_some_and(|filter| filter.contains(DEPLOYMENT_TESTS));
    if !only_deployment {
        ordinary_stages(&toolchain, &binary, filter, &mut tally)?;
    }
    if deploy {
        let stage = Instant::now();
        say("test", "deployment: the container image and the systemd unit under a real systemd");
        let built = crate::image::build()?;
        let root = crate::systemd_root::ensure()?;
        say("ok", &format!("deployment prerequisites ready after {:.0?}", stage.elapsed()));
        let tests = Instant::now();
        let mut e2e = e2e_command(&toolchain, &binary);
        crate::image::env_for_tests(&built, &mut e2e);
        e2e.env("KERNEL_EXPORTER_SYSTEMD_ROOT", &root);
        // Their figures (start-up times, the systemd-analyze score) are
        // worth reading in every run.
        e2e.arg("--nocapture").arg(filter.filter(|_| only_deployment).unwrap_or(DEPLOYMENT_TESTS));
        tally.run(&mut e2e, "cargo test -p kernel-exporter-tests deployment::")?;
        say("ok", &format!("deployment stage: {:.0?} (tests {:.0?})", stage.elapsed(), tests.elapsed()));
    }
    say("ok", &format!("all stages: {:.0?}", started.elapsed()));
    // One closing line for the whole run, in the plain form CI reads.
    println!("xtask: {} passed, {} failed", tally.passed, tally.failed);
    Ok(())
}

/// The end-to-end tests' cargo command, up to the test filter.
fn e2e_command(toolchain: &Toolchain, binary: &std::path::Path) -> Command {
    let mut e2e = toolchain.cargo();
    e2e.args(["test", "--package", "kernel-exporter-tests", "--", "--test-threads=1"])
        .env("KERNEL_EXPORTER_BIN", binary)
        // The deploy tests run `xtask install` into a temporary root. Not
        // current_exe(): a rebuild during the run replaces that file.
        .env("XTASK_BIN", prereq::target_dir().join("debug/xtask"));
    e2e
}

/// Unit tests, then every end-to-end test but the deployment stage's.
fn ordinary_stages(
    toolchain: &Toolchain,
    binary: &std::path::Path,
    filter: Option<&str>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let stage = Instant::now();
    say("test", "unit tests (cargo test)");
    tally.run(
        toolchain.cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "exporter-ebpf",
            "--exclude",
            "kernel-exporter-tests",
        ]),
        "cargo test",
    )?;

    say("ok", &format!("unit tests: {:.0?}", stage.elapsed()));

    let stage = Instant::now();
    say("test", "end-to-end tests against the real kernel (cargo test -p kernel-exporter-tests)");
    let mut e2e = e2e_command(toolchain, binary);
    e2e.args(["--skip", DEPLOYMENT_TESTS]);
    if let Some(filter) = filter {
        e2e.arg(filter);
    }
    tally.run(&mut e2e, "cargo test -p kernel-exporter-tests")?;
    say("ok", &format!("end-to-end tests: {:.0?}", stage.elapsed()));
    Ok(())
}

/// Test counts summed over cargo's `test result:` lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    /// Runs `command`, echoing its output and counting its results.
    fn run(&mut self, command: &mut Command, what: &str) -> anyhow::Result<()> {
        let mut child = command.stdout(Stdio::piped()).spawn().with_context(|| format!("cannot start `{what}`"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.with_context(|| format!("reading the output of `{what}`"))?;
            println!("{line}");
            self.count(&line);
        }
        let status = child.wait().with_context(|| format!("waiting for `{what}`"))?;
        if !status.success() {
            println!("xtask: {} passed, {} failed", self.passed, self.failed.max(1));
            bail!("`{what}` failed ({status})");
        }
        Ok(())
    }

    /// `test result: ok. 12 passed; 0 failed; 0 ignored; ...`
    fn count(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        let number = |label: &str| {
            rest.split(';')
                .find_map(|part| part.trim().trim_start_matches(|c: char| !c.is_ascii_digit()).strip_suffix(label))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        self.passed += number("passed");
        self.failed += number("failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cargo_result_lines() {
        let mut tally = Tally::default();
        tally.count("test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 4.06s");
        tally.count("test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out");
        tally.count("running 3 tests");
        assert_eq!((tally.passed, tally.failed), (15, 2));
    }
}
