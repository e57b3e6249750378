//! The command line, in node_exporter's conventions so operators feel at
//! home, parsed and validated into a [`Config`] before anything touches the
//! kernel or the network.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches as _, Parser};

pub(crate) use crate::process::logging::{LogFormat, LogLevel};
use crate::{
    collectors::{self, CollectorOption, CollectorOptions, CollectorSpec, OptionKind},
    front_door::listener::ListenAddress,
};

/// `--version`: what was built, from what, with which BPF object.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("KERNEL_EXPORTER_REVISION"),
    ", rustc ",
    env!("KERNEL_EXPORTER_RUSTC_VERSION"),
    ", BPF object ",
    env!("KERNEL_EXPORTER_BPF_OBJECT_ID"),
    ")"
);

/// Where the exporter listens unless told otherwise: loopback only, so a
/// fresh install exposes nothing to the network.
pub(crate) const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:9569";

/// Connections held at once unless told otherwise: far more than the few
/// Prometheus servers that scrape a host need, while what idle ones cost
/// stays small (measured: about 30 KiB each, 15 MiB of RSS at the bound).
const DEFAULT_MAX_CONNECTIONS: u32 = 512;

#[derive(Debug, Parser)]
#[command(
    name = "kernel-exporter",
    version = LONG_VERSION,
    about = "Prometheus exporter for Linux hosts, fed by eBPF programs on kernel tracepoints."
)]
struct RawArgs {
    /// Address to listen on for the web interface and telemetry (repeatable).
    /// ":PORT" listens on every interface, IPv4 and IPv6.
    #[arg(long = "web.listen-address", value_name = "ADDR", default_value = DEFAULT_LISTEN_ADDRESS, help_heading = "Web")]
    listen_addresses: Vec<String>,

    /// Use the listening sockets systemd passes (socket activation,
    /// LISTEN_FDS) instead of --web.listen-address. The allowlist filter is
    /// attached to them, and connections queued before that are checked
    /// against the allowlist as they are accepted.
    #[arg(long = "web.systemd-socket", conflicts_with = "listen_addresses", help_heading = "Web")]
    systemd_socket: bool,

    /// exporter-toolkit's web-config.yml: TLS, mutual TLS, basic auth, extra
    /// headers, plus `allowed_sources`. Re-read on change and on SIGHUP.
    #[arg(long = "web.config.file", value_name = "PATH", help_heading = "Web")]
    web_config_file: Option<PathBuf>,

    /// Serve plain HTTP without auth on addresses other than loopback.
    /// Anyone who can reach the port then reads the host's statistics.
    #[arg(long = "web.allow-insecure", help_heading = "Web")]
    allow_insecure: bool,

    /// Only this source range may connect (repeatable; IPv4 or IPv6 CIDR, or
    /// a bare address): the kernel drops everyone else's packets. A
    /// shorthand for `allowed_sources` in the web config, which must then
    /// not have that key. Without either, every source may connect.
    #[arg(long = "web.allow-from", value_name = "CIDR", help_heading = "Web")]
    allow_from: Vec<String>,

    /// Sources counted one by one in kernel_exporter_connections_total and
    /// kernel_exporter_requests_total; beyond this many, the least recently
    /// seen source is forgotten (kernel_exporter_packets_total stays exact).
    #[arg(long = "web.allowlist-sources-tracked", value_name = "N", default_value_t = exporter_common::allowlist::SOURCES_DEFAULT_ENTRIES, value_parser = clap::value_parser!(u32).range(1..=1_048_576), help_heading = "Web")]
    sources_tracked: u32,

    /// Turn the kernel's BPF run statistics on, for
    /// kernel_exporter_bpf_program_run_seconds_total and _runs_total. They
    /// add two clock reads to every program run, so they are off by
    /// default; enabling them needs CAP_SYS_ADMIN (root).
    #[arg(long = "bpf.run-stats", help_heading = "Runtime")]
    bpf_run_stats: bool,

    /// After the BPF programs are attached and the listeners open, switch
    /// to this user (and its groups). Every capability is dropped either way.
    #[arg(long = "runtime.user", value_name = "NAME", help_heading = "Runtime")]
    runtime_user: Option<String>,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", help_heading = "Web")]
    telemetry_path: String,

