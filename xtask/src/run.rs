//! `cargo xtask run`: build, then replace this process with the exporter so
//! Ctrl-C and SIGTERM reach it directly. With `--tls`, first make a local
//! CA, a server and a client certificate under `target/dev-pki/` (once) and
//! start with mutual TLS.

use std::{fs, os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use anyhow::bail;

use crate::prereq::{self, Toolchain, say};

const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:9569";
const DEFAULT_TELEMETRY_PATH: &str = "/metrics";

pub(crate) fn run(release: bool, tls: bool, args: &[String]) -> anyhow::Result<()> {
    let toolchain = Toolchain::ensure()?;
    let binary = toolchain.build(release)?;
    if !can_load_bpf() {
        bail!(
            "kernel-exporter needs root or CAP_BPF and CAP_PERFMON to load its BPF programs; \
             run `sudo -E env PATH=\"$PATH\" cargo xtask run`"
        );
    }
    prereq::ensure_tracefs()?;

    let mut args = args.to_vec();
    let pki = if tls {
        let pki = dev_pki()?;
        args.insert(0, format!("--web.config.file={}", pki.join("web.yml").display()));
        Some(pki)
    } else {
        None
    };
    let mut url = metrics_url(&args);
    say("run", &format!("{} {}", binary.display(), args.join(" ")));
    println!();
    match &pki {
        None => {
            println!("  metrics: {url}");
            println!("  try:     curl -s {url} | grep ^kernel_");
        }
        Some(pki) => {
            url = url.replacen("http://", "https://", 1);
            let file = |name: &str| pki.join(name).display().to_string();
            println!("  metrics: {url} (mutual TLS; certificates in {})", pki.display());
            println!(
                "  try:     curl -s --cacert {} --cert {} --key {} {url} | grep ^kernel_",
                file("ca.crt"),
                file("client.crt"),
                file("client.key")
            );
        }
    }
    println!("  stop:    Ctrl-C");
    println!();
    let error = Command::new(&binary).args(&args).exec();
    bail!("cannot start {}: {error}", binary.display())
}

/// `target/dev-pki/`: a CA, a server certificate for localhost, 127.0.0.1
/// and ::1, a client certificate, and a web config requiring mutual TLS
/// (`kernel_exporter_fixtures::pki::local_mutual_tls`, which the soak uses
/// too). Made once; delete the folder to start over.
pub(crate) fn dev_pki() -> anyhow::Result<PathBuf> {
    let dir = prereq::target_dir().join("dev-pki");
    if !dir.join("web.yml").is_file() {
        prereq::ensure_debian_packages(&[("openssl", "openssl")])?;
        say("tls", &format!("creating a local CA, a server and a client certificate in {}", dir.display()));
    }
    let pki = kernel_exporter_fixtures::pki::local_mutual_tls(&dir)?;
    Ok(pki.dir().to_owned())
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
pub(crate) fn can_load_bpf() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let effective = fs::read_to_string("/proc/self/status").ok().and_then(|status| {
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
