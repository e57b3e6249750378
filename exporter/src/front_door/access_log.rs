//! One structured line per request or failed connection: who (source, TLS,
//! client certificate subject, user), what (method, path), and the outcome
//! (status, bytes, duration), in the daemon's log format. A flood cannot
//! flood the log: lines are admitted by a token bucket, and the next
//! admitted line says how many were suppressed since the last one.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tracing::info;

use crate::process::logging::LineBudget;

/// Lines per second the log takes in steady state.
const RATE: f64 = 20.0;
/// Lines a burst may log at once.
const BURST: f64 = 100.0;

/// What the connection a request came on established.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) source: SocketAddr,
    /// `none`, or the negotiated TLS version (`TLSv1.3`).
    pub(crate) tls: &'static str,
    /// The client certificate's subject common name, when one was sent.
    pub(crate) client: Option<String>,
}

/// One request's outcome.
pub(crate) struct Request<'a> {
    pub(crate) user: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    pub(crate) bytes: u64,
    pub(crate) duration: Duration,
}

pub(crate) struct AccessLog {
    budget: LineBudget,
}

impl AccessLog {
    pub(crate) fn new() -> Self {
        Self { budget: LineBudget::new(RATE, BURST) }
    }

    /// `Some(lines suppressed before this one)` when a line may be logged.
    fn admit(&self, now: Instant) -> Option<u64> {
        self.budget.admit(now)
    }

    pub(crate) fn request(&self, connection: &Connection, request: &Request<'_>) {
        let Some(suppressed) = self.admit(Instant::now()) else { return };
        info!(
            target: "access",
            source = %connection.source.ip(),
            tls = connection.tls,
            client = connection.client.as_deref().unwrap_or(""),
            user = request.user.unwrap_or(""),
            method = request.method,
            path = request.path,
            status = request.status,
            bytes = request.bytes,
            duration_ms = request.duration.as_secs_f64() * 1000.0,
            suppressed,
            "request"
        );
    }

    /// A connection that ended before HTTP: a failed TLS handshake.
    pub(crate) fn refused(&self, source: SocketAddr, reason: &str) {
        let Some(suppressed) = self.admit(Instant::now()) else { return };
        info!(target: "access", source = %source.ip(), tls = "failed", reason, suppressed, "connection refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floods_are_bounded_and_counted() {
        let log = AccessLog::new();
        let start = Instant::now();
        let admitted = (0..1000).filter(|_| log.admit(start).is_some()).count();
        assert_eq!(admitted, BURST as usize);
        // A second later RATE more are admitted; the first says how many
        // were dropped.
        let later = start + Duration::from_secs(1);
        assert_eq!(log.admit(later), Some(900));
        let more = (0..100).filter(|_| log.admit(later).is_some()).count();
        assert_eq!(more, RATE as usize - 1);
    }
}
