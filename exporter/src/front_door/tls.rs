//! TLS by rustls (ring backend): a `ServerConfig` built from the web
//! config's `tls_server_config` with exporter-toolkit's meanings, and the
//! handshake failure reasons the exporter counts.
//!
//! `client_auth_type` maps onto rustls client-certificate verifiers:
//! `NoClientCert` offers nothing; `RequestClientCert` and
//! `RequireAnyClientCert` take any certificate whose key signs the handshake
//! (no chain check, as in Go), `VerifyClientCertIfGiven` and
//! `RequireAndVerifyClientCert` check the chain against `client_ca`.
//! `client_allowed_sans` then requires one SAN of the client's certificate to
//! equal one listed entry (DNS, e-mail, IP or URI, compared as text as Go
//! does).

use std::{
    fmt, fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as RustlsError, RootCertStore, ServerConfig,
    SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms, ring},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject as _};
use x509_parser::extensions::GeneralName;

use crate::front_door::web_config::{CipherSuite, ClientAuth, Curve, PemSource, TlsSettings, TlsVersion};

/// PEM material or a setting rustls refuses.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("tls_server_config.{key}: cannot read {}: {source}", path.display())]
    Read { key: &'static str, path: std::path::PathBuf, source: io::Error },
    #[error("tls_server_config.{what}: {problem}")]
    Pem { what: String, problem: String },
    #[error("tls_server_config.{what}: {source}")]
    Rejected { what: String, source: RustlsError },
    #[error("tls_server_config.client_ca_file: {0}")]
    Verifier(rustls::server::VerifierBuilderError),
}

/// Builds the server side of TLS from validated settings: reads the PEM
/// files, checks that the key matches the certificate, and applies versions,
/// suites, curves, ALPN and client authentication.
pub(crate) fn server_config(settings: &TlsSettings, http2: bool) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(provider(settings));
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(version, _)| (settings.min_version..=settings.max_version).contains(version))
            .map(|(_, version)| version)
            .collect();

    let cert_what = settings.cert.describe("cert_file", "cert");
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&settings.cert, "cert_file")?)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { what: cert_what.clone(), problem: format!("not PEM certificates: {e}") })?;
    if chain.is_empty() {
        return Err(TlsError::Pem { what: cert_what, problem: "holds no CERTIFICATE block".to_owned() });
    }
    let key_what = settings.key.describe("key_file", "key");
    let key = PrivateKeyDer::from_pem_slice(&read(&settings.key, "key_file")?).map_err(|e| TlsError::Pem {
        what: key_what.clone(),
        problem: format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
    })?;

    let verifier = client_verifier(settings, &provider)?;
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|source| TlsError::Rejected { what: "min_version".to_owned(), source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rejected { what: format!("{key_what} with {cert_what}"), source })?;
    config.ignore_client_order = settings.prefer_server_cipher_suites;
    config.alpn_protocols = if http2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    Ok(Arc::new(config))
}

