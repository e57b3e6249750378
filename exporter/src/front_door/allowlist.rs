//! The allowlist: the socket filter that drops packets from sources outside
//! `allowed_sources` (or `--web.allow-from`) inside the kernel, the LPM trie
//! it looks sources up in, and who knocked.
//!
//! [`open`] loads the filter (it is not a tracepoint collector: it attaches
//! to sockets) and splits what the daemon needs into three owners:
//! [`Filter`], whose program descriptor `server::bind` attaches to every
//! listening socket before `listen()`; [`Trie`], which the reloader updates
//! in place; and [`Counters`], which a scrape reads. HTTP outcomes per
//! source are counted in userspace, by [`super::requests`].
//!
//! An absent allowlist is the single range `::/0` in the trie, so going
//! from "everyone" to a list and back is an in-place update like any other.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv6Addr,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf,
    maps::{
        MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, SocketFilter},
};
use exporter_common::allowlist::{ALLOWLIST_MAP, PROGRAM, SOURCES_MAP, SourceCounters, TOTALS_MAP};
use tracing::debug;

use crate::{
    collectors::{Collector, CollectorError, PerCpuHashRead, PerCpuRead, take_per_cpu_array, take_per_cpu_hash},
    exposition::encode::{Encoder, Family, Series},
    front_door::web_config::Cidr,
};

