//! Faults: what the kernel refuses, maps at their bound, reloads of broken
//! files, and a `kill -9`. Each must end in a clear answer and nothing
//! else: the rest keeps serving, counts stay exact, nothing is left behind.
//!
//! Neighbours that cover the rest of the "Faults" list:
//! `collectors::a_collector_that_cannot_attach_is_down_and_the_others_serve`
//! (missing tracepoint), `allowlist::totals_stay_exact_when_the_per_source_map_evicts`
//! (dropped sources only), `front_door::rotated_certificates_are_served_without_a_restart`
//! (a corrupt certificate seen by the file watch) and
//! `lifecycle::busy_port_fails_with_one_clear_line` (two instances, one port).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use kernel_exporter_tests::{
    COLLECTOR_PROGRAMS, EVERY_COLLECTOR_ARGS, Exporter, Metrics, ONE_COLLECTOR, Pki,
    credentials::{HASH, PASSWORD, USER},
    every_program_count, exporter_binary, free_port, promtool_check_metrics,
};

use crate::{
    allowlist::connect_from,
    front_door::{curl, file_serial, served_serial, wait_for, with_password},
};

/// The BPF programs, maps and links `pid` holds descriptors to, by kernel
/// ID (from `/proc/PID/fdinfo`): exactly that daemon's, whatever else runs
/// on the host.
#[derive(Debug, Default)]
struct Held {
    programs: BTreeSet<u32>,
    maps: BTreeSet<u32>,
    links: BTreeSet<u32>,
}

fn held(pid: u32) -> Held {
    let mut held = Held::default();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).expect("read the daemon's fds").flatten() {
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        let (set, key) = match target.to_string_lossy().as_ref() {
            "anon_inode:bpf-prog" => (&mut held.programs, "prog_id:"),
            "anon_inode:bpf-map" => (&mut held.maps, "map_id:"),
            "anon_inode:bpf_link" => (&mut held.links, "link_id:"),
            _ => continue,
        };
        let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy()))
            .unwrap_or_default();
        if let Some(id) = info.lines().find_map(|line| line.strip_prefix(key)?.trim().parse().ok()) {
            set.insert(id);
        }
    }
    held
}

/// ID → name of every loaded BPF program.
fn loaded_programs() -> BTreeMap<u32, String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| (info.id(), info.name_as_str().unwrap_or("").to_owned()))
        .collect()
}

fn loaded_maps() -> BTreeSet<u32> {
    aya::maps::loaded_maps().filter_map(Result::ok).map(|info| info.id()).collect()
}

fn loaded_links() -> BTreeSet<u32> {
    aya::programs::loaded_links().filter_map(Result::ok).map(|info| info.id()).collect()
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.contains("level=error")).collect()
}

