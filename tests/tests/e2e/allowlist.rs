//! The allowlist socket filter against the real kernel: sources outside
//! `allowed_sources` never get a connection (their SYNs are dropped in the
//! kernel, so `connect` times out), their SYNs are counted per source, the
//! allowlist changes in place on reload, and the totals stay exact when the
//! per-source map evicts.
//!
//! Other sources are other loopback addresses (127.0.0.0/8 is all local on
//! `lo`): the client binds to one before connecting. Probes use a connect
//! timeout well under the kernel's initial SYN retransmission timeout (1 s),
//! so each refused attempt is exactly one SYN.

use std::{
    fs,
    io::{self, Read as _, Write as _},
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    os::fd::FromRawFd as _,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use kernel_exporter_tests::{Exporter, Metrics, ONE_COLLECTOR, free_port};

/// Under the 1 s initial RTO: a dropped attempt sends one SYN, no retransmit.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

const SECOND: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn config_file(test: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kernel-exporter-e2e-allowlist-{test}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the config directory");
    let path = dir.join("web.yml");
    fs::write(&path, text).expect("write the web config");
    path
}

fn start(extra: &[&str]) -> Exporter {
    Exporter::start(&[&ONE_COLLECTOR[..], extra].concat())
}

/// `connect` from `source` to `to`, giving up after `timeout`.
pub(crate) fn connect_from(source: IpAddr, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let family = if to.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on a descriptor this function owns (the
    // TcpStream takes it over, or it is closed on every error path through
    // the TcpStream's drop); the address buffers are sized for the family.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let (local, local_len) = sockaddr(SocketAddr::new(source, 0));
        if libc::bind(fd, (&raw const local).cast(), local_len) != 0 {
            return Err(io::Error::last_os_error());
        }
        let (remote, remote_len) = sockaddr(to);
        if libc::connect(fd, (&raw const remote).cast(), remote_len) != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(error);
            }
            let mut poll = libc::pollfd { fd, events: libc::POLLOUT, revents: 0 };
            let ready = libc::poll(&raw mut poll, 1, timeout.as_millis() as libc::c_int);
            if ready == 0 {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            if let Some(error) = stream.take_error()? {
                return Err(error);
            }
        }
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage; the family-specific
    // views written below fit inside it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: see above.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: see above.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Connects from `source`; panics unless the connection is refused by
/// silence (a dropped SYN: no SYN-ACK, no RST).
pub(crate) fn assert_dropped(source: IpAddr, to: SocketAddr) {
    match connect_from(source, to, PROBE_TIMEOUT) {
        Err(error) if error.kind() == io::ErrorKind::TimedOut => {}
        Err(error) => panic!("{source} → {to}: expected a timeout (dropped SYN), got {error}"),
        Ok(_) => panic!("{source} → {to}: connected, but the source is outside the allowlist"),
    }
}

/// One keep-alive HTTP/1.1 GET of /metrics on `stream`: the status, or
/// `None` when the server closed the connection instead of answering.
fn keep_alive_get(stream: &mut TcpStream) -> Option<u16> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8(head).expect("UTF-8 head");
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("status line");
    let length: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .expect("content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("body");
    Some(status)
}

/// Whether the server has closed `stream` (EOF or reset within a second).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(1))).expect("read timeout");
    match stream.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Err(error) => error.kind() == io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// Sockets on local `port` in a closing state that waits for the peer
/// (FIN_WAIT1, CLOSING, LAST_ACK), from /proc/net/tcp.
fn closing_sockets(port: u16) -> usize {
    let table = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1).is_some_and(|addr| addr.ends_with(&local))
                && fields.get(3).is_some_and(|state| matches!(*state, "04" | "09" | "0B"))
        })
        .count()
}

fn scrape_from(source: IpAddr, to: SocketAddr) -> Metrics {
    let mut stream = connect_from(source, to, Duration::from_secs(2)).expect("an allowed source connects");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").expect("request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("header block");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Metrics::parse(body)
}

