//! The `net` collector against the kernel's own accounting: `/proc/net/dev`
//! for a veth pair the test creates between the host namespace (the
//! exporter's) and a test namespace, and a UDP socket's `NO_SOCKET` drops.
//!
//! Traffic goes only over the test's own devices and loopback: the veth
//! ends get addresses from 10.231.71.0/30 and nothing else routes there.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    process::Command,
    thread,
    time::Duration,
};

use kernel_exporter_tests::{Exporter, Metrics, assert_close, promtool_check_metrics};

const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 231, 71, 1);
const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 231, 71, 2);
const PREFIX_LEN: u8 = 30;

/// UDP round trips over the veth pair: one datagram each way per trip.
const ROUND_TRIPS: usize = 2_000;
/// Datagrams sent to a closed loopback port.
const CLOSED_PORT_DATAGRAMS: u64 = 500;

/// Runs `ip args...`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A network namespace and a veth pair between it and the host namespace,
/// deleted when dropped, whether the test passed or not.
struct TestNetwork {
    netns: String,
    host_dev: String,
    peer_dev: String,
    /// Both ends have this ifindex, each in its namespace: if the programs
    /// did not tell the namespaces apart, the peer's traffic would be
    /// added to the host end's series.
    ifindex: u32,
}

impl TestNetwork {
    fn create() -> Self {
        let pid = std::process::id();
        let network = Self {
            netns: format!("kenet-e2e-{pid}"),
            host_dev: format!("kn{pid}h"),
            peer_dev: format!("kn{pid}p"),
            ifindex: 30_000 + pid % 20_000,
        };
        // Leftovers of an earlier run with the same pid.
        network.delete();
        let index = network.ifindex.to_string();
        ip(&["netns", "add", &network.netns]);
        ip(&[
            "link",
            "add",
            &network.host_dev,
            "index",
            &index,
            "type",
            "veth",
            "peer",
            "name",
            &network.peer_dev,
            "index",
            &index,
            "netns",
            &network.netns,
        ]);
        ip(&["addr", "add", &format!("{HOST_ADDR}/{PREFIX_LEN}"), "dev", &network.host_dev]);
        ip(&["link", "set", &network.host_dev, "up"]);
        ip(&["-n", &network.netns, "addr", "add", &format!("{PEER_ADDR}/{PREFIX_LEN}"), "dev", &network.peer_dev]);
        ip(&["-n", &network.netns, "link", "set", &network.peer_dev, "up"]);
        network
    }

    /// Deletes the veth pair (both ends go together).
    fn delete_veth(&self) {
        let _ = Command::new("ip").args(["link", "del", &self.host_dev]).output();
    }

    fn delete(&self) {
        self.delete_veth();
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        self.delete();
    }
}

/// One row of `/proc/net/dev`.
#[derive(Debug, Clone, Copy)]
struct DevStats {
    rx_bytes: u64,
    rx_packets: u64,
    tx_bytes: u64,
    tx_packets: u64,
}

fn proc_net_dev(device: &str) -> DevStats {
    let text = fs::read_to_string("/proc/net/dev").expect("read /proc/net/dev");
    let fields: Vec<u64> = text
        .lines()
        .find_map(|line| {
            let (name, numbers) = line.split_once(':')?;
            (name.trim() == device).then(|| numbers.split_whitespace().map(|n| n.parse().expect("a count")).collect())
        })
        .unwrap_or_else(|| panic!("no {device} in /proc/net/dev:\n{text}"));
    DevStats { rx_bytes: fields[0], rx_packets: fields[1], tx_bytes: fields[8], tx_packets: fields[9] }
}

/// Runs `f` on a thread in network namespace `netns`: `setns` moves only
/// the calling thread, so sockets it opens live in that namespace.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    let handle = fs::File::open(format!("/run/netns/{netns}")).expect("open the test namespace");
    thread::spawn(move || {
        // SAFETY: setns(2) on a descriptor we own; it changes only this
        // thread's network namespace.
        let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// `ROUND_TRIPS` UDP datagrams from the test namespace to the host end of
/// the veth pair, each echoed back, with payloads of 1 to 1400 bytes.
fn veth_round_trips(netns: &str) {
    let host = UdpSocket::bind(SocketAddrV4::new(HOST_ADDR, 0)).expect("bind the host end");
    host.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let host_addr = host.local_addr().expect("host address");
    let peer = in_netns(netns, move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(PEER_ADDR, 0)).expect("bind the peer end");
        socket.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
        let mut buf = [0u8; 2048];
        for trip in 0..ROUND_TRIPS {
            let payload = vec![0xa5u8; 1 + trip * 7 % 1400];
            socket.send_to(&payload, host_addr).expect("send to the host end");
            let n = socket.recv(&mut buf).expect("echo from the host end");
            assert_eq!(n, payload.len());
        }
    });
    let mut buf = [0u8; 2048];
    for _ in 0..ROUND_TRIPS {
        let (n, from) = host.recv_from(&mut buf).expect("datagram from the test namespace");
        host.send_to(&buf[..n], from).expect("echo");
    }
    peer.join().expect("peer thread");
}