    /// Maximum number of scrapes served at once; 0 means no limit. Scrapes
    /// over the limit get 503.
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 40, help_heading = "Web")]
    max_requests: usize,

    /// Maximum number of connections held at once. At the limit a new
    /// connection closes the one that has gone longest without a request
    /// (refused only when every connection is serving one).
    #[arg(long = "web.max-connections", value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1_000_000), help_heading = "Web")]
    max_connections: u32,

    /// Ban a source address in the kernel after this many failed client
    /// certificate handshakes or wrong credentials within 60 s (never one
    /// that authenticated successfully within the window); 0 disables.
    #[arg(long = "web.ban-after-failures", value_name = "N", default_value_t = 20, help_heading = "Web")]
    ban_after_failures: u32,

    /// How long a ban lasts (a Go duration: 10m, 1h30m); 0 disables bans.
    #[arg(long = "web.ban-duration", value_name = "DURATION", default_value = "10m", value_parser = crate::front_door::web_config::parse_go_duration, help_heading = "Web")]
    ban_duration: std::time::Duration,

    /// Password checks (bcrypt) one source address may start per second,
    /// over all its connections and HTTP/2 streams; beyond, 429 without a
    /// check. Answers already cached do not count. 0 means no limit.
    #[arg(long = "web.max-auth-checks-per-source", value_name = "N", default_value_t = 10, help_heading = "Web")]
    max_auth_checks_per_source: u32,

    /// Only log messages with this severity or above.
    #[arg(long = "log.level", value_name = "LEVEL", default_value = "info", help_heading = "Logging")]
    log_level: LogLevel,

    /// Output format of log messages.
    #[arg(long = "log.format", value_name = "FORMAT", default_value = "logfmt", help_heading = "Logging")]
    log_format: LogFormat,

    /// Disable all collectors that are on by default; enable the ones you
    /// want with --collector.NAME.
    #[arg(long = "collector.disable-defaults", help_heading = "Collectors")]
    disable_defaults: bool,

    #[command(subcommand)]
    command: Option<SubCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum SubCommand {
    /// Validate a web config file and the certificates, keys and hashes it
    /// names, print what it sets up, and exit (0 if usable, 1 if not).
    CheckConfig {
        #[arg(long = "web.config.file", value_name = "PATH", required = true)]
        web_config_file: PathBuf,
    },
    /// Ask the daemon listening on ADDR for an HTTP answer over loopback
    /// (a wildcard address is probed on 127.0.0.1) and exit 0 if it gives
    /// one: the container's liveness and readiness probe. The allowlist
    /// must hold 127.0.0.1/32.
    Healthcheck {
        #[arg(long = "web.listen-address", value_name = "ADDR", default_value = DEFAULT_LISTEN_ADDRESS)]
        listen_address: String,
        /// How long to wait for the connection and for the answer (a Go
        /// duration).
        #[arg(long = "timeout", value_name = "DURATION", default_value = "3s", value_parser = crate::front_door::web_config::parse_go_duration)]
        timeout: std::time::Duration,
    },
}

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Invocation {
    /// Run the exporter.
    /// Boxed: it is far larger than the other variant.
    Serve(Box<Config>),
    /// `kernel-exporter check-config --web.config.file=PATH`.
    CheckConfig { web_config_file: PathBuf },
    /// `kernel-exporter healthcheck`: the address to probe.
    Healthcheck { address: SocketAddr, timeout: std::time::Duration },
}

