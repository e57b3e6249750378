//! The front door's current policy (TLS config, users, extra headers) and
//! how it changes without a restart: on SIGHUP, and when the web config or
//! a PEM file it names changes on disk (polled every [`POLL_INTERVAL`] by
//! inode, size and mtime, which also catches the symlink swaps of
//! Kubernetes secrets).
//!
//! A reload builds a whole new [`Policy`] off the async workers and swaps it
//! in; connections already open keep the TLS config they started with, but
//! their requests are checked against the allowlist in force. The new
//! allowlist is built and checked in the kernel's spare trie, and the
//! filter switches to it in one write just after the swap, so a source
//! allowed by both policies is never refused. A reload that fails keeps the
//! old policy serving, in the daemon and in the kernel alike, logs one line
//! and sets `kernel_exporter_config_last_reload_successful` to 0.

use std::{
    fmt,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use hyper::header::{HeaderName, HeaderValue};
use rustls::ServerConfig;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

use crate::{
    front_door::allowlist::{AllowlistError, Trie},
    front_door::auth::{Users, UsersError},
    front_door::listener::ListenAddress,
    front_door::metrics::FrontDoorMetrics,
    front_door::tls::{self, TlsError},
    front_door::web_config::{Cidr, ConfigError, RateLimit, WebConfig},
};

/// How often the watched files are looked at.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What the front door enforces, as one unit that is swapped whole.
pub(crate) struct Policy {
    /// `None`: plain HTTP.
    pub(crate) tls: Option<Arc<ServerConfig>>,
    /// [`tls::client_policy`] of the TLS settings; `None`: plain HTTP.
    client_policy: Option<[u8; 32]>,
    /// `None`: no basic auth.
    pub(crate) users: Option<Arc<Users>>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// `allowed_sources` or `--web.allow-from`; `None`: every source.
    allowed_sources: Option<Vec<Cidr>>,
    /// The config it came from; `None` without `--web.config.file`.
    config: Option<WebConfig>,
}

impl fmt::Display for Policy {
    /// One line for logs and `check-config`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.config.as_ref().and_then(|config| config.tls.as_ref().map(|tls| (config, tls))) {
            Some((config, tls)) => write!(
                f,
                "TLS on ({}..{}, client_auth_type {}{}{})",
                tls.min_version,
                tls.max_version,
                tls.client_auth,
                if tls.client_allowed_sans.is_some() { ", client_allowed_sans" } else { "" },
                if config.http2 { ", HTTP/2 by ALPN" } else { "" },
            )?,
            None => f.write_str("TLS off")?,
        }
        match &self.users {
            Some(users) => write!(f, ", basic auth for {} user(s)", users.len())?,
            None => f.write_str(", no basic auth")?,
        }
        if let Some(config) = &self.config {
            if !config.headers.is_empty() {
                write!(f, ", {} extra header(s)", config.headers.len())?;
            }
        }
        match &self.allowed_sources {
            Some(sources) => write!(f, ", {} allowed source range(s)", sources.len()),
            None => f.write_str(", every source allowed"),
        }
    }
}

/// A web config that cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PolicyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("web config {}: {source}", path.display())]
    Tls { path: PathBuf, source: TlsError },
    #[error(
        "web config {}: it turns TLS {}, which needs a restart; still serving the previous configuration",
        path.display(), if *now_on { "on" } else { "off" }
    )]
    TlsToggled { path: PathBuf, now_on: bool },
    #[error(transparent)]
    Exposed(#[from] ExposedError),
    #[error(
        "web config {}: allowed_sources and --web.allow-from are both given; keep the ranges in one place \
         (--web.allow-from is for running without allowed_sources)",
        path.display()
    )]
    AllowlistTwice { path: PathBuf },
    #[error(transparent)]
    Allowlist(#[from] AllowlistError),
    #[error("web config {}: {source}", path.display())]
    Users { path: PathBuf, source: UsersError },
}

