//! The `cgroup` collector against the kernel's own per-cgroup and per-task
//! accounting (`cpu.stat`, `/proc/PID/schedstat`), on cgroups the tests
//! create in the cgroup2 hierarchy (on this hybrid host,
//! `/sys/fs/cgroup/unified`).

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    fs,
    io::Write as _,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use kernel_exporter_tests::{Exporter, Metrics, assert_close, exporter_binary, free_port, promtool_check_metrics};

const CPU: &str = "kernel_cgroup_cpu_seconds_total";
const RUNQUEUE_SUM: &str = "kernel_cgroup_runqueue_latency_seconds_sum";
const RUNQUEUE_COUNT: &str = "kernel_cgroup_runqueue_latency_seconds_count";
/// Longer than the kernel side keeps a busy CPU's counts from the map.
const FLUSHED_WITHIN: Duration = Duration::from_millis(200);

/// The mount of the whole cgroup2 hierarchy (its root has the root
/// cgroup's id, 1). (Also used by `deployment`, to mount it into a
/// container.)
pub(crate) fn cgroup2_root() -> PathBuf {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            let point = mount.split(' ').nth(4)?;
            (fs.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(point))
        })
        .find(|path| fs::metadata(path).is_ok_and(|metadata| metadata.ino() == 1))
        .expect("this host has a cgroup2 mount (DESIGN: hybrid hierarchy, /sys/fs/cgroup/unified)")
}

/// A cgroup (and its missing parents) created for a test, removed with
/// everything in it when dropped.
struct TestCgroup {
    /// Relative to the cgroup2 root, `/a/b`.
    path: String,
    dir: PathBuf,
    /// The directories this created, deepest first.
    created: Vec<PathBuf>,
}

