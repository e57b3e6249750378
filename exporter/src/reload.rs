//! The front door's current policy (TLS config, users, extra headers) and
//! how it changes without a restart: on SIGHUP, and when the web config or
//! a PEM file it names changes on disk (polled every [`POLL_INTERVAL`] by
//! inode, size and mtime, which also catches the symlink swaps of
//! Kubernetes secrets).
//!
//! A reload builds a whole new [`Policy`] off the async workers and swaps it
//! in; connections already open keep the TLS config they started with. A
//! reload that fails keeps the old policy serving, logs one line and sets
//! `kernel_exporter_config_last_reload_successful` to 0.

use std::{
    fmt,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime},
};

use hyper::header::{HeaderName, HeaderValue};
use rustls::ServerConfig;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

use crate::{
    auth::Users,
    cli::ListenAddress,
    self_metrics::FrontDoorMetrics,
    tls::{self, TlsError},
    web_config::{ConfigError, WebConfig},
};

/// How often the watched files are looked at.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// What the front door enforces, as one unit that is swapped whole.
pub(crate) struct Policy {
    /// `None`: plain HTTP.
    pub(crate) tls: Option<Arc<ServerConfig>>,
    /// `None`: no basic auth.
    pub(crate) users: Option<Arc<Users>>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
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
            if !config.allowed_sources.is_empty() {
                write!(f, ", {} allowed source range(s)", config.allowed_sources.len())?;
            }
        }
        Ok(())
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
        Self { tls: None, users: None, headers: Vec::new(), config: None }
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
        let users = Users::new(&config.users).map(Arc::new);
        Ok(Self { tls, users, headers: config.headers.clone(), config: Some(config) })
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
    current: RwLock<Arc<Policy>>,
}

impl FrontDoor {
    /// The start-up policy: from `path` if given, and only if it does not
    /// expose the host (see [`Exposure`]).
    pub(crate) fn new(path: Option<&Path>, exposure: Exposure) -> Result<Self, PolicyError> {
        let policy = match path {
            Some(path) => Policy::load(path)?,
            None => Policy::open(),
        };
        exposure.check(&policy)?;
        Ok(Self { path: path.map(Path::to_owned), exposure, current: RwLock::new(Arc::new(policy)) })
    }

    pub(crate) fn current(&self) -> Arc<Policy> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Re-reads the web config; the new policy replaces the old one only if
    /// all of it is usable.
    fn reload(&self, path: &Path) -> Result<Arc<Policy>, PolicyError> {
        let policy = Policy::load(path)?;
        let old = self.current();
        if policy.tls.is_some() != old.tls.is_some() {
            return Err(PolicyError::TlsToggled { path: path.to_owned(), now_on: policy.tls.is_some() });
        }
        self.exposure.check(&policy)?;
        let policy = Arc::new(policy);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&policy);
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
                warn!(trigger, "cannot reload: {error}; still serving the previous configuration");
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
        assert!(FrontDoor::new(None, exposure(&["127.0.0.1:1", "[::1]:2"], false)).is_ok());
        let error = FrontDoor::new(None, exposure(&["127.0.0.1:1", "0.0.0.0:2"], false)).err().unwrap().to_string();
        assert!(error.starts_with("refusing to serve 0.0.0.0:2 without TLS or basic auth"), "{error}");
        assert!(error.contains("--web.allow-insecure"), "{error}");
        let error = FrontDoor::new(None, exposure(&[":9569"], false)).err().unwrap().to_string();
        assert!(error.starts_with("refusing to serve :9569"), "{error}");
        assert!(FrontDoor::new(None, exposure(&[":9569"], true)).is_ok());

        let dir = temp_dir("exposure");
        let config = dir.join("web.yml");
        let hash = bcrypt::hash("pw", 4).unwrap();
        fs::write(&config, format!("basic_auth_users:\n  prometheus: {hash}\n")).unwrap();
        assert!(FrontDoor::new(Some(&config), exposure(&["0.0.0.0:2"], false)).is_ok());
    }

    #[test]
    fn a_failed_reload_keeps_the_old_policy() {
        let dir = temp_dir("keep");
        let config = dir.join("web.yml");
        let hash = bcrypt::hash("pw", 4).unwrap();
        fs::write(&config, format!("basic_auth_users:\n  prometheus: {hash}\n")).unwrap();
        let door = FrontDoor::new(Some(&config), exposure(&["0.0.0.0:2"], false)).unwrap();
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
