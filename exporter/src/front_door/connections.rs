//! The connection table: how many connections the daemon holds at once
//! (`--web.max-connections`), which one gives way when a new one arrives at
//! the bound, and how long a connection may sit without a request.
//!
//! Every accepted connection takes a slot until it closes. A connection is
//! *idle* while no request of it is being handled: before its first
//! request (TLS handshake, headers still arriving), between requests, and
//! while a request waits on basic auth (a password check may be an
//! attacker's, however many connections wait on it).
//! At the bound, a new connection evicts, first, the connection refused
//! longest ago among those whose last request basic auth refused (busy or
//! not: waiting on another password check or on the refusal delay serves
//! nobody), then the connection that has been idle longest; only when every
//! held connection is handling a request and none was refused is the new
//! one refused. Both are counted as
//! `kernel_exporter_connections_closed_total{reason="max_connections"}`.
//!
//! Why evict rather than refuse or leave new connections in the backlog:
//! a client that opens connections and sends nothing (or sends its headers
//! a byte a second) holds each for the header timeout. With a plain refusal
//! such a client holding the bound locks the scraper out for as long as it
//! keeps reconnecting; with accept paused, the scraper's connection queues
//! in the listen backlog behind the attacker's and waits a header timeout
//! for a slot. With eviction the scraper's fresh connection pushes out the
//! stalest one and is served at once: the attacker would have to open
//! `--web.max-connections` new connections in the few milliseconds between
//! the scraper's connect and its request to push it out in turn. Connections
//! handling a request are never evicted, so a scrape in progress finishes.
//!
//! A connection idle for longer than its timeout (measured from the end of
//! its TLS handshake, or of its last request) is closed: this covers what
//! hyper's HTTP/1 header timeout does not, such as an HTTP/2 connection that
//! never opens a stream and a client that never reads its response.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::front_door::metrics::ConnectionMetrics;

/// Why the daemon closed a connection on its own, as counted in
/// `kernel_exporter_connections_closed_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Evicted, or refused, at `--web.max-connections`.
    MaxConnections,
    /// No complete first request within the header timeout. Idle
    /// keep-alive connections that did serve a request close the same way
    /// but are not counted: that is the normal end of a connection.
    HeaderTimeout,
}

impl CloseReason {
    pub(crate) const ALL: [Self; 2] = [Self::MaxConnections, Self::HeaderTimeout];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::HeaderTimeout => "header_timeout",
        }
    }
}

/// Every connection the daemon holds, shared by all listeners.
pub(crate) struct Connections {
    limit: usize,
    idle_timeout: Duration,
    table: Mutex<Table>,
    metrics: ConnectionMetrics,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    entries: HashMap<u64, Entry>,
    /// The idle entries, longest idle first: (idle since, id).
    idle: BTreeSet<(Instant, u64)>,
    /// The entries whose last request was refused, longest ago first:
    /// (refused at, id). Evicted before any idle entry.
    refused: BTreeSet<(Instant, u64)>,
}

struct Entry {
    /// Requests being handled now (HTTP/2 may have several).
    busy: u32,
    /// When the last request ended (or the connection or its TLS session
    /// started); meaningful while `busy` is 0.
    idle_since: Instant,
    /// Whether a request has been handled on it.
    served: bool,
    /// When its last request was refused by basic auth; `None` if it was
    /// not (or none has been answered yet).
    refused_at: Option<Instant>,
    evict: Arc<Notify>,
}

impl Table {
    fn entry(&mut self, id: u64) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }

    /// Makes connection `id` the most recently idle one, unless it is
    /// serving a request (a busy connection is not in the idle order).
    fn restart_idle_clock(&mut self, id: u64, now: Instant) {
        let Some(entry) = self.entry(id) else { return };
        if entry.busy > 0 {
            return;
        }
        let before = std::mem::replace(&mut entry.idle_since, now);
        self.idle.remove(&(before, id));
        self.idle.insert((now, id));
    }

    /// Takes an entry just removed from `entries` out of the eviction orders.
    fn forget(&mut self, id: u64, entry: &Entry) {
        if entry.busy == 0 {
            self.idle.remove(&(entry.idle_since, id));
        }
        if let Some(at) = entry.refused_at {
            self.refused.remove(&(at, id));
        }
    }
}

