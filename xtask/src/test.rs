//! `cargo xtask test`: unit tests, then the end-to-end tests, which start
//! the real daemon as root against the real kernel, one at a time (they
//! share the kernel's state and ports).

use anyhow::bail;

use crate::prereq::{self, Toolchain, say};

/// Commands the end-to-end tests run, and the Debian packages that have them.
const E2E_COMMANDS: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    ("curl", "curl"),
    ("setpriv", "util-linux"),
];

pub(crate) fn test(filter: Option<&str>) -> anyhow::Result<()> {
    let toolchain = Toolchain::ensure()?;
    if !prereq::is_root() {
        bail!(
            "the end-to-end tests load BPF programs and need root; run `sudo -E env PATH=\"$PATH\" cargo xtask test`"
        );
    }
    prereq::ensure_tracefs()?;
    prereq::ensure_debian_packages(E2E_COMMANDS)?;
    let binary = toolchain.build(false)?;

    say("test", "unit tests (cargo test)");
    prereq::run_checked(
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

    say(
        "test",
        "end-to-end tests against the real kernel (cargo test -p kernel-exporter-tests)",
    );
    let mut e2e = toolchain.cargo();
    e2e.args([
        "test",
        "--package",
        "kernel-exporter-tests",
        "--",
        "--test-threads=1",
    ])
    .env("KERNEL_EXPORTER_BIN", &binary);
    if let Some(filter) = filter {
        e2e.arg(filter);
    }
    prereq::run_checked(&mut e2e, "cargo test -p kernel-exporter-tests")?;
    say("ok", "all tests passed");
    Ok(())
}
