//! `--web.config.file`: exporter-toolkit's web-config.yml, parsed and
//! validated into a typed [`WebConfig`] before anything listens.
//!
//! A node_exporter user's file works unchanged: the same keys, the same
//! defaults (TLS 1.2 to 1.3, server cipher order, HTTP/2 on), the same Go
//! names for versions, cipher suites and curves, and the same allowed set of
//! extra response headers. One key is ours: `allowed_sources`, the CIDR
//! allowlist the socket filter enforces (parsed and validated here).
//!
//! Every error names the file, the key and what is wrong with it. This module
//! does not read the certificate files (`tls` does); it resolves their paths
//! relative to the config file's directory, as exporter-toolkit does.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Read as _},
    path::{Path, PathBuf},
    time::Duration,
};

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

/// The largest web config read: a real one is a few kilobytes (a full
/// allowlist of 1,024 ranges is about 25 KiB).
pub(crate) const MAX_FILE_BYTES: u64 = 1024 * 1024;

// Re-exported: the rest of the daemon takes every part of the web config
// from here, wherever the type is defined.
pub(crate) use super::{
    cidr::{Cidr, parse_allowed_sources},
    duration::parse_go_duration,
    tls_settings::{CipherSuite, ClientAuth, Curve, PemSource, TlsSettings, TlsVersion},
};

/// A web config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("cannot read the web config {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// YAML syntax, unknown keys and wrong types, as the YAML parser words
    /// them (with the key and the line).
    #[error("web config {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("web config {}: {key}: {problem}", path.display())]
    Invalid { path: PathBuf, key: String, problem: String },
    #[error("web config {}: larger than {MAX_FILE_BYTES} bytes; a web config is a few kilobytes", path.display())]
    TooLarge { path: PathBuf },
}

/// The file as written, keys exactly as exporter-toolkit spells them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tls_server_config: RawTls,
    #[serde(default)]
    http_server_config: RawHttp,
    basic_auth_users: Option<BTreeMap<String, String>>,
    /// exporter-toolkit's rate limiter for every request.
    rate_limit: Option<RawRateLimit>,
    allowed_sources: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

/// exporter-toolkit's `rate_limit`: Go's `rate.NewLimiter(rate.Every(interval), burst)`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    /// A Go duration (`1s`, `100ms`); absent or zero: no limit.
    interval: Option<String>,
    burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// The validated web config.
#[derive(Debug, Clone)]
pub(crate) struct WebConfig {
    pub(crate) path: PathBuf,
    /// `None`: plain HTTP.
    pub(crate) tls: Option<TlsSettings>,
    /// Offer HTTP/2 through ALPN (TLS only).
    pub(crate) http2: bool,
    /// Extra headers on every response.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// User name → bcrypt hash; empty means no basic auth.
    pub(crate) users: BTreeMap<String, String>,
    /// `None` (the key is absent): every source is allowed.
    pub(crate) allowed_sources: Option<Vec<Cidr>>,
    /// `None`: requests are not rate limited.
    pub(crate) rate_limit: Option<RateLimit>,
    /// Things that work but differ from what the file asks for.
    pub(crate) warnings: Vec<String>,
}

/// `rate_limit`, validated: one request per `interval` on average, up to
/// `burst` at once, over every client together (as exporter-toolkit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit {
    pub(crate) interval: Duration,
    pub(crate) burst: u32,
}

/// Header names exporter-toolkit lets a web config set, with the values
/// allowed where the header is an enumeration (empty: any value).
const ALLOWED_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

