//! The `mm` collector against the kernel's own accounting: `/proc/vmstat`
//! for page faults and OOM kills, and a memory cgroup's OOM counter.

use std::{
    fs,
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use kernel_exporter_tests::{Exporter, assert_close, promtool_check_metrics};

const FAULTS: &str = "kernel_mm_page_faults_total";
const MAJOR_FAULTS: &str = "kernel_mm_major_page_faults_total";
const OOM_KILLS: &str = "kernel_mm_oom_kills_total";

/// A counter of `/proc/vmstat` (`pgfault`, `oom_kill`, ...).
fn proc_vmstat(field: &str) -> u64 {
    let vmstat = fs::read_to_string("/proc/vmstat").expect("read /proc/vmstat");
    vmstat
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/vmstat"))
}

/// Maps `bytes` of fresh anonymous memory and writes one byte per 4 KiB
/// page: one user-mode page fault per page.
fn touch_fresh_memory(bytes: usize) -> usize {
    const PAGE: usize = 4096;
    // SAFETY: a private anonymous mapping no one else knows about; it is
    // only written inside its bounds, then unmapped.
    unsafe {
        let memory = libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(memory, libc::MAP_FAILED, "mmap of {bytes} bytes");
        // With transparent huge pages one fault would fill 2 MiB; the test
        // wants one fault per page whatever the host's THP setting.
        assert_eq!(libc::madvise(memory, bytes, libc::MADV_NOHUGEPAGE), 0, "madvise(MADV_NOHUGEPAGE)");
        let base = memory.cast::<u8>();
        for offset in (0..bytes).step_by(PAGE) {
            base.add(offset).write_volatile(1);
        }
        assert_eq!(libc::munmap(memory, bytes), 0, "munmap");
    }
    bytes / PAGE
}

#[test]
fn page_faults_match_proc_vmstat() {
    let exporter = Exporter::start(&[]);

    let kernel_before = proc_vmstat("pgfault");
    let before = exporter.scrape();
    let pages = touch_fresh_memory(64 << 20);
    let after = exporter.scrape();
    let kernel = proc_vmstat("pgfault") - kernel_before;

    let faults = after.get(FAULTS) - before.get(FAULTS);
    eprintln!("page faults: exporter {faults}; /proc/vmstat pgfault {kernel}; pages touched {pages}");
    assert!(faults >= pages as f64, "touched {pages} fresh pages but saw only {faults} page faults");
    // The exporter reads pgfault itself, between the test's two reads: its
    // difference lies within theirs, which other tasks' faults widen a bit.
    assert!(faults <= kernel as f64, "{faults} faults counted, /proc/vmstat moved only {kernel}");
    assert_close("page faults vs pgfault", faults, kernel as f64, 0.05);
    let major = after.get(MAJOR_FAULTS);
    assert!(major >= before.get(MAJOR_FAULTS) && major <= proc_vmstat("pgmajfault") as f64, "major faults {major}");

    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"mm\"}"), 1.0);
    promtool_check_metrics(&after.text)
        .unwrap_or_else(|found| panic!("promtool check metrics: {found}\n{}", after.text));
}

/// Where a memory cgroup's counters live, by cgroup version.
#[derive(Debug, Clone, Copy)]
enum Version {
    /// cgroup v2: `memory.max`, `memory.events`.
    V2,
    /// cgroup v1's memory hierarchy: `memory.limit_in_bytes`,
    /// `memory.oom_control`.
    V1,
}

/// A memory cgroup of our own with a small limit, removed when dropped
/// (its processes are killed first), pass or fail.
struct MemoryCgroup {
    path: PathBuf,
    version: Version,
}

