//! Google Workspace groups from the Admin SDK Directory API.
//!
//! Google's ID tokens carry no groups, so for `idp_provider: google` with
//! `idp_service_account`, Gatehouse asks the Directory API which groups a person is in:
//!
//! 1. **Access token** (RFC 7523 JWT-bearer grant): an RS256 assertion signed with the
//!    service account's key (`iss` = its `client_email`, `sub` = the impersonated admin,
//!    `scope` = group read-only, `aud` = the token URL, valid for an hour) is posted to the
//!    token URL. The token is kept until a minute before it expires.
//! 2. **Groups**: `GET {directory}/admin/directory/v1/groups?userKey=<id>&maxResults=200`
//!    (following `nextPageToken`), where `<id>` is the person's Google user id (the ID
//!    token's `sub`, which is the Directory API's user id; Pomerium asks the same way), so a
//!    sign-in can never borrow the groups of an email address it claims. Then the same for
//!    each group's email, breadth first, so groups inside groups count too (the API lists
//!    direct memberships only). A group seen twice is followed once (cycles end); more than
//!    [`MAX_GROUPS`] groups or [`MAX_CALLS`] calls is an error rather than a silently
//!    shortened list (a `deny` rule on a group cut off by a cap would otherwise let the
//!    person in). Each group is named by its email and its id ([`group_names`]).
//! 3. **Cache** ([`GroupCache`]): per person, in memory (never in the cookie, which would
//!    grow with every group). Groups younger than `idp_refresh_directory_interval` are used
//!    as they are; older ones are still used while a background refresh runs; when the
//!    directory does not answer, the last groups are used until they are
//!    `idp_directory_max_stale` old. Then the lookup fails ([`Unavailable`]) and routes whose
//!    rules use groups refuse (the proxy asks the policy). With no groups at all (after a
//!    restart, or a first visit on this replica) the request waits for a lookup, at most
//!    `idp_refresh_directory_timeout`.
//!
//! Nothing here logs or returns the key, the assertion or the access token.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openidconnect::reqwest;
use serde::{Deserialize, Serialize};

use gatehouse_config::DirectoryConfig;

use crate::oidc::error_chain;
use crate::session::VerifiedIdentity;

/// The one scope asked for: reading groups, nothing else.
pub const SCOPE: &str = "https://www.googleapis.com/auth/admin.directory.group.readonly";
/// RFC 7523's grant type.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime of an assertion (Google accepts at most an hour).
const ASSERTION_TTL_SECS: u64 = 3600;
/// An access token is replaced this long before it expires.
const TOKEN_EARLY_SECS: u64 = 60;
/// `maxResults` of each groups page (the API's maximum).
const PAGE_SIZE: u32 = 200;
/// The most groups one person may be in, nested ones included.
pub const MAX_GROUPS: usize = 2000;
/// The most Directory API calls one lookup may make (pages and nested groups).
pub const MAX_CALLS: usize = 500;
/// The most people whose groups are remembered.
const CACHE_MAX: usize = 100_000;
/// After a failed lookup, requests answer from that failure for this long (capped by the
/// refresh interval) instead of each waiting for another attempt.
const RETRY_AFTER: Duration = Duration::from_secs(5);

// === errors ===

/// The service account's key cannot sign (found when Gatehouse prepares, so `check` says it).
#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountKeyError {
    /// The key is not an RSA private key in PEM, or does not sign.
    #[error(
        "idp_service_account: the key's `private_key` is not an RSA private key Gatehouse can \
         sign with (Google service-account keys are RSA, PKCS#8 `BEGIN PRIVATE KEY`); create a \
         new JSON key for the service account in the Google Cloud console"
    )]
    NotRsa,
    /// The HTTP client could not be built.
    #[error("idp_service_account: cannot make an HTTP client: {0}")]
    Http(String),
}

