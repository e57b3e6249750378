//! The front door as clients see it: TLS, mutual TLS and basic auth with an
//! exporter-toolkit web config, checked with curl, `openssl s_client` and a
//! real Prometheus server; rotation of certificates on disk; the secure
//! default and `check-config`.
//!
//! Certificates are made by the `openssl` CLI in a fresh directory per test.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use kernel_exporter_tests::{Exporter, Metrics, exporter_binary, free_port, http_request};

fn openssl(args: &[&str]) -> std::process::Output {
    kernel_exporter_tests::pki::openssl(Path::new("/"), args).unwrap_or_else(|error| panic!("{error}"))
}

use kernel_exporter_tests::{
    ONE_COLLECTOR, Pki,
    credentials::{HASH, PASSWORD, USER},
};

fn start(config: &str, extra: &[&str]) -> Exporter {
    let flag = format!("--web.config.file={config}");
    let args: Vec<&str> = [&ONE_COLLECTOR[..], &[flag.as_str()], extra].concat();
    Exporter::start(&args)
}

/// What curl got: the HTTP status (0 when there was no HTTP answer), the
/// body, and curl's error output.
pub(crate) struct CurlResult {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) stderr: String,
    http_version: String,
}

/// curl against `https://127.0.0.1:PORT/metrics`, trusting the test CA,
/// with `client` as the client certificate (if any) and `extra` arguments.
pub(crate) fn curl(pki: &Pki, addr: SocketAddr, client: Option<&str>, extra: &[&str]) -> CurlResult {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "10", "--cacert", &pki.path("ca.crt")]);
    if let Some(client) = client {
        command.args(["--cert", &pki.path(&format!("{client}.crt")), "--key", &pki.path(&format!("{client}.key"))]);
    }
    command.args(extra);
    command.args(["-w", "\n%{http_code} %{http_version}", &format!("https://{addr}/metrics")]);
    let out = command.output().expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let mut trailer = trailer.split_whitespace();
    let status = trailer.next().and_then(|code| code.parse().ok()).unwrap_or(0);
    let http_version = trailer.next().unwrap_or("").to_owned();
    CurlResult {
        status,
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        http_version,
    }
}

pub(crate) fn with_password(user: &str, password: &str) -> [String; 2] {
    ["-u".to_owned(), format!("{user}:{password}")]
}

/// The exporter's own metrics, scraped with the good client and password.
fn self_metrics(pki: &Pki, exporter: &Exporter) -> Metrics {
    let auth = with_password(USER, PASSWORD);
    let result = curl(pki, exporter.addr, Some("client"), &[&auth[0], &auth[1]]);
    assert_eq!(result.status, 200, "scrape with good credentials: {}\nlog:\n{}", result.stderr, exporter.log());
    Metrics::parse(&result.body)
}

/// `openssl s_client` with `args`; returns whether the handshake (and a
/// one-line HTTP exchange) worked, and everything it printed.
fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    // -ign_eof: wait for the server's answer after the request is sent;
    // `timeout` bounds a handshake that never ends.
    let mut child = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-ign_eof", "-connect", &addr.to_string(), "-servername", "localhost"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        let _ = stdin.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    }
    let out = child.wait_with_output().expect("s_client ran");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // A completed TLS exchange shows the HTTP answer.
    (text.contains("HTTP/1.1 "), text)
}