/// The validated configuration the daemon runs with.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) listen_addresses: Vec<ListenAddress>,
    /// `--web.systemd-socket`: listen on systemd's sockets instead.
    pub(crate) systemd_socket: bool,
    pub(crate) telemetry_path: String,
    pub(crate) web_config_file: Option<PathBuf>,
    pub(crate) allow_insecure: bool,
    /// `--web.allow-from`; `None` when not given.
    pub(crate) allow_from: Option<Vec<crate::front_door::web_config::Cidr>>,
    /// `--web.allowlist-sources-tracked`.
    pub(crate) sources_tracked: u32,
    /// `--runtime.user`.
    pub(crate) runtime_user: Option<String>,
    /// `None` means no limit.
    pub(crate) max_requests: Option<usize>,
    /// `--web.max-connections`.
    pub(crate) max_connections: usize,
    /// `--web.max-auth-checks-per-source`; `None` means no limit.
    pub(crate) max_auth_checks_per_source: Option<u32>,
    /// `--web.ban-after-failures` and `--web.ban-duration`; `None`: no bans.
    pub(crate) ban: Option<(u32, std::time::Duration)>,
    pub(crate) log_level: LogLevel,
    pub(crate) log_format: LogFormat,
    /// Enabled collectors, in registry order.
    pub(crate) collectors: Vec<&'static CollectorSpec>,
    pub(crate) collector_options: CollectorOptions,
}

impl Invocation {
    /// Parses the process's arguments; prints usage and exits on bad input,
    /// as every command-line tool does.
    pub(crate) fn from_env() -> Self {
        let mut command = command();
        let matches = command.clone().get_matches();
        match Self::from_matches(&matches) {
            Ok(invocation) => invocation,
            Err(message) => command.error(clap::error::ErrorKind::ValueValidation, message).exit(),
        }
    }

    fn from_matches(matches: &ArgMatches) -> Result<Self, String> {
        let raw = RawArgs::from_arg_matches(matches).map_err(|e| e.to_string())?;
        match raw.command {
            Some(SubCommand::CheckConfig { web_config_file }) => Ok(Self::CheckConfig { web_config_file }),
            Some(SubCommand::Healthcheck { listen_address, timeout }) => {
                let listen = parse_listen_address(&listen_address)?;
                Ok(Self::Healthcheck { address: crate::front_door::healthcheck::probe_address(listen.addr), timeout })
            }
            None => Config::from_raw(raw, matches).map(|config| Self::Serve(Box::new(config))),
        }
    }
}

impl Config {
    fn from_raw(raw: RawArgs, matches: &ArgMatches) -> Result<Self, String> {
        let mut listen_addresses: Vec<ListenAddress> = Vec::with_capacity(raw.listen_addresses.len());
        for text in &raw.listen_addresses {
            let address = parse_listen_address(text)?;
            if listen_addresses.iter().any(|known| known.addr == address.addr) {
                return Err(format!("--web.listen-address={text} is given twice"));
            }
            listen_addresses.push(address);
        }

        let telemetry_path = raw.telemetry_path;
        if !telemetry_path.starts_with('/') || telemetry_path == "/" {
            return Err(format!(
                "--web.telemetry-path={telemetry_path:?} must start with '/' and must not be '/' (the landing page)"
            ));
        }

        let collectors = collectors::REGISTRY
            .iter()
            .filter(|spec| collector_enabled(matches, spec, raw.disable_defaults))
            .collect::<Vec<_>>();
        if collectors.is_empty() {
            return Err("every collector is disabled; enable at least one with --collector.NAME".to_owned());
        }

        let mut collector_options =
            CollectorOptions { bpf_run_stats: raw.bpf_run_stats, ..CollectorOptions::default() };
        for spec in collectors::REGISTRY {
            for option in spec.options {
                let flag = option_flag(spec, option);
                let value = matches.get_one::<String>(&flag).map(String::as_str);
                match option.kind {
                    OptionKind::Regex => {
                        if let Some(regex) = device_regex(&flag, value)? {
                            collector_options.regexes.push((spec.name, option.name, regex));
                        }
                    }
                    OptionKind::Count => {
                        if let Some(count) = positive_count(&flag, value)? {
                            collector_options.counts.push((spec.name, option.name, count));
                        }
                    }
                }
            }
        }

        let allow_from = if raw.allow_from.is_empty() {
            None
        } else {
            let ranges =
                crate::front_door::web_config::parse_allowed_sources(&raw.allow_from).map_err(|(key, problem)| {
                    format!("--web.allow-from: {}: {problem}", key.replace("allowed_sources", "value"))
                })?;
            Some(ranges)
        };

        Ok(Self {
            collector_options,
            allow_from,
            sources_tracked: raw.sources_tracked,
            listen_addresses,
            systemd_socket: raw.systemd_socket,
            telemetry_path,
            web_config_file: raw.web_config_file,
            allow_insecure: raw.allow_insecure,
            runtime_user: raw.runtime_user,
            max_requests: (raw.max_requests != 0).then_some(raw.max_requests),
            max_connections: raw.max_connections as usize,
            max_auth_checks_per_source: (raw.max_auth_checks_per_source != 0).then_some(raw.max_auth_checks_per_source),
            ban: (raw.ban_after_failures != 0 && !raw.ban_duration.is_zero())
                .then_some((raw.ban_after_failures, raw.ban_duration)),
            log_level: raw.log_level,
            log_format: raw.log_format,
            collectors,
        })
    }
}

