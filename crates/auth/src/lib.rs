//! Gatehouse authentication: who is this request from?
//!
//! This crate owns everything about identity and its cryptography, and nothing about HTTP
//! routing or Pingora (docs/design.md, "Crates and their seams"):
//! - OIDC sign-in ([`oidc`]): discovery, code flow with PKCE S256 + `state` + `nonce`, and
//!   the full ID-token check;
//! - sealed values ([`seal`]): AES-256-GCM cookies bound to their name, chunked when large;
//! - the session, the in-flight login and the cross-host handoff ([`session`]);
//! - the identity JWT and its JWKS ([`jwt`]);
//! - Google Workspace groups from the Directory API, with their cache ([`directory`]);
//! - the sign-out CSRF token;
//! - people's LLM provider keys in persistent mode, encrypted at rest ([`vault`]);
//! - personal access tokens, kept only as hashes ([`tokens`]), and the IdP's own ID tokens
//!   as bearer credentials ([`Oidc::verify_bearer`]).
//!
//! Only this crate can make a [`VerifiedIdentity`], and the proxy needs one to add identity
//! headers, so an identity that was not checked can never reach an upstream.
//!
//! ```
//! use gatehouse_auth::seal::Sealer;
//! let sealer = Sealer::new(&[1u8; 32], "session");
//! let sealed = sealer.seal("_pomerium", b"hi");
//! assert_eq!(sealer.open("_pomerium", &sealed).unwrap(), b"hi");
//! assert!(sealer.open("_other", &sealed).is_err());
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod directory;
pub mod jwt;
pub mod oidc;
pub mod seal;
pub mod session;
pub mod store;
pub mod tokens;
pub mod vault;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use gatehouse_config::Config;
pub use jwt::{IdentityClaims, IdentitySigner, SigningKeyError};
pub use oidc::{Oidc, OidcError, SignedIn};
use seal::{Sealer, UnsealError};
pub use session::{
    Handoff, LoginState, SESSION_VERSION, Session, SessionCodec, SessionRejected, SignOutRequest,
    UnixTime, VerifiedIdentity,
};
use store::{StateStore, StoreError};
use vault::Vault;

/// How long a login may take between the redirect to the IdP and the callback.
pub const LOGIN_TTL_SECS: u64 = 600;
/// How long a handoff token from the authenticate host is good for.
pub const HANDOFF_TTL_SECS: u64 = 60;
/// Lifetime of each identity JWT sent upstream.
pub const IDENTITY_JWT_TTL_SECS: u64 = 300;
/// How long one signed identity JWT is reused for the same session and host.
pub const IDENTITY_JWT_REUSE_SECS: u64 = 60;
/// The most identity JWTs kept for reuse (expired ones are dropped first).
const JWT_CACHE_MAX: usize = 10_000;

