//! Messages from the kernel programs (aya-log), forwarded into the daemon's
//! own log.
//!
//! Programs log only when something went wrong that their counters cannot
//! show, such as a map too full to take a new key
//! (`kernel_exporter_bpf_map_update_failures_total` counts the same
//! events). Such a failure can repeat on every event, millions of times a
//! second, so lines are rate-limited here: at most [`RATE`] a second with
//! bursts of [`BURST`], and the next line admitted says how many were
//! suppressed.

use std::time::Instant;

use tracing::{debug, error, info, warn};

use crate::process::logging::LineBudget;

/// Lines per second admitted once a burst is spent.
const RATE: f64 = 1.0;
/// Lines admitted at once.
const BURST: f64 = 10.0;

/// A [`log::Log`] for aya-log that writes through `tracing`, rate-limited.
pub(crate) struct KernelLog {
    budget: LineBudget,
}

impl KernelLog {
    pub(crate) fn new() -> Self {
        Self { budget: LineBudget::new(RATE, BURST) }
    }

    /// `Some(lines suppressed before this one)` when a line may be logged.
    fn admit(&self, now: Instant) -> Option<u64> {
        self.budget.admit(now)
    }
}

impl log::Log for KernelLog {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let Some(suppressed) = self.admit(Instant::now()) else { return };
        let message = record.args();
        match record.level() {
            log::Level::Error => error!(target: "bpf", suppressed, "{message}"),
            log::Level::Warn => warn!(target: "bpf", suppressed, "{message}"),
            log::Level::Info => info!(target: "bpf", suppressed, "{message}"),
            log::Level::Debug | log::Level::Trace => debug!(target: "bpf", suppressed, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Reads the programs' log ring buffer whenever it has records, for the
/// daemon's lifetime.
pub(crate) async fn forward(logger: aya_log::EbpfLogger<KernelLog>) {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the logger owns its ring buffer map's descriptor and keeps it
    // open, unchanged, for as long as it lives, which is as long as the
    // `AsyncFd` that owns it.
    let registered = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) };
    let mut logger = match registered {
        Ok(logger) => logger,
        Err(error) => {
            warn!("cannot watch the BPF programs' log buffer: {error}; their messages are not forwarded");
            return;
        }
    };
    loop {
        let mut ready = match logger.readable_mut().await {
            Ok(ready) => ready,
            Err(error) => {
                warn!("cannot watch the BPF programs' log buffer: {error}; their messages are not forwarded");
                return;
            }
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_flood_is_bounded_and_counted() {
        let log = KernelLog::new();
        let start = Instant::now();
        let admitted = (0..1000).filter(|_| log.admit(start).is_some()).count();
        assert_eq!(admitted, BURST as usize);
        assert_eq!(log.admit(start + Duration::from_secs(1)), Some(990));
    }
}
