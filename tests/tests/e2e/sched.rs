//! The `sched` collector against the kernel's own accounting in /proc/stat.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    process::Command,
    thread,
    time::{Duration, Instant},
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

/// `idle + iowait` of every CPU in /proc/stat, in seconds.
fn proc_stat_idle_seconds() -> Vec<f64> {
    // SAFETY: sysconf has no memory effects.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::fs::read_to_string("/proc/stat")
        .expect("read /proc/stat")
        .lines()
        .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
        .map(|line| {
            let fields: Vec<f64> = line.split_whitespace().skip(1).map(|v| v.parse().expect("number")).collect();
            (fields[3] + fields[4]) / ticks_per_second
        })
        .collect()
}

#[test]
fn idle_seconds_match_proc_stat_per_cpu() {
    // The exporter reads the kernel's own idle accounting: no warm-up.
    let exporter = Exporter::start(&[]);

    let kernel_before = proc_stat_idle_seconds();
    let before = exporter.scrape();
    // Mostly idle, with a little work so both kinds of period occur.
    for _ in 0..6 {
        ping_pong(500);
        thread::sleep(Duration::from_millis(500));
    }
    let after = exporter.scrape();
    let kernel_after = proc_stat_idle_seconds();

    for (cpu, (kernel_before, kernel_after)) in kernel_before.iter().zip(&kernel_after).enumerate() {
        let key = format!("kernel_cpu_idle_seconds_total{{cpu=\"{cpu}\"}}");
        let ours = after.get(&key) - before.get(&key);
        let kernel = kernel_after - kernel_before;
        eprintln!("cpu {cpu}: idle +{ours:.3} s, /proc/stat idle+iowait +{kernel:.3} s");
        // /proc/stat counts in ticks (10 ms) and is read twice, so it is
        // only good to about two ticks; beyond that, 5%.
        let allowed = (kernel * 0.05).max(0.03);
        assert!((ours - kernel).abs() <= allowed, "cpu {cpu}: {ours:.3} s vs {kernel:.3} s (allowed ±{allowed:.3})");
    }
}

#[test]
fn runqueue_latency_counts_woken_tasks() {
    const ROUND_TRIPS: usize = 5_000;
    let exporter = Exporter::start(&[]);
    let before = exporter.scrape();
    let started = Instant::now();
    ping_pong(ROUND_TRIPS);
    let wall = started.elapsed().as_secs_f64();
    let after = exporter.scrape();

    let delta = |key: &str| after.get(key) - before.get(key);
    let count = delta("kernel_sched_runqueue_latency_seconds_count");
    let sum = delta("kernel_sched_runqueue_latency_seconds_sum");
    let switches = delta(SWITCHES);
    eprintln!("runqueue latency: +{count} measured wakeups, +{sum:.6} s, of +{switches} switches in {wall:.3} s");

    // Each round trip wakes each of the two threads once, and each then
    // runs: at least 2 × ROUND_TRIPS measured wakeups. Only switches to a
    // woken task are measured, so never more than the switches.
    assert!(count >= 2.0 * ROUND_TRIPS as f64, "{count} measured wakeups");
    assert!(count <= switches, "{count} measured wakeups > {switches} switches");
    let cpus = proc_stat_idle_seconds().len() as f64;
    assert!(sum > 0.0 && sum <= (wall + 1.0) * cpus, "sum {sum} s");
    assert_eq!(
        after.get("kernel_sched_runqueue_latency_seconds_bucket{le=\"+Inf\"}"),
        after.get("kernel_sched_runqueue_latency_seconds_count")
    );
}

/// `run_delay` (ns) of the calling thread, from `/proc/thread-self/schedstat`.
fn own_run_delay_ns() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("read schedstat");
    text.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("run_delay field")
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the call only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set), 0, "sched_setaffinity");
    }
}

