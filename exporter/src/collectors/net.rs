//! `net`: packets and bytes per network device, received and transmitted,
//! from the drivers' own counters (`/proc/net/dev`), and packets the kernel
//! dropped per drop reason, counted by the kernel program in
//! `exporter-ebpf/src/net.rs`.
//!
//! Devices are those of the exporter's own network namespace, the ones
//! `/proc/net/dev` shows it, named as there. A device that is gone
//! (deleted, or moved to another namespace) stops being exported, so hosts
//! whose containers create and delete veth devices all day keep only the
//! series of the devices that exist; at most [`MAX_DEVICES`] are exported at
//! once. `--collector.net.device-exclude` leaves devices out by name.
//!
//! Why not a program per packet: the kernel counts every packet per device
//! anyway, and a program on `netif_receive_skb` and `net_dev_xmit` cost
//! small-packet workloads 16% of their throughput on this kind of machine
//! to count them again. The numbers are now exactly the drivers' (bytes as
//! each driver counts them, loopback without its pseudo header).
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
//! Cost: one program run per dropped packet; nothing per packet delivered.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use aya::{Ebpf, maps::MapError};
use exporter_common::net::{DropCounts, MAX_DROP_REASONS, NET_DROPS_MAP, offsets};
use regex::Regex;

use super::{
    Collector, CollectorError, CollectorOption, CollectorOptions, CollectorSpec, KernelOffset, OptionKind, PerCpuRead,
    Tracepoint,
    procfs::{self, ProcFile},
};
use crate::exposition::encode::{Encoder, Family, Series};

const RECEIVE_PACKETS: Family = Family::counter(
    "kernel_net_receive_packets_total",
    "Packets received, by network device of the exporter's namespace, as the driver counts them (/proc/net/dev).",
);
const RECEIVE_BYTES: Family = Family::counter(
    "kernel_net_receive_bytes_total",
    "Bytes received, by network device, as the driver counts them (/proc/net/dev).",
);
const TRANSMIT_PACKETS: Family = Family::counter(
    "kernel_net_transmit_packets_total",
    "Packets transmitted, by network device, as the driver counts them (/proc/net/dev).",
);
const TRANSMIT_BYTES: Family = Family::counter(
    "kernel_net_transmit_bytes_total",
    "Bytes transmitted, by network device, as the driver counts them (/proc/net/dev).",
);
const DROPS: Family = Family::counter(
    "kernel_net_drops_total",
    "Packets the kernel dropped, by reason (skb:kfree_skb; enum skb_drop_reason of the running kernel without \
     the SKB_DROP_REASON_ prefix, other for reasons outside it), for devices and sockets of the exporter's \
     namespace.",
);

/// The per-device families, in the order of [`Device::series`] and of
/// [`DeviceRow::values`].
const DEVICE_FAMILIES: [Family; 4] = [RECEIVE_PACKETS, RECEIVE_BYTES, TRANSMIT_PACKETS, TRANSMIT_BYTES];

/// Bound of the `device` label: devices exported at once. Far more than a
/// host has, containers' veth halves included (a busy Kubernetes node has a
/// few hundred); devices beyond it are left out until others go.
pub(crate) const MAX_DEVICES: usize = 4096;

/// The kernel enum naming drop reasons, and the prefix its enumerators
/// carry.
const DROP_REASON_ENUM: &str = "skb_drop_reason";
const DROP_REASON_PREFIX: &str = "SKB_DROP_REASON_";
/// Label of every drop whose reason has no name of its own.
const OTHER_REASON: &str = "other";

const fn offset(global: &'static str, type_name: &'static str, member: &'static str, size: u32) -> KernelOffset {
    KernelOffset { global, type_name, member, size }
}

