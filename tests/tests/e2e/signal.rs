//! The `signal` collector against signals the test sends itself.

use std::process::{Command, Stdio};

use kernel_exporter_tests::{Exporter, promtool_check_metrics};

/// Signals sent in the test.
const SENT: u32 = 500;

/// Signals of the same number others on the host may send meanwhile:
/// SIGWINCH comes from terminals being resized, which a test host has none
/// of, but a margin keeps a stray one from failing the test.
const OTHERS: f64 = 50.0;

#[test]
fn every_signal_sent_is_counted_once() {
    let exporter = Exporter::start(&[]);
    // SIGWINCH's default action is to ignore it: `sleep` survives all of
    // them, and each is still an attempt the kernel traces ("generated"
    // counts ignored signals too).
    let mut child = Command::new("sleep").arg("30").stdin(Stdio::null()).spawn().expect("start sleep");
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");

    let key = "kernel_signals_generated_total{signal=\"SIGWINCH\"}";
    let before = exporter.scrape();
    // The series exists only once the signal was ever sent.
    let counted_before = before.samples.get(key).copied().unwrap_or(0.0);
    for _ in 0..SENT {
        // SAFETY: kill(2) on our own child; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGWINCH) }, 0, "kill({pid}, SIGWINCH)");
    }
    let after = exporter.scrape();
    let _ = child.kill();
    let _ = child.wait();

    let counted = after.get(key) - counted_before;
    eprintln!("SIGWINCH: sent {SENT}, exporter counted {counted}");
    assert!(counted >= f64::from(SENT), "sent {SENT} SIGWINCH, exporter counted {counted}");
    assert!(counted <= f64::from(SENT) + OTHERS, "sent {SENT} SIGWINCH, exporter counted {counted}");

    // Only signals that were sent have a series: no zeros, and none for
    // SIGSTKFLT, which Linux never raises and nothing sends.
    let series: Vec<(&String, &f64)> =
        after.samples.iter().filter(|(k, _)| k.starts_with("kernel_signals_generated_total{")).collect();
    assert!(series.len() <= 64, "{series:?}");
    assert!(series.iter().all(|(_, v)| **v > 0.0), "{series:?}");
    assert!(!after.text.contains("signal=\"SIGSTKFLT\""), "{}", after.text);
    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"signal\"}"), 1.0);
    promtool_check_metrics(&after.text)
        .unwrap_or_else(|found| panic!("promtool check metrics: {found}\n{}", after.text));
}
