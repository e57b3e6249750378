//! `cgroup`: on-CPU time and runqueue latency per service, container, pod
//! or slice, counted per cgroup v2 id by the `sched_switch` program
//! (`exporter-ebpf/src/cgroup.rs`) and rolled up to readable, bounded labels
//! here.
//!
//! Ids become paths by walking the cgroup2 hierarchy, wherever it is
//! mounted (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on
//! a hybrid one): a cgroup's id is its directory's inode number. A walk
//! happens only when a scrape meets an id it does not know, at most once per
//! scrape; ids a walk did not find are remembered as unknown for
//! [`NEGATIVE_TTL`]. Directories of the hierarchy are world-readable, so
//! this works after the daemon dropped its privileges.
//!
//! Paths are rolled up ([`roll_up`], README *cgroup labels*): a service at
//! its unit, a pod at its pod slice (with `pod_uid`), user sessions at
//! `/user.slice`, anything deeper folded into that parent. The first
//! `--collector.cgroup.max-series` labels seen get series; ids of any other
//! label are summed under `cgroup="other"`. An id keeps its series for its
//! lifetime, so no counter moves between labels and none goes back.
//!
//! Ids leave in two ways, and neither takes anything away from a counter:
//! - the cgroup is removed (its directory is gone, or its path now holds
//!   another id): its last values are folded into its label, and its key is
//!   deleted from the map;
//! - the kernel evicted it (the map holds the 4,096 most recently used
//!   ids): its last values are folded likewise, and if it comes back its
//!   counts start from zero on top.
//!
//! The kernel side adds a CPU's cached counts to the map within 50 ms of a
//! cgroup's running (at once when the CPU goes idle), so a scrape lags a
//! busy cgroup by at most that; counts that arrive for a cgroup already
//! removed go to `other`.
//!
//! A label whose own cgroup is gone and has no live ids left is dropped (its
//! series disappear) and its totals are folded into `other`, so
//! `sum(kernel_cgroup_cpu_seconds_total)` never goes back either.

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::PathBuf,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use aya::{Ebpf, maps::MapError};
use exporter_common::cgroup::{CGROUP_ON_GLOBAL, CGROUP_STATS_MAP, CgroupStats, offsets};
use tracing::{debug, warn};

use super::{
    Collector, CollectorError, CollectorOption, CollectorOptions, CollectorSpec, KernelOffset, OptionKind,
    PerCpuHashRead, sched,
};
use crate::{
    exposition::encode::{Encoder, Family, Series},
    exposition::histogram::HistogramSeries,
    kernel::btf::Btf,
};

const CPU: Family = Family::counter(
    "kernel_cgroup_cpu_seconds_total",
    "Time tasks of each cgroup (rolled up to its service, pod or slice) ran on a CPU, charged at every context \
     switch (sched:sched_switch), as cpu.stat usage_usec counts it.",
);
const RUNQUEUE_LATENCY: Family = Family::histogram(
    "kernel_cgroup_runqueue_latency_seconds",
    "Time tasks of each cgroup (rolled up to its service, pod or slice) waited on a runqueue before they got a \
     CPU, as schedstat run_delay counts it.",
);

/// The label value ids beyond `--collector.cgroup.max-series` are summed
/// under.
const OTHER: &str = "other";

/// Default of `--collector.cgroup.max-series`.
const DEFAULT_MAX_SERIES: usize = 256;

/// How long an id that no walk of the hierarchy found stays unknown before
/// a scrape walks again for it.
const NEGATIVE_TTL: Duration = Duration::from_secs(60);

/// Ids whose counts stopped that a scrape checks for removal (a `stat`
/// each): a scrape of a host with 4,096 idle cgroups stays a few
/// milliseconds, and their removal is seen within 8 scrapes.
const REMOVAL_CHECKS_PER_SCRAPE: usize = 512;

/// Bounds of a walk: a hierarchy deeper or larger is not walked further
/// (its ids count under `other`), so a hostile tree cannot stall a scrape.
const MAX_DEPTH: usize = 32;
const MAX_CGROUPS: usize = 200_000;

