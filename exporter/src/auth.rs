//! HTTP basic auth against the web config's bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), so:
//! - results are cached, keyed by a SHA-256 of user, password and stored
//!   hash (no plaintext is kept), in a bounded cache scanned in constant
//!   time, so Prometheus's scrape every few seconds costs a hash, not a
//!   bcrypt;
//! - bcrypt runs on tokio's blocking pool, at most [`Authenticator::new`]'s
//!   `parallel` at once and [`MAX_PENDING`] waiting, so a flood of wrong
//!   passwords cannot take the async workers (or every core) from scrapes;
//!   over the bound the request gets 429 without any bcrypt;
//! - user names are compared with `subtle`, and an unknown user is checked
//!   against a dummy hash of the same cost, so the answer's timing does not
//!   say whether a user exists.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use base64::Engine as _;
use hyper::header::HeaderValue;
use subtle::{Choice, ConditionallySelectable as _, ConstantTimeEq as _};
use tokio::sync::Semaphore;

/// Entries in the result cache: a few Prometheus servers and users, with
/// room to spare; wrong passwords push out the oldest entries.
const CACHE_ENTRIES: usize = 256;

/// bcrypt checks allowed to wait for a slot; more get 429 at once.
const MAX_PENDING: usize = 32;

/// The `realm` of the 401 challenge.
pub(crate) const CHALLENGE: &str = "Basic realm=\"kernel-exporter\"";

/// The configured users, ready to check against.
pub(crate) struct Users {
    /// (name, bcrypt hash), in the config's order.
    entries: Vec<(Vec<u8>, String)>,
    /// A hash of a random password at the highest cost in use: what an
    /// unknown user's password is checked against.
    dummy: String,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes stay out of logs.
        f.debug_struct("Users").field("count", &self.entries.len()).finish()
    }
}

impl Users {
    /// Takes the validated `basic_auth_users`; `None` when there are none.
    /// Costs one bcrypt hash (the dummy), so call it off the async workers.
    pub(crate) fn new<'a>(users: impl IntoIterator<Item = (&'a String, &'a String)>) -> Option<Self> {
        let entries: Vec<(Vec<u8>, String)> =
            users.into_iter().map(|(name, hash)| (name.as_bytes().to_vec(), hash.clone())).collect();
        let cost = entries
            .iter()
            .filter_map(|(_, hash)| hash.parse::<bcrypt::HashParts>().ok())
            .map(|parts| parts.get_cost())
            .max()?;
        let mut secret = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).ok()?;
        let dummy = bcrypt::hash(secret, cost).ok()?;
        Some(Self { entries, dummy })
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The stored hash for `name` (the dummy if there is none) and whether
    /// the user exists, without an early exit on the first match.
    fn lookup(&self, name: &[u8]) -> (&str, Choice) {
        let mut found = Choice::from(0);
        let mut index = 0u32;
        for (i, (known, _)) in self.entries.iter().enumerate() {
            let matches = known.as_slice().ct_eq(name);
            index.conditional_assign(&(i as u32), matches);
            found |= matches;
        }
        let hash = if bool::from(found) { &self.entries[index as usize].1 } else { &self.dummy };
        (hash, found)
    }
}

/// Why a request was refused, as counted in
/// `kernel_exporter_auth_failures_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthFailure {
    /// No `Authorization` header.
    MissingCredentials,
    /// Not `Basic base64(user:password)`.
    Malformed,
    UnknownUser,
    WrongPassword,
    /// Too many bcrypt checks waiting (answered with 429).
    Overloaded,
}

impl AuthFailure {
    pub(crate) const ALL: [Self; 5] =
        [Self::MissingCredentials, Self::Malformed, Self::UnknownUser, Self::WrongPassword, Self::Overloaded];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing_credentials",
            Self::Malformed => "malformed",
            Self::UnknownUser => "unknown_user",
            Self::WrongPassword => "wrong_password",
            Self::Overloaded => "overloaded",
        }
    }
}

/// Checks credentials; shared by every connection, across config reloads
/// (cache entries include the stored hash, so a changed password or user
/// list cannot hit an old entry).
pub(crate) struct Authenticator {
    cache: Mutex<Cache>,
    running: Arc<Semaphore>,
    pending: Semaphore,
}