fn value(metrics: &Metrics, key: &str) -> f64 {
    metrics.samples.get(key).copied().unwrap_or(0.0)
}

fn dropped_syns(metrics: &Metrics, source: &str) -> f64 {
    value(metrics, &format!("kernel_exporter_connections_total{{source=\"{source}\",verdict=\"dropped\"}}"))
}

fn dropped_packets(metrics: &Metrics) -> f64 {
    metrics.get("kernel_exporter_packets_total{verdict=\"dropped\"}")
}

#[test]
fn sources_outside_the_allowlist_never_connect_and_are_counted() {
    let v6_port = free_port();
    let v6_listen = format!("--web.listen-address=[::1]:{v6_port}");
    let v6: SocketAddr = (Ipv6Addr::LOCALHOST, v6_port).into();
    let config = config_file("drop", "allowed_sources: [127.0.0.1/32]\n");
    let exporter = start(&[&format!("--web.config.file={}", config.display()), &v6_listen]);
    let before = exporter.scrape();
    assert_eq!(before.get("kernel_exporter_allowlist_entries"), 1.0);

    const ATTEMPTS: u32 = 5;
    for _ in 0..ATTEMPTS {
        assert_dropped(SECOND.into(), exporter.addr);
        // IPv6: ::1 is not in the list either.
        assert_dropped(Ipv6Addr::LOCALHOST.into(), v6);
    }
    let after = exporter.scrape();
    // Exactly one SYN per attempt (see PROBE_TIMEOUT), nothing else.
    assert_eq!(dropped_syns(&after, "127.0.0.2") - dropped_syns(&before, "127.0.0.2"), f64::from(ATTEMPTS));
    assert_eq!(dropped_syns(&after, "::1") - dropped_syns(&before, "::1"), f64::from(ATTEMPTS));
    assert_eq!(dropped_packets(&after) - dropped_packets(&before), f64::from(2 * ATTEMPTS));
    assert!(after.get("kernel_exporter_connections_total{source=\"127.0.0.1\",verdict=\"allowed\"}") >= 2.0);
    // Nothing from them reached userspace.
    assert!(!after.text.contains("kernel_exporter_requests_total{source=\"127.0.0.2\""), "{}", after.text);
    assert!(!after.text.contains("kernel_exporter_requests_total{source=\"::1\""), "{}", after.text);
    assert!(after.text.contains("kernel_exporter_requests_total{source=\"127.0.0.1\",code=\"200\"}"), "{}", after.text);
    assert_eq!(after.get("kernel_exporter_bpf_map_max_entries{map=\"ALLOWLIST_SOURCES\"}"), 4096.0);
    kernel_exporter_tests::promtool_check_metrics(&after.text).expect("promtool finds nothing");

    // With ::1 allowed, IPv6 is served; the IPv4 side is unchanged.
    drop(exporter);
    let config = config_file("drop-v6", "allowed_sources: [127.0.0.1/32, '::1/128']\n");
    let exporter = start(&[&format!("--web.config.file={}", config.display()), &v6_listen]);
    let metrics = scrape_from(Ipv6Addr::LOCALHOST.into(), v6);
    assert!(metrics.get("kernel_exporter_connections_total{source=\"::1\",verdict=\"allowed\"}") >= 1.0);
    assert_dropped(SECOND.into(), exporter.addr);
}

