//! The web config's `tls_server_config`, validated: where the PEM text
//! comes from, client authentication, versions, cipher suites and curves,
//! under the Go names exporter-toolkit uses.
//!
//! Plain data: [`super::web_config`] builds it, [`super::tls`] turns it into
//! a rustls `ServerConfig`.

use std::{
    fmt,
    path::{Path, PathBuf},
};

/// Where PEM text comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PemSource {
    File(PathBuf),
    Inline(String),
}

impl PemSource {
    /// The config key and the file, for error messages.
    pub(crate) fn describe(&self, file_key: &str, inline_key: &str) -> String {
        match self {
            Self::File(path) => format!("{file_key} ({})", path.display()),
            Self::Inline(_) => inline_key.to_owned(),
        }
    }

    pub(crate) fn file(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Inline(_) => None,
        }
    }
}

/// `tls_server_config`, validated.
#[derive(Debug, Clone)]
pub(crate) struct TlsSettings {
    pub(crate) cert: PemSource,
    pub(crate) key: PemSource,
    pub(crate) client_ca: Option<PemSource>,
    pub(crate) client_auth: ClientAuth,
    /// `None`: no SAN check. Never an empty list.
    pub(crate) client_allowed_sans: Option<Vec<String>>,
    pub(crate) min_version: TlsVersion,
    pub(crate) max_version: TlsVersion,
    /// TLS 1.2 suites, in the file's order; `None` means the provider's
    /// defaults. TLS 1.3 suites are not configurable (as in Go).
    pub(crate) tls12_cipher_suites: Option<Vec<CipherSuite>>,
    /// Key-exchange groups in order; `None` means the provider's defaults.
    pub(crate) curves: Option<Vec<Curve>>,
    pub(crate) prefer_server_cipher_suites: bool,
}

/// exporter-toolkit's `client_auth_type` values, with Go's `crypto/tls`
/// meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    /// No certificate is asked for.
    NoClientCert,
    /// Asked for, not required, not verified.
    RequestClientCert,
    /// Required, not verified against a CA.
    RequireAnyClientCert,
    /// Not required; verified against `client_ca` when given.
    VerifyClientCertIfGiven,
    /// Required and verified against `client_ca`.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    pub(super) const NAMES: &[(&str, Self)] = &[
        ("NoClientCert", Self::NoClientCert),
        ("RequestClientCert", Self::RequestClientCert),
        ("RequireAnyClientCert", Self::RequireAnyClientCert),
        // exporter-toolkit keeps this old spelling working.
        ("RequireClientCert", Self::RequireAnyClientCert),
        ("VerifyClientCertIfGiven", Self::VerifyClientCertIfGiven),
        ("RequireAndVerifyClientCert", Self::RequireAndVerifyClientCert),
    ];

    pub(crate) fn requires_certificate(self) -> bool {
        matches!(self, Self::RequireAnyClientCert | Self::RequireAndVerifyClientCert)
    }

    pub(crate) fn verifies(self) -> bool {
        matches!(self, Self::VerifyClientCertIfGiven | Self::RequireAndVerifyClientCert)
    }
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = Self::NAMES.iter().find(|(_, value)| value == self).map_or("?", |(name, _)| name);
        f.write_str(name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TlsVersion {
    Tls12,
    Tls13,
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tls12 => "TLS12",
            Self::Tls13 => "TLS13",
        })
    }
}

/// The TLS 1.2 suites rustls implements, by their Go names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CipherSuite {
    EcdheEcdsaAes128Gcm,
    EcdheEcdsaAes256Gcm,
    EcdheEcdsaChacha20,
    EcdheRsaAes128Gcm,
    EcdheRsaAes256Gcm,
    EcdheRsaChacha20,
}

impl CipherSuite {
    /// Go's names (both spellings Go accepts for ChaCha20).
    pub(super) const GO_NAMES: &[(&str, Self)] = &[
        ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", Self::EcdheEcdsaAes128Gcm),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", Self::EcdheEcdsaAes256Gcm),
        ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", Self::EcdheEcdsaChacha20),
        ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", Self::EcdheEcdsaChacha20),
        ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", Self::EcdheRsaAes128Gcm),
        ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", Self::EcdheRsaAes256Gcm),
        ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", Self::EcdheRsaChacha20),
        ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", Self::EcdheRsaChacha20),
    ];
    /// TLS 1.3 suites: Go accepts the names but always enables all three,
    /// and so do we.
    pub(super) const TLS13_GO_NAMES: &[&str] =
        &["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];
    /// Suites Go knows that rustls deliberately does not implement (CBC
    /// modes, RSA key exchange, RC4, 3DES).
    pub(super) const GO_ONLY_NAMES: &[&str] = &[
        "TLS_RSA_WITH_AES_128_CBC_SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA",
        "TLS_RSA_WITH_AES_128_GCM_SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384",
        "TLS_RSA_WITH_AES_128_CBC_SHA256",
        "TLS_RSA_WITH_RC4_128_SHA",
        "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
        "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
        "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
        "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    ];
}

/// Key-exchange groups, by exporter-toolkit's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Curve {
    X25519,
    P256,
    P384,
}