impl TestCgroup {
    fn create(path: &str) -> Self {
        let root = cgroup2_root();
        let mut created = Vec::new();
        let mut dir = root.clone();
        for part in path.split('/').filter(|part| !part.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
                created.push(dir.clone());
            }
        }
        created.reverse();
        Self { path: path.to_owned(), dir, created }
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.path));
    }

    /// `usage_usec` of the cgroup's `cpu.stat`, which the kernel keeps on
    /// cgroup2 without the cpu controller too.
    fn usage_usec(&self) -> u64 {
        let stat = fs::read_to_string(self.dir.join("cpu.stat")).expect("read cpu.stat");
        stat.lines()
            .find_map(|line| line.strip_prefix("usage_usec "))
            .and_then(|value| value.trim().parse().ok())
            .expect("usage_usec in cpu.stat")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in &self.created {
            // Kills whatever a failed test left running in it.
            let _ = fs::write(dir.join("cgroup.kill"), "1");
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A shell that burns CPU once released ([`Burner::release`]), optionally
/// pinned to CPU 0; stopped and killed on drop.
struct Burner {
    child: Child,
}

impl Burner {
    fn spawn(pin_to_cpu0: bool) -> Self {
        let mut command = if pin_to_cpu0 {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", "0", "sh"]);
            taskset
        } else {
            Command::new("sh")
        };
        let child = command
            .args(["-c", "read go; while :; do :; done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn a burner");
        let burner = Self { child };
        // Blocked in `read` (taskset has exec'd sh by then).
        burner.wait_state('S');
        burner
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn release(&mut self) {
        self.child.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("release the burner");
    }

    /// Stops it: its last switch-out charges everything it ran and waited.
    fn stop(&self) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.pid() as i32, libc::SIGSTOP) };
        self.wait_state('T');
        // The kernel side adds a CPU's cached counts to the map when the
        // CPU goes idle or within 50 ms (exporter-ebpf/src/cgroup.rs).
        thread::sleep(FLUSHED_WITHIN);
    }

    fn wait_state(&self, want: char) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            let exe = fs::read_link(format!("/proc/{}/exe", self.pid())).unwrap_or_default();
            if state == Some(want) && !exe.ends_with("taskset") {
                return;
            }
            assert!(Instant::now() < deadline, "burner {} never reached state {want}: {stat}", self.pid());
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// `run_delay` of `/proc/PID/schedstat`, in nanoseconds.
    fn run_delay_ns(&self) -> u64 {
        let schedstat = fs::read_to_string(format!("/proc/{}/schedstat", self.pid())).expect("read schedstat");
        schedstat.split_whitespace().nth(1).and_then(|value| value.parse().ok()).expect("run_delay in schedstat")
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn series(family: &str, cgroup: &str) -> String {
    format!("{family}{{cgroup=\"{cgroup}\"}}")
}

/// A sample's value, 0 when it is not (yet) there.
fn value_or_zero(metrics: &Metrics, key: &str) -> f64 {
    metrics.samples.get(key).copied().unwrap_or(0.0)
}

#[test]
fn cpu_time_matches_the_cgroups_cpu_stat() {
    let cgroup = TestCgroup::create("/kx-e2e.slice/kx-test.service");
    let exporter = Exporter::start(&["--collector.disable-defaults", "--collector.cgroup"]);
    let label = series(CPU, &cgroup.path);

    let mut burner = Burner::spawn(false);
    cgroup.add(burner.pid());
    let usage_before = cgroup.usage_usec();
    let before = exporter.scrape();
    burner.release();
    thread::sleep(Duration::from_secs(2));
    burner.stop();
    let usage = (cgroup.usage_usec() - usage_before) as f64 / 1e6;
    let after = exporter.scrape();
    let charged = after.get(&label) - value_or_zero(&before, &label);
    eprintln!("cgroup {} ran {charged:.4} s by the exporter, {usage:.4} s by cpu.stat", cgroup.path);
    assert!(usage > 0.2, "the burner hardly ran ({usage} s): is the host overloaded?");
    assert_close("CPU time of the test cgroup", charged, usage, 0.05);
    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"cgroup\"}"), 1.0);
    promtool_check_metrics(&after.text).unwrap_or_else(|found| panic!("promtool: {found}\n{}", after.text));
}

#[test]
fn runqueue_latency_matches_the_tasks_run_delay() {
    let cgroup = TestCgroup::create("/kx-e2e.slice/kx-test.service");
    let exporter = Exporter::start(&["--collector.disable-defaults", "--collector.cgroup"]);
    let sum = series(RUNQUEUE_SUM, &cgroup.path);
    let count = series(RUNQUEUE_COUNT, &cgroup.path);

    // Two burners on one CPU: each waits while the other runs.
    let mut burners = [Burner::spawn(true), Burner::spawn(true)];
    for burner in &burners {
        cgroup.add(burner.pid());
    }
    let delay_before: u64 = burners.iter().map(Burner::run_delay_ns).sum();
    let before = exporter.scrape();
    for burner in &mut burners {
        burner.release();
    }
    thread::sleep(Duration::from_secs(1));
    for burner in &burners {
        burner.stop();
    }
    let delay = (burners.iter().map(Burner::run_delay_ns).sum::<u64>() - delay_before) as f64 / 1e9;
    let after = exporter.scrape();
    let waited = after.get(&sum) - value_or_zero(&before, &sum);
    let waits = after.get(&count) - value_or_zero(&before, &count);
    eprintln!("waited {waited:.4} s in {waits} waits by the exporter, {delay:.4} s by schedstat run_delay");
    assert!(delay > 0.1, "the burners hardly waited ({delay} s)");
    assert_close("runqueue latency of the test cgroup", waited, delay, 0.10);
}

/// Runs `true` inside `cgroup` (moved in between fork and exec) and waits.
fn run_in(cgroup: &TestCgroup) {
    let procs = CString::new(cgroup.dir.join("cgroup.procs").into_os_string().into_encoded_bytes())
        .expect("a path without NUL");
    let mut command = Command::new("true");
    // SAFETY: only async-signal-safe calls (open, write, close) between
    // fork and exec, on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0": the writing process itself.
            let written = libc::write(fd, c"0".as_ptr().cast(), 1);
            libc::close(fd);
            if written != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = command.status().expect("run true in a cgroup");
    assert!(status.success());
}

/// Every `kernel_cgroup_*` sample of a scrape (histogram buckets
/// included: each is a counter), and the `cgroup` values.
fn cgroup_samples(metrics: &Metrics) -> (BTreeMap<String, f64>, HashSet<String>) {
    let samples: BTreeMap<String, f64> = metrics
        .samples
        .iter()
        .filter(|(key, _)| key.starts_with("kernel_cgroup_"))
        .map(|(key, value)| (key.clone(), *value))
        .collect();
    let values = samples
        .keys()
        .filter_map(|key| key.split_once("cgroup=\"").and_then(|(_, rest)| rest.split_once('"')).map(|(v, _)| v))
        .map(str::to_owned)
        .collect();
    (samples, values)
}

fn total_cpu(samples: &BTreeMap<String, f64>) -> f64 {
    samples.iter().filter(|(key, _)| key.starts_with(CPU)).map(|(_, value)| value).sum()
}

/// 2,000 cgroups, each running one short task, created and removed while
/// the exporter is scraped; its map shrunk to 128 ids so the kernel evicts
/// ids meanwhile too.
#[test]
fn churn_of_2000_cgroups_stays_bounded_and_monotonic() {
    const CGROUPS: usize = 2000;
    /// Fewer than the map's 128 ids between scrapes, so the exporter sees
    /// every cgroup before the kernel can evict it.
    const PER_ROUND: usize = 50;
    /// Cgroups kept between rounds.
    const LIVE: usize = 400;
    let parent = TestCgroup::create("/kx-churn.slice");
    let mut command = Command::new(exporter_binary());
    command.env("KERNEL_EXPORTER_TEST_MAP_MAX_ENTRIES", "CGROUP_STATS=128");
    let exporter = Exporter::spawn_command(
        command,
        free_port(),
        &["--collector.disable-defaults", "--collector.cgroup", "--runtime.user=nobody"],
    );
    exporter.wait_until_listening();

    let mut previous = cgroup_samples(&exporter.scrape()).0;
    let mut most_values = 0;
    let mut live: Vec<TestCgroup> = Vec::new();
    for round in 0..CGROUPS / PER_ROUND {
        for i in 0..PER_ROUND {
            let cgroup = TestCgroup::create(&format!("{}/c{:04}", parent.path, round * PER_ROUND + i));
            run_in(&cgroup);
            live.push(cgroup);
        }
        thread::sleep(FLUSHED_WITHIN);
        let (now, values) = cgroup_samples(&exporter.scrape());
        most_values = most_values.max(values.len());
        assert!(values.len() <= 257, "{} cgroup values exposed", values.len());
        for (key, value) in &now {
            if let Some(before) = previous.get(key) {
                assert!(value >= before, "{key} went back from {before} to {value}");
            }
        }
        assert!(total_cpu(&now) >= total_cpu(&previous) * (1.0 - 1e-9), "the CPU total went back");
        previous = now;
        // All but the newest LIVE go: more than max-series live at a time.
        let keep = live.split_off(live.len().saturating_sub(LIVE));
        drop(std::mem::replace(&mut live, keep));
    }
    assert_eq!(most_values, 257, "max-series (256) was never reached, or exceeded, with {LIVE} live cgroups");
    thread::sleep(FLUSHED_WITHIN);
    let (with_live, values) = cgroup_samples(&exporter.scrape());
    assert!(values.contains("other"), "more cgroups than max-series, yet no other: {values:?}");
    assert!(with_live[&series(CPU, "other")] > 0.0);
    assert!(
        live.iter().any(|cgroup| values.contains(&cgroup.path)),
        "no live churn cgroup has a series of its own: {values:?}"
    );
    let removed = std::mem::take(&mut live);
    let removed_paths: Vec<String> = removed.iter().map(|cgroup| cgroup.path.clone()).collect();
    drop(removed);
    // Removal is seen at the scrape after a cgroup's counts stop moving, and
    // a CPU's cache may hand the last counts to the map a little later (when
    // the CPU idles or the slot is needed), so a few scrapes apart.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (metrics, after, values) = loop {
        let metrics = exporter.scrape();
        let (after, values) = cgroup_samples(&metrics);
        let left: Vec<&String> = values.iter().filter(|value| value.starts_with("/kx-churn.slice/c")).collect();
        if left.is_empty() {
            break (metrics, after, values);
        }
        assert!(Instant::now() < deadline, "removed cgroups still have series after 5 s of scrapes: {left:?}");
        thread::sleep(FLUSHED_WITHIN);
    };
    assert!(removed_paths.iter().all(|path| !metrics.text.contains(&format!("\"{path}\""))));
    assert!(total_cpu(&after) >= total_cpu(&with_live) * (1.0 - 1e-9), "the CPU total went back at removal");
    assert_eq!(metrics.get("kernel_exporter_collector_up{collector=\"cgroup\"}"), 1.0);
    eprintln!("{CGROUPS} cgroups churned: at most {most_values} cgroup values per scrape, {} at the end", values.len());
}