#[test]
fn each_client_auth_type_with_curl() {
    let pki = Pki::new("client-auth");
    let ca = "  client_ca_file: ca.crt\n";
    // (type, needs CA, no cert, trusted cert, untrusted cert)
    let cases = [
        ("NoClientCert", false, true, true, true),
        ("RequestClientCert", false, true, true, true),
        ("RequireAnyClientCert", false, false, true, true),
        ("VerifyClientCertIfGiven", true, true, true, false),
        ("RequireAndVerifyClientCert", true, false, true, false),
    ];
    for (auth, needs_ca, none, trusted, stranger) in cases {
        let config = pki.web_config(&format!("  client_auth_type: {auth}\n{}", if needs_ca { ca } else { "" }), "");
        let exporter = start(&config, &[]);
        for (client, expected) in [(None, none), (Some("client"), trusted), (Some("stranger"), stranger)] {
            let result = curl(&pki, exporter.addr, client, &[]);
            let served = result.status == 200 && result.body.contains("kernel_sched_context_switches_total ");
            assert_eq!(
                served,
                expected,
                "{auth} with client certificate {client:?}: status {} {}\nlog:\n{}",
                result.status,
                result.stderr,
                exporter.log()
            );
        }
        // HTTP/2 by ALPN, the default with TLS.
        assert_eq!(curl(&pki, exporter.addr, Some("client"), &["--http2"]).http_version, "2", "{auth}");
        let metrics = self_metrics(&pki, &exporter);
        let failures =
            |reason: &str| metrics.get(&format!("kernel_exporter_tls_handshake_failures_total{{reason=\"{reason}\"}}"));
        match auth {
            "RequireAnyClientCert" => assert_eq!(failures("no_client_certificate"), 1.0, "{auth}"),
            "VerifyClientCertIfGiven" => assert_eq!(failures("bad_client_certificate"), 1.0, "{auth}"),
            "RequireAndVerifyClientCert" => {
                assert_eq!(failures("no_client_certificate"), 1.0, "{auth}");
                assert_eq!(failures("bad_client_certificate"), 1.0, "{auth}");
            }
            _ => {}
        }
    }
}

