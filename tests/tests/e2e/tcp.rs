//! The `tcp` collector against the kernel's own accounting in the same
//! network namespace: `Tcp:` in `/proc/net/snmp` and `TcpExt:` in
//! `/proc/net/netstat`, read before and after each test's traffic.
//!
//! Retransmits need loss, and this kernel has neither netem nor a tc drop
//! action: the test builds a network namespace joined to the host's by a
//! veth pair (addresses from 10.232.77.0/30 on those two devices only) and
//! makes the namespace's side drop everything it sends for a while with a
//! token bucket smaller than any packet. Connections from the host then
//! see no ACKs and retransmit.

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use kernel_exporter_tests::{Exporter, Metrics, assert_close, free_port, promtool_check_metrics};

const ACTIVE: &str = "kernel_tcp_connections_opened_total{direction=\"active\"}";
const PASSIVE: &str = "kernel_tcp_connections_opened_total{direction=\"passive\"}";
const CONNECT_COUNT: &str = "kernel_tcp_connect_latency_seconds_count";
const RETRANSMITS: &str = "kernel_tcp_retransmits_total";
const RESETS_SENT: &str = "kernel_tcp_resets_total{direction=\"sent\"}";
const RESETS_RECEIVED: &str = "kernel_tcp_resets_total{direction=\"received\"}";