#[test]
fn a_collector_the_verifier_rejects_is_down_and_the_others_serve() {
    let mut command = Command::new(exporter_binary());
    // Test-only hook (exporter/src/kernel/test_hooks.rs): the last program of
    // `syscalls`, sys_exit, ends in an endless loop. sys_enter is loaded
    // and attached first, so this is also the half-attached case.
    command.env("KERNEL_EXPORTER_TEST_VERIFIER_REJECTS", "syscalls");
    let exporter = Exporter::spawn_command(command, free_port(), EVERY_COLLECTOR_ARGS);
    exporter.wait_until_listening();

    let metrics = exporter.scrape();
    assert_eq!(
        metrics.get("kernel_exporter_collector_up{collector=\"syscalls\"}"),
        0.0,
        "the hook did nothing: was the binary built with `--features test-hooks` (as `cargo xtask test` does)?"
    );
    for (collector, _) in COLLECTOR_PROGRAMS.iter().filter(|(name, _)| *name != "syscalls") {
        assert_eq!(metrics.get(&format!("kernel_exporter_collector_up{{collector=\"{collector}\"}}")), 1.0);
    }
    assert!(metrics.get("kernel_sched_context_switches_total") > 0.0);
    assert!(!metrics.text.contains("kernel_syscalls_total"), "a down collector exports nothing");
    // The daemon holds every other collector's programs and neither of
    // syscalls'.
    let syscalls_programs = COLLECTOR_PROGRAMS.iter().find(|(name, _)| *name == "syscalls").expect("syscalls").1;
    let programs = held(exporter.pid()).programs;
    let names = loaded_programs();
    let held_names: Vec<&str> = programs.iter().filter_map(|id| names.get(id)).map(String::as_str).collect();
    assert_eq!(held_names.len(), every_program_count() - syscalls_programs.len(), "{held_names:?}");
    assert!(!held_names.iter().any(|name| syscalls_programs.contains(name)), "{held_names:?}");
    // sys_enter, loaded and attached before sys_exit was refused, is gone
    // from the kernel too. Program IDs are handed out in sequence, so one
    // loaded during this daemon's start-up has an ID within the range of
    // those it holds. (The kernel frees a detached program after an RCU
    // grace period: it may linger for a moment.)
    let (first, last) = (*programs.first().expect("programs"), *programs.last().expect("programs"));
    wait_for("sys_enter unloaded", Duration::from_secs(5), || {
        !loaded_programs()
            .iter()
            .any(|(id, name)| (first..=last).contains(id) && syscalls_programs.contains(&name.as_str()))
    });
    let again = exporter.scrape();
    assert!(again.get("kernel_sched_context_switches_total") > metrics.get("kernel_sched_context_switches_total"));

    let log = exporter.log();
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "{log}");
    println!("{}", errors[0]);
    assert!(errors[0].contains("collector=syscalls"), "{log}");
    assert!(errors[0].contains("the kernel's verifier rejected program sys_exit"), "{log}");
    // The verifier's own reason, not the first lines of its log.
    assert!(errors[0].contains("infinite loop detected at insn"), "{log}");
    assert!(log.contains("KERNEL_EXPORTER_TEST_VERIFIER_REJECTS"), "the hook says it is on: {log}");
}

/// A GET of `/` from `source` on a new connection; the status.
fn get_from(source: IpAddr, to: std::net::SocketAddr) -> io::Result<u16> {
    let mut stream = connect_from(source, to, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    raw.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| io::Error::other(raw))
}

