//! The state store: the little that must outlive a request and a restart (docs/design.md,
//! "The state store"). Sessions stay sealed cookies; the store holds only what makes them
//! revocable, and the values that may be used once:
//!
//! - session ids ended by sign-out, each until the session would have expired;
//! - a per-person "not before" time: sessions that began earlier are refused;
//! - one-time values (sign-in `state`, handoff ids, sign-in links), each until it expires;
//! - people's LLM provider keys in persistent mode, sealed by the [`crate::vault`] (the
//!   store never sees a key in the clear), and when each person's key for a provider last
//!   changed (so a stale copy held in another browser's cookie can be refused).
//!
//! [`StateStore`] is the interface; [`SqliteStore`] the embedded SQLite database in
//! `state_dir` that implements it. A shared SQL database for several replicas would be a
//! second implementation. Nothing is evicted before it expires: a store that cannot
//! remember refuses (a one-time value is then treated as used), it never forgets to make
//! room.
//!
//! ```
//! use gatehouse_auth::store::{SqliteStore, StateStore};
//! let store = SqliteStore::in_memory().unwrap();
//! assert!(store.first_use("state", "abc", 2000, 1000).unwrap());
//! assert!(!store.first_use("state", "abc", 2000, 1001).unwrap());
//! store.revoke_session("sid1", 5000, 1000).unwrap();
//! assert!(store.session_revoked("sid1", 1001));
//! assert!(!store.session_revoked("sid1", 5000));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use rusqlite::{Connection, params};
use rusqlite_migration::{M, Migrations};

use crate::UnixTime;

/// The database file's name inside `state_dir`.
pub const DB_FILE: &str = "gatehouse.sqlite3";
/// The lock file in `state_dir`: one process per store (each keeps an in-memory copy of
/// the revocations, which another process's writes would not reach).
pub const LOCK_FILE: &str = "gatehouse.lock";

/// What must be remembered across requests, restarts and (with a shared implementation)
/// replicas. Reads are on the request path and must be quick; writes happen on sign-in and
/// sign-out.
pub trait StateStore: Send + Sync + fmt::Debug {
    /// Records that the session `sid` was ended: refused from now until `until` (when the
    /// session would have expired anyway).
    fn revoke_session(&self, sid: &str, until: UnixTime, now: UnixTime) -> Result<(), StoreError>;
    /// Whether the session `sid` was ended (and its record has not yet expired).
    fn session_revoked(&self, sid: &str, now: UnixTime) -> bool;
    /// Records that `person`'s sessions begun at or before `at` (whole seconds) are ended.
    /// Only ever moves forward.
    fn set_not_before(&self, person: &str, at: UnixTime) -> Result<(), StoreError>;
    /// The time through which `person`'s sessions are refused, if one was set.
    fn not_before(&self, person: &str) -> Option<UnixTime>;
    /// `Ok(true)` the first time `key` of this `kind` is seen; it is then remembered until
    /// `until`, so every later call before then answers `Ok(false)`.
    fn first_use(
        &self,
        kind: &str,
        key: &str,
        until: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError>;

    /// Stores a person's sealed provider key, replacing the one they had for that provider,
    /// and records the change at `key.added_at_ms` (as [`StateStore::record_key_change`]).
    /// Durable once it returns: the person was told the key is kept.
    fn put_provider_key(&self, key: &StoredKey) -> Result<(), StoreError>;
    /// Replaces the sealed text of `old`'s row with `sealed` (re-encryption under a new
    /// secret), only if the row still holds `old.sealed`; `added_at_ms` stays. `Ok(false)`:
    /// the row changed or went since it was read, and is left as it is.
    fn reseal_provider_key(&self, old: &StoredKey, sealed: &str) -> Result<bool, StoreError>;
    /// Removes `person`'s key for `provider` and records the change at `at_ms`. `Ok(true)`
    /// if there was one.
    fn remove_provider_key(
        &self,
        person: &str,
        provider: &str,
        at_ms: u64,
    ) -> Result<bool, StoreError>;
    /// `person`'s sealed key for `provider`, if one is stored.
    fn provider_key(&self, person: &str, provider: &str) -> Option<StoredKey>;
    /// Every sealed key of `person`, by provider id.
    fn provider_keys(&self, person: &str) -> Vec<StoredKey>;
    /// Every sealed key of everyone (for re-encryption after a rotation).
    fn all_provider_keys(&self) -> Vec<StoredKey>;
    /// Records that `person`'s key for `provider` was set or removed at `at_ms`
    /// (milliseconds since the epoch). Only ever moves forward.
    fn record_key_change(&self, person: &str, provider: &str, at_ms: u64)
    -> Result<(), StoreError>;
    /// When `person`'s key for `provider` was last set or removed, if ever.
    fn key_changed_at(&self, person: &str, provider: &str) -> Option<u64>;

    /// Stores a new personal access token (its hash, never the token). Durable once it
    /// returns: the person is then shown the token.
    fn put_access_token(&self, token: &StoredToken) -> Result<(), StoreError>;
    /// The token with id `id`, if it exists (expired ones included until removed).
    fn access_token(&self, id: &str) -> Option<StoredToken>;
    /// Every token of `person`, oldest first.
    fn access_tokens(&self, person: &str) -> Vec<StoredToken>;
    /// Every token of everyone (for an administrator's sign-out by email address).
    fn all_access_tokens(&self) -> Vec<StoredToken>;
    /// Removes `person`'s tokens: the one with id `id`, or all of them (`None`). Answers
    /// the ids removed.
    fn remove_access_tokens(
        &self,
        person: &str,
        id: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;
    /// Records when tokens were last used, in one write; times only move forward.
    fn touch_access_tokens(&self, used: &[(String, UnixTime)]) -> Result<(), StoreError>;
}

/// One personal access token as the store keeps it: who it speaks for and where, never the
/// token itself (only the SHA-256 of its secret part, hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Its public id (part of the token, shown in logs).
    pub id: String,
    /// The person it belongs to (`iss` and `sub`, as for "not before").
    pub person: String,
    /// SHA-256 of the secret part, lower-case hex.
    pub secret_sha256: String,
    /// The name the person gave it.
    pub name: String,
    /// The token's last four characters, to tell tokens apart in the list.
    pub last4: String,
    /// The identity it carries, as JSON ([`crate::tokens`]).
    pub identity: String,
    /// The route labels it may be used on.
    pub routes: Vec<String>,
    /// When it was made.
    pub created: UnixTime,
    /// When it stops working.
    pub expires: UnixTime,
    /// When it was last used (written in batches).
    pub last_used: Option<UnixTime>,
}

/// One stored provider key: the row as the store keeps it. `sealed` is the key encrypted by
/// the [`crate::vault`] (bound to `person` and `provider`); the store never decrypts it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The person it belongs to (their `PersonId`).
    pub person: String,
    /// The provider id (`relay.providers.<id>`).
    pub provider: String,
    /// The sealed key (base64url, see [`crate::seal`]).
    pub sealed: String,
    /// When the person set it, milliseconds since the epoch.
    pub added_at_ms: u64,
}

