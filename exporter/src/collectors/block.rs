//! `block`: completed block requests, bytes and issue-to-completion latency
//! per disk and operation, counted by the kernel programs in
//! `exporter-ebpf/src/block.rs` and summed over CPUs here.
//!
//! The kernel keys its counts by the disk's device number; the name comes
//! from sysfs (`/sys/dev/block/MAJOR:MINOR/uevent`, `DEVNAME`), which is
//! the name `/proc/diskstats` prints. Only disks, not partitions: the
//! programs count a request under the disk it went to, as the disk's line
//! of `/proc/diskstats` does.
//!
//! Devices come and go (loop devices, hot-plug, device-mapper). Each
//! scrape checks, for each device number in the map, that the same device
//! is still behind it (the sysfs directory's inode changes when a device
//! is removed and another takes its number). Keys of a device that is gone,
//! or whose number now names another device, are deleted from the map, so
//! their series disappear and the map's bound holds under churn.
//!
//! Differences from `/proc/diskstats`: the `op` classes follow the
//! request's operation exactly (`write` is `REQ_OP_WRITE` only; write
//! zeroes and secure erase are `other`, where diskstats adds them to
//! writes); passthrough commands (`other`) are counted here and not there;
//! counting does not depend on the queue's `iostats` setting.

use std::{
    collections::{HashMap, hash_map::Entry},
    fs,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    sync::{Mutex, PoisonError},
};

use aya::{Ebpf, maps::MapError};
use exporter_common::block::{BLOCK_IO_MAP, BlockIoKey, BlockIoStats, OP_LABELS, OPS, RQF_FLUSH_SEQ_GLOBAL, offsets};
use regex::Regex;
use tracing::debug;

use super::{
    Collector, CollectorError, CollectorOption, CollectorOptions, CollectorSpec, KernelOffset, OptionKind,
    PerCpuHashRead, Tracepoint,
};
use crate::{
    exposition::encode::{Encoder, Family, Series},
    exposition::histogram::HistogramSeries,
    kernel::btf::Btf,
};

const REQUESTS: Family = Family::counter(
    "kernel_block_io_requests_total",
    "Block requests completed, by disk and operation (block:block_rq_complete), as the reads, writes and \
     discards completed in /proc/diskstats.",
);
const BYTES: Family = Family::counter(
    "kernel_block_io_bytes_total",
    "Bytes of block requests completed, by disk and operation (block:block_rq_complete), as the sectors read, \
     written and discarded in /proc/diskstats times 512.",
);
const LATENCY: Family = Family::histogram(
    "kernel_block_io_latency_seconds",
    "Time from a block request's issue to the driver (block:block_rq_issue) to its completion, by disk and \
     operation; requests issued before the exporter attached are counted but not timed.",
);

/// Where sysfs lists block devices by number.
const SYS_DEV_BLOCK: &str = "/sys/dev/block";

const fn tracepoint(name: &'static str) -> Tracepoint {
    // Programs are named after the tracepoint they attach to.
    Tracepoint::raw(name, "block", name)
}

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "block",
    help: "block requests, bytes and issue-to-completion latency per disk and operation from block tracepoints; \
           fires twice per disk request (issue, completion), about 1 µs per request on a virtual machine",
    default_enabled: true,
    tracepoints: &[tracepoint("block_rq_issue"), tracepoint("block_rq_complete")],
    offsets: &[
        KernelOffset { global: offsets::REQUEST_Q, type_name: "request", member: "q", size: 8 },
        KernelOffset { global: offsets::REQUEST_CMD_FLAGS, type_name: "request", member: "cmd_flags", size: 4 },
        KernelOffset { global: offsets::REQUEST_RQ_FLAGS, type_name: "request", member: "rq_flags", size: 4 },
        KernelOffset { global: offsets::REQUEST_DATA_LEN, type_name: "request", member: "__data_len", size: 4 },
        KernelOffset { global: offsets::QUEUE_DISK, type_name: "request_queue", member: "disk", size: 8 },
        KernelOffset { global: offsets::GENDISK_MAJOR, type_name: "gendisk", member: "major", size: 4 },
        KernelOffset { global: offsets::GENDISK_FIRST_MINOR, type_name: "gendisk", member: "first_minor", size: 4 },
    ],
    kernel_values: Some(kernel_values),
    options: &[DEVICE_EXCLUDE],
    #[cfg(test)]
    families: &[REQUESTS, BYTES, LATENCY],
    open,
};

