//! People's LLM provider keys as Gatehouse holds them (issue 12, docs/relay.md). A key never
//! reaches a backend: the relay adds it to the backend's requests on their way out.
//!
//! - **Memory** ([`KeyRing`]): the keys of people who are active, zeroized when dropped.
//!   Wiped for a person at sign-out, at "sign out of every browser", and once none of their
//!   backends runs (an idle stop); a Gatehouse restart wipes it all.
//! - **Ephemeral mode** (the default): the key is also sealed in a cookie of its own in the
//!   browser that entered it ([`KeyCookie`]), bound to the person and to that session's id,
//!   so the next request from that browser restores what memory lost. Another browser must
//!   enter the key again.
//! - **Persistent mode**: the state store holds the key encrypted (gatehouse-auth's vault);
//!   memory is only a cache of it.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use gatehouse_auth::seal::Sealer;
use gatehouse_backends::PersonId;
use gatehouse_config::{Config, KeyMode};

/// The longest key accepted: far above any provider's (OpenAI's are ~170 characters), far
/// below what would strain the key cookie.
pub(crate) const MAX_KEY_LEN: usize = 1024;

/// A key held in memory.
pub(crate) struct HeldKey {
    pub key: Zeroizing<String>,
    /// When it was entered (ms since the epoch).
    pub added_ms: u64,
    pub mode: KeyMode,
}

struct Held {
    email: String,
    keys: HashMap<String, HeldKey>,
    /// Key cookies already restored from (their hashes): a cookie is opened once, not on
    /// every request.
    restored: HashSet<u64>,
    touched: Instant,
}

impl Held {
    /// The person's entry, made (empty) if they have none.
    fn entry<'a>(
        people: &'a mut HashMap<PersonId, Held>,
        person: &PersonId,
        email: &str,
    ) -> &'a mut Held {
        people.entry(person.clone()).or_insert_with(|| Held {
            email: email.to_string(),
            keys: HashMap::new(),
            restored: HashSet::new(),
            touched: Instant::now(),
        })
    }
}

/// What the keys page shows of a key: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyView {
    pub provider: String,
    pub last4: String,
    pub added_ms: u64,
    pub mode: KeyMode,
}

/// The last four characters of `key`, which is all any page or log shows of it.
pub(crate) fn last4(key: &str) -> String {
    let n = key.chars().count();
    key.chars().skip(n.saturating_sub(4)).collect()
}

/// The keys in memory, per person. Cheap to share; a reload keeps it.
pub struct KeyRing {
    people: Mutex<HashMap<PersonId, Held>>,
    hasher: std::collections::hash_map::RandomState,
    cookie: KeyCookieCodec,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyRing([redacted])")
    }
}