/// A counter of a `/proc/net/{snmp,netstat}` table: a header line of names
/// and a line of values, both starting with `prefix` (`Tcp:`, `TcpExt:`).
fn proc_net_counter(file: &str, prefix: &str, field: &str) -> u64 {
    let path = format!("/proc/net/{file}");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut lines = text.lines().filter(|line| line.starts_with(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { panic!("no {prefix} table in {path}") };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find_map(|(name, value)| (name == field).then(|| value.parse().ok()).flatten())
        .unwrap_or_else(|| panic!("no {prefix} {field} in {path}"))
}

fn snmp(field: &str) -> u64 {
    proc_net_counter("snmp", "Tcp:", field)
}

fn netstat(field: &str) -> u64 {
    proc_net_counter("netstat", "TcpExt:", field)
}

fn delta(before: &Metrics, after: &Metrics, key: &str) -> f64 {
    after.get(key) - before.get(key)
}

fn check_exposition(metrics: &Metrics) {
    assert_eq!(metrics.get("kernel_exporter_collector_up{collector=\"tcp\"}"), 1.0);
    promtool_check_metrics(&metrics.text)
        .unwrap_or_else(|found| panic!("promtool check metrics: {found}\n{}", metrics.text));
}

#[test]
fn loopback_connections_match_active_and_passive_opens() {
    const CONNECTIONS: usize = 200;
    let exporter = Exporter::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback listener");
    let addr = listener.local_addr().expect("listener address");

    let (active_before, passive_before) = (snmp("ActiveOpens"), snmp("PassiveOpens"));
    let before = exporter.scrape();
    for _ in 0..CONNECTIONS {
        let client = TcpStream::connect(addr).expect("connect to the test's listener");
        let (server, _) = listener.accept().expect("accept");
        drop((client, server));
    }
    let after = exporter.scrape();
    let kernel_active = snmp("ActiveOpens") - active_before;
    let kernel_passive = snmp("PassiveOpens") - passive_before;

    let active = delta(&before, &after, ACTIVE);
    let passive = delta(&before, &after, PASSIVE);
    let connects = delta(&before, &after, CONNECT_COUNT);
    eprintln!(
        "{CONNECTIONS} connections: exporter active {active}, passive {passive}, connect latency count {connects}; \
         /proc/net/snmp ActiveOpens {kernel_active}, PassiveOpens {kernel_passive}"
    );
    // The kernel's deltas also hold the connection of the first scrape,
    // which the exporter had already counted when it answered; anyone else
    // on the host connecting meanwhile shows in both.
    assert!(active >= CONNECTIONS as f64, "made {CONNECTIONS} connections, exporter saw {active} active opens");
    assert!(passive >= CONNECTIONS as f64, "accepted {CONNECTIONS} connections, exporter saw {passive} passive opens");
    assert_close("active opens vs ActiveOpens", active, kernel_active as f64, 0.05);
    assert_close("passive opens vs PassiveOpens", passive, kernel_passive as f64, 0.05);
    assert!(connects >= CONNECTIONS as f64, "{CONNECTIONS} connects established, {connects} latencies recorded");
    let sum =
        after.get("kernel_tcp_connect_latency_seconds_sum") - before.get("kernel_tcp_connect_latency_seconds_sum");
    // Loopback handshakes take microseconds; a second each would mean the
    // timestamps are garbage.
    assert!(sum > 0.0 && sum / connects < 1.0, "mean connect latency {} s", sum / connects);
    check_exposition(&after);
}

#[test]
fn connects_to_a_closed_port_match_out_rsts() {
    const ATTEMPTS: usize = 100;
    let exporter = Exporter::start(&[]);
    // Nobody listens here: each SYN is answered with a RST by the kernel,
    // with no socket to charge it to.
    let closed: SocketAddr = ([127, 0, 0, 1], free_port()).into();

    let (out_rsts_before, fails_before) = (snmp("OutRsts"), snmp("AttemptFails"));
    let before = exporter.scrape();
    for _ in 0..ATTEMPTS {
        let error = TcpStream::connect(closed).expect_err("connect to a port nobody listens on");
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error}");
    }
    let after = exporter.scrape();
    let out_rsts = snmp("OutRsts") - out_rsts_before;
    let attempt_fails = snmp("AttemptFails") - fails_before;

    let sent = delta(&before, &after, RESETS_SENT);
    let received = delta(&before, &after, RESETS_RECEIVED);
    eprintln!(
        "{ATTEMPTS} refused connects: exporter resets sent {sent}, received {received}; /proc/net/snmp OutRsts \
         {out_rsts}, AttemptFails {attempt_fails}"
    );
    assert!(sent >= ATTEMPTS as f64, "{ATTEMPTS} connects refused, exporter saw {sent} resets sent");
    assert_close("resets sent vs OutRsts", sent, out_rsts as f64, 0.05);
    // No kernel counter counts received RSTs. Each refused connect is one,
    // and it ends the attempt in SYN_SENT, which AttemptFails counts (with
    // every other failed handshake, none of which a quiet host has).
    assert!(received >= ATTEMPTS as f64, "{ATTEMPTS} connects refused, exporter saw {received} resets received");
    assert_close("resets received vs AttemptFails", received, attempt_fails as f64, 0.05);
    check_exposition(&after);
}

/// Runs `program` with `args`, which must succeed.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (cargo xtask test installs iproute2): {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `program` with `args` and ignores the outcome (cleanup).
fn run_quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// The test's addresses: a /30 of a private range, only ever on the two
/// ends of the test's veth pair.
const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(10, 232, 77, 1);
const NAMESPACE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 232, 77, 2);
/// Prefixes of the test's namespace and device names, so leftovers of a
/// killed run can be found and removed.
const NAMESPACE_PREFIX: &str = "kx-tcp-";
const DEVICE_PREFIX: &str = "kxt";

/// A network namespace joined to the host's by a veth pair, removed when
/// dropped (devices, addresses and routes go with it), pass or fail.
struct LossyNetwork {
    namespace: String,
    host_device: String,
    namespace_device: String,
}

