//! HTTP basic auth against the web config's bcrypt hashes.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), so:
//! - results are cached, keyed by a SHA-256 of user, password and stored
//!   hash (no plaintext is kept), in bounded caches scanned in constant
//!   time, so Prometheus's scrape every few seconds costs a hash, not a
//!   bcrypt. Passed and failed credentials are cached apart: only someone
//!   who knows a password can add a passed entry, so a flood of wrong
//!   passwords cannot push the scraper's entry out and make it pay (or
//!   queue behind the flood for) a bcrypt;
//! - requests with the same credentials as a check under way wait for its
//!   answer instead of running their own: a burst of one wrong password
//!   costs one bcrypt;
//! - bcrypt runs on its own threads, [`Authenticator::new`]'s `parallel` of
//!   them, in `SCHED_IDLE` (only on CPU time nothing else wants), with at
//!   most [`MAX_PENDING`] distinct checks queued or running, and within a
//!   CPU budget ([`BCRYPT_CPU_PER_SECOND`], bursts of [`BCRYPT_CPU_BURST`]):
//!   a flood of distinct wrong passwords cannot take the async workers from
//!   scrapes, and costs the host a tenth of a core however long it lasts;
//!   beyond either bound the request gets 429 without any bcrypt. A check,
//!   once started, finishes and is cached even if its client goes away;
//! - user names are compared with `subtle`; a known user's password is
//!   checked against the user's own hash, an unknown user's against a
//!   dummy hash of the most common cost among the users, so the answer's
//!   timing does not say whether a user exists (unless that user's own
//!   hash has an unusual cost).

use super::auth_workers::{Job, Workers};
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use base64::Engine as _;
use hyper::header::HeaderValue;
use subtle::{Choice, ConditionallySelectable as _, ConstantTimeEq as _};
use tokio::sync::{Semaphore, watch};

/// Credentials that passed, remembered: a few Prometheus servers and users,
/// with room to spare (and for old passwords during a rotation).
const PASSED_ENTRIES: usize = 64;

/// Credentials that failed, remembered so a client retrying the same wrong
/// password costs no bcrypt; a flood of distinct ones pushes out the oldest.
const FAILED_ENTRIES: usize = 256;

/// Distinct bcrypt checks queued or running; more get 429 at once. A queued
/// check waits for at most this many bcrypts (about half a second at cost 10
/// on one core).
const MAX_PENDING: usize = 8;

/// CPU seconds bcrypt may use per second, all its threads together: once
/// spent, new checks get 429 until it refills, so a flood of distinct wrong
/// passwords, however long, costs the host a tenth of a core.
const BCRYPT_CPU_PER_SECOND: f64 = 0.1;

/// CPU seconds bcrypt may spend at once after a quiet spell: about 18
/// checks at cost 10, for the Prometheus servers after a restart or a
/// password change.
const BCRYPT_CPU_BURST: f64 = 1.0;

/// The `realm` of the 401 challenge.
pub(crate) const CHALLENGE: &str = "Basic realm=\"kernel-exporter\"";

/// The configured users, ready to check against.
pub(crate) struct Users {
    /// (name, bcrypt hash), in the config's order.
    entries: Vec<(Vec<u8>, String)>,
    /// A hash of a random password at the typical cost of the entries
    /// (the most common one): what an unknown user's password is checked
    /// against, so it costs what most known users cost.
    dummy: String,
}

/// The users of a config could not be made ready: basic auth must not be
/// silently turned off, so the config is refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UsersError {
    #[error("basic_auth_users.{user}: the bcrypt hash cannot be read")]
    Hash { user: String },
    #[error("cannot get random bytes for the unknown-user hash: the system's random source failed")]
    Random,
    #[error("cannot compute the unknown-user bcrypt hash: {0}")]
    Dummy(#[source] bcrypt::BcryptError),
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes stay out of logs.
        f.debug_struct("Users").field("count", &self.entries.len()).finish()
    }
}