/// Listening beyond loopback with neither TLS nor basic auth.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to serve {address} without TLS or basic auth: anyone who can reach that address could read this \
     host's kernel statistics (process, disk and network activity) in the clear. Configure tls_server_config \
     and/or basic_auth_users in --web.config.file, listen on 127.0.0.1 only, or pass --web.allow-insecure to \
     accept the risk"
)]
pub(crate) struct ExposedError {
    address: ListenAddress,
}

/// Where the exporter listens, and whether the operator accepted plain,
/// unauthenticated access beyond loopback.
#[derive(Clone, Debug)]
pub(crate) struct Exposure {
    pub(crate) listen_addresses: Vec<ListenAddress>,
    pub(crate) allow_insecure: bool,
}

impl Exposure {
    fn check(&self, policy: &Policy) -> Result<(), ExposedError> {
        if self.allow_insecure || policy.tls.is_some() || policy.users.is_some() {
            return Ok(());
        }
        match self.listen_addresses.iter().find(|address| address.dual_stack || !address.addr.ip().is_loopback()) {
            Some(&address) => Err(ExposedError { address }),
            None => Ok(()),
        }
    }
}

impl Policy {
    /// No web config: plain HTTP, no auth.
    fn open() -> Self {
        Self { tls: None, client_policy: None, users: None, headers: Vec::new(), allowed_sources: None, config: None }
    }

    /// Reads and validates `path` and everything it names. Slow (file
    /// reads, one bcrypt hash): not for the async workers.
    pub(crate) fn load(path: &Path) -> Result<Self, PolicyError> {
        let config = WebConfig::load(path)?;
        let tls = config
            .tls
            .as_ref()
            .map(|settings| tls::server_config(settings, config.http2))
            .transpose()
            .map_err(|source| PolicyError::Tls { path: path.to_owned(), source })?;
        let client_policy = config
            .tls
            .as_ref()
            .map(tls::client_policy)
            .transpose()
            .map_err(|source| PolicyError::Tls { path: path.to_owned(), source })?;
        let users = Users::new(&config.users)
            .map_err(|source| PolicyError::Users { path: path.to_owned(), source })?
            .map(Arc::new);
        Ok(Self {
            tls,
            client_policy,
            users,
            headers: config.headers.clone(),
            allowed_sources: config.allowed_sources.clone(),
            config: Some(config),
        })
    }

    /// Adds `--web.allow-from`'s ranges, which a config with its own
    /// `allowed_sources` must not be combined with.
    fn with_allow_from(mut self, allow_from: Option<&[Cidr]>) -> Result<Self, PolicyError> {
        let Some(allow_from) = allow_from else { return Ok(self) };
        if self.allowed_sources.is_some() {
            let path = self.config.as_ref().map(|config| config.path.clone()).unwrap_or_default();
            return Err(PolicyError::AllowlistTwice { path });
        }
        self.allowed_sources = Some(allow_from.to_vec());
        Ok(self)
    }

    /// Whether requests from `source` are served (the kernel filter drops
    /// its new connections already; this closes the ones opened before the
    /// source was removed).
    pub(crate) fn allows(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.allowed_sources.as_ref().is_none_or(|sources| sources.iter().any(|cidr| cidr.contains(source)))
    }

    /// The web config's `rate_limit`; `None`: no limit.
    pub(crate) fn rate_limit(&self) -> Option<RateLimit> {
        self.config.as_ref().and_then(|config| config.rate_limit)
    }

    /// `None`: every source is allowed.
    pub(crate) fn allowed_sources(&self) -> Option<&[Cidr]> {
        self.allowed_sources.as_deref()
    }

    /// What the config could not honour exactly.
    pub(crate) fn warnings(&self) -> &[String] {
        self.config.as_ref().map_or(&[], |config| &config.warnings)
    }

    fn watched_files(&self) -> Vec<PathBuf> {
        self.config.as_ref().map(WebConfig::watched_files).unwrap_or_default()
    }
}