#[test]
fn reload_changes_the_allowlist_in_place() {
    let config = config_file("reload", "allowed_sources: [127.0.0.1/32]\n");
    let exporter = start(&[&format!("--web.config.file={}", config.display())]);
    let localhost = IpAddr::from(Ipv4Addr::LOCALHOST);
    let mut kept = connect_from(localhost, exporter.addr, Duration::from_secs(2)).expect("connect");
    assert_eq!(keep_alive_get(&mut kept), Some(200));
    assert_dropped(SECOND.into(), exporter.addr);

    // Widen to 127.0.0.0/8 while 127.0.0.1 keeps connecting: not one of its
    // attempts may fail across the update.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let hammer = {
        let (stop, attempts, addr) = (stop.clone(), attempts.clone(), exporter.addr);
        thread::spawn(move || {
            let mut refused = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                attempts.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = connect_from(localhost, addr, Duration::from_millis(900)) {
                    refused.push(error.to_string());
                }
                // Paced: unpaced, this loop overflows the accept queue now
                // and then (ListenOverflows in /proc/net/netstat), which
                // is not what this test is about.
                thread::sleep(Duration::from_millis(1));
            }
            refused
        })
    };
    fs::write(&config, "allowed_sources: [127.0.0.0/8]\n").expect("rewrite");
    hangup(&exporter);
    wait_until_connects(SECOND.into(), exporter.addr);
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let refused = hammer.join().expect("hammer");
    let attempts = attempts.load(Ordering::Relaxed);
    println!("{attempts} connection attempts from 127.0.0.1 across the reload, {} refused", refused.len());
    assert!(refused.is_empty(), "{} of {attempts} attempts failed: {refused:?}", refused.len());
    assert_eq!(keep_alive_get(&mut kept), Some(200), "the keep-alive connection stays up");
    let widened = exporter.scrape();
    assert_eq!(widened.get("kernel_exporter_allowlist_entries"), 1.0);
    // The filter's own verdicts: not one SYN of 127.0.0.1 was dropped.
    assert_eq!(dropped_syns(&widened, "127.0.0.1"), 0.0);

    // Now only 127.0.0.2: 127.0.0.1's new connections are dropped, and its
    // established one is closed by the exporter at the reload (the
    // inherited filter drops that source's packets from then on, so a
    // request on it could never arrive): its next request finds it closed.
    fs::write(&config, "allowed_sources: [127.0.0.2/32, '::1/128']\n").expect("rewrite");
    hangup(&exporter);
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect_from(localhost, exporter.addr, PROBE_TIMEOUT).is_ok() {
        assert!(Instant::now() < deadline, "127.0.0.1 still connects after the reload; log:\n{}", exporter.log());
    }
    assert!(closed_by_server(&mut kept), "the removed source's connection is closed");
    assert_eq!(keep_alive_get(&mut kept), None, "its next request is not served");
    let metrics = scrape_from(SECOND.into(), exporter.addr);
    assert_eq!(metrics.get("kernel_exporter_allowlist_entries"), 2.0);
    assert_eq!(metrics.get("kernel_exporter_config_last_reload_successful"), 1.0);
    assert!(exporter.log().contains("a reload removed its source from the allowlist"), "{}", exporter.log());
    assert_dropped(localhost, exporter.addr);
    // Connections of a removed source are reset, not closed with a FIN
    // whose answer the filter would drop: nothing is left retransmitting
    // (and holding the filter program) once the exporter is gone.
    let port = exporter.addr.port();
    drop(exporter);
    let deadline = Instant::now() + Duration::from_secs(2);
    while closing_sockets(port) > 0 {
        assert!(Instant::now() < deadline, "{} sockets on port {port} still closing", closing_sockets(port));
        thread::sleep(Duration::from_millis(50));
    }
}

/// An allowlist of `hosts` /32 ranges in 10.`second`.0.0/16, plus `first`.
fn many_ranges(first: &str, second: u8, hosts: usize) -> String {
    let mut text = format!("allowed_sources:\n  - {first}\n");
    for host in 0..hosts {
        text += &format!("  - 10.{second}.{}.{}/32\n", host / 256, host % 256);
    }
    text
}

