//! The HTTP side: serving the listeners ([`super::listener`]), the front door
//! pipeline, routes ([`super::routes`]), the scrape concurrency bound and an
//! orderly shutdown on SIGINT/SIGTERM.
//!
//! Each connection goes through the pipeline in order: the allowlist socket
//! filter (in the kernel, attached to every listener before `listen()`, so
//! sources outside it never get a connection) → TLS ([`tls::accept`], with the policy in force when the
//! connection arrived) → HTTP limits (hyper: header timeout; HTTP/2 only when
//! ALPN chose it) → basic auth ([`auth`], with the policy in force for each
//! request) → route. The policy's extra headers go on every response,
//! refusals included. A connection from a source that a reload removes from
//! the allowlist is closed then (the inherited filter drops its packets
//! from that moment, so its next request would never arrive); a request
//! already under way from such a source gets 403 and the connection closes.
//!
//! Routes: the telemetry path answers GET and HEAD with the exposition
//! body, `/` is a small landing page, other paths are 404 and other methods
//! 405, as node_exporter answers them.
//!
//! Limits on what a client may send: request headers (start line included)
//! of at most [`MAX_HEADER_BYTES`] in at most [`MAX_HEADERS`] fields, else
//! 431; malformed requests get 400 (hyper answers both and closes); request
//! bodies are never read, so a body (a `Content-Length` of a gigabyte, an
//! endless chunked one) costs at most one socket read, discarded, and the
//! connection closes after the answer. How many connections are held, and
//! for how long without a request, is [`crate::front_door::connections`]' business.
//! Refusals by basic auth are answered no sooner than
//! [`AUTH_REFUSAL_DELAY`] after the request came in.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, RawFd},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulConnection,
};
use tokio::{
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tracing::{debug, error, info, warn};

use crate::front_door::access_log::{self, AccessLog, Connection};

use crate::{
    exposition::encode::Format,
    front_door::allowlist::Bans,
    front_door::auth::{self, AuthFailure, Authenticator},
    front_door::connections::{Activity, Admission, CloseReason, Connections, Slot},
    front_door::listener::{Listener, SourceCheck},
    front_door::metrics::{ConnectionMetrics, FrontDoorMetrics},
    front_door::reload::FrontDoor,
    front_door::requests::Requests,
    front_door::routes::{
        accepts_gzip, collector_filters, gzip, landing_page, method_not_allowed, rate_limited, refused, response,
        source_removed,
    },
    front_door::tls,
    front_door::web_config::RateLimit,
    scrape::Scraper,
};

/// How long a client may take to send its request headers; slow-loris
/// clients are cut off here instead of holding a connection forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may go without a request being handled, from its
/// TLS handshake or its last request on; for HTTP/1 the header timeout
/// above does the same, this also covers HTTP/2 and clients that do not
/// read their responses.
const IDLE_TIMEOUT: Duration = HEADER_READ_TIMEOUT;

/// Request headers, request line included, in bytes (HTTP/1), or the
/// header list as HTTP/2 counts it; larger gets 431. Prometheus sends about
/// 300 bytes; this is nginx's default for one header buffer, doubled.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Header fields in one HTTP/1 request; more gets 431. Prometheus sends six.
const MAX_HEADERS: usize = 64;

/// The soonest a request refused by basic auth (401, 429) is answered. A
/// client that sends its next request as soon as it has the last answer,
/// on many connections at once, would otherwise keep the async workers
/// busy with refusals however cheap each is, and scrapes would queue
/// behind them; so held, each connection refuses at most two requests a
/// second. A right password is never held, and nobody types a password
/// twice within half a second.
const AUTH_REFUSAL_DELAY: Duration = Duration::from_millis(500);

/// HTTP/2 streams one connection may have open; Prometheus uses one.
const HTTP2_MAX_STREAMS: u32 = 16;

/// How long in-flight requests get to finish once shutdown starts; SIGTERM
/// must end the process within a second.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Resolves on the first SIGINT or SIGTERM. Installed before start-up work
/// so a signal during it still ends in an orderly exit.
pub(crate) fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        info!(signal = name, "received signal");
    })
}