/// `--collector.cgroup.max-series`.
const MAX_SERIES: CollectorOption = CollectorOption {
    name: "max-series",
    help: "Most cgroup label values the cgroup collector exposes (default 256); cgroups beyond are summed under \
           cgroup=\"other\"",
    kind: OptionKind::Count,
};

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "cgroup",
    help: "on-CPU time and runqueue latency per cgroup (service, container, pod, slice) from the sched_switch \
           program it shares with sched; adds about 35 ns per context switch (kernel run statistics); off by \
           default because the overhead bench could not show its 5% context-switch budget met on a busy VM \
           (+11% measured, ±9% noise; README, cgroup labels)",
    default_enabled: false,
    // The `sched` collector's program: with both on it is loaded once and
    // does both jobs in one run.
    tracepoints: &[sched::SWITCH],
    offsets: &[
        sched::LAST_QUEUED,
        sched::CFS_RQ,
        sched::CFS_RQ_RQ,
        sched::RQ_CLOCK,
        KernelOffset { global: offsets::RQ_CLOCK_TASK, type_name: "rq", member: "clock_task", size: 8 },
        KernelOffset { global: offsets::TASK_PID, type_name: "task_struct", member: "pid", size: 4 },
        KernelOffset { global: offsets::TASK_CGROUPS, type_name: "task_struct", member: "cgroups", size: 8 },
        KernelOffset { global: offsets::CSS_SET_DFL_CGRP, type_name: "css_set", member: "dfl_cgrp", size: 8 },
        KernelOffset { global: offsets::CGROUP_KN, type_name: "cgroup", member: "kn", size: 8 },
        KernelOffset { global: offsets::KERNFS_NODE_ID, type_name: "kernfs_node", member: "id", size: 8 },
    ],
    kernel_values: Some(kernel_values),
    options: &[MAX_SERIES],
    #[cfg(test)]
    families: &[CPU, RUNQUEUE_LATENCY],
    open,
};

/// Turns the accounting on in the shared `sched_switch` program.
fn kernel_values(_: &Btf) -> Result<Vec<(&'static str, u32)>, CollectorError> {
    Ok(vec![(CGROUP_ON_GLOBAL, 1)])
}

fn open(ebpf: &mut Ebpf, options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| CollectorError::Io { what: "read /proc/self/mountinfo to find the cgroup2 mount", source })?;
    let root = cgroup2_mount(&mountinfo).ok_or_else(|| CollectorError::Io {
        what: "find a cgroup2 mount",
        source: io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (/proc/self/mountinfo); mount one, e.g. \
             `mount -t cgroup2 none /sys/fs/cgroup/unified`",
        ),
    })?;
    let hierarchy = Cgroup2Tree::new(root)
        .map_err(|source| CollectorError::Io { what: "read the cgroup2 mount's root directory", source })?;
    let map = super::take_per_cpu_hash::<u64, CgroupStats>(ebpf, CGROUP_STATS_MAP)?;
    let max_series = options.count(SPEC.name, MAX_SERIES.name).unwrap_or(DEFAULT_MAX_SERIES);
    Ok(Box::new(Cgroups::new(map, hierarchy, max_series)))
}

/// The cgroup2 mount to resolve ids under: one showing the whole hierarchy
/// (its root directory has the root cgroup's id, 1) if there is one, else
/// the first (inside a cgroup namespace, where ids outside it stay
/// unknown).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            (fs.split(' ').next() == Some("cgroup2")).then(|| mount.split(' ').nth(4).map(unescape_mountinfo))?
        })
        .collect();
    mounts
        .iter()
        .find(|path| fs::metadata(path).is_ok_and(|metadata| metadata.ino() == ROOT_CGROUP_ID))
        .or_else(|| mounts.first())
        .cloned()
}

/// The root cgroup's id.
const ROOT_CGROUP_ID: u64 = 1;

/// A mountinfo path: the kernel escapes space, tab, newline and backslash
/// as `\ooo`.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |value, digit| value.wrapping_mul(8).wrapping_add(digit - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// A rolled-up label: the `cgroup` value and, for a pod, its UID.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Label {
    cgroup: String,
    pod_uid: Option<String>,
}

