//! `tcp`: connections opened, connect latency, retransmitted segments and
//! resets, counted by the kernel programs in `exporter-ebpf/src/tcp.rs` and
//! summed over CPUs here.
//!
//! Only sockets of the exporter's own network namespace count, so the
//! numbers are comparable with the `/proc/net/snmp` the exporter sees
//! (node_exporter's `netstat` collector).

use aya::{Ebpf, maps::MapError};
use exporter_common::{
    histogram::Log2Histogram,
    net::offsets::NET_NS_INUM,
    tcp::{CONNECT_LATENCY_MAP, TCP_COUNTERS_MAP, TcpCounters, offsets},
};

use super::{Collector, CollectorError, CollectorOptions, CollectorSpec, KernelOffset, PerCpuRead, Tracepoint};
use crate::{
    exposition::encode::{Encoder, Family, Series},
    exposition::histogram::HistogramSeries,
};

const OPENS: Family = Family::counter(
    "kernel_tcp_connections_opened_total",
    "TCP connections opened (sock:inet_sock_set_state): active are connect() calls entering SYN_SENT \
     (ActiveOpens in /proc/net/snmp), passive are sockets a listener created for an incoming connection \
     (PassiveOpens).",
);
const CONNECT_LATENCY: Family = Family::histogram(
    "kernel_tcp_connect_latency_seconds",
    "Time from a connect() entering SYN_SENT until the connection is established (sock:inet_sock_set_state); \
     failed connects are not observed.",
);
const RETRANSMITS: Family = Family::counter(
    "kernel_tcp_retransmits_total",
    "TCP segments retransmitted, SYN-ACKs included (tcp:tcp_retransmit_skb with err=0 by segment count, \
     tcp:tcp_retransmit_synack): RetransSegs in /proc/net/snmp minus TCPRetransFail in /proc/net/netstat.",
);
const RESETS: Family = Family::counter(
    "kernel_tcp_resets_total",
    "TCP resets: sent (tcp:tcp_send_reset, OutRsts in /proc/net/snmp) and received, i.e. accepted by a socket \
     (tcp:tcp_receive_reset).",
);

const fn tracepoint(category: &'static str, name: &'static str) -> Tracepoint {
    // Programs are named after the tracepoint they attach to.
    Tracepoint::raw(name, category, name)
}

pub(super) const SPEC: CollectorSpec = CollectorSpec {
    name: "tcp",
    help: "TCP connections opened, connect latency, retransmits and resets from sock and tcp tracepoints; fires \
           per socket state change, retransmit and reset (a few per connection), about 0.3 µs each on a virtual \
           machine",
    default_enabled: true,
    tracepoints: &[
        tracepoint("sock", "inet_sock_set_state"),
        tracepoint("tcp", "tcp_retransmit_skb"),
        tracepoint("tcp", "tcp_retransmit_synack"),
        tracepoint("tcp", "tcp_send_reset"),
        tracepoint("tcp", "tcp_receive_reset"),
    ],
    offsets: &[
        KernelOffset { global: offsets::SOCK_NET, type_name: "sock", member: "__sk_common.skc_net.net", size: 8 },
        KernelOffset { global: offsets::SOCK_PROTOCOL, type_name: "sock", member: "sk_protocol", size: 2 },
        KernelOffset { global: offsets::SKB_DEV, type_name: "sk_buff", member: "dev", size: 8 },
        KernelOffset { global: offsets::NET_DEVICE_NET, type_name: "net_device", member: "nd_net.net", size: 8 },
        // `end` is a 4-byte offset from `head` on 64-bit kernels; a kernel
        // where it is a pointer is refused by the size.
        KernelOffset { global: offsets::SKB_HEAD, type_name: "sk_buff", member: "head", size: 8 },
        KernelOffset { global: offsets::SKB_END, type_name: "sk_buff", member: "end", size: 4 },
        KernelOffset { global: offsets::SHINFO_GSO_SEGS, type_name: "skb_shared_info", member: "gso_segs", size: 2 },
        KernelOffset { global: NET_NS_INUM, type_name: "net", member: "ns.inum", size: 4 },
    ],
    kernel_values: None,
    options: &[],
    #[cfg(test)]
    families: &[OPENS, CONNECT_LATENCY, RETRANSMITS, RESETS],
    open,
};

fn open(ebpf: &mut Ebpf, _options: &CollectorOptions) -> Result<Box<dyn Collector>, CollectorError> {
    // Without its namespace's inode the daemon wrote 0 into the programs,
    // which then match no socket: report that rather than count nothing.
    crate::kernel::bpf::own_netns_inum().map_err(|source| CollectorError::Io {
        what: "read the exporter's network namespace from /proc/self/ns/net",
        source,
    })?;
    let counters = super::take_per_cpu_array::<TcpCounters>(ebpf, TCP_COUNTERS_MAP)?;
    let latency = super::take_per_cpu_array::<Log2Histogram>(ebpf, CONNECT_LATENCY_MAP)?;
    Ok(Box::new(Tcp::new(counters, latency)))
}

