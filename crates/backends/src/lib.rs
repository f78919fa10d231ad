//! Gatehouse's supervisor of per-person OpenCode servers (issue 5, docs/design.md "Crates and their seams").
//!
//! Each signed-in person gets their own backend process, started on their first request and
//! stopped when idle. The proxy asks [`Supervisor::ensure`] for the person's backend and gets
//! a [`Lease`]: the loopback port and the password to send upstream. Holding the lease marks
//! the backend in use (a streaming response holds it for as long as the stream is open), so
//! an idle stop never cuts a stream.
//!
//! This crate must not know HTTP routing or Pingora: it only hands out addresses. It speaks
//! HTTP to a backend for two questions only (health and "is an agent busy"), in `probe`.
//!
//! What it promises:
//! - one process per person at a time; concurrent first requests start exactly one;
//! - at most `max_starting` starts run at once (the rest queue), at most `max_backends` run;
//!   when full, an idle backend (no lease, no busy session) is stopped to make room;
//! - a fresh random password per spawn, passed only in the child's environment;
//! - when Gatehouse runs as root, each person's backend runs as their own uid (stable per
//!   person: the owner of their data directory), in a 0700 directory owned by that uid,
//!   never as root ([`preflight`] refuses a pool that would);
//! - every backend starts through the launcher ([`launch`]): its own session, no
//!   supplementary groups, umask 077, rlimits, `oom_score_adj`, and Landlock (TCP bind only
//!   on its own port); the home's own directories are made as the person, and root never
//!   follows a link inside a home;
//! - with a [`firewall::Firewall`], the pool's uids reach only their own port on loopback,
//!   their DNS resolvers, `egress.allow` and the public internet;
//! - stopping a backend ends every process of the person's uid, not only its group;
//! - a backend that exits is started again on the next request after a backoff; after
//!   `max_failures` failures in a row it is refused ([`BackendError::Crashing`]) until the
//!   person restarts it from the user page ([`Supervisor::restart`]);
//! - pid files under the data root let the next Gatehouse stop leftovers
//!   ([`Supervisor::stop_leftovers`]); [`Supervisor::run`] stops everything on shutdown.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gatehouse_backends::BackendError> {
//! use gatehouse_backends::{PersonId, PoolSettings, Supervisor};
//! let supervisor = Supervisor::new(PoolSettings::new("assistant", "/var/lib/gatehouse/backends".into()));
//! let lease = supervisor.ensure(&PersonId::new("https://accounts.google.com", "1234")).await?;
//! println!("forward to 127.0.0.1:{}", lease.port());
//! # Ok(()) }
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod firewall;
pub mod launch;
mod person;
pub mod preflight;
mod probe;
mod process;
pub mod relay;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, watch};

pub use gatehouse_config::BackendPool;
pub use person::{Password, PersonDir, PersonId, RELAY_TOKEN_PREFIX, RelayToken};
use process::{Process, SpawnFailure};

/// One pool as the supervisor runs it: the operator's settings (config `backends.<name>`)
/// plus the knobs that only tests and tuning change.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// The operator's settings for the pool (name, command, ports, limits, data root...).
    pub pool: BackendPool,
    /// SIGTERM → SIGKILL.
    pub stop_grace: Duration,
    /// How often idle and exit checks run.
    pub check_interval: Duration,
    /// How a backend that keeps failing is started again.
    pub restart: RestartPolicy,
    /// Gatehouse's own binary, run as `backend-launch` and `backend-reap` ([`launch`]).
    pub launcher: PathBuf,
    /// The launcher refuses to start a backend Landlock cannot fully confine (false only
    /// with `confinement: best_effort`).
    pub landlock_required: bool,
    /// The pool's nftables table, when outbound connections are confined.
    pub firewall: Option<Arc<firewall::Firewall>>,
    /// `http://<relay_address>` when the pool relays LLM providers (`relay:`): each
    /// backend's OpenCode config points the relayed providers there.
    pub relay_url: Option<String>,
}

/// How a crashing backend is restarted (a value, not code in the loop: DESIGN/STYLE §8).
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    /// Wait before the n-th restart in a row: `base * 2^(n-1)`, at most `max_delay`.
    pub base_delay: Duration,
    /// The longest wait between restarts; also how long a backend must stay up for its
    /// failures to stop counting.
    pub max_delay: Duration,
    /// Failures in a row after which the backend is no longer started on its own.
    pub max_failures: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            max_failures: 5,
        }
    }
}