#[test]
fn openssl_s_client_sees_the_certificate_request_and_versions() {
    let pki = Pki::new("s-client");
    let config = pki.web_config("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n", "");
    let exporter = start(&config, &[]);
    let ca = pki.path("ca.crt");
    let (client_crt, client_key) = (pki.path("client.crt"), pki.path("client.key"));
    let (ok, text) = s_client(exporter.addr, &["-CAfile", &ca, "-cert", &client_crt, "-key", &client_key]);
    assert!(ok, "{text}");
    assert!(text.contains("Acceptable client certificate CA names"), "{text}");
    assert!(text.contains("CN = kernel-exporter test ca"), "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let (ok, text) = s_client(exporter.addr, &["-CAfile", &ca]);
    assert!(!ok, "no client certificate, yet served: {text}");
    drop(exporter);

    // TLS 1.2 only.
    let config = pki.web_config("  min_version: TLS12\n  max_version: TLS12\n", "");
    let exporter = start(&config, &[]);
    let (ok, text) = s_client(exporter.addr, &["-CAfile", &ca, "-tls1_2"]);
    assert!(ok && text.contains("New, TLSv1.2"), "{text}");
    let (ok, text) = s_client(exporter.addr, &["-CAfile", &ca, "-tls1_3"]);
    assert!(!ok, "TLS 1.3 accepted by a TLS12-only config: {text}");
    let curl13 = curl(&pki, exporter.addr, None, &["--tlsv1.3"]);
    assert_eq!(curl13.status, 0, "{}", curl13.stderr);
    drop(exporter);

    // TLS 1.3 only.
    let config = pki.web_config("  min_version: TLS13\n", "");
    let exporter = start(&config, &[]);
    let (ok, text) = s_client(exporter.addr, &["-CAfile", &ca, "-tls1_3"]);
    assert!(ok && text.contains("New, TLSv1.3"), "{text}");
    let (ok, text) = s_client(exporter.addr, &["-CAfile", &ca, "-tls1_2"]);
    assert!(!ok, "TLS 1.2 accepted by a TLS13-only config: {text}");
    let curl12 = curl(&pki, exporter.addr, None, &["--tls-max", "1.2"]);
    assert_eq!(curl12.status, 0, "{}", curl12.stderr);
    let metrics = Metrics::parse(&curl(&pki, exporter.addr, None, &[]).body);
    assert_eq!(metrics.get("kernel_exporter_tls_handshake_failures_total{reason=\"incompatible\"}"), 2.0);
}

#[test]
fn client_allowed_sans_allow_and_deny() {
    let pki = Pki::new("sans");
    let config = pki.web_config(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [prometheus.example]\n",
        "",
    );
    let exporter = start(&config, &[]);
    assert_eq!(curl(&pki, exporter.addr, Some("client"), &[]).status, 200);
    let denied = curl(&pki, exporter.addr, Some("grafana"), &[]);
    assert_eq!(denied.status, 0, "grafana.example is not allowed: {}", denied.body);
    // Same SAN, but from a CA nobody trusts: the chain check comes first.
    assert_eq!(curl(&pki, exporter.addr, Some("stranger"), &[]).status, 0);
    let metrics = Metrics::parse(&curl(&pki, exporter.addr, Some("client"), &[]).body);
    assert_eq!(metrics.get("kernel_exporter_tls_handshake_failures_total{reason=\"client_san_not_allowed\"}"), 1.0);
    assert_eq!(metrics.get("kernel_exporter_tls_handshake_failures_total{reason=\"bad_client_certificate\"}"), 1.0);
}

#[test]
fn basic_auth_answers_and_counts() {
    let pki = Pki::new("basic-auth");
    let config = pki.web_config(
        "",
        &format!("basic_auth_users:\n  {USER}: {HASH}\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"),
    );
    let exporter = start(&config, &[]);
    let cases =
        [(Some((USER, "wrong")), 401), (Some(("mallory", PASSWORD)), 401), (None, 401), (Some((USER, PASSWORD)), 200)];
    for (credentials, expected) in cases {
        let mut args = vec!["-i".to_owned()];
        if let Some((user, password)) = credentials {
            args.extend(with_password(user, password));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = curl(&pki, exporter.addr, None, &args);
        assert_eq!(result.status, expected, "{credentials:?}: {}", result.stderr);
        let head = result.body.to_ascii_lowercase();
        assert!(head.contains("x-frame-options: deny"), "{credentials:?}: {head}");
        if expected == 401 {
            assert!(head.contains("www-authenticate: basic realm=\"kernel-exporter\""), "{head}");
        }
    }
    let metrics = self_metrics(&pki, &exporter);
    let failures = |reason: &str| metrics.get(&format!("kernel_exporter_auth_failures_total{{reason=\"{reason}\"}}"));
    assert_eq!(failures("wrong_password"), 1.0);
    assert_eq!(failures("unknown_user"), 1.0);
    assert_eq!(failures("missing_credentials"), 1.0);
    assert_eq!(failures("malformed"), 0.0);
}

#[test]
fn plain_http_to_the_tls_port_gets_400() {
    let pki = Pki::new("plain-http");
    let config = pki.web_config("", "");
    let exporter = start(&config, &[]);
    let response = http_request(exporter.addr, "GET", "/metrics");
    assert_eq!(response.status, 400);
    assert!(response.body.contains("Client sent an HTTP request to an HTTPS server."), "{response:?}");
    let metrics = Metrics::parse(&curl(&pki, exporter.addr, None, &[]).body);
    assert_eq!(metrics.get("kernel_exporter_tls_handshake_failures_total{reason=\"plain_http\"}"), 1.0);
}

/// The serial number of the certificate the exporter serves now.
pub(crate) fn served_serial(addr: SocketAddr, ca: &str) -> String {
    let (_, text) = s_client(addr, &["-CAfile", ca]);
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate shown: {text}"));
    let end = text.find("-----END CERTIFICATE-----").expect("certificate end") + "-----END CERTIFICATE-----".len();
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl x509");
    {
        use std::io::Write as _;
        x509.stdin.take().expect("stdin").write_all(&text.as_bytes()[start..end]).expect("feed x509");
    }
    String::from_utf8(x509.wait_with_output().expect("x509 ran").stdout).expect("UTF-8").trim().to_owned()
}

pub(crate) fn file_serial(path: &str) -> String {
    String::from_utf8(openssl(&["x509", "-noout", "-serial", "-in", path]).stdout).expect("UTF-8").trim().to_owned()
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// Replaces `name` atomically (write aside, rename), as deploy tools do.
pub(crate) fn replace(dir: &Path, name: &str, contents: &[u8]) {
    let aside = dir.join(format!(".{name}.new"));
    fs::write(&aside, contents).expect("write replacement");
    fs::rename(&aside, dir.join(name)).expect("rename into place");
}

#[test]
fn rotated_certificates_are_served_without_a_restart() {
    let pki = Pki::new("rotation");
    let config = pki.web_config("", "");
    let exporter = start(&config, &[]);
    let ca = pki.path("ca.crt");
    let first = served_serial(exporter.addr, &ca);
    assert_eq!(first, file_serial(&pki.path("server.crt")));

    // A new key and certificate: the next connection gets them.
    pki.leaf("server2", "ca", "DNS:localhost,IP:127.0.0.1", "serverAuth");
    let second = file_serial(&pki.path("server2.crt"));
    assert_ne!(first, second);
    replace(&pki.dir, "server.key", &fs::read(pki.path("server2.key")).unwrap());
    replace(&pki.dir, "server.crt", &fs::read(pki.path("server2.crt")).unwrap());
    wait_for("serving the rotated certificate", Duration::from_secs(10), || {
        served_serial(exporter.addr, &ca) == second
    });
    let metrics = Metrics::parse(&curl(&pki, exporter.addr, None, &[]).body);
    assert_eq!(metrics.get("kernel_exporter_config_last_reload_successful"), 1.0);
    let reloaded_at = metrics.get("kernel_exporter_config_last_reload_success_timestamp_seconds");

    // A corrupt replacement: the old certificate keeps serving.
    let lines_before = exporter.log().lines().count();
    replace(&pki.dir, "server.crt", b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    wait_for("the failed reload", Duration::from_secs(10), || {
        Metrics::parse(&curl(&pki, exporter.addr, None, &[]).body).get("kernel_exporter_config_last_reload_successful")
            == 0.0
    });
    assert_eq!(served_serial(exporter.addr, &ca), second);
    let metrics = Metrics::parse(&curl(&pki, exporter.addr, None, &[]).body);
    assert_eq!(metrics.get("kernel_exporter_config_last_reload_success_timestamp_seconds"), reloaded_at);
    // Wait past another poll: the broken file is not retried until it changes.
    thread::sleep(Duration::from_secs(3));
    let log = exporter.log();
    let failed: Vec<&str> = log.lines().skip(lines_before).filter(|line| line.contains("cannot reload")).collect();
    assert_eq!(failed.len(), 1, "one line per failed reload:\n{log}");
    assert!(failed[0].contains("server.crt"), "{}", failed[0]);

    // Fixed, then SIGHUP: reloaded on the signal.
    replace(&pki.dir, "server.crt", &fs::read(pki.path("server2.crt")).unwrap());
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(exporter.pid() as libc::pid_t, libc::SIGHUP) }, 0);
    wait_for("the SIGHUP reload", Duration::from_secs(10), || exporter.log().contains("trigger=SIGHUP"));
    wait_for("a successful reload", Duration::from_secs(10), || {
        Metrics::parse(&curl(&pki, exporter.addr, None, &[]).body).get("kernel_exporter_config_last_reload_successful")
            == 1.0
    });
    assert_eq!(served_serial(exporter.addr, &ca), second);
}

#[test]
fn bad_configs_fail_before_listening_and_in_check_config() {
    let pki = Pki::new("check-config");
    let good = pki.web_config("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n", "");
    let out =
        Command::new(exporter_binary()).args(["check-config", &format!("--web.config.file={good}")]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK: TLS on (TLS12..TLS13, client_auth_type RequireAndVerifyClientCert"), "{stdout}");

    let bad = pki.web_config("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: missing.crt\n", "");
    let out =
        Command::new(exporter_binary()).args(["check-config", &format!("--web.config.file={bad}")]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("web config {bad}: tls_server_config.client_ca_file: cannot read")), "{stderr}");
    assert!(stderr.contains("missing.crt"), "{stderr}");

    let unknown = pki.web_config("  client_auth: RequireAndVerifyClientCert\n", "");
    let mut exporter = Exporter::spawn(free_port(), &["--web.config.file", &unknown]);
    assert_eq!(exporter.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let log = exporter.log();
    assert!(log.contains("unknown field `client_auth`"), "{log}");
    assert_eq!(log.lines().filter(|line| line.contains("level=error")).count(), 1, "{log}");
    assert!(!log.contains("listening"), "{log}");
}

#[test]
fn exposed_without_protection_refuses_to_start() {
    let port = free_port();
    let mut exporter = Exporter::spawn(free_port(), &[&format!("--web.listen-address=0.0.0.0:{port}")]);
    assert_eq!(exporter.wait_exit(Duration::from_secs(10)).code(), Some(1));
    let log = exporter.log();
    assert!(log.contains(&format!("refusing to serve 0.0.0.0:{port} without TLS or basic auth")), "{log}");
    assert!(log.contains("--web.allow-insecure"), "{log}");

    let exporter = Exporter::start(&[
        ONE_COLLECTOR[0],
        ONE_COLLECTOR[1],
        &format!("--web.listen-address=0.0.0.0:{port}"),
        "--web.allow-insecure",
    ]);
    exporter.scrape();
}

#[test]
fn wrong_password_floods_do_not_starve_scrapes() {
    let pki = Pki::new("flood");
    let config = pki.web_config("", &format!("basic_auth_users:\n  {USER}: {HASH}\n"));
    let exporter = start(&config, &[]);
    // Prime the cache with the good credentials.
    self_metrics(&pki, &exporter);
    let addr = exporter.addr;
    let ca = pki.path("ca.crt");
    // 16 clients, each sending distinct wrong passwords one after another:
    // 16 bcrypt checks (about 60 ms of CPU each) always waiting. Were they
    // run on the async workers, a scrape would queue behind them.
    let flood: Vec<Child> = (0..16)
        .map(|worker| {
            let mut command = Command::new("curl");
            command.stdout(Stdio::null());
            for i in 0..10 {
                // --next: each URL with its own password, on the same connection.
                if i > 0 {
                    command.arg("--next");
                }
                command.args(["-s", "--max-time", "30", "--cacert", &ca, "-u", &format!("{USER}:wrong-{worker}-{i}")]);
                command.arg(format!("https://{addr}/metrics"));
            }
            command.spawn().expect("start curl")
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let mut slowest = Duration::ZERO;
    let mut metrics = None;
    for _ in 0..5 {
        let started = Instant::now();
        metrics = Some(self_metrics(&pki, &exporter));
        slowest = slowest.max(started.elapsed());
    }
    let metrics = metrics.expect("scraped");
    let failures = metrics.get("kernel_exporter_auth_failures_total{reason=\"wrong_password\"}");
    for mut curl in flood {
        let _ = curl.wait();
    }
    assert!(slowest < Duration::from_millis(300), "a scrape took {slowest:?} during a wrong-password flood");
    println!("slowest of 5 scrapes during a 16-client wrong-password flood: {slowest:?}");
    assert!(failures >= 1.0, "the flood was not under way while scraping");
}

/// A Prometheus server on loopback, killed when dropped. (Also used by
/// `deployment` and `native_histograms`.)
pub(crate) struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: PathBuf,
}

impl Prometheus {
    pub(crate) fn start(dir: &Path, scrape_configs: &str) -> Self {
        Self::start_with_flags(dir, scrape_configs, &[])
    }

    /// With extra command-line flags (`--enable-feature=...`).
    pub(crate) fn start_with_flags(dir: &Path, scrape_configs: &str, flags: &[&str]) -> Self {
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n{scrape_configs}"),
        )
        .expect("write prometheus.yml");
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/bin/prometheus (Debian package prometheus)");
        let prometheus = Self { child, addr, _dir: dir.to_owned() };
        wait_for("Prometheus ready", Duration::from_secs(30), || {
            std::net::TcpStream::connect(addr).is_ok() && http_request(addr, "GET", "/-/ready").status == 200
        });
        prometheus
    }

    /// The result of an instant query, as JSON text.
    pub(crate) fn query(&self, query: &str) -> String {
        self.query_path(query, "")
    }

    /// An instant query evaluated at a Unix time.
    pub(crate) fn query_at(&self, query: &str, time: f64) -> String {
        self.query_path(query, &format!("&time={time:.3}"))
    }

    fn query_path(&self, query: &str, extra: &str) -> String {
        let encoded: String = query
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let response = http_request(self.addr, "GET", &format!("/api/v1/query?query={encoded}{extra}"));
        assert_eq!(response.status, 200, "{response:?}");
        response.body
    }

    /// `up` of `job`, once Prometheus has scraped it.
    pub(crate) fn up(&self, job: &str) -> Option<bool> {
        let body = self.query(&format!("up{{job=\"{job}\"}}"));
        let value = body.split("\"value\":[").nth(1)?;
        Some(value.split(",\"").nth(1)?.starts_with('1'))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_over_mutual_tls_with_basic_auth() {
    let pki = Pki::new("prometheus");
    let config = pki.web_config(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [prometheus.example]\n",
        &format!("basic_auth_users:\n  {USER}: {HASH}\n"),
    );
    let exporter = start(&config, &[]);
    let job = |name: &str, client: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {crt}\n      \
             key_file: {key}\n      server_name: localhost\n    basic_auth:\n      username: {USER}\n      password: {password}\n    \
             static_configs:\n      - targets: ['{addr}']\n",
            ca = pki.path("ca.crt"),
            crt = pki.path(&format!("{client}.crt")),
            key = pki.path(&format!("{client}.key")),
            addr = exporter.addr,
        )
    };
    let jobs = [
        job("good", "client", PASSWORD),
        job("other_ca", "stranger", PASSWORD),
        job("wrong_password", "client", "nope"),
    ];
    let prometheus = Prometheus::start(&pki.dir, &jobs.concat());

    wait_for("every job scraped", Duration::from_secs(30), || {
        ["good", "other_ca", "wrong_password"].iter().all(|job| prometheus.up(job).is_some())
    });
    wait_for("samples of the good job", Duration::from_secs(15), || {
        prometheus.query("kernel_sched_context_switches_total{job=\"good\"}").contains("\"result\":[{")
    });
    assert_eq!(prometheus.up("good"), Some(true), "log:\n{}", exporter.log());
    assert_eq!(prometheus.up("other_ca"), Some(false));
    assert_eq!(prometheus.up("wrong_password"), Some(false));

    // The exporter counted why.
    let from_prometheus = |name: &str, reason: &str| {
        let body = prometheus.query(&format!("{name}{{job=\"good\",reason=\"{reason}\"}}"));
        body.split("\"value\":[")
            .nth(1)
            .and_then(|value| value.split('"').nth(1))
            .and_then(|number| number.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    wait_for("failure counters scraped by Prometheus", Duration::from_secs(15), || {
        from_prometheus("kernel_exporter_tls_handshake_failures_total", "bad_client_certificate") > 0.0
            && from_prometheus("kernel_exporter_auth_failures_total", "wrong_password") > 0.0
    });
    let metrics = self_metrics(&pki, &exporter);
    assert!(metrics.get("kernel_exporter_tls_handshake_failures_total{reason=\"bad_client_certificate\"}") > 0.0);
    assert!(metrics.get("kernel_exporter_auth_failures_total{reason=\"wrong_password\"}") > 0.0);
}

/// exporter-toolkit's `rate_limit` (once refused as unsupported): a
/// node_exporter web-config.yml with it starts unchanged, and requests
/// beyond the bucket, from any client, get 429 as exporter-toolkit answers.
#[test]
fn rate_limit_from_exporter_toolkit_is_enforced() {
    let dir = std::env::temp_dir().join(format!("kernel-exporter-e2e-rate-limit-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the config directory");
    let config = dir.join("web.yml");
    // One request a minute refills: nothing refills during the test.
    fs::write(&config, "rate_limit:\n  interval: 1m\n  burst: 3\n").expect("write the web config");
    let exporter = start(&config.display().to_string(), &[]);
    let statuses: Vec<u16> = (0..5).map(|_| http_request(exporter.addr, "GET", "/metrics").status).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "log:\n{}", exporter.log());
    let refused = http_request(exporter.addr, "GET", "/");
    assert_eq!(refused.status, 429, "every path, as exporter-toolkit");
    assert_eq!(refused.header("retry-after"), Some("1"));
}

/// A TLS client config trusting the test CA and presenting `client`'s
/// certificate, offering `alpn`.
fn client_tls(pki: &Pki, client: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(pki.path("ca.crt")).expect("the test CA")).expect("trust the CA");
    let chain = vec![CertificateDer::from_pem_file(pki.path(&format!("{client}.crt"))).expect("client cert")];
    let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{client}.key"))).expect("client key");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("a client certificate");
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// An HTTP/1.1 connection over TLS with `client`'s certificate.
fn http1_over_tls(pki: &Pki, addr: SocketAddr, client: &str) -> TlsStream {
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let connection = rustls::ClientConnection::new(client_tls(pki, client, b"http/1.1"), name).expect("a TLS client");
    let socket = std::net::TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    rustls::StreamOwned::new(connection, socket)
}

/// One keep-alive GET of /metrics: (status, whether the answer says
/// `Connection: close`), or `None` when the connection is closed.
fn keep_alive_get(stream: &mut TlsStream) -> Option<(u16, bool)> {
    use std::io::{Read as _, Write as _};
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head.lines().find_map(|line| line.strip_prefix("content-length:"))?.trim().parse().ok()?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    Some((status, head.contains("connection: close")))
}

/// Whether the server has closed `stream` (EOF, a reset, or TLS
/// close_notify) within two seconds, without a request being sent.
fn closed_by_server(stream: &mut TlsStream) -> bool {
    use std::io::Read as _;
    stream.sock.set_read_timeout(Some(Duration::from_secs(2))).expect("read timeout");
    let closed = match stream.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(error) => !matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    stream.sock.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    closed
}

/// An HTTP/2 connection over TLS with `client`'s certificate: the request
/// handle and the task driving the connection (finished once the server
/// sent GOAWAY and the connection ended).
async fn http2_over_tls(
    pki: &Pki,
    addr: SocketAddr,
    client: &str,
) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let connector = tokio_rustls::TlsConnector::from(client_tls(pki, client, b"h2"));
    let socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = connector.connect(name, socket).await.expect("TLS handshake");
    let (send, connection) = h2::client::handshake(tls).await.expect("HTTP/2 handshake");
    (send, tokio::spawn(connection))
}

/// One GET of /metrics on an HTTP/2 connection: the status, or `None`
/// when the connection no longer takes requests.
async fn http2_get(send: &mut h2::client::SendRequest<bytes::Bytes>, addr: SocketAddr) -> Option<u16> {
    let ready = send.clone().ready().await.ok()?;
    *send = ready;
    let request = http::Request::get(format!("https://{addr}/metrics")).body(()).expect("a request");
    let (response, _) = send.send_request(request, true).ok()?;
    let response = response.await.ok()?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Some(status)
}

/// Regression: a reload that changes which clients may connect (here the
/// client CA) kept serving the connections made under the old policy for
/// as long as they stayed busy (with HTTP/2, forever). Now they are closed
/// after their requests in flight (HTTP/1.1 `Connection: close`, HTTP/2
/// GOAWAY); a reload that only rotates the server certificate closes
/// nothing.
#[test]
fn reloads_that_change_who_may_connect_close_open_connections() {
    let pki = Pki::new("revocation");
    let trusting = |ca: &str| format!("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {ca}.crt\n");
    let config = pki.web_config(&trusting("ca"), "");
    let exporter = start(&config, &[]);
    let addr = exporter.addr;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");

    let mut h1 = http1_over_tls(&pki, addr, "client");
    assert_eq!(keep_alive_get(&mut h1), Some((200, false)));
    let (mut h2, h2_driver) = runtime.block_on(http2_over_tls(&pki, addr, "client"));
    assert_eq!(runtime.block_on(http2_get(&mut h2, addr)), Some(200));

    // The server certificate alone is rotated: both connections stay.
    pki.leaf("server", "ca", "DNS:localhost,IP:127.0.0.1", "serverAuth");
    let line = crate::allowlist::reload_and_wait(&exporter);
    assert!(line.contains("reloaded web config"), "{line}");
    assert_eq!(keep_alive_get(&mut h1), Some((200, false)), "HTTP/1.1 after a certificate rotation");
    assert_eq!(runtime.block_on(http2_get(&mut h2, addr)), Some(200), "HTTP/2 after a certificate rotation");

    // Another client CA: "client" could not connect now, so its open
    // connections are closed.
    pki.web_config(&trusting("other-ca"), "");
    let line = crate::allowlist::reload_and_wait(&exporter);
    assert!(line.contains("reloaded web config"), "{line}");
    assert!(closed_by_server(&mut h1), "the HTTP/1.1 connection stays open; log:\n{}", exporter.log());
    assert_eq!(keep_alive_get(&mut h1), None);
    // The connection's task (run only inside block_on) ends once the
    // server's GOAWAY has closed it.
    let mut h2_driver = h2_driver;
    let ended = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(2), &mut h2_driver).await });
    assert!(ended.is_ok(), "the HTTP/2 connection stays open; log:\n{}", exporter.log());
    assert_eq!(runtime.block_on(http2_get(&mut h2, addr)), None, "no request after GOAWAY");
    let closing = exporter.log().matches("a reload changed which clients may connect").count();
    assert_eq!(closing, 2, "{}", exporter.log());
    // The new policy in force: the old client certificate is refused.
    assert_eq!(curl(&pki, addr, Some("client"), &[]).status, 0);
}

/// A source that keeps failing (client certificates the server refuses,
/// wrong passwords) is banned in the kernel: its SYNs are dropped before
/// any handshake. A Prometheus server with misconfigured jobs (an old
/// password, a certificate from the wrong CA) beside a good one keeps
/// scraping with the good one, however many failures the bad ones pile up.
#[test]
fn sources_that_keep_failing_are_banned_but_not_a_scraper_that_also_succeeds() {
    const AFTER: usize = 5;
    let pki = Pki::new("ban");
    let config = pki.web_config(
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
        &format!("basic_auth_users:\n  {USER}: {HASH}\n"),
    );
    let exporter = start(&config, &[&format!("--web.ban-after-failures={AFTER}"), "--web.ban-duration=10m"]);
    let addr = exporter.addr;
    let good = with_password(USER, PASSWORD);
    let old = with_password(USER, "last-years-password");
    let status = |client: &str, auth: &[String; 2], extra: &[&str]| {
        let args: Vec<&str> = [&[auth[0].as_str(), auth[1].as_str()][..], extra].concat();
        curl(&pki, addr, Some(client), &args).status
    };

    // 127.0.0.1: one good job and two misconfigured ones, scraped in turn,
    // three times the ban threshold of failures.
    let mut good_statuses = Vec::new();
    for _ in 0..(3 * AFTER).div_ceil(2) {
        good_statuses.push(status("client", &good, &[]));
        assert_eq!(status("client", &old, &[]), 401, "the old password's job");
        assert_eq!(status("stranger", &good, &[]), 0, "the wrong certificate's job: no TLS session");
    }
    good_statuses.push(status("client", &good, &[]));
    assert!(good_statuses.iter().all(|&status| status == 200), "the good job: {good_statuses:?}");

    // 127.0.0.2 only fails: banned after AFTER failures.
    let away = ["--interface", "127.0.0.2"];
    for _ in 0..AFTER {
        assert_eq!(status("stranger", &good, &away), 0);
    }
    let second = std::net::IpAddr::from([127, 0, 0, 2]);
    crate::allowlist::assert_dropped(second, addr);
    crate::allowlist::assert_dropped(second, addr);
    let metrics = self_metrics(&pki, &exporter);
    assert_eq!(metrics.get("kernel_exporter_connections_total{source=\"127.0.0.2\",verdict=\"banned\"}"), 2.0);
    assert_eq!(metrics.get("kernel_exporter_connections_total{source=\"127.0.0.1\",verdict=\"banned\"}"), 0.0);
    let log = exporter.log();
    assert_eq!(log.matches("banning").count(), 1, "{log}");
    assert!(log.contains("banning 127.0.0.2 for 600s: 5 failures"), "{log}");
}