/// `--collector.block.device-exclude`.
const DEVICE_EXCLUDE: CollectorOption = CollectorOption {
    name: "device-exclude",
    help: "Regex of block devices (names as in /proc/diskstats) to leave out of the block collector's series",
    kind: OptionKind::Regex,
};

/// The kernel's enum of request flag bits (Linux 6.9 on); before it,
/// `RQF_FLUSH_SEQ` was the macro `1 << 4`, which BTF does not record.
const RQF_ENUM: &str = "rqf_flags";
const RQF_FLUSH_SEQ_BIT: &str = "__RQF_FLUSH_SEQ";
const RQF_FLUSH_SEQ_BEFORE_ENUM: u32 = 1 << 4;

/// `RQF_FLUSH_SEQ` of the running kernel, for the programs to tell the
/// data phase of a flush sequence from a request's end.
fn kernel_values(btf: &Btf) -> Result<Vec<(&'static str, u32)>, CollectorError> {
    Ok(vec![(RQF_FLUSH_SEQ_GLOBAL, flush_seq_flag(btf.enum_values(RQF_ENUM).as_deref())?)])
}

fn flush_seq_flag(rqf_flags: Option<&[(String, i64)]>) -> Result<u32, CollectorError> {
    let Some(values) = rqf_flags else { return Ok(RQF_FLUSH_SEQ_BEFORE_ENUM) };
    values
        .iter()
        .find(|(name, _)| name == RQF_FLUSH_SEQ_BIT)
        .and_then(|&(_, bit)| u32::try_from(bit).ok())
        .and_then(|bit| 1u32.checked_shl(bit))
        .ok_or(CollectorError::KernelType { type_name: RQF_ENUM, member: RQF_FLUSH_SEQ_BIT, size: 4 })
}

fn open(ebpf: &mut Ebpf, options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    let map = super::take_per_cpu_hash::<BlockIoKey, BlockIoStats>(ebpf, BLOCK_IO_MAP)?;
    let devices = SysDevBlock { root: PathBuf::from(SYS_DEV_BLOCK) };
    Ok(Box::new(Block::new(map, devices, options.regex(SPEC.name, DEVICE_EXCLUDE.name).cloned())))
}

/// Block devices by number. Behind a trait so the churn logic is tested
/// without devices.
trait Devices: Send {
    /// An identity of the device behind `major:minor` now, which differs
    /// for a device that took a removed device's number; `None` when no
    /// device has the number.
    fn instance(&self, major: u32, minor: u32) -> Option<u64>;
    /// The device's name, as `/proc/diskstats` prints it.
    fn name(&self, major: u32, minor: u32) -> Option<String>;
}

/// [`Devices`] from sysfs.
struct SysDevBlock {
    root: PathBuf,
}

impl SysDevBlock {
    fn path(&self, major: u32, minor: u32) -> PathBuf {
        self.root.join(format!("{major}:{minor}"))
    }
}

impl Devices for SysDevBlock {
    fn instance(&self, major: u32, minor: u32) -> Option<u64> {
        // The device's sysfs directory: a new device gets a new kernfs
        // node, whose inode number is never reused while the system runs.
        fs::metadata(self.path(major, minor)).ok().map(|metadata| metadata.ino())
    }

    fn name(&self, major: u32, minor: u32) -> Option<String> {
        let uevent = fs::read_to_string(self.path(major, minor).join("uevent")).ok()?;
        devname(&uevent).map(str::to_owned)
    }
}

/// `DEVNAME` of a sysfs `uevent` file: the kernel's name of the device,
/// which `/proc/diskstats` prints too (`cciss/c0d0` where sysfs
/// directories say `cciss!c0d0`).
fn devname(uevent: &str) -> Option<&str> {
    uevent.lines().find_map(|line| line.strip_prefix("DEVNAME=")).filter(|name| !name.is_empty())
}

struct Block<M, D> {
    state: Mutex<State<M, D>>,
    exclude: Option<Regex>,
}

struct State<M, D> {
    map: M,
    devices: D,
    /// Devices with keys in the map, by [`BlockIoKey::dev`].
    known: HashMap<u32, Known>,
}

