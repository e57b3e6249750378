//! Helpers for the end-to-end tests: start the real `kernel-exporter`,
//! talk HTTP to it, and read what the kernel itself reports.
//!
//! The daemon under test is `$KERNEL_EXPORTER_BIN` (set by
//! `cargo xtask test`), or `target/debug/kernel-exporter`.
#![deny(missing_docs)]

pub mod metrics_proto;

// One definition of each fixture for tests, soak, benchmarks and
// `cargo xtask run --tls`; re-exported so a test needs one import path.
pub use kernel_exporter_fixtures::{self as fixtures, ONE_COLLECTOR, credentials, daemon::Daemon, pki};

use std::{
    collections::{HashMap, HashSet},
    env, fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, ExitStatus, Stdio},
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
    fixtures::free_port().expect("a free loopback port")
}

/// A running daemon, killed when dropped. Its standard error goes to a log
/// file that is removed with it, so a failing test can show it.
pub struct Exporter {
    daemon: Daemon,
    /// Where it listens.
    pub addr: SocketAddr,
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
    pub fn spawn_command(command: Command, port: u16, args: &[&str]) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = env::temp_dir().join("kernel-exporter-e2e-logs");
        fs::create_dir_all(&dir).expect("create the daemon log folder");
        let log = dir.join(format!("{}-{port}.log", std::process::id()));
        let _ = fs::remove_file(&log);
        let daemon = Daemon::spawn(command, addr, args, &log).expect("start kernel-exporter");
        Self { daemon, addr }
    }

    /// Everything the daemon wrote to standard error so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
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
        self.daemon.stop(signal, Duration::from_secs(10)).unwrap_or_else(|error| panic!("{error}"))
    }

    /// Waits for the daemon to exit on its own (for start-up failures).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.daemon
            .wait_exit(timeout)
            .unwrap_or_else(|error| panic!("{error}"))
            .unwrap_or_else(|| panic!("kernel-exporter still runs after {timeout:?}"))
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
        self.daemon.kill();
        let _ = fs::remove_file(self.daemon.log_path());
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
    let stat = fs::read_to_string("/proc/stat").expect("read /proc/stat");
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
    // The sched collector's program: one program serves both.
    ("cgroup", &["sched_switch"]),
];

/// Programs listed under more than one collector in [`COLLECTOR_PROGRAMS`]
/// that the daemon loads once for all of them.
pub const SHARED_PROGRAMS: &[&str] = &["sched_switch"];

/// How many programs the daemon loads with every collector on, the
/// always-loaded ones included: a shared program counts once.
pub fn every_program_count() -> usize {
    let listed = COLLECTOR_PROGRAMS.iter().map(|(_, programs)| programs.len()).sum::<usize>();
    let repeats: usize = SHARED_PROGRAMS
        .iter()
        .map(|shared| {
            COLLECTOR_PROGRAMS.iter().filter(|(_, programs)| programs.contains(shared)).count().saturating_sub(1)
        })
        .sum();
    listed - repeats + ALWAYS_LOADED_PROGRAMS.len()
}

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
    "--collector.cgroup",
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

/// The end-to-end tests' PKI, in a fresh scratch folder per test: a CA, a
/// server certificate for 127.0.0.1 and localhost, client certificates
/// (`client` for prometheus.example, `grafana`), and a second CA nobody
/// trusts with a `stranger` client certificate.
pub struct Pki {
    inner: pki::Pki,
    /// The folder.
    pub dir: PathBuf,
}

impl Pki {
    /// The set for the test named `test`.
    pub fn new(test: &str) -> Self {
        let dir = env::temp_dir().join(format!("kernel-exporter-e2e-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let inner = pki::Pki::in_dir(&dir, "test", 2).expect("create the PKI folder");
        let pki = Self { inner, dir };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf("server", "ca", "DNS:localhost,IP:127.0.0.1", "serverAuth");
        pki.leaf("client", "ca", "DNS:prometheus.example", "clientAuth");
        pki.leaf("grafana", "ca", "DNS:grafana.example", "clientAuth");
        pki.leaf("stranger", "other-ca", "DNS:prometheus.example", "clientAuth");
        pki
    }

    /// The path of `name` (e.g. `ca.crt`), as a command-line argument.
    pub fn path(&self, name: &str) -> String {
        self.inner.path(name).display().to_string()
    }

    fn ca(&self, name: &str) {
        self.inner.ca(name).unwrap_or_else(|error| panic!("{error}"));
    }

    /// A certificate for `name` signed by `ca` (see [`pki::Pki::leaf`]).
    pub fn leaf(&self, name: &str, ca: &str, san: &str, usage: &str) {
        self.inner.leaf(name, ca, san, usage).unwrap_or_else(|error| panic!("{error}"));
    }

    /// Writes a web config with the server's certificate and `extra` lines
    /// under `tls_server_config`, plus `rest` at the top level.
    pub fn web_config(&self, extra: &str, rest: &str) -> String {
        let path = self.path("web.yml");
        let text = format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}{rest}");
        fs::write(&path, text).expect("write web config");
        path
    }
}
