//! `net`: packets and bytes per network device, received and transmitted,
//! and packets the kernel dropped per drop reason, counted by the kernel
//! programs in `exporter-ebpf/src/net.rs`.
//!
//! Devices are those of the exporter's own network namespace, keyed by
//! ifindex in the kernel and named here at each scrape (one `SIOCGIFNAME`
//! ioctl per device), so a renamed device gets its new name. A device that
//! is gone (deleted, or moved to another namespace) stops being exported
//! and its map entry is deleted, so hosts whose containers create and
//! delete veth devices all day stay within the map's bound
//! (`NET_DEVICE_ENTRIES` devices at once). `--collector.net.device-exclude`
//! leaves devices out of the output by name; the kernel still counts them.
//!
//! Drop reasons are the running kernel's `enum skb_drop_reason`, read from
//! its BTF at start-up, so a newer kernel's new reasons appear without a
//! code change. Label values are the enumerator names without the
//! `SKB_DROP_REASON_` prefix, in the kernel's upper case (`NO_SOCKET`,
//! `NOT_SPECIFIED`), as the tracepoint's own text output prints them;
//! reasons outside the enum (other subsystems' reasons, which carry their
//! subsystem in the high bits) are `other`. Only reasons that were ever
//! counted are exported, as with syscalls.
//!
//! Byte counts include the link-layer header: transmit bytes are the
//! length the driver was handed, as drivers count them. Received packets
//! have lost their link-layer header by the time the stack sees them; the
//! programs add back the bytes the driver pulled (14 for Ethernet), so
//! received bytes match `/proc/net/dev` for drivers that count the frame
//! (veth exactly, in the end-to-end tests). Drivers that count the frame
//! check sequence or a VLAN tag the NIC stripped differ by those bytes.
//! Loopback's own counters leave out its 14-byte pseudo Ethernet header
//! (it measures packets after `eth_type_trans`), so for `lo` these bytes
//! are `/proc/net/dev`'s plus 14 per packet, in both directions.
//!
//! Packets are counted as the stack sees them, after GRO: a driver that
//! merges received TCP segments counts each segment, the exporter the
//! merged packet. Loopback never merges.
//!
//! Cost: one per-CPU hash update per packet received and sent, a few
//! kernel memory reads each; one program run per dropped packet.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{Mutex, PoisonError},
};

use aya::{Ebpf, maps::MapError, sys::SyscallError};
use exporter_common::net::{
    DeviceCounters, DropCounts, MAX_DROP_REASONS, NET_DEVICE_COUNTERS_MAP, NET_DROPS_MAP, offsets,
};
use regex::Regex;

use super::{
    Collector, CollectorError, CollectorOptions, CollectorSpec, KernelOffset, PerCpuHashRead, PerCpuRead, Tracepoint,
};
use crate::encode::{Encoder, Family, Series};

const RECEIVE_PACKETS: Family = Family::counter(
    "kernel_net_receive_packets_total",
    "Packets received, by network device of the exporter's namespace (net:netif_receive_skb, after GRO).",
);
const RECEIVE_BYTES: Family = Family::counter(
    "kernel_net_receive_bytes_total",
    "Bytes received, by network device (net:netif_receive_skb: the packet's length plus the link-layer header \
     the driver pulled off, as /proc/net/dev counts them).",
);
const TRANSMIT_PACKETS: Family = Family::counter(
    "kernel_net_transmit_packets_total",
    "Packets the driver accepted for transmission, by network device (net:net_dev_xmit with NETDEV_TX_OK).",
);
const TRANSMIT_BYTES: Family = Family::counter(
    "kernel_net_transmit_bytes_total",
    "Bytes the driver accepted for transmission, by network device (net:net_dev_xmit skb_len).",
);
const DROPS: Family = Family::counter(
    "kernel_net_drops_total",
    "Packets the kernel dropped, by reason (skb:kfree_skb; enum skb_drop_reason of the running kernel without \
     the SKB_DROP_REASON_ prefix, other for reasons outside it), for devices and sockets of the exporter's \
     namespace.",
);