/// The clap command: the fixed flags plus `--collector.NAME`,
/// `--no-collector.NAME` and the collector's own options for every
/// registered collector.
fn command() -> Command {
    use clap::CommandFactory as _;
    let mut command = RawArgs::command();
    for spec in collectors::REGISTRY {
        let enable = format!("collector.{}", spec.name);
        let disable = format!("no-collector.{}", spec.name);
        let default = if spec.default_enabled { "enabled" } else { "disabled" };
        command = command
            .arg(
                Arg::new(enable.clone())
                    .long(enable.clone())
                    .help_heading("Collectors")
                    .action(ArgAction::SetTrue)
                    // node_exporter semantics: the last of the pair wins.
                    .overrides_with(disable.clone())
                    .help(format!("Enable the {} collector ({default} by default): {}", spec.name, spec.help)),
            )
            .arg(
                Arg::new(disable.clone())
                    .long(disable.clone())
                    .help_heading("Collectors")
                    .action(ArgAction::SetTrue)
                    .overrides_with(enable)
                    .help(format!("Disable the {} collector", spec.name)),
            );
        for option in spec.options {
            let flag = option_flag(spec, option);
            let value_name = match option.kind {
                OptionKind::Regex => "REGEX",
                OptionKind::Count => "N",
            };
            command = command.arg(
                Arg::new(flag.clone()).long(flag).value_name(value_name).help_heading("Collectors").help(option.help),
            );
        }
    }
    command
}

/// `collector.NAME.OPTION`, the flag (without dashes) and its clap id.
fn option_flag(spec: &CollectorSpec, option: &CollectorOption) -> String {
    format!("collector.{}.{}", spec.name, option.name)
}

fn collector_enabled(matches: &ArgMatches, spec: &CollectorSpec, disable_defaults: bool) -> bool {
    if matches.get_flag(&format!("collector.{}", spec.name)) {
        true
    } else if matches.get_flag(&format!("no-collector.{}", spec.name)) {
        false
    } else {
        spec.default_enabled && !disable_defaults
    }
}

/// A whole number of at least 1.
fn positive_count(flag: &str, value: Option<&str>) -> Result<Option<usize>, String> {
    value
        .map(|text| match text.parse::<usize>() {
            Ok(count) if count >= 1 => Ok(count),
            _ => Err(format!("--{flag}={text:?} must be a whole number of at least 1")),
        })
        .transpose()
}

/// A device-name regex; anchored as node_exporter's are not, so `^…$` is
/// the user's to write.
fn device_regex(flag: &str, pattern: Option<&str>) -> Result<Option<regex::Regex>, String> {
    pattern
        .map(|pattern| {
            regex::Regex::new(pattern).map_err(|e| format!("--{flag}={pattern:?} is not a valid regex: {e}"))
        })
        .transpose()
}