/// Datagrams to a loopback port nobody listens on: each is dropped with
/// `SKB_DROP_REASON_NO_SOCKET`.
fn send_to_closed_port(count: u64) {
    let closed = UdpSocket::bind("127.0.0.1:0").expect("bind a port to close");
    let target = closed.local_addr().expect("address");
    drop(closed);
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind the sender");
    // Large enough that these and the ICMP answers (loopback is exempt
    // from ICMP rate limits) outweigh the scrapes' own loopback traffic.
    let payload = [0x3cu8; 1000];
    for _ in 0..count {
        // The port-unreachable answer may surface as an error on a later send.
        let _ = sender.send_to(&payload, target);
    }
}

/// `kernel_net_*` of `device`: receive packets and bytes, transmit packets
/// and bytes.
fn exported(metrics: &Metrics, device: &str) -> [f64; 4] {
    ["receive_packets", "receive_bytes", "transmit_packets", "transmit_bytes"]
        .map(|what| metrics.get(&format!("kernel_net_{what}_total{{device=\"{device}\"}}")))
}

fn drops(metrics: &Metrics, reason: &str) -> f64 {
    metrics.samples.get(&format!("kernel_net_drops_total{{reason=\"{reason}\"}}")).copied().unwrap_or(0.0)
}

/// Compares the exporter's deltas of `device` with `/proc/net/dev`'s.
fn compare(device: &str, exporter: ([f64; 4], [f64; 4]), kernel: (DevStats, DevStats)) {
    let (before, after) = exporter;
    let (kernel_before, kernel_after) = kernel;
    let counted: [f64; 4] = std::array::from_fn(|i| after[i] - before[i]);
    let kernel = [
        kernel_after.rx_packets - kernel_before.rx_packets,
        kernel_after.rx_bytes - kernel_before.rx_bytes,
        kernel_after.tx_packets - kernel_before.tx_packets,
        kernel_after.tx_bytes - kernel_before.tx_bytes,
    ];
    for (i, what) in ["receive packets", "receive bytes", "transmit packets", "transmit bytes"].iter().enumerate() {
        eprintln!("{device} {what}: exporter {}, /proc/net/dev {}", counted[i], kernel[i]);
        // The exporter reads the same counters between the test's reads.
        assert!(counted[i] <= kernel[i] as f64, "{device} {what}: {} > {}", counted[i], kernel[i]);
        // 5% covers the packets at the edges of the interval (the scrapes'
        // own HTTP exchanges on loopback).
        assert_close(&format!("{device} {what}"), counted[i], kernel[i] as f64, 0.05);
    }
}

#[test]
fn device_traffic_matches_proc_net_dev_and_drops_are_counted_by_reason() {
    let network = TestNetwork::create();
    let exporter = Exporter::start(&["--collector.disable-defaults", "--collector.net"]);

    let veth_before = proc_net_dev(&network.host_dev);
    let lo_before = proc_net_dev("lo");
    let before = exporter.scrape();

    veth_round_trips(&network.netns);
    send_to_closed_port(CLOSED_PORT_DATAGRAMS);

    let after = exporter.scrape();
    let veth_after = proc_net_dev(&network.host_dev);
    let lo_after = proc_net_dev("lo");

    // The veth appeared after the first scrape may have been taken (no
    // traffic yet): it starts from zero.
    let veth_seen_before =
        before.samples.contains_key(&format!("kernel_net_receive_packets_total{{device=\"{}\"}}", network.host_dev));
    let veth_exported_before = if veth_seen_before { exported(&before, &network.host_dev) } else { [0.0; 4] };
    let veth_exported_after = exported(&after, &network.host_dev);
    let packets = veth_exported_after[0] - veth_exported_before[0];
    assert!(packets >= ROUND_TRIPS as f64, "only {packets} packets received on {}", network.host_dev);
    compare(&network.host_dev, (veth_exported_before, veth_exported_after), (veth_before, veth_after));
    compare("lo", (exported(&before, "lo"), exported(&after, "lo")), (lo_before, lo_after));

    let no_socket = drops(&after, "NO_SOCKET") - drops(&before, "NO_SOCKET");
    eprintln!("NO_SOCKET drops: exporter {no_socket}, datagrams sent to a closed port {CLOSED_PORT_DATAGRAMS}");
    assert!(
        no_socket >= CLOSED_PORT_DATAGRAMS as f64,
        "{CLOSED_PORT_DATAGRAMS} datagrams to a closed port, {no_socket} NO_SOCKET drops"
    );
    // The peer's devices are in another namespace and never exported.
    assert!(!after.text.contains(&network.peer_dev), "{}", after.text);
    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"net\"}"), 1.0);
    promtool_check_metrics(&after.text)
        .unwrap_or_else(|found| panic!("promtool check metrics: {found}\n{}", after.text));

    // A device that is gone stops being exported.
    network.delete_veth();
    let gone = exporter.scrape();
    let series = format!("{{device=\"{}\"}}", network.host_dev);
    assert!(!gone.text.contains(&series), "{} is gone but still exported:\n{}", network.host_dev, gone.text);
}