/// The per-device families, in the order of [`Device::series`].
const DEVICE_FAMILIES: [Family; 4] = [RECEIVE_PACKETS, RECEIVE_BYTES, TRANSMIT_PACKETS, TRANSMIT_BYTES];

/// The kernel enum naming drop reasons, and the prefix its enumerators
/// carry.
const DROP_REASON_ENUM: &str = "skb_drop_reason";
const DROP_REASON_PREFIX: &str = "SKB_DROP_REASON_";
/// Label of every drop whose reason has no name of its own.
const OTHER_REASON: &str = "other";

const fn offset(global: &'static str, type_name: &'static str, member: &'static str, size: u32) -> KernelOffset {
    KernelOffset { global, type_name, member, size }
}

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "net",
    help: "packets and bytes per network device and drops per reason, from the net and skb tracepoints",
    default_enabled: true,
    tracepoints: &[
        Tracepoint { program: "netif_receive_skb", category: "net", name: "netif_receive_skb" },
        Tracepoint { program: "net_dev_xmit", category: "net", name: "net_dev_xmit" },
        Tracepoint { program: "kfree_skb", category: "skb", name: "kfree_skb" },
    ],
    offsets: &[
        offset(offsets::SK_BUFF_DEV, "sk_buff", "dev", 8),
        offset(offsets::SK_BUFF_SK, "sk_buff", "sk", 8),
        offset(offsets::SK_BUFF_LEN, "sk_buff", "len", 4),
        offset(offsets::SK_BUFF_HEAD, "sk_buff", "head", 8),
        offset(offsets::SK_BUFF_DATA, "sk_buff", "data", 8),
        offset(offsets::SK_BUFF_MAC_HEADER, "sk_buff", "mac_header", 2),
        offset(offsets::NET_DEVICE_IFINDEX, "net_device", "ifindex", 4),
        offset(offsets::NET_DEVICE_NET, "net_device", "nd_net.net", 8),
        offset(offsets::SOCK_COMMON_NET, "sock_common", "skc_net.net", 8),
        offset(offsets::NET_NS_INUM, "net", "ns.inum", 4),
    ],
    #[cfg(test)]
    families: &[RECEIVE_PACKETS, RECEIVE_BYTES, TRANSMIT_PACKETS, TRANSMIT_BYTES, DROPS],
    open,
};

fn open(ebpf: &mut Ebpf, options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    // The programs were loaded with this namespace's inode; 0 (unreadable)
    // would have them count nothing.
    crate::bpf::own_netns_inum().map_err(|source| CollectorError::Io {
        what: "read the exporter's network namespace (/proc/self/ns/net)",
        source,
    })?;
    let reasons = crate::btf::kernel()?
        .enum_values(DROP_REASON_ENUM)
        .ok_or(CollectorError::KernelEnum { name: DROP_REASON_ENUM })?;
    let names = IoctlNames::new().map_err(|source| CollectorError::Io {
        what: "open a socket to look up network device names (socket(AF_INET, SOCK_DGRAM))",
        source,
    })?;
    let devices = super::take_per_cpu_hash::<u32, DeviceCounters>(ebpf, NET_DEVICE_COUNTERS_MAP)?;
    let drops = super::take_per_cpu_array::<DropCounts>(ebpf, NET_DROPS_MAP)?;
    Ok(Box::new(Net::new(devices, names, options.net_device_exclude.clone(), drops, &reasons)))
}

/// Looks up the name of a network device by ifindex.
trait DeviceNames: Send {
    /// The name of device `ifindex` in the exporter's namespace, or `None`
    /// if no device there has that index (any more).
    fn name(&self, ifindex: u32) -> io::Result<Option<String>>;
}

/// [`DeviceNames`] by `SIOCGIFNAME` on a socket of the exporter's
/// namespace: one syscall per device, and what `if_indextoname(3)` does
/// minus opening and closing a socket each time.
struct IoctlNames {
    socket: OwnedFd,
}