impl RestartPolicy {
    /// The wait before the next start after `failures` failures in a row, or `None` when
    /// the backend must not be started again automatically.
    pub fn delay(&self, failures: u32) -> Option<Duration> {
        if failures == 0 {
            return Some(Duration::ZERO);
        }
        if failures >= self.max_failures {
            return None;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        Some(self.base_delay.saturating_mul(factor).min(self.max_delay))
    }
}

impl PoolSettings {
    /// The config defaults (issue 5: OpenCode, ports 4101–4199, idle 30 min) with
    /// `data_root`.
    pub fn new(name: &str, data_root: PathBuf) -> Self {
        let mut pool = BackendPool::with_defaults(name);
        pool.data_root = data_root;
        Self::from_pool(pool)
    }

    /// The operator's pool with the built-in stop grace, check interval and restart policy.
    pub fn from_pool(pool: BackendPool) -> Self {
        // Check often enough that a backend stops within a quarter of idle_timeout of
        // turning idle, but no more than every 250 ms nor less than every 10 s.
        let check_interval =
            (pool.idle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(10));
        PoolSettings {
            landlock_required: pool.confinement == gatehouse_config::Confinement::Required,
            pool,
            stop_grace: Duration::from_secs(5),
            check_interval,
            restart: RestartPolicy::default(),
            // The running binary is Gatehouse itself, which has the launcher subcommands.
            launcher: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            firewall: None,
            relay_url: None,
        }
    }
}

/// Why a person cannot have their backend now. `Display` is for the operator's log; the
/// proxy picks the page from the variant.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// `max_backends` are running and none could be stopped to make room (each holds a
    /// lease or has a busy session).
    #[error("pool {pool} is full: {running} backends running, none idle to stop (max_backends)")]
    PoolFull {
        /// The pool's name.
        pool: String,
        /// How many backends are running.
        running: usize,
    },
    /// Every port of the pool's range is taken.
    #[error("pool {pool} has no free port in {first}-{last}")]
    NoFreePort {
        /// The pool's name.
        pool: String,
        /// The first port of the range.
        first: u16,
        /// The last port of the range (inclusive).
        last: u16,
    },
    /// A new person needs a uid and every uid of the pool's range owns another person's
    /// directory.
    #[error("pool {pool} has no free uid in its uid range")]
    NoFreeUid {
        /// The pool's name.
        pool: String,
    },
    /// The backend could not be started; the text says why (the command could not run, the
    /// process exited or was not ready within `start_timeout`, ...).
    #[error("backend failed to start: {0}")]
    StartFailed(String),
    /// The backend failed `max_failures` times in a row and is not started on its own any
    /// more, until [`Supervisor::restart`].
    #[error(
        "backend failed {failures} times in a row, last: {last}; not restarting on its own (restart it from the user page)"
    )]
    Crashing {
        /// Failures in a row.
        failures: u32,
        /// The last failure, in words.
        last: String,
    },
    /// The person's data directory could not be prepared for the backend.
    #[error("the data directory {dir} cannot be prepared: {error}")]
    DataDir {
        /// The directory, as a path.
        dir: String,
        /// What went wrong.
        error: String,
    },
    /// The person's home has a link (or a file) where one of its own directories belongs.
    #[error("the home cannot be used: {0}")]
    HomeRefused(String),
    /// The pool's firewall table could not be installed, so no backend may start.
    #[error("network confinement is not in place: {0}")]
    Unconfined(String),
    /// [`Supervisor::stop_all`] has run: no backend starts any more.
    #[error("Gatehouse is shutting down")]
    ShuttingDown,
}

/// Proof that a person's backend is running, and a mark that it is in use while held.
pub struct Lease {
    port: u16,
    password: Password,
    slot: Arc<Slot>,
}

impl Lease {
    /// The loopback port the backend listens on.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `Basic base64(opencode:<password>)` for the upstream `Authorization` header.
    pub fn authorization(&self) -> String {
        self.password.basic_authorization()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.active.fetch_sub(1, Ordering::AcqRel);
        self.slot.touch();
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// What the user page shows about a person's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// No backend runs (none started yet, or it stopped or exited).
    Stopped,
    /// A start is under way.
    Starting,
    /// The backend is up.
    Running {
        /// When it started.
        since: SystemTime,
        /// Its last use: when a lease on it was last taken or given back.
        last_activity: SystemTime,
        /// Leases held now: requests and streams open on it.
        open_requests: usize,
    },
    /// Refused after repeated failures; `restart` clears it.
    Crashing {
        /// Failures in a row.
        failures: u32,
        /// The last failure, in words.
        last: String,
    },
}

/// Counters for logs and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Backends started and ready.
    pub starts: AtomicU64,
    /// Starts that failed (spawn, readiness, data directory or home refused).
    pub start_failures: AtomicU64,
    /// Running backends that exited on their own.
    pub crashes: AtomicU64,
    /// Backends stopped for being idle for `idle_timeout`.
    pub idle_stops: AtomicU64,
    /// How long the last successful start took, spawn to ready, in milliseconds.
    pub last_start_ms: AtomicU64,
}

