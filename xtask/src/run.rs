//! `cargo xtask run`: build, then replace this process with the exporter so
//! Ctrl-C and SIGTERM reach it directly.

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::bail;

use crate::prereq::{self, Toolchain, say};

const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:9569";
const DEFAULT_TELEMETRY_PATH: &str = "/metrics";

pub(crate) fn run(release: bool, args: &[String]) -> anyhow::Result<()> {
    let toolchain = Toolchain::ensure()?;
    let binary = toolchain.build(release)?;
    if !can_load_bpf() {
        bail!(
            "kernel-exporter needs root or CAP_BPF and CAP_PERFMON to load its BPF programs; \
             run `sudo -E env PATH=\"$PATH\" cargo xtask run`"
        );
    }
    prereq::ensure_tracefs()?;

    let url = metrics_url(args);
    say("run", &format!("{} {}", binary.display(), args.join(" ")));
    println!();
    println!("  metrics: {url}");
    println!("  try:     curl -s {url} | grep ^kernel_");
    println!("  stop:    Ctrl-C");
    println!();
    let error = Command::new(&binary).args(args).exec();
    bail!("cannot start {}: {error}", binary.display())
}

/// The URL a user should scrape, from the first listen address and the
/// telemetry path given (or the defaults).
fn metrics_url(args: &[String]) -> String {
    let flag = |name: &str| {
        let mut found = None;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if let Some(value) = arg.strip_prefix(&format!("--{name}=")) {
                found.get_or_insert_with(|| value.to_owned());
            } else if arg == &format!("--{name}")
                && let Some(value) = iter.next()
            {
                found.get_or_insert_with(|| value.clone());
            }
        }
        found
    };
    let address = flag("web.listen-address").unwrap_or_else(|| DEFAULT_LISTEN_ADDRESS.to_owned());
    let address = match address.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => address,
    };
    let path = flag("web.telemetry-path").unwrap_or_else(|| DEFAULT_TELEMETRY_PATH.to_owned());
    format!("http://{address}{path}")
}

/// Root, or the two capabilities, in this process (which the exporter
/// inherits).
fn can_load_bpf() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let effective = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
    });
    effective.is_some_and(|caps| {
        let has = |cap: u32| caps & (1 << cap) != 0;
        has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(args: &[&str]) -> String {
        metrics_url(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn url_follows_the_flags() {
        assert_eq!(url(&[]), "http://127.0.0.1:9569/metrics");
        assert_eq!(url(&["--web.listen-address=:9100"]), "http://127.0.0.1:9100/metrics");
        assert_eq!(url(&["--web.listen-address", "[::1]:1234", "--web.telemetry-path=/m"]), "http://[::1]:1234/m");
    }
}
