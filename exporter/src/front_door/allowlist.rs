//! The allowlist: the socket filter that drops packets from sources outside
//! `allowed_sources` (or `--web.allow-from`) inside the kernel, the LPM trie
//! it looks sources up in, and who knocked.
//!
//! [`open`] loads the filter (it is not a tracepoint collector: it attaches
//! to sockets) and splits what the daemon needs into three owners:
//! [`Filter`], whose program descriptor `server::bind` attaches to every
//! listening socket before `listen()`; [`Trie`], the two kernel tries the
//! reloader builds a new policy in and switches between; and [`Counters`],
//! which a scrape reads. HTTP outcomes per source are counted in userspace,
//! by [`super::requests`].
//!
//! An absent allowlist is the single range `::/0` in the trie, so going
//! from "everyone" to a list and back is a switch like any other.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf,
    maps::{
        Array, MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{ProgramError, SocketFilter},
};
use exporter_common::allowlist::{
    ACTIVE_MAP, ALLOWLIST_MAP, ALLOWLIST_NEXT_MAP, BANNED_MAP, PROGRAM, SOURCES_MAP, SourceCounters, TOTALS_MAP,
};
use tracing::debug;

pub(crate) use super::bans::{BanMap, Bans};
use crate::exposition::self_families::{CONNECTIONS, ENTRIES, PACKETS};
use crate::{
    collectors::{Collector, CollectorError, PerCpuHashRead, PerCpuRead, take_per_cpu_array, take_per_cpu_hash},
    exposition::encode::{Encoder, Series},
    front_door::web_config::Cidr,
};

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
    #[error("cannot {action} {range} in the kernel's allowlist ({map}): {source}")]
    Update {
        action: &'static str,
        range: String,
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("cannot read the kernel's allowlist ({map}): {source}")]
    Read {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("the kernel's allowlist {map} holds {found} ranges after writing {wanted}")]
    Mismatch { map: &'static str, wanted: usize, found: usize },
}

/// Loads the socket filter and takes its maps out of the object.
/// `sources_tracked` (`--web.allowlist-sources-tracked`) bounds the
/// sources remembered as having completed a handshake.
pub(crate) fn open(ebpf: &mut Ebpf, sources_tracked: u32) -> Result<(Filter, Trie, Counters, BanMap), AllowlistError> {
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
    let tries = [take_trie(ebpf, ALLOWLIST_MAP)?, take_trie(ebpf, ALLOWLIST_NEXT_MAP)?];
    let raw = ebpf.take_map(ACTIVE_MAP).ok_or(CollectorError::MissingMap { map: ACTIVE_MAP })?;
    let active_map =
        Array::try_from(raw).map_err(|source| CollectorError::Map { map: ACTIVE_MAP, source: Box::new(source) })?;
    let entries = Arc::new(AtomicU64::new(0));
    let trie = Trie::new(tries, active_map, Arc::clone(&entries))?;
    let counters = Counters {
        sources: Box::new(take_per_cpu_hash::<[u8; 16], SourceCounters>(ebpf, SOURCES_MAP)?),
        totals: Box::new(take_per_cpu_array::<SourceCounters>(ebpf, TOTALS_MAP)?),
        entries,
        handshakes: Handshakes::new(sources_tracked),
        series: Mutex::new(HashMap::new()),
        dropped_shown: Mutex::new(Vec::new()),
        other_series: other_series(),
        totals_series: [
            Series::new(&PACKETS, &[("verdict", "allowed")]),
            Series::new(&PACKETS, &[("verdict", "dropped")]),
        ],
    };
    let raw = ebpf.take_map(BANNED_MAP).ok_or(CollectorError::MissingMap { map: BANNED_MAP })?;
    let banned = aya::maps::HashMap::try_from(raw)
        .map_err(|source| CollectorError::Map { map: BANNED_MAP, source: Box::new(source) })?;
    Ok((Filter { program: fd }, trie, counters, BanMap::new(banned)))
}