struct Tcp<C, L> {
    counters: C,
    latency: L,
    active: Series,
    passive: Series,
    sent: Series,
    received: Series,
    latency_series: HistogramSeries,
}

impl<C, L> Tcp<C, L> {
    fn new(counters: C, latency: L) -> Self {
        Self {
            counters,
            latency,
            active: Series::new(&OPENS, &[("direction", "active")]),
            passive: Series::new(&OPENS, &[("direction", "passive")]),
            sent: Series::new(&RESETS, &[("direction", "sent")]),
            received: Series::new(&RESETS, &[("direction", "received")]),
            latency_series: HistogramSeries::new(&CONNECT_LATENCY, &[]),
        }
    }
}

impl<C, L> Collector for Tcp<C, L>
where
    C: PerCpuRead<TcpCounters>,
    L: PerCpuRead<Log2Histogram>,
{
    fn collect(&self, out: &mut Encoder<'_>) -> Result<(), MapError> {
        let mut total = TcpCounters::default();
        self.counters.for_each_cpu(0, &mut |cpu| total = total.merged(*cpu))?;
        let mut latency = Log2Histogram::default();
        self.latency.for_each_cpu(0, &mut |cpu| latency.merge(cpu))?;

        out.family(&OPENS);
        out.sample(&self.active, total.active_opens);
        out.sample(&self.passive, total.passive_opens);
        out.family(&CONNECT_LATENCY);
        out.histogram(&self.latency_series, &latency);
        out.single(&RETRANSMITS, total.retransmits);
        out.family(&RESETS);
        out.sample(&self.sent, total.resets_sent);
        out.sample(&self.received, total.resets_received);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::collectors::testing::{FakePerCpu, scrape};

    fn counters(active_opens: u64, retransmits: u64) -> TcpCounters {
        TcpCounters { active_opens, passive_opens: 2, retransmits, resets_sent: 3, resets_received: 4 }
    }

    #[test]
    fn sums_every_cpu_with_direction_labels() {
        let mut fast = Log2Histogram::default();
        fast.record(250_000);
        let tcp = Tcp::new(
            FakePerCpu { cpus: vec![vec![counters(10, 1)], vec![counters(32, 0)], vec![counters(u64::MAX - 41, 6)]] },
            FakePerCpu { cpus: vec![vec![fast], vec![Log2Histogram::default()], vec![fast]] },
        );
        let text = scrape(&tcp);
        // Sums wrap like the kernel's own counters rather than panic.
        assert!(text.contains("\nkernel_tcp_connections_opened_total{direction=\"active\"} 0\n"), "{text}");
        assert!(text.contains("\nkernel_tcp_connections_opened_total{direction=\"passive\"} 6\n"), "{text}");
        assert!(text.contains("\nkernel_tcp_retransmits_total 7\n"), "{text}");
        assert!(text.contains("\nkernel_tcp_resets_total{direction=\"sent\"} 9\n"), "{text}");
        assert!(text.contains("\nkernel_tcp_resets_total{direction=\"received\"} 12\n"), "{text}");
        assert!(text.contains("# TYPE kernel_tcp_connect_latency_seconds histogram\n"), "{text}");
        assert!(text.contains("\nkernel_tcp_connect_latency_seconds_count 2\n"), "{text}");
        assert!(text.contains("\nkernel_tcp_connect_latency_seconds_sum 0.0005\n"), "{text}");
        // 250 µs lies between the bounds 2^-12 s (244 µs) and 2^-11 s.
        assert!(text.contains("\nkernel_tcp_connect_latency_seconds_bucket{le=\"0.000244140625\"} 0\n"), "{text}");
        assert!(text.contains("\nkernel_tcp_connect_latency_seconds_bucket{le=\"0.00048828125\"} 2\n"), "{text}");
        for family in SPEC.families {
            assert_eq!(text.matches(&format!("# TYPE {} ", family.name)).count(), 1, "{}: {text}", family.name);
        }
    }

    #[test]
    fn map_errors_are_reported() {
        let tcp = Tcp::new(
            FakePerCpu::<TcpCounters> { cpus: vec![vec![]] },
            FakePerCpu::<Log2Histogram> { cpus: vec![vec![Log2Histogram::default()]] },
        );
        let mut buf = BytesMut::new();
        assert!(tcp.collect(&mut Encoder::new(&mut buf)).is_err());

        let tcp = Tcp::new(
            FakePerCpu { cpus: vec![vec![counters(1, 1)]] },
            FakePerCpu::<Log2Histogram> { cpus: vec![vec![]] },
        );
        let mut buf = BytesMut::new();
        assert!(tcp.collect(&mut Encoder::new(&mut buf)).is_err());
    }
}
