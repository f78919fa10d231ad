//! People's LLM provider keys kept by Gatehouse in persistent mode (issue 12,
//! `relay.keys: persistent`), encrypted at rest in the [state store](crate::store).
//!
//! - The master secret is `provider_key_secret` when it is set, else one derived from
//!   `cookie_secret` with HKDF-SHA256 under a purpose of its own, so no session key ever
//!   equals it. With `provider_key_secret` unset, each `cookie_secret_previous` gives a
//!   previous master the same way, which keeps rows sealed before a rotation readable.
//! - Each person's rows are sealed ([`Sealer`], AES-256-GCM) with a key derived from the
//!   master with the person id in the HKDF info, and the person and provider as associated
//!   data: a row copied to another person or another provider does not open.
//! - [`Vault::rotate_provider_keys`] seals again, under the current master, every row that
//!   only a previous master opens, and names the rows that nothing opens (they are left as
//!   they are: the fix may be to put an old secret back).
//! - Keys in the clear live only in [`ProviderKey`] (wiped when dropped, never printed).
//!
//! ```
//! use std::sync::Arc;
//! use gatehouse_auth::store::SqliteStore;
//! use gatehouse_auth::vault::Vault;
//! let store = Arc::new(SqliteStore::in_memory().unwrap());
//! let vault = Vault::from_masters(store, [7u8; 32], &[]);
//! vault.put_provider_key("p1", "openai", "sk-test-abcd1234", 1_000).unwrap();
//! let (key, info) = vault.provider_key("p1", "openai").unwrap().unwrap();
//! assert_eq!(key.expose(), "sk-test-abcd1234");
//! assert_eq!(info.last4, "1234");
//! assert!(vault.provider_key("p2", "openai").unwrap().is_none());
//! ```

use std::fmt;
use std::sync::Arc;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use gatehouse_config::Config;

use crate::seal::{Sealer, UnsealError};
use crate::store::{StateStore, StoreError, StoredKey};

/// HKDF salt of the master derived from a cookie secret (when `provider_key_secret` is unset).
const MASTER_SALT: &[u8] = b"gatehouse-provider-keys-v1";

/// Fewer characters than this, and [`KeyInfo::last4`] stays empty: showing four of them
/// would give away too much of the key.
const LAST4_MIN_LEN: usize = 8;

const FIX_COOKIE: &str =
    "put the old cookie_secret in cookie_secret_previous, or remove the key and enter it again";
const FIX_PROVIDER_SECRET: &str = "set provider_key_secret back to the one it was sealed with, or remove the key and enter it again";
const FIX_ROW: &str = "remove the key and enter it again";

/// A provider key in the clear. Wiped from memory when dropped; `Debug` prints no key.
#[derive(Clone)]
pub struct ProviderKey(Zeroizing<String>);

impl ProviderKey {
    /// Wraps a key (taken, not copied).
    pub fn new(key: String) -> Self {
        ProviderKey(Zeroizing::new(key))
    }

    /// The key itself, to send to the provider. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key as a [`Zeroizing<String>`], for code that keeps it in memory itself.
    pub fn into_inner(self) -> Zeroizing<String> {
        self.0
    }
}

impl From<Zeroizing<String>> for ProviderKey {
    fn from(key: Zeroizing<String>) -> Self {
        ProviderKey(key)
    }
}

impl fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProviderKey([redacted])")
    }
}

/// What may be shown about a stored key: never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The provider id.
    pub provider: String,
    /// The key's last four characters, to tell keys apart on the keys page; empty when the
    /// row is unreadable or the key is shorter than 8 characters.
    pub last4: String,
    /// When it was set, milliseconds since the epoch.
    pub added_at_ms: u64,
    /// Whether a configured secret opens it (`false`: the relay answers `key-unreadable`
    /// until the person enters it again or the old secret is put back).
    pub readable: bool,
}

/// Why a stored row did not open. The row itself is never part of it.
///
/// The key id in a sealed value is one byte, so a row sealed with another secret is
/// [`Unreadable::Changed`] for about one person in 256: both name the same fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreadable {
    /// No configured secret has the key it names: sealed with another secret (or, as
    /// this cannot be told apart, copied from another person).
    #[error("it was sealed with another secret (or the row was copied from another person)")]
    OtherSecret,
    /// A configured key id, but the tag does not verify: the row was changed, or copied
    /// from another provider or person, or sealed with another secret whose key id is the
    /// same.
    #[error(
        "the row was changed or copied from another person or provider, or sealed with another secret"
    )]
    Changed,
    /// Not a sealed value, a format this build does not read, or not text once opened.
    #[error("the row is not a sealed key")]
    NotAKey,
}

/// Why a stored key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The row is there but does not open with any configured secret. The relay answers
    /// `key-unreadable`; the message names the fix for the operator.
    #[error("the stored {provider} key cannot be decrypted: {reason}; {fix}")]
    Unreadable {
        /// The provider id.
        provider: String,
        /// What is wrong with the row.
        reason: Unreadable,
        /// What the operator (or the person) should do.
        fix: &'static str,
    },
}