impl MemoryCgroup {
    /// Creates `name` with a limit of `limit` bytes and no swap: under a
    /// cgroup v2 mount whose root has the memory controller (enabling it for
    /// children if needed), else under the v1 memory hierarchy.
    fn create(name: &str, limit: u64) -> Self {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
        let mount_of = |wanted: &dyn Fn(&str, &str) -> bool| {
            mounts.lines().find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (&path, &fstype, &options) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
                wanted(fstype, options).then(|| PathBuf::from(path))
            })
        };
        let v2 = mount_of(&|fstype, _| fstype == "cgroup2").filter(|root| {
            fs::read_to_string(root.join("cgroup.controllers"))
                .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "memory"))
        });
        let v1 = mount_of(&|fstype, options| fstype == "cgroup" && options.split(',').any(|o| o == "memory"));
        let (root, version) = match (v2, v1) {
            (Some(root), _) => (root, Version::V2),
            (None, Some(root)) => (root, Version::V1),
            (None, None) => panic!(
                "no memory cgroup controller to put the OOM test in: no cgroup2 mount lists `memory` in its \
                 cgroup.controllers and no cgroup v1 hierarchy is mounted with the memory controller \
                 (/proc/self/mounts):\n{mounts}"
            ),
        };
        if let Version::V2 = version {
            let subtree = root.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&subtree).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "memory") {
                fs::write(&subtree, "+memory")
                    .unwrap_or_else(|e| panic!("enable the memory controller in {}: {e}", subtree.display()));
            }
        }
        let path = root.join(name);
        if path.exists() {
            // Left over from an earlier run that was killed.
            drop(Self { path: path.clone(), version });
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        let cgroup = Self { path, version };
        match version {
            Version::V2 => {
                cgroup.write("memory.max", &limit.to_string());
                if cgroup.path.join("memory.swap.max").exists() {
                    cgroup.write("memory.swap.max", "0");
                }
            }
            Version::V1 => {
                cgroup.write("memory.limit_in_bytes", &limit.to_string());
                // memory+swap may not be below memory alone, so it goes second.
                if cgroup.path.join("memory.memsw.limit_in_bytes").exists() {
                    cgroup.write("memory.memsw.limit_in_bytes", &limit.to_string());
                }
            }
        }
        cgroup
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.path.join(file);
        fs::write(&path, value).unwrap_or_else(|e| panic!("write {value:?} to {}: {e}", path.display()));
    }

    /// The kernel's count of OOM kills in this cgroup.
    fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        let path = self.path.join(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no oom_kill line in {}:\n{text}", path.display()))
    }

    /// Starts `program` inside the cgroup: a shell moves itself in, then
    /// becomes the program, so nothing it allocates is charged elsewhere.
    fn spawn(&self, program: &str) -> Child {
        let procs = self.path.join("cgroup.procs");
        Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > '{}' && exec {program}", procs.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sh")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A cgroup with tasks cannot be removed: kill them, then retry while
        // the dying ones leave.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for pid in fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
                    // SAFETY: kill(2) on a pid in our own test cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("could not remove cgroup {}: {e}", self.path.display());
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn wait_for_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the allocating child was not OOM-killed within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn oom_kills_in_a_memory_cgroup_are_counted() {
    let exporter = Exporter::start(&[]);
    let cgroup = MemoryCgroup::create(&format!("kernel-exporter-e2e-oom-{}", std::process::id()), 32 << 20);

    let vmstat_before = proc_vmstat("oom_kill");
    let cgroup_before = cgroup.oom_kills();
    let before = exporter.scrape();

    // `tail` buffers its input until a newline that /dev/zero never sends,
    // so it allocates until the cgroup's limit stops it.
    let mut child = cgroup.spawn("tail /dev/zero");
    let status = wait_for_exit(&mut child, Duration::from_secs(60));

    let after = exporter.scrape();
    let in_cgroup = cgroup.oom_kills() - cgroup_before;
    let system = proc_vmstat("oom_kill") - vmstat_before;
    drop(cgroup);

    let counted = after.get(OOM_KILLS) - before.get(OOM_KILLS);
    eprintln!("OOM kills: exporter {counted}, cgroup {in_cgroup}, /proc/vmstat oom_kill {system}; child {status}");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "the child was not killed by the OOM killer: {status}");
    assert!(in_cgroup >= 1, "the cgroup counted no OOM kill");
    // The cgroup's kills are a subset of the host's; oom:mark_victim fires
    // once per victim, where the kernel counts oom_kill.
    assert!(counted >= in_cgroup as f64, "exporter {counted} < cgroup {in_cgroup}");
    assert_eq!(counted, system as f64, "exporter and /proc/vmstat oom_kill disagree");

    assert_eq!(after.get("kernel_exporter_collector_up{collector=\"mm\"}"), 1.0);
    promtool_check_metrics(&after.text)
        .unwrap_or_else(|found| panic!("promtool check metrics: {found}\n{}", after.text));
}
