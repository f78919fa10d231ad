//! Personal access tokens (issue 13): what lets `opencode attach`, `curl` and CI scripts
//! reach a person's own backend without a browser.
//!
//! A token is `gatehouse_pat_<id>_<secret>`: a prefix that scanners (and Gatehouse itself)
//! recognise, a public id (20 hex digits, logged and listed), and 256 random bits. The
//! store keeps the id, the SHA-256 of the secret (a hash of a random 256-bit value needs
//! no slow KDF: there is nothing to guess), the identity the token speaks for, the route
//! labels it may be used on and its times. A token is decided as a session would be: it is
//! refused after its expiry, after it was revoked (its row is deleted), and when the
//! person's "not before" time (sign out of every browser, an administrator's sign-out) is
//! at or after its creation.
//!
//! Last-used times are kept in memory and written in batches ([`Auth::flush_token_use`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::session::{SESSION_VERSION, Session, UnixTime, VerifiedIdentity};
use crate::store::{StoreError, StoredToken};
use crate::{Auth, person_key};

/// What every Gatehouse token starts with.
pub const TOKEN_PREFIX: &str = "gatehouse_pat_";
const ID_LEN: usize = 20;
const SECRET_LEN: usize = 43;
/// The longest name a token may have.
pub const MAX_NAME_CHARS: usize = 64;
/// The most tokens one person may hold at once.
pub const MAX_TOKENS_PER_PERSON: usize = 50;

/// Whether `s` looks like a Gatehouse token (its prefix): then Gatehouse consumes it, and
/// it never reaches an upstream, valid or not.
pub fn is_gatehouse_token(s: &str) -> bool {
    s.starts_with(TOKEN_PREFIX)
}

/// The identity a token speaks for: the facts of the session it was made in.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenIdentity {
    iss: String,
    sub: String,
    email: String,
    email_verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hd: Option<String>,
}

/// A token as the person's list shows it (never the token itself).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    /// Its public id.
    pub id: String,
    /// The name the person gave it.
    pub name: String,
    /// Its last four characters.
    pub last4: String,
    /// The route labels it may be used on.
    pub routes: Vec<String>,
    /// When it was made.
    pub created: UnixTime,
    /// When it stops working.
    pub expires: UnixTime,
    /// When it was last used, if ever.
    pub last_used: Option<UnixTime>,
}

/// A token just made: the only time its full text exists outside the client.
#[derive(Debug)]
pub struct MintedToken {
    /// The token, shown once.
    pub token: Zeroizing<String>,
    /// What the list will show of it.
    pub info: TokenInfo,
}

/// What a verified token allows beyond the identity: the routes, and its name for the log.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// Its public id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The route labels it may be used on.
    pub routes: Vec<String>,
}

/// Why a token was refused. The messages are safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejected {
    /// It does not have the shape of a Gatehouse token.
    #[error("this is not a Gatehouse access token (it should start with `gatehouse_pat_`)")]
    Malformed,
    /// No such token (never made, revoked, or the secret part is wrong).
    #[error("unknown or revoked access token")]
    Unknown,
    /// Past its expiry.
    #[error("the access token has expired; make a new one on the user page")]
    Expired,
    /// The person signed out of every browser (or was signed out) after it was made.
    #[error("the access token was revoked by a sign-out; make a new one on the user page")]
    SignedOut,
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The name is empty, too long or has control characters.
    #[error("give the token a name of 1 to {MAX_NAME_CHARS} printable characters")]
    BadName,
    /// The person already holds [`MAX_TOKENS_PER_PERSON`] tokens.
    #[error("you already have {MAX_TOKENS_PER_PERSON} tokens; revoke one first")]
    TooMany,
    /// No route to bind it to.
    #[error("choose at least one route the token may be used on")]
    NoRoutes,
    /// It could not be recorded.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn secret_hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits a token into its id and secret, if it has the shape of one.
fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    if rest.len() != ID_LEN + 1 + SECRET_LEN || !rest.is_char_boundary(ID_LEN) {
        return None;
    }
    let (id, sep_secret) = rest.split_at(ID_LEN);
    let secret = sep_secret.strip_prefix('_')?;
    let id_ok = id
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let secret_ok = secret
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (id_ok && secret_ok).then_some((id, secret))
}

fn info(t: &StoredToken, pending: Option<UnixTime>) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        last4: t.last4.clone(),
        routes: t.routes.clone(),
        created: t.created,
        expires: t.expires,
        last_used: match (t.last_used, pending) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
    }
}