#[test]
fn pods_roll_up_with_their_uid_and_sessions_to_the_user_slice() {
    let uid = "0a1b2c3d-4e5f-4789-abcd-ef0123456789";
    let pod = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
    let container = TestCgroup::create(&format!("{pod}/cri-containerd-0123456789abcdef.scope"));
    let session = TestCgroup::create("/user.slice/user-1000.slice/session-3.scope");
    // Resolution after the privilege drop: the daemon runs as nobody.
    let exporter = Exporter::start(&["--collector.disable-defaults", "--collector.cgroup", "--runtime.user=nobody"]);
    for cgroup in [&container, &session] {
        let mut burner = Burner::spawn(false);
        cgroup.add(burner.pid());
        burner.release();
        thread::sleep(Duration::from_millis(200));
        burner.stop();
    }
    let metrics = exporter.scrape();
    let pod_series = format!("{CPU}{{cgroup=\"{pod}\",pod_uid=\"{uid}\"}}");
    assert!(metrics.get(&pod_series) > 0.05, "{}", metrics.text);
    assert!(metrics.get(&series(CPU, "/user.slice")) > 0.05, "{}", metrics.text);
    assert!(metrics.get(&format!("{RUNQUEUE_COUNT}{{cgroup=\"{pod}\",pod_uid=\"{uid}\"}}")) >= 1.0);
    for deeper in [&container.path, &session.path, &"/user.slice/user-1000.slice".to_owned()] {
        assert!(!metrics.text.contains(&format!("\"{deeper}\"")), "{deeper} is not rolled up:\n{}", metrics.text);
    }
    assert!(!metrics.text.contains("user-1000"), "a user id in a label");
}