/// Rolls a cgroup path (relative to the hierarchy's root, `/a/b`) up to its
/// label:
/// - `/user.slice/...` → `/user.slice` (no user ids in labels);
/// - under `/kubepods.slice` or `/kubepods`: the pod
///   (`kubepods-burstable-pod<uid>.slice`, `pod<uid>`) with `pod_uid`;
/// - otherwise the leading slices, then the first unit (`.service`,
///   `.scope`, ...) or other directory below them; a plain directory
///   (`/docker`, `/lxc.payload`) groups containers, so one more level is
///   kept under it.
fn roll_up(path: &str) -> Label {
    let parts: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    let label = |n: usize| Label { cgroup: format!("/{}", parts[..n.min(parts.len())].join("/")), pod_uid: None };
    match parts.first().copied() {
        None => return Label { cgroup: "/".to_owned(), pod_uid: None },
        Some("user.slice") => return label(1),
        Some("kubepods.slice" | "kubepods") => {
            for (i, part) in parts.iter().enumerate() {
                if let Some(uid) = pod_uid(part) {
                    return Label { pod_uid: Some(uid), ..label(i + 1) };
                }
            }
            // The QoS slices themselves (their own tasks are rare).
            let slices = parts.iter().take_while(|part| part.ends_with(".slice")).count();
            return label(slices.clamp(1, 2));
        }
        Some(_) => {}
    }
    let slices = parts.iter().take_while(|part| part.ends_with(".slice")).count();
    match parts.get(slices) {
        None => label(slices),
        Some(part) if is_unit(part) => label(slices + 1),
        Some(_) => label(slices + 2),
    }
}

/// A systemd unit other than a slice: its cgroup is one service or
/// container.
fn is_unit(name: &str) -> bool {
    [".service", ".scope", ".socket", ".mount", ".swap"].iter().any(|suffix| name.ends_with(suffix))
}