impl fmt::Debug for StoredKey {
    /// Without the sealed text: it is not the key, but nothing gains from printing it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("person", &self.person)
            .field("provider", &self.provider)
            .field("sealed", &format_args!("[{} chars]", self.sealed.len()))
            .field("added_at_ms", &self.added_at_ms)
            .finish()
    }
}

/// Why the store could not be opened or written, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("state store {path}: {problem}; {fix}")]
pub struct StoreError {
    /// The directory or file concerned.
    pub path: PathBuf,
    /// What went wrong.
    pub problem: String,
    /// What the operator should do.
    pub fix: &'static str,
}

const FIX_WRITABLE: &str = "make the directory writable by the user Gatehouse runs as (it keeps it at mode 0700), or set `state_dir` to one that is";
const FIX_CORRUPT: &str = "stop Gatehouse, move the file aside (keep it for inspection) and start again; since the sessions it had ended would then be accepted again, also change `cookie_secret`, which ends every session";
const FIX_NEWER: &str =
    "it was written by a newer Gatehouse: run that version, or restore the file from a backup";
const FIX_RETRY: &str = "check the disk (space, errors); Gatehouse refuses what it cannot record";
const FIX_ROW: &str = "stop Gatehouse, move the file aside (keep it for inspection) and start again; people then enter their provider keys again";