impl KeyRing {
    /// An empty ring whose key cookies are sealed from `config`'s cookie secret (and opened
    /// with its previous ones too).
    pub fn new(config: &Config) -> Self {
        KeyRing {
            people: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
            cookie: KeyCookieCodec::new(config),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PersonId, Held>> {
        self.people.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The person's key for `provider` and their email (for the audit line).
    pub(crate) fn get(
        &self,
        person: &PersonId,
        provider: &str,
    ) -> Option<(Zeroizing<String>, String)> {
        let mut people = self.lock();
        let held = people.get_mut(person)?;
        held.touched = Instant::now();
        let k = held.keys.get(provider)?;
        Some((k.key.clone(), held.email.clone()))
    }

    /// The email of a person with keys in memory.
    pub(crate) fn email(&self, person: &PersonId) -> Option<String> {
        self.lock().get(person).map(|h| h.email.clone())
    }

    /// Holds `key` as the person's key for `provider`.
    pub(crate) fn set(&self, person: &PersonId, email: &str, provider: &str, key: HeldKey) {
        let mut people = self.lock();
        let held = Held::entry(&mut people, person, email);
        held.touched = Instant::now();
        held.keys.insert(provider.to_string(), key);
    }

    /// [`KeyRing::set`], only if no key for `provider` is held and `unchanged()` (asked
    /// under the ring's lock, so a removal that takes the lock after it sees this key).
    pub(crate) fn set_if(
        &self,
        person: &PersonId,
        email: &str,
        provider: &str,
        key: HeldKey,
        unchanged: impl FnOnce() -> bool,
    ) {
        let mut people = self.lock();
        let held = Held::entry(&mut people, person, email);
        if held.keys.contains_key(provider) || !unchanged() {
            return;
        }
        held.touched = Instant::now();
        held.keys.insert(provider.to_string(), key);
    }

    /// Drops the person's key for `provider` from memory.
    pub(crate) fn remove(&self, person: &PersonId, provider: &str) {
        if let Some(held) = self.lock().get_mut(person) {
            held.keys.remove(provider);
        }
    }

    /// Wipes every key of the person from memory (sign-out). Whether any was held.
    pub(crate) fn forget(&self, person: &PersonId) -> bool {
        self.lock()
            .remove(person)
            .is_some_and(|h| !h.keys.is_empty())
    }

    /// The person's keys in memory, as the keys page shows them.
    pub(crate) fn views(&self, person: &PersonId) -> Vec<KeyView> {
        let people = self.lock();
        let Some(held) = people.get(person) else {
            return Vec::new();
        };
        let mut out: Vec<KeyView> = held
            .keys
            .iter()
            .map(|(p, k)| KeyView {
                provider: p.clone(),
                last4: last4(&k.key),
                added_ms: k.added_ms,
                mode: k.mode,
            })
            .collect();
        out.sort_by(|a, b| a.provider.cmp(&b.provider));
        out
    }

    /// Wipes the keys of people for whom `active` is false and who have not been seen for
    /// `grace` (so a key entered just before the backend starts is not lost). The count.
    pub(crate) fn sweep(&self, active: impl Fn(&PersonId) -> bool, grace: Duration) -> usize {
        let mut people = self.lock();
        let before = people.len();
        people.retain(|id, h| active(id) || h.touched.elapsed() < grace);
        before - people.len()
    }

    fn cookie_hash(&self, value: &str) -> u64 {
        self.hasher.hash_one(value)
    }

    /// The key cookie's name (`<session cookie>_keys`).
    pub(crate) fn cookie_name(&self) -> &str {
        &self.cookie.name
    }

    /// Whether the key cookie `value` was already restored into memory for this person.
    pub(crate) fn restored(&self, person: &PersonId, value: &str) -> bool {
        let h = self.cookie_hash(value);
        self.lock()
            .get(person)
            .is_some_and(|held| held.restored.contains(&h))
    }

    /// Restores the keys of a key cookie into memory: only those it holds for this person
    /// and this session, and only those not changed since (`changed_since` says whether the
    /// person's key for a provider was set or removed after the cookie's copy was made).
    /// Returns how many were restored.
    pub(crate) fn restore(
        &self,
        person: &PersonId,
        email: &str,
        sid: &str,
        value: &str,
        changed_since: impl Fn(&str, u64) -> bool,
    ) -> usize {
        let opened = self.cookie.open(value, person, sid);
        let h = self.cookie_hash(value);
        let mut people = self.lock();
        let held = Held::entry(&mut people, person, email);
        held.restored.insert(h);
        held.touched = Instant::now();
        let Some(mut c) = opened else {
            return 0;
        };
        let mut n = 0;
        for k in &mut c.keys {
            if held.keys.contains_key(&k.id) || changed_since(&k.id, k.at) {
                continue;
            }
            let key = Zeroizing::new(std::mem::take(&mut k.key));
            held.keys.insert(
                k.id.clone(),
                HeldKey {
                    key,
                    added_ms: k.at,
                    mode: KeyMode::Ephemeral,
                },
            );
            n += 1;
        }
        n
    }

    /// The key cookie's new value with `provider` set to `key` (or removed, with `None`),
    /// starting from this browser's cookie if it is this person's and session's. `None`:
    /// no key left (delete the cookie).
    pub(crate) fn cookie_with(
        &self,
        old: Option<&str>,
        person: &PersonId,
        sid: &str,
        provider: &str,
        key: Option<(&str, u64)>,
    ) -> Option<String> {
        let mut c = old
            .and_then(|v| self.cookie.open(v, person, sid))
            .unwrap_or_else(|| KeyCookie {
                person: person.as_str().to_string(),
                sid: sid.to_string(),
                keys: Vec::new(),
            });
        c.keys.retain(|k| k.id != provider);
        if let Some((key, at)) = key {
            c.keys.push(CookieKey {
                id: provider.to_string(),
                key: key.to_string(),
                at,
            });
        }
        if c.keys.is_empty() {
            return None;
        }
        let sealed = self.cookie.seal(&c);
        // The browser will send this exact value back: it needs no restoring.
        let h = self.cookie_hash(&sealed);
        if let Some(held) = self.lock().get_mut(person) {
            held.restored.insert(h);
        }
        Some(sealed)
    }
}

/// The person's key for `provider` from the state store (persistent mode), with when it
/// was added. `Err`: the row is there but no configured secret opens it (the message says
/// what to do).
pub(crate) fn stored_key(
    auth: &gatehouse_auth::Auth,
    person: &PersonId,
    provider: &str,
) -> Result<Option<(Zeroizing<String>, u64)>, String> {
    match auth.vault.provider_key(person.as_str(), provider) {
        Ok(Some((key, info))) => Ok(Some((key.into_inner(), info.added_at_ms))),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The person's keys in the state store, as the keys page shows them.
pub(crate) fn stored_views(auth: &gatehouse_auth::Auth, person: &PersonId) -> Vec<KeyView> {
    auth.vault
        .provider_key_infos(person.as_str())
        .into_iter()
        .map(|i| KeyView {
            last4: if i.readable {
                i.last4
            } else {
                "(unreadable: enter it again)".into()
            },
            provider: i.provider,
            added_ms: i.added_at_ms,
            mode: KeyMode::Persistent,
        })
        .collect()
}

/// When the person's key for `provider` last changed.
pub(crate) fn changed_at(
    auth: &gatehouse_auth::Auth,
    person: &PersonId,
    provider: &str,
) -> Option<u64> {
    auth.vault.key_changed_at(person.as_str(), provider)
}

/// The key cookie's name for the session cookie `session_cookie`: `<name>_keys`, so it
/// counts as one of Gatehouse's own (never sent upstream, refused when doubled).
pub(crate) fn cookie_name(session_cookie: &str) -> String {
    format!("{session_cookie}_keys")
}

/// The key cookie's content: the person, the session it belongs to, and the keys.
#[derive(Serialize, Deserialize)]
struct KeyCookie {
    #[serde(rename = "p")]
    person: String,
    sid: String,
    #[serde(rename = "k")]
    keys: Vec<CookieKey>,
}

#[derive(Serialize, Deserialize)]
struct CookieKey {
    id: String,
    key: String,
    /// When it was entered (ms since the epoch).
    at: u64,
}

impl Drop for CookieKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

/// Seals and opens key cookies with a key of their own (its own HKDF purpose of the
/// cookie secret), under the cookie's name as associated data.
struct KeyCookieCodec {
    name: String,
    sealer: Sealer,
}

const KEY_COOKIE_PURPOSE: &str = "provider-keys-cookie";

impl KeyCookieCodec {
    fn new(config: &Config) -> Self {
        let mut sealer = Sealer::new(config.cookie.secret.expose(), KEY_COOKIE_PURPOSE);
        for prev in &config.cookie.previous_secrets {
            sealer = sealer.with_previous(prev.expose(), KEY_COOKIE_PURPOSE);
        }
        KeyCookieCodec {
            name: cookie_name(&config.cookie.name),
            sealer,
        }
    }

    fn seal(&self, c: &KeyCookie) -> String {
        let json = Zeroizing::new(serde_json::to_vec(c).unwrap_or_default());
        self.sealer.seal(&self.name, &json)
    }

    /// The cookie's keys if it opens and belongs to this person and session.
    fn open(&self, value: &str, person: &PersonId, sid: &str) -> Option<KeyCookie> {
        let json = Zeroizing::new(self.sealer.open(&self.name, value).ok()?);
        let c: KeyCookie = serde_json::from_slice(&json).ok()?;
        (c.person == person.as_str() && c.sid == sid).then_some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> KeyRing {
        let config = gatehouse_config::load_str(
            std::path::Path::new("gatehouse.yaml"),
            "idp_provider: oidc\nidp_provider_url: http://127.0.0.1:9\nidp_client_id: c\n\
             idp_client_secret: s\ncookie_secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
            &std::collections::HashMap::<String, String>::new(),
        )
        .unwrap();
        KeyRing::new(&config)
    }

    fn alice() -> PersonId {
        PersonId::new("https://idp", "alice")
    }

    #[test]
    fn a_key_cookie_restores_only_for_its_person_and_session() {
        let r = ring();
        let c = r
            .cookie_with(None, &alice(), "sid1", "openai", Some(("sk-alice-1234", 5)))
            .unwrap();
        r.forget(&alice());
        // Another session of the same person (after "sign out of every browser"): refused.
        assert_eq!(r.restore(&alice(), "a@x", "sid2", &c, |_, _| false), 0);
        r.forget(&alice());
        // Another person: refused.
        let bob = PersonId::new("https://idp", "bob");
        assert_eq!(r.restore(&bob, "b@x", "sid1", &c, |_, _| false), 0);
        assert!(r.get(&bob, "openai").is_none());
        // Its own: restored.
        assert_eq!(r.restore(&alice(), "a@x", "sid1", &c, |_, _| false), 1);
        assert_eq!(
            r.get(&alice(), "openai").unwrap().0.as_str(),
            "sk-alice-1234"
        );
    }

    #[test]
    fn a_tampered_key_cookie_restores_nothing() {
        let r = ring();
        let c = r
            .cookie_with(None, &alice(), "s", "openai", Some(("sk-1", 1)))
            .unwrap();
        let mut bytes = c.into_bytes();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        r.forget(&alice());
        assert_eq!(r.restore(&alice(), "a@x", "s", &tampered, |_, _| false), 0);
    }

    #[test]
    fn a_key_changed_since_the_cookie_was_made_is_not_restored() {
        let r = ring();
        let c = r
            .cookie_with(None, &alice(), "s", "openai", Some(("sk-old", 10)))
            .unwrap();
        r.forget(&alice());
        assert_eq!(r.restore(&alice(), "a@x", "s", &c, |_, at| at < 20), 0);
        assert!(r.get(&alice(), "openai").is_none());
    }

    #[test]
    fn removing_the_last_key_deletes_the_cookie() {
        let r = ring();
        let c = r
            .cookie_with(None, &alice(), "s", "openai", Some(("sk-1", 1)))
            .unwrap();
        let c2 = r
            .cookie_with(Some(&c), &alice(), "s", "anthropic", Some(("sk-2", 2)))
            .unwrap();
        let c3 = r
            .cookie_with(Some(&c2), &alice(), "s", "openai", None)
            .unwrap();
        r.forget(&alice());
        assert_eq!(r.restore(&alice(), "a@x", "s", &c3, |_, _| false), 1);
        assert!(r.get(&alice(), "openai").is_none());
        assert!(
            r.cookie_with(Some(&c3), &alice(), "s", "anthropic", None)
                .is_none()
        );
    }

    #[test]
    fn sweep_keeps_active_people_and_recent_ones() {
        let r = ring();
        let k = || HeldKey {
            key: Zeroizing::new("sk".into()),
            added_ms: 0,
            mode: KeyMode::Ephemeral,
        };
        r.set(&alice(), "a@x", "openai", k());
        assert_eq!(r.sweep(|_| false, Duration::from_secs(60)), 0);
        assert_eq!(r.sweep(|_| true, Duration::ZERO), 0);
        assert_eq!(r.sweep(|_| false, Duration::ZERO), 1);
        assert!(r.get(&alice(), "openai").is_none());
    }

    #[test]
    fn pages_see_only_the_last_four_characters() {
        assert_eq!(last4("sk-abcdef1234"), "1234");
        assert_eq!(last4("ab"), "ab");
        let r = ring();
        r.set(
            &alice(),
            "a@x",
            "openai",
            HeldKey {
                key: Zeroizing::new("sk-secret-9876".into()),
                added_ms: 7,
                mode: KeyMode::Ephemeral,
            },
        );
        let v = r.views(&alice());
        assert_eq!(v[0].last4, "9876");
        assert!(!format!("{r:?}").contains("secret"));
    }
}