#[test]
fn runqueue_latency_sums_the_kernels_run_delay() {
    // Two busy threads sharing one CPU preempt each other: each waits on
    // the runqueue about half the time. The kernel adds every wait to the
    // thread's run_delay at the switch where the program records it, in the
    // same clock, so the host-wide sum must contain both threads' waits.
    const BUSY: Duration = Duration::from_millis(800);
    let exporter = Exporter::start(&[]);
    let everyone_before = every_tasks_run_delay_ns();
    let before = exporter.scrape();
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(|| {
                pin_to(0);
                let start = own_run_delay_ns();
                let until = Instant::now() + BUSY;
                let mut spins = 0u64;
                while Instant::now() < until {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
                own_run_delay_ns() - start
            })
        })
        .collect();
    let waited_ns: u64 = hogs.into_iter().map(|hog| hog.join().expect("hog thread")).sum();
    let after = exporter.scrape();
    let everyone_after = every_tasks_run_delay_ns();
    let ours = after.get("kernel_sched_runqueue_latency_seconds_sum")
        - before.get("kernel_sched_runqueue_latency_seconds_sum");
    let kernel = waited_ns as f64 / 1e9;
    // What every task alive at the end waited meanwhile (a task born in
    // between counts whole); tasks that exited in between, the two threads
    // among them, are missing from it.
    let everyone = everyone_after
        .iter()
        .map(|(task, delay)| delay.saturating_sub(everyone_before.get(task).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / 1e9;
    eprintln!(
        "runqueue wait: exporter +{ours:.6} s host-wide, the two threads' run_delay +{kernel:.6} s, \
         every live task's +{everyone:.6} s"
    );
    assert!(kernel > 0.2, "the threads hardly waited ({kernel} s): were they on one CPU?");
    // The 1 ms allows for a stint still being timed when a thread read its
    // own schedstat for the last time.
    assert!(ours >= kernel - 0.001, "exporter {ours} s < the threads' own run_delay {kernel} s");
    // Other tasks wait too, as much as a loaded machine makes them, but not
    // for seconds more than the kernel charged the two threads (gone by the
    // second count) and the tasks alive now. Tasks that exited in between
    // took their run_delay with them: a tenth of a second each is allowed
    // for them (a build on this machine exits tasks by the dozen).
    let exited = after.get("kernel_sched_process_exits_total") - before.get("kernel_sched_process_exits_total");
    let allowed = kernel + everyone + 0.5 + 0.1 * exited;
    assert!(
        ours <= allowed,
        "exporter {ours} s > {allowed} s: every live task's run_delay {everyone} s (the threads' {kernel} s), \
         {exited} exits"
    );
}

/// Every thread's run_delay (`/proc/PID/task/TID/schedstat`), by thread id
/// and start time, so a reused id is a new task.
fn every_tasks_run_delay_ns() -> std::collections::HashMap<(String, String), u64> {
    let mut delays = std::collections::HashMap::new();
    let Ok(processes) = std::fs::read_dir("/proc") else { return delays };
    for process in processes.flatten() {
        if !process.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(threads) = std::fs::read_dir(process.path().join("task")) else { continue };
        for thread in threads.flatten() {
            let (Ok(schedstat), Ok(stat)) = (
                std::fs::read_to_string(thread.path().join("schedstat")),
                std::fs::read_to_string(thread.path().join("stat")),
            ) else {
                continue;
            };
            let Some(delay) = schedstat.split_whitespace().nth(1).and_then(|v| v.parse().ok()) else { continue };
            // Field 22 of stat, counted after the command's closing paren.
            let started = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)).unwrap_or("");
            delays.insert((thread.file_name().to_string_lossy().into_owned(), started.to_owned()), delay);
        }
    }
    delays
}

#[test]
fn exec_exit_and_migration_counters_move() {
    let exporter = Exporter::start(&[]);
    let before = exporter.scrape();
    spawn_processes(100);
    let after = exporter.scrape();
    let delta = |key: &str| after.get(key) - before.get(key);
    // Every `true` is one exec and one exit of its only thread.
    assert!(delta("kernel_sched_execs_total") >= 100.0);
    assert!(delta("kernel_sched_process_exits_total") >= 100.0);
    assert!(delta("kernel_sched_migrations_total") >= 0.0);
    assert!(after.get("kernel_sched_migrations_total") > 0.0, "no task ever migrated on a multi-CPU host?");
}