fn take_trie(ebpf: &mut Ebpf, map: &'static str) -> Result<TrieMap, CollectorError> {
    let raw = ebpf.take_map(map).ok_or(CollectorError::MissingMap { map })?;
    LpmTrie::try_from(raw).map_err(|source| CollectorError::Map { map, source: Box::new(source) })
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

type TrieMap = LpmTrie<MapData, [u8; 16], u8>;

/// The kernel's two allowlist tries, the switch between them, and the
/// ranges in the one in force.
pub(crate) struct Trie {
    state: Mutex<TrieState>,
    entries: Arc<AtomicU64>,
}

struct TrieState {
    tries: [TrieMap; 2],
    active_map: Array<MapData, u32>,
    /// The index in `active_map`, as last written there (or read at start).
    active: usize,
    /// The ranges of `tries[active]`, as read back from the kernel.
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

const TRIE_NAMES: [&str; 2] = [ALLOWLIST_MAP, ALLOWLIST_NEXT_MAP];

/// Every range in `map`, as the kernel has it.
fn read_back(map: &TrieMap, name: &'static str) -> Result<BTreeSet<Range>, AllowlistError> {
    map.keys()
        .map(|key| key.map(|key| (key.prefix_len(), key.data())))
        .collect::<Result<_, _>>()
        .map_err(|source| AllowlistError::Read { map: name, source: Box::new(source) })
}

impl Trie {
    fn new(
        tries: [TrieMap; 2],
        active_map: Array<MapData, u32>,
        entries: Arc<AtomicU64>,
    ) -> Result<Self, AllowlistError> {
        let active = match active_map.get(&0, 0) {
            Ok(1) => 1,
            Ok(_) => 0,
            Err(source) => return Err(AllowlistError::Read { map: ACTIVE_MAP, source: Box::new(source) }),
        };
        let ranges = read_back(&tries[active], TRIE_NAMES[active])?;
        entries.store(ranges.len() as u64, Ordering::Relaxed);
        Ok(Self { state: Mutex::new(TrieState { tries, active_map, active, ranges }), entries })
    }

    /// Makes the kernel enforce exactly `sources`. The new ranges go into
    /// the trie not in force, which is emptied first and read back after;
    /// only when it holds exactly the new ranges does the filter switch to
    /// it, in one write. `swap` runs just before that write (the caller
    /// swaps its policy, so connections of removed sources are told while
    /// their packets still get through), and `undo` if the write fails.
    /// Any failure leaves the trie in force, and the filter's verdicts, as
    /// they were; before the write, `swap` has not run.
    pub(crate) fn replace(
        &self,
        sources: Option<&[Cidr]>,
        swap: impl FnOnce(),
        undo: impl FnOnce(),
    ) -> Result<(), AllowlistError> {
        let wanted = ranges(sources);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.ranges == wanted {
            swap();
            return Ok(());
        }
        let spare = 1 - state.active;
        let name = TRIE_NAMES[spare];
        let map = &mut state.tries[spare];
        // Left over from the policy before the one in force.
        for range in read_back(map, name)? {
            match map.remove(&Key::new(range.0, range.1)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(AllowlistError::Update {
                        action: "clear",
                        range: describe(&range),
                        map: name,
                        source: Box::new(source),
                    });
                }
            }
        }
        for range in &wanted {
            map.insert(&Key::new(range.0, range.1), 1, 0).map_err(|source| AllowlistError::Update {
                action: "add",
                range: describe(range),
                map: name,
                source: Box::new(source),
            })?;
        }
        let found = read_back(map, name)?;
        if found != wanted {
            return Err(AllowlistError::Mismatch { map: name, wanted: wanted.len(), found: found.len() });
        }
        swap();
        if let Err(source) = state.active_map.set(0, spare as u32, 0) {
            undo();
            return Err(AllowlistError::Update {
                action: "switch to",
                range: format!("trie {spare}"),
                map: ACTIVE_MAP,
                source: Box::new(source),
            });
        }
        state.active = spare;
        state.ranges = found;
        self.entries.store(state.ranges.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// How many ranges the trie in force holds.
    pub(crate) fn in_force(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).ranges.len()
    }
}

/// The source label: IPv4 (also IPv4-mapped IPv6) printed as IPv4.
fn source_label(addr: [u8; 16]) -> String {
    Ipv6Addr::from(addr).to_canonical().to_string()
}

/// Sources shown with a `verdict="dropped"` series of their own although
/// the daemon never accepted a connection from them.
const DROPPED_SOURCES_SHOWN: usize = 10;

/// A source takes the place of the shown one with the fewest drops (`n`)
/// only with at least `2n + TAKEOVER_MARGIN` of its own: random forged
/// sources hit an address a few times at most, so they cannot make the
/// shown sources churn, while a real, persistent one still gets its place.
const TAKEOVER_MARGIN: u64 = 8;

/// (allowed, dropped, banned) of one source.
fn source_series(source: &str) -> [Series; 3] {
    ["allowed", "dropped", "banned"]
        .map(|verdict| Series::new(&CONNECTIONS, &[("source", source), ("verdict", verdict)]))
}

fn other_series() -> [Series; 3] {
    source_series("other")
}

/// The 16-byte key the filter counts `ip` under.
pub(super) fn source_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Sources the daemon accepted a connection from: they completed a TCP
/// handshake, so their address is not forged, and only they get series of
/// their own for what the filter allowed. Bound: `bound` sources
/// (`--web.allowlist-sources-tracked`), the least recently accepted one
/// forgotten beyond. Cloned handles share the set.
#[derive(Clone)]
pub(crate) struct Handshakes {
    bound: usize,
    state: Arc<Mutex<HandshakeState>>,
}

/// (tick, source → tick of its last accepted connection).
type HandshakeState = (u64, HashMap<[u8; 16], u64>);

impl Handshakes {
    pub(super) fn new(bound: u32) -> Self {
        Self { bound: (bound as usize).max(1), state: Arc::new(Mutex::new((0, HashMap::new()))) }
    }

    /// `source` completed a handshake (the daemon accepted its connection).
    pub(crate) fn completed(&self, source: IpAddr) {
        let key = source_key(source);
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tick, sources) = &mut *guard;
        *tick += 1;
        if !sources.contains_key(&key)
            && sources.len() >= self.bound
            && let Some(oldest) = sources.iter().min_by_key(|(_, seen)| **seen).map(|(key, _)| *key)
        {
            sources.remove(&oldest);
        }
        sources.insert(key, *tick);
    }

    fn snapshot(&self) -> HashSet<[u8; 16]> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).1.keys().copied().collect()
    }
}

