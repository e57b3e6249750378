//! Helpers for the end-to-end tests: start the real `kernel-exporter`,
//! talk HTTP to it, and read what the kernel itself reports.
//!
//! The daemon under test is `$KERNEL_EXPORTER_BIN` (set by
//! `cargo xtask test`), or `target/debug/kernel-exporter`.
#![deny(missing_docs)]

pub mod metrics_proto;

use std::{
    collections::{HashMap, HashSet},
    env,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// How long the daemon may take to load, attach and listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The daemon binary under test.
pub fn exporter_binary() -> PathBuf {
    let binary = env::var_os("KERNEL_EXPORTER_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/kernel-exporter"),
        PathBuf::from,
    );
    assert!(binary.is_file(), "{} does not exist; run the end-to-end tests with `cargo xtask test`", binary.display());
    binary
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A running daemon, killed when dropped. Its standard error is collected
/// so a failing test can show it.
pub struct Exporter {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// Copies standard error into `log`; joined once the process exits so
    /// the log is complete when a test reads it.
    log_reader: Option<thread::JoinHandle<()>>,
}

impl Exporter {
    /// Starts the daemon on a free loopback port with `args`, and waits until
    /// it accepts connections.
    pub fn start(args: &[&str]) -> Self {
        let exporter = Self::spawn(free_port(), args);
        exporter.wait_until_listening();
        exporter
    }

    /// Starts the daemon on `port` without waiting for it.
    pub fn spawn(port: u16, args: &[&str]) -> Self {
        Self::spawn_command(Command::new(exporter_binary()), port, args)
    }

    /// Starts `command` (the daemon, perhaps under a wrapper) listening on
    /// `port` with `args`.
    pub fn spawn_command(mut command: Command, port: u16, args: &[&str]) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut child = command
            .arg(format!("--web.listen-address={addr}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kernel-exporter");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        let log_reader = thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Self { child: Some(child), addr, log, log_reader: Some(log_reader) }
    }

    /// Everything the daemon wrote to standard error so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until the daemon accepts connections; panics with its log if
    /// it does not within the start-up timeout.
    pub fn wait_until_listening(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("kernel-exporter did not listen on {} within {START_TIMEOUT:?}; log:\n{}", self.addr, self.log());
    }

    /// Sends `signal` and waits for the exit; returns the status and how long
    /// the exit took.
    pub fn stop(&mut self, signal: libc::c_int) -> (ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        let sent = Instant::now();
        // SAFETY: kill(2) with our own child's pid; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
        let status = wait_timeout(&mut child, Duration::from_secs(10)).unwrap_or_else(|| {
            panic!("kernel-exporter did not exit within 10 s of signal {signal}; log:\n{}", self.log())
        });
        let took = sent.elapsed();
        self.join_log();
        (status, took)
    }

    /// Waits for the daemon to exit on its own (for start-up failures).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status =
            wait_timeout(&mut child, timeout).unwrap_or_else(|| panic!("kernel-exporter still runs after {timeout:?}"));
        self.join_log();
        status
    }

    /// Waits for the log copier to reach the end of standard error.
    fn join_log(&mut self) {
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
    }

    /// A request with `method` for `path`.
    pub fn request(&self, method: &str, path: &str) -> Response {
        http_request(self.addr, method, path)
    }

    /// `GET` of the telemetry path, which must succeed.
    pub fn scrape(&self) -> Metrics {
        let response = self.request("GET", "/metrics");
        assert_eq!(response.status, 200, "scrape failed: {response:?}\nlog:\n{}", self.log());
        Metrics::parse(&response.body)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for kernel-exporter") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    /// The body as text.
    pub body: String,
}

impl Response {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One HTTP/1.1 request with `Connection: close`, over a plain socket: the
/// tests check the bytes on the wire, not a client library's view of them.
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let raw = String::from_utf8(raw).expect("response is UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("response has a header block");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Response { status, headers, body: body.to_owned() }
}

/// The samples of a text-format scrape, keyed by `name{labels}` as written.
#[derive(Debug)]
pub struct Metrics {
    /// Sample key → value.
    pub samples: HashMap<String, f64>,
    /// The body as scraped.
    pub text: String,
}

impl Metrics {
    /// Parses the sample lines of a text-format body.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
                (key.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")))
            })
            .collect();
        Self { samples, text: text.to_owned() }
    }

    /// The value of sample `key`, which must exist.
    pub fn get(&self, key: &str) -> f64 {
        *self.samples.get(key).unwrap_or_else(|| panic!("no sample {key} in:\n{}", self.text))
    }
}