/// The schema, one migration per version (`PRAGMA user_version` counts them). Only ever
/// append: a released migration is never edited.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(
            "CREATE TABLE revoked_sessions (
             sid TEXT PRIMARY KEY NOT NULL,
             until INTEGER NOT NULL
         ) STRICT;
         CREATE TABLE person_not_before (
             person TEXT PRIMARY KEY NOT NULL,
             not_before INTEGER NOT NULL
         ) STRICT;
         CREATE TABLE used_once (
             kind TEXT NOT NULL,
             key TEXT NOT NULL,
             until INTEGER NOT NULL,
             PRIMARY KEY (kind, key)
         ) STRICT;
         CREATE INDEX used_once_until ON used_once (until);
         CREATE INDEX revoked_sessions_until ON revoked_sessions (until);",
        ),
        // Issue 12: provider keys (persistent mode), sealed, and when each last changed.
        // Change times are kept after a key is removed: that is when they matter.
        M::up(
            "CREATE TABLE provider_keys (
                 person TEXT NOT NULL,
                 provider TEXT NOT NULL,
                 sealed TEXT NOT NULL,
                 added_at_ms INTEGER NOT NULL,
                 PRIMARY KEY (person, provider)
             ) STRICT;
             CREATE TABLE provider_key_changes (
                 person TEXT NOT NULL,
                 provider TEXT NOT NULL,
                 changed_at_ms INTEGER NOT NULL,
                 PRIMARY KEY (person, provider)
             ) STRICT;",
        ),
        // Issue 13: personal access tokens, each kept as the SHA-256 of its secret only.
        M::up(
            "CREATE TABLE access_tokens (
                 id TEXT PRIMARY KEY NOT NULL,
                 person TEXT NOT NULL,
                 secret_sha256 TEXT NOT NULL,
                 name TEXT NOT NULL,
                 last4 TEXT NOT NULL,
                 identity TEXT NOT NULL,
                 routes TEXT NOT NULL,
                 created INTEGER NOT NULL,
                 expires INTEGER NOT NULL,
                 last_used INTEGER
             ) STRICT;
             CREATE INDEX access_tokens_person ON access_tokens (person);",
        ),
    ])
}

/// The embedded store: one SQLite file in `state_dir`, for one Gatehouse process. Reads
/// come from a copy in memory (loaded at open, kept in step with every write), so the
/// request path never waits on the disk; writes go to the file first and count only once
/// committed.
pub struct SqliteStore {
    path: PathBuf,
    db: Mutex<Connection>,
    cache: RwLock<Cache>,
    /// Held (an exclusive `flock`) while this store is open; `None` in memory.
    _lock: Option<std::fs::File>,
}