impl WebConfig {
    /// Reads and validates `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_error = |source| ConfigError::Read { path: path.to_owned(), source };
        let file = fs::File::open(path).map_err(read_error)?;
        // One byte more than allowed tells a file at the cap from one above.
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(ConfigError::TooLarge { path: path.to_owned() });
        }
        let text = String::from_utf8(bytes)
            .map_err(|error| read_error(io::Error::new(io::ErrorKind::InvalidData, error.utf8_error())))?;
        Self::parse(path, &text)
    }

    /// Validates `text`, read from `path` (relative file names in it are
    /// relative to the directory of `path`).
    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let syntax = |error: yaml_serde::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: one_line(&error.to_string()),
        };
        // An empty file is a valid, empty config (as in Go).
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            // Without aliases a document is at most about as large as its
            // text; they may add as much again, and no more.
            super::yaml_budget::check_alias_expansion(text).map_err(syntax)?;
            yaml_serde::from_str(text).map_err(syntax)?
        };
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: one_line(key),
            problem: one_line(&problem),
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut warnings = Vec::new();

        let rate_limit = match raw.rate_limit {
            None => None,
            Some(RawRateLimit { interval, burst }) => {
                let interval = interval
                    .as_deref()
                    .map(parse_go_duration)
                    .transpose()
                    .map_err(|problem| invalid("rate_limit.interval", problem))?
                    .unwrap_or_default();
                let burst = burst.unwrap_or(0);
                if interval.is_zero() {
                    // As in exporter-toolkit: no interval, no limiter.
                    None
                } else if burst == 0 {
                    return Err(invalid(
                        "rate_limit.burst",
                        "is 0, which would refuse every request; set it to 1 or more".to_owned(),
                    ));
                } else {
                    Some(RateLimit { interval, burst })
                }
            }
        };

        let tls = tls_settings(raw.tls_server_config, dir, &invalid, &mut warnings)?;

        let http2 = raw.http_server_config.http2.unwrap_or(true);
        let mut headers = Vec::new();
        for (name, value) in raw.http_server_config.headers.unwrap_or_default() {
            let key = format!("http_server_config.headers.{name}");
            let Some((canonical, allowed)) = ALLOWED_HEADERS.iter().find(|(allowed, _)| *allowed == name) else {
                let names: Vec<&str> = ALLOWED_HEADERS.iter().map(|(name, _)| *name).collect();
                return Err(invalid(
                    &key,
                    format!("this header cannot be configured; allowed are {}", names.join(", ")),
                ));
            };
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err(invalid(&key, format!("{value:?} is not allowed; expected one of {allowed:?}")));
            }
            let value = HeaderValue::from_str(&value)
                .map_err(|_| invalid(&key, format!("{value:?} is not a valid header value")))?;
            headers.push((HeaderName::from_static(header_static(canonical)), value));
        }

        let users = raw.basic_auth_users.unwrap_or_default();
        for (user, hash) in &users {
            let key = format!("basic_auth_users.{user}");
            if user.contains(':') {
                return Err(invalid(&key, "a user name cannot contain ':' (basic auth splits there)".to_owned()));
            }
            let parts = hash.parse::<bcrypt::HashParts>().map_err(|_| {
                invalid(
                    &key,
                    "is not a bcrypt hash ($2a$, $2b$ or $2y$); make one with `htpasswd -nBC 10 USER`".to_owned(),
                )
            })?;
            if !(4..=31).contains(&parts.get_cost()) {
                return Err(invalid(&key, format!("bcrypt cost {} is outside 4..=31", parts.get_cost())));
            }
        }

        let allowed_sources = raw
            .allowed_sources
            .map(|texts| parse_allowed_sources(&texts).map_err(|(key, problem)| invalid(&key, problem)))
            .transpose()?;

        Ok(Self { path: path.to_owned(), tls, http2, headers, users, allowed_sources, rate_limit, warnings })
    }

    /// Files whose change means the config must be re-read: the config
    /// itself and the PEM files it names.
    pub(crate) fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        if let Some(tls) = &self.tls {
            let sources = [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()];
            files.extend(sources.into_iter().flatten().filter_map(PemSource::file).map(Path::to_owned));
        }
        files
    }
}

/// `text` with control characters escaped (a newline as `\n`): an error is
/// one log line even when a key, or the YAML parser quoting one, holds a
/// newline.
fn one_line(text: &str) -> String {
    text.chars().fold(String::with_capacity(text.len()), |mut out, c| {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        out
    })
}