/// The policy in force, shared by the accept loops and the request handler.
pub(crate) struct FrontDoor {
    path: Option<PathBuf>,
    exposure: Exposure,
    /// `--web.allow-from`.
    allow_from: Option<Vec<Cidr>>,
    current: RwLock<Arc<Policy>>,
    /// The kernel's allowlist, once loaded; kept equal to the policy's.
    trie: OnceLock<Trie>,
    /// Tells open connections that the policy changed, so those from a
    /// source it no longer allows close.
    changed: tokio::sync::watch::Sender<()>,
    /// Tells open TLS connections that a reload changed which clients may
    /// connect, so they close after their requests in flight.
    clients_changed: tokio::sync::watch::Sender<()>,
}

impl FrontDoor {
    /// The start-up policy: from `path` if given, and only if it does not
    /// expose the host (see [`Exposure`]).
    pub(crate) fn new(
        path: Option<&Path>,
        allow_from: Option<Vec<Cidr>>,
        exposure: Exposure,
    ) -> Result<Self, PolicyError> {
        let policy = match path {
            Some(path) => Policy::load(path)?,
            None => Policy::open(),
        }
        .with_allow_from(allow_from.as_deref())?;
        exposure.check(&policy)?;
        Ok(Self {
            path: path.map(Path::to_owned),
            exposure,
            allow_from,
            current: RwLock::new(Arc::new(policy)),
            trie: OnceLock::new(),
            changed: tokio::sync::watch::Sender::new(()),
            clients_changed: tokio::sync::watch::Sender::new(()),
        })
    }