#[derive(Default)]
struct Cache {
    revoked: HashMap<String, UnixTime>,
    not_before: HashMap<String, UnixTime>,
    /// Sealed provider keys: person → provider → row.
    provider_keys: HashMap<String, BTreeMap<String, StoredKey>>,
    /// Key change times (ms): person → provider → time.
    key_changes: HashMap<String, HashMap<String, u64>>,
    /// Personal access tokens by id.
    tokens: HashMap<String, StoredToken>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (or creates) the store in `dir`: the directory is made mode 0700 (and brought
    /// back to it if it was looser), the database checked and migrated. Every way this can
    /// fail is an error naming the path and the fix; nothing falls back to memory.
    pub fn open(dir: &Path, now: UnixTime) -> Result<Self, StoreError> {
        let dir_err = |problem: String| StoreError {
            path: dir.to_path_buf(),
            problem,
            fix: FIX_WRITABLE,
        };
        match std::fs::metadata(dir) {
            Ok(m) if !m.is_dir() => {
                return Err(StoreError {
                    path: dir.to_path_buf(),
                    problem: "is not a directory".into(),
                    fix: "set `state_dir` to a directory (Gatehouse creates it if missing)",
                });
            }
            Ok(m) => {
                if m.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                        .map_err(|e| dir_err(format!("cannot make it mode 0700: {e}")))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| dir_err(format!("cannot create it: {e}")))?;
            }
            Err(e) => return Err(dir_err(format!("cannot read it: {e}"))),
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| dir_err(format!("cannot create {LOCK_FILE}: {e}")))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError {
                    path: dir.to_path_buf(),
                    problem: "another Gatehouse process has this store open".into(),
                    fix: "stop the other process, or give this one its own `state_dir` (several replicas need a shared store, see README \"State store\")",
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(dir_err(format!("cannot lock {LOCK_FILE}: {e}")));
            }
        }
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path).map_err(|e| classify(&path, &e))?;
        let mut store = Self::ready(path, conn, now)?;
        store._lock = Some(lock);
        Ok(store)
    }

    /// A store that lives in memory for this process only (tests, `policy` tools, `check`).
    pub fn in_memory() -> Result<Self, StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| classify(&path, &e))?;
        Self::ready(path, conn, 0)
    }

    fn ready(path: PathBuf, mut conn: Connection, now: UnixTime) -> Result<Self, StoreError> {
        let err = |e: rusqlite::Error| classify(&path, &e);
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        // Before anything else: a file that is not a database, or a damaged one, says so.
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(err)?;
        if check != "ok" {
            return Err(StoreError {
                path: path.clone(),
                problem: format!("the database is damaged ({check})"),
                fix: FIX_CORRUPT,
            });
        }
        // WAL: readers never wait for the writer; FULL: a committed sign-out survives a
        // power cut (they are rare, the fsync is cheap).
        let _: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        migrations().to_latest(&mut conn).map_err(|e| match e {
            rusqlite_migration::Error::RusqliteError { err: e, .. } => classify(&path, &e),
            rusqlite_migration::Error::MigrationDefinition(d) => StoreError {
                path: path.clone(),
                problem: format!("its schema is not one this Gatehouse knows ({d})"),
                fix: FIX_NEWER,
            },
            other => StoreError {
                path: path.clone(),
                problem: format!("cannot bring its schema up to date ({other})"),
                fix: FIX_CORRUPT,
            },
        })?;
        let store = SqliteStore {
            path,
            db: Mutex::new(conn),
            cache: RwLock::new(Cache::default()),
            _lock: None,
        };
        store.load(now)?;
        Ok(store)
    }

    /// Fills the in-memory copy from the file, dropping what has expired.
    fn load(&self, now: UnixTime) -> Result<(), StoreError> {
        let db = self.conn()?;
        let err = |e: rusqlite::Error| classify(&self.path, &e);
        db.execute("DELETE FROM revoked_sessions WHERE until <= ?1", [now])
            .map_err(err)?;
        db.execute("DELETE FROM used_once WHERE until <= ?1", [now])
            .map_err(err)?;
        db.execute("DELETE FROM access_tokens WHERE expires <= ?1", [now])
            .map_err(err)?;
        let pairs = |sql: &str| -> Result<HashMap<String, UnixTime>, StoreError> {
            let mut stmt = db.prepare(sql).map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))
                .map_err(err)?;
            rows.map(|row| row.map_err(err)).collect()
        };
        let mut cache = Cache {
            revoked: pairs("SELECT sid, until FROM revoked_sessions")?,
            not_before: pairs("SELECT person, not_before FROM person_not_before")?,
            ..Cache::default()
        };
        {
            let mut stmt = db
                .prepare("SELECT person, provider, sealed, added_at_ms FROM provider_keys")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(StoredKey {
                        person: r.get(0)?,
                        provider: r.get(1)?,
                        sealed: r.get(2)?,
                        added_at_ms: r.get(3)?,
                    })
                })
                .map_err(err)?;
            for row in rows {
                let row = row.map_err(|e| self.row_err("provider_keys", &e))?;
                cache
                    .provider_keys
                    .entry(row.person.clone())
                    .or_default()
                    .insert(row.provider.clone(), row);
            }
            let mut stmt = db
                .prepare("SELECT person, provider, changed_at_ms FROM provider_key_changes")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, u64>(2)?,
                    ))
                })
                .map_err(err)?;
            for row in rows {
                let (person, provider, at) =
                    row.map_err(|e| self.row_err("provider_key_changes", &e))?;
                cache
                    .key_changes
                    .entry(person)
                    .or_default()
                    .insert(provider, at);
            }
        }
        {
            let mut stmt = db
                .prepare(
                    "SELECT id, person, secret_sha256, name, last4, identity, routes, created, \
                     expires, last_used FROM access_tokens",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        StoredToken {
                            id: r.get(0)?,
                            person: r.get(1)?,
                            secret_sha256: r.get(2)?,
                            name: r.get(3)?,
                            last4: r.get(4)?,
                            identity: r.get(5)?,
                            routes: Vec::new(),
                            created: r.get(7)?,
                            expires: r.get(8)?,
                            last_used: r.get(9)?,
                        },
                        r.get::<_, String>(6)?,
                    ))
                })
                .map_err(err)?;
            for row in rows {
                let (mut token, routes) = row.map_err(|e| self.row_err("access_tokens", &e))?;
                token.routes = serde_json::from_str(&routes).map_err(|e| StoreError {
                    path: self.path.clone(),
                    problem: format!("a row of access_tokens cannot be read ({e})"),
                    fix: FIX_ROW,
                })?;
                cache.tokens.insert(token.id.clone(), token);
            }
        }
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = cache;
        Ok(())
    }

    /// The database file (`:memory:` for [`SqliteStore::in_memory`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.db.lock().map_err(|_| StoreError {
            path: self.path.clone(),
            problem: "an earlier write panicked".into(),
            fix: "restart Gatehouse",
        })
    }

    /// A row that does not read as its table says (a negative time, text where a number
    /// belongs): the file was changed by something other than Gatehouse.
    fn row_err(&self, table: &str, e: &rusqlite::Error) -> StoreError {
        let err = classify(&self.path, e);
        if err.fix != FIX_RETRY {
            return err;
        }
        StoreError {
            path: self.path.clone(),
            problem: format!("a row of {table} cannot be read ({e})"),
            fix: FIX_ROW,
        }
    }

    fn write_err(&self, e: rusqlite::Error) -> StoreError {
        let mut err = classify(&self.path, &e);
        if err.fix == FIX_WRITABLE || err.fix == FIX_CORRUPT {
            return err;
        }
        err.fix = FIX_RETRY;
        err
    }
}