fn header_static(name: &str) -> &'static str {
    // HeaderName::from_static wants lower case.
    match name {
        "Strict-Transport-Security" => "strict-transport-security",
        "X-Content-Type-Options" => "x-content-type-options",
        "X-Frame-Options" => "x-frame-options",
        "X-XSS-Protection" => "x-xss-protection",
        _ => "content-security-policy",
    }
}

/// `tls_server_config`, validated: `None` when TLS is off. Each step below
/// checks one group of keys and names the key it refuses.
fn tls_settings(
    raw: RawTls,
    dir: &Path,
    invalid: &impl Fn(&str, String) -> ConfigError,
    warnings: &mut Vec<String>,
) -> Result<Option<TlsSettings>, ConfigError> {
    let keys = TlsKeys { invalid };
    // Empty strings count as unset, as in Go.
    let set = |value: Option<String>| value.filter(|v| !v.is_empty());
    let (cert, cert_file) = (set(raw.cert), set(raw.cert_file));
    let (pem_key, key_file) = (set(raw.key), set(raw.key_file));
    let (client_ca, client_ca_file) = (set(raw.client_ca), set(raw.client_ca_file));
    let client_auth_type = set(raw.client_auth_type);

    let enabled = cert.is_some()
        || cert_file.is_some()
        || pem_key.is_some()
        || key_file.is_some()
        || client_ca.is_some()
        || client_ca_file.is_some()
        || client_auth_type.is_some();
    if !enabled {
        let stray = [
            ("cipher_suites", raw.cipher_suites.is_some()),
            ("curve_preferences", raw.curve_preferences.is_some()),
            ("min_version", raw.min_version.is_some()),
            ("max_version", raw.max_version.is_some()),
            ("client_allowed_sans", raw.client_allowed_sans.is_some()),
        ];
        if let Some((name, _)) = stray.iter().find(|(_, present)| *present) {
            warnings.push(format!("{}: ignored, since TLS is off (no cert_file/key_file)", TlsKeys::<()>::key(name)));
        }
        return Ok(None);
    }

    let cert = keys
        .pem_source(dir, cert, cert_file, "cert", "cert_file")?
        .ok_or_else(|| keys.error("cert_file", "TLS is configured but there is no cert_file (or cert)"))?;
    let pem_key = keys
        .pem_source(dir, pem_key, key_file, "key", "key_file")?
        .ok_or_else(|| keys.error("key_file", "TLS is configured but there is no key_file (or key)"))?;
    let client_ca = keys.pem_source(dir, client_ca, client_ca_file, "client_ca", "client_ca_file")?;
    let client_auth = keys.client_auth(client_auth_type.as_deref(), client_ca.is_some())?;
    let client_allowed_sans = keys.client_allowed_sans(raw.client_allowed_sans, client_auth)?;
    let min_version = keys.version("min_version", raw.min_version.as_deref(), TlsVersion::Tls12)?;
    let max_version = keys.version("max_version", raw.max_version.as_deref(), TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err(keys.error("min_version", format!("min_version {min_version} is above max_version {max_version}")));
    }
    let tls12_cipher_suites =
        raw.cipher_suites.map(|names| keys.tls12_cipher_suites(&names, min_version)).transpose()?;
    let curves = raw.curve_preferences.map(|names| keys.curves(&names, warnings)).transpose()?;

    Ok(Some(TlsSettings {
        cert,
        key: pem_key,
        client_ca,
        client_auth,
        client_allowed_sans,
        min_version,
        max_version,
        tls12_cipher_suites,
        curves,
        prefer_server_cipher_suites: raw.prefer_server_cipher_suites.unwrap_or(true),
    }))
}

/// The steps of [`tls_settings`], each refusing with the key it checks.
struct TlsKeys<'a, F> {
    invalid: &'a F,
}

impl<F> TlsKeys<'_, F> {
    fn key(name: &str) -> String {
        format!("tls_server_config.{name}")
    }
}