/// A device seen in the map, and its series once it has any.
struct Known {
    instance: u64,
    name: String,
    excluded: bool,
    series: [Option<OpSeries>; OPS],
}

struct OpSeries {
    requests: Series,
    bytes: Series,
    latency: HistogramSeries,
}

impl OpSeries {
    fn new(device: &str, op: &str) -> Self {
        let labels = [("device", device), ("op", op)];
        Self {
            requests: Series::new(&REQUESTS, &labels),
            bytes: Series::new(&BYTES, &labels),
            latency: HistogramSeries::new(&LATENCY, &labels),
        }
    }
}

/// What a scrape does with a device number's keys.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Export,
    Exclude,
    /// The device is gone, or its number names another device now: its
    /// counts belong to no series.
    Delete,
}

impl<M, D: Devices> Block<M, D> {
    fn new(map: M, devices: D, exclude: Option<Regex>) -> Self {
        Self { state: Mutex::new(State { map, devices, known: HashMap::new() }), exclude }
    }
}

impl<M, D: Devices> State<M, D> {
    fn fate(&mut self, dev: u32, exclude: Option<&Regex>) -> Fate {
        let key = BlockIoKey { dev, op: 0 };
        let (major, minor) = (key.major(), key.minor());
        let Some(instance) = self.devices.instance(major, minor) else {
            self.known.remove(&dev);
            return Fate::Delete;
        };
        if let Some(known) = self.known.get(&dev)
            && known.instance == instance
        {
            return known.fate();
        }
        let Some(name) = self.devices.name(major, minor) else {
            self.known.remove(&dev);
            return Fate::Delete;
        };
        match self.known.entry(dev) {
            Entry::Occupied(mut entry) => {
                if entry.get().name == name {
                    // Removed and added again under its name (a loop device
                    // detached and attached): one disk to a reader, and its
                    // counter goes on rising.
                    entry.get_mut().instance = instance;
                    entry.get().fate()
                } else {
                    // The counts so far are the old device's (plus perhaps
                    // the new one's first requests): they would start the new
                    // series at a value it never had.
                    entry.remove();
                    Fate::Delete
                }
            }
            Entry::Vacant(entry) => {
                let excluded = exclude.is_some_and(|exclude| exclude.is_match(&name));
                entry.insert(Known { instance, name, excluded, series: Default::default() }).fate()
            }
        }
    }
}

impl Known {
    fn fate(&self) -> Fate {
        if self.excluded { Fate::Exclude } else { Fate::Export }
    }
}

