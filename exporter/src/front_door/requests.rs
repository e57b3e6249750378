//! `kernel_exporter_requests_total{source,code}`: the HTTP responses per
//! source, counted by the server in userspace and read by every scrape.
//!
//! Bounded like the kernel's per-source map (`--web.allowlist-sources-tracked`),
//! but it is no part of the kernel allowlist: it sees only what got through.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use aya::maps::MapError;

use super::allowlist::Handshakes;
use crate::exposition::self_families::REQUESTS;
use crate::{
    collectors::Collector,
    exposition::encode::{Encoder, Series},
};

/// `kernel_exporter_requests_total{source,code}`, counted by the HTTP
/// server. Bound: `bound` sources (`--web.allowlist-sources-tracked`, the
/// kernel map's bound); a new source beyond it evicts the least recently
/// seen one, whose series then disappear (and restart from zero should it
/// return). Codes per source are the few the server answers with.
/// Cloned handles count into the same series.
#[derive(Clone)]
pub(crate) struct Requests {
    bound: usize,
    state: Arc<Mutex<RequestsState>>,
    handshakes: Handshakes,
}

#[derive(Default)]
struct RequestsState {
    /// Advances with every request: "recently seen" without reading a clock.
    tick: u64,
    sources: HashMap<IpAddr, SourceRequests>,
}

struct SourceRequests {
    last_seen: u64,
    /// (code, requests, series).
    codes: Vec<(u16, u64, Series)>,
}

impl Requests {
    /// `handshakes`: where [`Self::accepted`] records sources (see
    /// `allowlist::Counters::handshakes`).
    pub(crate) fn new(bound: u32, handshakes: Handshakes) -> Self {
        Self { bound: (bound as usize).max(1), state: Arc::new(Mutex::new(RequestsState::default())), handshakes }
    }

    /// A connection from `source` was accepted: its handshake completed.
    pub(crate) fn accepted(&self, source: IpAddr) {
        self.handshakes.completed(source);
    }

    /// Counts one response with `code` to `source`.
    pub(crate) fn record(&self, source: IpAddr, code: u16) {
        let source = source.to_canonical();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.tick += 1;
        let tick = state.tick;
        if !state.sources.contains_key(&source)
            && state.sources.len() >= self.bound
            && let Some(oldest) = state.sources.iter().min_by_key(|(_, entry)| entry.last_seen).map(|(ip, _)| *ip)
        {
            state.sources.remove(&oldest);
        }
        let entry = state.sources.entry(source).or_insert_with(|| SourceRequests { last_seen: 0, codes: Vec::new() });
        entry.last_seen = tick;
        match entry.codes.iter_mut().find(|(known, _, _)| *known == code) {
            Some((_, requests, _)) => *requests += 1,
            None => {
                let series = Series::new(&REQUESTS, &[("source", &source.to_string()), ("code", &code.to_string())]);
                entry.codes.push((code, 1, series));
            }
        }
    }
}

impl Collector for Requests {
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        out.family(&REQUESTS);
        for entry in state.sources.values() {
            for (_, requests, series) in &entry.codes {
                out.sample(series, *requests);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testing::scrape as encode;

    #[test]
    fn the_family_follows_the_naming_rules() {
        assert!(REQUESTS.is_valid(), "{REQUESTS:?}");
    }

    #[test]
    fn requests_evict_the_least_recently_seen_source() {
        let requests = Requests::new(2, Handshakes::new(2));
        let ip = |last: u8| IpAddr::from([192, 0, 2, last]);
        requests.record(ip(1), 200);
        requests.record(ip(2), 200);
        requests.record(ip(1), 401);
        // .2 is the least recently seen now.
        requests.record(ip(3), 200);
        // IPv4-mapped peers of dual-stack listeners count as IPv4.
        requests.record("::ffff:192.0.2.1".parse().unwrap(), 200);
        let text = encode(&requests);
        assert!(text.contains("kernel_exporter_requests_total{source=\"192.0.2.1\",code=\"200\"} 2\n"), "{text}");
        assert!(text.contains("kernel_exporter_requests_total{source=\"192.0.2.1\",code=\"401\"} 1\n"), "{text}");
        assert!(text.contains("kernel_exporter_requests_total{source=\"192.0.2.3\",code=\"200\"} 1\n"), "{text}");
        assert!(!text.contains("192.0.2.2"), "{text}");
    }
}
