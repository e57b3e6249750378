//! The `sched` collector against the kernel's own accounting in /proc/stat.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    process::Command,
    thread,
};

use kernel_exporter_tests::{Exporter, assert_close, proc_stat, promtool_check_metrics};

const SWITCHES: &str = "kernel_sched_context_switches_total";
const FORKS: &str = "kernel_sched_forks_total";

/// Two threads bouncing a byte over a socket pair: every round trip blocks
/// each side once, so each is at least two context switches.
fn ping_pong(round_trips: usize) {
    let (mut left, mut right) = UnixStream::pair().expect("socket pair");
    let echo = thread::spawn(move || {
        let mut byte = [0u8; 1];
        for _ in 0..round_trips {
            right.read_exact(&mut byte).expect("echo read");
            right.write_all(&byte).expect("echo write");
        }
    });
    let mut byte = [7u8; 1];
    for _ in 0..round_trips {
        left.write_all(&byte).expect("ping write");
        left.read_exact(&mut byte).expect("pong read");
    }
    echo.join().expect("echo thread");
}

fn spawn_processes(count: usize) {
    for _ in 0..count {
        let status = Command::new("true").status().expect("run true");
        assert!(status.success());
    }
}

#[test]
fn counters_match_proc_stat() {
    let exporter = Exporter::start(&[]);

    let kernel_switches_before = proc_stat("ctxt");
    let kernel_forks_before = proc_stat("processes");
    let before = exporter.scrape();

    ping_pong(10_000);
    spawn_processes(250);

    let after = exporter.scrape();
    let kernel_switches = proc_stat("ctxt") - kernel_switches_before;
    let kernel_forks = proc_stat("processes") - kernel_forks_before;

    let switches = after.get(SWITCHES) - before.get(SWITCHES);
    let forks = after.get(FORKS) - before.get(FORKS);

    assert!(kernel_switches >= 10_000, "the workload made only {kernel_switches} context switches");
    assert!(kernel_forks >= 200, "the workload made only {kernel_forks} forks");
    eprintln!("context switches: exporter {switches}, /proc/stat {kernel_switches}");
    eprintln!("forks: exporter {forks}, /proc/stat {kernel_forks}");
    // The /proc/stat readings bracket the scrapes, so both intervals hold
    // the workload and the same background activity within a few events.
    assert_close("context switches", switches, kernel_switches as f64, 0.05);
    assert_close("forks", forks, kernel_forks as f64, 0.05);

    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"sched\"}"), 1.0);
    promtool_check_metrics(&after.text)
        .unwrap_or_else(|found| panic!("promtool check metrics: {found}\n{}", after.text));
}

#[test]
fn disabled_collector_loads_no_program() {
    let exporter = Exporter::start(&["--no-collector.sched", "--collector.sched"]);
    assert_eq!(exporter.scrape().get("kernel_exporter_collector_up{collector=\"sched\"}"), 1.0);
    drop(exporter);

    let status = Exporter::spawn(kernel_exporter_tests::free_port(), &["--no-collector.sched"])
        .wait_exit(std::time::Duration::from_secs(5));
    // With the only collector disabled there is nothing to serve: a usage
    // error, before anything is loaded.
    assert_eq!(status.code(), Some(2));
}
