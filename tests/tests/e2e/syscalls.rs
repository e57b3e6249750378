//! The `syscalls` collector against syscalls this test makes itself.

use kernel_exporter_tests::{Exporter, promtool_check_metrics};

const CALLS: usize = 20_000;

fn sample(metrics: &kernel_exporter_tests::Metrics, family: &str, syscall: &str) -> f64 {
    // A syscall nobody has made yet has no series: that is a zero.
    metrics.samples.get(&format!("{family}{{syscall=\"{syscall}\"}}")).copied().unwrap_or(0.0)
}

#[test]
fn counts_calls_and_errors_by_name() {
    let exporter = Exporter::start(&["--collector.syscalls"]);
    let before = exporter.scrape();

    for _ in 0..CALLS {
        // SAFETY: getppid has no arguments and cannot fail; the raw syscall
        // keeps libc from answering from a cache.
        unsafe { libc::syscall(libc::SYS_getppid) };
        // SAFETY: closing fd -1 touches nothing and fails with EBADF.
        let rc = unsafe { libc::close(-1) };
        assert_eq!(rc, -1);
    }

    let after = exporter.scrape();
    let delta = |family: &str, syscall: &str| sample(&after, family, syscall) - sample(&before, family, syscall);
    let getppid = delta("kernel_syscalls_total", "getppid");
    let close_errors = delta("kernel_syscall_errors_total", "close");
    let close_calls = delta("kernel_syscalls_total", "close");
    let getppid_errors = delta("kernel_syscall_errors_total", "getppid");
    eprintln!("getppid calls +{getppid}, close calls +{close_calls}, close errors +{close_errors}");

    // At least ours; other processes on the host add a few of their own
    // (getppid is rare; failing closes happen in shells and daemons), so
    // "not much more" is 2% plus a small constant.
    let ceiling = CALLS as f64 * 1.02 + 200.0;
    assert!((CALLS as f64..=ceiling).contains(&getppid), "getppid +{getppid}, made {CALLS}");
    assert!((CALLS as f64..=ceiling).contains(&close_errors), "close errors +{close_errors}, made {CALLS}");
    assert!(close_calls >= close_errors, "close calls +{close_calls} < errors +{close_errors}");
    // getppid cannot fail.
    assert_eq!(getppid_errors, 0.0);

    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"syscalls\"}"), 1.0);
    promtool_check_metrics(&after.text).unwrap_or_else(|found| panic!("promtool check metrics: {found}"));
}