/// `name{source="…",rest}` samples, by source.
fn by_source(metrics: &Metrics, name: &str, rest: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{name}{{source=\"");
    metrics
        .samples
        .iter()
        .filter_map(|(key, value)| {
            let (source, tail) = key.strip_prefix(&prefix)?.split_once('"')?;
            (tail == format!(",{rest}}}")).then(|| (source.to_owned(), *value))
        })
        .collect()
}

#[test]
fn per_source_series_stay_at_their_bound_and_totals_stay_exact() {
    const TRACKED: usize = 16;
    const ALLOWED: u8 = 200;
    const DROPPED: usize = 300;
    // 127.0.0.0/9 is allowed: 127.0.1.x gets in, 127.200.x.y is dropped.
    let exporter = Exporter::start(
        &[&ONE_COLLECTOR[..], &["--web.allow-from=127.0.0.0/9", "--web.allowlist-sources-tracked=16"]].concat(),
    );
    let before = exporter.scrape();
    let dropped_source = |i: usize| IpAddr::from(Ipv4Addr::new(127, 200, (i / 250) as u8, (i % 250 + 1) as u8));
    let mut dropped_sent = 0;
    for i in 1..=ALLOWED {
        let source = IpAddr::from(Ipv4Addr::new(127, 0, 1, i));
        assert_eq!(get_from(source, exporter.addr).unwrap_or_else(|e| panic!("{source}: {e}")), 200);
        // Interleaved: a non-blocking connect sends its SYN at once; closing
        // it in SYN_SENT sends nothing more, so one attempt is one packet.
        while dropped_sent < DROPPED * usize::from(i) / usize::from(ALLOWED) {
            match connect_from(dropped_source(dropped_sent), exporter.addr, Duration::ZERO) {
                Err(error) if error.kind() == io::ErrorKind::TimedOut => dropped_sent += 1,
                other => panic!("{}: expected no answer, got {other:?}", dropped_source(dropped_sent)),
            }
        }
    }
    let after = exporter.scrape();

    // Never-evicted totals: exact.
    let dropped_packets = |m: &Metrics| m.get("kernel_exporter_packets_total{verdict=\"dropped\"}");
    assert_eq!(dropped_packets(&after) - dropped_packets(&before), DROPPED as f64);

    // Kernel LRU: never more sources than the bound; each source still
    // tracked has exactly what it did (one SYN).
    let allowed = by_source(&after, "kernel_exporter_connections_total", "verdict=\"allowed\"");
    let dropped = by_source(&after, "kernel_exporter_connections_total", "verdict=\"dropped\"");
    // Both series of a source the daemon accepted (and of "other") are
    // written, zero or not; sources never accepted have a dropped series
    // only, and only the ten with the most drops.
    assert!(allowed.keys().all(|source| dropped.contains_key(source)), "{allowed:?} {dropped:?}");
    let dropped_only: Vec<&String> = dropped.keys().filter(|source| !allowed.contains_key(*source)).collect();
    assert!(dropped_only.len() <= 10, "{dropped_only:?}");
    assert!(dropped_only.iter().all(|source| source.starts_with("127.200.")), "{dropped_only:?}");
    assert!(allowed.len() <= TRACKED + 1, "{allowed:?}");
    let all_dropped: f64 = dropped.values().sum();
    assert_eq!(all_dropped, dropped_packets(&after), "per source and \"other\" add up to the exact total");
    for (source, syns) in allowed.iter().chain(&dropped) {
        if source.starts_with("127.0.1.") || source.starts_with("127.200.") {
            let allowed_syns = allowed.get(source).copied().unwrap_or(0.0);
            let dropped_syns = dropped.get(source).copied().unwrap_or(0.0);
            assert_eq!(allowed_syns + dropped_syns, 1.0, "{source}: {syns}");
        }
    }
    assert_eq!(after.get("kernel_exporter_bpf_map_max_entries{map=\"ALLOWLIST_SOURCES\"}"), TRACKED as f64);
    assert!(after.get("kernel_exporter_bpf_map_entries{map=\"ALLOWLIST_SOURCES\"}") <= TRACKED as f64);

    // Userspace LRU of HTTP responses: exactly the 16 most recent sources,
    // one 200 each (the scrape reading this is counted after it answers).
    let requests = by_source(&after, "kernel_exporter_requests_total", "code=\"200\"");
    let expected: BTreeMap<String, f64> =
        (ALLOWED - TRACKED as u8 + 1..=ALLOWED).map(|i| (Ipv4Addr::new(127, 0, 1, i).to_string(), 1.0)).collect();
    assert_eq!(requests, expected);
    assert_eq!(after.samples.keys().filter(|key| key.starts_with("kernel_exporter_requests_total{")).count(), TRACKED);
    promtool_check_metrics(&after.text).unwrap_or_else(|found| panic!("promtool: {found}"));
    println!(
        "{} distinct sources ({ALLOWED} allowed, {DROPPED} dropped) against a bound of {TRACKED}: \
         connections_total tracks {} sources, requests_total {}; dropped packets +{} (exact)",
        usize::from(ALLOWED) + DROPPED,
        allowed.len(),
        requests.len(),
        dropped_packets(&after) - dropped_packets(&before),
    );
}

/// The reload gauge and the last success's timestamp, scraped with the
/// good client and password.
fn reload_state(pki: &Pki, exporter: &Exporter) -> (f64, f64) {
    let metrics = good_scrape(pki, exporter);
    (
        metrics.get("kernel_exporter_config_last_reload_successful"),
        metrics.get("kernel_exporter_config_last_reload_success_timestamp_seconds"),
    )
}

/// A scrape with the client certificate and the right password, which must
/// succeed.
fn good_scrape(pki: &Pki, exporter: &Exporter) -> Metrics {
    let auth = with_password(USER, PASSWORD);
    let result = curl(pki, exporter.addr, Some("client"), &[&auth[0], &auth[1]]);
    assert_eq!(result.status, 200, "good scrape: {}\nlog:\n{}", result.stderr, exporter.log());
    Metrics::parse(&result.body)
}

fn sighup(exporter: &Exporter) {
    // SAFETY: kill(2) on our own child; no memory is involved.
    assert_eq!(unsafe { libc::kill(exporter.pid() as libc::pid_t, libc::SIGHUP) }, 0);
}

/// Sends SIGHUP and waits for the reload it triggers to log a line with
/// `outcome`; returns that line. (The file watch may have tried first: only
/// the line of the SIGHUP's own attempt counts.)
fn sighup_and_wait(exporter: &Exporter, outcome: &str) -> String {
    let lines_before = exporter.log().lines().count();
    sighup(exporter);
    let mut found = None;
    wait_for(&format!("a reload line with {outcome:?} after SIGHUP"), Duration::from_secs(10), || {
        found = exporter
            .log()
            .lines()
            .skip(lines_before)
            .find(|line| line.contains("trigger=SIGHUP") && line.contains(outcome))
            .map(str::to_owned);
        found.is_some()
    });
    found.expect("found")
}

/// The broken state is in place: SIGHUP, then the old configuration must
/// keep serving and the metrics say the reload failed.
fn assert_reload_fails_and_old_config_serves(pki: &Pki, exporter: &Exporter, serial: &str, what: &str) {
    let (_, succeeded_at) = reload_state(pki, exporter);
    let line = sighup_and_wait(exporter, "cannot reload");
    println!("{what}: {line}");
    assert!(line.contains("level=warn") && line.contains("still serving the previous configuration"), "{line}");
    let (successful, timestamp) = reload_state(pki, exporter);
    assert_eq!(successful, 0.0, "{what}");
    assert_eq!(timestamp, succeeded_at, "{what}: the last success's time did not move");
    // Served by the old configuration: same certificate, client
    // certificates still checked, passwords still asked for.
    assert_eq!(served_serial(exporter.addr, &pki.path("ca.crt")), serial, "{what}");
    assert_eq!(curl(pki, exporter.addr, None, &[]).status, 0, "{what}: served without a client certificate");
    let wrong = with_password(USER, "wrong");
    assert_eq!(curl(pki, exporter.addr, Some("client"), &[&wrong[0], &wrong[1]]).status, 401, "{what}");
    assert!(error_lines(&exporter.log()).is_empty(), "{what}: {}", exporter.log());
}

/// The broken state is repaired: SIGHUP brings the gauge back to 1.
fn assert_reload_recovers(pki: &Pki, exporter: &Exporter, what: &str) {
    let (_, failed_since) = reload_state(pki, exporter);
    let line = sighup_and_wait(exporter, "reloaded web config");
    let (successful, timestamp) = reload_state(pki, exporter);
    assert_eq!(successful, 1.0, "{what} repaired: {line}");
    assert!(timestamp > failed_since, "{what} repaired: success time {timestamp} not after {failed_since}");
}

#[test]
fn sighup_with_broken_files_keeps_the_old_config_serving() {
    let pki = Pki::new("faults-sighup");
    // The CA that checks client certificates is a copy, so the test's own
    // client (curl --cacert ca.crt) keeps trusting the server meanwhile.
    fs::copy(pki.path("ca.crt"), pki.path("client-ca.crt")).expect("copy the CA");
    let write_config = || {
        pki.web_config(
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client-ca.crt\n",
            &format!("basic_auth_users:\n  {USER}: {HASH}\n"),
        )
    };
    let config = write_config();
    let exporter = Exporter::start(&[&ONE_COLLECTOR[..], &[&format!("--web.config.file={config}") as &str]].concat());
    let serial = file_serial(&pki.path("server.crt"));
    assert_eq!(reload_state(&pki, &exporter).0, 1.0);

    // 1. The web config itself is broken YAML (an unterminated quote).
    fs::write(&config, "tls_server_config:\n  cert_file: \"server.crt\n  key_file: server.key\n").expect("break it");
    assert_reload_fails_and_old_config_serves(&pki, &exporter, &serial, "broken web config");
    write_config();
    assert_reload_recovers(&pki, &exporter, "broken web config");

    // 2. The certificate and key are deleted.
    let (crt, key) = (fs::read(pki.path("server.crt")).unwrap(), fs::read(pki.path("server.key")).unwrap());
    fs::remove_file(pki.path("server.crt")).expect("delete the certificate");
    fs::remove_file(pki.path("server.key")).expect("delete the key");
    assert_reload_fails_and_old_config_serves(&pki, &exporter, &serial, "deleted certificate files");
    fs::write(pki.path("server.key"), key).expect("restore the key");
    fs::write(pki.path("server.crt"), crt).expect("restore the certificate");
    assert_reload_recovers(&pki, &exporter, "deleted certificate files");

    // 3. The client CA is replaced by garbage.
    let ca = fs::read(pki.path("client-ca.crt")).unwrap();
    fs::write(pki.path("client-ca.crt"), b"\x00\xffthis is not a certificate\n").expect("garbage CA");
    assert_reload_fails_and_old_config_serves(&pki, &exporter, &serial, "garbage client CA");
    // The old CA still decides: a client from another CA stays out.
    assert_eq!(curl(&pki, exporter.addr, Some("stranger"), &[]).status, 0);
    fs::write(pki.path("client-ca.crt"), ca).expect("restore the CA");
    assert_reload_recovers(&pki, &exporter, "garbage client CA");
    good_scrape(&pki, &exporter);
}

/// Everything below `dir`, as paths.
fn tree(dir: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(path.clone());
            }
            found.insert(path);
        }
    }
    found
}