/// SO_LINGER with a zero timeout: closing `fd` then sends RST and frees the
/// socket at once.
fn reset_on_close(fd: RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: `fd` is the connection's socket, still open (its owner is
    // dropped after this); the option value is a `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// What the handler takes from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// `--web.telemetry-path`.
    pub(crate) telemetry_path: String,
    /// `--web.max-requests`; `None` means no limit.
    pub(crate) max_requests: Option<usize>,
    /// `--web.max-connections`.
    pub(crate) max_connections: usize,
    /// `--web.max-auth-checks-per-source`; `None` means no bound.
    pub(crate) max_auth_checks_per_source: Option<u32>,
}

/// Everything a request handler needs, shared by all connections.
pub(crate) struct App {
    scraper: Scraper,
    telemetry_path: String,
    landing_page: Bytes,
    scrape_slots: Option<Semaphore>,
    front_door: Arc<FrontDoor>,
    authenticator: Authenticator,
    metrics: FrontDoorMetrics,
    in_flight: prometheus_client::metrics::gauge::Gauge,
    access_log: AccessLog,
    requests: Requests,
    connections: Arc<Connections>,
    connection_metrics: ConnectionMetrics,
    /// The web config's `rate_limit`, over every request of every client.
    rate_limiter: std::sync::Mutex<TokenBucket>,
    /// `None`: bans are off (`--web.ban-after-failures=0`).
    bans: Option<Arc<Bans>>,
}

/// exporter-toolkit's `rate_limit` (Go's `rate.Limiter`): a bucket of
/// `burst` requests refilled at one per `interval`, shared by all clients.
struct TokenBucket {
    tokens: f64,
    refilled: std::time::Instant,
}

impl TokenBucket {
    fn new(now: std::time::Instant) -> Self {
        // Full once a limit is first set; clamped to its burst below.
        Self { tokens: f64::MAX, refilled: now }
    }