/// Why one lookup failed. Messages hold no key, assertion or token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// No answer from the token URL.
    #[error("cannot reach the token endpoint: {0}")]
    TokenEndpoint(String),
    /// The token URL answered with an error status.
    #[error("the token endpoint refused the service account (HTTP {status}): {error}")]
    TokenRefused {
        /// The HTTP status.
        status: u16,
        /// Its error, reduced to plain words safe to log.
        error: String,
    },
    /// The token URL's answer did not parse, or holds no access token.
    #[error("the token endpoint's answer did not parse")]
    TokenMalformed,
    /// No answer from the directory.
    #[error("cannot reach the directory: {0}")]
    Unreachable(String),
    /// The directory answered with an error status.
    #[error("the directory answered HTTP {status} for {key}: {error}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The user id or group email whose groups were asked for.
        key: String,
        /// Its error, reduced to plain words safe to log.
        error: String,
    },
    /// The directory's answer for this user id or group email did not parse.
    #[error("the directory's answer for {0} did not parse")]
    Malformed(String),
    /// Over [`MAX_GROUPS`] groups or [`MAX_CALLS`] calls: refused rather than cut short.
    #[error(
        "the person is in too many groups to follow (over {MAX_GROUPS} groups or {MAX_CALLS} \
         directory calls); not using a shortened list"
    )]
    TooMany,
    /// The lookup took longer than this (`idp_refresh_directory_timeout`).
    #[error("the lookup took longer than idp_refresh_directory_timeout ({0:?})")]
    Timeout(Duration),
    /// The assertion could not be signed.
    #[error("cannot sign the assertion: {0}")]
    Sign(String),
}

// === the assertion ===

/// Signs JWT-bearer assertions with the service account's RSA key.
pub struct AssertionSigner {
    key: EncodingKey,
    kid: Option<String>,
    iss: String,
    sub: String,
    aud: String,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("iss", &self.iss)
            .field("sub", &self.sub)
            .field("aud", &self.aud)
            .finish_non_exhaustive()
    }
}

/// The assertion's claims (RFC 7523 section 3, with Google's `scope`).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssertionClaims {
    /// The service account's `client_email`.
    pub iss: String,
    /// The admin the service account acts as.
    pub sub: String,
    /// Always [`SCOPE`].
    pub scope: String,
    /// The token URL.
    pub aud: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expiry (Unix seconds), an hour after `iat`.
    pub exp: u64,
}

impl AssertionSigner {
    /// A signer for the service account in `cfg`, acting as its `impersonate_user`. `Err`
    /// unless its key signs: it signs one assertion here, so a bad key fails at start.
    pub fn new(cfg: &DirectoryConfig) -> Result<Self, ServiceAccountKeyError> {
        let sa = &cfg.service_account;
        let key = EncodingKey::from_rsa_pem(sa.private_key.expose().as_bytes())
            .map_err(|_| ServiceAccountKeyError::NotRsa)?;
        let signer = AssertionSigner {
            key,
            kid: sa.private_key_id.clone(),
            iss: sa.client_email.clone(),
            sub: cfg.impersonate_user.clone(),
            aud: cfg.token_url.to_string(),
        };
        // The PEM type is checked above; the key itself is parsed when signing.
        signer
            .assertion(0)
            .map_err(|_| ServiceAccountKeyError::NotRsa)?;
        Ok(signer)
    }

    /// The claims of an assertion made at `now` (Unix seconds).
    pub fn claims(&self, now: u64) -> AssertionClaims {
        AssertionClaims {
            iss: self.iss.clone(),
            sub: self.sub.clone(),
            scope: SCOPE.to_string(),
            aud: self.aud.clone(),
            iat: now,
            exp: now + ASSERTION_TTL_SECS,
        }
    }

    /// A signed assertion (RS256, `kid` = the key's `private_key_id`). Never log it.
    pub fn assertion(&self, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, &self.claims(now), &self.key)
    }
}

/// The token request's form body.
pub fn token_request_body(assertion: &str) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", GRANT_TYPE)
        .append_pair("assertion", assertion)
        .finish()
}

// === responses ===

