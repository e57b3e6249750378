//! Every family of the exporter's own metrics (`kernel_exporter_*`),
//! defined here and nowhere else, so a reader finds them all in one place
//! and a name cannot be defined twice.
//!
//! Two ways write them, on purpose. The front door's and the scrape's
//! counters, gauges and histograms go through prometheus-client (the
//! [`Registered`] names below), the project's library for self metrics.
//! The families with a series per source, program or map go through the
//! daemon's own encoder with their label bytes built once, because they can
//! be thousands of series (up to 4,096 sources x their response codes) and
//! prometheus-client encodes labelled counters 5x slower: 500 labelled
//! counters in 28.9 µs against 5.6 µs (`cargo bench -p kernel-exporter
//! --bench encode -- labelled_counters_500`, this 2-core VM), so about
//! 0.4 ms more per scrape at the bound, more than a whole scrape costs today.

use super::encode::Family;

/// A family registered with prometheus-client: its name (prometheus-client
/// adds `_total` to counters) and help.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Registered {
    pub(crate) name: &'static str,
    pub(crate) help: &'static str,
}

// Written with the daemon's encoder.

/// The allowlist socket filter's verdicts per source (`front_door::allowlist`).
pub(crate) const CONNECTIONS: Family = Family::counter(
    "kernel_exporter_connections_total",
    "Connection attempts (TCP SYNs) the allowlist socket filter allowed or dropped in the kernel (banned: dropped because the source is banned, also counted as dropped), per source address for the sources the daemon accepted a connection from and for the 10 sources with the most dropped SYNs; all others under source=\"other\" (the sum over sources is exact).",
);

/// The socket filter's exact totals (`front_door::allowlist`).
pub(crate) const PACKETS: Family = Family::counter(
    "kernel_exporter_packets_total",
    "Packets to the exporter's sockets the allowlist socket filter allowed or dropped (all sources; exact).",
);

/// The allowlist trie's size (`front_door::allowlist`).
pub(crate) const ENTRIES: Family = Family::gauge(
    "kernel_exporter_allowlist_entries",
    "Ranges in the kernel's allowlist trie in force, as read back from the kernel (1, the range ::/0, when no allowlist is configured).",
);

/// HTTP responses per source (`front_door::requests`).
pub(crate) const REQUESTS: Family = Family::counter(
    "kernel_exporter_requests_total",
    "HTTP responses per source address and status code (the most recently seen sources, up to --web.allowlist-sources-tracked).",
);

/// Per collector, per scrape (`scrape`).
pub(crate) const COLLECTOR_UP: Family = Family::gauge(
    "kernel_exporter_collector_up",
    "Whether the collector's programs are attached and its maps were read in this scrape (1) or not (0).",
);

pub(crate) const COLLECTOR_DURATION: Family = Family::gauge(
    "kernel_exporter_collector_scrape_duration_seconds",
    "How long reading the collector's maps took in this scrape.",
);

pub(crate) const BUILD_INFO: Family = Family::gauge(
    "kernel_exporter_build_info",
    "A metric with a constant '1' value labeled by version, revision and rustc_version from which kernel-exporter was built.",
);

/// The kernel's run statistics and map fill levels (`scrape::program_stats`).
pub(crate) const RUN_SECONDS: Family = Family::counter(
    "kernel_exporter_bpf_program_run_seconds_total",
    "Time the kernel spent running each of the exporter's BPF programs (only with --bpf.run-stats).",
);

pub(crate) const RUNS: Family = Family::counter(
    "kernel_exporter_bpf_program_runs_total",
    "Runs of each of the exporter's BPF programs (only with --bpf.run-stats).",
);

pub(crate) const MAP_ENTRIES: Family =
    Family::gauge("kernel_exporter_bpf_map_entries", "Entries in each of the exporter's BPF hash maps now.");

pub(crate) const MAP_MAX_ENTRIES: Family = Family::gauge(
    "kernel_exporter_bpf_map_max_entries",
    "The bound of each of the exporter's BPF hash maps (LRU maps evict beyond it, others stop counting new keys).",
);

pub(crate) const MAP_UPDATE_FAILURES: Family = Family::counter(
    "kernel_exporter_bpf_map_update_failures_total",
    "Events the exporter's BPF programs could not count because a map refused a new entry (full, or out of \
     memory), by map; each is also logged, rate-limited.",
);

// Registered with prometheus-client: the front door's (`front_door::metrics`).

pub(crate) const TLS_HANDSHAKE_FAILURES: Registered = Registered {
    name: "kernel_exporter_tls_handshake_failures",
    help: "TLS connections that did not get to HTTP, by reason",
};
pub(crate) const AUTH_FAILURES: Registered =
    Registered { name: "kernel_exporter_auth_failures", help: "Requests refused by basic auth, by reason" };
pub(crate) const CONFIG_LAST_RELOAD_SUCCESSFUL: Registered = Registered {
    name: "kernel_exporter_config_last_reload_successful",
    help: "Whether the last web config reload attempt succeeded (1) or kept the previous configuration (0)",
};
pub(crate) const CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP: Registered = Registered {
    name: "kernel_exporter_config_last_reload_success_timestamp",
    help: "Unix time of the last successful web config load",
};
pub(crate) const PASSWORD_CHECKS: Registered = Registered {
    name: "kernel_exporter_password_checks",
    help: "bcrypt comparisons run for basic auth (answers from the cache are not counted)",
};
pub(crate) const CONNECTIONS_OPEN: Registered = Registered {
    name: "kernel_exporter_connections_open",
    help: "HTTP connections held now, at most --web.max-connections",
};
pub(crate) const CONNECTIONS_CLOSED: Registered = Registered {
    name: "kernel_exporter_connections_closed",
    help: "HTTP connections the exporter closed on its own, by reason: max_connections (evicted or refused at \
             --web.max-connections), header_timeout (no complete request in time)",
};

// Registered with prometheus-client: the scrape's (`scrape::self_metrics`).

pub(crate) const SCRAPES: Registered =
    Registered { name: "kernel_exporter_scrapes", help: "Scrapes of the telemetry path served" };
pub(crate) const SCRAPE_DURATION: Registered = Registered {
    name: "kernel_exporter_scrape_duration",
    help: "Time to build a scrape's body, from reading the maps to the last byte",
};
pub(crate) const START_TIME: Registered = Registered {
    name: "kernel_exporter_start_time",
    help: "When this kernel-exporter process started, in seconds since the epoch",
};
pub(crate) const REQUESTS_IN_FLIGHT: Registered =
    Registered { name: "kernel_exporter_requests_in_flight", help: "HTTP requests being served right now" };