fn parse_listen_address(text: &str) -> Result<ListenAddress, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port =
            port.parse::<u16>().map_err(|_| format!("--web.listen-address={text}: {port:?} is not a port number"))?;
        return Ok(ListenAddress { addr: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port), dual_stack: true });
    }
    text.parse::<SocketAddr>().map(|addr| ListenAddress { addr, dual_stack: false }).map_err(|_| {
        format!("--web.listen-address={text}: expected IP:PORT, [IPv6]:PORT or :PORT (host names are not resolved)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invocation(args: &[&str]) -> Result<Invocation, String> {
        let matches = command()
            .try_get_matches_from(std::iter::once("kernel-exporter").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Invocation::from_matches(&matches)
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        match invocation(args)? {
            Invocation::Serve(config) => Ok(*config),
            other => panic!("not a serve invocation: {other:?}"),
        }
    }

    #[test]
    fn web_config_flags_and_check_config() {
        let config = parse(&["--web.config.file=/etc/web.yml", "--web.allow-insecure"]).unwrap();
        assert_eq!(config.web_config_file, Some(PathBuf::from("/etc/web.yml")));
        assert!(config.allow_insecure);
        let config = parse(&[]).unwrap();
        assert_eq!(config.web_config_file, None);
        assert!(!config.allow_insecure);
        match invocation(&["check-config", "--web.config.file=/etc/web.yml"]).unwrap() {
            Invocation::CheckConfig { web_config_file } => assert_eq!(web_config_file, PathBuf::from("/etc/web.yml")),
            other => panic!("{other:?}"),
        }
        assert!(invocation(&["check-config"]).is_err(), "the file is required");
    }

    #[test]
    fn systemd_socket_replaces_listen_addresses() {
        assert!(parse(&["--web.systemd-socket"]).unwrap().systemd_socket);
        assert!(!parse(&[]).unwrap().systemd_socket);
        let error = invocation(&["--web.systemd-socket", "--web.listen-address=:9569"]).unwrap_err();
        assert!(error.contains("cannot be used with"), "{error}");
    }

    #[test]
    fn healthcheck_probes_loopback() {
        match invocation(&["healthcheck", "--web.listen-address=:9569"]).unwrap() {
            Invocation::Healthcheck { address, timeout } => {
                assert_eq!(address, "127.0.0.1:9569".parse().unwrap());
                assert_eq!(timeout, std::time::Duration::from_secs(3));
            }
            other => panic!("{other:?}"),
        }
        match invocation(&["healthcheck", "--timeout=500ms"]).unwrap() {
            Invocation::Healthcheck { address, timeout } => {
                assert_eq!(address.to_string(), DEFAULT_LISTEN_ADDRESS);
                assert_eq!(timeout, std::time::Duration::from_millis(500));
            }
            other => panic!("{other:?}"),
        }
        assert!(invocation(&["healthcheck", "--web.listen-address=host:1"]).is_err());
    }

    fn names(config: &Config) -> Vec<&'static str> {
        config.collectors.iter().map(|spec| spec.name).collect()
    }

    #[test]
    fn defaults_are_safe() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.listen_addresses.len(), 1);
        assert_eq!(config.listen_addresses[0].to_string(), DEFAULT_LISTEN_ADDRESS);
        assert!(config.listen_addresses[0].addr.ip().is_loopback());
        assert_eq!(config.telemetry_path, "/metrics");
        assert_eq!(config.max_requests, Some(40));
        assert_eq!(config.max_connections, 512);
        assert_eq!(config.max_auth_checks_per_source, Some(10));
        assert_eq!(config.ban, Some((20, std::time::Duration::from_secs(600))));
        assert_eq!(parse(&["--web.ban-after-failures=0"]).unwrap().ban, None);
        assert_eq!(parse(&["--web.ban-duration=0"]).unwrap().ban, None);
        assert_eq!(parse(&["--web.ban-duration=1m30s"]).unwrap().ban, Some((20, std::time::Duration::from_secs(90))));
        let defaults: Vec<&str> =
            collectors::REGISTRY.iter().filter(|spec| spec.default_enabled).map(|spec| spec.name).collect();
        assert!(defaults.contains(&"sched"));
        assert_eq!(names(&config), defaults);
    }

    #[test]
    fn listen_address_forms() {
        let config = parse(&["--web.listen-address=:9100", "--web.listen-address=[::1]:9200"]).unwrap();
        assert!(config.listen_addresses[0].dual_stack);
        assert_eq!(config.listen_addresses[0].addr.port(), 9100);
        assert_eq!(config.listen_addresses[0].to_string(), ":9100");
        assert_eq!(config.listen_addresses[1].addr, "[::1]:9200".parse().unwrap());

        let error = parse(&["--web.listen-address=localhost:9100"]).unwrap_err();
        assert!(error.contains("host names are not resolved"), "{error}");
        let error = parse(&["--web.listen-address=:http"]).unwrap_err();
        assert!(error.contains("not a port number"), "{error}");
        let error = parse(&["--web.listen-address=127.0.0.1:1", "--web.listen-address=127.0.0.1:1"]).unwrap_err();
        assert!(error.contains("given twice"), "{error}");
    }

    #[test]
    fn telemetry_path_must_be_a_path() {
        assert!(parse(&["--web.telemetry-path=metrics"]).is_err());
        assert!(parse(&["--web.telemetry-path=/"]).is_err());
        assert_eq!(parse(&["--web.telemetry-path=/m"]).unwrap().telemetry_path, "/m");
    }

    #[test]
    fn collector_flags_last_one_wins() {
        assert!(!names(&parse(&["--no-collector.sched"]).unwrap()).contains(&"sched"));
        let only = |args: &[&str]| names(&parse(&[&["--collector.disable-defaults"], args].concat()).unwrap());
        assert_eq!(only(&["--no-collector.sched", "--collector.sched"]), vec!["sched"]);
        assert!(
            parse(&["--collector.disable-defaults", "--collector.sched", "--no-collector.sched"])
                .unwrap_err()
                .contains("every collector is disabled")
        );
        assert!(parse(&["--collector.disable-defaults"]).is_err());
        assert_eq!(names(&parse(&["--collector.disable-defaults", "--collector.sched"]).unwrap()), vec!["sched"]);
    }

    #[test]
    fn device_exclude_flags_are_regexes() {
        let config = parse(&["--collector.net.device-exclude=^veth"]).unwrap();
        let exclude = config.collector_options.regex("net", "device-exclude").unwrap();
        assert!(exclude.is_match("veth0a1b"));
        assert!(!exclude.is_match("eth0"));
        assert!(config.collector_options.regex("block", "device-exclude").is_none());
        let error = parse(&["--collector.block.device-exclude=(loop"]).unwrap_err();
        assert!(error.contains("--collector.block.device-exclude=\"(loop\" is not a valid regex"), "{error}");
    }

    #[test]
    fn count_options_are_positive_numbers() {
        let config = parse(&["--collector.cgroup.max-series=12"]).unwrap();
        assert_eq!(config.collector_options.count("cgroup", "max-series"), Some(12));
        assert_eq!(parse(&[]).unwrap().collector_options.count("cgroup", "max-series"), None);
        for bad in ["0", "-1", "many"] {
            let error = parse(&[&format!("--collector.cgroup.max-series={bad}")]).unwrap_err();
            assert!(error.contains("must be a whole number of at least 1"), "{error}");
        }
    }

    #[test]
    fn allow_from_ranges() {
        let config = parse(&["--web.allow-from=127.0.0.1", "--web.allow-from=::1/128"]).unwrap();
        let ranges: Vec<String> = config.allow_from.unwrap().iter().map(ToString::to_string).collect();
        assert_eq!(ranges, ["127.0.0.1/32", "::1/128"]);
        assert!(parse(&[]).unwrap().allow_from.is_none());
        let error = parse(&["--web.allow-from=10.0.0.1/8"]).unwrap_err();
        assert!(error.contains("--web.allow-from: value[0]: \"10.0.0.1/8\" has host bits set"), "{error}");
        assert_eq!(parse(&[]).unwrap().sources_tracked, 4096);
        assert_eq!(parse(&["--web.allowlist-sources-tracked=4"]).unwrap().sources_tracked, 4);
        assert!(parse(&["--web.allowlist-sources-tracked=0"]).is_err());
    }

    #[test]
    fn zero_max_requests_means_unlimited() {
        assert_eq!(parse(&["--web.max-requests=0"]).unwrap().max_requests, None);
    }

    #[test]
    fn max_connections_is_bounded() {
        assert_eq!(parse(&["--web.max-connections=8"]).unwrap().max_connections, 8);
        assert!(parse(&["--web.max-connections=0"]).is_err(), "no connection at all is not a bound");
    }

    #[test]
    fn unknown_flags_and_values_are_rejected() {
        assert!(parse(&["--collector.nonexistent"]).is_err());
        assert!(parse(&["--log.level=loud"]).is_err());
        assert!(parse(&["--log.format=xml"]).is_err());
    }
}