/// What [`Vault::rotate_provider_keys`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Rows already sealed under the current secret.
    pub current: usize,
    /// Rows sealed again under the current secret (only a previous one opened them).
    pub resealed: usize,
    /// Rows no configured secret opens, as (person, provider): left untouched.
    pub unreadable: Vec<(String, String)>,
}

/// Seals, stores and opens provider keys. One per [`crate::Auth`].
pub struct Vault {
    store: Arc<dyn StateStore>,
    /// The master that seals (and opens).
    current: Zeroizing<[u8; 32]>,
    /// Earlier masters, which still open what they sealed (rotation).
    previous: Vec<Zeroizing<[u8; 32]>>,
    /// Whether the masters are `provider_key_secret` (for the fix an error names).
    explicit: bool,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("store", &self.store)
            .field("current", &format_args!("[redacted]"))
            .field(
                "previous",
                &format_args!("[{} redacted]", self.previous.len()),
            )
            .finish()
    }
}

/// The master derived from a cookie secret: its own HKDF purpose, so it never equals a key
/// that seals sessions.
fn derive_master(cookie_secret: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(MASTER_SALT), cookie_secret);
    let mut okm = Zeroizing::new([0u8; 32]);
    if hk.expand(b"master", &mut okm[..]).is_err() {
        unreachable!("HKDF output length 32 is valid");
    }
    okm
}

/// The sealer purpose of one person's keys: the person id goes into the HKDF info, so each
/// person's rows have a key of their own.
fn purpose(person: &str) -> String {
    format!("provider-key/{person}")
}

/// The associated data of a row: person and provider, length-prefixed so no pair of ids
/// can be read as another.
fn binding(person: &str, provider: &str) -> String {
    format!("{}:{person}\n{provider}", person.len())
}

fn last4(key: &str) -> String {
    if key.chars().count() < LAST4_MIN_LEN {
        return String::new();
    }
    let mut tail: Vec<char> = key.chars().rev().take(4).collect();
    tail.reverse();
    tail.into_iter().collect()
}

impl Vault {
    /// The vault of `config`: `provider_key_secret` as the master, or else masters derived
    /// from `cookie_secret` (current) and `cookie_secret_previous` (previous). With
    /// `provider_key_secret`, the cookie-derived masters still open (never seal), so setting
    /// it later loses no stored key.
    pub fn new(config: &Config, store: Arc<dyn StateStore>) -> Self {
        match &config.provider_key_secret {
            // Keys stored before `provider_key_secret` was set (under the cookie-derived
            // master) still open, and the start-up rotation moves them under it.
            Some(secret) => Vault {
                store,
                current: Zeroizing::new(*secret.expose()),
                previous: std::iter::once(&config.cookie.secret)
                    .chain(&config.cookie.previous_secrets)
                    .map(|s| derive_master(s.expose()))
                    .collect(),
                explicit: true,
            },
            None => Vault {
                store,
                current: derive_master(config.cookie.secret.expose()),
                previous: config
                    .cookie
                    .previous_secrets
                    .iter()
                    .map(|s| derive_master(s.expose()))
                    .collect(),
                explicit: false,
            },
        }
    }

    /// A vault with these master secrets: `current` seals, `current` and `previous` open.
    pub fn from_masters(
        store: Arc<dyn StateStore>,
        current: [u8; 32],
        previous: &[[u8; 32]],
    ) -> Self {
        Vault {
            store,
            current: Zeroizing::new(current),
            previous: previous.iter().copied().map(Zeroizing::new).collect(),
            explicit: true,
        }
    }

    /// The sealer of `person`'s rows: the current master's key first, then the previous.
    fn sealer(&self, person: &str) -> Sealer {
        let purpose = purpose(person);
        self.previous
            .iter()
            .fold(Sealer::new(&self.current, &purpose), |s, m| {
                s.with_previous(m, &purpose)
            })
    }