    /// Whether a request may be served now under `limit` (taken from the
    /// policy in force, so a reload changes it without losing the state).
    fn allow(&mut self, limit: RateLimit, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let burst = f64::from(limit.burst);
        self.tokens = (self.tokens.min(burst) + elapsed.as_secs_f64() / limit.interval.as_secs_f64()).min(burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn start(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl App {
    pub(crate) fn new(
        scraper: Scraper,
        config: &Settings,
        front_door: Arc<FrontDoor>,
        metrics: FrontDoorMetrics,
        in_flight: prometheus_client::metrics::gauge::Gauge,
        requests: Requests,
        connection_metrics: ConnectionMetrics,
    ) -> Self {
        Self {
            scraper,
            telemetry_path: config.telemetry_path.clone(),
            landing_page: landing_page(&config.telemetry_path),
            scrape_slots: config.max_requests.map(Semaphore::new),
            front_door,
            authenticator: Authenticator::for_this_host(config.max_auth_checks_per_source, metrics.password_checks()),
            metrics,
            in_flight,
            access_log: AccessLog::new(),
            requests,
            connections: Arc::new(Connections::new(config.max_connections, IDLE_TIMEOUT, connection_metrics.clone())),
            connection_metrics,
            rate_limiter: std::sync::Mutex::new(TokenBucket::new(std::time::Instant::now())),
            bans: None,
        }
    }

    /// Bans sources that keep failing (see [`Bans`]).
    pub(crate) fn with_bans(mut self, bans: Option<Arc<Bans>>) -> Self {
        self.bans = bans;
        self
    }

    /// Auth, then the route; the policy's headers on whatever comes out;
    /// one access-log line.
    ///
    /// The connection counts as busy (not evictable) from when the request
    /// passes basic auth until its answer is built.
    async fn respond(
        &self,
        request: Request<Incoming>,
        connection: &Connection,
        activity: &Activity,
    ) -> Response<Full<Bytes>> {
        let _in_flight = InFlight::start(&self.in_flight);
        let started = std::time::Instant::now();
        let policy = self.front_door.current();
        let limited = policy.rate_limit().is_some_and(|limit| {
            let mut bucket = self.rate_limiter.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            !bucket.allow(limit, started)
        });
        let mut response = if !policy.allows(connection.source.ip()) {
            source_removed()
        } else if limited {
            rate_limited()
        } else {
            let allowed = match &policy.users {
                None => Ok(()),
                Some(users) => {
                    let authorization = request.headers().get(header::AUTHORIZATION);
                    self.authenticator.check(users, authorization, connection.source.ip()).await
                }
            };
            match allowed {
                Ok(()) => {
                    if let Some(bans) = &self.bans
                        && (policy.users.is_some() || connection.client.is_some())
                    {
                        bans.succeeded(connection.source.ip());
                    }
                    let _busy = activity.request();
                    self.handle(&request)
                }
                Err(failure) => {
                    self.metrics.auth_failed(failure);
                    if let Some(bans) = &self.bans
                        && matches!(failure, AuthFailure::UnknownUser | AuthFailure::WrongPassword)
                    {
                        // If this bans the source, its connections are reset
                        // (see `drive`).
                        let _ = bans.failed(connection.source.ip(), failure.as_str());
                    }
                    refused(failure)
                }
            }
        };
        self.requests.record(connection.source.ip(), response.status().as_u16());
        let headers = response.headers_mut();
        for (name, value) in &policy.headers {
            headers.insert(name.clone(), value.clone());
        }
        let user = auth::claimed_user(request.headers().get(header::AUTHORIZATION));
        self.access_log.request(
            connection,
            &access_log::Request {
                user: user.as_deref(),
                method: request.method().as_str(),
                path: request.uri().path(),
                status: response.status().as_u16(),
                bytes: hyper::body::Body::size_hint(response.body()).exact().unwrap_or(0),
                duration: started.elapsed(),
            },
        );
        response
    }

    fn handle<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let is_read = matches!(*request.method(), Method::GET | Method::HEAD);
        if path == self.telemetry_path {
            if is_read { self.metrics(request) } else { method_not_allowed() }
        } else if path == "/" {
            if is_read {
                response(StatusCode::OK, "text/html; charset=utf-8", self.landing_page.clone())
            } else {
                method_not_allowed()
            }
        } else {
            response(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", Bytes::from_static(b"404 page not found\n"))
        }
    }

    fn metrics<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        let (collect, exclude) = collector_filters(request.uri().query());
        let selection = match self.scraper.select(&collect, &exclude) {
            Ok(selection) => selection,
            Err(error) => {
                return response(StatusCode::BAD_REQUEST, "text/plain; charset=utf-8", format!("{error}\n").into());
            }
        };
        let _slot = match &self.scrape_slots {
            Some(slots) => match slots.try_acquire() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    return response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "text/plain; charset=utf-8",
                        Bytes::from_static(b"too many concurrent scrapes; see --web.max-requests\n"),
                    );
                }
            },
            None => None,
        };
        let header = |name| request.headers().get(name).and_then(|value| value.to_str().ok());
        let format = Format::negotiate(header(header::ACCEPT));
        let body = self.scraper.scrape(format, selection);
        if !accepts_gzip(header(header::ACCEPT_ENCODING)) {
            return response(StatusCode::OK, format.content_type(), body);
        }
        let mut response = response(StatusCode::OK, format.content_type(), gzip(&body));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        response
    }
}

/// Serves every listener until `shutdown` resolves, then gives in-flight
/// requests [`SHUTDOWN_GRACE`] to finish.
pub(crate) async fn serve(listeners: Vec<Listener>, app: App, shutdown: impl Future<Output = ()>) {
    let app = Arc::new(app);
    let (stop, stopped) = watch::channel(());
    let mut accept_loops = JoinSet::new();
    for Listener { address, socket, source_check } in listeners {
        let listener = match TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(error) => {
                error!(address = %address, "cannot serve the listener: {error}");
                continue;
            }
        };
        info!(address = %address, path = app.telemetry_path, "listening");
        accept_loops.spawn(accept_loop(listener, source_check, Arc::clone(&app), stopped.clone()));
    }
    shutdown.await;
    // Receivers see the change and stop; the send only fails if none is left.
    let _ = stop.send(());
    while accept_loops.join_next().await.is_some() {}
}