impl IoctlNames {
    fn new() -> io::Result<Self> {
        // SAFETY: socket(2) takes no pointers; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Self { socket: unsafe { OwnedFd::from_raw_fd(fd) } })
    }
}

impl DeviceNames for IoctlNames {
    fn name(&self, ifindex: u32) -> io::Result<Option<String>> {
        let Ok(index) = libc::c_int::try_from(ifindex) else { return Ok(None) };
        // SAFETY: all-zero bytes are a valid `ifreq` (integers, arrays and a
        // union of them).
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        request.ifr_ifru.ifru_ifindex = index;
        // SAFETY: SIOCGIFNAME reads the index from and writes a
        // NUL-terminated name of at most IFNAMSIZ bytes into `request`,
        // which lives across the call.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), libc::SIOCGIFNAME as _, &mut request) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            return if error.raw_os_error() == Some(libc::ENODEV) { Ok(None) } else { Err(error) };
        }
        let bytes: Vec<u8> = request.ifr_name.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }
}

/// The `reason` label of every drop reason below [`MAX_DROP_REASONS`]:
/// the enumerator's name without the prefix, or `None` (counted as
/// `other`) where the enum names no reason with that value.
fn reason_labels(enumerators: &[(String, i64)]) -> Vec<Option<String>> {
    let mut labels = vec![None; MAX_DROP_REASONS];
    for (name, value) in enumerators {
        let Some(reason) = name.strip_prefix(DROP_REASON_PREFIX) else { continue };
        // SKB_DROP_REASON_MAX counts the reasons; it is not one.
        if reason == "MAX" {
            continue;
        }
        if let Some(label @ None) = usize::try_from(*value).ok().and_then(|value| labels.get_mut(value)) {
            *label = Some(reason.to_owned());
        }
    }
    labels
}

/// A device seen in the map, with its series built for its current name.
struct Device {
    name: String,
    /// Receive packets and bytes, transmit packets and bytes; `None` for
    /// an excluded device.
    series: Option<[Series; 4]>,
}

impl Device {
    fn new(name: String, exclude: Option<&Regex>) -> Self {
        let series = (!exclude.is_some_and(|exclude| exclude.is_match(&name)))
            .then(|| DEVICE_FAMILIES.map(|family| Series::new(&family, &[("device", &name)])));
        Self { name, series }
    }
}

/// The device map and what the daemon knows about its keys.
struct Devices<H, N> {
    map: H,
    names: N,
    exclude: Option<Regex>,
    known: HashMap<u32, Device>,
}

impl<H: PerCpuHashRead<u32, DeviceCounters>, N: DeviceNames> Devices<H, N> {
    /// Names every device in the map, forgets and deletes those that are
    /// gone, and returns the totals of the exported ones by ifindex, in
    /// name order.
    fn read(&mut self) -> Result<Vec<(u32, DeviceCounters)>, MapError> {
        let mut keys = self.map.keys()?;
        keys.sort_unstable();
        let mut rows = Vec::with_capacity(keys.len());
        for &ifindex in &keys {
            let name = self
                .names
                .name(ifindex)
                .map_err(|io_error| MapError::SyscallError(SyscallError { call: "ioctl(SIOCGIFNAME)", io_error }))?;
            let Some(name) = name else {
                // Gone: its series end here and its entry frees up. A failed
                // delete leaves the key for the next scrape to retry.
                self.known.remove(&ifindex);
                let _ = self.map.remove(&ifindex);
                continue;
            };
            let device = self.known.entry(ifindex).or_insert_with(|| Device::new(name.clone(), self.exclude.as_ref()));
            if device.name != name {
                // Renamed: the series follow the new name.
                *device = Device::new(name, self.exclude.as_ref());
            }
            if device.series.is_none() {
                continue;
            }
            let mut total = DeviceCounters::default();
            match self.map.for_each_cpu(&ifindex, &mut |cpu| total = total.merged(*cpu)) {
                Ok(()) => rows.push((ifindex, total)),
                // Deleted since the keys were read: nothing to report.
                Err(MapError::KeyNotFound) => {}
                Err(error) => return Err(error),
            }
        }
        self.known.retain(|ifindex, _| keys.binary_search(ifindex).is_ok());
        rows.sort_by(|(a, _), (b, _)| self.known[a].name.cmp(&self.known[b].name));
        Ok(rows)
    }
}