impl Users {
    /// Takes the validated `basic_auth_users`; `Ok(None)` when there are
    /// none, an error (never `None`) when there are some that cannot be
    /// made ready. Costs one bcrypt hash (the dummy), so call it off the
    /// async workers.
    pub(crate) fn new<'a>(
        users: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Option<Self>, UsersError> {
        let mut entries = Vec::new();
        let mut costs = BTreeMap::<u32, usize>::new();
        for (name, hash) in users {
            let parts = hash.parse::<bcrypt::HashParts>().map_err(|_| UsersError::Hash { user: name.clone() })?;
            *costs.entry(parts.get_cost()).or_default() += 1;
            entries.push((name.as_bytes().to_vec(), hash.clone()));
        }
        // The most common cost; among equals, the highest.
        let Some((&cost, _)) = costs.iter().max_by_key(|&(&cost, &count)| (count, cost)) else {
            return Ok(None);
        };
        let mut secret = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| UsersError::Random)?;
        let dummy = bcrypt::hash(secret, cost).map_err(UsersError::Dummy)?;
        Ok(Some(Self { entries, dummy }))
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
    /// The source started too many bcrypt checks within the last second
    /// (answered with 429, without a check).
    RateLimited,
}

impl AuthFailure {
    pub(crate) const ALL: [Self; 6] = [
        Self::MissingCredentials,
        Self::Malformed,
        Self::UnknownUser,
        Self::WrongPassword,
        Self::Overloaded,
        Self::RateLimited,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::MissingCredentials => "missing_credentials",
            Self::Malformed => "malformed",
            Self::UnknownUser => "unknown_user",
            Self::WrongPassword => "wrong_password",
            Self::Overloaded => "overloaded",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Checks credentials; shared by every connection, across config reloads
/// (cache entries include the stored hash, so a changed password or user
/// list cannot hit an old entry).
pub(crate) struct Authenticator {
    state: Arc<Mutex<State>>,
    workers: Workers,
    pending: Arc<Semaphore>,
}

struct State {
    passed: Cache,
    failed: Cache,
    /// Checks under way, by cache key, with where their answer will be.
    checking: Vec<([u8; 32], watch::Receiver<Option<bool>>)>,
    budget: Budget,
    /// `None`: checks per source are not limited.
    per_source: Option<PerSource>,
}

/// Sources tracked by [`PerSource`] at most. Sources come from completed
/// TCP handshakes (they cannot be forged), and one that has not started a
/// check for a second has a full bucket and is forgotten when room is
/// needed; beyond, new sources are refused until room is made.
const SOURCES_TRACKED: usize = 4096;

/// A token bucket per source address: `rate` bcrypt checks a second, as
/// many at once. Bounds the checks one source gets however many
/// connections and HTTP/2 streams it opens (and resets).
struct PerSource {
    rate: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl PerSource {
    fn new(rate: u32) -> Self {
        Self { rate: f64::from(rate), buckets: HashMap::new() }
    }

    /// Whether `source` may start a check now (taking a token if so).
    fn take(&mut self, source: IpAddr, now: Instant) -> bool {
        let source = source.to_canonical();
        let rate = self.rate;
        let refilled =
            |(tokens, at): (f64, Instant)| (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(rate);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= SOURCES_TRACKED {
            self.buckets.retain(|_, bucket| refilled(*bucket) < rate);
            if self.buckets.len() >= SOURCES_TRACKED {
                return false;
            }
        }
        let bucket = self.buckets.entry(source).or_insert((rate, now));
        let tokens = refilled(*bucket);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            return false;
        }
        *bucket = (tokens - 1.0, now);
        true
    }
}

/// bcrypt's CPU budget: a token bucket of CPU seconds, refilled at
/// [`BCRYPT_CPU_PER_SECOND`] up to [`BCRYPT_CPU_BURST`]. A check is let in
/// while the bucket is not empty and charged what the last one cost; what
/// it really cost is settled when it is done.
struct Budget {
    seconds: f64,
    refilled: Instant,
    /// CPU seconds of the last check.
    estimate: f64,
}

impl Budget {
    fn new(now: Instant) -> Self {
        // Cost 10 on a slow core, until one is measured.
        Self { seconds: BCRYPT_CPU_BURST, refilled: now, estimate: 0.1 }
    }

    /// Whether a check may start now; if so it is charged the estimate,
    /// which is returned for [`Self::settle`].
    fn take(&mut self, now: Instant) -> Option<f64> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.seconds = (self.seconds + elapsed * BCRYPT_CPU_PER_SECOND).min(BCRYPT_CPU_BURST);
        self.refilled = now;
        if self.seconds <= 0.0 {
            return None;
        }
        self.seconds -= self.estimate;
        Some(self.estimate)
    }

    /// A check charged `charged` took `cost` CPU seconds.
    fn settle(&mut self, charged: f64, cost: f64) {
        self.seconds += charged - cost;
        self.estimate = cost;
    }
}

impl State {
    /// Both caches are scanned whole, hit or miss.
    fn cached(&self, key: &[u8; 32]) -> Option<bool> {
        let passed = self.passed.contains(key);
        let failed = self.failed.contains(key);
        if bool::from(passed) { Some(true) } else { bool::from(failed).then_some(false) }
    }

    fn under_way(&self, key: &[u8; 32]) -> Option<watch::Receiver<Option<bool>>> {
        self.checking.iter().find(|(checking, _)| bool::from(checking.ct_eq(key))).map(|(_, answer)| answer.clone())
    }
}

/// A bounded set of cache keys; once full, each insertion replaces the
/// oldest entry.
struct Cache {
    keys: Vec<[u8; 32]>,
    capacity: usize,
    /// The slot the next insertion overwrites once the cache is full.
    next: usize,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self { keys: Vec::with_capacity(capacity), capacity, next: 0 }
    }

    /// Every entry is compared, matched or not.
    fn contains(&self, key: &[u8; 32]) -> Choice {
        let mut hit = Choice::from(0);
        for entry in &self.keys {
            hit |= entry.ct_eq(key);
        }
        hit
    }

    fn insert(&mut self, key: [u8; 32]) {
        if self.keys.len() < self.capacity {
            self.keys.push(key);
        } else {
            self.keys[self.next] = key;
            self.next = (self.next + 1) % self.capacity;
        }
    }
}

impl Authenticator {
    /// `parallel`: bcrypt checks running at once; `per_source`: checks one
    /// source may start per second (`None`: no limit).
    pub(crate) fn new(
        parallel: usize,
        per_source: Option<u32>,
        runs: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                passed: Cache::new(PASSED_ENTRIES),
                failed: Cache::new(FAILED_ENTRIES),
                checking: Vec::with_capacity(MAX_PENDING),
                budget: Budget::new(Instant::now()),
                per_source: per_source.map(PerSource::new),
            })),
            workers: Workers::new(parallel, runs),
            pending: Arc::new(Semaphore::new(MAX_PENDING)),
        }
    }

    /// Half the cores, at least one: the other half stays for scrapes.
    pub(crate) fn for_this_host(per_source: Option<u32>, runs: prometheus_client::metrics::counter::Counter) -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get() / 2), per_source, runs)
    }

    fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
        state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `authorization`, from `source`, carries the password of one
    /// of `users`.
    pub(crate) async fn check(
        &self,
        users: &Users,
        authorization: Option<&HeaderValue>,
        source: IpAddr,
    ) -> Result<(), AuthFailure> {
        let header = authorization.ok_or(AuthFailure::MissingCredentials)?;
        let (user, password) = parse_basic(header.as_bytes()).ok_or(AuthFailure::Malformed)?;
        let (hash, found) = users.lookup(&user);
        let found = bool::from(found);
        let key = cache_key(&user, &password, hash);

        let mut answer = {
            let mut state = Self::lock(&self.state);
            if let Some(ok) = state.cached(&key) {
                return verdict(ok, found);
            }
            match state.under_way(&key) {
                Some(answer) => answer,
                None => {
                    let now = Instant::now();
                    if let Some(per_source) = &mut state.per_source
                        && !per_source.take(source, now)
                    {
                        return Err(AuthFailure::RateLimited);
                    }
                    let waiting = Arc::clone(&self.pending).try_acquire_owned().map_err(|_| AuthFailure::Overloaded)?;
                    let charged = state.budget.take(now).ok_or(AuthFailure::Overloaded)?;
                    let (sender, answer) = watch::channel(None);
                    state.checking.push((key, answer.clone()));
                    let (verified, bcrypt) = tokio::sync::oneshot::channel();
                    self.workers.submit(Job { password, hash: hash.to_owned(), answer: verified });
                    let state = Arc::clone(&self.state);
                    // Its own task: the answer is cached and handed to every
                    // waiter even if this request is dropped meanwhile.
                    tokio::spawn(async move {
                        let _waiting = waiting;
                        let (ok, cost) = bcrypt.await.unwrap_or((false, charged));
                        // An unknown user never passes, whatever the dummy says.
                        let ok = ok && found;
                        let mut state = Self::lock(&state);
                        state.budget.settle(charged, cost);
                        if ok {
                            state.passed.insert(key)
                        } else {
                            state.failed.insert(key)
                        }
                        state.checking.retain(|(checking, _)| *checking != key);
                        sender.send_replace(Some(ok));
                    });
                    answer
                }
            }
        };
        // The sender only goes away without an answer if the runtime is
        // shutting down.
        let ok = answer.wait_for(Option::is_some).await.map_err(|_| AuthFailure::Overloaded)?.unwrap_or(false);
        verdict(ok, found)
    }

    #[cfg(test)]
    fn bcrypt_runs(&self) -> u64 {
        self.workers.runs()
    }
}