/// A digest of what decides which clients may complete a handshake: the
/// client CA's bytes, `client_auth_type`, `client_allowed_sans` and the TLS
/// versions. Two configs with the same digest admit the same clients,
/// whatever their server certificates.
pub(crate) fn client_policy(settings: &TlsSettings) -> Result<[u8; 32], TlsError> {
    let mut context = ::ring::digest::Context::new(&::ring::digest::SHA256);
    let rules = format!(
        "{:?}|{:?}|{:?}|{:?}|",
        settings.client_auth, settings.client_allowed_sans, settings.min_version, settings.max_version
    );
    context.update(rules.as_bytes());
    if let Some(ca) = &settings.client_ca {
        context.update(&read(ca, "client_ca_file")?);
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(context.finish().as_ref());
    Ok(digest)
}

fn read(source: &PemSource, key: &'static str) -> Result<Vec<u8>, TlsError> {
    match source {
        PemSource::Inline(pem) => Ok(pem.as_bytes().to_vec()),
        PemSource::File(path) => fs::read(path).map_err(|source| TlsError::Read { key, path: path.clone(), source }),
    }
}

/// ring's provider, narrowed to the configured TLS 1.2 suites and curves.
fn provider(settings: &TlsSettings) -> CryptoProvider {
    use rustls::crypto::ring::{cipher_suite as suites, kx_group};
    let mut provider = ring::default_provider();
    if let Some(wanted) = &settings.tls12_cipher_suites {
        let tls12 = |suite: CipherSuite| match suite {
            CipherSuite::EcdheEcdsaAes128Gcm => suites::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::EcdheEcdsaAes256Gcm => suites::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::EcdheEcdsaChacha20 => suites::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            CipherSuite::EcdheRsaAes128Gcm => suites::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            CipherSuite::EcdheRsaAes256Gcm => suites::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            CipherSuite::EcdheRsaChacha20 => suites::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        };
        // TLS 1.3 suites first (always all of them, as in Go), then the
        // file's TLS 1.2 suites in the file's order.
        provider.cipher_suites.retain(|suite| suite.tls13().is_some());
        provider.cipher_suites.extend(wanted.iter().map(|&suite| tls12(suite)));
    }
    if let Some(curves) = &settings.curves {
        provider.kx_groups = curves
            .iter()
            .map(|curve| match curve {
                Curve::X25519 => kx_group::X25519,
                Curve::P256 => kx_group::SECP256R1,
                Curve::P384 => kx_group::SECP384R1,
            })
            .collect();
    }
    provider
}

fn client_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = match &settings.client_ca {
        None => None,
        Some(source) => {
            let what = source.describe("client_ca_file", "client_ca");
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(source, "client_ca_file")?) {
                let cert = cert
                    .map_err(|e| TlsError::Pem { what: what.clone(), problem: format!("not PEM certificates: {e}") })?;
                roots.add(cert).map_err(|source| TlsError::Rejected { what: what.clone(), source })?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem { what, problem: "holds no CERTIFICATE block".to_owned() });
            }
            Some(Arc::new(roots))
        }
    };
    let algorithms = provider.signature_verification_algorithms;
    let hints = || roots.as_ref().map(|roots| roots.subjects()).unwrap_or_default();
    let verifier: Arc<dyn ClientCertVerifier> = match settings.client_auth {
        ClientAuth::NoClientCert => return Ok(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::RequestClientCert => {
            Arc::new(UnverifiedClientCert { mandatory: false, hints: hints(), algorithms })
        }
        ClientAuth::RequireAnyClientCert => {
            Arc::new(UnverifiedClientCert { mandatory: true, hints: hints(), algorithms })
        }
        verified @ (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert) => {
            // web_config guarantees a CA for the verifying modes.
            let roots = roots.unwrap_or_else(|| Arc::new(RootCertStore::empty()));
            let builder = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(provider));
            let builder =
                if verified == ClientAuth::VerifyClientCertIfGiven { builder.allow_unauthenticated() } else { builder };
            builder.build().map_err(TlsError::Verifier)?
        }
    };
    Ok(match &settings.client_allowed_sans {
        None => verifier,
        Some(allowed) => Arc::new(AllowedSans { inner: verifier, allowed: allowed.clone() }),
    })
}