    /// Resolves once a policy that does not allow `source` is in force
    /// (at once if it is already). The kernel filter, inherited by accepted
    /// sockets, drops such a source's packets from that moment, so its
    /// requests would never arrive: its connections are closed from this
    /// side instead.
    pub(crate) async fn revoked(&self, source: IpAddr) {
        let mut changed = self.changed.subscribe();
        loop {
            if !self.current().allows(source) {
                return;
            }
            if changed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Fills the kernel's allowlist from the policy in force, and keeps it
    /// in step with every reload from now on.
    pub(crate) fn enforce(&self, trie: Trie) -> Result<(), AllowlistError> {
        let policy = self.current();
        trie.replace(policy.allowed_sources(), || {}, || {})?;
        // Only `run` calls this, once.
        let _ = self.trie.set(trie);
        Ok(())
    }

    /// Ranges in the kernel's allowlist trie in force (`None` before
    /// [`Self::enforce`]).
    fn allowlist_in_force(&self) -> Option<usize> {
        self.trie.get().map(Trie::in_force)
    }

    /// Resolves at the next reload that changes which clients may complete
    /// a TLS handshake (client CA, `client_auth_type`, `client_allowed_sans`,
    /// TLS versions); a connection calls this before it takes the TLS
    /// config it is served with. A reload that only rotates the server
    /// certificate never resolves it.
    pub(crate) fn clients_changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut changed = self.clients_changed.subscribe();
        async move {
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    pub(crate) fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the web config; the new policy replaces the old one only if
    /// all of it is usable.
    fn reload(&self, path: &Path) -> Result<Arc<Policy>, PolicyError> {
        let policy = Policy::load(path)?.with_allow_from(self.allow_from.as_deref())?;
        let old = self.current();
        if policy.tls.is_some() != old.tls.is_some() {
            return Err(PolicyError::TlsToggled { path: path.to_owned(), now_on: policy.tls.is_some() });
        }
        self.exposure.check(&policy)?;
        let policy = Arc::new(policy);
        // Runs once the new allowlist is ready in the kernel, just before
        // the filter switches to it: connections of removed sources are
        // told (and close) while their packets still get through, so none
        // is left closing towards a peer whose answers are dropped. If the
        // switch fails, the old policy goes back: both sides stay as they
        // were.
        let revokes = policy.client_policy != old.client_policy;
        let swap = || {
            *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&policy);
            self.changed.send_replace(());
            if revokes {
                self.clients_changed.send_replace(());
            }
        };
        let undo = || *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&old);
        match self.trie.get() {
            Some(trie) => trie.replace(policy.allowed_sources(), swap, undo)?,
            None => swap(),
        }
        Ok(policy)
    }
}

/// SIGHUP's handler, installed at start-up so a SIGHUP never kills the
/// process (its default action).
pub(crate) fn hangup_signal() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

/// Reloads on SIGHUP and on file changes, until the task is aborted.
pub(crate) async fn watch(front_door: Arc<FrontDoor>, metrics: FrontDoorMetrics, mut hangup: Signal) {
    metrics.reload_succeeded(unix_now());
    let Some(path) = front_door.path.clone() else {
        while hangup.recv().await.is_some() {
            info!("received SIGHUP; there is no --web.config.file to reload");
        }
        return;
    };
    let mut seen = fingerprints(&front_door.current().watched_files());
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            _ = hangup.recv() => "SIGHUP",
            _ = tick.tick() => {
                if fingerprints(&front_door.current().watched_files()) == seen {
                    continue;
                }
                "file change"
            }
        };
        // Taken before reading, so a write during the reload triggers
        // another one.
        seen = fingerprints(&front_door.current().watched_files());
        let door = Arc::clone(&front_door);
        let reload_path = path.clone();
        let result = tokio::task::spawn_blocking(move || door.reload(&reload_path)).await;
        match result {
            Ok(Ok(policy)) => {
                metrics.reload_succeeded(unix_now());
                for warning in policy.warnings() {
                    warn!("{warning}");
                }
                info!(trigger, "reloaded web config {}: {policy}", path.display());
                // The new policy may name other files.
                seen = fingerprints(&policy.watched_files());
            }
            Ok(Err(error)) => {
                metrics.reload_failed();
                match front_door.allowlist_in_force() {
                    Some(ranges) => warn!(
                        trigger,
                        "cannot reload: {error}; still serving the previous configuration \
                         ({ranges} allowlist range(s) in the kernel)"
                    ),
                    None => warn!(trigger, "cannot reload: {error}; still serving the previous configuration"),
                }
            }
            Err(join) => {
                metrics.reload_failed();
                warn!(trigger, "web config reload did not finish: {join}");
            }
        }
    }
}

/// (device, inode, size, mtime) of each file; `None` where it cannot be
/// read, so a file that disappears and comes back counts as a change.
type Fingerprint = Option<(u64, u64, u64, i64, i64)>;