    fn fix(&self, reason: Unreadable) -> &'static str {
        match reason {
            Unreadable::OtherSecret | Unreadable::Changed if self.explicit => FIX_PROVIDER_SECRET,
            Unreadable::OtherSecret | Unreadable::Changed => FIX_COOKIE,
            Unreadable::NotAKey => FIX_ROW,
        }
    }

    /// Opens a row: the key and whether a previous master was needed.
    fn open(&self, row: &StoredKey) -> Result<(ProviderKey, bool), Unreadable> {
        let (plain, index) = self
            .sealer(&row.person)
            .open_indexed(&binding(&row.person, &row.provider), &row.sealed)
            .map_err(|e| match e {
                UnsealError::UnknownKey(_) => Unreadable::OtherSecret,
                UnsealError::Tampered => Unreadable::Changed,
                UnsealError::Malformed | UnsealError::UnknownVersion(_) => Unreadable::NotAKey,
            })?;
        let plain = Zeroizing::new(plain);
        let key = std::str::from_utf8(&plain).map_err(|_| Unreadable::NotAKey)?;
        Ok((ProviderKey::new(key.to_string()), index > 0))
    }

    fn info(row: &StoredKey, key: Option<&ProviderKey>) -> KeyInfo {
        KeyInfo {
            provider: row.provider.clone(),
            last4: key.map(|k| last4(k.expose())).unwrap_or_default(),
            added_at_ms: row.added_at_ms,
            readable: key.is_some(),
        }
    }

    /// Keeps `key` as `person`'s key for `provider` (replacing theirs), sealed under the
    /// current secret, and records the change at `now_ms`. Durable when it returns. The
    /// key is stored as given: checking it (not empty, fit for an HTTP header) is the
    /// caller's part.
    pub fn put_provider_key(
        &self,
        person: &str,
        provider: &str,
        key: &str,
        now_ms: u64,
    ) -> Result<KeyInfo, StoreError> {
        let sealed = self
            .sealer(person)
            .seal(&binding(person, provider), key.as_bytes());
        let row = StoredKey {
            person: person.to_string(),
            provider: provider.to_string(),
            sealed,
            added_at_ms: now_ms,
        };
        self.store.put_provider_key(&row)?;
        Ok(KeyInfo {
            provider: provider.to_string(),
            last4: last4(key),
            added_at_ms: now_ms,
            readable: true,
        })
    }

    /// `person`'s key for `provider`: `Ok(None)` if they have none, [`VaultError::Unreadable`]
    /// if theirs does not open (the caller logs it: the message names the fix).
    pub fn provider_key(
        &self,
        person: &str,
        provider: &str,
    ) -> Result<Option<(ProviderKey, KeyInfo)>, VaultError> {
        let Some(row) = self.store.provider_key(person, provider) else {
            return Ok(None);
        };
        match self.open(&row) {
            Ok((key, _)) => {
                let info = Self::info(&row, Some(&key));
                Ok(Some((key, info)))
            }
            Err(reason) => Err(VaultError::Unreadable {
                provider: row.provider,
                reason,
                fix: self.fix(reason),
            }),
        }
    }

    /// What may be shown of each of `person`'s stored keys, by provider id; unreadable ones
    /// included, marked so.
    pub fn provider_key_infos(&self, person: &str) -> Vec<KeyInfo> {
        self.store
            .provider_keys(person)
            .iter()
            .map(|row| {
                let key = self.open(row).ok().map(|(k, _)| k);
                Self::info(row, key.as_ref())
            })
            .collect()
    }

    /// Removes `person`'s key for `provider` and records the change at `now_ms`.
    /// `Ok(true)` if there was one.
    pub fn remove_provider_key(
        &self,
        person: &str,
        provider: &str,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.store.remove_provider_key(person, provider, now_ms)
    }

    /// Records that `person`'s key for `provider` was set or removed at `at_ms` (for keys
    /// kept outside the store, in ephemeral mode; [`Vault::put_provider_key`] and
    /// [`Vault::remove_provider_key`] record theirs). Only ever moves forward.
    pub fn record_key_change(
        &self,
        person: &str,
        provider: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        self.store.record_key_change(person, provider, at_ms)
    }

    /// When `person`'s key for `provider` was last set or removed: a copy of the key made
    /// before then (another browser's key cookie) is stale.
    pub fn key_changed_at(&self, person: &str, provider: &str) -> Option<u64> {
        self.store.key_changed_at(person, provider)
    }

    /// After a secret rotation, at start: seals again under the current secret every row
    /// that only a previous secret opens, so the previous secret can later be dropped.
    /// Rows that no secret opens are left as they are (putting the old secret back makes
    /// them readable again) and each is logged with the fix. An error stops the pass;
    /// rows not yet sealed again still open with the previous secret.
    pub fn rotate_provider_keys(&self) -> Result<RotationReport, StoreError> {
        let mut report = RotationReport::default();
        for row in self.store.all_provider_keys() {
            match self.open(&row) {
                Ok((_, false)) => report.current += 1,
                Ok((key, true)) => {
                    let sealed = self.sealer(&row.person).seal(
                        &binding(&row.person, &row.provider),
                        key.expose().as_bytes(),
                    );
                    // `false`: the person changed it meanwhile, under the current secret.
                    if self.store.reseal_provider_key(&row, &sealed)? {
                        report.resealed += 1;
                    } else {
                        report.current += 1;
                    }
                }
                Err(reason) => {
                    tracing::error!(
                        person = %row.person,
                        provider = %row.provider,
                        "a stored provider key cannot be decrypted: {reason}; {}",
                        self.fix(reason)
                    );
                    report.unreadable.push((row.person, row.provider));
                }
            }
        }
        if report.resealed > 0 {
            tracing::info!(
                count = report.resealed,
                "stored provider keys sealed again under the current secret"
            );
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
