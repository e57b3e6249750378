//! What the HTTP side answers, checked on the wire.

use kernel_exporter_tests::{Exporter, promtool_check_metrics};

const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[test]
fn get_and_head_metrics() {
    let exporter = Exporter::start(&[]);
    let get = exporter.request("GET", "/metrics");
    assert_eq!(get.status, 200);
    assert_eq!(get.header("content-type"), Some(TEXT_FORMAT));
    assert!(get.body.contains("# TYPE kernel_sched_context_switches_total counter\n"), "{}", get.body);
    assert!(get.body.contains("\nkernel_exporter_build_info{version=\""), "{}", get.body);
    promtool_check_metrics(&get.body).unwrap_or_else(|found| panic!("promtool: {found}"));

    let head = exporter.request("HEAD", "/metrics");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some(TEXT_FORMAT));
    assert!(head.body.is_empty(), "HEAD returned a body: {:?}", head.body);
    let length: usize = head.header("content-length").expect("HEAD has content-length").parse().unwrap();
    assert!(length > 500, "content-length {length}");
}

#[test]
fn landing_page_links_the_telemetry_path() {
    let exporter = Exporter::start(&["--web.telemetry-path=/kernel-metrics"]);
    let page = exporter.request("GET", "/");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.body.contains("<a href=\"/kernel-metrics\">"), "{}", page.body);
    assert_eq!(exporter.request("GET", "/kernel-metrics").status, 200);
    assert_eq!(exporter.request("GET", "/metrics").status, 404);
}

#[test]
fn unknown_paths_and_methods() {
    let exporter = Exporter::start(&[]);
    assert_eq!(exporter.request("GET", "/nope").status, 404);
    assert_eq!(exporter.request("GET", "/metrics/extra").status, 404);
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        for path in ["/metrics", "/"] {
            let response = exporter.request(method, path);
            assert_eq!(response.status, 405, "{method} {path}");
            assert_eq!(response.header("allow"), Some("GET, HEAD"), "{method} {path}");
        }
    }
}

#[test]
fn curl_scrapes_it() {
    let exporter = Exporter::start(&[]);
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--compressed", &format!("http://{}/metrics", exporter.addr)])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kernel_sched_forks_total "));
}
