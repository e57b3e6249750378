//! The front door's own metrics: TLS handshake and auth failures, web
//! config reloads, and the connection table. Registered in the exporter's
//! registry (`scrape::self_metrics`) after its scrape and process metrics,
//! and encoded with them.
//!
//! Here rather than there so the reasons' label values stay the front
//! door's enums, and nothing below the front door depends on it.

use crate::exposition::self_families::{
    AUTH_FAILURES, CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP, CONFIG_LAST_RELOAD_SUCCESSFUL, CONNECTIONS_CLOSED,
    CONNECTIONS_OPEN, PASSWORD_CHECKS, TLS_HANDSHAKE_FAILURES,
};
use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use super::{auth::AuthFailure, connections::CloseReason, tls::HandshakeFailure};

/// One `reason` label; the values are the fixed sets of
/// [`HandshakeFailure`], [`AuthFailure`] and [`CloseReason`].
type Reason = [(&'static str, &'static str); 1];

/// A counter family by `reason`, registered with a series for every
/// reason from the start: a `rate()` over a series that appears only with
/// the first event misses that event.
fn register_by_reason<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    reasons: [&'static str; N],
) -> Family<Reason, Counter> {
    let family = Family::<Reason, Counter>::default();
    for reason in reasons {
        drop(family.get_or_create(&[("reason", reason)]));
    }
    registry.register(name, help, family.clone());
    family
}

/// The front door's counters and reload gauges, shared with the accept
/// loops, the request handler and the reloader.
#[derive(Clone)]
pub(crate) struct FrontDoorMetrics {
    tls_handshake_failures: Family<Reason, Counter>,
    auth_failures: Family<Reason, Counter>,
    reload_successful: Gauge,
    reload_success_timestamp: Gauge<f64, AtomicU64>,
    password_checks: Counter,
}

impl FrontDoorMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let tls_handshake_failures = register_by_reason(
            registry,
            TLS_HANDSHAKE_FAILURES.name,
            TLS_HANDSHAKE_FAILURES.help,
            HandshakeFailure::ALL.map(HandshakeFailure::as_str),
        );
        let auth_failures = register_by_reason(
            registry,
            AUTH_FAILURES.name,
            AUTH_FAILURES.help,
            AuthFailure::ALL.map(AuthFailure::as_str),
        );
        let reload_successful = Gauge::default();
        registry.register(
            CONFIG_LAST_RELOAD_SUCCESSFUL.name,
            CONFIG_LAST_RELOAD_SUCCESSFUL.help,
            reload_successful.clone(),
        );
        let reload_success_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP.name,
            CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP.help,
            Unit::Seconds,
            reload_success_timestamp.clone(),
        );
        let password_checks = Counter::default();
        registry.register(PASSWORD_CHECKS.name, PASSWORD_CHECKS.help, password_checks.clone());
        Self { tls_handshake_failures, auth_failures, reload_successful, reload_success_timestamp, password_checks }
    }

    /// The counter the bcrypt threads count their comparisons in.
    pub(crate) fn password_checks(&self) -> Counter {
        self.password_checks.clone()
    }

    pub(crate) fn tls_handshake_failed(&self, reason: HandshakeFailure) {
        self.tls_handshake_failures.get_or_create(&[("reason", reason.as_str())]).inc();
    }

    pub(crate) fn auth_failed(&self, reason: AuthFailure) {
        self.auth_failures.get_or_create(&[("reason", reason.as_str())]).inc();
    }

    pub(crate) fn reload_succeeded(&self, unix_time: f64) {
        self.reload_successful.set(1);
        self.reload_success_timestamp.set(unix_time);
    }

    pub(crate) fn reload_failed(&self) {
        self.reload_successful.set(0);
    }
}

/// The connection table's gauge and counters (see [`super::connections`]).
#[derive(Clone)]
pub(crate) struct ConnectionMetrics {
    open: Gauge,
    closed: Family<Reason, Counter>,
}

impl ConnectionMetrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let open = Gauge::default();
        registry.register(CONNECTIONS_OPEN.name, CONNECTIONS_OPEN.help, open.clone());
        let closed = register_by_reason(
            registry,
            CONNECTIONS_CLOSED.name,
            CONNECTIONS_CLOSED.help,
            CloseReason::ALL.map(CloseReason::as_str),
        );
        Self { open, closed }
    }

    pub(crate) fn set_open(&self, connections: usize) {
        self.open.set(i64::try_from(connections).unwrap_or(i64::MAX));
    }

    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed.get_or_create(&[("reason", reason.as_str())]).inc();
    }

    #[cfg(test)]
    pub(crate) fn open(&self) -> i64 {
        self.open.get()
    }

    #[cfg(test)]
    pub(crate) fn closed_count(&self, reason: CloseReason) -> u64 {
        self.closed.get_or_create(&[("reason", reason.as_str())]).get()
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::{exposition::encode::Format, scrape::self_metrics::SelfMetrics};

    #[test]
    fn every_reason_is_exposed_from_the_start_and_counted() {
        let mut metrics = SelfMetrics::new();
        let front_door = FrontDoorMetrics::register(metrics.registry());
        ConnectionMetrics::register(metrics.registry());
        let mut text = BytesMut::new();
        metrics.encode(Format::Text, &mut text);
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.contains("kernel_exporter_tls_handshake_failures_total{reason=\"plain_http\"} 0\n"), "{text}");
        assert!(text.contains("kernel_exporter_auth_failures_total{reason=\"wrong_password\"} 0\n"), "{text}");
        assert!(text.contains("kernel_exporter_connections_closed_total{reason=\"max_connections\"} 0\n"), "{text}");
        assert!(text.contains("\nkernel_exporter_connections_open 0\n"), "{text}");

        front_door.auth_failed(AuthFailure::WrongPassword);
        front_door.tls_handshake_failed(HandshakeFailure::NoClientCertificate);
        front_door.reload_succeeded(1.5e9);
        front_door.reload_failed();
        let mut text = BytesMut::new();
        metrics.encode(Format::Text, &mut text);
        let text = std::str::from_utf8(&text).unwrap();
        assert!(text.contains("kernel_exporter_auth_failures_total{reason=\"wrong_password\"} 1\n"), "{text}");
        assert!(
            text.contains("kernel_exporter_tls_handshake_failures_total{reason=\"no_client_certificate\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("\nkernel_exporter_config_last_reload_successful 0\n"), "{text}");
        assert!(text.contains("\nkernel_exporter_config_last_reload_success_timestamp_seconds 1500000000"), "{text}");
    }
}