struct Cache {
    entries: Vec<([u8; 32], bool)>,
    /// The slot the next insertion overwrites once the cache is full.
    next: usize,
}

impl Cache {
    /// Every entry is compared, matched or not.
    fn get(&self, key: &[u8; 32]) -> Option<bool> {
        let mut hit = Choice::from(0);
        let mut ok = Choice::from(0);
        for (entry, entry_ok) in &self.entries {
            let matches = entry.ct_eq(key);
            hit |= matches;
            ok.conditional_assign(&Choice::from(u8::from(*entry_ok)), matches);
        }
        bool::from(hit).then(|| bool::from(ok))
    }

    fn insert(&mut self, key: [u8; 32], ok: bool) {
        if self.entries.len() < CACHE_ENTRIES {
            self.entries.push((key, ok));
        } else {
            self.entries[self.next] = (key, ok);
            self.next = (self.next + 1) % CACHE_ENTRIES;
        }
    }
}

impl Authenticator {
    /// `parallel`: bcrypt checks running at once.
    pub(crate) fn new(parallel: usize) -> Self {
        Self {
            cache: Mutex::new(Cache { entries: Vec::with_capacity(CACHE_ENTRIES), next: 0 }),
            running: Arc::new(Semaphore::new(parallel.max(1))),
            pending: Semaphore::new(MAX_PENDING),
        }
    }

    /// Half the cores, at least one: the other half stays for scrapes.
    pub(crate) fn for_this_host() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get() / 2))
    }

    /// Whether `authorization` carries the password of one of `users`.
    pub(crate) async fn check(&self, users: &Users, authorization: Option<&HeaderValue>) -> Result<(), AuthFailure> {
        let header = authorization.ok_or(AuthFailure::MissingCredentials)?;
        let (user, password) = parse_basic(header.as_bytes()).ok_or(AuthFailure::Malformed)?;
        let (hash, found) = users.lookup(&user);
        let key = cache_key(&user, &password, hash);

        let cached = self.cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key);
        let verified = match cached {
            Some(ok) => ok,
            None => {
                let _waiting = self.pending.try_acquire().map_err(|_| AuthFailure::Overloaded)?;
                // The semaphore is never closed.
                let slot = Arc::clone(&self.running).acquire_owned().await.map_err(|_| AuthFailure::Overloaded)?;
                let hash = hash.to_owned();
                let ok = tokio::task::spawn_blocking(move || {
                    let _slot = slot;
                    bcrypt::verify(&password, &hash).unwrap_or(false)
                })
                .await
                .unwrap_or(false);
                // An unknown user never passes, whatever the dummy says.
                let ok = ok && bool::from(found);
                self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(key, ok);
                ok
            }
        };
        match (verified, bool::from(found)) {
            (true, true) => Ok(()),
            (_, false) => Err(AuthFailure::UnknownUser),
            (false, true) => Err(AuthFailure::WrongPassword),
        }
    }
}

/// `Basic base64(user:password)`; the scheme is case-insensitive.
/// The user name an `Authorization: Basic` header claims, for the access
/// log (printable, at most 64 characters); the password is never kept.
pub(crate) fn claimed_user(authorization: Option<&HeaderValue>) -> Option<String> {
    let (user, _) = parse_basic(authorization?.as_bytes())?;
    let user: String = String::from_utf8_lossy(&user).chars().filter(|c| !c.is_control()).take(64).collect();
    (!user.is_empty()).then_some(user)
}

