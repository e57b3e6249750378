//! What the routes answer with: content negotiation (gzip), the
//! `collect[]`/`exclude[]` query filters, the landing page and the fixed
//! refusals (401, 403, 405, 429).
//!
//! Pure functions of the request's pieces; the order of the pipeline is
//! [`super::server`]'s.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Response, StatusCode,
    header::{self, HeaderValue},
};

use crate::front_door::auth::{self, AuthFailure};

/// Whether an `Accept-Encoding` header allows gzip (any `gzip` coding with
/// a quality above zero; Prometheus sends `gzip` by default). Codings and
/// the `q` parameter are case-insensitive (RFC 9110).
pub(crate) fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    accept_encoding.is_some_and(|codings| {
        codings.split(',').any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            parts.next().is_some_and(|name| name.eq_ignore_ascii_case("gzip"))
                && parts.all(|parameter| match parameter.split_once('=') {
                    Some((name, q)) if name.trim().eq_ignore_ascii_case("q") => {
                        q.trim().parse::<f32>().is_ok_and(|q| q > 0.0)
                    }
                    _ => true,
                })
        })
    })
}

/// Compresses a body. Fast compression: bodies are small and scraped often,
/// so CPU matters more than the last few percent of size.
pub(super) fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut encoder =
        flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4 + 64), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default().into()
}

/// The `collect[]` and `exclude[]` values of a query string, decoded
/// (Prometheus sends the brackets percent-encoded).
pub(crate) fn collector_filters(query: Option<&str>) -> (Vec<String>, Vec<String>) {
    let mut collect = Vec::new();
    let mut exclude = Vec::new();
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match percent_decode(key).as_str() {
            "collect[]" => collect.push(percent_decode(value)),
            "exclude[]" => exclude.push(percent_decode(value)),
            _ => {}
        }
    }
    (collect, exclude)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, then
/// percent-encoding's (servo/rust-url's) decoder, which keeps malformed
/// escapes as they are. `+` goes first: a space is no hex digit, so no
/// escape is made or broken by it.
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned()
}

pub(super) fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// 401 with the challenge, or 429 when too many checks are waiting or
/// the source started too many.
pub(super) fn refused(failure: AuthFailure) -> Response<Full<Bytes>> {
    if matches!(failure, AuthFailure::Overloaded | AuthFailure::RateLimited) {
        let mut response = response(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"too many password checks in progress; retry later\n"),
        );
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    }
    let mut response =
        response(StatusCode::UNAUTHORIZED, "text/plain; charset=utf-8", Bytes::from_static(b"Unauthorized\n"));
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(auth::CHALLENGE));
    response
}

/// Over the web config's `rate_limit`, worded as exporter-toolkit does.
pub(super) fn rate_limited() -> Response<Full<Bytes>> {
    let mut response = response(
        StatusCode::TOO_MANY_REQUESTS,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"Too Many Requests\n"),
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// For a connection whose source was removed from the allowlist after it
/// connected: hyper closes an HTTP/1 connection after a `Connection: close`
/// response.
pub(super) fn source_removed() -> Response<Full<Bytes>> {
    let mut response = response(
        StatusCode::FORBIDDEN,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"this source is no longer in the allowlist\n"),
    );
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pub(super) fn method_not_allowed() -> Response<Full<Bytes>> {
    let mut response = response(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"405 method not allowed\n"),
    );
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

pub(super) fn landing_page(telemetry_path: &str) -> Bytes {
    let path = html_escape(telemetry_path);
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>kernel-exporter</title></head>\n\
         <body>\n<h1>kernel-exporter</h1>\n<p>Prometheus exporter for Linux hosts, fed by eBPF programs on kernel tracepoints.</p>\n\
         <p><a href=\"{path}\">Metrics</a></p>\n<p>Version {version} ({revision})</p>\n</body>\n</html>\n",
        version = env!("CARGO_PKG_VERSION"),
        revision = env!("KERNEL_EXPORTER_REVISION"),
    )
    .into()
}

fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_negotiation() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        // Found by the `negotiation` fuzz target (fuzz/regressions/negotiation/).
        assert!(!accepts_gzip(Some("GZIP;Q=0, identity")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(Some("gzipx")));
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = b"kernel_sched_forks_total 3\n".repeat(100);
        let compressed = gzip(&body);
        assert!(compressed.len() < body.len() / 4);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, body);
    }

    #[test]
    fn query_filters_are_decoded() {
        let (collect, exclude) = collector_filters(Some("collect%5B%5D=sched&collect[]=irq&x=1&exclude%5b%5d=a%2Bb+c"));
        assert_eq!(collect, ["sched", "irq"]);
        assert_eq!(exclude, ["a+b c"]);
        assert_eq!(collector_filters(None), (vec![], vec![]));
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        // A sign is not a hex digit; `+` still means a space.
        assert_eq!(percent_decode("%+1"), "% 1");
    }

    #[test]
    fn landing_page_links_the_escaped_path() {
        let page = landing_page("/m\"<x>");
        let page = std::str::from_utf8(&page).unwrap();
        assert!(page.contains("<a href=\"/m&quot;&lt;x&gt;\">Metrics</a>"), "{page}");
    }
}