/// The pod UID in a kubelet cgroup name: `kubepods-burstable-pod<uid>.slice`
/// (systemd driver, `-` of the UID written `_`) or `pod<uid>` (cgroupfs
/// driver).
fn pod_uid(part: &str) -> Option<String> {
    let uid = match part.strip_suffix(".slice") {
        Some(slice) => slice.rsplit_once("-pod").map(|(_, uid)| uid).or_else(|| slice.strip_prefix("pod"))?,
        None => part.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    // A UUID: 36 characters of hex and dashes.
    (uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-')).then_some(uid)
}

/// The cgroup2 hierarchy, as the collector needs it. Behind a trait so the
/// roll-up and churn logic are tested without creating cgroups.
trait Hierarchy: Send {
    /// Called at the start of each scrape: allows one walk in it.
    fn begin_scrape(&mut self);
    /// The path of cgroup `id` under the root (`/` for the root), if the
    /// cgroup exists.
    fn resolve(&mut self, id: u64) -> Option<String>;
    /// Whether `path` still is cgroup `id`.
    fn is(&self, path: &str, id: u64) -> bool;
    /// Whether a cgroup exists at `path`.
    fn exists(&self, path: &str) -> bool;
    /// Whether every cgroup is under the root, so an id no walk finds was
    /// removed (not merely outside a cgroup namespace's view).
    fn whole(&self) -> bool;
}

/// [`Hierarchy`] from the mounted file system.
struct Cgroup2Tree {
    root: PathBuf,
    root_id: u64,
    paths: HashMap<u64, String>,
    unknown: HashMap<u64, Instant>,
    walked_this_scrape: bool,
}

impl Cgroup2Tree {
    fn new(root: PathBuf) -> io::Result<Self> {
        let root_id = fs::metadata(&root)?.ino();
        Ok(Self { root, root_id, paths: HashMap::new(), unknown: HashMap::new(), walked_this_scrape: false })
    }

    fn full_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Rebuilds the id → path cache from the tree.
    fn walk(&mut self) {
        let started = Instant::now();
        let mut paths = HashMap::with_capacity(self.paths.len());
        paths.insert(self.root_id, "/".to_owned());
        let mut stack: Vec<(PathBuf, String, usize)> = vec![(self.root.clone(), String::new(), 0)];
        while let Some((dir, path, depth)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                // Removed meanwhile, or unreadable: its ids stay unknown.
                Err(error) => {
                    debug!(dir = %dir.display(), %error, "cannot list a cgroup directory");
                    continue;
                }
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    continue;
                }
                if paths.len() >= MAX_CGROUPS {
                    warn!("the cgroup2 hierarchy has more than {MAX_CGROUPS} cgroups; the rest count as other");
                    stack.clear();
                    break;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                let child = format!("{path}/{name}");
                paths.insert(entry.ino(), child.clone());
                if depth + 1 < MAX_DEPTH {
                    stack.push((entry.path(), child, depth + 1));
                }
            }
        }
        debug!(cgroups = paths.len(), took = ?started.elapsed(), "walked the cgroup2 hierarchy");
        self.paths = paths;
    }
}

impl Hierarchy for Cgroup2Tree {
    fn begin_scrape(&mut self) {
        self.walked_this_scrape = false;
        // Bounded by the map: entries are dropped once stale.
        self.unknown.retain(|_, since| since.elapsed() < NEGATIVE_TTL);
    }

    fn resolve(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        if self.unknown.contains_key(&id) || self.walked_this_scrape {
            return None;
        }
        self.walked_this_scrape = true;
        self.walk();
        let found = self.paths.get(&id).cloned();
        if found.is_none() {
            self.unknown.insert(id, Instant::now());
        }
        found
    }

    fn is(&self, path: &str, id: u64) -> bool {
        fs::metadata(self.full_path(path)).is_ok_and(|metadata| metadata.ino() == id)
    }

    fn exists(&self, path: &str) -> bool {
        fs::metadata(self.full_path(path)).is_ok_and(|metadata| metadata.is_dir())
    }

    fn whole(&self) -> bool {
        self.root_id == ROOT_CGROUP_ID
    }
}

/// Running totals of one label (or `other`): what is folded in from ids
/// that left, and the series it is written as.
struct Bucket {
    folded: CgroupStats,
    /// Live ids counted here.
    live: usize,
    cpu: Series,
    runqueue: HistogramSeries,
}

impl Bucket {
    fn new(label: &Label) -> Self {
        let mut labels = vec![("cgroup", label.cgroup.as_str())];
        if let Some(uid) = &label.pod_uid {
            labels.push(("pod_uid", uid.as_str()));
        }
        Self {
            folded: CgroupStats::default(),
            live: 0,
            cpu: Series::new(&CPU, &labels),
            runqueue: HistogramSeries::new(&RUNQUEUE_LATENCY, &labels),
        }
    }
}

/// An id in the map, as of the last scrape.
struct Tracked {
    /// Its cgroup's path; `None` when it never resolved.
    path: Option<String>,
    /// Its label; `None`: counted under `other`.
    label: Option<Label>,
    /// Its values summed over CPUs at the last scrape.
    last: CgroupStats,
    /// The scrape that last saw it in the map.
    seen: u64,
}

struct Cgroups<M, H> {
    state: Mutex<State<M, H>>,
}

struct State<M, H> {
    map: M,
    hierarchy: H,
    max_series: usize,
    ids: HashMap<u64, Tracked>,
    labels: BTreeMap<Label, Bucket>,
    other: Bucket,
    /// Whether `other` has been written once: from then on it always is.
    other_shown: bool,
    scrapes: u64,
    /// Removal checks of the next scrape start after this id.
    check_cursor: u64,
}

impl<M, H> Cgroups<M, H> {
    fn new(map: M, hierarchy: H, max_series: usize) -> Self {
        let other = Bucket::new(&Label { cgroup: OTHER.to_owned(), pod_uid: None });
        Self {
            state: Mutex::new(State {
                map,
                hierarchy,
                max_series,
                ids: HashMap::new(),
                labels: BTreeMap::new(),
                other,
                other_shown: false,
                scrapes: 0,
                check_cursor: 0,
            }),
        }
    }
}

/// Whether `now` cannot be a later reading of `before` (the id was evicted
/// and counts again from zero). Every field is compared, not only the
/// totals: a re-added id can pass its old count while its sum or one bucket
/// is still below the old one, and each of them is a counter of its own.
fn went_back(before: &CgroupStats, now: &CgroupStats) -> bool {
    now.cpu_ns < before.cpu_ns
        || now.runqueue.sum_ns < before.runqueue.sum_ns
        || now.runqueue.buckets.iter().zip(before.runqueue.buckets.iter()).any(|(now, before)| now < before)
}

impl<M: PerCpuHashRead<u64, CgroupStats>, H: Hierarchy> State<M, H> {
    fn bucket(&mut self, label: Option<&Label>) -> &mut Bucket {
        match label.and_then(|label| self.labels.get_mut(label)) {
            Some(bucket) => bucket,
            None => &mut self.other,
        }
    }

    /// Folds `stats` of an id that leaves into its bucket.
    fn fold(&mut self, label: Option<&Label>, stats: &CgroupStats) {
        let bucket = self.bucket(label);
        bucket.folded.merge(stats);
        bucket.live = bucket.live.saturating_sub(1);
    }

    /// Starts tracking `id`: resolves it and picks its bucket.
    fn track(&mut self, id: u64, stats: CgroupStats) -> Option<Tracked> {
        let path = self.hierarchy.resolve(id);
        if path.is_none() && self.hierarchy.whole() {
            // Removed before any scrape saw it: counted under `other`.
            self.other.folded.merge(&stats);
            return None;
        }
        let label = path.as_deref().map(roll_up).filter(|label| {
            self.labels.contains_key(label) || self.labels.len() < self.max_series && label.cgroup != OTHER
        });
        if let Some(label) = &label {
            self.labels.entry(label.clone()).or_insert_with(|| Bucket::new(label));
        }
        self.bucket(label.as_ref()).live += 1;
        Some(Tracked { path, label, last: stats, seen: self.scrapes })
    }

    fn update(&mut self) -> Result<(), MapError> {
        self.scrapes += 1;
        self.hierarchy.begin_scrape();
        let mut keys = self.map.keys()?;
        // A key deleted during the walk can make it restart: no doubles.
        keys.sort_unstable();
        keys.dedup();
        // Removal checks resume after the id where the last scrape's ran out.
        let start = keys.partition_point(|id| *id <= self.check_cursor);
        keys.rotate_left(start);
        let mut checks_left = REMOVAL_CHECKS_PER_SCRAPE;
        let mut ran_out = false;
        for id in keys {
            let mut now = CgroupStats::default();
            match self.map.for_each_cpu(&id, &mut |cpu| now.merge(cpu)) {
                Ok(()) => {}
                Err(MapError::KeyNotFound) => continue,
                Err(error) => return Err(error),
            }
            let Some(mut tracked) = self.ids.remove(&id) else {
                if let Some(tracked) = self.track(id, now) {
                    self.ids.insert(id, tracked);
                } else {
                    self.forget(id);
                }
                continue;
            };
            // A cgroup cannot be removed while it has tasks, and its counts
            // stop when the last one leaves: only an id whose counts did not
            // move since the last scrape can be gone, so only those cost a
            // stat (about 10 µs on kernfs), at most
            // `REMOVAL_CHECKS_PER_SCRAPE` per scrape.
            let mut removed = false;
            if now == tracked.last
                && let Some(path) = tracked.path.as_deref()
            {
                if checks_left == 0 {
                    if !ran_out {
                        ran_out = true;
                        self.check_cursor = id.wrapping_sub(1);
                    }
                } else {
                    checks_left -= 1;
                    removed = !self.hierarchy.is(path, id);
                }
            }
            if removed {
                self.fold(tracked.label.as_ref(), &now);
                self.forget(id);
                continue;
            }
            if went_back(&tracked.last, &now) {
                let label = tracked.label.clone();
                self.bucket(label.as_ref()).folded.merge(&tracked.last);
            }
            tracked.last = now;
            tracked.seen = self.scrapes;
            self.ids.insert(id, tracked);
        }
        if !ran_out {
            self.check_cursor = 0;
        }
        // Ids the kernel evicted (or that were deleted): their last values
        // stay in their bucket.
        let scrape = self.scrapes;
        let gone: Vec<u64> = self.ids.iter().filter(|(_, tracked)| tracked.seen != scrape).map(|(id, _)| *id).collect();
        for id in gone {
            if let Some(tracked) = self.ids.remove(&id) {
                self.fold(tracked.label.as_ref(), &tracked.last);
            }
        }
        // Labels of removed cgroups with nothing live: their series go, their
        // totals move to `other`.
        let hierarchy = &self.hierarchy;
        let dropped: Vec<Label> = self
            .labels
            .iter()
            .filter(|(label, bucket)| bucket.live == 0 && !hierarchy.exists(&label.cgroup))
            .map(|(label, _)| label.clone())
            .collect();
        for label in dropped {
            if let Some(bucket) = self.labels.remove(&label) {
                self.other.folded.merge(&bucket.folded);
            }
        }
        Ok(())
    }

    /// Deletes a removed cgroup's key, so the map keeps room for live ones.
    fn forget(&mut self, id: u64) {
        match self.map.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(error) => debug!(id, %error, "cannot delete a removed cgroup's counts"),
        }
    }

    /// Every bucket's totals: folded plus its live ids' last values.
    fn totals(&self) -> (Vec<(&Bucket, CgroupStats)>, CgroupStats) {
        let mut by_label: BTreeMap<&Label, CgroupStats> =
            self.labels.iter().map(|(label, bucket)| (label, bucket.folded)).collect();
        let mut other = self.other.folded;
        for tracked in self.ids.values() {
            match tracked.label.as_ref().and_then(|label| by_label.get_mut(label)) {
                Some(total) => total.merge(&tracked.last),
                None => other.merge(&tracked.last),
            }
        }
        let rows = self.labels.iter().zip(by_label.into_values()).map(|((_, bucket), total)| (bucket, total)).collect();
        (rows, other)
    }
}