impl StateStore for SqliteStore {
    fn revoke_session(&self, sid: &str, until: UnixTime, now: UnixTime) -> Result<(), StoreError> {
        if until <= now {
            return Ok(());
        }
        {
            let db = self.conn()?;
            let tx = db.unchecked_transaction().map_err(|e| self.write_err(e))?;
            tx.execute("DELETE FROM revoked_sessions WHERE until <= ?1", [now])
                .map_err(|e| self.write_err(e))?;
            tx.execute(
                "INSERT INTO revoked_sessions (sid, until) VALUES (?1, ?2)
                 ON CONFLICT (sid) DO UPDATE SET until = max(until, excluded.until)",
                params![sid, until],
            )
            .map_err(|e| self.write_err(e))?;
            tx.commit().map_err(|e| self.write_err(e))?;
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.revoked.retain(|_, u| *u > now);
        let entry = cache.revoked.entry(sid.to_string()).or_insert(until);
        *entry = (*entry).max(until);
        Ok(())
    }

    fn session_revoked(&self, sid: &str, now: UnixTime) -> bool {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.revoked.get(sid).is_some_and(|until| now < *until)
    }

    fn set_not_before(&self, person: &str, at: UnixTime) -> Result<(), StoreError> {
        {
            let db = self.conn()?;
            db.execute(
                "INSERT INTO person_not_before (person, not_before) VALUES (?1, ?2)
                 ON CONFLICT (person) DO UPDATE SET not_before = max(not_before, excluded.not_before)",
                params![person, at],
            )
            .map_err(|e| self.write_err(e))?;
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        let entry = cache.not_before.entry(person.to_string()).or_insert(at);
        *entry = (*entry).max(at);
        Ok(())
    }

    fn not_before(&self, person: &str) -> Option<UnixTime> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.not_before.get(person).copied()
    }

    fn first_use(
        &self,
        kind: &str,
        key: &str,
        until: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let db = self.conn()?;
        // One-time values are written on every sign-in step, by anyone who can load a
        // sign-in link: no fsync for them (WAL keeps them across a crash of Gatehouse; a
        // power cut may lose the last ones, which expire within minutes anyway).
        // Revocations keep `FULL`.
        db.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.write_err(e))?;
        let fresh = self.insert_once(&db, kind, key, until, now);
        db.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| self.write_err(e))?;
        fresh
    }

    fn put_provider_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        {
            let db = self.conn()?;
            let tx = db.unchecked_transaction().map_err(|e| self.write_err(e))?;
            tx.execute(
                "INSERT INTO provider_keys (person, provider, sealed, added_at_ms)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (person, provider) DO UPDATE
                 SET sealed = excluded.sealed, added_at_ms = excluded.added_at_ms",
                params![key.person, key.provider, key.sealed, key.added_at_ms],
            )
            .map_err(|e| self.write_err(e))?;
            Self::insert_change(&tx, &key.person, &key.provider, key.added_at_ms)
                .map_err(|e| self.write_err(e))?;
            tx.commit().map_err(|e| self.write_err(e))?;
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        cache
            .provider_keys
            .entry(key.person.clone())
            .or_default()
            .insert(key.provider.clone(), key.clone());
        Self::cache_change(&mut cache, &key.person, &key.provider, key.added_at_ms);
        Ok(())
    }

    fn reseal_provider_key(&self, old: &StoredKey, sealed: &str) -> Result<bool, StoreError> {
        let changed = {
            let db = self.conn()?;
            db.execute(
                "UPDATE provider_keys SET sealed = ?4
                 WHERE person = ?1 AND provider = ?2 AND sealed = ?3",
                params![old.person, old.provider, old.sealed, sealed],
            )
            .map_err(|e| self.write_err(e))?
                == 1
        };
        if changed {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            if let Some(row) = cache
                .provider_keys
                .get_mut(&old.person)
                .and_then(|m| m.get_mut(&old.provider))
            {
                row.sealed = sealed.to_string();
            }
        }
        Ok(changed)
    }

    fn remove_provider_key(
        &self,
        person: &str,
        provider: &str,
        at_ms: u64,
    ) -> Result<bool, StoreError> {
        let removed = {
            let db = self.conn()?;
            let tx = db.unchecked_transaction().map_err(|e| self.write_err(e))?;
            let removed = tx
                .execute(
                    "DELETE FROM provider_keys WHERE person = ?1 AND provider = ?2",
                    params![person, provider],
                )
                .map_err(|e| self.write_err(e))?
                > 0;
            Self::insert_change(&tx, person, provider, at_ms).map_err(|e| self.write_err(e))?;
            tx.commit().map_err(|e| self.write_err(e))?;
            removed
        };
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        if let Some(keys) = cache.provider_keys.get_mut(person) {
            keys.remove(provider);
            if keys.is_empty() {
                cache.provider_keys.remove(person);
            }
        }
        Self::cache_change(&mut cache, person, provider, at_ms);
        Ok(removed)
    }

    fn provider_key(&self, person: &str, provider: &str) -> Option<StoredKey> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.provider_keys.get(person)?.get(provider).cloned()
    }

    fn provider_keys(&self, person: &str) -> Vec<StoredKey> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache
            .provider_keys
            .get(person)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn all_provider_keys(&self) -> Vec<StoredKey> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache
            .provider_keys
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    fn record_key_change(
        &self,
        person: &str,
        provider: &str,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        {
            let db = self.conn()?;
            Self::insert_change(&db, person, provider, at_ms).map_err(|e| self.write_err(e))?;
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        Self::cache_change(&mut cache, person, provider, at_ms);
        Ok(())
    }

    fn key_changed_at(&self, person: &str, provider: &str) -> Option<u64> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.key_changes.get(person)?.get(provider).copied()
    }

    fn put_access_token(&self, t: &StoredToken) -> Result<(), StoreError> {
        let routes = serde_json::to_string(&t.routes).unwrap_or_else(|_| "[]".into());
        {
            let db = self.conn()?;
            db.execute(
                "INSERT INTO access_tokens (id, person, secret_sha256, name, last4, identity, \
                 routes, created, expires, last_used) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    t.id,
                    t.person,
                    t.secret_sha256,
                    t.name,
                    t.last4,
                    t.identity,
                    routes,
                    t.created,
                    t.expires,
                    t.last_used
                ],
            )
            .map_err(|e| self.write_err(e))?;
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.tokens.insert(t.id.clone(), t.clone());
        Ok(())
    }

    fn access_token(&self, id: &str) -> Option<StoredToken> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.tokens.get(id).cloned()
    }

    fn access_tokens(&self, person: &str) -> Vec<StoredToken> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<StoredToken> = cache
            .tokens
            .values()
            .filter(|t| t.person == person)
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        out
    }

    fn all_access_tokens(&self) -> Vec<StoredToken> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        cache.tokens.values().cloned().collect()
    }

    fn remove_access_tokens(
        &self,
        person: &str,
        id: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            cache
                .tokens
                .values()
                .filter(|t| t.person == person && id.is_none_or(|i| i == t.id))
                .map(|t| t.id.clone())
                .collect()
        };
        {
            let db = self.conn()?;
            let tx = db.unchecked_transaction().map_err(|e| self.write_err(e))?;
            for i in &ids {
                tx.execute(
                    "DELETE FROM access_tokens WHERE id = ?1 AND person = ?2",
                    params![i, person],
                )
                .map_err(|e| self.write_err(e))?;
            }
            tx.commit().map_err(|e| self.write_err(e))?;
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        for i in &ids {
            cache.tokens.remove(i);
        }
        Ok(ids)
    }

    fn touch_access_tokens(&self, used: &[(String, UnixTime)]) -> Result<(), StoreError> {
        if used.is_empty() {
            return Ok(());
        }
        {
            let db = self.conn()?;
            // Last-used times are a convenience for the person, not a security record: no
            // fsync for them.
            db.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| self.write_err(e))?;
            let written = (|| {
                let tx = db.unchecked_transaction()?;
                for (id, at) in used {
                    tx.execute(
                        "UPDATE access_tokens SET last_used = max(coalesce(last_used, 0), ?2) \
                         WHERE id = ?1",
                        params![id, at],
                    )?;
                }
                tx.commit()
            })();
            db.pragma_update(None, "synchronous", "FULL")
                .map_err(|e| self.write_err(e))?;
            written.map_err(|e| self.write_err(e))?;
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        for (id, at) in used {
            if let Some(t) = cache.tokens.get_mut(id) {
                t.last_used = Some(t.last_used.map_or(*at, |l| l.max(*at)));
            }
        }
        Ok(())
    }
}

