//! Start-up, shutdown and the errors an operator sees.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use kernel_exporter_tests::{
    EVERY_COLLECTOR_ARGS, Exporter, every_program_count, exporter_binary, exporter_programs_loaded, free_port,
    wait_until_no_exporter_programs,
};

fn assert_orderly_exit(signal: libc::c_int, name: &str) {
    wait_until_no_exporter_programs();
    let port = free_port();
    let mut exporter = Exporter::spawn(port, EVERY_COLLECTOR_ARGS);
    // Wait for it to serve, then stop it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while exporter.request_ok().is_none() {
        assert!(Instant::now() < deadline, "never served; log:\n{}", exporter.log());
        thread::sleep(Duration::from_millis(50));
    }
    let all = every_program_count();
    assert_eq!(exporter_programs_loaded(), all, "every collector's programs are loaded while it runs");

    let (status, took) = exporter.stop(signal);
    assert_eq!(status.code(), Some(0), "{name}: exit status {status}; log:\n{}", exporter.log());
    assert!(took < Duration::from_secs(1), "{name}: exit took {took:?}");
    // Panics if programs stay loaded after the exit.
    wait_until_no_exporter_programs();

    // A second start right after, on the same port, works.
    let again = Exporter::spawn(port, &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while again.request_ok().is_none() {
        assert!(Instant::now() < deadline, "restart never served; log:\n{}", again.log());
        thread::sleep(Duration::from_millis(50));
    }
    assert!(again.scrape().get("kernel_sched_context_switches_total") > 0.0);
}

trait RequestOk {
    fn request_ok(&self) -> Option<()>;
}

impl RequestOk for Exporter {
    fn request_ok(&self) -> Option<()> {
        std::net::TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).ok().map(drop)
    }
}

#[test]
fn sigterm_detaches_and_exits_zero_quickly() {
    assert_orderly_exit(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_detaches_and_exits_zero_quickly() {
    assert_orderly_exit(libc::SIGINT, "SIGINT");
}

#[test]
fn sigterm_with_a_scrape_connection_open() {
    let mut exporter = Exporter::start(&[]);
    // A kept-alive connection that sent nothing must not delay the exit.
    let _idle = std::net::TcpStream::connect(exporter.addr).expect("connect");
    let (status, took) = exporter.stop(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
}

#[test]
fn busy_port_fails_with_one_clear_line() {
    let first = Exporter::start(&[]);
    let mut second = Exporter::spawn(first.addr.port(), &[]);
    let status = second.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = second.log();
    let errors: Vec<&str> = log.lines().filter(|line| line.contains("level=error")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains(&format!("cannot listen on {}", first.addr)), "{log}");
    assert!(errors[0].contains("another kernel-exporter"), "{log}");
    // The first one is unaffected.
    first.scrape();
}

#[test]
fn without_privileges_it_says_so_in_one_line() {
    // nobody, with every capability dropped.
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(exporter_binary());
    let mut exporter = Exporter::spawn_command(command, free_port(), &[]);
    let status = exporter.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = exporter.log();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("level=error"), "{log}");
    assert!(log.contains("needs root or the capabilities CAP_BPF and CAP_PERFMON"), "{log}");
}

#[test]
fn bad_flags_are_usage_errors() {
    let out =
        Command::new(exporter_binary()).arg("--web.listen-address=nonsense").output().expect("run kernel-exporter");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--web.listen-address=nonsense"), "{stderr}");
}