fn parse_basic(header: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

fn cache_key(user: &[u8], password: &[u8], hash: &str) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    // Length prefixes keep ("a:b", "c") and ("a", "b:c") apart.
    for part in [user, password, hash.as_bytes()] {
        context.update(&(part.len() as u64).to_le_bytes());
        context.update(part);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn users(list: &[(&str, &str)]) -> Users {
        let owned: Vec<(String, String)> =
            list.iter().map(|(user, password)| ((*user).to_owned(), bcrypt::hash(password, 4).unwrap())).collect();
        Users::new(owned.iter().map(|(u, h)| (u, h))).unwrap()
    }

    fn basic(user: &str, password: &str) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    #[test]
    fn parses_basic_headers() {
        assert_eq!(parse_basic(b"Basic YTpiOmM="), Some((b"a".to_vec(), b"b:c".to_vec())));
        assert_eq!(parse_basic(b"basic  YTo= "), Some((b"a".to_vec(), b"".to_vec())));
        assert_eq!(parse_basic(b"Bearer YTpi"), None);
        assert_eq!(parse_basic(b"Basic !!!"), None);
        assert_eq!(parse_basic(b"Basic YWJj"), None, "no colon");
    }

    #[tokio::test]
    async fn accepts_the_right_password_only() {
        let users = users(&[("alice", "s3cret"), ("bob", "hunter2")]);
        let auth = Authenticator::new(1);
        assert_eq!(auth.check(&users, Some(&basic("alice", "s3cret"))).await, Ok(()));
        assert_eq!(auth.check(&users, Some(&basic("bob", "hunter2"))).await, Ok(()));
        assert_eq!(auth.check(&users, Some(&basic("bob", "s3cret"))).await, Err(AuthFailure::WrongPassword));
        assert_eq!(auth.check(&users, Some(&basic("carol", "s3cret"))).await, Err(AuthFailure::UnknownUser));
        assert_eq!(auth.check(&users, None).await, Err(AuthFailure::MissingCredentials));
        let bearer = HeaderValue::from_static("Bearer x");
        assert_eq!(auth.check(&users, Some(&bearer)).await, Err(AuthFailure::Malformed));
        // Cached answers are the same answers.
        assert_eq!(auth.check(&users, Some(&basic("alice", "s3cret"))).await, Ok(()));
        assert_eq!(auth.check(&users, Some(&basic("bob", "s3cret"))).await, Err(AuthFailure::WrongPassword));
    }

    #[tokio::test]
    async fn the_cache_skips_bcrypt() {
        let owned = [("alice".to_owned(), bcrypt::hash("pw", 10).unwrap())];
        let users = Users::new(owned.iter().map(|(u, h)| (u, h))).unwrap();
        let auth = Authenticator::new(1);
        let header = basic("alice", "pw");
        let started = Instant::now();
        auth.check(&users, Some(&header)).await.unwrap();
        let first = started.elapsed();
        let started = Instant::now();
        auth.check(&users, Some(&header)).await.unwrap();
        let second = started.elapsed();
        assert!(second * 20 < first, "first {first:?}, cached {second:?}");
    }

    #[tokio::test]
    async fn unknown_users_cost_a_bcrypt_of_the_same_cost() {
        let owned = [("alice".to_owned(), bcrypt::hash("pw", 8).unwrap())];
        let users = Users::new(owned.iter().map(|(u, h)| (u, h))).unwrap();
        assert_eq!(users.dummy.parse::<bcrypt::HashParts>().unwrap().get_cost(), 8);
        let auth = Authenticator::new(1);
        let time = |user: &'static str| {
            let auth = &auth;
            let users = &users;
            async move {
                let started = Instant::now();
                let _ = auth.check(users, Some(&basic(user, "wrong"))).await;
                started.elapsed()
            }
        };
        let known = time("alice").await;
        let unknown = time("mallory").await;
        let ratio = unknown.as_secs_f64() / known.as_secs_f64();
        assert!((0.5..2.0).contains(&ratio), "known {known:?}, unknown {unknown:?}");
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = Cache { entries: Vec::new(), next: 0 };
        for i in 0..CACHE_ENTRIES + 10 {
            cache.insert(cache_key(b"u", i.to_string().as_bytes(), "h"), i % 2 == 0);
        }
        assert_eq!(cache.entries.len(), CACHE_ENTRIES);
        assert_eq!(cache.get(&cache_key(b"u", b"0", "h")), None, "oldest evicted");
        assert_eq!(cache.get(&cache_key(b"u", b"20", "h")), Some(true));
        assert_eq!(cache.get(&cache_key(b"u", b"21", "h")), Some(false));
        assert_ne!(cache_key(b"a:b", b"c", "h"), cache_key(b"a", b"b:c", "h"));
    }

    #[tokio::test]
    async fn overload_is_refused_without_bcrypt() {
        let users = users(&[("alice", "pw")]);
        let auth = Authenticator::new(1);
        let _all = auth.pending.try_acquire_many(MAX_PENDING as u32).unwrap();
        assert_eq!(auth.check(&users, Some(&basic("alice", "nope"))).await, Err(AuthFailure::Overloaded));
    }
}