impl LossyNetwork {
    fn create() -> Self {
        Self::remove_leftovers();
        let id = std::process::id();
        // Interface names have at most 15 bytes: "kxt" + pid (≤ 7 digits) + 1.
        let network = Self {
            namespace: format!("{NAMESPACE_PREFIX}{id}"),
            host_device: format!("{DEVICE_PREFIX}{id}h"),
            namespace_device: format!("{DEVICE_PREFIX}{id}n"),
        };
        let (ns, host, peer) = (&network.namespace, &network.host_device, &network.namespace_device);
        run("ip", &["netns", "add", ns]);
        run("ip", &["link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns]);
        run("ip", &["addr", "add", &format!("{HOST_ADDR}/30"), "dev", host]);
        run("ip", &["link", "set", host, "up"]);
        run("ip", &["-n", ns, "addr", "add", &format!("{NAMESPACE_ADDR}/30"), "dev", peer]);
        run("ip", &["-n", ns, "link", "set", peer, "up"]);
        network
    }

    /// Removes the namespaces and host devices of earlier runs that were
    /// killed before their guard ran (same addresses, other pid).
    fn remove_leftovers() {
        let namespaces = fs::read_dir("/run/netns").into_iter().flatten().flatten();
        for entry in namespaces {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(NAMESPACE_PREFIX) {
                run_quietly("ip", &["netns", "del", &name]);
            }
        }
        for entry in fs::read_dir("/sys/class/net").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(DEVICE_PREFIX)
                && name.ends_with('h')
                && name[DEVICE_PREFIX.len()..name.len() - 1].bytes().all(|b| b.is_ascii_digit())
            {
                run_quietly("ip", &["link", "del", &name]);
            }
        }
    }

    /// Makes one end of the pair drop (`true`) or send (`false`) every
    /// packet it sends: a token bucket of 10 bytes passes no packet at all.
    fn drop_egress(&self, end: End, drop: bool) {
        let mut args = Vec::new();
        let dev = match end {
            End::Namespace => {
                args.extend(["-n", &self.namespace]);
                &self.namespace_device
            }
            End::Host => &self.host_device,
        };
        if drop {
            args.extend(["qdisc", "add", "dev", dev, "root", "tbf", "rate", "8kbit", "burst", "10", "latency", "1ms"]);
        } else {
            args.extend(["qdisc", "del", "dev", dev, "root"]);
        }
        run("tc", &args);
    }

    /// A listener on the namespace's address: created by a thread that
    /// joined the namespace, since a socket belongs to the namespace it was
    /// created in.
    fn listen(&self) -> TcpListener {
        let path = format!("/run/netns/{}", self.namespace);
        thread::spawn(move || {
            let namespace = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns(2) on an fd we own; it changes only this
            // thread's network namespace, and the thread ends right after.
            let joined = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns({path}): {}", std::io::Error::last_os_error());
            TcpListener::bind((NAMESPACE_ADDR, 0)).expect("bind a listener in the test namespace")
        })
        .join()
        .expect("listener thread")
    }
}

impl Drop for LossyNetwork {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the
        // host's end; deleting the host's end first covers a namespace that
        // is still busy.
        run_quietly("ip", &["link", "del", &self.host_device]);
        run_quietly("ip", &["netns", "del", &self.namespace]);
    }
}

/// One end of the test's veth pair.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The namespace's: dropping there loses the receivers' ACKs.
    Namespace,
    /// The host's: dropping there loses the senders' data in the host's own
    /// qdisc, which tells the sending stack: its retransmits fail.
    Host,
}