fn verdict(verified: bool, found: bool) -> Result<(), AuthFailure> {
    match (verified, found) {
        (true, true) => Ok(()),
        (_, false) => Err(AuthFailure::UnknownUser),
        (false, true) => Err(AuthFailure::WrongPassword),
    }
}

/// The user name an `Authorization: Basic` header claims, for the access
/// log (printable, at most 64 characters); the password is never kept.
pub(crate) fn claimed_user(authorization: Option<&HeaderValue>) -> Option<String> {
    let (user, _) = parse_basic(authorization?.as_bytes())?;
    let user: String = String::from_utf8_lossy(&user).chars().filter(|c| !c.is_control()).take(64).collect();
    (!user.is_empty()).then_some(user)
}

/// `Basic base64(user:password)`; the scheme is case-insensitive.
pub(crate) fn parse_basic(header: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
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
        Users::new(owned.iter().map(|(u, h)| (u, h))).unwrap().unwrap()
    }

    const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

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
        let auth = Authenticator::new(1, None, Default::default());
        assert_eq!(auth.check(&users, Some(&basic("alice", "s3cret")), SOURCE).await, Ok(()));
        assert_eq!(auth.check(&users, Some(&basic("bob", "hunter2")), SOURCE).await, Ok(()));
        assert_eq!(auth.check(&users, Some(&basic("bob", "s3cret")), SOURCE).await, Err(AuthFailure::WrongPassword));
        assert_eq!(auth.check(&users, Some(&basic("carol", "s3cret")), SOURCE).await, Err(AuthFailure::UnknownUser));
        assert_eq!(auth.check(&users, None, SOURCE).await, Err(AuthFailure::MissingCredentials));
        let bearer = HeaderValue::from_static("Bearer x");
        assert_eq!(auth.check(&users, Some(&bearer), SOURCE).await, Err(AuthFailure::Malformed));
        // Cached answers are the same answers.
        assert_eq!(auth.check(&users, Some(&basic("alice", "s3cret")), SOURCE).await, Ok(()));
        assert_eq!(auth.check(&users, Some(&basic("bob", "s3cret")), SOURCE).await, Err(AuthFailure::WrongPassword));
    }

    #[tokio::test]
    async fn the_cache_skips_bcrypt() {
        let owned = [("alice".to_owned(), bcrypt::hash("pw", 10).unwrap())];
        let users = Users::new(owned.iter().map(|(u, h)| (u, h))).unwrap().unwrap();
        let auth = Authenticator::new(1, None, Default::default());
        let header = basic("alice", "pw");
        let started = Instant::now();
        auth.check(&users, Some(&header), SOURCE).await.unwrap();
        let first = started.elapsed();
        let started = Instant::now();
        auth.check(&users, Some(&header), SOURCE).await.unwrap();
        let second = started.elapsed();
        assert!(second * 20 < first, "first {first:?}, cached {second:?}");
    }

    /// Regression: the dummy hash had the highest cost in use, so with one
    /// dearer user an unknown user took longer than a typical known one.
    /// Timed as the CPU time of the bcrypt threads, which other work on the
    /// machine does not stretch as it does wall time.
    #[tokio::test]
    async fn unknown_users_cost_what_a_typical_known_user_costs() {
        const CHECKS: usize = 8;
        let owned = [
            ("alice".to_owned(), bcrypt::hash("pw", 8).unwrap()),
            ("bob".to_owned(), bcrypt::hash("pw", 8).unwrap()),
            ("carol".to_owned(), bcrypt::hash("pw", 10).unwrap()),
        ];
        let users = Users::new(owned.iter().map(|(u, h)| (u, h))).unwrap().unwrap();
        assert_eq!(users.dummy.parse::<bcrypt::HashParts>().unwrap().get_cost(), 8);
        let auth = Authenticator::new(1, None, Default::default());
        let mean_cpu = async |user: &str| {
            let mut total = 0.0;
            for attempt in 0..CHECKS {
                // Not this test's business: the budget would refuse some.
                Authenticator::lock(&auth.state).budget.seconds = BCRYPT_CPU_BURST;
                let result = auth.check(&users, Some(&basic(user, &format!("wrong-{attempt}"))), SOURCE).await;
                assert!(result.is_err());
                total += Authenticator::lock(&auth.state).budget.estimate;
            }
            total / CHECKS as f64
        };
        let known = mean_cpu("alice").await;
        let unknown = mean_cpu("mallory").await;
        let ratio = unknown / known;
        println!("mean bcrypt CPU time: known {known:.6} s, unknown {unknown:.6} s, ratio {ratio:.3}");
        assert!((0.9..=1.1).contains(&ratio), "known {known} s, unknown {unknown} s");
    }

    #[test]
    fn users_fail_closed() {
        let none: [(String, String); 0] = [];
        assert!(Users::new(none.iter().map(|(u, h)| (u, h))).unwrap().is_none(), "no users: no basic auth");
        let broken = [("alice".to_owned(), "not a hash".to_owned())];
        let error = Users::new(broken.iter().map(|(u, h)| (u, h))).unwrap_err();
        assert_eq!(error.to_string(), "basic_auth_users.alice: the bcrypt hash cannot be read");
    }

    #[test]
    fn the_cpu_budget_allows_a_burst_then_its_rate() {
        let start = Instant::now();
        let mut budget = Budget::new(start);
        // A power of two: exact sums.
        budget.estimate = 0.0625;
        // A burst: 16 checks of 62.5 ms fit in a second's budget.
        let charged: Vec<f64> = std::iter::from_fn(|| budget.take(start)).take(100).collect();
        assert_eq!(charged.len(), 16);
        for &charge in &charged {
            budget.settle(charge, 0.0625);
        }
        assert!(budget.take(start).is_none(), "spent");
        // Then a tenth of a second per second: two more after one second.
        let later = start + std::time::Duration::from_secs(1);
        assert_eq!(std::iter::from_fn(|| budget.take(later)).take(100).count(), 2);
        // Checks that cost more than charged are paid back from the refill.
        let mut budget = Budget::new(start);
        let charge = budget.take(start).unwrap();
        budget.settle(charge, 2.0);
        assert!(budget.take(start + std::time::Duration::from_secs(9)).is_none(), "still paying 1 s back");
        assert!(budget.take(start + std::time::Duration::from_secs(11)).is_some());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = Cache::new(FAILED_ENTRIES);
        for i in 0..FAILED_ENTRIES + 10 {
            cache.insert(cache_key(b"u", i.to_string().as_bytes(), "h"));
        }
        assert_eq!(cache.keys.len(), FAILED_ENTRIES);
        assert!(!bool::from(cache.contains(&cache_key(b"u", b"0", "h"))), "oldest evicted");
        assert!(bool::from(cache.contains(&cache_key(b"u", b"20", "h"))));
        assert_ne!(cache_key(b"a:b", b"c", "h"), cache_key(b"a", b"b:c", "h"));
    }

    #[tokio::test]
    async fn wrong_passwords_cannot_push_out_the_right_one() {
        let users = users(&[("alice", "pw")]);
        let auth = Authenticator::new(2, None, Default::default());
        assert_eq!(auth.check(&users, Some(&basic("alice", "pw")), SOURCE).await, Ok(()));
        for i in 0..FAILED_ENTRIES + 10 {
            let wrong = basic("alice", &format!("wrong-{i}"));
            assert_eq!(auth.check(&users, Some(&wrong), SOURCE).await, Err(AuthFailure::WrongPassword));
        }
        let runs = auth.bcrypt_runs();
        assert_eq!(runs, 1 + FAILED_ENTRIES as u64 + 10);
        assert_eq!(auth.check(&users, Some(&basic("alice", "pw")), SOURCE).await, Ok(()));
        assert_eq!(auth.bcrypt_runs(), runs, "still cached");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_identical_checks_share_one_bcrypt() {
        let users = Arc::new(users(&[("alice", "pw")]));
        let auth = Arc::new(Authenticator::new(1, None, Default::default()));
        // More than MAX_PENDING at once: waiting for a check under way
        // takes no queue place, so none of them is refused.
        let checks: Vec<_> = (0..MAX_PENDING * 2)
            .map(|_| {
                let (auth, users) = (Arc::clone(&auth), Arc::clone(&users));
                tokio::spawn(async move { auth.check(&users, Some(&basic("alice", "wrong")), SOURCE).await })
            })
            .collect();
        for check in checks {
            assert_eq!(check.await.unwrap(), Err(AuthFailure::WrongPassword));
        }
        assert_eq!(auth.bcrypt_runs(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_check_whose_client_left_still_lands_in_the_cache() {
        let users = users(&[("alice", "pw")]);
        let auth = Authenticator::new(1, None, Default::default());
        let header = basic("alice", "pw");
        // Polled once (far too soon for bcrypt to be done) and dropped, as
        // hyper drops a request whose connection closed.
        {
            use std::future::Future as _;
            let abandoned = std::pin::pin!(auth.check(&users, Some(&header), SOURCE));
            let _ = abandoned.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        }
        assert_eq!(auth.check(&users, Some(&header), SOURCE).await, Ok(()));
        assert_eq!(auth.check(&users, Some(&header), SOURCE).await, Ok(()));
        assert_eq!(auth.bcrypt_runs(), 1);
    }

    #[tokio::test]
    async fn checks_per_source_are_bounded_and_cached_answers_are_free() {
        let users = users(&[("alice", "pw")]);
        let auth = Authenticator::new(1, Some(3), Default::default());
        let started = Instant::now();
        assert_eq!(auth.check(&users, Some(&basic("alice", "pw")), SOURCE).await, Ok(()));
        for i in 0..2 {
            let wrong = basic("alice", &format!("wrong-{i}"));
            assert_eq!(auth.check(&users, Some(&wrong), SOURCE).await, Err(AuthFailure::WrongPassword));
        }
        let runs = auth.bcrypt_runs();
        let fourth = basic("alice", "wrong-3");
        let answer = auth.check(&users, Some(&fourth), SOURCE).await;
        // The bucket refills a token every third of a second, and bcrypt's
        // threads run at SCHED_IDLE: on a loaded machine three checks can
        // take that long, and then the fourth is rightly let through. Within
        // it, the fourth must be refused without a check.
        if started.elapsed() < std::time::Duration::from_millis(330) {
            assert_eq!(answer, Err(AuthFailure::RateLimited));
            assert_eq!(auth.bcrypt_runs(), runs, "refused without a check");
        }
        // Cached answers cost nothing and are not limited; other sources
        // have their own bucket.
        assert_eq!(auth.check(&users, Some(&basic("alice", "pw")), SOURCE).await, Ok(()));
        let other = IpAddr::from([192, 0, 2, 2]);
        assert_eq!(auth.check(&users, Some(&fourth), other).await, Err(AuthFailure::WrongPassword));
    }

    #[test]
    fn the_per_source_buckets_refill_and_stay_bounded() {
        let start = Instant::now();
        let mut per_source = PerSource::new(10);
        let source = IpAddr::from([192, 0, 2, 1]);
        assert_eq!((0..20).filter(|_| per_source.take(source, start)).count(), 10);
        let later = start + std::time::Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| per_source.take(source, later)).count(), 1);
        // IPv4-mapped is the same source.
        assert!(!per_source.take("::ffff:192.0.2.1".parse().unwrap(), later));
        for i in 0..SOURCES_TRACKED as u32 {
            per_source.take(IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) + 1)), later);
        }
        assert!(per_source.buckets.len() <= SOURCES_TRACKED);
        // Once their buckets refill, old sources make room for new ones.
        let much_later = later + std::time::Duration::from_secs(2);
        assert!(per_source.take(IpAddr::from([198, 51, 100, 1]), much_later));
        assert!(per_source.buckets.len() <= SOURCES_TRACKED);
    }

    #[tokio::test]
    async fn overload_is_refused_without_bcrypt() {
        let users = users(&[("alice", "pw")]);
        let auth = Authenticator::new(1, None, Default::default());
        let _all = auth.pending.try_acquire_many(MAX_PENDING as u32).unwrap();
        assert_eq!(auth.check(&users, Some(&basic("alice", "nope")), SOURCE).await, Err(AuthFailure::Overloaded));
    }
}