/// A source shown with its own dropped series. Its count outlives the
/// kernel map's entry: `base` is what earlier entries (evicted by the LRU
/// map, then created afresh) counted, `last` what the current one counted
/// at the last scrape, so the series never goes back.
struct Shown {
    source: [u8; 16],
    base: u64,
    last: u64,
    series: Series,
}

impl Shown {
    fn count(&self) -> u64 {
        self.base.wrapping_add(self.last)
    }
}

/// `kernel_exporter_connections_total`, `kernel_exporter_packets_total`
/// and `kernel_exporter_allowlist_entries`, from the filter's maps.
///
/// The filter counts every packet's source before any handshake, so
/// sources can be forged at will: series of their own go only to sources
/// that completed a handshake ([`Handshakes`]) and to the
/// [`DROPPED_SOURCES_SHOWN`] sources with the most dropped SYNs (a place
/// among those is taken over only by a source with clearly more, see
/// [`TAKEOVER_MARGIN`], so a flood of forged sources cannot make them
/// churn);
/// everything else is `source="other"`, computed from the exact totals.
pub(crate) struct Counters {
    /// Bound: the LRU map's max_entries (`--web.allowlist-sources-tracked`).
    sources: Box<dyn PerCpuHashRead<[u8; 16], SourceCounters>>,
    totals: Box<dyn PerCpuRead<SourceCounters>>,
    entries: Arc<AtomicU64>,
    handshakes: Handshakes,
    /// Series (allowed, dropped) per handshake source in the kernel map:
    /// bounded by [`Handshakes`], pruned every scrape.
    series: Mutex<HashMap<[u8; 16], [Series; 3]>>,
    /// Bound: [`DROPPED_SOURCES_SHOWN`].
    dropped_shown: Mutex<Vec<Shown>>,
    other_series: [Series; 3],
    totals_series: [Series; 2],
}

impl Counters {
    /// The set the HTTP server records accepted sources in.
    pub(crate) fn handshakes(&self) -> Handshakes {
        self.handshakes.clone()
    }
}