/// Seconds since the Unix epoch, now.
pub fn now() -> UnixTime {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random URL-safe token with `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// Why a setup value was refused at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// `signing_key` is not a usable EC P-256 private key.
    #[error(transparent)]
    SigningKey(#[from] SigningKeyError),
    /// The OIDC client could not be set up (the issuer is not a URL, or no HTTP client).
    #[error(transparent)]
    Oidc(#[from] OidcError),
}

/// Why a callback from the IdP was refused. Each is shown to the person as "Sign-in failed".
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// The request has no login cookie: no sign-in was started in this browser, or it ended.
    #[error("no sign-in is in progress in this browser (the login cookie is missing)")]
    LoginCookieMissing,
    /// The login cookie did not open, or opened but does not hold a login.
    #[error("the login cookie was refused: {0}")]
    LoginCookieRefused(UnsealError),
    /// The sign-in began more than [`LOGIN_TTL_SECS`] ago.
    #[error("the sign-in took too long (over {} minutes)", LOGIN_TTL_SECS / 60)]
    LoginExpired,
    /// The callback's `state` is not the one in this browser's login cookie (compared in
    /// constant time): the callback belongs to another sign-in.
    #[error("the state parameter does not match this browser's sign-in")]
    StateMismatch,
    /// The IdP answered with `error`; holds its code, cut to 64 characters of `[A-Za-z0-9_]`.
    #[error("the identity provider reported an error: {0}")]
    IdpError(String),
    /// This sign-in's `state` was already used by an earlier callback (a replay).
    #[error("this sign-in was already completed or tried once; start again")]
    StateUsed,
    /// The state store could not record the sign-in's `state` (so it could not be made
    /// single-use): refused.
    #[error(
        "Gatehouse could not record this sign-in (its state store failed); try again, and tell your administrator if it keeps failing"
    )]
    NotRecorded,
    /// The callback has neither `error` nor a non-empty `code`.
    #[error("the callback has no authorization code")]
    NoCode,
    /// Redeeming the code or checking the ID token failed.
    #[error(transparent)]
    Oidc(#[from] OidcError),
}

impl CallbackError {
    /// A stable code for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            CallbackError::LoginCookieMissing => "login-cookie-missing",
            CallbackError::LoginCookieRefused(_) => "login-cookie-refused",
            CallbackError::LoginExpired => "login-expired",
            CallbackError::StateMismatch => "state-mismatch",
            CallbackError::IdpError(_) => "idp-error",
            CallbackError::StateUsed => "state-used",
            CallbackError::NotRecorded => "not-recorded",
            CallbackError::NoCode => "no-code",
            CallbackError::Oidc(
                OidcError::IdTokenRefused(_) | OidcError::AzpMismatch { .. } | OidcError::NoEmail,
            ) => "id-token-refused",
            CallbackError::Oidc(OidcError::CodeRefused(_)) => "code-refused",
            CallbackError::Oidc(_) => "idp-unreachable",
        }
    }
}

/// Why a handoff token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoffRejected {
    /// The token did not open (tampered, or not sealed as a handoff with this secret).
    #[error("handoff token refused: {0}")]
    Unseal(UnsealError),
    /// The token opened but does not hold a handoff.
    #[error("handoff token does not decode")]
    Garbled,
    /// The token, or the session it carries, has expired.
    #[error("handoff token expired")]
    Expired,
    /// The token was made for another route host.
    #[error("handoff token is for host {expected:?}, not {found:?}")]
    WrongHost {
        /// The host the token was made for.
        expected: String,
        /// The host it was opened on.
        found: String,
    },
    /// The session it carries was ended (signed out) since it was made.
    #[error("handoff token carries a session that was signed out")]
    Revoked,
    /// The token was already used.
    #[error("handoff token was already used")]
    Replayed,
    /// The browser's `<cookie>_handoff` cookie is missing or does not match the token's
    /// binding.
    #[error("handoff token belongs to a sign-in started in another browser")]
    NotThisBrowser,
}

/// A finished sign-in.
#[derive(Debug)]
pub struct LoginDone {
    /// The new session, for the session cookie.
    pub session: Session,
    /// Where to go now (checked against the routes when the login started).
    pub return_url: String,
    /// Two-host flow: the browser binding to put into the handoff.
    pub binding: Option<String>,
}

/// The key of a person in the store's "not before" table: issuer and subject.
fn person_key(iss: &str, sub: &str) -> String {
    format!("{iss} {sub}")
}

/// The binding stored in a handoff for a browser holding `<cookie>_handoff = nonce`:
/// base64url(SHA-256(nonce)), so the nonce itself never appears in a URL.
pub fn handoff_binding(nonce: &str) -> String {
    use sha2::Digest;
    URL_SAFE_NO_PAD.encode(Sha256::digest(nonce.as_bytes()))
}

/// Identity and its cryptography for one configuration.
pub struct Auth {
    /// Reads and writes the session cookie.
    pub session: SessionCodec,
    /// The OIDC relying party for the configured IdP.
    pub oidc: Oidc,
    /// Signs the identity JWTs and holds their JWKS.
    pub signer: IdentitySigner,
    login: Sealer,
    handoff: Sealer,
    signout: Sealer,
    /// People's provider keys in persistent mode ([`vault`]).
    pub vault: Vault,
    /// The sign-out form's CSRF keys: the current one first, then one per previous cookie
    /// secret (a page loaded before a rotation still signs out).
    csrf_keys: Vec<[u8; 32]>,
    login_cookie: String,
    handoff_cookie: String,
    session_ttl: u64,
    /// `idp_provider: google`: an address speaks for its domain only with a matching `hd`
    /// (also applied to any session Google's issuer signed, see [`Auth::is_google`]).
    google: bool,
    /// Revoked sessions, "not before" times and one-time values ([`store`]).
    store: Arc<dyn StateStore>,
    /// Identity JWTs already signed, by session id and host (see [`Auth::identity_jwt`]).
    jwt_cache: Mutex<HashMap<String, CachedJwt>>,
    /// Access tokens used since their last-used times were written ([`tokens`]).
    token_use: Mutex<HashMap<String, UnixTime>>,
}

struct CachedJwt {
    token: Arc<str>,
    reuse_until: UnixTime,
    /// The groups it carries: a token is not reused once the person's groups change.
    groups: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("oidc", &self.oidc)
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Everything for `config`: a key for each sealed value and the CSRF key, all derived
    /// from the cookie secret, the signing key (a random one for this process when
    /// `signing_key` is not set), the OIDC client, the state store that makes sessions
    /// revocable and one-time values single-use, and the provider-key vault on the same
    /// store. Each `cookie_secret_previous` still opens what it sealed (sessions, sign-ins
    /// under way, handoffs, sign-out requests), so rotating the secret signs nobody out;
    /// everything new is sealed with the current one. Nothing is fetched here: discovery
    /// waits for the first sign-in.
    pub fn new(config: &Config, store: Arc<dyn StateStore>) -> Result<Self, AuthSetupError> {
        let secret = config.cookie.secret.expose();
        let previous: Vec<&[u8; 32]> = config
            .cookie
            .previous_secrets
            .iter()
            .map(|s| s.expose())
            .collect();
        let sealer = |purpose: &str| {
            previous
                .iter()
                .fold(Sealer::new(secret, purpose), |s, old| {
                    s.with_previous(old, purpose)
                })
        };
        let signer = match &config.signing_key {
            Some(pem) => IdentitySigner::from_pem(pem.expose())?,
            None => IdentitySigner::generate()?,
        };
        let csrf_keys = std::iter::once(secret)
            .chain(previous.iter().copied())
            .map(|secret| {
                let hk = hkdf::Hkdf::<Sha256>::new(Some(b"gatehouse-csrf-v1"), secret);
                let mut csrf_key = [0u8; 32];
                if hk.expand(b"sign-out", &mut csrf_key).is_err() {
                    unreachable!("HKDF output length 32 is valid");
                }
                csrf_key
            })
            .collect();
        Ok(Auth {
            session: SessionCodec {
                name: config.cookie.name.clone(),
                sealer: sealer("session"),
                opened: session::opened_cache(),
            },
            oidc: Oidc::new(&config.idp)?,
            signer,
            login: sealer("login"),
            handoff: sealer("handoff"),
            signout: sealer("sign-out"),
            vault: Vault::new(config, store.clone()),
            csrf_keys,
            login_cookie: format!("{}_login", config.cookie.name),
            handoff_cookie: format!("{}_handoff", config.cookie.name),
            session_ttl: config.cookie.expire.as_secs().max(1),
            google: config.idp.provider == gatehouse_config::IdpProvider::Google,
            store,
            jwt_cache: Mutex::new(HashMap::new()),
            token_use: Mutex::new(HashMap::new()),
        })
    }

    /// Name of the short-lived login-state cookie (`<cookie_name>_login`).
    pub fn login_cookie_name(&self) -> &str {
        &self.login_cookie
    }

    /// Name of the cookie that binds a two-host sign-in to its browser (`<cookie_name>_handoff`).
    pub fn handoff_cookie_name(&self) -> &str {
        &self.handoff_cookie
    }

    /// Claims a two-host sign-in binding at the authenticate host: `true` the first time.
    /// A sign-in link works once, so a link leaked after use (history, a shared screenshot)
    /// can't be replayed by someone else to mint a handoff that browser would accept.
    pub fn claim_binding(&self, binding: &str, now: UnixTime) -> bool {
        self.once("sign-in link", binding, now + LOGIN_TTL_SECS, now)
    }

    /// `true` the first time; `false` when seen before, or when the store cannot record it
    /// (refusing is the only safe answer then: the store never forgets to make room).
    fn once(&self, kind: &str, key: &str, until: UnixTime, now: UnixTime) -> bool {
        match self.store.first_use(kind, key, until, now) {
            Ok(fresh) => fresh,
            Err(e) => {
                tracing::error!(error = %e, kind, "cannot record a one-time value; refusing it");
                false
            }
        }
    }

    /// The verified session from the request's cookies, or why there is none: it must
    /// open, be unexpired, not have been ended by sign-out, and have begun after the
    /// person's "not before" time.
    pub fn verify_session<'a>(
        &self,
        get: impl Fn(&str) -> Option<&'a str>,
        now: UnixTime,
    ) -> Result<VerifiedIdentity, SessionRejected> {
        let id = self.session.decode(get, now)?;
        if self.is_google(id.session()) && id.session().v < 1 {
            // Made before `hd` was recorded: a domain rule would refuse a Workspace account.
            return Err(SessionRejected::Outdated);
        }
        self.check_not_revoked(id.session(), now)?;
        Ok(id)
    }

    fn check_not_revoked(&self, s: &Session, now: UnixTime) -> Result<(), SessionRejected> {
        if self.store.session_revoked(&s.sid, now) {
            return Err(SessionRejected::Revoked);
        }
        let ended = |key: &str| {
            self.store
                .not_before(key)
                .is_some_and(|ended_through| s.iat <= ended_through)
        };
        if ended(&person_key(&s.iss, &s.sub)) || ended(&email_key(&s.email)) {
            return Err(SessionRejected::Revoked);
        }
        Ok(())
    }

    /// An administrator's sign-out (`gatehouse sign-out`): every session and access token
    /// of whoever has this email address, begun up to now, is refused from now on, and
    /// their tokens are deleted. Answers the ids of the tokens deleted.
    pub fn sign_out_email(&self, email: &str, now: UnixTime) -> Result<Vec<String>, StoreError> {
        self.store.set_not_before(&email_key(email), now)?;
        self.revoke_tokens_of_email(email)
    }

    /// Sign-out: the session is refused from now on, in every browser and on every host
    /// that holds it, also after a restart, until it would have expired anyway.
    pub fn end_session(&self, s: &Session, now: UnixTime) -> Result<(), StoreError> {
        self.store.revoke_session(&s.sid, s.exp, now)
    }

    /// "Sign out of every browser": every session of this person begun up to now (this
    /// second included) is refused from now on, in every browser. A sign-in after it, even
    /// within the same second, gets a session dated after it ([`Auth::new_session`]), so it
    /// works at once.
    pub fn end_every_session(&self, iss: &str, sub: &str, now: UnixTime) -> Result<(), StoreError> {
        self.store.set_not_before(&person_key(iss, sub), now)
    }

    /// Starts a sign-in. Returns the IdP URL to redirect to, and the sealed login cookie value.
    ///
    /// `switch_account`: the person signed out to use another account, so the IdP is asked to
    /// let them choose (Google's account chooser, `prompt=select_account`; other providers'
    /// login form, `prompt=login`) instead of signing the same account straight back in.
    pub async fn begin_login(
        &self,
        redirect_uri: &str,
        return_url: &str,
        binding: Option<&str>,
        switch_account: bool,
        now: UnixTime,
    ) -> Result<(String, String), OidcError> {
        use openidconnect::core::CoreAuthPrompt;
        let prompt = switch_account.then_some(if self.google {
            CoreAuthPrompt::SelectAccount
        } else {
            CoreAuthPrompt::Login
        });
        let (url, begun) = self.oidc.begin(redirect_uri, prompt).await?;
        let state = LoginState {
            state: begun.state,
            nonce: begun.nonce,
            pkce_verifier: begun.pkce_verifier,
            return_url: return_url.to_string(),
            redirect_uri: redirect_uri.to_string(),
            binding: binding.map(str::to_string),
            exp: now + LOGIN_TTL_SECS,
        };
        let json = serde_json::to_vec(&state).unwrap_or_default();
        Ok((url, self.login.seal(&self.login_cookie, &json)))
    }

    /// Finishes a sign-in from the callback's query (`state`, `code` or `error`) and the
    /// login cookie. On success, a new session and the URL to return to.
    pub async fn finish_login(
        &self,
        login_cookie: Option<&str>,
        query: &HashMap<String, String>,
        now: UnixTime,
    ) -> Result<LoginDone, CallbackError> {
        let sealed = login_cookie.ok_or(CallbackError::LoginCookieMissing)?;
        let json = self
            .login
            .open(&self.login_cookie, sealed)
            .map_err(CallbackError::LoginCookieRefused)?;
        let login: LoginState = serde_json::from_slice(&json)
            .map_err(|_| CallbackError::LoginCookieRefused(UnsealError::Malformed))?;
        if now >= login.exp {
            return Err(CallbackError::LoginExpired);
        }
        let state = query.get("state").map(String::as_str).unwrap_or("");
        if !bool::from(state.as_bytes().ct_eq(login.state.as_bytes())) {
            return Err(CallbackError::StateMismatch);
        }
        // Single-use: a copied login cookie replayed with made-up codes must not drive
        // calls to the token endpoint. Used before the code is even looked at.
        match self
            .store
            .first_use("sign-in state", &login.state, login.exp, now)
        {
            Ok(true) => {}
            Ok(false) => return Err(CallbackError::StateUsed),
            Err(e) => {
                tracing::error!(error = %e, "cannot record a sign-in state; refusing the sign-in");
                return Err(CallbackError::NotRecorded);
            }
        }
        if let Some(err) = query.get("error") {
            let short: String = err
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(CallbackError::IdpError(short));
        }
        let code = query
            .get("code")
            .filter(|c| !c.is_empty())
            .ok_or(CallbackError::NoCode)?;
        let begun = oidc::Begun {
            state: login.state.clone(),
            nonce: login.nonce.clone(),
            pkce_verifier: login.pkce_verifier.clone(),
        };
        let signed_in = self.oidc.finish(code, &begun, &login.redirect_uri).await?;
        Ok(LoginDone {
            session: self.new_session(signed_in, now),
            return_url: login.return_url,
            binding: login.binding,
        })
    }

    /// The identity in an ID token the IdP issued, sent as a bearer on a route that accepts
    /// them ([`Oidc::verify_bearer`]). It stands for this one request: a session id derived
    /// from the token (so its identity JWTs are reused like a session's), valid for as long
    /// as an identity JWT.
    pub async fn verify_idp_bearer(
        &self,
        raw: &str,
        audiences: &[String],
        now: UnixTime,
    ) -> Result<VerifiedIdentity, OidcError> {
        use sha2::Digest;
        let s = self.oidc.verify_bearer(raw, audiences).await?;
        let digest = Sha256::digest(raw.as_bytes());
        let sid = format!("idp:{}", URL_SAFE_NO_PAD.encode(&digest[..12]));
        Ok(VerifiedIdentity::new(session_of(
            s,
            sid,
            now,
            now + IDENTITY_JWT_TTL_SECS,
        )))
    }

    /// When a session or token made now begins: now, or the second after the person last
    /// signed out of every browser if that was this same second (`iat` has whole seconds,
    /// and one dated that second counts as ended).
    pub(crate) fn fresh_iat(&self, iss: &str, sub: &str, now: UnixTime) -> UnixTime {
        match self.store.not_before(&person_key(iss, sub)) {
            Some(ended_through) if ended_through >= now => ended_through + 1,
            _ => now,
        }
    }

    /// A fresh session for a person who just signed in. Its `iat` is now, or the second
    /// after the person last signed out of every browser if that was this same second
    /// (`iat` has whole seconds, and a session dated that second counts as ended).
    pub fn new_session(&self, s: SignedIn, now: UnixTime) -> Session {
        let iat = self.fresh_iat(&s.iss, &s.sub, now);
        session_of(s, random_token(16), iat, now + self.session_ttl)
    }

    /// A one-time token carrying `session` to the route host `host`.
    pub fn seal_handoff(
        &self,
        session: &Session,
        host: &str,
        return_url: &str,
        binding: &str,
        now: UnixTime,
    ) -> String {
        let h = Handoff {
            session: session.clone(),
            host: host.to_string(),
            return_url: return_url.to_string(),
            binding: binding.to_string(),
            exp: now + HANDOFF_TTL_SECS,
            jti: random_token(16),
        };
        self.handoff
            .seal("handoff", &serde_json::to_vec(&h).unwrap_or_default())
    }

    /// Opens a handoff token on route host `host`, in the browser holding
    /// `binding_cookie` (the `<cookie>_handoff` value set when it was sent to sign in).
    /// Refused if the cookie does not match: a handoff taken from one browser and opened in
    /// another would otherwise sign the second one in as the first (login CSRF). Works once
    /// (the store remembers it), and not once its session was signed out.
    pub fn open_handoff(
        &self,
        token: &str,
        host: &str,
        binding_cookie: Option<&str>,
        now: UnixTime,
    ) -> Result<(VerifiedIdentity, String), HandoffRejected> {
        let json = self
            .handoff
            .open("handoff", token)
            .map_err(HandoffRejected::Unseal)?;
        let h: Handoff = serde_json::from_slice(&json).map_err(|_| HandoffRejected::Garbled)?;
        if now >= h.exp {
            return Err(HandoffRejected::Expired);
        }
        if !h.host.eq_ignore_ascii_case(host) {
            return Err(HandoffRejected::WrongHost {
                expected: h.host,
                found: host.to_string(),
            });
        }
        if now >= h.session.exp {
            return Err(HandoffRejected::Expired);
        }
        let expected = binding_cookie.map(handoff_binding).unwrap_or_default();
        if h.binding.is_empty() || !bool::from(expected.as_bytes().ct_eq(h.binding.as_bytes())) {
            return Err(HandoffRejected::NotThisBrowser);
        }
        if self.check_not_revoked(&h.session, now).is_err() {
            return Err(HandoffRejected::Revoked);
        }
        if !self.once("handoff", &h.jti, h.exp, now) {
            return Err(HandoffRejected::Replayed);
        }
        Ok((VerifiedIdentity::new(h.session), h.return_url))
    }

    /// A sealed request for the authenticate host to end its session too.
    pub fn seal_sign_out(&self, return_url: &str, sid: &str, now: UnixTime) -> String {
        let r = SignOutRequest {
            return_url: return_url.to_string(),
            sid: sid.to_string(),
            exp: now + HANDOFF_TTL_SECS,
        };
        self.signout
            .seal("sign-out", &serde_json::to_vec(&r).unwrap_or_default())
    }

    /// Opens a request made by [`Auth::seal_sign_out`]. `None` if it does not open, does not
    /// decode or has expired.
    pub fn open_sign_out(&self, token: &str, now: UnixTime) -> Option<SignOutRequest> {
        let json = self.signout.open("sign-out", token).ok()?;
        let r: SignOutRequest = serde_json::from_slice(&json).ok()?;
        (now < r.exp).then_some(r)
    }

    /// Whether the identity provider vouches that the person belongs to their address's
    /// domain (what `domain` rules and `allowed_domains` need): a verified address, and on
    /// Google also an `hd` (Workspace domain) that is that domain, since anyone can make a
    /// consumer Google account with a work address (Google's own advice: check `hd`). A
    /// `gmail.com` address needs no `hd`: Google is that domain.
    pub fn domain_verified(&self, s: &Session) -> bool {
        if !s.email_verified {
            return false;
        }
        if !self.is_google(s) {
            return true;
        }
        let Some((_, domain)) = s.email.rsplit_once('@') else {
            return false;
        };
        match &s.hd {
            Some(hd) => hd.eq_ignore_ascii_case(domain),
            None => {
                domain.eq_ignore_ascii_case("gmail.com")
                    || domain.eq_ignore_ascii_case("googlemail.com")
            }
        }
    }

    /// Whether Google signed this person in: the provider is `google`, or the issuer is
    /// Google's whatever the provider is called (a Pomerium-style `idp_provider: oidc` with
    /// Google's URL must not skip the `hd` check).
    fn is_google(&self, s: &Session) -> bool {
        self.google
            || matches!(
                s.iss.trim_end_matches('/'),
                "https://accounts.google.com" | "accounts.google.com"
            )
    }

    /// The sign-out form's CSRF token for this session (made with the current secret).
    pub fn csrf_token(&self, id: &VerifiedIdentity) -> String {
        URL_SAFE_NO_PAD.encode(
            self.csrf_mac(&self.csrf_keys[0], id)
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `token` is this session's CSRF token, made with the current or a previous
    /// secret (constant time).
    pub fn check_csrf(&self, id: &VerifiedIdentity, token: &str) -> bool {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(token.as_bytes()) else {
            return false;
        };
        self.csrf_keys
            .iter()
            .any(|key| self.csrf_mac(key, id).verify_slice(&raw).is_ok())
    }

    fn csrf_mac(&self, key: &[u8; 32], id: &VerifiedIdentity) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            unreachable!("HMAC accepts any key length");
        };
        mac.update(id.session().sid.as_bytes());
        mac
    }

    /// The identity JWT for `host` (its `aud` and `iss`).
    ///
    /// A token is signed once per session and host and reused for [`IDENTITY_JWT_REUSE_SECS`]
    /// while the person's groups stay the same (a directory refresh that changes them makes
    /// a new one at once), so an upstream always receives one with at least 4 of its 5
    /// minutes left and current groups. Signing is
    /// most of an authenticated request's cost (an ES256 signature with `jsonwebtoken`,
    /// which parses the key each time: ~29 µs; bench/README.md has the before/after).
    pub fn identity_jwt(
        &self,
        id: &VerifiedIdentity,
        host: &str,
        now: UnixTime,
    ) -> Result<Arc<str>, jsonwebtoken::errors::Error> {
        let s = id.session();
        let key = format!("{} {host}", s.sid);
        if let Ok(cache) = self.jwt_cache.lock()
            && let Some(c) = cache.get(&key)
            && now < c.reuse_until
            && c.groups == id.groups()
        {
            return Ok(c.token.clone());
        }
        let jti = random_token(12);
        let exp = (now + IDENTITY_JWT_TTL_SECS).min(s.exp.max(now + 1));
        let token: Arc<str> = self
            .signer
            .sign(&IdentityClaims {
                iss: host,
                aud: host,
                sub: &s.sub,
                email: &s.email,
                email_verified: s.email_verified,
                user: &s.sub,
                groups: id.groups(),
                name: s.name.as_deref(),
                iat: now,
                exp,
                jti: &jti,
            })?
            .into();
        if let Ok(mut cache) = self.jwt_cache.lock() {
            if cache.len() >= JWT_CACHE_MAX {
                cache.retain(|_, c| c.reuse_until > now);
                if cache.len() >= JWT_CACHE_MAX {
                    cache.clear();
                }
            }
            let reuse_until = (now + IDENTITY_JWT_REUSE_SECS).min(exp);
            cache.insert(
                key,
                CachedJwt {
                    token: token.clone(),
                    reuse_until,
                    groups: id.groups().to_vec(),
                },
            );
        }
        Ok(token)
    }
}

/// The "not before" key of an email address (an administrator's sign-out names a person by
/// address; sessions and tokens carry it).
fn email_key(email: &str) -> String {
    format!("email:{}", email.trim().to_lowercase())
}

/// The session for what an ID token said, with its id and times.
fn session_of(s: SignedIn, sid: String, iat: UnixTime, exp: UnixTime) -> Session {
    Session {
        sid,
        sub: s.sub,
        email: s.email,
        email_verified: s.email_verified,
        name: s.name,
        groups: s.groups,
        iss: s.iss,
        hd: s.hd,
        iat,
        exp,
        v: SESSION_VERSION,
    }
}

#[cfg(any(test, feature = "test-util"))]
pub mod test_util {
    //! Helpers for other crates' tests.
    use super::*;

    /// A verified identity without a sign-in, for tests of header handling.
    pub fn identity(session: Session) -> VerifiedIdentity {
        VerifiedIdentity::new(session)
    }
}

#[cfg(test)]
mod tests;
