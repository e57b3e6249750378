//! `kernel-exporter`: a Prometheus exporter whose numbers come from eBPF
//! programs on stable kernel tracepoints.
//!
//! `main` stays thin: command line → validated [`cli::Config`] → [`run`].
//! It is the only place where an error becomes an exit code, and it prints
//! every fatal error as one line that names the thing and the fix.

mod batch;
mod bpf;
mod btf;
mod cli;
mod clock;
mod collectors;
mod encode;
mod histogram;
mod logging;
mod privileges;
mod scrape;
mod self_metrics;
mod server;
mod tracefs;

use std::process::ExitCode;

use anyhow::Context as _;
use tracing::info;

fn main() -> ExitCode {
    let config = cli::Config::from_env();
    logging::init(config.log_level, config.log_format);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads and attaches the kernel programs, opens the listeners, and serves
/// until SIGINT or SIGTERM. Everything is detached when this returns.
fn run(config: cli::Config) -> anyhow::Result<()> {
    privileges::ensure_can_load_bpf()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Scrapes are short and few; two workers keep one free while the
        // other serves a slow client, without a thread per core on big hosts.
        .worker_threads(2)
        .thread_name("kernel-exporter")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;

    runtime.block_on(async {
        // Before anything slow: a SIGTERM during start-up must still end in
        // an orderly exit, not the default action.
        let shutdown = server::shutdown_signal().context("cannot install signal handlers")?;

        let (kernel, collectors) = bpf::Kernel::load(&config.collectors, &config.collector_options)?;
        let listeners = server::bind_all(&config.listen_addresses)?;
        let scraper = scrape::Scraper::new(collectors);
        let app = server::App::new(scraper, &config);

        server::serve(listeners, app, shutdown).await;
        info!("shutting down: detaching BPF programs");
        drop(kernel);
        anyhow::Ok(())
    })?;
    // Connections that did not finish within the grace period are dropped
    // here rather than holding the exit hostage.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}
