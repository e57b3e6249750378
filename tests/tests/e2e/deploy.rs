//! `deploy/`: the systemd unit, `cargo xtask install`, the example web
//! config, the Kubernetes DaemonSet, the alert rules and the Grafana
//! dashboard, each checked by the tool that will read it (systemd-analyze,
//! the daemon itself, the Kubernetes schemas, promtool) and against the
//! daemon's real output.

use std::{
    collections::{BTreeSet, HashSet},
    env, fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{SystemTime, UNIX_EPOCH},
};

use kernel_exporter_tests::{
    COLLECTOR_PROGRAMS, EVERY_COLLECTOR_ARGS, Exporter, exporter_binary, free_port, served_metric_names,
};

/// Names the issues give the exporter's own metrics that come with the
/// front door (TLS, auth, reload) and the allowlist; the alert rules and
/// the dashboard may use them before every one of them is served.
const DOCUMENTED_FUTURE_METRICS: &[&str] = &[
    "kernel_exporter_config_last_reload_successful",
    "kernel_exporter_config_last_reload_success_timestamp_seconds",
    "kernel_exporter_auth_failures_total",
    "kernel_exporter_tls_handshake_failures_total",
    "kernel_exporter_connections_total",
    "kernel_exporter_packets_total",
    "kernel_exporter_allowlist_entries",
    "kernel_exporter_requests_total",
];

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A folder under the system's temporary folder, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let dir = env::temp_dir().join(format!("kernel-exporter-{what}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).expect("create a temporary folder");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod the temporary folder");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn printed(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `Key=value` settings of the unit's `[Service]` section, in order.
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut settings = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((key, value)) = line.split_once('=')
        {
            settings.push((key.to_owned(), value.to_owned()));
        }
    }
    settings
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    let values: Vec<&str> = settings.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect();
    assert_eq!(values.len(), 1, "the unit sets {key} {} times", values.len());
    values[0]
}

/// The unit with `ExecStart` running `binary` instead of the installed path.
fn unit_running(unit: &str, binary: &Path) -> String {
    let shipped = "ExecStart=/usr/local/bin/kernel-exporter";
    assert_eq!(unit.matches(shipped).count(), 1, "the unit has one `{shipped}` line");
    unit.replace(shipped, &format!("ExecStart={}", binary.display()))
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let unit = read(&deploy_dir().join("kernel-exporter.service"));
    let dir = TempDir::new("unit");
    let path = dir.path().join("kernel-exporter.service");
    // verify checks that ExecStart's binary exists: point it at the one built.
    fs::write(&path, unit_running(&unit, &exporter_binary())).expect("write the unit");
    let verify = || run(Command::new("systemd-analyze").arg("verify").arg(&path));
    let out = verify();
    assert!(out.status.success() && printed(&out).trim().is_empty(), "systemd-analyze verify:\n{}", printed(&out));
    // The socket unit, with the service it activates beside it.
    let socket = dir.path().join("kernel-exporter.socket");
    fs::copy(deploy_dir().join("kernel-exporter.socket"), &socket).expect("copy the socket unit");
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&socket));
    assert!(
        out.status.success() && printed(&out).trim().is_empty(),
        "systemd-analyze verify (socket):\n{}",
        printed(&out)
    );

    // It only warns about a misspelt setting, with exit code 0: the check
    // above would see the warning.
    fs::write(&path, unit_running(&unit, &exporter_binary()).replace("NoNewPrivileges=", "NoNewPrivilege="))
        .expect("write the unit");
    let out = verify();
    assert!(printed(&out).contains("Unknown key 'NoNewPrivilege'"), "{}", printed(&out));
}