/// One group as the Directory API lists it (other fields are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Group {
    /// The group's unique id (empty if absent).
    #[serde(default)]
    pub id: String,
    /// The group's email address (empty if absent).
    #[serde(default)]
    pub email: String,
    /// The group's display name (empty if absent).
    #[serde(default)]
    pub name: String,
}

/// One page of `groups.list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct GroupPage {
    /// The groups on this page (none when the field is absent).
    #[serde(default)]
    pub groups: Vec<Group>,
    /// `nextPageToken`: asks for the next page; absent or empty on the last.
    #[serde(rename = "nextPageToken", default)]
    pub next_page_token: Option<String>,
}

/// Parses a `groups.list` answer.
pub fn parse_page(body: &[u8]) -> Option<GroupPage> {
    serde_json::from_slice(body).ok()
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default)]
    error: serde_json::Value,
    #[serde(default)]
    error_description: Option<String>,
}

/// An error answer in words safe to log: the OAuth `error`/`error_description`, or Google's
/// `{error: {code, message}}`, reduced to plain characters and 200 of them.
fn error_words(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(a) => {
            let error = match &a.error {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => o
                    .get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            };
            match a.error_description {
                Some(d) => format!("{error} ({d})"),
                None => error,
            }
        }
        Err(_) => String::new(),
    };
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || " _.,:;()'-/@".contains(*c))
        .take(200)
        .collect();
    if clean.trim().is_empty() {
        "no error description".into()
    } else {
        clean
    }
}

/// `{base}/admin/directory/v1/groups?userKey=…&maxResults=200[&pageToken=…]`.
pub fn groups_url(base: &url::Url, key: &str, page_token: Option<&str>) -> url::Url {
    let mut url = base.clone();
    let path = format!(
        "{}/admin/directory/v1/groups",
        base.path().trim_end_matches('/')
    );
    url.set_path(&path);
    url.set_query(None);
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("userKey", key);
        q.append_pair("maxResults", &PAGE_SIZE.to_string());
        if let Some(t) = page_token {
            q.append_pair("pageToken", t);
        }
    }
    url
}

