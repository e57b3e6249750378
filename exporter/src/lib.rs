//! `kernel-exporter`: a Prometheus exporter whose numbers come from eBPF
//! programs on stable kernel tracepoints.
//!
//! The daemon is this library and a two-line `main.rs`: the library form
//! lets the fuzz targets (`fuzz/`) reach the parsers, through [`fuzzing`]
//! only; nothing else here is public.
//!
//! This file is the composition root: `run` builds each stage (`kernel`,
//! `collectors`, `scrape`, `front_door`, `process`) and wires them together;
//! the stages do not reach into each other beyond the one-way references
//! `exporter/tests/module_cycles.rs` checks.
//!
//! [`main`] stays thin: command line → validated `cli::Config` → `run`
//! (or `check-config` → `check_config`).
//! It is the only place where an error becomes an exit code, and it prints
//! every fatal error as one line that names the thing and the fix.

#![deny(missing_docs)]

mod cli;
mod collectors;
mod exposition;
mod front_door;
mod kernel;
mod process;
mod scrape;

#[doc(hidden)]
pub mod fuzzing;

use std::{path::Path, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use tracing::{info, warn};

use crate::{
    front_door::{
        allowlist, healthcheck, listener,
        metrics::{ConnectionMetrics, FrontDoorMetrics},
        reload, requests, server, systemd_socket,
    },
    process::{limits, logging, privileges, signals},
    scrape::{program_stats, self_metrics},
};

/// The daemon's `main` (`main.rs` calls it): parses the command line and
/// serves, or checks a web config; the exit code says how it ended.
pub fn main() -> ExitCode {
    let config = match cli::Invocation::from_env() {
        cli::Invocation::Serve(config) => *config,
        cli::Invocation::CheckConfig { web_config_file } => return check_config(&web_config_file),
        cli::Invocation::Healthcheck { address, timeout } => return healthcheck(address, timeout),
    };
    logging::init(config.log_level, config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Each cause once: many errors already name their cause in
            // their own message, which `{error:#}` would repeat.
            let mut line = error.to_string();
            for cause in error.chain().skip(1).map(ToString::to_string) {
                if !line.contains(&cause) {
                    line = format!("{line}: {cause}");
                }
            }
            tracing::error!("{line}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and attaches the kernel programs, opens the listeners, and serves
/// until SIGINT or SIGTERM. Everything is detached when this returns.
fn run(mut config: cli::Config) -> anyhow::Result<()> {
    // Taken first: they are where this daemon listens, for every check below.
    let inherited = config.systemd_socket.then(systemd_socket::Inherited::take).transpose()?;
    if let Some(inherited) = &inherited {
        config.listen_addresses = inherited.addresses();
    }
    // First: a bad web config or an exposed listener is the operator's
    // to fix before anything is loaded or listens.
    let front_door = open_front_door(&config)?;
    privileges::ensure_can_load_bpf()?;
    // Before anything opens files: the connection bound, not the soft
    // limit, should decide how many connections are held.
    raise_open_files_limit(config.max_connections);
    // Held pending until the runtime's handlers are in place: a SIGTERM
    // during start-up (the listeners accept connections before then) must
    // end in an orderly exit, not the default action.
    let start_up_signals = signals::hold(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    // Looked up now so a typo fails before anything is loaded.
    let runtime_user = config.runtime_user.as_deref().map(privileges::RuntimeUser::lookup).transpose()?;

    // Everything privileged happens here, in this one thread: load and
    // attach, open the listeners, then give every privilege up before the
    // runtime starts its threads (capabilities are per thread).
    let attached = attach_and_listen(&config, &front_door, inherited)?;
    give_up_privileges(runtime_user.as_ref())?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Scrapes are short and few; two workers keep one free while the
        // other serves a slow client, without a thread per core on big hosts.
        .worker_threads(2)
        .thread_name("kernel-exporter")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(serve(&config, front_door, attached, &start_up_signals))?;
    // Connections that did not finish within the grace period are dropped
    // here rather than holding the exit hostage.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}

/// The web config, validated, with a warning for each thing an operator
/// should fix (an exposed listener without an allowlist above all).
fn open_front_door(config: &cli::Config) -> anyhow::Result<Arc<reload::FrontDoor>> {
    let exposure =
        reload::Exposure { listen_addresses: config.listen_addresses.clone(), allow_insecure: config.allow_insecure };
    let front_door =
        Arc::new(reload::FrontDoor::new(config.web_config_file.as_deref(), config.allow_from.clone(), exposure)?);
    let policy = front_door.current();
    for warning in policy.warnings() {
        warn!("{warning}");
    }
    if policy.allowed_sources().is_none()
        && let Some(exposed) =
            config.listen_addresses.iter().find(|address| address.dual_stack || !address.addr.ip().is_loopback())
    {
        warn!(
            address = %exposed,
            "every source may connect: set allowed_sources in --web.config.file (or --web.allow-from) to the \
             Prometheus servers' addresses, and the kernel drops everyone else's packets"
        );
    }
    if config.web_config_file.is_some() {
        info!("web config: {policy}");
    }
    Ok(front_door)
}

/// Raises the soft open-files limit to the hard one; warns when even that
/// cannot hold `--web.max-connections`.
fn raise_open_files_limit(max_connections: usize) {
    match limits::raise_open_files_limit() {
        Ok((before, after)) => {
            if before != after {
                info!(before, after, "raised the open files limit");
            }
            // The BPF maps and programs, the listeners and the process's
            // own files take about a hundred descriptors.
            if after < max_connections as u64 + 128 {
                warn!(
                    limit = after,
                    "the open files limit is too low for --web.max-connections={max_connections}; connections beyond it will fail",
                );
            }
        }
        Err(error) => warn!("cannot raise the open files limit: {error}"),
    }
}

/// What the privileged start-up made: the attached programs and the
/// listeners with the allowlist's filter on them.
struct Attached {
    kernel: kernel::bpf::Kernel,
    collectors: Vec<collectors::LoadedCollector>,
    allowlist_counters: allowlist::Counters,
    bans: Option<Arc<allowlist::Bans>>,
    listeners: Vec<listener::Listener>,
}

/// Loads and attaches every enabled collector and the allowlist, puts the
/// web config's allowlist into the kernel, and opens the listeners (or takes
/// systemd's) with the filter attached before they accept anything.
fn attach_and_listen(
    config: &cli::Config,
    front_door: &reload::FrontDoor,
    inherited: Option<systemd_socket::Inherited>,
) -> anyhow::Result<Attached> {
    let (mut kernel, collectors) =
        collectors::load(&config.collectors, &config.collector_options, config.sources_tracked)?;
    let (filter, trie, allowlist_counters, ban_map) = allowlist::open(kernel.object(), config.sources_tracked)?;
    let bans = allowlist::Bans::new(ban_map, config.ban).map(Arc::new);
    front_door.enforce(trie)?;
    let listeners = match inherited {
        Some(inherited) => inherited.attach(filter.program())?,
        None => listener::bind_all(&config.listen_addresses, filter.program())?,
    };
    // Each listener holds the program now; `filter` is dropped here.
    Ok(Attached { kernel, collectors, allowlist_counters, bans, listeners })
}

/// Drops every capability (all but CAP_BPF where the kernel needs it to read
/// maps) and switches to the runtime user, and says which in one line.
fn give_up_privileges(runtime_user: Option<&privileges::RuntimeUser>) -> anyhow::Result<()> {
    let keep_bpf = privileges::maps_need_cap_bpf(kernel::test_hooks::assume_maps_need_cap_bpf());
    privileges::drop_privileges(runtime_user, keep_bpf.is_some())?;
    match (runtime_user, &keep_bpf) {
        (Some(user), None) => info!(user = user.name, uid = user.uid, "dropped every capability and switched user"),
        (None, None) => info!("dropped every capability"),
        (user, Some(reason)) => warn!(
            user = user.map(|user| user.name.as_str()),
            "dropped every capability but CAP_BPF{}: {reason}",
            if user.is_some() { " and switched user" } else { "" }
        ),
    }
    Ok(())
}

/// The unprivileged life of the daemon, on the runtime: wires the scrape,
/// the front door and their metrics together and serves until a signal.
async fn serve(
    config: &cli::Config,
    front_door: Arc<reload::FrontDoor>,
    attached: Attached,
    start_up_signals: &libc::sigset_t,
) -> anyhow::Result<()> {
    let Attached { kernel, collectors, allowlist_counters, bans, listeners } = attached;
    let shutdown = server::shutdown_signal().context("cannot install signal handlers")?;
    let hangup = reload::hangup_signal().context("cannot install the SIGHUP handler")?;
    // This thread takes the held signals from here on (the runtime's
    // threads keep them blocked, as they inherited).
    signals::release(start_up_signals);

    let mut self_metrics = self_metrics::SelfMetrics::new();
    // Registered after the exporter's scrape and process metrics, in
    // this order: the registry encodes in the order of registration.
    let front_door_metrics = FrontDoorMetrics::register(self_metrics.registry());
    let connection_metrics = ConnectionMetrics::register(self_metrics.registry());
    let in_flight = self_metrics.requests_in_flight();
    let reloader = tokio::spawn(reload::watch(Arc::clone(&front_door), front_door_metrics.clone(), hangup));
    let kernel_log = kernel.take_logger().map(|logger| tokio::spawn(kernel::program_log::forward(logger)));
    let kernel = Arc::new(kernel);
    let requests = requests::Requests::new(config.sources_tracked, allowlist_counters.handshakes());
    let scraper = scrape::Scraper::new(collectors, self_metrics)
        .with_internal(Box::new(program_stats::ProgramStats::new(Arc::clone(&kernel))))
        .with_internal(Box::new(allowlist_counters))
        .with_internal(Box::new(requests.clone()));
    let settings = server::Settings {
        telemetry_path: config.telemetry_path.clone(),
        max_requests: config.max_requests,
        max_connections: config.max_connections,
        max_auth_checks_per_source: config.max_auth_checks_per_source,
    };
    let app =
        server::App::new(scraper, &settings, front_door, front_door_metrics, in_flight, requests, connection_metrics)
            .with_bans(bans);

    server::serve(listeners, app, shutdown).await;
    reloader.abort();
    if let Some(kernel_log) = kernel_log {
        kernel_log.abort();
    }
    info!("shutting down: detaching BPF programs");
    drop(kernel);
    Ok(())
}

/// `kernel-exporter healthcheck`: one line either way, exit 0 if the daemon
/// answered.
fn healthcheck(address: std::net::SocketAddr, timeout: std::time::Duration) -> ExitCode {
    match healthcheck::check(address, timeout) {
        Ok(status) => {
            println!("{address}: healthy: {status}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("unhealthy: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `kernel-exporter check-config`: everything start-up would check about
/// the web config, without loading or listening; one line either way.
fn check_config(path: &Path) -> ExitCode {
    match reload::Policy::load(path) {
        Ok(policy) => {
            for warning in policy.warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{}: OK: {policy}", path.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