struct Net<H, N, D> {
    devices: Mutex<Devices<H, N>>,
    drops: D,
    /// Series of each named drop reason, by reason number.
    reason_series: Box<[Option<Series>]>,
    other_series: Series,
}

impl<H, N, D> Net<H, N, D> {
    fn new(map: H, names: N, exclude: Option<Regex>, drops: D, reasons: &[(String, i64)]) -> Self {
        let reason_series = reason_labels(reasons)
            .into_iter()
            .map(|label| label.map(|label| Series::new(&DROPS, &[("reason", &label)])))
            .collect();
        Self {
            devices: Mutex::new(Devices { map, names, exclude, known: HashMap::new() }),
            drops,
            reason_series,
            other_series: Series::new(&DROPS, &[("reason", OTHER_REASON)]),
        }
    }
}

impl<H, N, D> Collector for Net<H, N, D>
where
    H: PerCpuHashRead<u32, DeviceCounters>,
    N: DeviceNames,
    D: PerCpuRead<DropCounts>,
{
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        {
            // A panic elsewhere while holding the lock leaves nothing half
            // updated that a later scrape could not redo.
            let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
            let rows = devices.read()?;
            for (i, family) in DEVICE_FAMILIES.iter().enumerate() {
                out.family(family);
                for (ifindex, c) in &rows {
                    if let Some(series) = devices.known.get(ifindex).and_then(|device| device.series.as_ref()) {
                        out.sample(&series[i], [c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes][i]);
                    }
                }
            }
        }

        // 4 KiB on the stack, well within a worker thread's 2 MiB.
        let mut total = DropCounts::default();
        self.drops.for_each_cpu(0, &mut |cpu| total.merge(cpu))?;
        out.family(&DROPS);
        let mut other = total.other;
        for (series, &count) in self.reason_series.iter().zip(total.reasons.iter()) {
            match series {
                Some(series) if count != 0 => out.sample(series, count),
                Some(_) => {}
                None => other = other.wrapping_add(count),
            }
        }
        if other != 0 {
            out.sample(&self.other_series, other);
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

    use super::*;
    use crate::collectors::testing::{FakePerCpu, FakePerCpuHash, scrape};

    /// Device names by ifindex; tests change them between scrapes.
    #[derive(Clone, Default)]
    struct FakeNames(Arc<Mutex<BTreeMap<u32, String>>>);

    impl FakeNames {
        fn set(&self, ifindex: u32, name: Option<&str>) {
            let mut names = self.0.lock().unwrap();
            match name {
                Some(name) => names.insert(ifindex, name.to_owned()),
                None => names.remove(&ifindex),
            };
        }
    }

    impl DeviceNames for FakeNames {
        fn name(&self, ifindex: u32) -> io::Result<Option<String>> {
            Ok(self.0.lock().unwrap().get(&ifindex).cloned())
        }
    }

    struct FailingNames;

    impl DeviceNames for FailingNames {
        fn name(&self, _ifindex: u32) -> io::Result<Option<String>> {
            Err(io::Error::from_raw_os_error(libc::EBADF))
        }
    }

    fn counters(rx_packets: u64, rx_bytes: u64, tx_packets: u64, tx_bytes: u64) -> DeviceCounters {
        DeviceCounters { rx_packets, rx_bytes, tx_packets, tx_bytes }
    }

    fn no_drops() -> FakePerCpu<DropCounts> {
        FakePerCpu { cpus: vec![vec![DropCounts::default()]] }
    }

    fn reasons() -> Vec<(String, i64)> {
        [
            ("SKB_NOT_DROPPED_YET", 0),
            ("SKB_CONSUMED", 1),
            ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
            ("SKB_DROP_REASON_NO_SOCKET", 3),
            ("SKB_DROP_REASON_MAX", 4),
            ("SKB_DROP_REASON_SUBSYS_MASK", 0xffff_0000),
        ]
        .map(|(name, value)| (name.to_owned(), value))
        .to_vec()
    }

    type TestNet = Net<FakePerCpuHash<u32, DeviceCounters>, FakeNames, FakePerCpu<DropCounts>>;

    fn net(entries: &[(u32, Vec<DeviceCounters>)], names: &FakeNames, exclude: Option<&str>) -> TestNet {
        let map = FakePerCpuHash { entries: entries.iter().cloned().collect() };
        Net::new(map, names.clone(), exclude.map(|e| Regex::new(e).unwrap()), no_drops(), &reasons())
    }

    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|line| !line.starts_with('#')).collect()
    }

    fn map_keys(net: &TestNet) -> Vec<u32> {
        net.devices.lock().unwrap().map.entries.keys().copied().collect()
    }

    #[test]
    fn sums_cpus_and_names_devices_in_name_order() {
        let names = FakeNames::default();
        names.set(1, Some("lo"));
        names.set(7, Some("eth0"));
        let net = net(
            &[(1, vec![counters(1, 100, 2, 200), counters(3, 300, 4, 400)]), (7, vec![counters(5, 6, 7, 8); 2])],
            &names,
            None,
        );
        assert_eq!(
            samples(&scrape(&net)),
            [
                "kernel_net_receive_packets_total{device=\"eth0\"} 10",
                "kernel_net_receive_packets_total{device=\"lo\"} 4",
                "kernel_net_receive_bytes_total{device=\"eth0\"} 12",
                "kernel_net_receive_bytes_total{device=\"lo\"} 400",
                "kernel_net_transmit_packets_total{device=\"eth0\"} 14",
                "kernel_net_transmit_packets_total{device=\"lo\"} 6",
                "kernel_net_transmit_bytes_total{device=\"eth0\"} 16",
                "kernel_net_transmit_bytes_total{device=\"lo\"} 600",
            ]
        );
    }

    #[test]
    fn excluded_devices_are_counted_but_not_exported() {
        let names = FakeNames::default();
        names.set(1, Some("lo"));
        names.set(9, Some("veth1a2b"));
        let net = net(&[(1, vec![counters(1, 1, 1, 1)]), (9, vec![counters(2, 2, 2, 2)])], &names, Some("^veth"));
        let text = scrape(&net);
        assert!(!text.contains("veth"), "{text}");
        assert!(text.contains("kernel_net_receive_packets_total{device=\"lo\"} 1\n"), "{text}");
        // Excluded is not gone: its entry stays.
        assert_eq!(map_keys(&net), [1, 9]);
    }

    #[test]
    fn gone_devices_stop_and_their_entries_are_deleted() {
        let names = FakeNames::default();
        names.set(1, Some("lo"));
        names.set(42, Some("veth0"));
        let net = net(&[(1, vec![counters(1, 1, 1, 1)]), (42, vec![counters(5, 5, 5, 5)])], &names, None);
        assert!(scrape(&net).contains("{device=\"veth0\"} 5\n"));

        // veth0 is deleted; a new device takes ifindex 43.
        names.set(42, None);
        names.set(43, Some("veth1"));
        net.devices.lock().unwrap().map.entries.insert(43, vec![counters(9, 9, 9, 9)]);
        let text = scrape(&net);
        assert!(!text.contains("veth0"), "{text}");
        assert!(text.contains("kernel_net_transmit_bytes_total{device=\"veth1\"} 9\n"), "{text}");
        assert_eq!(map_keys(&net), [1, 43]);
        assert_eq!(net.devices.lock().unwrap().known.keys().count(), 2);

        // Churn stays bounded by the devices that exist at once.
        for ifindex in 100..1100 {
            names.set(ifindex, Some(&format!("veth{ifindex}")));
            net.devices.lock().unwrap().map.entries.insert(ifindex, vec![counters(1, 1, 1, 1)]);
            scrape(&net);
            names.set(ifindex, None);
        }
        scrape(&net);
        assert_eq!(map_keys(&net), [1, 43]);
        assert_eq!(net.devices.lock().unwrap().known.len(), 2);
    }

    #[test]
    fn renamed_devices_follow_their_name_and_the_exclusion() {
        let names = FakeNames::default();
        names.set(5, Some("eth1"));
        let net = net(&[(5, vec![counters(3, 3, 3, 3)])], &names, Some("^tmp"));
        assert!(scrape(&net).contains("{device=\"eth1\"} 3\n"));
        names.set(5, Some("uplink"));
        let text = scrape(&net);
        assert!(!text.contains("eth1"), "{text}");
        assert!(text.contains("kernel_net_receive_bytes_total{device=\"uplink\"} 3\n"), "{text}");
        names.set(5, Some("tmp0"));
        assert!(samples(&scrape(&net)).is_empty());
    }

    #[test]
    fn name_lookup_failures_fail_the_scrape() {
        let map = FakePerCpuHash { entries: [(1, vec![counters(1, 1, 1, 1)])].into_iter().collect() };
        let net = Net::new(map, FailingNames, None, no_drops(), &reasons());
        let mut buf = bytes::BytesMut::new();
        assert!(net.collect(&mut Encoder::new(&mut buf)).is_err());
    }

    #[test]
    fn drop_reasons_come_from_the_enum_and_the_rest_is_other() {
        let labels = reason_labels(&reasons());
        assert_eq!(labels.len(), MAX_DROP_REASONS);
        assert_eq!(labels[..5], [None, None, Some("NOT_SPECIFIED".to_owned()), Some("NO_SOCKET".to_owned()), None]);
        assert!(labels[5..].iter().all(Option::is_none));

        let mut cpu0 = DropCounts::default();
        cpu0.reasons[3] = 5;
        cpu0.reasons[1] = 1; // no name: other
        cpu0.other = 2; // past the bound: other
        let mut cpu1 = DropCounts::default();
        cpu1.reasons[3] = 10;
        cpu1.reasons[MAX_DROP_REASONS - 1] = 4; // no name: other
        let map = FakePerCpuHash::<u32, DeviceCounters> { entries: BTreeMap::new() };
        let net =
            Net::new(map, FakeNames::default(), None, FakePerCpu { cpus: vec![vec![cpu0], vec![cpu1]] }, &reasons());
        let text = scrape(&net);
        // Reasons never counted are left out.
        assert_eq!(
            samples(&text),
            ["kernel_net_drops_total{reason=\"NO_SOCKET\"} 15", "kernel_net_drops_total{reason=\"other\"} 7"]
        );
        assert!(text.contains("# TYPE kernel_net_drops_total counter\n"), "{text}");
    }

    #[test]
    fn reads_the_running_kernels_drop_reasons() {
        // As btf::tests::reads_the_running_kernel: the project's machines
        // have BTF.
        let Ok(btf) = crate::btf::Btf::from_kernel() else { return };
        let labels = reason_labels(&btf.enum_values(DROP_REASON_ENUM).expect("enum skb_drop_reason"));
        let named: Vec<&str> = labels.iter().flatten().map(String::as_str).collect();
        assert!(named.contains(&"NO_SOCKET") && named.contains(&"NOT_SPECIFIED"), "{named:?}");
        assert!(!named.contains(&"MAX") && !named.contains(&OTHER_REASON));
        assert_eq!(named.len(), named.iter().collect::<std::collections::HashSet<_>>().len());
    }
}