async fn accept_loop(
    listener: TcpListener,
    source_check: SourceCheck,
    app: Arc<App>,
    mut stopped: watch::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if source_check == SourceCheck::AlsoInUserspace
                    && !app.front_door.current().allows(peer.ip()) =>
                {
                    // Queued on an inherited socket before the filter was
                    // attached (see `systemd_socket`): what the kernel would
                    // have dropped is reset here, before any byte is read.
                    app.access_log.refused(peer, "source not in allowed_sources (queued before the filter)");
                    reset_on_close(stream.as_raw_fd());
                }
                Ok((stream, peer)) => {
                    // Only a completed handshake gets a source its own
                    // series (see `allowlist::Counters`).
                    app.requests.accepted(peer.ip());
                    match app.connections.admit() {
                        Admission::Fits(slot) => {
                            connections.spawn(serve_connection(stream, peer, Arc::clone(&app), stopped.clone(), slot));
                        }
                        Admission::Evicted(slot) => {
                            connections.spawn(serve_connection(stream, peer, Arc::clone(&app), stopped.clone(), slot));
                            // Let the evicted connection's task close its socket
                            // before accepting more: a flood of connections
                            // would otherwise outrun the closing, and hold
                            // descriptors beyond the bound.
                            tokio::task::yield_now().await;
                        }
                        Admission::Refused => {
                            // Every connection held is serving a request: this
                            // one waits for nothing, so the reset frees it now.
                            debug!(peer = %peer, "refusing a connection: --web.max-connections reached");
                            reset_on_close(stream.as_raw_fd());
                        }
                    }
                }
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("cannot accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        debug!(connections = connections.len(), "closing connections that did not finish in time");
    }
    // Dropping the set aborts whatever is left.
}

/// Serves one connection in its slot of the connection table until it
/// ends or is evicted to make room for a newer one.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    stopped: watch::Receiver<()>,
    slot: Slot,
) {
    // Valid for as long as the connection (which owns the stream) lives.
    let fd = stream.as_raw_fd();
    // Pinned out here so the socket is still open in the eviction branch.
    let mut serving = std::pin::pin!(serve_http(stream, peer, Arc::clone(&app), stopped, &slot, fd));
    tokio::select! {
        () = serving.as_mut() => {}
        () = slot.evicted() => {
            // Counted when the table chose it. A reset frees the socket at
            // once instead of leaving it to an orderly close with a client
            // that may never answer.
            debug!(peer = %peer, "closing the longest idle connection: --web.max-connections reached");
            reset_on_close(fd);
        }
    }
}

/// TLS (when configured), then HTTP.
async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    stopped: watch::Receiver<()>,
    slot: &Slot,
    fd: RawFd,
) {
    // Subscribed first: a reload between the two closes this connection
    // (harmless), never misses it.
    let clients_changed = app.front_door.clients_changed();
    // The TLS config of this moment serves the whole connection.
    let tls_config = app.front_door.current().tls.clone();
    let activity = slot.activity();
    let service = |connection: Connection| {
        let app = Arc::clone(&app);
        let connection = Arc::new(connection);
        let activity = activity.clone();
        service_fn(move |request| {
            let app = Arc::clone(&app);
            let connection = Arc::clone(&connection);
            activity.arrived();
            let activity = activity.clone();
            let arrived = tokio::time::Instant::now();
            async move {
                let response = app.respond(request, &connection, &activity).await;
                // Only refusals by basic auth (and the rate limit) are 401
                // and 429. Held, the connection counts as idle, and it is
                // the first to give way until it sends something that is
                // not refused: evicting it costs nobody.
                let refused = matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS);
                activity.answered(refused);
                if refused {
                    tokio::time::sleep_until(arrived + AUTH_REFUSAL_DELAY).await;
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    let http1 = || {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_header_size(MAX_HEADER_BYTES)
            .max_headers(MAX_HEADERS);
        builder
    };
    let Some(tls_config) = tls_config else {
        let service = service(Connection { source: peer, tls: "none", client: None });
        let connection = http1().serve_connection(TokioIo::new(stream), service);
        // Plain HTTP: there is no client policy to change.
        return drive(connection, peer, stopped, &app, slot, fd, std::future::pending()).await;
    };
    // A source one failure away from a ban closes with a reset, whatever
    // happens: should this handshake ban it, the filter drops the peer's
    // answers from then on, and a FIN would be retransmitted for minutes.
    if app.bans.as_ref().is_some_and(|bans| bans.one_failure_away(peer.ip())) {
        reset_on_close(fd);
    }
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls::accept(stream, tls_config)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(failure)) => {
            app.metrics.tls_handshake_failed(failure);
            if let Some(bans) = &app.bans
                && matches!(
                    failure,
                    tls::HandshakeFailure::NoClientCertificate
                        | tls::HandshakeFailure::BadClientCertificate
                        | tls::HandshakeFailure::ClientSanNotAllowed
                )
            {
                // If this bans the source, the socket was set to close with
                // a reset (see above).
                let _ = bans.failed(peer.ip(), failure.as_str());
            }
            app.access_log.refused(peer, failure.as_str());
            return;
        }
        Err(_) => {
            app.metrics.tls_handshake_failed(tls::HandshakeFailure::Timeout);
            app.access_log.refused(peer, tls::HandshakeFailure::Timeout.as_str());
            return;
        }
    };
    slot.handshake_done();
    let session = stream.get_ref().1;
    let service = service(Connection {
        source: peer,
        tls: match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        },
        client: session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| tls::subject_common_name(cert)),
    });
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        let connection = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(HTTP2_MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_BYTES as u32)
            .serve_connection(TokioIo::new(stream), service);
        drive(connection, peer, stopped, &app, slot, fd, clients_changed).await;
    } else {
        let connection = http1().serve_connection(TokioIo::new(stream), service);
        drive(connection, peer, stopped, &app, slot, fd, clients_changed).await;
    }
}