impl Auth {
    /// Makes a token for the signed-in person, valid on `routes` (route labels) for
    /// `lifetime` seconds, and records it. The caller caps the lifetime.
    pub fn mint_token(
        &self,
        id: &VerifiedIdentity,
        name: &str,
        lifetime: u64,
        routes: Vec<String>,
        now: UnixTime,
    ) -> Result<MintedToken, MintError> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(MintError::BadName);
        }
        if routes.is_empty() {
            return Err(MintError::NoRoutes);
        }
        let s = id.session();
        let person = person_key(&s.iss, &s.sub);
        if self.store.access_tokens(&person).len() >= MAX_TOKENS_PER_PERSON {
            return Err(MintError::TooMany);
        }
        let mut raw = [0u8; 10];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
        let token_id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let secret = Zeroizing::new(crate::random_token(32));
        let token = Zeroizing::new(format!("{TOKEN_PREFIX}{token_id}_{}", secret.as_str()));
        // Dated after the person's last "sign out everywhere", as a new session is.
        let created = self.fresh_iat(&s.iss, &s.sub, now);
        let identity = TokenIdentity {
            iss: s.iss.clone(),
            sub: s.sub.clone(),
            email: s.email.clone(),
            email_verified: s.email_verified,
            name: s.name.clone(),
            groups: s.groups.clone(),
            hd: s.hd.clone(),
        };
        let row = StoredToken {
            id: token_id,
            person,
            secret_sha256: secret_hash(&secret),
            name: name.to_string(),
            last4: token[token.len() - 4..].to_string(),
            identity: serde_json::to_string(&identity).unwrap_or_default(),
            routes,
            created,
            expires: now + lifetime.max(1),
            last_used: None,
        };
        self.store.put_access_token(&row)?;
        Ok(MintedToken {
            token,
            info: info(&row, None),
        })
    }

    /// The identity a token speaks for and what it allows, or why it is refused. A use is
    /// remembered for the token's last-used time.
    pub fn verify_token(
        &self,
        token: &str,
        now: UnixTime,
    ) -> Result<(VerifiedIdentity, TokenGrant), TokenRejected> {
        let (id, secret) = parse(token).ok_or(TokenRejected::Malformed)?;
        let row = self.store.access_token(id).ok_or(TokenRejected::Unknown)?;
        let hash = secret_hash(secret);
        if !bool::from(hash.as_bytes().ct_eq(row.secret_sha256.as_bytes())) {
            return Err(TokenRejected::Unknown);
        }
        if now >= row.expires {
            return Err(TokenRejected::Expired);
        }
        let who: TokenIdentity = match serde_json::from_str(&row.identity) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(token_id = %row.id, error = %e, "a stored access token's identity does not read; refused");
                return Err(TokenRejected::Unknown);
            }
        };
        let session = Session {
            sid: format!("pat:{}", row.id),
            sub: who.sub,
            email: who.email,
            email_verified: who.email_verified,
            name: who.name,
            groups: who.groups,
            iss: who.iss,
            hd: who.hd,
            iat: row.created,
            exp: row.expires,
            v: SESSION_VERSION,
        };
        if self.check_not_revoked(&session, now).is_err() {
            return Err(TokenRejected::SignedOut);
        }
        self.token_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row.id.clone(), now);
        Ok((
            VerifiedIdentity::new(session),
            TokenGrant {
                id: row.id,
                name: row.name,
                routes: row.routes,
            },
        ))
    }

    /// The person's tokens, oldest first (with uses not yet written).
    pub fn tokens(&self, id: &VerifiedIdentity) -> Vec<TokenInfo> {
        let s = id.session();
        let pending = self.token_use.lock().unwrap_or_else(|p| p.into_inner());
        self.store
            .access_tokens(&person_key(&s.iss, &s.sub))
            .iter()
            .map(|t| info(t, pending.get(&t.id).copied()))
            .collect()
    }

    /// Revokes the person's token `token_id`, or all of their tokens (`None`). Answers the
    /// ids revoked (empty: there was no such token of theirs).
    pub fn revoke_tokens(
        &self,
        iss: &str,
        sub: &str,
        token_id: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let ids = self
            .store
            .remove_access_tokens(&person_key(iss, sub), token_id)?;
        let mut pending = self.token_use.lock().unwrap_or_else(|p| p.into_inner());
        for i in &ids {
            pending.remove(i);
        }
        Ok(ids)
    }

    /// Deletes every token whose person has the address `email` (any letter case).
    pub(crate) fn revoke_tokens_of_email(&self, email: &str) -> Result<Vec<String>, StoreError> {
        let email = email.trim();
        let mut people: Vec<(String, String)> = Vec::new();
        for t in self.store.all_access_tokens() {
            if let Ok(who) = serde_json::from_str::<TokenIdentity>(&t.identity)
                && who.email.eq_ignore_ascii_case(email)
                && !people.contains(&(who.iss.clone(), who.sub.clone()))
            {
                people.push((who.iss, who.sub));
            }
        }
        let mut ids = Vec::new();
        for (iss, sub) in people {
            ids.extend(self.revoke_tokens(&iss, &sub, None)?);
        }
        Ok(ids)
    }

    /// Writes the last-used times gathered since the last call, in one write.
    pub fn flush_token_use(&self) -> Result<(), StoreError> {
        let used: HashMap<String, UnixTime> =
            std::mem::take(&mut *self.token_use.lock().unwrap_or_else(|p| p.into_inner()));
        let used: Vec<(String, UnixTime)> = used.into_iter().collect();
        self.store.touch_access_tokens(&used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_shape_parses() {
        let id = "0123456789abcdef0123";
        let secret = "A".repeat(SECRET_LEN);
        let good = format!("{TOKEN_PREFIX}{id}_{secret}");
        assert_eq!(parse(&good), Some((id, secret.as_str())));
        for bad in [
            format!("{TOKEN_PREFIX}{id}-{secret}"),
            format!("{TOKEN_PREFIX}{}_{secret}", id.to_uppercase()),
            format!("{TOKEN_PREFIX}{id}_{secret}A"),
            format!("{TOKEN_PREFIX}{id}_{}", &secret[1..]),
            format!("{TOKEN_PREFIX}{id}_{}é", &secret[2..]),
            format!("ghp_{id}_{secret}"),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