/// A plain copy of the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Backends running at the time of the snapshot.
    pub running: usize,
    /// Backends being started at the time of the snapshot (waiting for their turn included).
    pub starting: usize,
    /// Backends being stopped at the time of the snapshot (their processes not all gone yet).
    pub stopping: usize,
    /// See [`Counters::starts`].
    pub starts: u64,
    /// See [`Counters::start_failures`].
    pub start_failures: u64,
    /// See [`Counters::crashes`].
    pub crashes: u64,
    /// See [`Counters::idle_stops`].
    pub idle_stops: u64,
    /// See [`Counters::last_start_ms`].
    pub last_start_ms: u64,
}

/// Whose backend holds a relay token ([`Supervisor::relay_holder`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayHolder {
    /// The backend's person.
    pub person: PersonId,
    /// The uid the backend runs as; `None` when the pool does not isolate (every backend
    /// runs as Gatehouse's own uid, so the relay cannot tell backends apart by socket).
    pub uid: Option<u32>,
}

// === impl Supervisor ===

/// Starts, tracks and stops the backends of one pool. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("pool", &self.inner.settings.pool.name)
            .field("isolated", &self.inner.isolate)
            .finish_non_exhaustive()
    }
}

struct Inner {
    settings: PoolSettings,
    starts: Semaphore,
    pool: Mutex<Pool>,
    counters: Counters,
    /// Whether backends run as their own uid (Gatehouse is root and `uids` is set).
    isolate: bool,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Set (once, at set-up) when the firewall could not be installed: starts are refused
    /// with this. Read on every `ensure`, so a lock-free cell.
    unconfined: std::sync::OnceLock<String>,
    epoch: Instant,
}

struct Pool {
    slots: HashMap<PersonId, Arc<Slot>>,
    free_ports: BTreeSet<u16>,
}

struct Slot {
    id: PersonId,
    state: Mutex<SlotState>,
    /// Leases held (requests and streams in flight).
    active: AtomicUsize,
    /// ms since the supervisor's epoch of the last lease taken or returned.
    last_activity_ms: AtomicU64,
    epoch: Instant,
}

struct SlotState {
    phase: Phase,
    /// Failures (crashes, failed starts) in a row; reset by a start that stays up.
    failures: u32,
    last_failure: Option<(Instant, String)>,
    /// The home was refused ([`BackendError::HomeRefused`]): no start is tried again until
    /// a restart (retrying cannot help; the operator must look).
    refused: Option<String>,
    /// The previous backend is still being stopped (its group signalled, its uid reaped,
    /// its port closed): a new start waits for `true`, or the reaper would end it too.
    stopping: Option<watch::Receiver<bool>>,
}

impl SlotState {
    /// Marks the slot stopped while its old process is being put down; the caller sends
    /// `true` on the returned sender once that is done.
    fn begin_stop(&mut self) -> watch::Sender<bool> {
        let (tx, rx) = watch::channel(false);
        self.phase = Phase::Stopped;
        self.stopping = Some(rx);
        tx
    }
}

enum Phase {
    Stopped,
    Starting(watch::Receiver<Option<Result<(), BackendError>>>),
    Running(Arc<Running>),
}

struct Running {
    process: Process,
    since: SystemTime,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (no invariant spans
    // an await), so the data is still good to use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SlotState {
    fn last_error(&self) -> String {
        self.last_failure
            .as_ref()
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    }
}

impl Slot {
    fn touch(&self) {
        self.last_activity_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }
    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(last)
    }
}

impl Supervisor {
    /// A supervisor for one pool. See [`Supervisor::not_isolated`] for the warning to log.
    pub fn new(settings: PoolSettings) -> Self {
        let isolate = nix::unistd::Uid::effective().is_root() && settings.pool.uids.is_some();
        let free_ports = (settings.pool.ports.0..=settings.pool.ports.1).collect();
        Supervisor {
            inner: Arc::new(Inner {
                starts: Semaphore::new(settings.pool.max_starting.max(1)),
                settings,
                pool: Mutex::new(Pool {
                    slots: HashMap::new(),
                    free_ports,
                }),
                counters: Counters::default(),
                isolate,
                shutting_down: false.into(),
                unconfined: std::sync::OnceLock::new(),
                epoch: Instant::now(),
            }),
        }
    }

    /// The settings the supervisor was made with.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// The person's project directory, `<data_root>/<id>/<workspace>`: where their backend
    /// starts (the launcher makes it).
    pub fn workspace_of(&self, id: &PersonId) -> PathBuf {
        let pool = &self.inner.settings.pool;
        PersonDir::new(&pool.data_root, id)
            .home
            .join(&pool.workspace)
    }

    /// Whether backends run as one uid per person.
    pub fn isolated(&self) -> bool {
        self.inner.isolate
    }

