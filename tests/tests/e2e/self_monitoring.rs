//! The exporter's own health: its programs' kernel-side cost, requests in
//! flight, start time, version.

use std::{process::Command, time::SystemTime};

use kernel_exporter_tests::{Exporter, exporter_binary};

#[test]
fn program_run_statistics_move() {
    let exporter = Exporter::start(&["--bpf.run-stats", "--collector.syscalls", "--collector.irq"]);
    let before = exporter.scrape();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let after = exporter.scrape();
    let key = |family: &str| format!("{family}{{program=\"sched_switch\"}}");
    let runs = after.get(&key("kernel_exporter_bpf_program_runs_total"));
    let seconds = after.get(&key("kernel_exporter_bpf_program_run_seconds_total"));
    assert!(runs > before.get(&key("kernel_exporter_bpf_program_runs_total")), "runs did not grow");
    assert!(seconds > 0.0, "run time is zero: are run statistics off? log:\n{}", exporter.log());
    // A few microseconds per switch at most, even in a VM.
    assert!(seconds / runs < 20e-6, "{seconds} s over {runs} runs");
    // Every hash map's fill is reported against its bound.
    for map in ["BLOCK_IO", "ISSUE_TIMES", "TCP_CONNECT_STARTS"] {
        let entries = after.get(&format!("kernel_exporter_bpf_map_entries{{map=\"{map}\"}}"));
        let bound = after.get(&format!("kernel_exporter_bpf_map_max_entries{{map=\"{map}\"}}"));
        assert!(bound >= 1024.0 && entries <= bound, "{map}: {entries} of {bound}");
    }
    // Programs of every loaded collector are listed, under their own names.
    for program in ["sys_enter", "softirq_entry", "block_rq_complete", "signal_generate", "kfree_skb"] {
        assert!(
            after.samples.contains_key(&key("kernel_exporter_bpf_program_runs_total").replace("sched_switch", program))
        );
    }
}

#[test]
fn run_statistics_are_off_by_default() {
    let exporter = Exporter::start(&[]);
    let metrics = exporter.scrape();
    // They cost every program run two clock reads: nothing counts unless
    // asked for, and zeros that would read as idle programs are not shown.
    assert!(!metrics.text.contains("kernel_exporter_bpf_program_run"), "{}", metrics.text);
    // The maps' fill is the kernel's to count at any time.
    assert!(metrics.text.contains("\nkernel_exporter_bpf_map_entries{"), "{}", metrics.text);
}

#[test]
fn in_flight_start_time_and_version() {
    let exporter = Exporter::start(&[]);
    let metrics = exporter.scrape();
    // The scrape that reads it is in flight itself.
    assert_eq!(metrics.get("kernel_exporter_requests_in_flight"), 1.0);
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    let started = metrics.get("kernel_exporter_start_time_seconds");
    assert!((now - started).abs() < 60.0, "start time {started}, now {now}");

    let out = Command::new(exporter_binary()).arg("--version").output().expect("run --version");
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("kernel-exporter 0."), "{version}");
    assert!(version.contains("revision ") && version.contains("BPF object "), "{version}");
    let help = Command::new(exporter_binary()).arg("--help").output().expect("run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for heading in ["Web:", "Runtime:", "Logging:", "Collectors:"] {
        assert!(help.contains(heading), "--help lacks {heading}\n{help}");
    }
}

#[test]
fn access_log_has_a_bounded_line_per_request() {
    let exporter = Exporter::start(&[]);
    exporter.scrape();
    assert_eq!(exporter.request("GET", "/nope").status, 404);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let log = exporter.log();
    let access: Vec<&str> = log.lines().filter(|line| line.contains("source=access")).collect();
    assert!(
        access
            .iter()
            .any(|l| l.contains("source=127.0.0.1") && l.contains("path=/metrics") && l.contains("status=200")),
        "{log}"
    );
    assert!(access.iter().any(|l| l.contains("path=/nope") && l.contains("status=404") && l.contains("bytes=19")));

    // A flood of 400 requests logs at most the burst plus the refill, and a
    // line after it says how many were left out.
    let started = std::time::Instant::now();
    for _ in 0..400 {
        exporter.request("GET", "/nope");
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    exporter.request("GET", "/nope");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let log = exporter.log();
    let lines = log.lines().filter(|line| line.contains("source=access")).count();
    let bound = 100.0 + 20.0 * (elapsed + 1.5) + 4.0;
    assert!((lines as f64) <= bound, "{lines} access lines for 403 requests in {elapsed:.2} s (bound {bound:.0})");
    let suppressed: u64 = log
        .lines()
        .filter(|line| line.contains("source=access"))
        .filter_map(|line| line.split("suppressed=").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(suppressed > 0, "no suppressed count reported");
    assert_eq!(suppressed as usize + lines, 403, "every request is either logged or counted");
}