/// SIGHUP, then the reload line it caused (success or failure).
pub(crate) fn reload_and_wait(exporter: &Exporter) -> String {
    let lines_before = exporter.log().lines().count();
    hangup(exporter);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = exporter.log();
        let line = log.lines().skip(lines_before).find(|line| {
            line.contains("trigger=SIGHUP") && (line.contains("reloaded web config") || line.contains("cannot reload"))
        });
        if let Some(line) = line {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no reload line after SIGHUP; log:\n{log}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The ids of the BPF maps `pid` holds, by name (as the kernel truncates
/// it, 15 bytes), from its descriptors' fdinfo and `bpftool map show`.
fn maps_of(pid: u32) -> std::collections::HashMap<String, u32> {
    let mut maps = std::collections::HashMap::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("read fdinfo") {
        let Ok(info) = fs::read_to_string(entry.expect("fdinfo entry").path()) else { continue };
        let Some(id) = info.lines().find_map(|line| line.strip_prefix("map_id:")) else { continue };
        let id: u32 = id.trim().parse().expect("map id");
        let show = bpftool(&["map", "show", "id", &id.to_string()]);
        if let Some(name) = show["name"].as_str() {
            maps.insert(name.to_owned(), id);
        }
    }
    maps
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool is installed (cargo xtask test installs the Debian package bpftool)");
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("bpftool prints JSON")
}

/// The entries of the allowlist trie the filter consults now, counted by
/// `bpftool map dump` (the daemon's own view plays no part).
fn kernel_trie_entries(pid: u32) -> usize {
    let maps = maps_of(pid);
    let dump = |name: &str| {
        let id = maps.get(name).unwrap_or_else(|| panic!("the exporter holds no map {name}: {maps:?}"));
        bpftool(&["map", "dump", "id", &id.to_string()])
    };
    let active = dump("ALLOWLIST_ACTIV");
    let index = active[0]["value"]
        .as_array()
        .and_then(|bytes| bytes.first())
        .and_then(|byte| byte.as_str())
        .and_then(|byte| u8::from_str_radix(byte.trim_start_matches("0x"), 16).ok())
        .or_else(|| active[0]["formatted"]["value"].as_u64().and_then(|v| u8::try_from(v).ok()))
        .unwrap_or_else(|| panic!("cannot read the active index from {active}"));
    let trie = if index == 1 { "ALLOWLIST_NEXT" } else { "ALLOWLIST" };
    dump(trie).as_array().expect("a dump is a list").len()
}

/// Regression: a reload from 701 ranges to 701 others used to fail half-way
/// (the trie held 1,024) and leave the daemon's record of the trie wrong,
/// so the next, smaller reload emptied the kernel's trie while reporting
/// success. Every reload here succeeds and the kernel, the gauge and the
/// filter's verdicts agree after each.
#[test]
fn allowlist_reload_between_full_lists_keeps_kernel_and_daemon_in_step() {
    let config = config_file("full-lists", &many_ranges("127.0.0.1/32", 1, 700));
    let exporter = start(&[&format!("--web.config.file={}", config.display())]);
    let localhost = IpAddr::from(Ipv4Addr::LOCALHOST);
    let check = |expected: usize| {
        let metrics = scrape_from(localhost, exporter.addr);
        let kernel = kernel_trie_entries(exporter.pid());
        println!(
            "expected {expected}: kernel trie {kernel}, gauge {}",
            metrics.get("kernel_exporter_allowlist_entries")
        );
        assert_eq!(metrics.get("kernel_exporter_config_last_reload_successful"), 1.0, "{}", exporter.log());
        assert_eq!(kernel, expected, "entries of the trie in force, by bpftool");
        assert_eq!(metrics.get("kernel_exporter_allowlist_entries"), expected as f64, "the gauge");
        assert_dropped(SECOND.into(), exporter.addr);
    };
    check(701);

    // 127.0.0.0/31 sorts before the /32 hosts, so the old code inserted it
    // (and then rolled it back) before the trie filled.
    fs::write(&config, many_ranges("127.0.0.0/31", 2, 700)).expect("rewrite");
    let line = reload_and_wait(&exporter);
    assert!(line.contains("reloaded web config"), "{line}");
    check(701);

    let subset: String =
        many_ranges("127.0.0.0/31", 2, 700).lines().take(2 + 300).map(|line| format!("{line}\n")).collect();
    fs::write(&config, subset).expect("rewrite");
    let line = reload_and_wait(&exporter);
    assert!(line.contains("reloaded web config"), "{line}");
    // 127.0.0.1 is still served (scrape_from in `check` connects from it).
    check(301);
}

fn hangup(exporter: &Exporter) {
    let pid = libc::pid_t::try_from(exporter.pid()).expect("pid");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

fn wait_until_connects(source: IpAddr, to: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect_from(source, to, PROBE_TIMEOUT).is_err() {
        assert!(Instant::now() < deadline, "{source} still cannot connect after the reload");
    }
}

#[test]
fn allow_from_flag_and_not_both() {
    let exporter = start(&["--web.allow-from=127.0.0.1/32"]);
    exporter.scrape();
    assert_dropped(SECOND.into(), exporter.addr);
    assert!(
        exporter.scrape().get("kernel_exporter_connections_total{source=\"127.0.0.2\",verdict=\"dropped\"}") >= 1.0
    );

    let config = config_file("both", "allowed_sources: [127.0.0.1/32]\n");
    let mut both = Exporter::spawn(
        free_port(),
        &[&ONE_COLLECTOR[..], &["--web.allow-from=127.0.0.1/32", &format!("--web.config.file={}", config.display())]]
            .concat(),
    );
    let status = both.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    let log = both.log();
    assert!(log.contains("allowed_sources and --web.allow-from are both given"), "{log}");
}

#[test]
fn totals_stay_exact_when_the_per_source_map_evicts() {
    const TRACKED: usize = 4;
    let exporter = start(&["--web.allow-from=127.0.0.1/32", &format!("--web.allowlist-sources-tracked={TRACKED}")]);
    let before = exporter.scrape();
    let sources: Vec<Ipv4Addr> = (2..=20).map(|last| Ipv4Addr::new(127, 0, 0, last)).collect();
    for &source in &sources {
        assert_dropped(source.into(), exporter.addr);
    }
    let after = exporter.scrape();
    assert_eq!(dropped_packets(&after) - dropped_packets(&before), sources.len() as f64, "exact despite eviction");
    let tracked: Vec<&String> = after
        .samples
        .keys()
        .filter(|key| key.starts_with("kernel_exporter_connections_total{") && key.ends_with("verdict=\"dropped\"}"))
        .filter(|key| !key.contains("source=\"other\""))
        .collect();
    // The ten sources with the most drops (they keep their count once the
    // LRU map evicts them); the rest are under source="other".
    assert!(tracked.len() <= 10, "{tracked:?}");
    let all: f64 = after
        .samples
        .iter()
        .filter(|(key, _)| {
            key.starts_with("kernel_exporter_connections_total{") && key.ends_with("verdict=\"dropped\"}")
        })
        .map(|(_, value)| value)
        .sum();
    assert_eq!(all, after.get("kernel_exporter_packets_total{verdict=\"dropped\"}"), "per source and other add up");
    let per_source: f64 = sources.iter().map(|source| dropped_syns(&after, &source.to_string())).sum();
    assert!(per_source < sources.len() as f64, "the LRU map evicted some of {} sources: {per_source}", sources.len());
    assert_eq!(after.get("kernel_exporter_bpf_map_max_entries{map=\"ALLOWLIST_SOURCES\"}"), TRACKED as f64);
}

/// The userspace CPU time (utime + stime are separate: this is utime) of
/// `pid`, in clock ticks.
fn user_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    rest.split_whitespace().nth(11).and_then(|v| v.parse().ok()).expect("utime")
}

#[test]
fn a_flood_from_outside_costs_userspace_nothing() {
    const BURST: usize = 20_000;
    let exporter = start(&["--web.allow-from=127.0.0.1/32"]);
    let before = exporter.scrape();
    let ticks_before = user_ticks(exporter.pid());
    let addr = exporter.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut scrapes = 0;
            while !stop.load(Ordering::Relaxed) {
                scrape_from(Ipv4Addr::LOCALHOST.into(), addr);
                scrapes += 1;
                thread::sleep(Duration::from_millis(20));
            }
            scrapes
        })
    };
    let started = Instant::now();
    for _ in 0..BURST {
        // A non-blocking connect sends its SYN at once; closing it in
        // SYN_SENT sends nothing more.
        match connect_from(SECOND.into(), addr, Duration::ZERO) {
            Err(error) if error.kind() == io::ErrorKind::TimedOut => {}
            other => panic!("expected no answer, got {other:?}"),
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraper.join().expect("the legitimate scraper kept succeeding");
    let ticks = user_ticks(exporter.pid()) - ticks_before;
    let after = exporter.scrape();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let user_ms = ticks as f64 * 1000.0 / hz;
    println!(
        "burst: {BURST} SYNs from 127.0.0.2 in {took:?}; exporter user CPU {user_ms} ms (incl. {scrapes} scrapes)"
    );
    assert_eq!(dropped_syns(&after, "127.0.0.2") - dropped_syns(&before, "127.0.0.2"), BURST as f64);
    assert!(!after.text.contains("requests_total{source=\"127.0.0.2\""));
    assert!(scrapes > 0);
    assert!(user_ms < 50.0, "the exporter spent {user_ms} ms of user CPU over the burst");
}

/// A network namespace with only its loopback up, deleted when dropped:
/// forged packets sent in it, and the SYN-ACKs answering them, never leave.
struct Namespace(String);

impl Namespace {
    fn create(prefix: &str) -> Self {
        let name = format!("{prefix}{}", std::process::id());
        let _ = std::process::Command::new("ip").args(["netns", "del", &name]).output();
        for args in [&["netns", "add", &name][..], &["-n", &name, "link", "set", "lo", "up"]] {
            let out = std::process::Command::new("ip").args(args).output().expect("run ip (package iproute2)");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Self(name)
    }

    /// Runs `f` on a thread that joined the namespace (sockets belong to
    /// the namespace of the thread that creates them).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        thread::spawn(move || {
            let namespace = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns(2) on a descriptor we own; it changes only this
            // thread's network namespace.
            let joined = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&namespace), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns({path}): {}", io::Error::last_os_error());
            f()
        })
        .join()
        .expect("a thread in the test namespace")
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// RFC 1071 checksum of `chunks`, concatenated (each of even length but
/// the last).
fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one TCP SYN from `source` (forged) to 127.0.0.1:`port` on a raw
/// socket (IPPROTO_RAW: the IP header is ours; the kernel fills in its
/// checksum).
fn send_forged_syn(raw: libc::c_int, source: Ipv4Addr, port: u16, seq: u32) {
    let destination = Ipv4Addr::LOCALHOST;
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&((seq % 50_000) as u16 + 10_000).to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    // Data offset 5 words; flags: SYN; window 64240.
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&source.octets());
    pseudo[4..8].copy_from_slice(&destination.octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let checksum = internet_checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    let mut packet = [0u8; 40];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&40u16.to_be_bytes());
    packet[6] = 0x40;
    packet[8] = 64;
    packet[9] = libc::IPPROTO_TCP as u8;
    packet[12..16].copy_from_slice(&source.octets());
    packet[16..20].copy_from_slice(&destination.octets());
    packet[20..].copy_from_slice(&tcp);
    let (to, to_len) = sockaddr(SocketAddr::new(destination.into(), 0));
    // SAFETY: sendto reads `packet` and the address, both alive and of
    // the lengths given.
    let sent = unsafe { libc::sendto(raw, packet.as_ptr().cast(), packet.len(), 0, (&raw const to).cast(), to_len) };
    assert_eq!(sent, 40, "sendto: {}", io::Error::last_os_error());
}