#[test]
fn retransmits_over_a_lossy_link_match_retrans_segs() {
    const CONNECTIONS: usize = 16;
    const CHUNK: usize = 64 << 10;
    /// How long the namespace's end drops alone, then both ends: a few
    /// retransmission timeouts each (200 ms at least, doubling each time).
    const LOSS: Duration = Duration::from_millis(1000);
    /// Streaming without loss before, between and after the losses, so
    /// data is in flight when they start and recovery can finish.
    const CLEAN: Duration = Duration::from_millis(300);

    let network = LossyNetwork::create();
    let listener = network.listen();
    let server_addr = listener.local_addr().expect("listener address");
    let exporter = Exporter::start(&[]);

    // Each server reads until its client is done, then answers one byte.
    let (accepted_tx, accepted_rx) = mpsc::channel();
    let servers = thread::spawn(move || {
        let handlers: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (mut stream, _) = listener.accept().expect("accept in the test namespace");
                thread::spawn(move || {
                    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
                    let mut sink = [0u8; CHUNK];
                    while stream.read(&mut sink).expect("read the client's data") > 0 {}
                    stream.write_all(b"!").expect("answer");
                })
            })
            .collect();
        accepted_tx.send(()).expect("report accepted");
        for handler in handlers {
            handler.join().expect("server thread");
        }
    });

    // The namespace's passive opens belong to the namespace: the exporter,
    // like the host's /proc/net/snmp, sees only the active ones.
    let (active_before, passive_before) = (snmp("ActiveOpens"), snmp("PassiveOpens"));
    let before_connect = exporter.scrape();
    let clients: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect_timeout(&server_addr, Duration::from_secs(5)).expect("connect over the veth"))
        .collect();
    accepted_rx.recv_timeout(Duration::from_secs(10)).expect("the namespace accepted every connection");
    let after_connect = exporter.scrape();
    let kernel_active = snmp("ActiveOpens") - active_before;
    let kernel_passive = snmp("PassiveOpens") - passive_before;
    let active = delta(&before_connect, &after_connect, ACTIVE);
    let passive = delta(&before_connect, &after_connect, PASSIVE);
    eprintln!(
        "{CONNECTIONS} connections into the namespace: exporter active {active}, passive {passive}; \
         /proc/net/snmp ActiveOpens {kernel_active}, PassiveOpens {kernel_passive}"
    );
    // The kernel's interval encloses the exporter's (the first scrape's own
    // connection falls between them), so with this few connections the
    // tight check is an order, not a ratio.
    assert!(
        CONNECTIONS as f64 <= active && active <= kernel_active as f64,
        "{CONNECTIONS} connects: exporter {active} active opens, ActiveOpens {kernel_active}"
    );
    // On the host only the scrapes' connections open passively.
    assert!(kernel_passive < CONNECTIONS as u64, "the host counted the namespace's passive opens: {kernel_passive}");
    assert!(passive <= kernel_passive as f64, "the namespace's passive opens were counted: {passive}");

    let (segs_before, fails_before) = (snmp("RetransSegs"), netstat("TCPRetransFail"));
    let before = exporter.scrape();
    let streaming = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let streaming = Arc::clone(&streaming);
            thread::spawn(move || {
                client.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
                let chunk = [7u8; CHUNK];
                while streaming.load(Ordering::Relaxed) {
                    client.write_all(&chunk).expect("send");
                }
                client.shutdown(Shutdown::Write).expect("shutdown");
                let mut answer = [0u8; 1];
                client.read_exact(&mut answer).expect("the server's answer");
            })
        })
        .collect();
    // ACKs are lost first, so data waits in flight and times out; then the
    // host's end drops too, and those retransmits fail in its own qdisc
    // (the timer then retries every 500 ms without backing off).
    thread::sleep(CLEAN);
    network.drop_egress(End::Namespace, true);
    thread::sleep(LOSS);
    network.drop_egress(End::Host, true);
    thread::sleep(LOSS);
    network.drop_egress(End::Host, false);
    network.drop_egress(End::Namespace, false);
    thread::sleep(CLEAN);
    streaming.store(false, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("client thread");
    }
    servers.join().expect("server threads");
    let after = exporter.scrape();
    let retrans_segs = snmp("RetransSegs") - segs_before;
    let retrans_fail = netstat("TCPRetransFail") - fails_before;
    drop(network);

    let retransmits = delta(&before, &after, RETRANSMITS);
    eprintln!(
        "retransmits over {LOSS:?} of ACK loss, then {LOSS:?} of all loss, on {CONNECTIONS} streaming connections: \
         exporter {retransmits}; /proc/net/snmp RetransSegs {retrans_segs}, /proc/net/netstat TCPRetransFail \
         {retrans_fail}"
    );
    assert!(retransmits >= CONNECTIONS as f64, "every connection lost packets, yet {retransmits} retransmits");
    // RetransSegs counts a retransmit before handing it down, so it holds
    // those the host's dropping qdisc refused too; TCPRetransFail counts
    // those again, and the exporter counts only the ones that left.
    assert!(retrans_fail > 0, "the host's drops failed no retransmit: the subtraction below is untested");
    assert_close(
        "retransmits vs RetransSegs - TCPRetransFail",
        retransmits,
        (retrans_segs - retrans_fail) as f64,
        0.05,
    );
    check_exposition(&after);
}