impl Metrics {
    /// Every family this scrape declares (`# TYPE`), with the `_bucket`,
    /// `_sum` and `_count` series of its histograms.
    pub fn family_names(&self) -> HashSet<String> {
        let mut names = HashSet::new();
        for line in self.text.lines() {
            let mut words = line.split_whitespace();
            if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
                (words.next(), words.next(), words.next(), words.next())
            {
                names.insert(name.to_owned());
                if kind == "histogram" {
                    names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
                }
            }
        }
        names
    }
}

/// What the exporter can serve: the families of a real scrape with every
/// collector on and `--bpf.run-stats`, for documents that name metrics.
pub fn served_metric_names() -> HashSet<String> {
    let args: Vec<&str> = EVERY_COLLECTOR_ARGS.iter().copied().chain(["--bpf.run-stats"]).collect();
    Exporter::start(&args).scrape().family_names()
}

/// A counter of `/proc/stat` (`ctxt`, `processes`, ...).
pub fn proc_stat(field: &str) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    stat.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/stat"))
}

/// Runs `promtool check metrics` on `text`; returns what it printed if it
/// found anything.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (cargo xtask test installs the Debian package prometheus)");
    promtool.stdin.take().expect("piped stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && printed.trim().is_empty() { Ok(()) } else { Err(printed) }
}

/// Each collector's programs, as the kernel names them (15 bytes at most, so
/// some share a name).
pub const COLLECTOR_PROGRAMS: &[(&str, &[&str])] = &[
    ("sched", &["sched_switch", "sched_process_f", "sched_process_e", "sched_process_e", "sched_migrate_t"]),
    ("syscalls", &["sys_enter", "sys_exit"]),
    ("mm", &["mark_victim", "mm_vmscan_direc", "mm_vmscan_direc"]),
    ("irq", &["irq_handler_ent", "softirq_entry", "softirq_exit"]),
    ("signal", &["signal_generate"]),
    ("tcp", &["inet_sock_set_s", "tcp_retransmit_", "tcp_retransmit_", "tcp_send_reset", "tcp_receive_res"]),
    ("block", &["block_rq_issue", "block_rq_comple"]),
    ("net", &["kfree_skb"]),
];

/// Flags that turn on every collector of [`COLLECTOR_PROGRAMS`], those off
/// by default included, for tests about all of them.
pub const EVERY_COLLECTOR_ARGS: &[&str] = &[
    "--collector.sched",
    "--collector.syscalls",
    "--collector.mm",
    "--collector.irq",
    "--collector.signal",
    "--collector.tcp",
    "--collector.block",
    "--collector.net",
];

/// Programs the daemon loads whatever collectors are enabled: the
/// allowlist socket filter, attached to every listening socket.
pub const ALWAYS_LOADED_PROGRAMS: &[&str] = &["allowlist"];

/// How many BPF programs with one of the exporter's program names are loaded.
pub fn exporter_programs_loaded() -> usize {
    loaded_bpf_program_names()
        .iter()
        .filter(|name| {
            ALWAYS_LOADED_PROGRAMS.contains(&name.as_str())
                || COLLECTOR_PROGRAMS.iter().any(|(_, programs)| programs.contains(&name.as_str()))
        })
        .count()
}

/// Waits (up to 5 s) until an exporter that just exited has no programs
/// left: the kernel releases them asynchronously. Panics if they stay.
pub fn wait_until_no_exporter_programs() {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let loaded = exporter_programs_loaded();
        if loaded == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{loaded} programs of an exited kernel-exporter are still loaded");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Names (as the kernel truncates them) of the BPF programs loaded now.
pub fn loaded_bpf_program_names() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| info.name_as_str().map(str::to_owned))
        .collect()
}

/// Asserts `a` and `b` agree within `tolerance` as a ratio.
pub fn assert_close(what: &str, measured: f64, expected: f64, tolerance: f64) {
    assert!(expected > 0.0, "{what}: expected value {expected} is not positive");
    let ratio = measured / expected;
    assert!(
        (ratio - 1.0).abs() <= tolerance,
        "{what}: exporter says {measured}, kernel says {expected} (ratio {ratio:.4}, allowed 1 ± {tolerance})"
    );
}
