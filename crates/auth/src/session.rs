//! The session, the in-flight login and the cross-host handoff, each a sealed value.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use serde::{Deserialize, Serialize};

use crate::seal::{MAX_CHUNKS, Sealer, UnsealError, join_chunks, split_chunks};

/// Seconds since the Unix epoch.
pub type UnixTime = u64;

/// What Gatehouse remembers about a signed-in person (inside the sealed session cookie).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random session id (for the sign-out CSRF token and JWT `jti` prefix).
    pub sid: String,
    /// The IdP's subject (`sub`).
    pub sub: String,
    /// The person's email address, from the ID token.
    pub email: String,
    /// The ID token's `email_verified` (`false` when it did not say).
    pub email_verified: bool,
    /// The person's display name, if the IdP gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The ID token's `groups` claim ([`VerifiedIdentity::groups`] gives the groups in use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The issuer that signed the person in.
    pub iss: String,
    /// Google's `hd` claim: the Workspace domain the account belongs to (none for a
    /// consumer account, even one registered with a work address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hd: Option<String>,
    /// When the person signed in.
    pub iat: UnixTime,
    /// When the session ends: from then on its cookie is refused.
    pub exp: UnixTime,
    /// What this session records ([`SESSION_VERSION`] for new ones; 0 for sessions made
    /// before the field existed). A session older than what the checks need is sent to sign
    /// in again (without a page) rather than judged on facts it does not hold.
    #[serde(default)]
    pub v: u8,
}

/// The session version new sessions get. 1: Google's `hd` is recorded (issue 11).
pub const SESSION_VERSION: u8 = 1;

/// A session that came out of a cookie or handoff that verified and has not expired.
/// Only this crate can make one, so an unchecked identity can never reach an upstream.
#[derive(Debug, Clone)]
pub struct VerifiedIdentity {
    /// Shared with the opened-cookie cache ([`SessionCodec::decode`]): a request's identity
    /// is a reference count, not a copy of every claim.
    session: Arc<Session>,
    /// Groups from the Google directory, when it is used; they replace the session's.
    directory_groups: Option<Arc<[String]>>,
}

impl VerifiedIdentity {
    pub(crate) fn new(session: impl Into<Arc<Session>>) -> Self {
        VerifiedIdentity {
            session: session.into(),
            directory_groups: None,
        }
    }
    /// The same identity with the groups the directory gave (only the directory module
    /// sets them, so they too come from a checked source).
    pub(crate) fn with_directory_groups(mut self, groups: Arc<[String]>) -> Self {
        self.directory_groups = Some(groups);
        self
    }
    /// The person's groups: the directory's when Gatehouse reads the Google directory
    /// (empty when it could not), else the ID token's `groups` claim.
    pub fn groups(&self) -> &[String] {
        match &self.directory_groups {
            Some(g) => g,
            None => &self.session.groups,
        }
    }
    /// The verified session.
    pub fn session(&self) -> &Session {
        &self.session
    }
    /// The person's email address.
    pub fn email(&self) -> &str {
        &self.session.email
    }
    /// The `user` claim: the IdP subject, as Pomerium sends it.
    pub fn user(&self) -> &str {
        &self.session.sub
    }
}

/// Why a session cookie was not accepted (each means: sign in again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRejected {
    /// No session cookie, or a chunked one with a chunk missing or a bad count.
    #[error("no session cookie")]
    Missing,
    /// The cookie did not open.
    #[error("session cookie refused: {0}")]
    Unseal(#[from] UnsealError),
    /// The cookie opened but does not hold a session.
    #[error("session cookie does not decode")]
    Garbled,
    /// The session is past its `exp`.
    #[error("session expired")]
    Expired,
    /// The session was ended by sign-out, or began before the person's "not before" time.
    #[error("session was signed out")]
    Revoked,
    /// The session was made by an earlier Gatehouse and lacks a fact the checks need (a
    /// Google session without `hd`): signing in again makes a complete one.
    #[error("session is from an earlier version; signing in again")]
    Outdated,
}

/// Reads and writes the session cookie (chunked when large).
pub struct SessionCodec {
    pub(crate) name: String,
    pub(crate) sealer: Sealer,
    /// Cookie values this codec has opened, and what they held (see [`SessionCodec::decode`]).
    pub(crate) opened: Mutex<LruCache<Box<str>, Arc<Session>>>,
}

/// Opened session cookies remembered; a small team's browsers fit many times over.
const OPENED_CACHE_ENTRIES: usize = 512;
/// A sealed value longer than this (a person in hundreds of groups) is opened every time
/// rather than remembered, so the cache stays under ~4 MB however it is filled.
const OPENED_CACHE_MAX_VALUE: usize = 8 * 1024;

/// An empty cache of opened session cookies, for a new [`SessionCodec`].
pub(crate) fn opened_cache() -> Mutex<LruCache<Box<str>, Arc<Session>>> {
    Mutex::new(LruCache::new(
        NonZeroUsize::new(OPENED_CACHE_ENTRIES).unwrap_or(NonZeroUsize::MIN),
    ))
}