impl<M, H> Collector for Cgroups<M, H>
where
    M: PerCpuHashRead<u64, CgroupStats>,
    H: Hierarchy + Sync,
{
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.update()?;
        let (rows, other) = state.totals();
        let show_other = state.other_shown || other != CgroupStats::default();
        out.family(&CPU);
        for (bucket, total) in &rows {
            out.sample_f64(&bucket.cpu, seconds(total.cpu_ns));
        }
        if show_other {
            out.sample_f64(&state.other.cpu, seconds(other.cpu_ns));
        }
        out.family(&RUNQUEUE_LATENCY);
        for (bucket, total) in &rows {
            out.histogram(&bucket.runqueue, &total.runqueue);
        }
        if show_other {
            out.histogram(&state.other.runqueue, &other.runqueue);
        }
        drop(rows);
        state.other_shown = show_other;
        Ok(())
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testing::{FakePerCpuHash, scrape};

    #[test]
    fn services_pods_and_sessions_roll_up() {
        let label = |path: &str| roll_up(path);
        assert_eq!(label("/").cgroup, "/");
        assert_eq!(label("/system.slice/nginx.service").cgroup, "/system.slice/nginx.service");
        assert_eq!(label("/system.slice/nginx.service/worker").cgroup, "/system.slice/nginx.service");
        assert_eq!(label("/system.slice").cgroup, "/system.slice");
        assert_eq!(label("/init.scope").cgroup, "/init.scope");
        assert_eq!(
            label("/user.slice/user-1000.slice/session-3.scope"),
            Label { cgroup: "/user.slice".to_owned(), pod_uid: None }
        );
        assert_eq!(label("/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope").cgroup, "/user.slice");
        let pod = "/kubepods.slice/kubepods-burstable.slice/\
                   kubepods-burstable-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice";
        let rolled = label(&format!("{pod}/cri-containerd-0123abcd.scope"));
        assert_eq!(rolled.cgroup, pod);
        assert_eq!(rolled.pod_uid.as_deref(), Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789"));
        let guaranteed = label("/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/x.scope");
        assert_eq!(guaranteed.cgroup, "/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice");
        let cgroupfs = label("/kubepods/burstable/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789/0123abcd");
        assert_eq!(cgroupfs.cgroup, "/kubepods/burstable/pod0a1b2c3d-4e5f-6789-abcd-ef0123456789");
        assert!(cgroupfs.pod_uid.is_some());
        assert_eq!(
            label("/kubepods.slice/kubepods-besteffort.slice").cgroup,
            "/kubepods.slice/kubepods-besteffort.slice"
        );
        assert_eq!(label("/docker/0123abcd/inner").cgroup, "/docker/0123abcd");
        assert_eq!(label("/machine.slice/libpod-0123.scope/container").cgroup, "/machine.slice/libpod-0123.scope");
    }

    #[test]
    fn finds_the_cgroup2_mount_and_unescapes_it() {
        let mountinfo = "22 1 0:21 / /sys rw - sysfs sysfs rw\n\
                         41 31 0:38 / /tmp/with\\040space rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mountinfo), Some(PathBuf::from("/tmp/with space")));
        assert_eq!(cgroup2_mount("22 1 0:21 / /sys rw - sysfs sysfs rw\n"), None);
    }

    /// A hierarchy in memory: id → path of the cgroups that exist.
    #[derive(Default)]
    struct FakeTree {
        cgroups: BTreeMap<u64, String>,
        /// `is` calls: the removal checks (a `stat` each for real).
        checks: std::sync::atomic::AtomicUsize,
    }

    impl Hierarchy for FakeTree {
        fn begin_scrape(&mut self) {}
        fn resolve(&mut self, id: u64) -> Option<String> {
            self.cgroups.get(&id).cloned()
        }
        fn is(&self, path: &str, id: u64) -> bool {
            self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.cgroups.get(&id).is_some_and(|p| p == path)
        }
        fn exists(&self, path: &str) -> bool {
            self.cgroups.values().any(|p| p == path)
        }
        fn whole(&self) -> bool {
            true
        }
    }

    /// A reading with `cpu_ns` and one 1 us wait: readings of one entry
    /// that differ only in CPU time are later readings of each other, as in
    /// the kernel, where no field of an entry ever goes down.
    fn stats(cpu_ns: u64) -> CgroupStats {
        let mut stats = CgroupStats { cpu_ns, ..Default::default() };
        stats.runqueue.record(1_000);
        stats
    }

    #[test]
    fn a_readded_id_is_new_when_any_field_is_below_its_last_reading() {
        // Last read: one wait of 33 us. Evicted, re-added, now two short
        // waits: more events, a smaller sum and an emptier bucket.
        let mut before = CgroupStats { cpu_ns: 1_000, ..Default::default() };
        before.runqueue.record(33_000);
        let mut now = CgroupStats { cpu_ns: 2_000, ..Default::default() };
        now.runqueue.record(6_000);
        now.runqueue.record(6_000);
        assert!(now.runqueue.count() > before.runqueue.count());
        assert!(went_back(&before, &now), "the sum and one bucket went back");
        let mut later = before;
        later.runqueue.record(1_000);
        later.cpu_ns += 500;
        assert!(!went_back(&before, &later), "a later reading of the same entry");
        assert!(!went_back(&before, &before));
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn labels_are_bounded_and_nothing_goes_back_under_churn() {
        let map = FakePerCpuHash { entries: BTreeMap::new() };
        let collector = Cgroups::new(map, FakeTree::default(), 2);
        let put = |id: u64, path: Option<&str>, cpu: u64| {
            let mut state = collector.state.lock().unwrap();
            state.map.entries.insert(id, vec![stats(cpu), stats(cpu)]);
            if let Some(path) = path {
                state.hierarchy.cgroups.insert(id, path.to_owned());
            }
        };
        let remove_cgroup = |id: u64| {
            collector.state.lock().unwrap().hierarchy.cgroups.remove(&id);
        };
        let cpu =
            |text: &str, cgroup: &str| value(text, &format!("kernel_cgroup_cpu_seconds_total{{cgroup=\"{cgroup}\"}}"));
        put(10, Some("/system.slice/a.service"), 1_000_000_000);
        put(11, Some("/system.slice/a.service/sub"), 1_000_000_000);
        put(20, Some("/system.slice/b.service"), 500_000_000);
        put(30, Some("/system.slice/c.service"), 250_000_000);
        let text = scrape(&collector);
        assert_eq!(cpu(&text, "/system.slice/a.service"), Some(4.0), "{text}");
        assert_eq!(cpu(&text, "/system.slice/b.service"), Some(1.0), "{text}");
        assert_eq!(cpu(&text, "other"), Some(0.5), "max-series 2: c goes to other\n{text}");

        // The sub-cgroup is removed: its time stays in a.service, its key goes.
        remove_cgroup(11);
        put(11, None, 1_500_000_000);
        let text = scrape(&collector);
        assert_eq!(cpu(&text, "/system.slice/a.service"), Some(5.0), "{text}");
        // Its counts moved in that interval, so it was checked at the next.
        assert!(collector.state.lock().unwrap().map.entries.contains_key(&11));
        let text = scrape(&collector);
        assert_eq!(cpu(&text, "/system.slice/a.service"), Some(5.0), "{text}");
        assert!(!collector.state.lock().unwrap().map.entries.contains_key(&11));

        // b is evicted by the kernel: its last value stays.
        collector.state.lock().unwrap().map.entries.remove(&20);
        let text = scrape(&collector);
        assert_eq!(cpu(&text, "/system.slice/b.service"), Some(1.0), "{text}");
        // ... and comes back from zero: counts add on top.
        put(20, None, 100_000_000);
        let text = scrape(&collector);
        assert_eq!(cpu(&text, "/system.slice/b.service"), Some(1.2), "{text}");

        // b is removed: its series go away, its time moves to other.
        remove_cgroup(20);
        let text = scrape(&collector);
        assert_eq!(cpu(&text, "/system.slice/b.service"), None, "{text}");
        assert_eq!(cpu(&text, "other"), Some(1.7), "{text}");
        assert!(!text.contains("b.service"), "{text}");
        // A new label takes the free slot.
        put(40, Some("/system.slice/d.service"), 0);
        let text = scrape(&collector);
        assert_eq!(cpu(&text, "/system.slice/d.service"), Some(0.0), "{text}");
        assert!(text.contains("kernel_cgroup_runqueue_latency_seconds_count{cgroup=\"other\"} "), "{text}");
    }

    #[test]
    fn removal_checks_are_bounded_per_scrape_and_reach_every_id() {
        const IDS: u64 = 1200;
        let mut tree = FakeTree::default();
        let mut entries = BTreeMap::new();
        for id in 100..100 + IDS {
            tree.cgroups.insert(id, format!("/kx.slice/c{id}"));
            entries.insert(id, vec![stats(1_000)]);
        }
        let collector = Cgroups::new(FakePerCpuHash { entries }, tree, 2000);
        let checks = || collector.state.lock().unwrap().hierarchy.checks.swap(0, std::sync::atomic::Ordering::Relaxed);
        scrape(&collector);
        assert_eq!(checks(), 0, "new ids are resolved, not checked");
        collector.state.lock().unwrap().hierarchy.cgroups.clear();
        let mut scrapes = 0;
        while !collector.state.lock().unwrap().map.entries.is_empty() {
            scrape(&collector);
            scrapes += 1;
            assert!(checks() <= REMOVAL_CHECKS_PER_SCRAPE);
            assert!(scrapes <= 3, "ids left unchecked");
        }
        assert_eq!(scrapes, 3, "1,200 ids at 512 a scrape");
        let text = scrape(&collector);
        assert!(!text.contains("/kx.slice/"), "{text}");
        assert_eq!(
            value(&text, "kernel_cgroup_cpu_seconds_total{cgroup=\"other\"}"),
            Some(IDS as f64 * 1e-6),
            "{text}"
        );
    }

    #[test]
    fn pods_carry_their_uid() {
        let map = FakePerCpuHash { entries: BTreeMap::new() };
        let mut tree = FakeTree::default();
        let pod = "/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice";
        tree.cgroups.insert(5, format!("{pod}/cri-containerd-1.scope"));
        tree.cgroups.insert(6, pod.to_owned());
        let collector = Cgroups::new(map, tree, 256);
        collector.state.lock().unwrap().map.entries.insert(5, vec![stats(1_000_000_000)]);
        let text = scrape(&collector);
        let series = format!(
            "kernel_cgroup_cpu_seconds_total{{cgroup=\"{pod}\",pod_uid=\"0a1b2c3d-4e5f-6789-abcd-ef0123456789\"}}"
        );
        assert_eq!(value(&text, &series), Some(1.0), "{text}");
    }
}