/// `RequestClientCert`/`RequireAnyClientCert`: the client proves it holds
/// the certificate's key, but the certificate is not chained to anything.
/// This is what Go does for these modes; it is only as safe as whatever
/// checks the certificate later (here: `client_allowed_sans`, or nothing).
#[derive(Debug)]
struct UnverifiedClientCert {
    mandatory: bool,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for UnverifiedClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, RustlsError> {
        // Still a certificate: garbage is refused.
        san_values(end_entity).map_err(|_| RustlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `client_allowed_sans` on top of another verifier.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, RustlsError> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        let sans =
            san_values(end_entity).map_err(|_| RustlsError::InvalidCertificate(CertificateError::BadEncoding))?;
        if sans.iter().any(|san| self.allowed.contains(san)) {
            Ok(verified)
        } else {
            // Sent as access_denied; counted as client_san_not_allowed.
            Err(RustlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Go's answer to plain HTTP on a TLS port, so curl and browsers show the
/// reason instead of a reset.
const PLAIN_HTTP_RESPONSE: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Runs the server side of the handshake on a fresh connection. Plain HTTP
/// gets a 400 and the connection closed; anything else that is not TLS is
/// closed.
pub(crate) async fn accept(
    mut stream: TcpStream,
    config: Arc<ServerConfig>,
) -> Result<TlsStream<TcpStream>, HandshakeFailure> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) => {}
        _ => return Err(HandshakeFailure::Other),
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if !first[0].is_ascii_uppercase() {
            return Err(HandshakeFailure::Malformed);
        }
        // Read what the client sent first: closing with unread data would
        // reset the connection and lose the answer.
        let mut request = [0u8; 4096];
        let _ = stream.read(&mut request).await;
        let _ = stream.write_all(PLAIN_HTTP_RESPONSE).await;
        let _ = stream.shutdown().await;
        return Err(HandshakeFailure::PlainHttp);
    }
    TlsAcceptor::from(config).accept(stream).await.map_err(|error| HandshakeFailure::of(&error))
}

/// A certificate that is not the DER rustls was promised.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadDer;

/// The subject alternative names of a DER certificate as Go's `x509`
/// prints them: DNS names, e-mail addresses, IP addresses, URIs. Read by
/// `x509-parser`; a certificate it cannot parse, a SAN extension present
/// twice, a name that is not UTF-8 or an IP address of neither 4 nor 16
/// bytes is [`BadDer`].
pub(crate) fn san_values(cert: &[u8]) -> Result<Vec<String>, BadDer> {
    let (_, certificate) = x509_parser::parse_x509_certificate(cert).map_err(|_| BadDer)?;
    let Some(extension) = certificate.subject_alternative_name().map_err(|_| BadDer)? else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for name in &extension.value.general_names {
        match name {
            GeneralName::RFC822Name(text) | GeneralName::DNSName(text) | GeneralName::URI(text) => {
                names.push((*text).to_owned());
            }
            GeneralName::IPAddress(octets) => names.push(match octets.len() {
                4 => Ipv4Addr::from(<[u8; 4]>::try_from(*octets).map_err(|_| BadDer)?).to_string(),
                16 => Ipv6Addr::from(<[u8; 16]>::try_from(*octets).map_err(|_| BadDer)?).to_string(),
                _ => return Err(BadDer),
            }),
            // rfc822Name [1], dNSName [2], uniformResourceIdentifier [6] or
            // iPAddress [7] that x509-parser could not read (not UTF-8).
            GeneralName::Invalid(tag, _) if matches!(tag.0, 1 | 2 | 6 | 7) => return Err(BadDer),
            _ => {}
        }
    }
    Ok(names)
}

/// The subject common name of a DER certificate (`CN=...`, the first one),
/// for the access log; `None` when it has none or `x509-parser` cannot
/// parse the certificate. Control characters are dropped and the name cut
/// at 128 characters.
pub(crate) fn subject_common_name(cert: &[u8]) -> Option<String> {
    let (_, certificate) = x509_parser::parse_x509_certificate(cert).ok()?;
    let common_name = certificate.subject().iter_common_name().next()?;
    let name: String =
        String::from_utf8_lossy(common_name.as_slice()).chars().filter(|c| !c.is_control()).take(128).collect();
    Some(format!("CN={name}"))
}

/// Why a TLS connection did not get to HTTP, as counted in
/// `kernel_exporter_tls_handshake_failures_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// Plain HTTP sent to the TLS port (answered with a 400).
    PlainHttp,
    /// Not TLS, or a broken TLS record.
    Malformed,
    /// The handshake did not finish in time.
    Timeout,
    /// The client sent no certificate where one is required.
    NoClientCertificate,
    /// The client's certificate is expired, from an unknown CA, or unusable.
    BadClientCertificate,
    /// The client's certificate has none of `client_allowed_sans`.
    ClientSanNotAllowed,
    /// No common version, cipher suite, curve or signature scheme.
    Incompatible,
    /// The client aborted with an alert (e.g. it does not trust our certificate).
    ClientAlert,
    /// Connection reset or closed mid-handshake, and anything else.
    Other,
}

impl HandshakeFailure {
    pub(crate) const ALL: [Self; 9] = [
        Self::PlainHttp,
        Self::Malformed,
        Self::Timeout,
        Self::NoClientCertificate,
        Self::BadClientCertificate,
        Self::ClientSanNotAllowed,
        Self::Incompatible,
        Self::ClientAlert,
        Self::Other,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::PlainHttp => "plain_http",
            Self::Malformed => "malformed",
            Self::Timeout => "timeout",
            Self::NoClientCertificate => "no_client_certificate",
            Self::BadClientCertificate => "bad_client_certificate",
            Self::ClientSanNotAllowed => "client_san_not_allowed",
            Self::Incompatible => "incompatible",
            Self::ClientAlert => "client_alert",
            Self::Other => "other",
        }
    }