/// Serves one HTTP connection until it ends or shutdown starts, then lets
/// it finish gracefully; closes it at once when its source is removed from
/// the allowlist, and when it has been idle for [`IDLE_TIMEOUT`]; closes it
/// after its requests in flight (HTTP/1.1 `Connection: close`, HTTP/2
/// GOAWAY) when `clients_changed` resolves: it was admitted under a client
/// policy no longer in force.
async fn drive<C>(
    connection: C,
    peer: SocketAddr,
    mut stopped: watch::Receiver<()>,
    app: &App,
    slot: &Slot,
    fd: RawFd,
    clients_changed: impl Future<Output = ()>,
) where
    C: GracefulConnection<Error = hyper::Error>,
{
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        reason = slot.idle_timeout() => {
            if let Some(reason) = reason {
                app.connection_metrics.closed(reason);
            }
            debug!(peer = %peer, "closing a connection idle for {IDLE_TIMEOUT:?}");
            return;
        }
        () = async {
            match &app.bans {
                Some(bans) => bans.banned(peer.ip()).await,
                None => std::future::pending().await,
            }
        } => {
            info!(peer = %peer, "closing the connection: its source is banned");
            // A reset, as below: the filter drops the peer's answers now.
            reset_on_close(fd);
            return;
        }
        () = app.front_door.revoked(peer.ip()) => {
            // At most once per open connection per reload.
            info!(peer = %peer, "closing the connection: a reload removed its source from the allowlist");
            // Close with a reset: the filter drops the peer's answers to a
            // FIN, so an orderly close would leave the socket (and with it
            // the filter program) retransmitting for minutes.
            reset_on_close(fd);
            return;
        }
        _ = stopped.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = clients_changed => {
            info!(
                peer = %peer,
                "closing the connection after its requests in flight: a reload changed which clients may connect"
            );
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        // hyper's header timeout, before ours: count it the same way.
        if error.is_timeout() && !slot.served() {
            app.connection_metrics.closed(CloseReason::HeaderTimeout);
        }
        debug!(peer = %peer, "connection ended with an error: {error}");
    }
    // A source removed or banned while the connection was ending: see above.
    let banned = app.bans.as_ref().is_some_and(|bans| bans.is_banned(peer.ip()));
    if banned || !app.front_door.current().allows(peer.ip()) {
        reset_on_close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_is_a_token_bucket() {
        let start = std::time::Instant::now();
        let limit = RateLimit { interval: Duration::from_millis(100), burst: 3 };
        let mut bucket = TokenBucket::new(start);
        let allowed = (0..10).filter(|_| bucket.allow(limit, start)).count();
        assert_eq!(allowed, 3, "the burst");
        assert!(!bucket.allow(limit, start + Duration::from_millis(50)));
        assert!(bucket.allow(limit, start + Duration::from_millis(100)), "one per interval");
        assert!(!bucket.allow(limit, start + Duration::from_millis(100)));
        // A long quiet spell refills no more than the burst.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.allow(limit, later)).count(), 3);
    }
}