fn fingerprints(files: &[PathBuf]) -> Vec<Fingerprint> {
    files
        .iter()
        .map(|file| {
            std::fs::metadata(file)
                .ok()
                .map(|meta| (meta.dev(), meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec()))
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn exposure(addresses: &[&str], allow_insecure: bool) -> Exposure {
        Exposure {
            listen_addresses: addresses
                .iter()
                .map(|a| match a.strip_prefix(':') {
                    Some(port) => ListenAddress {
                        addr: std::net::SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port.parse().unwrap()),
                        dual_stack: true,
                    },
                    None => ListenAddress { addr: a.parse().unwrap(), dual_stack: false },
                })
                .collect(),
            allow_insecure,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kernel-exporter-reload-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loopback_needs_nothing_and_the_rest_needs_protection() {
        assert!(FrontDoor::new(None, None, exposure(&["127.0.0.1:1", "[::1]:2"], false)).is_ok());
        let error =
            FrontDoor::new(None, None, exposure(&["127.0.0.1:1", "0.0.0.0:2"], false)).err().unwrap().to_string();
        assert!(error.starts_with("refusing to serve 0.0.0.0:2 without TLS or basic auth"), "{error}");
        assert!(error.contains("--web.allow-insecure"), "{error}");
        let error = FrontDoor::new(None, None, exposure(&[":9569"], false)).err().unwrap().to_string();
        assert!(error.starts_with("refusing to serve :9569"), "{error}");
        assert!(FrontDoor::new(None, None, exposure(&[":9569"], true)).is_ok());

        let dir = temp_dir("exposure");
        let config = dir.join("web.yml");
        let hash = bcrypt::hash("pw", 4).unwrap();
        fs::write(&config, format!("basic_auth_users:\n  prometheus: {hash}\n")).unwrap();
        assert!(FrontDoor::new(Some(&config), None, exposure(&["0.0.0.0:2"], false)).is_ok());
    }

    #[test]
    fn a_failed_reload_keeps_the_old_policy() {
        let dir = temp_dir("keep");
        let config = dir.join("web.yml");
        let hash = bcrypt::hash("pw", 4).unwrap();
        fs::write(&config, format!("basic_auth_users:\n  prometheus: {hash}\n")).unwrap();
        let door = FrontDoor::new(Some(&config), None, exposure(&["0.0.0.0:2"], false)).unwrap();
        let before = door.current();

        fs::write(&config, "basic_auth_users:\n  prometheus: plaintext\n").unwrap();
        let error = door.reload(&config).err().unwrap().to_string();
        assert!(error.contains("basic_auth_users.prometheus: is not a bcrypt hash"), "{error}");
        assert!(Arc::ptr_eq(&before, &door.current()));

        // Dropping every user would expose the host: refused as well.
        fs::write(&config, "").unwrap();
        let error = door.reload(&config).err().unwrap().to_string();
        assert!(error.starts_with("refusing to serve 0.0.0.0:2"), "{error}");
        assert!(Arc::ptr_eq(&before, &door.current()));

        fs::write(&config, format!("basic_auth_users:\n  prometheus: {hash}\n  grafana: {hash}\n")).unwrap();
        let after = door.reload(&config).unwrap();
        assert_eq!(after.users.as_ref().unwrap().len(), 2);
        assert!(Arc::ptr_eq(&after, &door.current()));
    }

    #[test]
    fn allow_from_and_allowed_sources_do_not_mix() {
        let loopback = || exposure(&["127.0.0.1:1"], false);
        let from: Vec<Cidr> = vec!["127.0.0.1".parse().unwrap()];
        let door = FrontDoor::new(None, Some(from.clone()), loopback()).unwrap();
        let policy = door.current();
        assert!(policy.allows("127.0.0.1".parse().unwrap()));
        assert!(policy.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!policy.allows("127.0.0.2".parse().unwrap()));

        let dir = temp_dir("allow-from");
        let config = dir.join("web.yml");
        fs::write(&config, "allowed_sources: [127.0.0.0/8]\n").unwrap();
        let error = FrontDoor::new(Some(&config), Some(from.clone()), loopback()).err().unwrap().to_string();
        assert!(error.contains("allowed_sources and --web.allow-from are both given"), "{error}");
        // A file without the key is fine, until a reload adds it.
        fs::write(&config, "").unwrap();
        let door = FrontDoor::new(Some(&config), Some(from), loopback()).unwrap();
        fs::write(&config, "allowed_sources: [127.0.0.0/8]\n").unwrap();
        assert!(matches!(door.reload(&config), Err(PolicyError::AllowlistTwice { .. })));
        assert!(!door.current().allows("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn fingerprints_see_rewrites_and_removals() {
        let dir = temp_dir("fingerprints");
        let file = dir.join("a.pem");
        fs::write(&file, "one").unwrap();
        let first = fingerprints(std::slice::from_ref(&file));
        fs::write(&file, "two!").unwrap();
        assert_ne!(fingerprints(std::slice::from_ref(&file)), first);
        fs::remove_file(&file).unwrap();
        assert_eq!(fingerprints(std::slice::from_ref(&file)), [None]);
    }
}