/// The groups of `user`, nested ones included: breadth first from the person, each group's
/// own groups listed by its email, every page followed. `list(key, page_token)` fetches one
/// page. A group already seen (by id, else email) is not followed again.
pub async fn expand<F, Fut>(user: &str, mut list: F) -> Result<Vec<Group>, DirectoryError>
where
    F: FnMut(String, Option<String>) -> Fut,
    Fut: Future<Output = Result<GroupPage, DirectoryError>>,
{
    let mut seen: HashSet<String> = HashSet::new();
    let mut out: Vec<Group> = Vec::new();
    let mut queue: VecDeque<String> = VecDeque::from([user.to_string()]);
    let mut calls = 0usize;
    while let Some(key) = queue.pop_front() {
        let mut page_token: Option<String> = None;
        loop {
            calls += 1;
            if calls > MAX_CALLS {
                return Err(DirectoryError::TooMany);
            }
            let page = list(key.clone(), page_token.take()).await?;
            for g in page.groups {
                let identity = if g.id.is_empty() {
                    g.email.to_ascii_lowercase()
                } else {
                    g.id.clone()
                };
                if identity.is_empty() || !seen.insert(identity) {
                    continue;
                }
                if out.len() >= MAX_GROUPS {
                    return Err(DirectoryError::TooMany);
                }
                if !g.email.is_empty() {
                    queue.push_back(g.email.clone());
                }
                out.push(g);
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => page_token = Some(t),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// The names a policy and the upstream see: every group's email, then every id.
pub fn group_names(groups: &[Group]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(groups.len() * 2);
    let mut seen: HashSet<&str> = HashSet::new();
    for name in groups
        .iter()
        .map(|g| g.email.as_str())
        .chain(groups.iter().map(|g| g.id.as_str()))
    {
        if !name.is_empty() && seen.insert(name) {
            names.push(name.to_string());
        }
    }
    names
}

// === the cache ===

/// Groups could not be looked up: the directory has not answered since `since`, and the
/// groups from `last_success` (if any) are too old to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable {
    /// The first failed lookup since the last success.
    pub since: SystemTime,
    /// When the directory last gave this person's groups (in this process), if ever.
    pub last_success: Option<SystemTime>,
}

/// How long each state lasts.
#[derive(Debug, Clone, Copy)]
pub struct Ttls {
    /// Groups younger than this are used with no refresh (`idp_refresh_directory_interval`).
    pub refresh: Duration,
    /// Groups up to this old are still used when the directory does not answer
    /// (`idp_directory_max_stale`).
    pub max_stale: Duration,
    /// The longest one lookup may take (`idp_refresh_directory_timeout`).
    pub timeout: Duration,
}

impl Ttls {
    fn retry_after(&self) -> Duration {
        RETRY_AFTER.min(self.refresh)
    }
}

#[derive(Debug)]
struct Entry {
    /// The last groups the directory gave, and when.
    known: Option<(Arc<[String]>, SystemTime)>,
    /// The first failure since the last success.
    failing_since: Option<SystemTime>,
    /// The last failure.
    failed_at: Option<SystemTime>,
    /// A background refresh started then and has not finished.
    refreshing_since: Option<SystemTime>,
    /// Held while this person's groups are fetched (one fetch at a time).
    fetch: Arc<tokio::sync::Mutex<()>>,
}

impl Entry {
    fn new() -> Self {
        Entry {
            known: None,
            failing_since: None,
            failed_at: None,
            refreshing_since: None,
            fetch: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn unavailable(&self, now: SystemTime) -> Unavailable {
        Unavailable {
            since: self.failing_since.unwrap_or(now),
            last_success: self.known.as_ref().map(|(_, at)| *at),
        }
    }
}

/// What to do for a request, by [`GroupCache::lookup`].
#[derive(Debug)]
pub enum Lookup {
    /// Younger than the refresh interval: use them.
    Fresh(Arc<[String]>),
    /// Older, but within the stale limit: use them. With `refresh`, the caller starts a
    /// background refresh (and reports it with `succeeded`/`failed`).
    Stale {
        /// The last groups the directory gave.
        groups: Arc<[String]>,
        /// Whether this caller starts the refresh (one at a time per person).
        refresh: bool,
    },
    /// Nothing usable: fetch now and wait (holding the lock, one fetch at a time).
    Fetch(Arc<tokio::sync::Mutex<()>>),
    /// Nothing usable, and a fetch failed moments ago: refuse without waiting again.
    Unavailable(Unavailable),
}

/// Per-person groups and the state of their lookups. Pure: every method takes the time, so
/// tests drive it with any clock.
#[derive(Debug)]
pub struct GroupCache {
    ttls: Ttls,
    entries: HashMap<String, Entry>,
}

impl GroupCache {
    /// An empty cache with these lifetimes.
    pub fn new(ttls: Ttls) -> Self {
        GroupCache {
            ttls,
            entries: HashMap::new(),
        }
    }

    fn entry(&mut self, user: &str, now: SystemTime) -> &mut Entry {
        if !self.entries.contains_key(user) && self.entries.len() >= CACHE_MAX {
            let keep = self.ttls.max_stale;
            self.entries.retain(|_, e| {
                e.known
                    .as_ref()
                    .is_some_and(|(_, at)| age(*at, now) <= keep)
            });
            if self.entries.len() >= CACHE_MAX {
                tracing::warn!("directory group cache full; forgetting everyone's groups");
                self.entries.clear();
            }
        }
        self.entries
            .entry(user.to_string())
            .or_insert_with(Entry::new)
    }

    /// What a request for `user` at `now` should do.
    pub fn lookup(&mut self, user: &str, now: SystemTime) -> Lookup {
        let ttls = self.ttls;
        let e = self.entry(user, now);
        let recently_failed = e
            .failed_at
            .is_some_and(|at| age(at, now) < ttls.retry_after());
        if let Some((groups, at)) = &e.known {
            let a = age(*at, now);
            if a < ttls.refresh {
                return Lookup::Fresh(groups.clone());
            }
            if a <= ttls.max_stale {
                // A refresh that has run past twice the timeout was lost (runtime gone).
                let refreshing = e
                    .refreshing_since
                    .is_some_and(|s| age(s, now) < ttls.timeout * 2);
                let refresh = !refreshing && !recently_failed;
                if refresh {
                    e.refreshing_since = Some(now);
                }
                return Lookup::Stale {
                    groups: groups.clone(),
                    refresh,
                };
            }
        }
        if recently_failed {
            return Lookup::Unavailable(e.unavailable(now));
        }
        Lookup::Fetch(e.fetch.clone())
    }

    /// The outcome of a fetch that ended after `started`, if one did (another request
    /// fetched while this one waited for the lock).
    pub fn settled_since(
        &self,
        user: &str,
        started: SystemTime,
    ) -> Option<Result<Arc<[String]>, Unavailable>> {
        let e = self.entries.get(user)?;
        if let Some((groups, at)) = &e.known
            && *at >= started
        {
            return Some(Ok(groups.clone()));
        }
        match e.failed_at {
            Some(at) if at >= started => Some(Err(e.unavailable(at))),
            _ => None,
        }
    }

    /// The lock held while `user`'s groups are fetched.
    pub fn fetch_lock(&mut self, user: &str, now: SystemTime) -> Arc<tokio::sync::Mutex<()>> {
        self.entry(user, now).fetch.clone()
    }

    /// Records a successful fetch: `groups` are fresh as of `now`, and any failure or
    /// refresh in progress is forgotten.
    pub fn succeeded(&mut self, user: &str, groups: Arc<[String]>, now: SystemTime) {
        let e = self.entry(user, now);
        e.known = Some((groups, now));
        e.failing_since = None;
        e.failed_at = None;
        e.refreshing_since = None;
    }

    /// Records a failed fetch. The answer for the request that waited for it: the last
    /// groups while they are within the stale limit, else [`Unavailable`].
    pub fn failed(&mut self, user: &str, now: SystemTime) -> Result<Arc<[String]>, Unavailable> {
        let max_stale = self.ttls.max_stale;
        let e = self.entry(user, now);
        e.failing_since.get_or_insert(now);
        e.failed_at = Some(now);
        e.refreshing_since = None;
        match &e.known {
            Some((groups, at)) if age(*at, now) <= max_stale => Ok(groups.clone()),
            _ => Err(e.unavailable(now)),
        }
    }

    /// How many people the cache has an entry for.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn age(at: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(at).unwrap_or(Duration::ZERO)
}

// === the client ===

struct Token {
    value: String,
    expires_at: u64,
}

/// The directory client and the groups cache, for one configuration. Held by the proxy's
/// state behind an `Arc`; [`Directory::carry_over`] moves the cache into a new one on a
/// config reload.
pub struct Directory {
    signer: AssertionSigner,
    token_url: url::Url,
    directory_url: url::Url,
    http: reqwest::Client,
    ttls: Ttls,
    token: tokio::sync::Mutex<Option<Token>>,
    cache: Arc<Mutex<GroupCache>>,
    clock: fn() -> SystemTime,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("signer", &self.signer)
            .field("directory_url", &self.directory_url.as_str())
            .field("ttls", &self.ttls)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// A client for `cfg` with an empty cache. `Err` if the service account's key does not
    /// sign or no HTTP client can be made. Nothing is fetched here, and its HTTP client
    /// never follows redirects.
    pub fn new(cfg: &DirectoryConfig) -> Result<Self, ServiceAccountKeyError> {
        let signer = AssertionSigner::new(cfg)?;
        // No redirects: a token or a group list is only ever taken from the URL configured.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| ServiceAccountKeyError::Http(e.to_string()))?;
        let ttls = Ttls {
            refresh: cfg.refresh_interval,
            max_stale: cfg.max_stale,
            timeout: cfg.timeout,
        };
        Ok(Directory {
            signer,
            token_url: cfg.token_url.clone(),
            directory_url: cfg.directory_url.clone(),
            http,
            ttls,
            token: tokio::sync::Mutex::new(None),
            cache: Arc::new(Mutex::new(GroupCache::new(ttls))),
            clock: SystemTime::now,
        })
    }

    /// For readiness: an access token for the directory can be had (from the cache while it
    /// is valid, else from the token endpoint now). `Err` says what is wrong.
    pub async fn probe(&self) -> Result<(), String> {
        self.access_token()
            .await
            .map(|_| ())
            .map_err(|e| format!("the Google directory cannot be reached: {e}"))
    }

    /// For a config reload: `self` (new settings) keeps the groups `previous` knows when
    /// both read the same directory as the same admin, so nobody waits for a lookup again.
    pub fn carry_over(mut self, previous: &Directory) -> Self {
        if self.directory_url == previous.directory_url && self.signer.sub == previous.signer.sub {
            self.cache = previous.cache.clone();
            if let Ok(mut c) = self.cache.lock() {
                c.ttls = self.ttls;
            }
        }
        self
    }

    fn now(&self) -> SystemTime {
        (self.clock)()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, GroupCache> {
        // A poisoned lock only means a panic elsewhere mid-update; the map is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The identity with its directory groups, and whether they could not be had. With
    /// `Some(Unavailable)`, the identity has no groups and group rules must refuse.
    pub async fn resolve(
        self: &Arc<Self>,
        id: VerifiedIdentity,
    ) -> (VerifiedIdentity, Option<Unavailable>) {
        let user_id = id.user().to_string();
        match self.groups(&user_id).await {
            Ok(groups) => (id.with_directory_groups(groups), None),
            Err(u) => (id.with_directory_groups(Arc::from(Vec::new())), Some(u)),
        }
    }

    /// At sign-in: fetch the groups of `user_id` (the Google user id: the ID token's `sub`)
    /// now, waiting at most the timeout, whatever the cache holds, so a new sign-in sees
    /// current groups.
    pub async fn refresh_now(&self, user_id: &str) {
        let lock = self.cache().fetch_lock(user_id, self.now());
        let _ = self.fetch_locked(user_id, &lock).await;
    }

    /// The groups of `user_id` (the ID token's `sub`), from the cache or the directory (see
    /// the module docs).
    pub async fn groups(self: &Arc<Self>, user_id: &str) -> Result<Arc<[String]>, Unavailable> {
        let started = self.now();
        let lookup = self.cache().lookup(user_id, started);
        match lookup {
            Lookup::Fresh(groups) => Ok(groups),
            Lookup::Stale { groups, refresh } => {
                if refresh {
                    self.refresh_in_background(user_id);
                }
                Ok(groups)
            }
            Lookup::Unavailable(u) => Err(u),
            Lookup::Fetch(lock) => {
                let waited = tokio::time::timeout(self.ttls.timeout, async {
                    let _held = lock.lock().await;
                    if let Some(done) = self.cache().settled_since(user_id, started) {
                        return done;
                    }
                    self.fetch_and_record(user_id).await
                })
                .await;
                match waited {
                    Ok(done) => done,
                    Err(_) => {
                        // Waited for another request's fetch that did not finish in time.
                        let now = self.now();
                        self.cache().failed(user_id, now)
                    }
                }
            }
        }
    }

    fn refresh_in_background(self: &Arc<Self>, user_id: &str) {
        let this = Arc::clone(self);
        let user_id = user_id.to_string();
        let lock = self.cache().fetch_lock(&user_id, self.now());
        tokio::spawn(async move {
            let _ = this.fetch_locked(&user_id, &lock).await;
        });
    }

    async fn fetch_locked(
        &self,
        user_id: &str,
        lock: &tokio::sync::Mutex<()>,
    ) -> Result<Arc<[String]>, Unavailable> {
        let _held = lock.lock().await;
        self.fetch_and_record(user_id).await
    }

    /// One lookup, bounded by the timeout, recorded in the cache.
    async fn fetch_and_record(&self, user_id: &str) -> Result<Arc<[String]>, Unavailable> {
        let result = match tokio::time::timeout(self.ttls.timeout, self.fetch(user_id)).await {
            Ok(r) => r,
            Err(_) => Err(DirectoryError::Timeout(self.ttls.timeout)),
        };
        let now = self.now();
        match result {
            Ok(groups) => {
                let names: Arc<[String]> = group_names(&groups).into();
                tracing::debug!(user_id = %user_id, groups = names.len(), "directory groups fetched");
                self.cache().succeeded(user_id, names.clone(), now);
                Ok(names)
            }
            Err(e) => {
                let answer = self.cache().failed(user_id, now);
                match &answer {
                    Ok(_) => {
                        tracing::warn!(user_id = %user_id, error = %e, "directory lookup failed; using the last groups (within idp_directory_max_stale)")
                    }
                    Err(u) => {
                        tracing::warn!(user_id = %user_id, error = %e, failing_since = %chrono::DateTime::<chrono::Utc>::from(u.since).to_rfc3339_opts(chrono::SecondsFormat::Secs, true), "directory lookup failed; routes that use groups refuse this person until it answers")
                    }
                }
                answer
            }
        }
    }

    /// Every group of `user_id` from the directory (no cache).
    pub async fn fetch(&self, user_id: &str) -> Result<Vec<Group>, DirectoryError> {
        expand(user_id, |key, page| async move {
            match self.list_page(&key, page.as_deref()).await {
                Err(DirectoryError::Refused { status: 401, .. }) => {
                    // The token was revoked or expired early: get a new one, once.
                    *self.token.lock().await = None;
                    self.list_page(&key, page.as_deref()).await
                }
                other => other,
            }
        })
        .await
    }

    async fn list_page(
        &self,
        key: &str,
        page_token: Option<&str>,
    ) -> Result<GroupPage, DirectoryError> {
        let token = self.access_token().await?;
        let url = groups_url(&self.directory_url, key, page_token);
        let request = self.http.get(url).bearer_auth(token);
        let (status, body) = exchange(request)
            .await
            .map_err(DirectoryError::Unreachable)?;
        if !(200..300).contains(&status) {
            return Err(DirectoryError::Refused {
                status,
                key: key.to_string(),
                error: error_words(&body),
            });
        }
        parse_page(&body).ok_or_else(|| DirectoryError::Malformed(key.to_string()))
    }

    /// A valid access token: the cached one, or a new one from the JWT-bearer grant.
    async fn access_token(&self) -> Result<String, DirectoryError> {
        let mut cached = self.token.lock().await;
        let now = unix(self.now());
        if let Some(t) = cached.as_ref()
            && now + TOKEN_EARLY_SECS < t.expires_at
        {
            return Ok(t.value.clone());
        }
        let assertion = self
            .signer
            .assertion(now)
            .map_err(|e| DirectoryError::Sign(e.to_string()))?;
        let request = self
            .http
            .post(self.token_url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(token_request_body(&assertion));
        let (status, body) = exchange(request)
            .await
            .map_err(DirectoryError::TokenEndpoint)?;
        if !(200..300).contains(&status) {
            return Err(DirectoryError::TokenRefused {
                status,
                error: error_words(&body),
            });
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| DirectoryError::TokenMalformed)?;
        if answer.access_token.is_empty() {
            return Err(DirectoryError::TokenMalformed);
        }
        let expires_at = now + answer.expires_in.unwrap_or(ASSERTION_TTL_SECS);
        let value = answer.access_token;
        *cached = Some(Token {
            value: value.clone(),
            expires_at,
        });
        tracing::debug!(
            expires_in = expires_at - now,
            "directory access token obtained"
        );
        Ok(value)
    }
}

/// Sends a request that expects JSON: its status and body, or why it got none.
async fn exchange(request: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>), String> {
    let response = request
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| error_chain(&e))?;
    Ok((status, body.to_vec()))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
