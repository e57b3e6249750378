//! Bans of sources that keep failing: failed client-certificate handshakes
//! and wrong credentials are counted per source in userspace, and a source
//! over the bound goes into the kernel's ban map, which the allowlist socket
//! filter consults before anything else.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
};

use aya::maps::MapData;
use tracing::warn;

use super::allowlist::source_key;

/// The kernel's ban map ([`exporter_common::allowlist::BANNED_MAP`]), written by [`Bans`].
pub(crate) struct BanMap {
    map: aya::maps::HashMap<MapData, [u8; 16], u64>,
}

impl BanMap {
    pub(super) fn new(map: aya::maps::HashMap<MapData, [u8; 16], u64>) -> Self {
        Self { map }
    }
}

/// How far back failures (and successes) count towards a ban.
const BAN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Sources whose failures are remembered. They come from completed TCP
/// handshakes (failed TLS handshakes and logins happen after accept), so
/// they are real; beyond the bound, sources without a failure or success
/// in the window are forgotten, and new ones are not tracked until then.
const BAN_SOURCES_TRACKED: usize = 4096;

/// Bans sources that keep failing: `after` failed client-certificate
/// handshakes or wrong credentials within [`BAN_WINDOW`] put the source in
/// the kernel's ban map for `duration`, and the socket filter drops its
/// packets from then on. A source that authenticated successfully within
/// the window is never banned: one Prometheus server with a misconfigured
/// job beside its good ones keeps scraping.
pub(crate) struct Bans {
    after: usize,
    duration: std::time::Duration,
    state: Mutex<BanState>,
    /// Tells open connections that a source was banned, so its own close
    /// (with a reset: the filter now drops the peer's answers).
    banned: tokio::sync::watch::Sender<()>,
}

struct BanState {
    map: BanMap,
    sources: HashMap<[u8; 16], BanRecord>,
    /// The bans in force, as written to the kernel; bounded like the
    /// kernel's map ([`exporter_common::allowlist::BANNED_ENTRIES`]),
    /// expired ones pruned when it is full.
    until: HashMap<[u8; 16], std::time::Instant>,
}

#[derive(Default)]
struct BanRecord {
    /// Failures within the window, oldest first; at most `after`.
    failures: std::collections::VecDeque<std::time::Instant>,
    last_success: Option<std::time::Instant>,
}

impl Bans {
    /// `None` when `ban` is `None` (bans are off).
    pub(crate) fn new(map: BanMap, ban: Option<(u32, std::time::Duration)>) -> Option<Self> {
        let (after, duration) = ban?;
        let state = BanState { map, sources: HashMap::new(), until: HashMap::new() };
        Some(Self {
            after: after as usize,
            duration,
            state: Mutex::new(state),
            banned: tokio::sync::watch::Sender::new(()),
        })
    }

    /// Whether `source` is banned now.
    pub(crate) fn is_banned(&self, source: IpAddr) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.until.get(&source_key(source)).is_some_and(|until| std::time::Instant::now() < *until)
    }

    /// Whether one more failure within the window would ban `source`.
    pub(crate) fn one_failure_away(&self, source: IpAddr) -> bool {
        let now = std::time::Instant::now();
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let in_window = |at: &std::time::Instant| now.saturating_duration_since(*at) < BAN_WINDOW;
        state.sources.get(&source_key(source)).is_some_and(|record| {
            !record.last_success.as_ref().is_some_and(in_window)
                && record.failures.iter().filter(|at| in_window(at)).count() + 1 >= self.after
        })
    }

    /// Resolves once `source` is banned (at once if it is).
    pub(crate) async fn banned(&self, source: IpAddr) {
        let mut changed = self.banned.subscribe();
        while !self.is_banned(source) {
            if changed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// `source` authenticated successfully (right credentials, or a client
    /// certificate that passed verification).
    pub(crate) fn succeeded(&self, source: IpAddr) {
        let now = std::time::Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(record) = Self::record(&mut state.sources, source_key(source), now) {
            record.last_success = Some(now);
        }
    }

    /// `source` failed: `what` (a TLS handshake or auth failure reason).
    /// Returns whether that got it banned.
    pub(crate) fn failed(&self, source: IpAddr, what: &'static str) -> bool {
        let now = std::time::Instant::now();
        let key = source_key(source);
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let BanState { map, sources, until: bans } = &mut *guard;
        let Some(record) = Self::record(sources, key, now) else { return false };
        let in_window = |at: &std::time::Instant| now.saturating_duration_since(*at) < BAN_WINDOW;
        while record.failures.front().is_some_and(|at| !in_window(at)) {
            record.failures.pop_front();
        }
        record.failures.push_back(now);
        if record.last_success.as_ref().is_some_and(in_window) || record.failures.len() < self.after {
            record.failures.truncate(self.after);
            return false;
        }
        record.failures.clear();
        let until = monotonic_ns().saturating_add(u64::try_from(self.duration.as_nanos()).unwrap_or(u64::MAX));
        let source = source.to_canonical();
        if let Err(error) = map.map.insert(key, until, 0) {
            warn!(%source, "cannot ban {source} in the kernel's ban map: {error}");
            return false;
        }
        warn!(
            %source,
            "banning {source} for {:?}: {} failures within {BAN_WINDOW:?} (the last: {what}); the kernel drops its packets until then",
            self.duration,
            self.after
        );
        if bans.len() >= exporter_common::allowlist::BANNED_ENTRIES as usize {
            bans.retain(|_, until| now < *until);
        }
        bans.insert(key, now + self.duration);
        drop(guard);
        self.banned.send_replace(());
        true
    }

    /// The record of `key`, made room for if need be; `None` when the
    /// table is full of sources active within the window.
    fn record(
        sources: &mut HashMap<[u8; 16], BanRecord>,
        key: [u8; 16],
        now: std::time::Instant,
    ) -> Option<&mut BanRecord> {
        if !sources.contains_key(&key) && sources.len() >= BAN_SOURCES_TRACKED {
            let active = |at: &std::time::Instant| now.saturating_duration_since(*at) < BAN_WINDOW;
            sources.retain(|_, record| {
                record.failures.back().is_some_and(active) || record.last_success.as_ref().is_some_and(active)
            });
            if sources.len() >= BAN_SOURCES_TRACKED {
                return None;
            }
        }
        Some(sources.entry(key).or_default())
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always
    // exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0))
}