/// Where a daemon could leave something behind: every BPF filesystem
/// (pinned maps, programs, links), /run and /dev/shm.
fn leftovers_scope() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("read mounts");
    let mut scope: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (point, kind) = (fields.nth(1)?, fields.next()?);
            (kind == "bpf").then(|| PathBuf::from(point))
        })
        .collect();
    scope.extend(["/sys/fs/bpf", "/run", "/dev/shm"].map(PathBuf::from));
    scope
}

/// What is under [`leftovers_scope`] now: everything on BPF filesystems;
/// in /run and /dev/shm, which other processes of the host use too, what
/// names an exporter.
fn snapshot() -> BTreeSet<PathBuf> {
    leftovers_scope()
        .iter()
        .flat_map(|dir| tree(dir))
        .filter(|path| {
            !(path.starts_with("/run") || path.starts_with("/dev/shm"))
                || path.to_string_lossy().to_ascii_lowercase().contains("exporter")
        })
        .collect()
}

/// What `pid` has open that is a path on disk, with its access mode, and
/// whether it has a Unix socket bound to a path. Standard input, output and
/// error are left out: they are what the parent gave it (the test harness
/// sends standard error to a log file).
fn open_paths(pid: u32) -> (Vec<(String, &'static str)>, bool) {
    let mut paths = Vec::new();
    let mut socket_inodes = HashSet::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).expect("read fds").flatten() {
        if entry.file_name().to_str().and_then(|fd| fd.parse::<u32>().ok()).is_some_and(|fd| fd <= 2) {
            continue;
        }
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        let target = target.display().to_string();
        if let Some(inode) = target.strip_prefix("socket:[").and_then(|rest| rest.strip_suffix(']')) {
            socket_inodes.insert(inode.to_owned());
        } else if target.starts_with('/') {
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy()))
                .unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .and_then(|flags| i32::from_str_radix(flags.trim(), 8).ok())
                .unwrap_or(0);
            let mode = match flags & libc::O_ACCMODE {
                libc::O_RDONLY => "read",
                libc::O_WRONLY => "write",
                _ => "read-write",
            };
            paths.push((target, mode));
        }
    }
    let unix = fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let bound_unix = unix.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() >= 8 && socket_inodes.contains(fields[6])
    });
    (paths, bound_unix)
}