impl SqliteStore {
    /// Records a key change in the file; the time only moves forward (a clock set back
    /// must not make a stale copy of a key look current).
    fn insert_change(
        db: &Connection,
        person: &str,
        provider: &str,
        at_ms: u64,
    ) -> Result<(), rusqlite::Error> {
        db.execute(
            "INSERT INTO provider_key_changes (person, provider, changed_at_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (person, provider)
             DO UPDATE SET changed_at_ms = max(changed_at_ms, excluded.changed_at_ms)",
            params![person, provider, at_ms],
        )
        .map(|_| ())
    }

    fn cache_change(cache: &mut Cache, person: &str, provider: &str, at_ms: u64) {
        let entry = cache
            .key_changes
            .entry(person.to_string())
            .or_default()
            .entry(provider.to_string())
            .or_insert(at_ms);
        *entry = (*entry).max(at_ms);
    }

    fn insert_once(
        &self,
        db: &Connection,
        kind: &str,
        key: &str,
        until: UnixTime,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        let tx = db.unchecked_transaction().map_err(|e| self.write_err(e))?;
        tx.execute("DELETE FROM used_once WHERE until <= ?1", [now])
            .map_err(|e| self.write_err(e))?;
        let fresh = tx
            .execute(
                "INSERT INTO used_once (kind, key, until) VALUES (?1, ?2, ?3)
                 ON CONFLICT (kind, key) DO NOTHING",
                params![kind, key, until.max(now + 1)],
            )
            .map_err(|e| self.write_err(e))?
            == 1;
        tx.commit().map_err(|e| self.write_err(e))?;
        Ok(fresh)
    }
}