/// The distinct `source` values of `kernel_exporter_connections_total`.
fn source_values(metrics: &Metrics) -> Vec<String> {
    metrics
        .samples
        .keys()
        .filter_map(|key| key.strip_prefix("kernel_exporter_connections_total{source=\""))
        .filter_map(|rest| rest.split('"').next().map(str::to_owned))
        .collect()
}

/// Regression: the socket filter counts every packet's source before any
/// handshake, and every source it had seen got series of its own, so
/// random forged SYNs minted new `source` values on every scrape (up to
/// 2 × 4,096 new series each time). Now only sources that completed a
/// handshake, and the ten with the most dropped SYNs, get their own;
/// under a flood of random forged sources, half inside the allowlist and
/// half outside, at most 20 distinct values appear across all scrapes, and
/// the totals stay exact.
#[test]
fn forged_syn_floods_mint_at_most_twenty_source_values() {
    const ROUNDS: u32 = 10;
    const PER_ROUND: u32 = 2_000;
    let namespace = Namespace::create("kx-forge-");
    let port = free_port();
    let mut command = std::process::Command::new("ip");
    command.args(["netns", "exec", &namespace.0]).arg(kernel_exporter_tests::exporter_binary());
    let exporter = Exporter::spawn_command(
        command,
        port,
        &[&ONE_COLLECTOR[..], &["--web.allow-from=127.0.0.1/32", "--web.allow-from=10.0.0.0/8"]].concat(),
    );
    let log = {
        let exporter = &exporter;
        move || exporter.log()
    };
    let addr = exporter.addr;
    let (values, before, after, dropped_sent) = namespace.run(move || {
        let localhost = IpAddr::from(Ipv4Addr::LOCALHOST);
        let deadline = Instant::now() + Duration::from_secs(15);
        while connect_from(localhost, addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "the exporter does not listen in the namespace");
            thread::sleep(Duration::from_millis(50));
        }
        let before = scrape_from(localhost, addr);
        // SAFETY: a plain socket call; the descriptor is closed below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(raw >= 0, "raw socket: {}", io::Error::last_os_error());
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u32
        };
        let mut values = std::collections::BTreeSet::new();
        let mut dropped_sent = 0u64;
        for _ in 0..ROUNDS {
            for i in 0..PER_ROUND {
                let bits = random();
                // Half inside 10.0.0.0/8 (allowed: SYN-ACKs to nowhere),
                // half in 198.18.0.0/15 (dropped by the filter).
                let source = if i % 2 == 0 {
                    Ipv4Addr::from(0x0a00_0000 | (bits & 0x00ff_ffff))
                } else {
                    dropped_sent += 1;
                    Ipv4Addr::from(0xc612_0000 | (bits & 0x0001_ffff))
                };
                send_forged_syn(raw, source, addr.port(), random());
            }
            values.extend(source_values(&scrape_from(localhost, addr)));
        }
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(raw) };
        (values, before, scrape_from(localhost, addr), dropped_sent)
    });
    println!(
        "{} forged SYNs from random sources in {ROUNDS} rounds, a scrape after each: source values {values:?}",
        ROUNDS * PER_ROUND
    );
    assert!(values.len() <= 20, "{} distinct source values: {values:?}\nlog:\n{}", values.len(), log());
    assert!(values.contains("127.0.0.1") && values.contains("other"), "{values:?}");
    // Exact: every forged SYN from outside the allowlist was dropped and
    // counted, per source or under "other".
    let dropped = |metrics: &Metrics| -> f64 {
        metrics
            .samples
            .iter()
            .filter(|(key, _)| {
                key.starts_with("kernel_exporter_connections_total{") && key.ends_with("verdict=\"dropped\"}")
            })
            .map(|(_, value)| value)
            .sum()
    };
    assert_eq!(dropped(&after) - dropped(&before), dropped_sent as f64);
    assert_eq!(dropped_packets(&after) - dropped_packets(&before), dropped_sent as f64);
}