impl Connections {
    pub(crate) fn new(limit: usize, idle_timeout: Duration, metrics: ConnectionMetrics) -> Self {
        Self { limit: limit.max(1), idle_timeout, table: Mutex::new(Table::default()), metrics }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection accepted just now, evicting the longest idle
    /// connection at the bound.
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let now = Instant::now();
        let mut table = self.lock();
        let evicted = table.entries.len() >= self.limit;
        if evicted {
            self.metrics.closed(CloseReason::MaxConnections);
            let victim = match table.refused.pop_first() {
                Some((_, victim)) => victim,
                None => match table.idle.pop_first() {
                    Some((_, victim)) => victim,
                    None => return Admission::Refused,
                },
            };
            // Gone from the table at once: its task closes the socket when
            // it next runs, and the slot is the new connection's from now.
            if let Some(entry) = table.entries.remove(&victim) {
                table.forget(victim, &entry);
                // Stored if the task is not waiting yet, so it is never lost.
                entry.evict.notify_one();
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let evict = Arc::new(Notify::new());
        table
            .entries
            .insert(id, Entry { busy: 0, idle_since: now, served: false, refused_at: None, evict: Arc::clone(&evict) });
        table.idle.insert((now, id));
        self.metrics.set_open(table.entries.len());
        let slot = Slot { connections: Arc::clone(self), id, evict };
        if evicted { Admission::Evicted(slot) } else { Admission::Fits(slot) }
    }

    fn release(&self, id: u64) {
        let mut table = self.lock();
        if let Some(entry) = table.entries.remove(&id) {
            table.forget(id, &entry);
        }
        self.metrics.set_open(table.entries.len());
    }
}

/// What [`Connections::admit`] decided for a new connection.
pub(crate) enum Admission {
    /// There was room.
    Fits(Slot),
    /// The longest idle connection was told to close to make room; until
    /// its task runs, its socket is still open.
    Evicted(Slot),
    /// Every held connection is handling a request: close the new one.
    Refused,
}

impl Admission {
    #[cfg(test)]
    fn slot(self) -> Option<Slot> {
        match self {
            Self::Fits(slot) | Self::Evicted(slot) => Some(slot),
            Self::Refused => None,
        }
    }
}

/// One connection's place in the table; dropping it frees the place.
pub(crate) struct Slot {
    connections: Arc<Connections>,
    id: u64,
    evict: Arc<Notify>,
}

impl Slot {
    /// Resolves once the connection has been evicted to make room.
    pub(crate) async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// Restarts the idle clock: the TLS handshake, which has a timeout of
    /// its own, is done.
    pub(crate) fn handshake_done(&self) {
        let now = Instant::now();
        self.connections.lock().restart_idle_clock(self.id, now);
    }

    /// Resolves once the connection has been idle for the idle timeout, with
    /// whether that counts as a header timeout (no request was ever handled
    /// on it). Never resolves while a request is being handled.
    pub(crate) async fn idle_timeout(&self) -> Option<CloseReason> {
        let timeout = self.connections.idle_timeout;
        loop {
            let state = self
                .connections
                .lock()
                .entry(self.id)
                .map(|entry| ((entry.busy == 0).then(|| entry.idle_since + timeout), entry.served));
            // Evicted: `evicted` ends the connection.
            let Some((deadline, served)) = state else { return std::future::pending().await };
            match deadline {
                Some(deadline) if deadline <= Instant::now() => {
                    return (!served).then_some(CloseReason::HeaderTimeout);
                }
                // The idle start only moves forward: sleeping to the
                // deadline seen and looking again is never late.
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                // Busy: look again after a timeout, so a connection that
                // goes idle now closes within twice the timeout.
                None => tokio::time::sleep(timeout).await,
            }
        }
    }

    /// Whether a request has been handled on the connection.
    pub(crate) fn served(&self) -> bool {
        self.connections.lock().entry(self.id).is_some_and(|entry| entry.served)
    }

    /// A handle for the connection's request handlers.
    pub(crate) fn activity(&self) -> Activity {
        Activity { connections: Arc::clone(&self.connections), id: self.id }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.release(self.id);
    }
}

/// Marks a connection's requests as they are handled.
#[derive(Clone)]
pub(crate) struct Activity {
    connections: Arc<Connections>,
    id: u64,
}

impl Activity {
    /// A request came in. Until it passes basic auth (see
    /// [`Self::request`]) it protects the connection from nothing: a
    /// request waiting on a password check may be an attacker's. It only
    /// restarts the idle clock, so the connection is the most recently
    /// idle one.
    pub(crate) fn arrived(&self) {
        let now = Instant::now();
        self.connections.lock().restart_idle_clock(self.id, now);
    }

    /// The connection is handling a request (one that passed basic auth)
    /// until the guard is dropped; it cannot be evicted meanwhile.
    pub(crate) fn request(&self) -> Busy {
        let mut table = self.connections.lock();
        if let Some(entry) = table.entry(self.id) {
            entry.busy += 1;
            entry.served = true;
            if entry.busy == 1 {
                let since = entry.idle_since;
                table.idle.remove(&(since, self.id));
            }
        }
        Busy(self.clone())
    }

    /// A request was answered: `refused` when basic auth (or the rate
    /// limit) refused it, which puts the connection first in line for
    /// eviction, busy or not, until one of its requests is not refused.
    pub(crate) fn answered(&self, refused: bool) {
        let now = Instant::now();
        let mut table = self.connections.lock();
        let Some(entry) = table.entry(self.id) else { return };
        entry.served = true;
        let before = std::mem::replace(&mut entry.refused_at, refused.then_some(now));
        if let Some(at) = before {
            table.refused.remove(&(at, self.id));
        }
        if refused {
            table.refused.insert((now, self.id));
        }
    }
}

/// See [`Activity::request`].
pub(crate) struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = Instant::now();
        let id = self.0.id;
        let mut table = self.0.connections.lock();
        let Some(entry) = table.entry(id) else { return };
        entry.busy = entry.busy.saturating_sub(1);
        if entry.busy == 0 {
            entry.idle_since = now;
            table.idle.insert((now, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(limit: usize) -> (Arc<Connections>, ConnectionMetrics) {
        let metrics = ConnectionMetrics::register(&mut prometheus_client::registry::Registry::default());
        (Arc::new(Connections::new(limit, Duration::from_secs(10), metrics.clone())), metrics)
    }

    fn evicted_now(slot: &Slot) -> bool {
        use std::future::Future as _;
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let future = std::pin::pin!(slot.evicted());
        future.poll(&mut context).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn the_longest_idle_gives_way() {
        let (connections, metrics) = table(3);
        let first = connections.admit().slot().unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let second = connections.admit().slot().unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let third = connections.admit().slot().unwrap();
        // The first serves a request and so becomes the most recently idle.
        drop(first.activity().request());
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(metrics.open(), 3);

        let fourth = connections.admit().slot().unwrap();
        assert!(evicted_now(&second), "the longest idle is evicted");
        assert!(!evicted_now(&first) && !evicted_now(&third) && !evicted_now(&fourth));
        assert_eq!(metrics.closed_count(CloseReason::MaxConnections), 1);
        assert_eq!(metrics.open(), 3);
        drop(second);
        assert_eq!(metrics.open(), 3, "an evicted slot was already given away");
        drop(fourth);
        assert_eq!(metrics.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refused_connections_give_way_first_even_while_busy() {
        let (connections, _) = table(3);
        let idle = connections.admit().slot().unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let refused = connections.admit().slot().unwrap();
        let served = connections.admit().slot().unwrap();
        refused.activity().answered(true);
        drop(served.activity().request());
        served.activity().answered(false);
        // Its next request waits on a password check: still first to go.
        refused.activity().arrived();
        tokio::time::advance(Duration::from_millis(10)).await;
        let fourth = connections.admit().slot().unwrap();
        assert!(evicted_now(&refused), "refused last time: evicted before the longest idle");
        assert!(!evicted_now(&idle) && !evicted_now(&served) && !evicted_now(&fourth));
        // A request that is not refused clears the mark.
        fourth.activity().answered(true);
        fourth.activity().answered(false);
        let _fifth = connections.admit().slot().unwrap();
        assert!(evicted_now(&idle), "back to the longest idle");
        assert!(!evicted_now(&fourth));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_are_never_evicted() {
        let (connections, metrics) = table(2);
        let first = connections.admit().slot().unwrap();
        let second = connections.admit().slot().unwrap();
        let _busy_first = first.activity().request();
        let busy_second = second.activity().request();
        assert!(connections.admit().slot().is_none(), "every connection is busy: refused");
        assert_eq!(metrics.closed_count(CloseReason::MaxConnections), 1);
        drop(busy_second);
        let third = connections.admit().slot().unwrap();
        assert!(evicted_now(&second));
        assert!(!evicted_now(&first) && !evicted_now(&third));
        // HTTP/2: two requests at once; idle only when both are done.
        let activity = third.activity();
        let (a, b) = (activity.request(), activity.request());
        drop(a);
        assert!(connections.admit().slot().is_none(), "third is still busy");
        drop(b);
        assert!(connections.admit().slot().is_some());
        assert!(evicted_now(&third));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeouts_count_only_connections_never_served() {
        let (connections, _) = table(4);
        let silent = connections.admit().slot().unwrap();
        let started = Instant::now();
        assert_eq!(silent.idle_timeout().await, Some(CloseReason::HeaderTimeout));
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        let served = connections.admit().slot().unwrap();
        let started = Instant::now();
        let busy = served.activity().request();
        let waiting = tokio::spawn({
            let served = Arc::new(served);
            async move { served.idle_timeout().await }
        });
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(!waiting.is_finished(), "a busy connection never times out");
        drop(busy);
        assert_eq!(waiting.await.unwrap(), None, "keep-alive expiry is not a header timeout");
        // Went idle at 25 s; looked at again at 30 s, then at 35 s.
        assert_eq!(started.elapsed(), Duration::from_secs(35));

        // The handshake restarts the clock.
        let tls = connections.admit().slot().unwrap();
        let started = Instant::now();
        tokio::time::advance(Duration::from_secs(6)).await;
        tls.handshake_done();
        assert_eq!(tls.idle_timeout().await, Some(CloseReason::HeaderTimeout));
        assert_eq!(started.elapsed(), Duration::from_secs(16));
    }
}