/// A SQLite error as the operator should read it: unwritable, damaged, or other.
fn classify(path: &Path, e: &rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    let code = e.sqlite_error_code();
    let (problem, fix) = match code {
        Some(ErrorCode::NotADatabase) => (
            "the file is not a Gatehouse state database (or is damaged)".to_string(),
            FIX_CORRUPT,
        ),
        Some(ErrorCode::DatabaseCorrupt) => ("the database is damaged".to_string(), FIX_CORRUPT),
        Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
            (format!("cannot write the database ({e})"), FIX_WRITABLE)
        }
        Some(ErrorCode::DiskFull) => ("the disk is full".to_string(), FIX_RETRY),
        _ => (e.to_string(), FIX_RETRY),
    };
    StoreError {
        path: path.to_path_buf(),
        problem,
        fix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-store-{name}-{}-{}",
            std::process::id(),
            crate::random_token(6)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn revocations_and_not_before_survive_reopening() {
        let dir = temp_dir("reopen");
        {
            let s = SqliteStore::open(&dir, 1000).unwrap();
            s.revoke_session("ended", 2000, 1000).unwrap();
            s.revoke_session("short", 1100, 1000).unwrap();
            s.set_not_before("iss\nalice", 1500).unwrap();
            assert!(s.first_use("state", "s1", 1600, 1000).unwrap());
        }
        let s = SqliteStore::open(&dir, 1200).unwrap();
        assert!(s.session_revoked("ended", 1200));
        assert!(
            !s.session_revoked("short", 1200),
            "an expired record is gone"
        );
        assert!(!s.session_revoked("other", 1200));
        assert_eq!(s.not_before("iss\nalice"), Some(1500));
        assert_eq!(s.not_before("iss\nbob"), None);
        assert!(
            !s.first_use("state", "s1", 1600, 1200).unwrap(),
            "a used value stays used across a restart"
        );
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_process_cannot_open_the_same_store() {
        let dir = temp_dir("lock");
        let first = SqliteStore::open(&dir, 1).unwrap();
        let e = SqliteStore::open(&dir, 1).unwrap_err().to_string();
        assert!(
            e.contains("another Gatehouse process has this store open"),
            "{e}"
        );
        drop(first);
        SqliteStore::open(&dir, 1).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_looser_directory_is_brought_back_to_0700() {
        let dir = temp_dir("mode");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        SqliteStore::open(&dir, 1).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn not_before_only_moves_forward() {
        let s = SqliteStore::in_memory().unwrap();
        s.set_not_before("p", 200).unwrap();
        s.set_not_before("p", 100).unwrap();
        assert_eq!(s.not_before("p"), Some(200));
    }

    #[test]
    fn many_one_time_values_are_all_remembered() {
        // The old in-memory set forgot everything once it held 10 000 values: a flood of
        // fresh values reopened replay of the old ones. The store forgets only expired ones.
        let s = SqliteStore::in_memory().unwrap();
        assert!(s.first_use("handoff", "victim", 10_000, 1).unwrap());
        for i in 0..20_000 {
            assert!(s.first_use("handoff", &format!("k{i}"), 10_000, 2).unwrap());
        }
        assert!(!s.first_use("handoff", "victim", 10_000, 3).unwrap());
        assert!(
            s.first_use("handoff", "victim", 20_000, 10_000).unwrap(),
            "expired values are forgotten"
        );
        assert!(
            s.first_use("login", "victim", 20_000, 3).unwrap(),
            "kinds are separate"
        );
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_with_the_fix() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DB_FILE), vec![0x42u8; 8192]).unwrap();
        let e = SqliteStore::open(&dir, 1).unwrap_err().to_string();
        assert!(e.contains(DB_FILE), "{e}");
        assert!(e.contains("not a Gatehouse state database"), "{e}");
        assert!(e.contains("move the file aside"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn access_tokens_are_kept_listed_touched_and_removed_per_person() {
        let dir = temp_dir("tokens");
        let token = |id: &str, person: &str, expires: u64| StoredToken {
            id: id.into(),
            person: person.into(),
            secret_sha256: "00".repeat(32),
            name: format!("name {id}"),
            last4: "abcd".into(),
            identity: "{}".into(),
            routes: vec!["https://a.example.com".into()],
            created: 10,
            expires,
            last_used: None,
        };
        {
            let s = SqliteStore::open(&dir, 1).unwrap();
            s.put_access_token(&token("t1", "alice", 5000)).unwrap();
            s.put_access_token(&token("t2", "alice", 5000)).unwrap();
            s.put_access_token(&token("t3", "bob", 5000)).unwrap();
            s.put_access_token(&token("old", "bob", 50)).unwrap();
            s.touch_access_tokens(&[("t1".into(), 30), ("t1".into(), 20)])
                .unwrap();
            // Bob cannot remove alice's token by its id.
            assert!(
                s.remove_access_tokens("bob", Some("t1"))
                    .unwrap()
                    .is_empty()
            );
            assert_eq!(s.remove_access_tokens("alice", Some("t2")).unwrap(), ["t2"]);
        }
        let s = SqliteStore::open(&dir, 100).unwrap();
        let alice = s.access_tokens("alice");
        assert_eq!(alice.len(), 1);
        assert_eq!(alice[0].last_used, Some(30), "last use only moves forward");
        assert_eq!(alice[0].routes, ["https://a.example.com"]);
        assert!(
            s.access_token("old").is_none(),
            "expired tokens go at start"
        );
        assert_eq!(s.remove_access_tokens("bob", None).unwrap(), ["t3"]);
        assert!(s.access_tokens("bob").is_empty());
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_from_a_newer_gatehouse_is_refused() {
        let dir = temp_dir("newer");
        SqliteStore::open(&dir, 1).unwrap();
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = SqliteStore::open(&dir, 1).unwrap_err().to_string();
        assert!(e.contains("newer Gatehouse"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_store_from_before_provider_keys_is_brought_up_to_date() {
        let dir = temp_dir("upgrade");
        {
            let s = SqliteStore::open(&dir, 1).unwrap();
            s.revoke_session("ended", 2000, 1).unwrap();
        }
        // Back to the first schema, as an earlier Gatehouse left it.
        let conn = Connection::open(dir.join(DB_FILE)).unwrap();
        conn.execute_batch(
            "DROP TABLE provider_keys; DROP TABLE provider_key_changes; DROP TABLE access_tokens; \
             PRAGMA user_version = 1;",
        )
        .unwrap();
        drop(conn);
        let s = SqliteStore::open(&dir, 2).unwrap();
        assert!(s.session_revoked("ended", 2), "earlier rows are kept");
        let row = StoredKey {
            person: "p".into(),
            provider: "openai".into(),
            sealed: "sealed-1".into(),
            added_at_ms: 10,
        };
        s.put_provider_key(&row).unwrap();
        assert_eq!(s.provider_key("p", "openai"), Some(row.clone()));
        assert_eq!(s.key_changed_at("p", "openai"), Some(10));
        assert!(s.reseal_provider_key(&row, "sealed-2").unwrap());
        assert!(
            !s.reseal_provider_key(&row, "sealed-3").unwrap(),
            "only over the text it read"
        );
        assert_eq!(s.provider_key("p", "openai").unwrap().sealed, "sealed-2");
        drop(s);
        let s = SqliteStore::open(&dir, 3).unwrap();
        assert_eq!(s.provider_key("p", "openai").unwrap().sealed, "sealed-2");
        assert_eq!(s.all_provider_keys().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_change_times_only_move_forward_and_outlive_the_key() {
        let s = SqliteStore::in_memory().unwrap();
        s.record_key_change("p", "openai", 200).unwrap();
        s.record_key_change("p", "openai", 100).unwrap();
        assert_eq!(s.key_changed_at("p", "openai"), Some(200));
        assert!(!s.remove_provider_key("p", "openai", 150).unwrap());
        assert_eq!(s.key_changed_at("p", "openai"), Some(200));
        assert!(!s.remove_provider_key("p", "openai", 300).unwrap());
        assert_eq!(s.key_changed_at("p", "openai"), Some(300));
        assert_eq!(s.key_changed_at("p", "anthropic"), None);
        assert_eq!(s.key_changed_at("q", "openai"), None);
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let dir = temp_dir("notdir");
        std::fs::write(&dir, b"x").unwrap();
        let e = SqliteStore::open(&dir, 1).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        std::fs::remove_file(&dir).unwrap();
    }
}