impl<M, D> Collector for Block<M, D>
where
    M: PerCpuHashRead<BlockIoKey, BlockIoStats>,
    D: Devices + Sync,
{
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys = state.map.keys()?;
        // A key deleted during the walk can make it restart: no doubles.
        keys.sort_unstable();
        keys.dedup();

        let mut fates: HashMap<u32, Fate> = HashMap::new();
        let mut rows: Vec<(BlockIoKey, BlockIoStats)> = Vec::new();
        for key in keys {
            let fate = match fates.get(&key.dev) {
                Some(fate) => *fate,
                None => {
                    let fate = state.fate(key.dev, self.exclude.as_ref());
                    fates.insert(key.dev, fate);
                    fate
                }
            };
            match fate {
                Fate::Export if (key.op as usize) < OPS => {
                    let mut total = BlockIoStats::default();
                    match state.map.for_each_cpu(&key, &mut |cpu| total.merge(cpu)) {
                        Ok(()) => rows.push((key, total)),
                        // Deleted since the walk: nothing to show.
                        Err(MapError::KeyNotFound) => {}
                        Err(error) => return Err(error),
                    }
                }
                Fate::Export | Fate::Exclude => {}
                Fate::Delete => match state.map.remove(&key) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    // Tried again at the next scrape; the series is gone
                    // either way.
                    Err(error) => debug!(dev = key.dev, op = key.op, %error, "cannot delete a gone device's counts"),
                },
            }
        }
        // Devices without keys (deleted, or the map was cleared) are
        // forgotten, so `known` stays as bounded as the map.
        state.known.retain(|dev, _| fates.contains_key(dev));

        let known = &mut state.known;
        rows.retain(|(key, _)| known.contains_key(&key.dev));
        for (key, _) in &rows {
            if let Some(device) = known.get_mut(&key.dev) {
                let op = key.op as usize;
                if device.series[op].is_none() {
                    device.series[op] = Some(OpSeries::new(&device.name, OP_LABELS[op]));
                }
            }
        }
        let series = |key: &BlockIoKey| known.get(&key.dev).and_then(|device| device.series[key.op as usize].as_ref());
        rows.sort_by(|(a, _), (b, _)| {
            let name = |key: &BlockIoKey| known.get(&key.dev).map(|device| device.name.as_str());
            name(a).cmp(&name(b)).then(a.op.cmp(&b.op))
        });

        out.family(&REQUESTS);
        for (key, stats) in &rows {
            if let Some(series) = series(key) {
                out.sample(&series.requests, stats.requests);
            }
        }
        out.family(&BYTES);
        for (key, stats) in &rows {
            if let Some(series) = series(key) {
                out.sample(&series.bytes, stats.bytes);
            }
        }
        out.family(&LATENCY);
        for (key, stats) in &rows {
            if let Some(series) = series(key) {
                out.histogram(&series.latency, &stats.latency);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
    };

    use exporter_common::block::{OP_DISCARD, OP_FLUSH, OP_OTHER, OP_READ, OP_WRITE, make_dev};

    use super::*;
    use crate::collectors::testing::{FakePerCpuHash, scrape};

    /// Devices by `dev`: (instance, name); shared so a test can change them
    /// between scrapes.
    #[derive(Clone, Default)]
    struct FakeDevices(Arc<Mutex<HashMap<u32, (u64, String)>>>);

    impl FakeDevices {
        fn set(&self, dev: u32, instance: u64, name: &str) {
            self.0.lock().unwrap().insert(dev, (instance, name.to_owned()));
        }

        fn unset(&self, dev: u32) {
            self.0.lock().unwrap().remove(&dev);
        }
    }

    impl Devices for FakeDevices {
        fn instance(&self, major: u32, minor: u32) -> Option<u64> {
            self.0.lock().unwrap().get(&make_dev(major, minor)).map(|(instance, _)| *instance)
        }

        fn name(&self, major: u32, minor: u32) -> Option<String> {
            self.0.lock().unwrap().get(&make_dev(major, minor)).map(|(_, name)| name.clone())
        }
    }

    const VDA: u32 = make_dev(254, 0);
    const LOOP0: u32 = make_dev(7, 0);

    fn stats(requests: u64, bytes: u64, latencies: &[u64]) -> BlockIoStats {
        let mut stats = BlockIoStats { requests, bytes, ..BlockIoStats::default() };
        latencies.iter().for_each(|ns| stats.latency.record(*ns));
        stats
    }

    type Map = FakePerCpuHash<BlockIoKey, BlockIoStats>;

    fn block(
        entries: &[(u32, u32, Vec<BlockIoStats>)],
        devices: &FakeDevices,
        exclude: Option<&str>,
    ) -> Block<Map, FakeDevices> {
        let entries: BTreeMap<_, _> =
            entries.iter().map(|(dev, op, cpus)| (BlockIoKey { dev: *dev, op: *op }, cpus.clone())).collect();
        Block::new(FakePerCpuHash { entries }, devices.clone(), exclude.map(|e| Regex::new(e).unwrap()))
    }

    fn keys(block: &Block<Map, FakeDevices>) -> Vec<BlockIoKey> {
        block.state.lock().unwrap().map.entries.keys().copied().collect()
    }

    #[test]
    fn sums_cpus_per_device_and_op() {
        let devices = FakeDevices::default();
        devices.set(VDA, 1, "vda");
        devices.set(LOOP0, 2, "loop0");
        let block = block(
            &[
                (VDA, OP_READ, vec![stats(3, 12_288, &[2_000_000]), stats(u64::MAX, 4096, &[5_000])]),
                (VDA, OP_WRITE, vec![stats(1, 65_536, &[]), stats(0, 0, &[])]),
                (LOOP0, OP_FLUSH, vec![stats(7, 0, &[]), stats(0, 0, &[])]),
            ],
            &devices,
            None,
        );
        let text = scrape(&block);
        // Sums wrap like the kernel's own counters rather than panic.
        assert!(text.contains("\nkernel_block_io_requests_total{device=\"vda\",op=\"read\"} 2\n"), "{text}");
        assert!(text.contains("\nkernel_block_io_bytes_total{device=\"vda\",op=\"read\"} 16384\n"), "{text}");
        assert!(text.contains("\nkernel_block_io_requests_total{device=\"vda\",op=\"write\"} 1\n"), "{text}");
        assert!(text.contains("\nkernel_block_io_bytes_total{device=\"vda\",op=\"write\"} 65536\n"), "{text}");
        assert!(text.contains("\nkernel_block_io_requests_total{device=\"loop0\",op=\"flush\"} 7\n"), "{text}");
        assert!(text.contains("\nkernel_block_io_latency_seconds_count{device=\"vda\",op=\"read\"} 2\n"), "{text}");
        assert!(
            text.contains("\nkernel_block_io_latency_seconds_sum{device=\"vda\",op=\"read\"} 0.002005\n"),
            "{text}"
        );
        assert!(text.contains("\nkernel_block_io_latency_seconds_count{device=\"vda\",op=\"write\"} 0\n"), "{text}");
        // Only pairs that ever counted; sorted by device name, then op.
        assert!(!text.contains("op=\"discard\""), "{text}");
        let order: Vec<&str> =
            text.lines().filter(|line| line.starts_with("kernel_block_io_requests_total{")).collect();
        assert_eq!(order.len(), 3, "{text}");
        assert!(order[0].contains("loop0") && order[1].contains("\"read\"") && order[2].contains("\"write\""));
    }

    #[test]
    fn every_op_class_has_its_label() {
        let devices = FakeDevices::default();
        devices.set(VDA, 1, "vda");
        let entries: Vec<_> = [OP_READ, OP_WRITE, OP_DISCARD, OP_FLUSH, OP_OTHER]
            .into_iter()
            .map(|op| (VDA, op, vec![stats(u64::from(op) + 1, 0, &[])]))
            .collect();
        let text = scrape(&block(&entries, &devices, None));
        for (value, op) in OP_LABELS.iter().enumerate() {
            let line = format!("\nkernel_block_io_requests_total{{device=\"vda\",op=\"{op}\"}} {}\n", value + 1);
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    #[test]
    fn excluded_devices_have_no_series_but_keep_counting() {
        let devices = FakeDevices::default();
        devices.set(VDA, 1, "vda");
        devices.set(LOOP0, 2, "loop0");
        let block = block(
            &[(VDA, OP_READ, vec![stats(1, 512, &[])]), (LOOP0, OP_READ, vec![stats(1, 512, &[])])],
            &devices,
            Some("^loop"),
        );
        let text = scrape(&block);
        assert!(!text.contains("loop0"), "{text}");
        assert!(text.contains("device=\"vda\""), "{text}");
        // Still there: the device exists, and --collector.block.device-exclude
        // is not a reason to lose its history.
        assert_eq!(keys(&block).len(), 2);
    }

    #[test]
    fn gone_devices_lose_their_series_and_keys() {
        let devices = FakeDevices::default();
        devices.set(VDA, 1, "vda");
        devices.set(LOOP0, 2, "loop0");
        let block = block(
            &[
                (VDA, OP_READ, vec![stats(1, 512, &[])]),
                (LOOP0, OP_READ, vec![stats(1, 512, &[])]),
                (LOOP0, OP_WRITE, vec![stats(1, 512, &[])]),
            ],
            &devices,
            None,
        );
        assert!(scrape(&block).contains("device=\"loop0\""));

        devices.unset(LOOP0);
        let text = scrape(&block);
        assert!(!text.contains("loop0"), "{text}");
        assert!(text.contains("device=\"vda\""), "{text}");
        assert_eq!(keys(&block), vec![BlockIoKey { dev: VDA, op: OP_READ }]);
        assert!(!block.state.lock().unwrap().known.contains_key(&LOOP0));
    }

    #[test]
    fn a_number_taken_by_another_device_starts_afresh() {
        let devices = FakeDevices::default();
        devices.set(LOOP0, 2, "loop0");
        let block = block(&[(LOOP0, OP_READ, vec![stats(9, 512, &[])])], &devices, None);
        assert!(scrape(&block).contains("device=\"loop0\""));

        // The same name again (a loop device removed and added back): its
        // counter goes on.
        devices.set(LOOP0, 3, "loop0");
        assert!(scrape(&block).contains("kernel_block_io_requests_total{device=\"loop0\",op=\"read\"} 9\n"));

        // Another device under the number: the old counts go.
        devices.set(LOOP0, 4, "nbd0");
        let text = scrape(&block);
        assert!(!text.contains("loop0") && !text.contains("nbd0"), "{text}");
        assert!(keys(&block).is_empty());
        assert!(block.state.lock().unwrap().known.is_empty());
    }

    #[test]
    fn map_errors_are_reported() {
        struct Broken;
        impl PerCpuHashRead<BlockIoKey, BlockIoStats> for Broken {
            fn keys(&self) -> Result<Vec<BlockIoKey>, MapError> {
                Err(MapError::KeyNotFound)
            }
            fn for_each_cpu(&self, _: &BlockIoKey, _: &mut dyn FnMut(&BlockIoStats)) -> Result<(), MapError> {
                Err(MapError::KeyNotFound)
            }
            fn remove(&mut self, _: &BlockIoKey) -> Result<(), MapError> {
                Err(MapError::KeyNotFound)
            }
        }
        let block = Block::new(Broken, FakeDevices::default(), None);
        let mut buf = bytes::BytesMut::new();
        assert!(block.collect(&mut Encoder::new(&mut buf)).is_err());
    }

    #[test]
    fn names_come_from_uevent_devname() {
        assert_eq!(devname("MAJOR=7\nMINOR=0\nDEVNAME=loop0\nDEVTYPE=disk\nDISKSEQ=9\n"), Some("loop0"));
        assert_eq!(devname("MAJOR=104\nMINOR=0\nDEVNAME=cciss/c0d0\nDEVTYPE=disk\n"), Some("cciss/c0d0"));
        assert_eq!(devname("MAJOR=7\nMINOR=0\nDEVNAME=\n"), None);
        assert_eq!(devname("MAJOR=7\n"), None);
    }

    #[test]
    fn sysfs_devices_by_number() {
        let root = std::env::temp_dir().join(format!("kernel-exporter-block-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("7:0")).unwrap();
        fs::write(root.join("7:0/uevent"), "MAJOR=7\nMINOR=0\nDEVNAME=loop0\nDEVTYPE=disk\n").unwrap();
        let sys = SysDevBlock { root: root.clone() };
        let instance = sys.instance(7, 0);
        assert!(instance.is_some());
        assert_eq!(sys.name(7, 0).as_deref(), Some("loop0"));
        assert_eq!(sys.instance(7, 1), None);
        assert_eq!(sys.name(7, 1), None);

        // A device removed and another added under the number: a new node.
        fs::create_dir_all(root.join("new")).unwrap();
        fs::remove_dir_all(root.join("7:0")).unwrap();
        fs::rename(root.join("new"), root.join("7:0")).unwrap();
        assert_ne!(sys.instance(7, 0), instance);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn sysfs_names_the_running_kernels_disks() {
        // Every disk sysfs lists by number has a DEVNAME, which is the
        // name in /proc/diskstats.
        let diskstats = fs::read_to_string("/proc/diskstats").unwrap();
        let sys = SysDevBlock { root: PathBuf::from(SYS_DEV_BLOCK) };
        for line in diskstats.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (major, minor) = (fields[0].parse().unwrap(), fields[1].parse().unwrap());
            assert_eq!(sys.name(major, minor).as_deref(), Some(fields[2]), "{line}");
        }
    }

    #[test]
    fn flush_sequence_flag_from_btf_or_the_old_constant() {
        let enum_values = |bit: i64| vec![("__RQF_STARTED".to_owned(), 0), ("__RQF_FLUSH_SEQ".to_owned(), bit)];
        assert_eq!(flush_seq_flag(Some(&enum_values(1))).unwrap(), 1 << 1);
        assert_eq!(flush_seq_flag(Some(&enum_values(7))).unwrap(), 1 << 7);
        assert_eq!(flush_seq_flag(None).unwrap(), 1 << 4);
        assert!(flush_seq_flag(Some(&enum_values(40))).is_err());
        assert!(flush_seq_flag(Some(&[("__RQF_STARTED".to_owned(), 0)])).is_err());
        // The running kernel (6.18 on the project's machines) has the enum.
        if let Ok(btf) = Btf::from_kernel() {
            let values = kernel_values(&btf).unwrap();
            assert_eq!(values.len(), 1);
            assert_ne!(values[0].1, 0);
        }
    }
}
