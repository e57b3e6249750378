//! Least privilege: after start-up the daemon holds no capability, cannot
//! regain one, and still scrapes and reloads through the descriptors it
//! holds.

use std::{process::Command, time::Duration};

use kernel_exporter_tests::{Exporter, exporter_binary, free_port};

/// A `Name:\tvalue` line of /proc/PID/status.
fn status(pid: u32, field: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// Every thread of the process, not only the main one: capabilities are
/// per thread.
fn assert_unprivileged(pid: u32) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list threads");
    let mut threads = 0;
    for task in tasks {
        let tid: u32 = task.expect("thread").file_name().to_string_lossy().parse().expect("tid");
        threads += 1;
        for field in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
            let path = format!("/proc/{pid}/task/{tid}/status");
            let text = std::fs::read_to_string(&path).expect("thread status");
            let value =
                text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).expect("field").trim().to_owned();
            assert_eq!(value, "0000000000000000", "thread {tid}: {field} is {value}");
        }
    }
    assert!(threads > 1, "expected the runtime's threads too");
    assert_eq!(status(pid, "NoNewPrivs"), "1");
}

#[test]
fn root_start_drops_every_capability_and_keeps_serving() {
    let exporter = Exporter::start(&[]);
    let pid = exporter.pid();
    assert_unprivileged(pid);
    // Started as root, the bounding set could be emptied too.
    assert_eq!(status(pid, "CapBnd"), "0000000000000000");
    // Maps are still read through the descriptors held.
    let metrics = exporter.scrape();
    assert!(metrics.get("kernel_sched_context_switches_total") > 0.0);
    assert!(exporter.log().contains("dropped every capability"), "{}", exporter.log());

    // SIGHUP (a reload) works without privileges.
    // SAFETY: kill(2) to our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    exporter.scrape();
}

#[test]
fn runtime_user_switches_uids_and_groups() {
    let exporter = Exporter::start(&["--runtime.user=nobody"]);
    let pid = exporter.pid();
    assert_unprivileged(pid);
    assert_eq!(status(pid, "Uid").split_whitespace().collect::<Vec<_>>(), ["65534"; 4]);
    assert_eq!(status(pid, "Gid").split_whitespace().collect::<Vec<_>>(), ["65534"; 4]);
    // Every collector still reads its maps as nobody.
    let metrics = exporter.scrape();
    let down: Vec<&String> = metrics
        .samples
        .iter()
        .filter(|(key, value)| key.starts_with("kernel_exporter_collector_up{") && **value != 1.0)
        .map(|(key, _)| key)
        .collect();
    assert!(down.is_empty(), "collectors down after dropping to nobody: {down:?}\n{}", exporter.log());
    assert!(metrics.get("kernel_sched_context_switches_total") > 0.0);
    // A reload as nobody keeps serving.
    // SAFETY: kill(2) to our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(exporter.scrape().get("kernel_exporter_config_last_reload_successful"), 1.0);
}

#[test]
fn unknown_runtime_user_fails_before_loading() {
    let mut exporter = Exporter::spawn(free_port(), &["--runtime.user=no-such-user-kernel-exporter"]);
    let status = exporter.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1));
    let log = exporter.log();
    assert_eq!(log.lines().filter(|l| l.contains("level=error")).count(), 1, "{log}");
    assert!(log.contains("--runtime.user=no-such-user-kernel-exporter: no such user"), "{log}");
    assert!(!log.contains("collector attached"), "{log}");
}

#[test]
fn non_root_with_ambient_capabilities_starts_and_drops_them() {
    // nobody, given CAP_BPF and CAP_PERFMON the way systemd's
    // AmbientCapabilities does.
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+bpf,+perfmon",
            "--ambient-caps=+bpf,+perfmon",
        ])
        .arg(exporter_binary());
    let exporter = Exporter::spawn_command(command, free_port(), &[]);
    exporter.wait_until_listening();
    let pid = exporter.pid();
    assert_unprivileged(pid);
    let metrics = exporter.scrape();
    assert_eq!(metrics.get("kernel_exporter_collector_up{collector=\"sched\"}"), 1.0, "{}", exporter.log());
    assert!(metrics.get("kernel_sched_context_switches_total") > 0.0);
}

/// Kernels before 6.5 with `kernel.unprivileged_bpf_disabled` set refuse
/// every `bpf()` command without CAP_BPF, map reads on held descriptors
/// included; there the daemon keeps CAP_BPF and nothing else. This kernel
/// is newer, so a test hook forces that path: the daemon, switched to
/// `nobody`, holds exactly CAP_BPF on every thread, logs one line saying
/// why, and scrapes and reloads its allowlist (map reads and writes).
#[test]
fn kernels_that_need_cap_bpf_for_map_reads_keep_only_cap_bpf() {
    const CAP_BPF_ONLY: &str = "0000008000000000";
    let dir = std::env::temp_dir().join(format!("kernel-exporter-e2e-cap-bpf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the config directory");
    let config = dir.join("web.yml");
    std::fs::write(&config, "allowed_sources: [127.0.0.1/32]\n").expect("write the web config");
    // Readable by nobody.
    let mode = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).expect("chmod")
    };
    mode(&dir, 0o755);
    mode(&config, 0o644);
    let mut command = Command::new(exporter_binary());
    command.env("KERNEL_EXPORTER_TEST_ASSUME_MAPS_NEED_CAP_BPF", "1");
    let exporter = Exporter::spawn_command(
        command,
        free_port(),
        &["--runtime.user=nobody", &format!("--web.config.file={}", config.display())],
    );
    exporter.wait_until_listening();
    let pid = exporter.pid();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list threads");
    for task in tasks {
        let path = task.expect("thread").path().join("status");
        let text = std::fs::read_to_string(&path).expect("thread status");
        for (field, expected) in [
            ("CapEff", CAP_BPF_ONLY),
            ("CapPrm", CAP_BPF_ONLY),
            ("CapAmb", "0000000000000000"),
            ("CapInh", "0000000000000000"),
        ] {
            let value = text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).expect("field").trim();
            assert_eq!(value, expected, "{}: {field}", path.display());
        }
    }
    assert_eq!(status(pid, "NoNewPrivs"), "1");
    assert_ne!(status(pid, "Uid").split_whitespace().next(), Some("0"), "switched to nobody");
    let log = exporter.log();
    let lines: Vec<&str> = log.lines().filter(|line| line.contains("dropped every capability but CAP_BPF")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("KERNEL_EXPORTER_TEST_ASSUME_MAPS_NEED_CAP_BPF"), "{log}");
    let metrics = exporter.scrape();
    assert!(metrics.get("kernel_sched_context_switches_total") > 0.0);
    assert_eq!(metrics.get("kernel_exporter_allowlist_entries"), 1.0);

    // A reload rewrites the kernel's allowlist: map writes work too.
    std::fs::write(&config, "allowed_sources: [127.0.0.1/32, 127.0.0.2/32]\n").expect("rewrite");
    let line = crate::allowlist::reload_and_wait(&exporter);
    assert!(line.contains("reloaded web config"), "{line}");
    assert_eq!(exporter.scrape().get("kernel_exporter_allowlist_entries"), 2.0);
}