impl Collector for Counters {
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let keys = self.sources.keys()?;
        let mut sums = HashMap::with_capacity(keys.len());
        for key in &keys {
            let mut sum = SourceCounters::default();
            self.sources.for_each_cpu(key, &mut |cpu| sum = sum.merged(*cpu))?;
            sums.insert(*key, sum);
        }
        let mut totals = SourceCounters::default();
        self.totals.for_each_cpu(0, &mut |cpu| totals = totals.merged(*cpu))?;
        let handshakes = self.handshakes.snapshot();
        let (mut shown_allowed, mut shown_dropped, mut shown_banned) = (0u64, 0u64, 0u64);

        out.family(&CONNECTIONS);
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.retain(|key, _| sums.contains_key(key) && handshakes.contains(key));
        for (key, sum) in &sums {
            if !handshakes.contains(key) {
                continue;
            }
            let [allowed, dropped, banned] = series.entry(*key).or_insert_with(|| source_series(&source_label(*key)));
            out.sample(allowed, sum.syns_allowed);
            out.sample(dropped, sum.syns_dropped);
            out.sample(banned, sum.syns_banned);
            shown_allowed = shown_allowed.wrapping_add(sum.syns_allowed);
            shown_dropped = shown_dropped.wrapping_add(sum.syns_dropped);
            shown_banned = shown_banned.wrapping_add(sum.syns_banned);
        }
        drop(series);

        let mut shown = self.dropped_shown.lock().unwrap_or_else(PoisonError::into_inner);
        // A source accepted since it was placed here has its own pair now.
        shown.retain(|entry| !handshakes.contains(&entry.source));
        for entry in shown.iter_mut() {
            let now = sums.get(&entry.source).map_or(0, |sum| sum.syns_dropped);
            if now < entry.last {
                // The kernel's entry was evicted (and perhaps created anew).
                entry.base = entry.base.wrapping_add(entry.last);
            }
            entry.last = now;
        }
        let mut candidates: Vec<([u8; 16], u64)> = sums
            .iter()
            .filter(|(key, sum)| {
                sum.syns_dropped > 0 && !handshakes.contains(*key) && !shown.iter().any(|entry| entry.source == **key)
            })
            .map(|(key, sum)| (*key, sum.syns_dropped))
            .collect();
        // Most dropped first; among equals, the lowest address (stable).
        candidates.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (source, dropped) in candidates {
            let make = || Shown {
                source,
                base: 0,
                last: dropped,
                series: Series::new(&CONNECTIONS, &[("source", &source_label(source)), ("verdict", "dropped")]),
            };
            if shown.len() < DROPPED_SOURCES_SHOWN {
                shown.push(make());
                continue;
            }
            let Some(weakest) = shown.iter_mut().min_by_key(|entry| entry.count()) else { break };
            if dropped < weakest.count().saturating_mul(2).saturating_add(TAKEOVER_MARGIN) {
                // The rest have no more.
                break;
            }
            *weakest = make();
        }
        for entry in shown.iter() {
            out.sample(&entry.series, entry.count());
            shown_dropped = shown_dropped.wrapping_add(entry.count());
        }
        drop(shown);
        out.sample(&self.other_series[0], totals.syns_allowed.saturating_sub(shown_allowed));
        out.sample(&self.other_series[1], totals.syns_dropped.saturating_sub(shown_dropped));
        out.sample(&self.other_series[2], totals.syns_banned.saturating_sub(shown_banned));

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

    fn counters(entries: Vec<([u8; 16], Vec<SourceCounters>)>, totals: SourceCounters) -> Counters {
        Counters {
            sources: Box::new(FakePerCpuHash { entries: entries.into_iter().collect() }),
            totals: Box::new(FakePerCpu { cpus: vec![vec![totals]] }),
            entries: Arc::new(AtomicU64::new(3)),
            handshakes: Handshakes::new(16),
            series: Mutex::new(HashMap::new()),
            dropped_shown: Mutex::new(Vec::new()),
            other_series: other_series(),
            totals_series: [
                Series::new(&PACKETS, &[("verdict", "allowed")]),
                Series::new(&PACKETS, &[("verdict", "dropped")]),
            ],
        }
    }