/// The exporter's resident memory with 4,096 cgroups in its map (the
/// kernel map's bound).
#[test]
fn memory_with_4096_cgroups() {
    const CGROUPS: usize = 4096;
    let parent = TestCgroup::create("/kx-rss.slice");
    let exporter = Exporter::start(&["--collector.disable-defaults", "--collector.cgroup"]);
    let rss = || {
        let status = fs::read_to_string(format!("/proc/{}/status", exporter.pid())).expect("status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
    };
    exporter.scrape();
    let idle_kb = rss();
    let cgroups: Vec<TestCgroup> =
        (0..CGROUPS).map(|i| TestCgroup::create(&format!("{}/c{i:04}", parent.path))).collect();
    for cgroup in &cgroups {
        run_in(cgroup);
    }
    let started = Instant::now();
    let metrics = exporter.scrape();
    let took = started.elapsed();
    let again = Instant::now();
    exporter.scrape();
    let steady = again.elapsed();
    let loaded_kb = rss();
    let (_, values) = cgroup_samples(&metrics);
    eprintln!(
        "RSS {idle_kb} kB idle, {loaded_kb} kB with {CGROUPS} cgroups ({} label values); first scrape {took:?}, \
         next {steady:?}",
        values.len()
    );
    assert!(values.len() <= 257);
    assert!(loaded_kb < 64 * 1024, "RSS {loaded_kb} kB with {CGROUPS} cgroups");
}

/// Without a cgroup2 mount (unmounted in a mount namespace of its own) the
/// collector is down with one line saying so, and `sched`, whose program it
/// shares and which attached it first, keeps counting.
#[test]
fn without_cgroup2_it_is_down_in_one_line_and_sched_keeps_the_shared_program() {
    let root = cgroup2_root();
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c"]);
    command.arg(format!("umount {} && exec \"$0\" \"$@\"", root.display()));
    command.arg(exporter_binary());
    let exporter = Exporter::spawn_command(
        command,
        free_port(),
        &["--collector.disable-defaults", "--collector.sched", "--collector.cgroup"],
    );
    exporter.wait_until_listening();
    let before = exporter.scrape();
    thread::sleep(Duration::from_millis(200));
    let after = exporter.scrape();
    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"cgroup\"}"), 0.0, "{}", exporter.log());
    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"sched\"}"), 1.0, "{}", exporter.log());
    assert!(
        after.get("kernel_sched_context_switches_total") > before.get("kernel_sched_context_switches_total"),
        "sched_switch was unloaded with the failed collector"
    );
    assert!(!after.text.contains("kernel_cgroup_"), "a down collector exports nothing");
    let log = exporter.log();
    let down: Vec<&str> = log.lines().filter(|line| line.contains("collector is down")).collect();
    assert_eq!(down.len(), 1, "{log}");
    assert!(down[0].contains("collector=cgroup") && down[0].contains("no cgroup2 file system is mounted"), "{log}");
}