#[test]
fn unit_is_hardened_as_the_issue_asks() {
    let settings = service_settings(&read(&deploy_dir().join("kernel-exporter.service")));
    for (key, value) in [
        ("User", "kernel-exporter"),
        ("AmbientCapabilities", "CAP_BPF CAP_PERFMON"),
        ("CapabilityBoundingSet", "CAP_BPF CAP_PERFMON"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictNamespaces", "yes"),
        ("SystemCallArchitectures", "native"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(setting(&settings, key), value, "{key}");
    }
    let families: BTreeSet<&str> = setting(&settings, "RestrictAddressFamilies").split_whitespace().collect();
    assert!(families.is_subset(&BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"])), "{families:?}");
    let filter: Vec<&str> = setting(&settings, "SystemCallFilter").split_whitespace().collect();
    assert!(filter.contains(&"@system-service") && filter.contains(&"bpf"), "{filter:?}");
}

/// The unit's user, capability sets and no_new_privs, reproduced with
/// setpriv (no systemd runs the tests): every collector attaches and the
/// shipped web config is accepted, so the two capabilities are enough.
#[test]
fn unit_privileges_are_enough_for_every_collector() {
    let settings = service_settings(&read(&deploy_dir().join("kernel-exporter.service")));
    let caps: Vec<String> = setting(&settings, "AmbientCapabilities")
        .split_whitespace()
        .map(|cap| format!("+{}", cap.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    assert_eq!(setting(&settings, "CapabilityBoundingSet"), setting(&settings, "AmbientCapabilities"));
    assert_eq!(setting(&settings, "NoNewPrivileges"), "yes");
    let caps = format!("-all,{}", caps.join(","));

    // The web config as installed, somewhere the unprivileged user can read.
    let dir = TempDir::new("unit-user");
    let config = dir.path().join("web-config.yml");
    fs::copy(deploy_dir().join("web-config.yml"), &config).expect("copy the web config");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod the web config");
    let exec_start = setting(&settings, "ExecStart");
    let args: Vec<String> = exec_start
        .split_whitespace()
        .skip(1)
        .map(|arg| arg.replace("/etc/kernel-exporter/web-config.yml", &config.display().to_string()))
        .collect();
    assert!(args.iter().any(|arg| arg.starts_with("--web.config.file=")), "{exec_start}");
    // Every collector, the ones off by default too, must work as the user.
    let args: Vec<&str> = args.iter().map(String::as_str).chain(EVERY_COLLECTOR_ARGS.iter().copied()).collect();

    // nobody stands in for the unit's user, which this machine lacks.
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([format!("--inh-caps={caps}"), format!("--ambient-caps={caps}"), format!("--bounding-set={caps}")])
        .arg("--no-new-privs")
        .arg(exporter_binary());
    let exporter = Exporter::spawn_command(setpriv, free_port(), &args);
    exporter.wait_until_listening();
    let status = read(Path::new(&format!("/proc/{}/status", exporter.pid())));
    let uid = status.lines().find(|line| line.starts_with("Uid:")).expect("a Uid line");
    assert_eq!(uid.split_whitespace().skip(1).collect::<Vec<_>>(), ["65534"; 4], "{status}");
    let metrics = exporter.scrape();
    for (collector, _) in COLLECTOR_PROGRAMS {
        assert_eq!(
            metrics.get(&format!("kernel_exporter_collector_up{{collector=\"{collector}\"}}")),
            1.0,
            "{collector} is down as the unit's user; log:\n{}",
            exporter.log()
        );
    }
}

/// The xtask that runs the tests (`cargo xtask test` says where it is).
fn xtask_binary() -> PathBuf {
    let binary = env::var_os("XTASK_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xtask"), PathBuf::from);
    assert!(binary.is_file(), "{} does not exist; run the end-to-end tests with `cargo xtask test`", binary.display());
    binary
}

/// Every file under `root` with its mode, owner and content.
fn snapshot(root: &Path) -> Vec<(PathBuf, u32, u32, u32, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("list the root") {
            let path = entry.expect("an entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            let content = if meta.is_dir() {
                stack.push(path.clone());
                Vec::new()
            } else {
                fs::read(&path).expect("read")
            };
            files.push((path, meta.mode(), meta.uid(), meta.gid(), content));
        }
    }
    files.sort();
    files
}

/// `xtask install` into `root`, which must succeed; returns its step lines.
fn install(root: &Path, extra: &[&str]) -> Vec<String> {
    let out = run(Command::new(xtask_binary())
        .arg("install")
        .arg("--root")
        .arg(root)
        .args(["--prefix", "/opt/kernel-exporter", "--binary"])
        .arg(exporter_binary())
        .args(extra));
    assert!(out.status.success(), "xtask install {extra:?}:\n{}", printed(&out));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// The id field of `name`'s line in a passwd or group file.
fn id_in(file: &Path, name: &str) -> Option<u32> {
    read(file)
        .lines()
        .find(|line| line.split(':').next() == Some(name))
        .and_then(|line| line.split(':').nth(2)?.parse().ok())
}

#[test]
fn install_into_a_temporary_root_is_idempotent() {
    // A root with the account files of a fresh system and nothing else.
    let root = TempDir::new("install-root");
    let etc = root.path().join("etc");
    fs::create_dir_all(&etc).expect("create etc");
    for (file, text, mode) in [
        ("passwd", "root:x:0:0:root:/root:/bin/bash\n", 0o644),
        ("group", "root:x:0:\n", 0o644),
        ("shadow", "root:*:19000:0:99999:7:::\n", 0o600),
        ("gshadow", "root:*::\n", 0o600),
    ] {
        fs::write(etc.join(file), text).expect("write an account file");
        fs::set_permissions(etc.join(file), fs::Permissions::from_mode(mode)).expect("chmod");
    }
    // The user, the binary, the service, the socket, the config folder and file.
    let steps = 6;

    let before = snapshot(root.path());
    let lines = install(root.path(), &["--dry-run"]);
    assert_eq!(snapshot(root.path()), before, "--dry-run changed the root; it printed:\n{}", lines.join("\n"));
    assert_eq!(lines.iter().filter(|line| line.contains("[would]")).count(), steps, "{}", lines.join("\n"));

    let lines = install(root.path(), &[]);
    assert_eq!(lines.iter().filter(|line| line.contains("[setup]")).count(), steps, "{}", lines.join("\n"));

    let passwd = etc.join("passwd");
    let uid = id_in(&passwd, "kernel-exporter").expect("the user kernel-exporter exists in the root");
    assert!(uid < 1000, "kernel-exporter is not a system user: uid {uid}");
    let user = read(&passwd);
    let entry = user.lines().find(|line| line.starts_with("kernel-exporter:")).expect("its passwd line");
    assert!(entry.ends_with(":/nonexistent:/usr/sbin/nologin"), "{entry}");
    let gid = id_in(&etc.join("group"), "kernel-exporter").expect("the group kernel-exporter exists in the root");

    let binary = root.path().join("opt/kernel-exporter/bin/kernel-exporter");
    assert_eq!(fs::read(&binary).expect("the installed binary"), fs::read(exporter_binary()).expect("the built one"));
    assert_eq!(fs::metadata(&binary).expect("stat").mode() & 0o7777, 0o755);

    let shipped = read(&deploy_dir().join("kernel-exporter.service"));
    let unit = read(&root.path().join("etc/systemd/system/kernel-exporter.service"));
    assert_eq!(unit, unit_running(&shipped, Path::new("/opt/kernel-exporter/bin/kernel-exporter")));
    let socket = root.path().join("etc/systemd/system/kernel-exporter.socket");
    assert_eq!(read(&socket), read(&deploy_dir().join("kernel-exporter.socket")), "the socket unit as shipped");
    assert!(
        !root.path().join("etc/systemd/system/sockets.target.wants/kernel-exporter.socket").exists(),
        "socket activation is the operator's choice: installed, not enabled"
    );

    let config_dir = root.path().join("etc/kernel-exporter");
    let config = config_dir.join("web-config.yml");
    assert_eq!(read(&config), read(&deploy_dir().join("web-config.yml")));
    for (path, mode) in [(&config_dir, 0o750), (&config, 0o640)] {
        let meta = fs::metadata(path).expect("stat");
        assert_eq!((meta.mode() & 0o7777, meta.uid(), meta.gid()), (mode, 0, gid), "{}", path.display());
    }

    // Again: everything already in place, nothing touched.
    let installed = snapshot(root.path());
    let lines = install(root.path(), &[]);
    assert_eq!(snapshot(root.path()), installed, "the second install changed something:\n{}", lines.join("\n"));
    assert_eq!(lines.iter().filter(|line| line.contains("already in place")).count(), steps, "{}", lines.join("\n"));
    assert!(!lines.iter().any(|line| line.contains("[setup]")), "{}", lines.join("\n"));

    // An upgrade replaces the binary and keeps the operator's config.
    fs::write(&binary, b"an older kernel-exporter").expect("age the binary");
    fs::write(&config, "allowed_sources: [192.0.2.0/24]\n").expect("edit the config");
    let lines = install(root.path(), &[]);
    assert_eq!(fs::read(&binary).expect("the binary"), fs::read(exporter_binary()).expect("the built one"));
    assert_eq!(read(&config), "allowed_sources: [192.0.2.0/24]\n");
    assert!(lines.iter().any(|line| line.contains("replaced") && line.contains("bin/kernel-exporter")), "{lines:?}");
    assert!(lines.iter().any(|line| line.contains("kept as it is")), "{lines:?}");
}

/// `kernel-exporter check-config` on `config`.
fn check_config(config: &Path) -> Output {
    run(Command::new(exporter_binary()).arg("check-config").arg(format!("--web.config.file={}", config.display())))
}

#[test]
fn web_config_example_is_accepted_as_shipped_and_uncommented() {
    let shipped = deploy_dir().join("web-config.yml");
    let out = check_config(&shipped);
    assert!(out.status.success(), "{}", printed(&out));

    // The commented-out settings are `#` directly followed by the YAML
    // (prose has `# `): uncommented, with real files and a real hash, they
    // must be a working mutual-TLS and basic-auth config.
    let dir = TempDir::new("web-config");
    let pem = |name: &str| dir.path().join(name).display().to_string();
    let openssl = run(Command::new("openssl").args(["req", "-x509", "-newkey", "ec", "-pkeyopt"]).args([
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        "-keyout",
        &pem("server.key"),
        "-out",
        &pem("server.crt"),
    ]));
    assert!(openssl.status.success(), "{}", printed(&openssl));
    let uncommented: String = read(&shipped)
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest)
                if rest.starts_with(|c: char| c != ' ' && c != '#')
                    || (rest.starts_with("  ") && !rest.starts_with("   ")) =>
            {
                rest
            }
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    for key in
        ["tls_server_config:", "basic_auth_users:", "client_auth_type: RequireAndVerifyClientCert", "- 192.0.2.10/32"]
    {
        assert!(
            uncommented.contains(&format!("\n{key}")) || uncommented.contains(&format!(" {key}")),
            "{key} in\n{uncommented}"
        );
    }
    let with_files = uncommented
        .replace("/etc/kernel-exporter/tls/server.crt", &pem("server.crt"))
        .replace("/etc/kernel-exporter/tls/server.key", &pem("server.key"))
        .replace("/etc/kernel-exporter/tls/prometheus-ca.crt", &pem("server.crt"));
    let config = dir.path().join("web-config.yml");

    // As shipped, the hash is a placeholder the daemon refuses.
    fs::write(&config, &with_files).expect("write the config");
    let out = check_config(&config);
    assert!(!out.status.success() && printed(&out).contains("basic_auth_users.prometheus"), "{}", printed(&out));

    // bcrypt of "secret" at cost 4.
    let placeholder =
        with_files.lines().find_map(|line| line.trim().strip_prefix("prometheus: ")).expect("a user line");
    let with_hash = with_files.replace(placeholder, "'$2b$04$TGwgTClqVFzS7z.YIpLZbeuusmrIUx7KIv89pu1MSJ7STigPpMkj.'");
    fs::write(&config, &with_hash).expect("write the config");
    let out = check_config(&config);
    assert!(out.status.success(), "{}\n{with_hash}", printed(&out));

    // The TLS block is live: a certificate that is not there is an error.
    fs::write(&config, with_hash.replace(&pem("server.crt"), &pem("missing.crt"))).expect("write the config");
    let out = check_config(&config);
    assert!(!out.status.success() && printed(&out).contains("missing.crt"), "{}", printed(&out));
}

/// A YAML file as JSON, through PyYAML (which kubernetes-validate brings).
pub(crate) fn yaml_as_json(path: &Path) -> serde_json::Value {
    let out = run(Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg(path));
    assert!(out.status.success(), "{}", printed(&out));
    serde_json::from_slice(&out.stdout).expect("PyYAML printed JSON")
}

#[test]
fn daemonset_validates_offline_with_the_units_capabilities() {
    let manifest = deploy_dir().join("kubernetes/daemonset.yaml");
    let validate = |path: &Path| run(Command::new("python3").args(["-m", "kubernetes_validate", "--strict"]).arg(path));
    let out = validate(&manifest);
    assert!(out.status.success() && printed(&out).contains("passed"), "{}", printed(&out));

    // Strict: a misspelt field is an error, not ignored.
    let dir = TempDir::new("daemonset");
    let misspelt = dir.path().join("daemonset.yaml");
    fs::write(&misspelt, read(&manifest).replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")).expect("write");
    let out = validate(&misspelt);
    assert!(!out.status.success() && printed(&out).contains("readOnlyRootFileSystem"), "{}", printed(&out));

    let daemonset = yaml_as_json(&manifest);
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "the net and tcp collectors count the exporter's network namespace");
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let security = &containers[0]["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let unit_caps: Vec<String> =
        setting(&service_settings(&read(&deploy_dir().join("kernel-exporter.service"))), "AmbientCapabilities")
            .split_whitespace()
            .map(|cap| cap.trim_start_matches("CAP_").to_owned())
            .collect();
    // Plus what leaving root for --runtime.user takes (a pod cannot start as
    // a non-root user holding capabilities: Kubernetes grants no ambient
    // ones); every one of them is dropped once the programs are attached.
    let mut pod_caps = unit_caps;
    pod_caps.extend(["SETUID".to_owned(), "SETGID".to_owned()]);
    assert_eq!(security["capabilities"]["add"], serde_json::json!(pod_caps));
    let args = containers[0]["args"].as_array().expect("args");
    assert!(args.iter().any(|arg| arg.as_str().is_some_and(|arg| arg.starts_with("--runtime.user="))), "{args:?}");
    let btf = containers[0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|mount| mount["mountPath"] == "/sys/kernel/btf")
        .expect("the kernel's BTF is mounted");
    assert_eq!(btf["readOnly"], true);
    // The cgroup collector names pods' cgroups from the host's hierarchy.
    let cgroup = containers[0]["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|mount| mount["name"] == "cgroup")
        .expect("the host's cgroup hierarchy is mounted");
    assert_eq!(cgroup["readOnly"], true);
    let volume = pod["volumes"].as_array().expect("volumes").iter().find(|volume| volume["name"] == "cgroup");
    assert_eq!(volume.expect("a cgroup volume")["hostPath"]["path"], "/sys/fs/cgroup");
}

#[test]
fn alert_rules_pass_promtool_and_each_alert_is_tested() {
    let out = run(Command::new("promtool").args(["check", "rules", "alerts.yml"]).current_dir(deploy_dir()));
    assert!(out.status.success(), "{}", printed(&out));
    let out = run(Command::new("promtool").args(["test", "rules", "alerts_test.yml"]).current_dir(deploy_dir()));
    assert!(out.status.success() && printed(&out).contains("SUCCESS"), "{}", printed(&out));

    let rules = read(&deploy_dir().join("alerts.yml"));
    let alerts: Vec<&str> = rules.lines().filter_map(|line| line.trim().strip_prefix("- alert: ")).collect();
    assert_eq!(
        alerts,
        [
            "KernelExporterDown",
            "KernelExporterCollectorDown",
            "KernelExporterConfigReloadFailed",
            "KernelExporterAuthFailures",
            "KernelExporterDroppedConnections",
            "KernelExporterHighScrapeRate",
            "KernelCgroupRunqueueLatencyHigh",
        ]
    );
    // Each alert is evaluated at least once where it must not fire and once
    // where it must.
    let tests = read(&deploy_dir().join("alerts_test.yml"));
    for alert in alerts {
        let checks: Vec<&str> =
            tests.split("- eval_time:").filter(|check| check.contains(&format!("alertname: {alert}\n"))).collect();
        assert!(checks.iter().any(|check| check.contains("exp_alerts: []")), "{alert} is never shown not firing");
        assert!(checks.iter().any(|check| check.contains("exp_labels:")), "{alert} is never shown firing");
    }
    metric_names_are_known(&rules, "alerts.yml");
}

/// Metric names (`kernel_...`) in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("kernel_"))
        .map(str::to_owned)
        .collect()
}

/// Every metric `text` names is served by the exporter now (a family from a
/// real scrape, histograms with their `_bucket`, `_sum` and `_count`) or is
/// one the issues name for later.
fn metric_names_are_known(text: &str, what: &str) {
    // Every collector on, the ones off by default too: the dashboard and
    // the alerts cover them all.
    let mut known = served_metric_names();
    known.extend(DOCUMENTED_FUTURE_METRICS.iter().map(|name| (*name).to_owned()));
    let unknown: Vec<String> = metric_names(text).into_iter().filter(|name| !known.contains(name)).collect();
    assert!(unknown.is_empty(), "{what} uses metrics the exporter does not have: {unknown:?}");
}

#[test]
fn grafana_dashboard_queries_only_real_metrics() {
    let text = read(&deploy_dir().join("grafana-dashboard.json"));
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "{}", dashboard["schemaVersion"]);
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating variables")
        .iter()
        .filter_map(|variable| variable["name"].as_str())
        .collect();
    assert!(variables.contains(&"instance") && variables.contains(&"DS_PROMETHEUS"), "{variables:?}");

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut expressions = Vec::new();
    for panel in panels.iter().filter(|panel| panel["type"] != "row") {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"].as_array().filter(|targets| !targets.is_empty());
        let targets = targets.unwrap_or_else(|| panic!("{title} has no target"));
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            let expr = target["expr"].as_str().filter(|expr| !expr.is_empty());
            expressions.push(expr.unwrap_or_else(|| panic!("{title} has a target without a query")).to_owned());
        }
    }
    assert!(expressions.len() >= 20, "only {} queries", expressions.len());

    // Valid PromQL: as recording rules, with Grafana's variables filled in.
    let dir = TempDir::new("dashboard");
    let rules: String = expressions
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr.replace("$__rate_interval", "1m").replace("$instance", "host:9569");
            format!("      - record: dashboard:query{i}\n        expr: '{}'\n", expr.replace('\'', "''"))
        })
        .collect();
    let rule_file = dir.path().join("dashboard-queries.yml");
    fs::write(&rule_file, format!("groups:\n  - name: dashboard\n    rules:\n{rules}")).expect("write the rules");
    let out = run(Command::new("promtool").args(["check", "rules"]).arg(&rule_file));
    assert!(out.status.success(), "{}", printed(&out));

    let names = metric_names(&expressions.join("\n"));
    for needed in [
        "kernel_sched_context_switches_total",
        "kernel_sched_runqueue_latency_seconds_bucket",
        "kernel_cpu_idle_seconds_total",
        "kernel_syscalls_total",
        "kernel_mm_page_faults_total",
        "kernel_softirqs_total",
        "kernel_block_io_latency_seconds_bucket",
        "kernel_net_receive_bytes_total",
        "kernel_net_drops_total",
        "kernel_tcp_retransmits_total",
        "kernel_exporter_collector_up",
        "kernel_exporter_config_last_reload_successful",
        "kernel_exporter_auth_failures_total",
        "kernel_exporter_connections_total",
    ] {
        assert!(names.contains(needed), "the dashboard does not show {needed}");
    }
    metric_names_are_known(&expressions.join("\n"), "grafana-dashboard.json");
}

/// The system calls a `systemd-analyze syscall-filter` set holds, nested
/// sets expanded.
fn syscall_set(name: &str, seen: &mut HashSet<String>, calls: &mut HashSet<String>) {
    if !seen.insert(name.to_owned()) {
        return;
    }
    let out = run(Command::new("systemd-analyze").args(["syscall-filter", name]));
    assert!(out.status.success(), "{}", printed(&out));
    for word in String::from_utf8_lossy(&out.stdout).lines().skip(1).map(str::trim) {
        if word.starts_with('@') {
            syscall_set(word, seen, calls);
        } else if !word.is_empty() && !word.starts_with('#') {
            calls.insert(word.to_owned());
        }
    }
}

/// Every system call the daemon makes while starting, serving scrapes,
/// reloading its config and stopping passes the unit's `SystemCallFilter`
/// (which would fail it with EPERM otherwise).
#[test]
fn unit_syscall_filter_allows_every_call_the_daemon_makes() {
    let settings = service_settings(&read(&deploy_dir().join("kernel-exporter.service")));
    let mut allowed = HashSet::new();
    let mut seen = HashSet::new();
    for entry in setting(&settings, "SystemCallFilter").split_whitespace() {
        assert!(!entry.starts_with('~'), "the filter is an allow list");
        if entry.starts_with('@') {
            syscall_set(entry, &mut seen, &mut allowed);
        } else {
            allowed.insert(entry.to_owned());
        }
    }

    let dir = TempDir::new("strace");
    let trace = dir.path().join("trace");
    let mut strace = Command::new("strace");
    strace.args(["-f", "-qq", "-o"]).arg(&trace).arg(exporter_binary());
    let config = format!("--web.config.file={}", deploy_dir().join("web-config.yml").display());
    let mut exporter = Exporter::spawn_command(strace, free_port(), &[&config]);
    exporter.wait_until_listening();
    exporter.scrape();
    // strace's pid is the one we have; the daemon is its child.
    let children = read(Path::new(&format!("/proc/{0}/task/{0}/children", exporter.pid())));
    let daemon: libc::pid_t = children.split_whitespace().next().and_then(|pid| pid.parse().ok()).expect("a child");
    // SAFETY: kill(2) with the daemon's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGHUP) }, 0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    exporter.scrape();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGTERM) }, 0);
    let status = exporter.wait_exit(std::time::Duration::from_secs(10));
    assert!(status.success(), "{status}; log:\n{}", exporter.log());

    let used: BTreeSet<String> = read(&trace)
        .lines()
        .filter_map(|line| {
            let call = line.split_once(' ')?.1.trim_start();
            let name = &call[..call.find('(')?];
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_').then(|| name.to_owned())
        })
        .collect();
    assert!(used.contains("bpf") && used.contains("execve") && used.len() > 20, "{used:?}");
    let denied: Vec<&String> = used.iter().filter(|call| !allowed.contains(*call)).collect();
    assert!(denied.is_empty(), "the unit's SystemCallFilter would refuse {denied:?}");
}