/// `--collector.net.device-exclude`.
const DEVICE_EXCLUDE: CollectorOption = CollectorOption {
    name: "device-exclude",
    help: "Regex of network devices (names as in /proc/net/dev) to leave out of the net collector's series",
    kind: OptionKind::Regex,
};

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "net",
    help: "packets and bytes per network device (from /proc/net/dev) and drops per reason; its program fires \
           once per dropped packet, about 20 ns above the kernel's floor, never per packet delivered",
    default_enabled: true,
    tracepoints: &[Tracepoint::btf("kfree_skb", "skb", "kfree_skb")],
    offsets: &[
        offset(offsets::SK_BUFF_DEV, "sk_buff", "dev", 8),
        offset(offsets::SK_BUFF_SK, "sk_buff", "sk", 8),
        offset(offsets::NET_DEVICE_NET, "net_device", "nd_net.net", 8),
        offset(offsets::SOCK_COMMON_NET, "sock_common", "skc_net.net", 8),
        offset(offsets::NET_NS_INUM, "net", "ns.inum", 4),
    ],
    kernel_values: None,
    options: &[DEVICE_EXCLUDE],
    #[cfg(test)]
    families: &[RECEIVE_PACKETS, RECEIVE_BYTES, TRANSMIT_PACKETS, TRANSMIT_BYTES, DROPS],
    open,
};

fn open(ebpf: &mut Ebpf, options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    // The program was loaded with this namespace's inode; 0 (unreadable)
    // would have it count nothing.
    crate::kernel::bpf::own_netns_inum().map_err(|source| CollectorError::Io {
        what: "read the exporter's network namespace (/proc/self/ns/net)",
        source,
    })?;
    let reasons = crate::kernel::btf::kernel()?
        .enum_values(DROP_REASON_ENUM)
        .ok_or(CollectorError::KernelEnum { name: DROP_REASON_ENUM })?;
    let drops = super::take_per_cpu_array::<DropCounts>(ebpf, NET_DROPS_MAP)?;
    Ok(Box::new(Net::new(
        ProcFile::new("/proc/net/dev"),
        options.regex(SPEC.name, DEVICE_EXCLUDE.name).cloned(),
        drops,
        &reasons,
    )))
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

/// One device's line of `/proc/net/dev`.
#[derive(Debug, PartialEq, Eq)]
struct DeviceRow<'a> {
    name: &'a str,
    /// Receive packets and bytes, transmit packets and bytes.
    values: [u64; 4],
}

/// The device lines of `/proc/net/dev`: `name: rx_bytes rx_packets (6 more
/// receive fields) tx_bytes tx_packets ...`. Lines that do not parse (the
/// two header lines) are skipped.
fn device_rows(text: &[u8]) -> impl Iterator<Item = DeviceRow<'_>> {
    procfs::lines(text).filter_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        // Device names cannot contain ':' or whitespace.
        let name = std::str::from_utf8(&line[..colon]).ok()?.trim();
        let mut fields = procfs::fields(&line[colon + 1..]).map(procfs::parse_u64);
        let rx_bytes = fields.next()??;
        let rx_packets = fields.next()??;
        let tx_bytes = fields.nth(6)??;
        let tx_packets = fields.next()??;
        (!name.is_empty()).then_some(DeviceRow { name, values: [rx_packets, rx_bytes, tx_packets, tx_bytes] })
    })
}

/// A device seen in `/proc/net/dev`, with its series.
struct Device {
    /// Receive packets and bytes, transmit packets and bytes; `None` for
    /// an excluded device.
    series: Option<[Series; 4]>,
    /// The scrape that last saw it.
    seen: u64,
}

/// The devices exported so far, by name.
struct Devices {
    exclude: Option<Regex>,
    known: HashMap<String, Device>,
    scrape: u64,
}

impl Devices {
    /// Learns the devices in `text`, forgets those that are gone.
    fn refresh(&mut self, text: &[u8]) {
        self.scrape += 1;
        for row in device_rows(text) {
            if let Some(device) = self.known.get_mut(row.name) {
                device.seen = self.scrape;
            } else if self.known.len() < MAX_DEVICES {
                let series = (!self.exclude.as_ref().is_some_and(|exclude| exclude.is_match(row.name)))
                    .then(|| DEVICE_FAMILIES.map(|family| Series::new(&family, &[("device", row.name)])));
                self.known.insert(row.name.to_owned(), Device { series, seen: self.scrape });
            }
        }
        // Gone (or renamed): its series end here.
        let scrape = self.scrape;
        self.known.retain(|_, device| device.seen == scrape);
    }
}