#[test]
fn kill_9_and_an_immediate_restart_come_up_clean() {
    let on_disk_before = snapshot();
    let port = free_port();
    let mut first = Exporter::spawn(port, EVERY_COLLECTOR_ARGS);
    first.wait_until_listening();
    first.scrape();
    let first_held = held(first.pid());
    assert_eq!(first_held.programs.len(), every_program_count(), "every program of the first instance");
    assert!(!first_held.maps.is_empty() && !first_held.links.is_empty(), "{first_held:?}");

    // It writes nothing anywhere: the only paths it holds open are read-only
    // kernel files or /dev/null, and it binds no Unix socket.
    let (paths, bound_unix) = open_paths(first.pid());
    for (path, mode) in &paths {
        let harmless =
            path == "/dev/null" || (mode == &"read" && ["/proc/", "/sys/"].iter().any(|p| path.starts_with(p)));
        assert!(harmless, "the daemon holds {path} open for {mode}");
    }
    assert!(!bound_unix, "the daemon bound a Unix socket to a path");

    // A scrape connection open at the moment of the kill.
    let mut open_connection = std::net::TcpStream::connect(first.addr).expect("connect");
    open_connection.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let (status, _) = first.stop(libc::SIGKILL);
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let killed = Instant::now();
    let second = Exporter::spawn(port, EVERY_COLLECTOR_ARGS);
    second.wait_until_listening();
    let restarted = killed.elapsed();
    // The kernel let go of the killed instance's links, programs and maps
    // (they lived only as long as its descriptors); it frees them
    // asynchronously, so give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let stale = || {
        let programs: BTreeSet<u32> =
            loaded_programs().keys().filter(|id| first_held.programs.contains(id)).copied().collect();
        let maps: BTreeSet<u32> = loaded_maps().intersection(&first_held.maps).copied().collect();
        let links: BTreeSet<u32> = loaded_links().intersection(&first_held.links).copied().collect();
        (programs.is_empty() && maps.is_empty() && links.is_empty()).then_some(()).ok_or((programs, maps, links))
    };
    while let Err((programs, maps, links)) = stale() {
        assert!(
            Instant::now() < deadline,
            "the killed instance's objects are still in the kernel: programs {programs:?}, maps {maps:?}, links {links:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let gone_after = killed.elapsed();
    assert_eq!(held(second.pid()).programs.len(), every_program_count(), "the second instance holds its own");
    let metrics = second.scrape();
    for (collector, _) in COLLECTOR_PROGRAMS {
        assert_eq!(metrics.get(&format!("kernel_exporter_collector_up{{collector=\"{collector}\"}}")), 1.0);
    }
    assert!(error_lines(&second.log()).is_empty(), "{}", second.log());
    // The killed instance's connection was closed by the kernel.
    assert!(matches!(open_connection.read(&mut [0u8; 1]), Ok(0) | Err(_)));
    let on_disk_after = snapshot();
    let new: Vec<&PathBuf> = on_disk_after.difference(&on_disk_before).collect();
    assert!(new.is_empty(), "left on disk: {new:?}");
    println!(
        "kill -9 → second instance listening on the same port in {restarted:?}; the killed instance's {} programs, \
         {} maps and {} links gone {gone_after:?} after the kill; nothing new under {:?}",
        first_held.programs.len(),
        first_held.maps.len(),
        first_held.links.len(),
        leftovers_scope(),
    );
}