    /// Classifies the error of a failed `TlsAcceptor::accept`.
    pub(crate) fn of(error: &io::Error) -> Self {
        let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<RustlsError>()) else {
            return Self::Other;
        };
        match tls {
            RustlsError::NoCertificatesPresented => Self::NoClientCertificate,
            RustlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure) => {
                Self::ClientSanNotAllowed
            }
            RustlsError::InvalidCertificate(_) => Self::BadClientCertificate,
            RustlsError::PeerIncompatible(_) => Self::Incompatible,
            RustlsError::AlertReceived(_) => Self::ClientAlert,
            RustlsError::InvalidMessage(_)
            | RustlsError::InappropriateMessage { .. }
            | RustlsError::InappropriateHandshakeMessage { .. }
            | RustlsError::PeerMisbehaved(_) => Self::Malformed,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 -subj /CN=client
    /// -addext "subjectAltName=DNS:prometheus.example,email:ops@example.org,IP:192.0.2.7,IP:2001:db8::1,URI:spiffe://example/prom"`
    #[test]
    fn reads_the_subject_common_name() {
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(CLIENT_CERT.as_bytes())
            .map(|cert: CertificateDer<'static>| cert.to_vec())
            .unwrap();
        assert_eq!(subject_common_name(&der).as_deref(), Some("CN=client"));
        assert_eq!(subject_common_name(b"garbage"), None);
    }

    const CLIENT_CERT: &str = include_str!("../../testdata/client-sans.crt");
    const CLIENT_KEY: &str = include_str!("../../testdata/client-sans.key");

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn settings(extra: &str) -> TlsSettings {
        let text =
            format!("tls_server_config:\n  cert: |\n{}  key: |\n{}{extra}", indent(CLIENT_CERT), indent(CLIENT_KEY));
        crate::front_door::web_config::WebConfig::parse(std::path::Path::new("/x/web.yml"), &text).unwrap().tls.unwrap()
    }

    fn indent(pem: &str) -> String {
        pem.lines().map(|line| format!("    {line}\n")).collect()
    }

    #[test]
    fn reads_every_kind_of_san() {
        assert_eq!(
            san_values(&der(CLIENT_CERT)).unwrap(),
            ["prometheus.example", "ops@example.org", "192.0.2.7", "2001:db8::1", "spiffe://example/prom"]
        );
        assert_eq!(san_values(b"\x30\x03\x02\x01"), Err(BadDer));
        assert_eq!(san_values(b""), Err(BadDer));
        // A DNS name that is not UTF-8 (the signature no longer matters:
        // nothing here checks it).
        let mut bad = der(CLIENT_CERT).to_vec();
        let at = bad.windows(10).position(|w| w == b"prometheus").unwrap();
        bad[at] = 0xff;
        assert_eq!(san_values(&bad), Err(BadDer));
        assert_eq!(subject_common_name(&bad).as_deref(), Some("CN=client"));
    }

    #[test]
    fn allowed_sans_accept_and_deny() {
        let verifier = |allowed: &str| {
            AllowedSans {
                inner: Arc::new(UnverifiedClientCert {
                    mandatory: true,
                    hints: vec![],
                    algorithms: ring::default_provider().signature_verification_algorithms,
                }),
                allowed: vec![allowed.to_owned()],
            }
            .verify_client_cert(&der(CLIENT_CERT), &[], UnixTime::now())
            .map(drop)
        };
        assert!(verifier("192.0.2.7").is_ok());
        assert!(verifier("spiffe://example/prom").is_ok());
        assert_eq!(
            verifier("other.example"),
            Err(RustlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        );
    }

    #[test]
    fn builds_for_every_client_auth_type() {
        let ca = format!("  client_ca: |\n{}", indent(CLIENT_CERT));
        for (auth, ca) in [
            ("NoClientCert", ""),
            ("RequestClientCert", ""),
            ("RequireAnyClientCert", ""),
            ("VerifyClientCertIfGiven", ca.as_str()),
            ("RequireAndVerifyClientCert", ca.as_str()),
        ] {
            let settings = settings(&format!("  client_auth_type: {auth}\n{ca}"));
            let config = server_config(&settings, true).unwrap_or_else(|e| panic!("{auth}: {e}"));
            let verifier = client_verifier(&settings, config.crypto_provider()).unwrap();
            assert_eq!(verifier.offer_client_auth(), auth != "NoClientCert", "{auth}");
            if auth != "NoClientCert" {
                assert_eq!(verifier.client_auth_mandatory(), auth.starts_with("Require"), "{auth}");
            }
            assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        }
    }

    #[test]
    fn versions_suites_and_curves_reach_the_provider() {
        let settings = settings(
            "  min_version: TLS12\n  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n  curve_preferences: [CurveP384]\n",
        );
        let config = server_config(&settings, false).unwrap();
        let provider = config.crypto_provider();
        let suites: Vec<_> = provider.cipher_suites.iter().filter(|s| s.tls13().is_none()).map(|s| s.suite()).collect();
        assert_eq!(suites, [rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]);
        assert_eq!(provider.kx_groups.len(), 1);
        assert_eq!(provider.kx_groups[0].name(), rustls::NamedGroup::secp384r1);
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn bad_material_names_the_key() {
        let mut bad = settings("");
        bad.key = PemSource::Inline("garbage".to_owned());
        let error = server_config(&bad, true).unwrap_err().to_string();
        assert!(error.starts_with("tls_server_config.key: holds no PEM private key"), "{error}");
        let mut missing = settings("");
        missing.cert = PemSource::File("/nonexistent/server.crt".into());
        let error = server_config(&missing, true).unwrap_err().to_string();
        assert!(error.starts_with("tls_server_config.cert_file: cannot read /nonexistent/server.crt"), "{error}");
    }

    #[test]
    fn classifies_handshake_errors() {
        let wrap = |error: RustlsError| io::Error::new(io::ErrorKind::InvalidData, error);
        assert_eq!(
            HandshakeFailure::of(&wrap(RustlsError::NoCertificatesPresented)),
            HandshakeFailure::NoClientCertificate
        );
        assert_eq!(
            HandshakeFailure::of(&wrap(RustlsError::InvalidCertificate(CertificateError::UnknownIssuer))),
            HandshakeFailure::BadClientCertificate
        );
        assert_eq!(
            HandshakeFailure::of(&wrap(RustlsError::PeerIncompatible(
                rustls::PeerIncompatible::NoCipherSuitesInCommon
            ))),
            HandshakeFailure::Incompatible
        );
        assert_eq!(HandshakeFailure::of(&io::Error::from(io::ErrorKind::ConnectionReset)), HandshakeFailure::Other);
    }
}