struct Net<D> {
    dev: ProcFile,
    devices: Mutex<Devices>,
    drops: D,
    /// Series of each named drop reason, by reason number.
    reason_series: Box<[Option<Series>]>,
    other_series: Series,
}

impl<D> Net<D> {
    fn new(dev: ProcFile, exclude: Option<Regex>, drops: D, reasons: &[(String, i64)]) -> Self {
        let reason_series = reason_labels(reasons)
            .into_iter()
            .map(|label| label.map(|label| Series::new(&DROPS, &[("reason", &label)])))
            .collect();
        Self {
            dev,
            devices: Mutex::new(Devices { exclude, known: HashMap::new(), scrape: 0 }),
            drops,
            reason_series,
            other_series: Series::new(&DROPS, &[("reason", OTHER_REASON)]),
        }
    }
}

impl<D: PerCpuRead<DropCounts>> Collector for Net<D> {
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        // A panic elsewhere while holding the lock leaves nothing half
        // updated that a later scrape could not redo.
        let mut devices = self.devices.lock().unwrap_or_else(PoisonError::into_inner);
        self.dev
            .read(|text| {
                devices.refresh(text);
                for (i, family) in DEVICE_FAMILIES.iter().enumerate() {
                    out.family(family);
                    for row in device_rows(text) {
                        if let Some(series) = devices.known.get(row.name).and_then(|device| device.series.as_ref()) {
                            out.sample(&series[i], row.values[i]);
                        }
                    }
                }
            })
            .map_err(MapError::IoError)?;
        drop(devices);

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
    use super::*;
    use crate::collectors::testing::{FakePerCpu, scrape};

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

    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|line| !line.starts_with('#')).collect()
    }

    const HEADER: &str = "Inter-|   Receive                                                |  Transmit\n \
        face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls \
        carrier compressed\n";

    /// `/proc/net/dev` with one line per `(name, rx_packets, rx_bytes,
    /// tx_packets, tx_bytes)`.
    fn dev_text(devices: &[(&str, u64, u64, u64, u64)]) -> String {
        let mut text = HEADER.to_owned();
        for (name, rx_packets, rx_bytes, tx_packets, tx_bytes) in devices {
            text += &format!("{name:>6}: {rx_bytes} {rx_packets} 0 0 0 0 0 0 {tx_bytes} {tx_packets} 0 0 0 0 0 0\n");
        }
        text
    }

    fn net(exclude: Option<&str>) -> Net<FakePerCpu<DropCounts>> {
        Net::new(ProcFile::new("/proc/net/dev"), exclude.map(|e| Regex::new(e).unwrap()), no_drops(), &reasons())
    }

    /// What `net` writes for the device lines in `text`.
    fn scrape_text(net: &Net<FakePerCpu<DropCounts>>, text: &str) -> String {
        let mut devices = net.devices.lock().unwrap();
        devices.refresh(text.as_bytes());
        let mut buf = bytes::BytesMut::new();
        let mut out = Encoder::new(&mut buf);
        for (i, family) in DEVICE_FAMILIES.iter().enumerate() {
            out.family(family);
            for row in device_rows(text.as_bytes()) {
                if let Some(series) = devices.known.get(row.name).and_then(|d| d.series.as_ref()) {
                    out.sample(&series[i], row.values[i]);
                }
            }
        }
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn parses_proc_net_dev() {
        let text = dev_text(&[("lo", 4, 400, 6, 600), ("eth0", 10, 12, 14, 16)]);
        let rows: Vec<_> = device_rows(text.as_bytes()).collect();
        assert_eq!(
            rows,
            [DeviceRow { name: "lo", values: [4, 400, 6, 600] }, DeviceRow { name: "eth0", values: [10, 12, 14, 16] }]
        );
        // Garbage lines are skipped, never a panic.
        assert_eq!(device_rows(b"x: 1 2\n: 1 2 3 4 5 6 7 8 9 10\nfoo\n").count(), 0);
    }

    #[test]
    fn exports_every_device_in_the_kernels_order() {
        let net = net(None);
        let text = dev_text(&[("lo", 4, 400, 6, 600), ("eth0", 10, 12, 14, 16)]);
        assert_eq!(
            samples(&scrape_text(&net, &text)),
            [
                "kernel_net_receive_packets_total{device=\"lo\"} 4",
                "kernel_net_receive_packets_total{device=\"eth0\"} 10",
                "kernel_net_receive_bytes_total{device=\"lo\"} 400",
                "kernel_net_receive_bytes_total{device=\"eth0\"} 12",
                "kernel_net_transmit_packets_total{device=\"lo\"} 6",
                "kernel_net_transmit_packets_total{device=\"eth0\"} 14",
                "kernel_net_transmit_bytes_total{device=\"lo\"} 600",
                "kernel_net_transmit_bytes_total{device=\"eth0\"} 16",
            ]
        );
    }

    #[test]
    fn excluded_devices_are_not_exported() {
        let net = net(Some("^veth"));
        let text = scrape_text(&net, &dev_text(&[("lo", 1, 1, 1, 1), ("veth1a2b", 2, 2, 2, 2)]));
        assert!(!text.contains("veth"), "{text}");
        assert!(text.contains("kernel_net_receive_packets_total{device=\"lo\"} 1\n"), "{text}");
    }

    #[test]
    fn gone_devices_stop_and_churn_stays_bounded() {
        let net = net(None);
        let text = scrape_text(&net, &dev_text(&[("lo", 1, 1, 1, 1), ("veth0", 5, 5, 5, 5)]));
        assert!(text.contains("{device=\"veth0\"} 5\n"), "{text}");
        let text = scrape_text(&net, &dev_text(&[("lo", 1, 1, 1, 1), ("veth1", 9, 9, 9, 9)]));
        assert!(!text.contains("veth0"), "{text}");
        assert!(text.contains("kernel_net_transmit_bytes_total{device=\"veth1\"} 9\n"), "{text}");
        for n in 0..1000 {
            scrape_text(&net, &dev_text(&[("lo", 1, 1, 1, 1), (&format!("veth{n}"), 1, 1, 1, 1)]));
        }
        scrape_text(&net, &dev_text(&[("lo", 1, 1, 1, 1)]));
        assert_eq!(net.devices.lock().unwrap().known.len(), 1);
    }

    #[test]
    fn at_most_max_devices_are_exported() {
        let net = net(None);
        let many: Vec<String> = (0..MAX_DEVICES + 10).map(|n| format!("d{n}")).collect();
        let rows: Vec<_> = many.iter().map(|name| (name.as_str(), 1, 1, 1, 1)).collect();
        let text = scrape_text(&net, &dev_text(&rows));
        assert_eq!(text.matches("kernel_net_receive_packets_total{").count(), MAX_DEVICES);
    }

    #[test]
    fn reads_this_machines_devices() {
        let net = net(None);
        let text = scrape(&net);
        assert!(text.contains("kernel_net_receive_packets_total{device=\"lo\"} "), "{text}");
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
        let net = Net::new(
            ProcFile::new("/proc/net/dev"),
            None,
            FakePerCpu { cpus: vec![vec![cpu0], vec![cpu1]] },
            &reasons(),
        );
        let text = scrape(&net);
        // Reasons never counted are left out.
        let drops: Vec<_> = samples(&text).into_iter().filter(|line| line.starts_with("kernel_net_drops")).collect();
        assert_eq!(
            drops,
            ["kernel_net_drops_total{reason=\"NO_SOCKET\"} 15", "kernel_net_drops_total{reason=\"other\"} 7"]
        );
        assert!(text.contains("# TYPE kernel_net_drops_total counter\n"), "{text}");
    }

    #[test]
    fn reads_the_running_kernels_drop_reasons() {
        // As btf::tests::reads_the_running_kernel: the project's machines
        // have BTF.
        let Ok(btf) = crate::kernel::btf::Btf::from_kernel() else { return };
        let labels = reason_labels(&btf.enum_values(DROP_REASON_ENUM).expect("enum skb_drop_reason"));
        let named: Vec<&str> = labels.iter().flatten().map(String::as_str).collect();
        assert!(named.contains(&"NO_SOCKET") && named.contains(&"NOT_SPECIFIED"), "{named:?}");
        assert!(!named.contains(&"MAX") && !named.contains(&OTHER_REASON));
        assert_eq!(named.len(), named.iter().collect::<std::collections::HashSet<_>>().len());
    }
}