    /// Why backends are not isolated from each other, if they are not: the operator must
    /// be told at start (every person's OpenCode can then read the others' files).
    pub fn not_isolated(&self) -> Option<&'static str> {
        if self.inner.isolate {
            None
        } else if nix::unistd::Uid::effective().is_root() {
            Some("no uid range is configured (set `uids:` on the pool)")
        } else {
            Some(
                "Gatehouse is not running as root, so it cannot run backends as other users (`isolation: none`)",
            )
        }
    }

    /// The confinement in force, in words, for the start-up log line.
    pub fn confinement(&self) -> String {
        let s = &self.inner.settings;
        let uid = match (&s.pool.uids, self.inner.isolate) {
            (Some(r), true) => format!("one uid per person ({}-{})", r.first, r.last),
            _ => "none (backends share Gatehouse's uid)".into(),
        };
        let net = match &s.firewall {
            Some(f) => format!("nftables table inet {}", f.table()),
            None => "off".into(),
        };
        let landlock = if s.landlock_required {
            "required"
        } else {
            "best effort"
        };
        let l = s.pool.limits;
        format!(
            "uids: {uid}; outbound: {net}; Landlock bind/scope: {landlock}; limits: {} processes, {} MiB data, {} open files; oom_score_adj {}",
            l.processes,
            l.memory_bytes >> 20,
            l.open_files,
            launch::BACKEND_OOM_SCORE_ADJ
        )
    }

    /// Stops backends left by an earlier Gatehouse (from the pid files), and every process
    /// of a uid that owns a home in `data_root` (what they started outside the group).
    /// Call once at start.
    pub async fn stop_leftovers(&self) -> usize {
        let s = &self.inner.settings;
        let stopped = process::stop_leftovers(&s.pool.data_root, s.stop_grace).await;
        if let (true, Some(range)) = (self.inner.isolate, &s.pool.uids) {
            for uid in self
                .home_owners()
                .into_iter()
                .filter(|u| range.contains(*u))
            {
                process::reap(&s.launcher, uid).await;
            }
        }
        stopped
    }

    /// The uids owning a directory in `data_root`.
    fn home_owners(&self) -> BTreeSet<u32> {
        use std::os::unix::fs::MetadataExt;
        let mut taken = BTreeSet::new();
        if let Ok(entries) = std::fs::read_dir(&self.inner.settings.pool.data_root) {
            for e in entries.flatten() {
                if let Ok(m) = std::fs::symlink_metadata(e.path())
                    && m.is_dir()
                {
                    taken.insert(m.uid());
                }
            }
        }
        taken
    }

    /// Makes `data_root` (mode 0711: the uids pass through to their own home but cannot
    /// list the others) and installs the pool's firewall table. A firewall that cannot be
    /// installed refuses every start until Gatehouse is restarted.
    pub async fn set_up(&self) {
        let s = &self.inner.settings;
        {
            use std::os::unix::fs::DirBuilderExt;
            if let Err(e) = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&s.pool.data_root)
            {
                tracing::error!(pool = %s.pool.name, dir = %s.pool.data_root.display(), error = %e, "cannot make data_root");
            }
        }
        if let Some(fw) = &s.firewall {
            match fw.install().await {
                Ok(()) => {
                    tracing::info!(pool = %s.pool.name, table = fw.table(), allowed = ?fw.allowed(), "backends' outbound connections confined (nftables)");
                }
                Err(e) => {
                    tracing::error!(pool = %s.pool.name, error = %e, "cannot install the backends' firewall; no backend will start");
                    let _ = self.inner.unconfined.set(e);
                }
            }
        }
    }

    fn slot(&self, id: &PersonId) -> Arc<Slot> {
        let mut pool = lock(&self.inner.pool);
        pool.slots
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    id: id.clone(),
                    state: Mutex::new(SlotState {
                        phase: Phase::Stopped,
                        failures: 0,
                        last_failure: None,
                        refused: None,
                        stopping: None,
                    }),
                    active: AtomicUsize::new(0),
                    last_activity_ms: AtomicU64::new(0),
                    epoch: self.inner.epoch,
                })
            })
            .clone()
    }

    /// The person's backend, started if needed. Waits for a start in progress (however
    /// long: callers bound the wait, and the start goes on without them).
    pub async fn ensure(&self, id: &PersonId) -> Result<Lease, BackendError> {
        let slot = self.slot(id);
        loop {
            if self.inner.shutting_down.load(Ordering::Acquire) {
                return Err(BackendError::ShuttingDown);
            }
            if let Some(why) = self.inner.unconfined.get() {
                return Err(BackendError::Unconfined(why.clone()));
            }
            let wait = {
                let mut st = lock(&slot.state);
                if let Phase::Running(r) = &st.phase {
                    match r.process.has_exited() {
                        None => {
                            slot.active.fetch_add(1, Ordering::AcqRel);
                            slot.touch();
                            return Ok(Lease {
                                port: r.process.port,
                                password: r.process.password.clone(),
                                slot: slot.clone(),
                            });
                        }
                        Some(status) => {
                            let r = r.clone();
                            self.record_crash(&slot, &mut st, &r, &status);
                        }
                    }
                }
                if let (Phase::Stopped, Some(why)) = (&st.phase, &st.refused) {
                    return Err(BackendError::HomeRefused(why.clone()));
                }
                match &st.phase {
                    Phase::Running(_) => continue,
                    Phase::Starting(rx) => rx.clone(),
                    Phase::Stopped => {
                        let delay = match self.inner.settings.restart.delay(st.failures) {
                            Some(d) => d,
                            None => {
                                return Err(BackendError::Crashing {
                                    failures: st.failures,
                                    last: st.last_error(),
                                });
                            }
                        };
                        let not_before = st
                            .last_failure
                            .as_ref()
                            .map(|(at, _)| *at + delay)
                            .unwrap_or_else(Instant::now);
                        let (tx, rx) = watch::channel(None);
                        st.phase = Phase::Starting(rx.clone());
                        let stopping = st.stopping.take();
                        let this = self.clone();
                        let slot = slot.clone();
                        tokio::spawn(async move {
                            if let Some(mut done) = stopping {
                                // An Err only means the stopper is gone: nothing to wait for.
                                let _ = done.wait_for(|d| *d).await;
                            }
                            tokio::time::sleep_until(not_before.into()).await;
                            let result = this.start(&slot).await;
                            let _ = tx.send(Some(result));
                        });
                        rx
                    }
                }
            };
            let mut wait = wait;
            let outcome = wait
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|v| v.clone());
            match outcome {
                Some(Ok(())) => continue,
                Some(Err(e)) => return Err(e),
                None => return Err(BackendError::StartFailed("the start was abandoned".into())),
            }
        }
    }

    /// Starts the person's backend in the background, if it is not running or starting
    /// (for the "starting your assistant" page). Errors are kept for the next `ensure`.
    pub fn start_in_background(&self, id: &PersonId) {
        let this = self.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let _ = this.ensure(&id).await;
        });
    }

    /// Runs one start: queue for a start permit, make room, spawn, wait for readiness.
    /// Leaves the slot Running or Stopped.
    async fn start(&self, slot: &Arc<Slot>) -> Result<(), BackendError> {
        let settings = &self.inner.settings;
        let result = async {
            let _permit = self
                .inner
                .starts
                .acquire()
                .await
                .map_err(|_| BackendError::ShuttingDown)?;
            let port = self.take_port(&slot.id).await?;
            let dir = PersonDir::new(&settings.pool.data_root, &slot.id);
            // File system work (directory scan, chown) off the async threads.
            let prepared = {
                let (this, d) = (self.clone(), dir.clone());
                tokio::task::spawn_blocking(move || this.uid_for(&d))
                    .await
                    .unwrap_or_else(|e| {
                        Err(BackendError::DataDir {
                            dir: dir.home.display().to_string(),
                            error: format!("preparing it failed: {e}"),
                        })
                    })
            };
            let uid = match prepared {
                Ok(uid) => uid,
                Err(e) => {
                    self.give_back_port(port);
                    return Err(e);
                }
            };
            if let Some(uid) = uid {
                // Whatever this uid left running (a crashed Gatehouse) goes first.
                process::reap(&settings.launcher, uid).await;
                if let Some(fw) = &settings.firewall
                    && let Err(e) = fw.open_own_port(uid, port).await
                {
                    self.give_back_port(port);
                    return Err(BackendError::Unconfined(e));
                }
            }
            let started = Instant::now();
            match process::spawn(settings, &slot.id, &dir, port, uid).await {
                Ok(p) => Ok((p, started.elapsed())),
                Err(failure) => {
                    self.close_port(uid, port).await;
                    Err(match failure {
                        SpawnFailure::Exited {
                            code: Some(launch::HOME_REFUSED),
                            stderr,
                            ..
                        } => BackendError::HomeRefused(launch::home_refusal_reason(&stderr)),
                        f => BackendError::StartFailed(f.to_string()),
                    })
                }
            }
        }
        .await;

        let result = match result {
            Ok((process, _)) if self.inner.shutting_down.load(Ordering::Acquire) => {
                // stop_all ran while this one started: it must not outlive Gatehouse.
                process.stop(settings.stop_grace).await;
                self.close_port(process.uid, process.port).await;
                Err(BackendError::ShuttingDown)
            }
            other => other,
        };
        let mut st = lock(&slot.state);
        match result {
            Ok((process, took)) => {
                let ms = took.as_millis() as u64;
                let c = &self.inner.counters;
                c.starts.fetch_add(1, Ordering::Relaxed);
                c.last_start_ms.store(ms, Ordering::Relaxed);
                tracing::info!(pool = %settings.pool.name, person = %slot.id, port = process.port, pid = process.pid, uid = process.uid, start_ms = ms, "backend started");
                slot.touch();
                st.phase = Phase::Running(Arc::new(Running {
                    process,
                    since: SystemTime::now(),
                }));
                Ok(())
            }
            Err(e) => {
                st.phase = Phase::Stopped;
                if matches!(
                    e,
                    BackendError::StartFailed(_)
                        | BackendError::DataDir { .. }
                        | BackendError::HomeRefused(_)
                ) {
                    self.inner
                        .counters
                        .start_failures
                        .fetch_add(1, Ordering::Relaxed);
                    st.failures += 1;
                    st.last_failure = Some((Instant::now(), e.to_string()));
                    if let BackendError::HomeRefused(why) = &e {
                        st.refused = Some(why.clone());
                    }
                    tracing::error!(pool = %settings.pool.name, person = %slot.id, failures = st.failures, error = %e, "backend failed to start");
                } else {
                    tracing::warn!(pool = %settings.pool.name, person = %slot.id, error = %e, "backend not started");
                }
                Err(e)
            }
        }
    }

    /// The uid for the person's backend: the owner of their existing directory if it is in
    /// the range (a person keeps their uid, so their old files stay theirs), else the lowest
    /// uid in the range that owns no other person's directory. Prepares the home for it.
    fn uid_for(&self, dir: &PersonDir) -> Result<Option<u32>, BackendError> {
        let prepare = |uid: Option<u32>| {
            dir.prepare(uid).map_err(|e| match e {
                person::HomeError::NotADirectory(_) => BackendError::HomeRefused(e.to_string()),
                e => BackendError::DataDir {
                    dir: dir.home.display().to_string(),
                    error: e.to_string(),
                },
            })
        };
        let range = match (&self.inner.settings.pool.uids, self.inner.isolate) {
            (Some(r), true) => r,
            _ => return prepare(None).map(|()| None),
        };
        // Under the pool lock, so two new people never pick the same uid.
        let _pool = lock(&self.inner.pool);
        if let Some(owner) = dir.owner()
            && range.contains(owner)
        {
            return prepare(Some(owner)).map(|()| Some(owner));
        }
        let taken = self.home_owners();
        let uid = (range.first..=range.last)
            .find(|u| !taken.contains(u))
            .ok_or_else(|| BackendError::NoFreeUid {
                pool: self.inner.settings.pool.name.clone(),
            })?;
        // Claim it now: the home is made and owned by that uid before the lock is dropped.
        prepare(Some(uid)).map(|()| Some(uid))
    }

    /// A free port, stopping an idle backend to make room if the pool is full.
    async fn take_port(&self, for_id: &PersonId) -> Result<u16, BackendError> {
        let settings = &self.inner.settings;
        for _ in 0..3 {
            let (running, candidates) = {
                let pool = lock(&self.inner.pool);
                let running = self.running_count(&pool, for_id);
                if running < settings.pool.max_backends {
                    let port = pool.free_ports.iter().copied().find(|p| port_is_free(*p));
                    drop(pool);
                    match port {
                        Some(p) => {
                            lock(&self.inner.pool).free_ports.remove(&p);
                            return Ok(p);
                        }
                        None => {
                            return Err(BackendError::NoFreePort {
                                pool: settings.pool.name.clone(),
                                first: settings.pool.ports.0,
                                last: settings.pool.ports.1,
                            });
                        }
                    }
                }
                // Full: idle candidates, longest idle first.
                let mut c: Vec<_> = pool
                    .slots
                    .values()
                    .filter(|s| s.id != *for_id && s.active.load(Ordering::Acquire) == 0)
                    .filter_map(|s| match &lock(&s.state).phase {
                        Phase::Running(r) => Some((s.clone(), r.clone())),
                        _ => None,
                    })
                    .collect();
                c.sort_by_key(|(s, _)| std::cmp::Reverse(s.idle_for()));
                (running, c)
            };
            let mut made_room = false;
            for (slot, running) in candidates {
                if self.busy(&running).await {
                    continue;
                }
                if self.stop_if_unused(&slot, &running, "make room").await {
                    made_room = true;
                    break;
                }
            }
            if !made_room {
                return Err(BackendError::PoolFull {
                    pool: settings.pool.name.clone(),
                    running,
                });
            }
        }
        Err(BackendError::PoolFull {
            pool: settings.pool.name.clone(),
            running: settings.pool.max_backends,
        })
    }

    fn running_count(&self, pool: &Pool, except: &PersonId) -> usize {
        pool.slots
            .values()
            .filter(|s| s.id != *except)
            .filter(|s| !matches!(lock(&s.state).phase, Phase::Stopped))
            .count()
    }

    fn give_back_port(&self, port: u16) {
        lock(&self.inner.pool).free_ports.insert(port);
    }

    /// A backend of `uid` on `port` is gone: close its hole in the firewall, free the port.
    async fn close_port(&self, uid: Option<u32>, port: u16) {
        if let (Some(uid), Some(fw)) = (uid, &self.inner.settings.firewall)
            && let Err(e) = fw.close_own_port(uid, port).await
        {
            tracing::warn!(pool = %self.inner.settings.pool.name, uid, port, error = %e, "cannot remove a stopped backend's port from the firewall");
        }
        self.give_back_port(port);
    }

    /// Whether OpenCode reports a session at work. Unanswered counts as busy.
    async fn busy(&self, running: &Running) -> bool {
        let auth = running.process.password.basic_authorization();
        match probe::get(
            running.process.port,
            "/session/status",
            &auth,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(a) if a.status == 200 => probe::says_busy(&a.body),
            _ => true,
        }
    }

    /// Stops `running` if it is still the slot's backend and no lease is held. Returns
    /// whether it stopped it.
    async fn stop_if_unused(&self, slot: &Arc<Slot>, running: &Arc<Running>, why: &str) -> bool {
        let stopped = {
            let mut st = lock(&slot.state);
            let current = matches!(&st.phase, Phase::Running(r) if Arc::ptr_eq(r, running));
            if !current || slot.active.load(Ordering::Acquire) > 0 {
                return false;
            }
            st.begin_stop()
        };
        running.process.stop(self.inner.settings.stop_grace).await;
        self.close_port(running.process.uid, running.process.port)
            .await;
        let _ = stopped.send(true);
        tracing::info!(pool = %self.inner.settings.pool.name, person = %slot.id, reason = why, "backend stopped");
        true
    }

    fn record_crash(&self, slot: &Slot, st: &mut SlotState, running: &Arc<Running>, status: &str) {
        let stopped = st.begin_stop();
        st.failures += 1;
        let what = format!("exited ({status})");
        st.last_failure = Some((Instant::now(), what.clone()));
        self.inner.counters.crashes.fetch_add(1, Ordering::Relaxed);
        let process = &running.process;
        tracing::error!(pool = %self.inner.settings.pool.name, person = %slot.id, pid = process.pid, failures = st.failures, status = %status, "backend exited; it will be started again on the next request");
        // Group members, the uid's other processes and the pid file: stop() only signals
        // and removes the file here. The port is free once they are gone.
        let (this, running) = (self.clone(), running.clone());
        tokio::spawn(async move {
            running.process.stop(Duration::ZERO).await;
            this.close_port(running.process.uid, running.process.port)
                .await;
            let _ = stopped.send(true);
        });
    }

    /// Stops the person's backend now (restart button, sign-out option), waiting for it.
    /// Open streams end with it.
    pub async fn stop(&self, id: &PersonId) {
        let slot = self.slot(id);
        let running = {
            let mut st = lock(&slot.state);
            match &st.phase {
                Phase::Running(r) => {
                    let r = r.clone();
                    Some((r, st.begin_stop()))
                }
                _ => None,
            }
        };
        if let Some((r, stopped)) = running {
            r.process.stop(self.inner.settings.stop_grace).await;
            self.close_port(r.process.uid, r.process.port).await;
            let _ = stopped.send(true);
            tracing::info!(pool = %self.inner.settings.pool.name, person = %id, reason = "requested", "backend stopped");
        }
    }

    /// Stops the backend (if any), forgets its failures and starts it again in the background.
    pub async fn restart(&self, id: &PersonId) {
        self.stop(id).await;
        {
            let slot = self.slot(id);
            let mut st = lock(&slot.state);
            st.failures = 0;
            st.last_failure = None;
            st.refused = None;
        }
        self.start_in_background(id);
    }

    /// The person's backend as the user page shows it.
    pub fn status(&self, id: &PersonId) -> Status {
        let Some(slot) = lock(&self.inner.pool).slots.get(id).cloned() else {
            return Status::Stopped;
        };
        let st = lock(&slot.state);
        match &st.phase {
            Phase::Running(r) if r.process.has_exited().is_none() => Status::Running {
                since: r.since,
                last_activity: SystemTime::now() - slot.idle_for(),
                open_requests: slot.active.load(Ordering::Acquire),
            },
            Phase::Starting(_) => Status::Starting,
            _ if self.inner.settings.restart.delay(st.failures).is_none() => Status::Crashing {
                failures: st.failures,
                last: st.last_error(),
            },
            _ => Status::Stopped,
        }
    }

    /// Whether the person's backend answers now (no start needed).
    pub fn is_running(&self, id: &PersonId) -> bool {
        matches!(self.status(id), Status::Running { .. })
    }

    /// The running backend that was started with relay token `token` (issue 12): its person
    /// and uid. `None` for an unknown token, or one whose backend is stopped or stopping:
    /// a token dies with its process.
    pub fn relay_holder(&self, token: &str) -> Option<RelayHolder> {
        let slots: Vec<Arc<Slot>> = lock(&self.inner.pool).slots.values().cloned().collect();
        slots.iter().find_map(|slot| {
            let st = lock(&slot.state);
            match &st.phase {
                Phase::Running(r)
                    if r.process.has_exited().is_none()
                        && r.process
                            .relay_token
                            .as_ref()
                            .is_some_and(|t| t.matches(token)) =>
                {
                    Some(RelayHolder {
                        person: slot.id.clone(),
                        uid: r.process.uid,
                    })
                }
                _ => None,
            }
        })
    }

    /// The pid of the person's running backend (tests, user page).
    pub fn pid(&self, id: &PersonId) -> Option<u32> {
        let slot = lock(&self.inner.pool).slots.get(id).cloned()?;
        let st = lock(&slot.state);
        match &st.phase {
            Phase::Running(r) => Some(r.process.pid),
            _ => None,
        }
    }

    /// The pool's counters now, with the number of running backends (for metrics).
    pub fn counters(&self) -> CountersSnapshot {
        let c = &self.inner.counters;
        let (mut running, mut starting, mut stopping) = (0, 0, 0);
        for slot in lock(&self.inner.pool).slots.values() {
            let st = lock(&slot.state);
            match &st.phase {
                Phase::Running(_) => running += 1,
                Phase::Starting(_) => starting += 1,
                // A stop is under way until its stopper says done (or is gone).
                Phase::Stopped => {
                    if st
                        .stopping
                        .as_ref()
                        .is_some_and(|done| !*done.borrow() && done.has_changed().is_ok())
                    {
                        stopping += 1;
                    }
                }
            }
        }
        CountersSnapshot {
            running,
            starting,
            stopping,
            starts: c.starts.load(Ordering::Relaxed),
            start_failures: c.start_failures.load(Ordering::Relaxed),
            crashes: c.crashes.load(Ordering::Relaxed),
            idle_stops: c.idle_stops.load(Ordering::Relaxed),
            last_start_ms: c.last_start_ms.load(Ordering::Relaxed),
        }
    }

    /// One round of checks: notice exits, stop idle backends, clear failure counts of
    /// backends that stayed up.
    pub async fn check(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.inner.pool).slots.values().cloned().collect();
        for slot in slots {
            let running = {
                let mut st = lock(&slot.state);
                let Phase::Running(r) = &st.phase else {
                    continue;
                };
                let r = r.clone();
                if let Some(status) = r.process.has_exited() {
                    self.record_crash(&slot, &mut st, &r, &status);
                    continue;
                }
                // Up for a while: the failures before no longer count.
                if st.failures > 0
                    && r.since.elapsed().unwrap_or_default() > self.inner.settings.restart.max_delay
                {
                    st.failures = 0;
                }
                r
            };
            if slot.active.load(Ordering::Acquire) > 0
                || slot.idle_for() < self.inner.settings.pool.idle_timeout
            {
                continue;
            }
            if self.busy(&running).await {
                tracing::debug!(person = %slot.id, "idle backend kept: a session is busy");
                continue;
            }
            if self.stop_if_unused(&slot, &running, "idle").await {
                self.inner
                    .counters
                    .idle_stops
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Runs the checks every `check_interval` until `shutdown` turns true, then stops every
    /// backend. The proxy runs this as a background service.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        self.set_up().await;
        let mut tick = tokio::time::interval(self.inner.settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.check().await,
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
        }
        self.stop_all().await;
    }

    /// Stops every backend and refuses new starts.
    pub async fn stop_all(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.inner.starts.close();
        let ids: Vec<PersonId> = lock(&self.inner.pool).slots.keys().cloned().collect();
        let mut stops = Vec::new();
        for id in ids {
            let this = self.clone();
            stops.push(tokio::spawn(async move { this.stop(&id).await }));
        }
        for s in stops {
            let _ = s.await;
        }
        if let Some(fw) = &self.inner.settings.firewall
            && let Err(e) = fw.remove().await
        {
            tracing::warn!(pool = %self.inner.settings.pool.name, error = %e, "cannot remove the backends' firewall table");
        }
        tracing::info!(pool = %self.inner.settings.pool.name, "all backends stopped");
    }
}

/// Whether nothing listens on `127.0.0.1:port` (another program may hold a pool port).
fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_delay_doubles_then_stops() {
        let p = RestartPolicy {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            max_failures: 4,
        };
        assert_eq!(p.delay(0), Some(Duration::ZERO));
        assert_eq!(p.delay(1), Some(Duration::from_secs(1)));
        assert_eq!(p.delay(2), Some(Duration::from_secs(2)));
        assert_eq!(p.delay(3), Some(Duration::from_secs(4)));
        assert_eq!(p.delay(4), None);
    }
}