    fn v4(last: u8) -> [u8; 16] {
        std::net::Ipv4Addr::new(127, 0, 0, last).to_ipv6_mapped().octets()
    }

    #[test]
    fn counters_sum_cpus_per_source() {
        let per_cpu = |syns_allowed, syns_dropped| SourceCounters {
            syns_allowed,
            syns_dropped,
            packets_dropped: syns_dropped,
            packets_allowed: syns_allowed,
            ..Default::default()
        };
        let counters = counters(
            vec![(v4(2), vec![per_cpu(0, 2), per_cpu(0, 3)]), (v4(1), vec![per_cpu(4, 0), per_cpu(1, 0)])],
            per_cpu(7, 8),
        );
        counters.handshakes().completed(IpAddr::from([127, 0, 0, 1]));
        let text = encode(&counters);
        for line in [
            "kernel_exporter_connections_total{source=\"127.0.0.2\",verdict=\"dropped\"} 5\n",
            "kernel_exporter_connections_total{source=\"127.0.0.1\",verdict=\"allowed\"} 5\n",
            "kernel_exporter_connections_total{source=\"127.0.0.1\",verdict=\"dropped\"} 0\n",
            // The rest of the exact totals.
            "kernel_exporter_connections_total{source=\"other\",verdict=\"allowed\"} 2\n",
            "kernel_exporter_connections_total{source=\"other\",verdict=\"dropped\"} 3\n",
            "kernel_exporter_packets_total{verdict=\"dropped\"} 8\n",
            "kernel_exporter_allowlist_entries 3\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // Never accepted: no allowed series of its own.
        assert!(!text.contains("source=\"127.0.0.2\",verdict=\"allowed\""), "{text}");
    }

    #[test]
    fn dropped_sources_shown_are_the_top_ten_and_forged_floods_cannot_churn_them() {
        let dropped = |n| vec![SourceCounters { syns_dropped: n, packets_dropped: n, ..Default::default() }];
        let mut entries: Vec<([u8; 16], Vec<SourceCounters>)> = (1..=12).map(|last| (v4(last), dropped(1))).collect();
        entries.push((v4(100), dropped(50)));
        let counters = counters(entries, SourceCounters { syns_dropped: 62, ..Default::default() });
        let shown = |text: &str| -> BTreeSet<String> {
            text.lines()
                .filter(|line| line.starts_with("kernel_exporter_connections_total{"))
                .filter_map(|line| line.split('"').nth(1).map(str::to_owned))
                .collect()
        };
        let first = encode(&counters);
        let values = shown(&first);
        assert_eq!(values.len(), DROPPED_SOURCES_SHOWN + 1, "{first}");
        assert!(values.contains("127.0.0.100") && values.contains("other"), "{values:?}");
        assert!(
            first.contains("kernel_exporter_connections_total{source=\"other\",verdict=\"dropped\"} 3\n"),
            "{first}"
        );
        // A flood of other sources with one SYN each: same ten sources.
        let mut entries: Vec<([u8; 16], Vec<SourceCounters>)> = (1..=12).map(|last| (v4(last), dropped(1))).collect();
        entries.push((v4(100), dropped(50)));
        entries.extend(
            (0..1000u32).map(|i| (std::net::Ipv4Addr::from(0x0a00_0000 + i).to_ipv6_mapped().octets(), dropped(1))),
        );
        let flooded =
            Counters { sources: Box::new(FakePerCpuHash { entries: entries.into_iter().collect() }), ..counters };
        let second = encode(&flooded);
        assert_eq!(shown(&second), values, "{second}");
        // A persistent source with clearly more drops takes a place.
        let mut entries: Vec<([u8; 16], Vec<SourceCounters>)> = (1..=12).map(|last| (v4(last), dropped(1))).collect();
        entries.push((v4(100), dropped(50)));
        entries.push((v4(200), dropped(10)));
        let persistent =
            Counters { sources: Box::new(FakePerCpuHash { entries: entries.into_iter().collect() }), ..flooded };
        let third = encode(&persistent);
        assert!(shown(&third).contains("127.0.0.200"), "{third}");
        assert_eq!(shown(&third).len(), DROPPED_SOURCES_SHOWN + 1, "{third}");
    }
}