impl SessionCodec {
    /// Cookie `(name, value)` pairs holding `session`.
    pub fn encode(&self, session: &Session) -> Vec<(String, String)> {
        let json = serde_json::to_vec(session).unwrap_or_default();
        split_chunks(&self.name, &self.sealer.seal(&self.name, &json))
    }

    /// The verified session from the request's cookies, or why there is none.
    pub fn decode<'a>(
        &self,
        get: impl Fn(&str) -> Option<&'a str>,
        now: UnixTime,
    ) -> Result<VerifiedIdentity, SessionRejected> {
        let sealed = join_chunks(&self.name, get).ok_or(SessionRejected::Missing)?;
        // Opening (base64, AES-GCM, JSON) is most of a signed-in request's own cost, and a
        // browser sends the same value on every request. A value seen before is taken from
        // the cache: the key is the whole sealed value, tag included, so a hit means these
        // exact bytes were authenticated by this codec's key (a new key comes with a new
        // codec and an empty cache). Expiry is checked on every use; revocation is the
        // caller's, also on every use.
        let remembered = self
            .opened
            .lock()
            .ok()
            .and_then(|mut c| c.get(sealed.as_str()).cloned());
        let session = match remembered {
            Some(s) => s,
            None => {
                let json = self.sealer.open(&self.name, &sealed)?;
                let session: Arc<Session> =
                    Arc::new(serde_json::from_slice(&json).map_err(|_| SessionRejected::Garbled)?);
                if sealed.len() <= OPENED_CACHE_MAX_VALUE
                    && let Ok(mut c) = self.opened.lock()
                {
                    c.put(sealed.into_boxed_str(), Arc::clone(&session));
                }
                session
            }
        };
        if now >= session.exp {
            return Err(SessionRejected::Expired);
        }
        Ok(VerifiedIdentity::new(session))
    }

    /// The session cookie's name (that of its first chunk).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every name a session cookie may have: the first chunk `<name>` and the further ones
    /// `<name>_1` … (to delete a session whole).
    pub fn chunk_names(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.name.clone())
            .chain((1..MAX_CHUNKS).map(move |i| format!("{}_{i}", self.name)))
    }

    /// Chunks a browser still holds (`present`) beyond the `written` ones of a new, smaller
    /// session: they must be deleted, or they would be read as part of it.
    pub fn stale_chunks(&self, written: usize, present: impl Fn(&str) -> bool) -> Vec<String> {
        self.chunk_names()
            .skip(written.max(1))
            .filter(|n| present(n))
            .collect()
    }

    /// Whether a cookie (by its name) is one of Gatehouse's: the session, its chunks, and
    /// the `<name>_…` cookies of a sign-in. Upstreams never see these, and may not set them.
    pub fn is_own_cookie(&self, cookie_name: &[u8]) -> bool {
        is_own_cookie(&self.name, cookie_name)
    }
}

/// [`SessionCodec::is_own_cookie`] for the session cookie called `name`.
pub fn is_own_cookie(name: &str, cookie_name: &[u8]) -> bool {
    cookie_name == name.as_bytes()
        || cookie_name
            .strip_prefix(name.as_bytes())
            .is_some_and(|rest| rest.first() == Some(&b'_'))
}

/// The in-flight login, kept in a short-lived sealed cookie (not server memory), so it
/// survives a restart and works across replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginState {
    /// The `state` sent to the IdP; the callback's must match it.
    pub state: String,
    /// The `nonce` sent to the IdP; the ID token must carry it.
    pub nonce: String,
    /// The PKCE verifier, sent with the code.
    pub pkce_verifier: String,
    /// Where to go after sign-in (checked against the routes before it was stored).
    pub return_url: String,
    /// The `redirect_uri` sent to the IdP (must be sent again with the code).
    pub redirect_uri: String,
    /// Two-host flow: the hash of the route host's `<cookie>_handoff` cookie, carried into
    /// the handoff so only the browser that started the sign-in can use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// When the login stops being accepted ([`crate::LOGIN_TTL_SECS`] after it began).
    pub exp: UnixTime,
}

/// A one-time token that carries a fresh session from the authenticate host to a route host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handoff {
    /// The session to set on the route host.
    pub session: Session,
    /// The route host this handoff is for (another host refuses it).
    pub host: String,
    /// Where to send the browser on the route host once the session is set.
    pub return_url: String,
    /// Hash of the `<cookie>_handoff` cookie the route host set on the browser that started
    /// the sign-in ([`crate::handoff_binding`]).
    pub binding: String,
    /// When the token stops being accepted ([`crate::HANDOFF_TTL_SECS`] after it was made).
    pub exp: UnixTime,
    /// Unique id, remembered until `exp` so the token works once.
    pub jti: String,
}

/// Asks the authenticate host to end its own session too (sealed, short-lived).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignOutRequest {
    /// Where the authenticate host sends the browser afterwards.
    pub return_url: String,
    /// The session being ended: the authenticate host ends its own only if it is the same.
    pub sid: String,
    /// When the request stops being accepted ([`crate::HANDOFF_TTL_SECS`] after it was made).
    pub exp: UnixTime,
}
