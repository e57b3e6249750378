//! What every collector shares: disabled collectors load nothing, and one
//! collector that cannot attach leaves the others serving.

use std::{collections::HashMap, process::Command};

use kernel_exporter_tests::{
    ALWAYS_LOADED_PROGRAMS, COLLECTOR_PROGRAMS as PROGRAMS, Exporter, exporter_binary, free_port,
    loaded_bpf_program_names, wait_until_no_exporter_programs,
};

/// How many programs of each name are loaded now.
fn loaded() -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for name in loaded_bpf_program_names() {
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

/// Programs loaded now that were not loaded in `before`.
fn added_since(before: &HashMap<String, usize>) -> Vec<String> {
    let mut added = Vec::new();
    for (name, count) in loaded() {
        for _ in before.get(&name).copied().unwrap_or(0)..count {
            added.push(name.clone());
        }
    }
    added.sort();
    added
}

#[test]
fn a_disabled_collector_loads_no_program() {
    for (enabled, programs) in PROGRAMS {
        wait_until_no_exporter_programs();
        let before = loaded();
        let exporter = Exporter::start(&["--collector.disable-defaults", &format!("--collector.{enabled}")]);
        let mut expected: Vec<String> =
            programs.iter().chain(ALWAYS_LOADED_PROGRAMS).map(|name| (*name).to_owned()).collect();
        expected.sort();
        assert_eq!(added_since(&before), expected, "only {enabled}'s programs are loaded");
        let metrics = exporter.scrape();
        assert_eq!(metrics.get(&format!("kernel_exporter_collector_up{{collector=\"{enabled}\"}}")), 1.0);
        for (other, _) in PROGRAMS.iter().filter(|(name, _)| name != enabled) {
            assert!(
                !metrics.samples.contains_key(&format!("kernel_exporter_collector_up{{collector=\"{other}\"}}")),
                "disabled collector {other} is reported"
            );
        }
    }
}

#[test]
fn a_collector_that_cannot_attach_is_down_and_the_others_serve() {
    let mut command = Command::new(exporter_binary());
    command.env("KERNEL_EXPORTER_TEST_MISSING_TRACEPOINT", "syscalls");
    wait_until_no_exporter_programs();
    let before = loaded();
    let exporter = Exporter::spawn_command(command, free_port(), &["--collector.syscalls"]);
    exporter.wait_until_listening();

    let metrics = exporter.scrape();
    assert_eq!(
        metrics.get("kernel_exporter_collector_up{collector=\"syscalls\"}"),
        0.0,
        "the hook did nothing: was the binary built with `--features test-hooks` (as `cargo xtask test` does)?"
    );
    assert_eq!(metrics.get("kernel_exporter_collector_up{collector=\"sched\"}"), 1.0);
    assert!(metrics.get("kernel_sched_context_switches_total") > 0.0);
    assert!(!metrics.text.contains("kernel_syscalls_total"), "a down collector exports nothing");
    let added = added_since(&before);
    assert!(!added.iter().any(|name| name.starts_with("sys_")), "down collector left programs loaded: {added:?}");

    let log = exporter.log();
    let errors: Vec<&str> = log.lines().filter(|line| line.contains("level=error")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("collector=syscalls"), "{log}");
    assert!(errors[0].contains("tracepoint raw_syscalls/kernel_exporter_test_missing does not exist"), "{log}");
}