impl<F: Fn(&str, String) -> ConfigError> TlsKeys<'_, F> {
    fn error(&self, name: &str, problem: impl Into<String>) -> ConfigError {
        (self.invalid)(&Self::key(name), problem.into())
    }

    /// A PEM given inline (`cert`) or as a file (`cert_file`, relative to
    /// the config's directory), not both.
    fn pem_source(
        &self,
        dir: &Path,
        inline: Option<String>,
        file: Option<String>,
        inline_key: &str,
        file_key: &str,
    ) -> Result<Option<PemSource>, ConfigError> {
        match (inline, file) {
            (Some(_), Some(_)) => {
                Err(self.error(file_key, format!("give either {file_key} or {inline_key}, not both")))
            }
            (Some(pem), None) => Ok(Some(PemSource::Inline(pem))),
            (None, Some(file)) => Ok(Some(PemSource::File(dir.join(file)))),
            (None, None) => Ok(None),
        }
    }

    /// `client_auth_type`, consistent with whether a client CA is given.
    fn client_auth(&self, name: Option<&str>, has_client_ca: bool) -> Result<ClientAuth, ConfigError> {
        let client_auth = match name {
            None => ClientAuth::NoClientCert,
            Some(name) => {
                ClientAuth::NAMES.iter().find(|(known, _)| *known == name).map(|(_, auth)| *auth).ok_or_else(|| {
                    let names: Vec<&str> = ClientAuth::NAMES.iter().map(|(name, _)| *name).collect();
                    self.error("client_auth_type", format!("{name:?} is not one of {}", names.join(", ")))
                })?
            }
        };
        if has_client_ca && client_auth == ClientAuth::NoClientCert {
            return Err(self.error(
                "client_auth_type",
                "client_ca_file is set but client_auth_type is NoClientCert; set RequireAndVerifyClientCert",
            ));
        }
        if client_auth.verifies() && !has_client_ca {
            return Err(self.error(
                "client_ca_file",
                format!(
                    "client_auth_type {client_auth} verifies client certificates and needs client_ca_file (or client_ca)"
                ),
            ));
        }
        Ok(client_auth)
    }

    /// `client_allowed_sans`: only with a required client certificate, and
    /// never an empty list (it would refuse everyone).
    fn client_allowed_sans(
        &self,
        sans: Option<Vec<String>>,
        client_auth: ClientAuth,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        match sans {
            None => Ok(None),
            Some(sans) if sans.is_empty() => {
                Err(self.error("client_allowed_sans", "an empty list would refuse every client"))
            }
            Some(_) if !client_auth.requires_certificate() => Err(self.error(
                "client_allowed_sans",
                format!(
                    "needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert, not {client_auth} \
                     (a client without a certificate has no SAN to check)"
                ),
            )),
            Some(sans) => Ok(Some(sans)),
        }
    }

    /// `min_version` or `max_version`, by Go's names.
    fn version(&self, name: &str, value: Option<&str>, default: TlsVersion) -> Result<TlsVersion, ConfigError> {
        match value {
            None => Ok(default),
            Some("TLS12") => Ok(TlsVersion::Tls12),
            Some("TLS13") => Ok(TlsVersion::Tls13),
            Some(old @ ("TLS10" | "TLS11")) => Err(self.error(
                name,
                format!("{old} is not supported (rustls implements TLS 1.2 and 1.3 only); use TLS12 or TLS13"),
            )),
            Some(other) => Err(self.error(name, format!("{other:?} is not one of TLS12, TLS13"))),
        }
    }

    /// `cipher_suites` by Go's names; TLS 1.3 names are ignored as Go does.
    fn tls12_cipher_suites(&self, names: &[String], min_version: TlsVersion) -> Result<Vec<CipherSuite>, ConfigError> {
        let mut suites = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let at = format!("cipher_suites[{i}]");
            if let Some((_, suite)) = CipherSuite::GO_NAMES.iter().find(|(go, _)| go == name) {
                if !suites.contains(suite) {
                    suites.push(*suite);
                }
            } else if CipherSuite::TLS13_GO_NAMES.contains(&name.as_str()) {
                // Go ignores TLS 1.3 names here too.
            } else if CipherSuite::GO_ONLY_NAMES.contains(&name.as_str()) {
                return Err(self.error(
                    &at,
                    format!(
                        "{name} (CBC, RC4, 3DES or RSA key exchange) is not implemented by rustls; use the ECDHE GCM or ChaCha20 suites"
                    ),
                ));
            } else {
                return Err(self.error(
                    &at,
                    format!(
                        "unknown cipher suite {name:?} (use Go's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"
                    ),
                ));
            }
        }
        if suites.is_empty() && min_version == TlsVersion::Tls12 {
            return Err(self.error(
                "cipher_suites",
                "lists no TLS 1.2 suite, so no TLS 1.2 client could connect; add one or set min_version: TLS13",
            ));
        }
        Ok(suites)
    }

    /// `curve_preferences` by Go's names; P-521 is skipped with a warning
    /// (the ring backend lacks it) rather than refused.
    fn curves(&self, names: &[String], warnings: &mut Vec<String>) -> Result<Vec<Curve>, ConfigError> {
        let mut curves = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let at = format!("curve_preferences[{i}]");
            let curve = match name.as_str() {
                "X25519" => Curve::X25519,
                "CurveP256" => Curve::P256,
                "CurveP384" => Curve::P384,
                "CurveP521" => {
                    warnings.push(format!(
                        "{}: CurveP521 is skipped (rustls's ring backend does not implement it)",
                        Self::key(&at)
                    ));
                    continue;
                }
                other => {
                    return Err(self.error(
                        &at,
                        format!("unknown curve {other:?}; expected X25519, CurveP256, CurveP384 or CurveP521"),
                    ));
                }
            };
            if !curves.contains(&curve) {
                curves.push(curve);
            }
        }
        if curves.is_empty() {
            return Err(
                self.error("curve_preferences", "leaves no curve rustls implements (X25519, CurveP256, CurveP384)")
            );
        }
        Ok(curves)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bcrypt of "secret" at cost 4.
    const HASH: &str = "$2b$04$TGwgTClqVFzS7z.YIpLZbeuusmrIUx7KIv89pu1MSJ7STigPpMkj.";

    fn parse(text: &str) -> Result<WebConfig, ConfigError> {
        WebConfig::parse(Path::new("/etc/kernel-exporter/web.yml"), text)
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn empty_file_means_plain_http_without_auth() {
        let config = parse("").unwrap();
        assert!(config.tls.is_none());
        assert!(config.users.is_empty());
        assert!(config.http2);
        assert!(config.headers.is_empty());
    }

    #[test]
    fn node_exporter_style_file() {
        let config = parse(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  client_ca_file: ca.crt\n  \
             client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n  client_allowed_sans: [prometheus.example]\n  \
             cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n  curve_preferences: [X25519, CurveP521]\n  \
             prefer_server_cipher_suites: false\n\
             http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n\
             basic_auth_users:\n  prometheus: {HASH}\n\
             allowed_sources: [10.0.0.0/8, '2001:db8::/32', 192.0.2.7]\n"
        ))
        .unwrap();
        let tls = config.tls.as_ref().unwrap();
        assert_eq!(tls.cert, PemSource::File("/etc/kernel-exporter/server.crt".into()));
        assert_eq!(tls.key, PemSource::File("/abs/server.key".into()));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.max_version, TlsVersion::Tls13);
        assert_eq!(tls.tls12_cipher_suites, Some(vec![CipherSuite::EcdheRsaAes128Gcm]));
        assert_eq!(tls.curves, Some(vec![Curve::X25519]));
        assert!(!tls.prefer_server_cipher_suites);
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert!(config.warnings[0].contains("CurveP521"));
        assert!(!config.http2);
        assert_eq!(config.headers.len(), 2);
        assert_eq!(config.users.len(), 1);
        assert_eq!(
            config.allowed_sources.as_ref().unwrap()[2],
            Cidr { addr: "192.0.2.7".parse().unwrap(), prefix: 32 }
        );
        assert_eq!(
            config.watched_files(),
            [
                PathBuf::from("/etc/kernel-exporter/web.yml"),
                "/etc/kernel-exporter/server.crt".into(),
                "/abs/server.key".into(),
                "/etc/kernel-exporter/ca.crt".into()
            ]
        );
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let e = error("tls_server_config:\n  cert_file: a\n  key_file: b\n  bogus: 1\n");
        assert!(
            e.starts_with("web config /etc/kernel-exporter/web.yml: tls_server_config: unknown field `bogus`"),
            "{e}"
        );
        let e = error("basic_auth_user: {}\n");
        assert!(e.contains("unknown field `basic_auth_user`"), "{e}");
        let e = error("tls_server_config:\n  cert_file: a\n");
        assert!(e.ends_with("tls_server_config.key_file: TLS is configured but there is no key_file (or key)"), "{e}");
        let e = error("tls_server_config:\n  cert_file: a\n  cert: b\n  key_file: c\n");
        assert!(e.contains("tls_server_config.cert_file: give either cert_file or cert, not both"), "{e}");
        let e = error("basic_auth_users:\n  alice: plaintext\n");
        assert!(e.contains("basic_auth_users.alice: is not a bcrypt hash"), "{e}");
        let e = error(&format!("basic_auth_users:\n  alice: '{}'\n", HASH.replace("$04$", "$99$")));
        assert!(e.contains("basic_auth_users.alice: bcrypt cost 99 is outside 4..=31"), "{e}");
        let e = error("http_server_config:\n  headers:\n    Server: x\n");
        assert!(e.contains("http_server_config.headers.Server: this header cannot be configured"), "{e}");
        let e = error("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n");
        assert!(e.contains("\"sniff\" is not allowed"), "{e}");
        let e = error("allowed_sources: [10.0.0.1/8]\n");
        assert!(e.contains("allowed_sources[0]: \"10.0.0.1/8\" has host bits set; the range is 10.0.0.0/8"), "{e}");
        let e = error("allowed_sources: [10.0.0.0/33]\n");
        assert!(e.contains("prefix length must be 0 to 32"), "{e}");
        let e = error("allowed_sources: []\n");
        assert!(e.contains("allowed_sources: is empty, which would refuse every client"), "{e}");
        assert!(parse("").unwrap().allowed_sources.is_none(), "absent: every source");
        let e = error("rate_limit:\n  interval: 1s\n  burst: 0\n");
        assert!(e.contains("rate_limit.burst: is 0, which would refuse every request"), "{e}");
        let e = error("rate_limit:\n  interval: soon\n  burst: 1\n");
        assert!(e.contains("rate_limit.interval: \"soon\" is not a duration"), "{e}");
        let e = error("rate_limit:\n  interval: 1s\n  bogus: 1\n");
        assert!(e.contains("unknown field `bogus`"), "{e}");
    }

    #[test]
    fn rate_limit_is_exporter_toolkits() {
        let config = parse("rate_limit:\n  interval: 100ms\n  burst: 5\n").unwrap();
        assert_eq!(config.rate_limit, Some(RateLimit { interval: Duration::from_millis(100), burst: 5 }));
        assert_eq!(parse("rate_limit:\n  burst: 5\n").unwrap().rate_limit, None, "no interval: no limiter");
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "1", "s", "1x", "-1s", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn alias_bombs_are_refused_before_they_expand() {
        // Ten levels of ten aliases each: 10^10 strings once expanded.
        let mut text = "allowed_sources: &a0 ['10.0.0.0/8']\nbasic_auth_users:\n".to_owned();
        for level in 1..10 {
            let previous: Vec<String> = (0..10).map(|_| format!("*a{}", level - 1)).collect();
            text += &format!("  u{level}: &a{level} [{}]\n", previous.join(","));
        }
        let started = std::time::Instant::now();
        let e = error(&text);
        assert!(e.contains("aliases expand this document to more than twice the size of the file"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        // A few aliases, as a person would write them, are fine.
        let config = parse("allowed_sources: &nets ['10.0.0.0/8']\n").unwrap();
        assert_eq!(config.allowed_sources.unwrap().len(), 1);
    }

    #[test]
    fn files_over_a_mebibyte_are_not_read() {
        let dir = std::env::temp_dir().join(format!("kernel-exporter-web-config-cap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.yml");
        let mut text = "# padding\n".repeat((MAX_FILE_BYTES as usize) / 10);
        fs::write(&path, &text).unwrap();
        assert!(WebConfig::load(&path).is_ok(), "at the cap");
        text.push_str("# one line too many\n");
        fs::write(&path, &text).unwrap();
        let e = WebConfig::load(&path).unwrap_err().to_string();
        assert!(e.ends_with("larger than 1048576 bytes; a web config is a few kilobytes"), "{e}");
    }

    #[test]
    fn client_auth_rules() {
        let tls = |extra: &str| format!("tls_server_config:\n  cert_file: a\n  key_file: b\n{extra}");
        for (name, expected) in ClientAuth::NAMES {
            let ca = if expected.verifies() || *expected != ClientAuth::NoClientCert {
                "  client_ca_file: ca\n"
            } else {
                ""
            };
            let config = parse(&tls(&format!("  client_auth_type: {name}\n{ca}"))).unwrap();
            assert_eq!(config.tls.unwrap().client_auth, *expected, "{name}");
        }
        let e = error(&tls("  client_auth_type: Sometimes\n"));
        assert!(e.contains("tls_server_config.client_auth_type: \"Sometimes\" is not one of NoClientCert"), "{e}");
        let e = error(&tls("  client_ca_file: ca\n"));
        assert!(e.contains("client_ca_file is set but client_auth_type is NoClientCert"), "{e}");
        let e = error(&tls("  client_auth_type: RequireAndVerifyClientCert\n"));
        assert!(
            e.contains("tls_server_config.client_ca_file: client_auth_type RequireAndVerifyClientCert verifies"),
            "{e}"
        );
        let e = error(&tls(
            "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca\n  client_allowed_sans: [x]\n",
        ));
        assert!(e.contains("client_allowed_sans: needs client_auth_type RequireAnyClientCert"), "{e}");
        let e = error(&tls("  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: []\n"));
        assert!(e.contains("an empty list would refuse every client"), "{e}");
    }

    #[test]
    fn versions_ciphers_curves() {
        let tls = |extra: &str| format!("tls_server_config:\n  cert_file: a\n  key_file: b\n{extra}");
        let e = error(&tls("  min_version: TLS11\n"));
        assert!(e.contains("tls_server_config.min_version: TLS11 is not supported"), "{e}");
        let e = error(&tls("  min_version: TLS13\n  max_version: TLS12\n"));
        assert!(e.contains("min_version TLS13 is above max_version TLS12"), "{e}");
        let e = error(&tls("  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"));
        assert!(e.contains("cipher_suites[0]: TLS_RSA_WITH_AES_128_CBC_SHA (CBC"), "{e}");
        let e = error(&tls("  cipher_suites: [TLS_MADE_UP]\n"));
        assert!(e.contains("unknown cipher suite \"TLS_MADE_UP\""), "{e}");
        let e = error(&tls("  cipher_suites: [TLS_AES_128_GCM_SHA256]\n"));
        assert!(e.contains("lists no TLS 1.2 suite"), "{e}");
        assert!(parse(&tls("  min_version: TLS13\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n")).is_ok());
        let e = error(&tls("  curve_preferences: [CurveP521]\n"));
        assert!(e.contains("leaves no curve rustls implements"), "{e}");
        let e = error(&tls("  curve_preferences: [P256]\n"));
        assert!(e.contains("unknown curve \"P256\""), "{e}");
    }

    /// Found by the `web_config` fuzz target (fuzz/regressions/web_config/):
    /// a key with a newline made the error two log lines.
    #[test]
    fn errors_are_one_line() {
        let e = error("tls_server_config:\n  ? \"a\\nb\"\n  : 1\n");
        assert!(e.contains("unknown field `a\\nb`"), "{e}");
        let e = error(&format!("basic_auth_users:\n  \"al\\nice\\t\": {HASH}x\n"));
        assert!(e.contains("basic_auth_users.al\\nice\\t: is not a bcrypt hash"), "{e}");
        assert!(!e.contains(['\n', '\t']), "{e}");
    }
}
