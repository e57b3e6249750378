//! The exporter's own health: its programs' kernel-side cost, requests in
//! flight, start time, version.

use std::{process::Command, time::SystemTime};

use kernel_exporter_tests::{Exporter, exporter_binary};

#[test]
fn program_run_statistics_move() {
    let exporter = Exporter::start(&[]);
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
    // Programs of every loaded collector are listed, under their own names.
    for program in ["sys_enter", "softirq_entry", "block_rq_complete", "signal_generate"] {
        assert!(
            after.samples.contains_key(&key("kernel_exporter_bpf_program_runs_total").replace("sched_switch", program))
        );
    }
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