const CONNECTIONS: Family = Family::counter(
    "kernel_exporter_connections_total",
    "Connection attempts (TCP SYNs) the allowlist socket filter saw per source address, allowed or dropped in the kernel (the most recently seen sources, up to --web.allowlist-sources-tracked).",
);
const PACKETS: Family = Family::counter(
    "kernel_exporter_packets_total",
    "Packets to the exporter's sockets the allowlist socket filter allowed or dropped (all sources; exact).",
);
const ENTRIES: Family = Family::gauge(
    "kernel_exporter_allowlist_entries",
    "Ranges in the kernel's allowlist trie (1, the range ::/0, when no allowlist is configured).",
);
/// The filter could not be put in place; the daemon does not serve without it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AllowlistError {
    #[error(
        "the BPF object has no socket filter {PROGRAM}: the daemon and BPF object were built from different sources"
    )]
    MissingProgram,
    #[error("the kernel rejected the allowlist socket filter: {0}")]
    Load(#[source] Box<ProgramError>),
    #[error("cannot use the allowlist socket filter's descriptor: {0}")]
    Descriptor(#[source] std::io::Error),
    #[error(transparent)]
    Map(#[from] CollectorError),
    #[error("cannot {action} {range} in the kernel's allowlist: {source}")]
    Update {
        action: &'static str,
        range: String,
        #[source]
        source: Box<MapError>,
    },
}

/// Loads the socket filter and takes its maps out of the object.
pub(crate) fn open(ebpf: &mut Ebpf) -> Result<(Filter, Trie, Counters), AllowlistError> {
    let program: &mut SocketFilter =
        ebpf.program_mut(PROGRAM).and_then(|p| p.try_into().ok()).ok_or(AllowlistError::MissingProgram)?;
    program.load().map_err(|source| {
        if let ProgramError::LoadError { verifier_log, .. } = &source {
            debug!(program = PROGRAM, "verifier log:\n{verifier_log}");
        }
        AllowlistError::Load(Box::new(source))
    })?;
    let fd = program
        .fd()
        .map_err(|source| AllowlistError::Load(Box::new(source)))?
        .as_fd()
        .try_clone_to_owned()
        .map_err(AllowlistError::Descriptor)?;
    let raw = ebpf.take_map(ALLOWLIST_MAP).ok_or(CollectorError::MissingMap { map: ALLOWLIST_MAP })?;
    let map = LpmTrie::try_from(raw)
        .map_err(|source| CollectorError::Map { map: ALLOWLIST_MAP, source: Box::new(source) })?;
    let entries = Arc::new(AtomicU64::new(0));
    let trie = Trie { state: Mutex::new(TrieState { map, ranges: BTreeSet::new() }), entries: Arc::clone(&entries) };
    let counters = Counters {
        sources: Box::new(take_per_cpu_hash::<[u8; 16], SourceCounters>(ebpf, SOURCES_MAP)?),
        totals: Box::new(take_per_cpu_array::<SourceCounters>(ebpf, TOTALS_MAP)?),
        entries,
        series: Mutex::new(HashMap::new()),
        totals_series: [
            Series::new(&PACKETS, &[("verdict", "allowed")]),
            Series::new(&PACKETS, &[("verdict", "dropped")]),
        ],
    };
    Ok((Filter { program: fd }, trie, counters))
}

/// The loaded socket filter, for attaching to listening sockets.
pub(crate) struct Filter {
    program: OwnedFd,
}

impl Filter {
    pub(crate) fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }
}

/// A trie entry: prefix length over the 16-byte (IPv4-mapped) address.
type Range = (u32, [u8; 16]);

/// The kernel's allowlist and the ranges in it.
pub(crate) struct Trie {
    state: Mutex<TrieState>,
    entries: Arc<AtomicU64>,
}

struct TrieState {
    map: LpmTrie<MapData, [u8; 16], u8>,
    ranges: BTreeSet<Range>,
}

/// `sources` as trie ranges; `None` (no allowlist) is `::/0`.
pub(crate) fn ranges(sources: Option<&[Cidr]>) -> BTreeSet<Range> {
    match sources {
        None => BTreeSet::from([(0, [0; 16])]),
        Some(sources) => sources.iter().map(Cidr::trie_range).collect(),
    }
}

fn describe(range: &Range) -> String {
    format!("{}/{}", Ipv6Addr::from(range.1), range.0)
}

impl Trie {
    /// Makes the trie hold exactly `sources` without a moment where a
    /// source allowed before and after is refused: new ranges go in first,
    /// then `between` runs (the caller swaps its policy), then stale ranges
    /// come out. If an insert fails, the ranges inserted so far come out
    /// again and `between` does not run.
    pub(crate) fn replace(&self, sources: Option<&[Cidr]>, between: impl FnOnce()) -> Result<(), AllowlistError> {
        let wanted = ranges(sources);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let TrieState { map, ranges } = &mut *state;
        let new: Vec<Range> = wanted.difference(ranges).copied().collect();
        for (i, range) in new.iter().enumerate() {
            if let Err(source) = map.insert(&Key::new(range.0, range.1), 1, 0) {
                for inserted in &new[..i] {
                    let _ = map.remove(&Key::new(inserted.0, inserted.1));
                }
                return Err(AllowlistError::Update { action: "add", range: describe(range), source: Box::new(source) });
            }
            ranges.insert(*range);
        }
        between();
        let stale: Vec<Range> = ranges.difference(&wanted).copied().collect();
        let mut failed = None;
        for range in stale {
            match map.remove(&Key::new(range.0, range.1)) {
                Ok(()) | Err(MapError::KeyNotFound) => {
                    ranges.remove(&range);
                }
                Err(source) => {
                    failed.get_or_insert(AllowlistError::Update {
                        action: "remove",
                        range: describe(&range),
                        source: Box::new(source),
                    });
                }
            }
        }
        self.entries.store(ranges.len() as u64, Ordering::Relaxed);
        failed.map_or(Ok(()), Err)
    }
}

/// The source label: IPv4 (also IPv4-mapped IPv6) printed as IPv4.
fn source_label(addr: [u8; 16]) -> String {
    Ipv6Addr::from(addr).to_canonical().to_string()
}

/// `kernel_exporter_connections_total`, `kernel_exporter_packets_total`
/// and `kernel_exporter_allowlist_entries`, from the filter's maps.
pub(crate) struct Counters {
    /// Bound: the LRU map's max_entries (`--web.allowlist-sources-tracked`).
    sources: Box<dyn PerCpuHashRead<[u8; 16], SourceCounters>>,
    totals: Box<dyn PerCpuRead<SourceCounters>>,
    entries: Arc<AtomicU64>,
    /// Series per source seen in the last scrape (allowed, dropped):
    /// bounded by the LRU map, pruned of evicted sources every scrape.
    series: Mutex<HashMap<[u8; 16], [Series; 2]>>,
    totals_series: [Series; 2],
}

impl Collector for Counters {
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let keys = self.sources.keys()?;
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.retain(|key, _| keys.contains(key));
        out.family(&CONNECTIONS);
        for key in &keys {
            let mut sum = SourceCounters::default();
            self.sources.for_each_cpu(key, &mut |cpu| sum = sum.merged(*cpu))?;
            let [allowed, dropped] = series.entry(*key).or_insert_with(|| {
                let source = source_label(*key);
                [
                    Series::new(&CONNECTIONS, &[("source", &source), ("verdict", "allowed")]),
                    Series::new(&CONNECTIONS, &[("source", &source), ("verdict", "dropped")]),
                ]
            });
            out.sample(allowed, sum.syns_allowed);
            out.sample(dropped, sum.syns_dropped);
        }
        let mut totals = SourceCounters::default();
        self.totals.for_each_cpu(0, &mut |cpu| totals = totals.merged(*cpu))?;
        out.family(&PACKETS);
        out.sample(&self.totals_series[0], totals.packets_allowed);
        out.sample(&self.totals_series[1], totals.packets_dropped);
        out.single(&ENTRIES, self.entries.load(Ordering::Relaxed));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testing::{FakePerCpu, FakePerCpuHash, scrape as encode};

    #[test]
    fn families_follow_the_naming_rules() {
        for family in [CONNECTIONS, PACKETS, ENTRIES] {
            assert!(family.is_valid(), "{family:?}");
        }
    }

    #[test]
    fn ranges_map_ipv4_into_ipv6() {
        let cidrs: Vec<Cidr> = ["127.0.0.1/32", "10.0.0.0/8", "::1/128"].iter().map(|c| c.parse().unwrap()).collect();
        let ranges = ranges(Some(&cidrs));
        let described: BTreeSet<String> = ranges.iter().map(describe).collect();
        assert_eq!(
            described,
            BTreeSet::from(["::ffff:127.0.0.1/128".to_owned(), "::ffff:10.0.0.0/104".to_owned(), "::1/128".to_owned()])
        );
        assert_eq!(super::ranges(None), BTreeSet::from([(0, [0; 16])]));
    }

    #[test]
    fn source_labels_print_ipv4_as_ipv4() {
        assert_eq!(source_label(std::net::Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets()), "127.0.0.2");
        assert_eq!(source_label(Ipv6Addr::LOCALHOST.octets()), "::1");
    }

    #[test]
    fn counters_sum_cpus_per_source() {
        let source = std::net::Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets();
        let per_cpu =
            |syns_dropped| SourceCounters { syns_dropped, packets_dropped: syns_dropped, ..Default::default() };
        let counters = Counters {
            sources: Box::new(FakePerCpuHash { entries: [(source, vec![per_cpu(2), per_cpu(3)])].into() }),
            totals: Box::new(FakePerCpu { cpus: vec![vec![per_cpu(7)], vec![per_cpu(1)]] }),
            entries: Arc::new(AtomicU64::new(3)),
            series: Mutex::new(HashMap::new()),
            totals_series: [
                Series::new(&PACKETS, &[("verdict", "allowed")]),
                Series::new(&PACKETS, &[("verdict", "dropped")]),
            ],
        };
        let text = encode(&counters);
        assert!(
            text.contains("kernel_exporter_connections_total{source=\"127.0.0.2\",verdict=\"dropped\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("kernel_exporter_connections_total{source=\"127.0.0.2\",verdict=\"allowed\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("kernel_exporter_packets_total{verdict=\"dropped\"} 8\n"), "{text}");
        assert!(text.contains("kernel_exporter_allowlist_entries 3\n"), "{text}");
    }
}
