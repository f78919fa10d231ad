//! Hot reload of routes and policies.
//!
//! The config file and the named-policy directory are watched (inotify, Linux), and
//! `SIGHUP` reloads too.
//! A reload parses and checks the whole config exactly as at start; only a config with no
//! error replaces the one serving. On any error the old config keeps serving, each problem
//! is logged at its `file:line:col`, and `gatehouse_config_last_reload_successful` drops to
//! 0 on the metrics listener.
//!
//! What a reload changes: routes, their upstreams and every access rule (policies, named
//! policies, `allowed_*`). New requests see the new rules at once; requests in flight keep
//! the state they started with, and open streams stay open, except those whose person the
//! new rules no longer allow, which are ended ([`crate::streams`]).
//!
//! The Google directory settings (`idp_service_account`, `idp_*directory*`) reload too; the
//! group cache is carried over. Certificates reload when their files' contents change (the
//! files are watched too); open connections keep the certificate they were made with. What
//! needs a restart: listeners, the identity
//! provider, cookie and signing keys. Sign-in state (one-time handoffs, discovery and JWKS caches, the identity JWT
//! key) lives in [`gatehouse_auth::Auth`], which a reload keeps, so nobody is signed out
//! and no one-time token can be replayed across a reload. A changed restart-only key is
//! logged as a warning naming the key.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use gatehouse_config::{Config, ProcessEnv};
use inotify::{Inotify, WatchMask};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::{Live, State, build_routes};

/// How long to wait after a change before reloading, so an editor's several writes (and a
/// `git checkout` of many policy files) become one reload.
const SETTLE: Duration = Duration::from_millis(200);

/// Settings that only take effect at start, with a digest of each value (never the value:
/// some are secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartOnly(Vec<(&'static str, u64)>);

impl RestartOnly {
    /// The restart-only settings of `c`, digested.
    pub fn of(c: &Config) -> Self {
        fn digest(v: impl Hash) -> u64 {
            let mut h = DefaultHasher::new();
            v.hash(&mut h);
            h.finish()
        }
        RestartOnly(vec![
            ("address", digest(c.address)),
            ("insecure_server", digest(c.insecure_server)),
            ("http_redirect_addr", digest(c.http_redirect_addr)),
            ("metrics_address", digest(c.metrics_address)),
            ("health_check_addr", digest(c.health_check_addr)),
            // Configured certificates reload (their files are read again); whether there
            // are any (or a self-signed one is made) is decided at start.
            ("certificates", digest(c.certificates.is_empty())),
            (
                "authenticate_service_url",
                digest(c.authenticate_service_url.as_ref().map(|u| u.as_str())),
            ),
            ("idp_provider_url", digest(c.idp.issuer.as_str())),
            ("idp_client_id", digest(&c.idp.client_id)),
            ("idp_client_secret", digest(c.idp.client_secret.expose())),
            ("idp_scopes", digest(&c.idp.scopes)),
            ("cookie_name", digest(&c.cookie.name)),
            ("cookie_secret", digest(c.cookie.secret.expose())),
            ("cookie_expire", digest(c.cookie.expire)),
            ("cookie_domain", digest(&c.cookie.domain)),
            ("cookie_same_site", digest(c.cookie.same_site as u8)),
            (
                "signing_key",
                digest(c.signing_key.as_ref().map(|k| k.expose())),
            ),
            ("log_level", digest(&c.log_level)),
            ("state_dir", digest(&c.state_dir)),
            // The running supervisors keep their settings (ports, uids, data root…).
            ("backends", digest(backend_pools(c))),
        ])
    }

    /// The keys whose values differ.
    fn changed(&self, newer: &RestartOnly) -> Vec<&'static str> {
        self.0
            .iter()
            .zip(&newer.0)
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| a.0)
            .collect()
    }
}

/// Every pool setting except where it was written (moving lines is not a change).
fn backend_pools(c: &Config) -> Vec<String> {
    c.backends
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p.origin = gatehouse_config::Origin::Default;
            if let Some(u) = p.uids.as_mut() {
                u.origin = gatehouse_config::Origin::Default;
            }
            if let Some(o) = p.isolation_none.as_mut() {
                *o = gatehouse_config::Origin::Default;
            }
            for e in &mut p.egress {
                e.origin = gatehouse_config::Origin::Default;
            }
            format!("{p:?}")
        })
        .collect()
}

/// What a successful reload loaded that the watcher needs to know.
pub struct Reloaded {
    /// The `policies_dir` of the new config (it may have moved).
    pub policies_dir: Option<PathBuf>,
    /// The certificate and key files of the new config.
    pub certificates: Vec<PathBuf>,
}

/// Reloads the config at `path` into `live`. `None` when it failed and the old config is
/// still serving.
pub fn reload(live: &Live, path: &Path, started_with: &RestartOnly, why: &str) -> Option<Reloaded> {
    let fail = |errors: Vec<gatehouse_config::ConfigError>| {
        for e in &errors {
            tracing::error!(target: "gatehouse::reload", "{e}");
        }
        tracing::error!(
            target: "gatehouse::reload",
            trigger = why,
            errors = errors.len(),
            "config reload failed; still serving the previous config (fix the errors above and save again)"
        );
        live.metrics.reloaded(false);
        None
    };
    let config = match gatehouse_config::load(path, &ProcessEnv) {
        Ok(c) => c,
        Err(e) => return fail(e.errors),
    };
    let (routes, table) = match build_routes(&config, &live.backends) {
        Ok(r) => r,
        Err(errors) => return fail(errors),
    };
    let mut errors = Vec::new();
    let directory = crate::directory(&config, &mut errors);
    if !errors.is_empty() {
        return fail(errors);
    }
    for w in &config.warnings {
        tracing::warn!(target: "gatehouse::reload", "{w}");
    }
    // Certificates: loaded again, and swapped in when their files' contents changed.
    let newer_certs = match (&live.certificates, config.certificates.is_empty()) {
        (Some(_), false) => match crate::tls::load_resolver(&config.certificates) {
            Ok(r) => Some(r),
            Err(errors) => return fail(errors),
        },
        _ => None,
    };
    let changed = started_with.changed(&RestartOnly::of(&config));
    if !changed.is_empty() {
        tracing::warn!(
            target: "gatehouse::reload",
            keys = %changed.join(", "),
            "these settings changed but take effect only after a restart; the running values are kept"
        );
    }
    let old = live.state.load_full();
    // The group cache outlives the reload (when the directory and admin are the same), so
    // nobody waits for a lookup again.
    let directory = directory.map(|d| match &old.directory {
        Some(previous) => Arc::new(d.carry_over(previous)),
        None => Arc::new(d),
    });
    let state = Arc::new(State {
        routes,
        table,
        directory,
        auth: Arc::clone(&old.auth),
        auth_host: old.auth_host.clone(),
        cookie: old.cookie.clone(),
        tls: old.tls,
        // Takes effect for new requests at once.
        max_connections_per_client: config.max_connections_per_client,
        access_token_max_expire: config.access_token_max_expire,
    });
    live.state.store(Arc::clone(&state));
    if let (Some(serving), Some(newer)) = (&live.certificates, newer_certs)
        && serving.replace(newer)
    {
        tracing::info!(target: "gatehouse::reload", "certificates reloaded: new connections get the new ones, open ones keep theirs");
    }
    live.metrics.reloaded(true);
    tracing::info!(
        target: "gatehouse::reload",
        trigger = why,
        routes = state.routes.len(),
        "config reloaded"
    );
    let ended = live.end_disallowed_streams(&state);
    if ended > 0 {
        tracing::info!(target: "gatehouse::reload", ended, "ended streams the new config no longer allows");
    }
    Some(Reloaded {
        policies_dir: config.policies_dir.as_deref().map(absolute),
        certificates: certificate_files(&config),
    })
}

/// The certificate and key files of `config`, absolute.
pub fn certificate_files(config: &Config) -> Vec<PathBuf> {
    config
        .certificates
        .iter()
        .flat_map(|p| [absolute(&p.cert_file), absolute(&p.key_file)])
        .collect()
}

/// The files a reload reads: the config file and the named-policy directory.
#[derive(Debug, Clone)]
pub struct Watched {
    /// The config file.
    pub config_path: PathBuf,
    /// The config's `policies_dir`, when it names one.
    pub policies_dir: Option<PathBuf>,
    /// The certificate and key files (a renewal replaces them).
    pub certificates: Vec<PathBuf>,
}

impl Watched {
    /// Whether a changed path is one Gatehouse reads: the config file itself, or a policy
    /// file (`*.yaml`/`*.yml`, not hidden; editors' swap files are skipped).
    fn relevant(&self, changed: &Path) -> bool {
        if changed.file_name() == self.config_path.file_name()
            && changed.parent() == self.config_path.parent()
        {
            return true;
        }
        if self.certificates.iter().any(|c| c == changed) {
            return true;
        }
        // A Kubernetes ConfigMap volume swaps all its files at once by renaming `..data`.
        if changed.file_name().is_some_and(|n| n == "..data")
            && (changed.parent() == self.config_path.parent()
                || changed.parent() == self.policies_dir.as_deref()
                || self
                    .certificates
                    .iter()
                    .any(|c| c.parent() == changed.parent()))
        {
            return true;
        }
        let Some(dir) = &self.policies_dir else {
            return false;
        };
        let name = changed
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        changed.parent() == Some(dir.as_path())
            && !name.starts_with('.')
            && (name.ends_with(".yaml") || name.ends_with(".yml"))
    }

    /// Starts watching; each relevant change sends on `tx`. `None` (with a warning) when
    /// the directories cannot be watched: SIGHUP still works.
    ///
    /// inotify, for the directories (editors and Kubernetes replace files by renaming, which
    /// a watch on the file itself would lose), with a mask of finished changes only:
    /// a file written and closed, moved in or out, created or deleted. Not every write: a
    /// log file next to the config would otherwise wake the watcher on every request.
    fn watch(&self, tx: tokio::sync::mpsc::UnboundedSender<()>) -> Option<WatchTask> {
        const MASK: WatchMask = WatchMask::CLOSE_WRITE
            .union(WatchMask::MOVED_TO)
            .union(WatchMask::MOVED_FROM)
            .union(WatchMask::CREATE)
            .union(WatchMask::DELETE);
        let inotify = match Inotify::init() {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config files; reload with SIGHUP");
                return None;
            }
        };
        let config_dir = self
            .config_path
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        let mut wanted: Vec<PathBuf> = std::iter::once(config_dir)
            .chain(self.policies_dir.clone())
            .chain(
                self.certificates
                    .iter()
                    .filter_map(|c| c.parent().map(Path::to_path_buf)),
            )
            .collect();
        wanted.sort();
        wanted.dedup();
        let mut dirs = Vec::new();
        for d in wanted {
            match inotify.watches().add(&d, MASK) {
                Ok(wd) => dirs.push((wd, d)),
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "cannot watch this directory; reload with SIGHUP");
                }
            }
        }
        let mut events = match inotify.into_event_stream(vec![0u8; 4096]) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config files; reload with SIGHUP");
                return None;
            }
        };
        let filter = self.clone();
        Some(WatchTask(tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                let Some(dir) = dirs.iter().find(|(wd, _)| *wd == event.wd).map(|(_, d)| d) else {
                    continue;
                };
                if event.name.is_some_and(|n| filter.relevant(&dir.join(n))) {
                    let _ = tx.send(());
                }
            }
        })))
    }
}

/// The watch: ends when dropped.
struct WatchTask(tokio::task::JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches the files and waits for `SIGHUP`; reloads on either. A Pingora background
/// service, so it stops with the server.
pub struct Reloader {
    /// The serving state a reload replaces.
    pub live: Arc<Live>,
    /// Absolute paths (the watcher reports absolute paths).
    pub watched: Watched,
    /// The restart-only settings Gatehouse started with: a reload that changes one warns
    /// that it takes effect only at the next start.
    pub started_with: RestartOnly,
}

/// Absolute form of a path, for comparing with the watcher's event paths.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watched = self.watched.clone();
        let mut watcher = watched.watch(tx.clone());
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads come from file changes only");
                None
            }
        };
        loop {
            let why = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
                Some(()) = rx.recv() => {
                    // Let the writes settle, then take them all as one change.
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                    "file change"
                }
            };
            let live = Arc::clone(&self.live);
            let path = watched.config_path.clone();
            let started = self.started_with.clone();
            // Loading reads files; keep it off the async workers.
            let done =
                tokio::task::spawn_blocking(move || reload(&live, &path, &started, why)).await;
            if let Ok(Some(r)) = done
                && (r.policies_dir != watched.policies_dir
                    || r.certificates != watched.certificates)
            {
                // The policy directory or a certificate moved: watch the new places instead.
                watched.policies_dir = r.policies_dir;
                watched.certificates = r.certificates;
                drop(watcher.take());
                watcher = watched.watch(tx.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_config_file_and_policy_files_trigger_a_reload() {
        let w = Watched {
            config_path: PathBuf::from("/etc/gatehouse/config.yaml"),
            policies_dir: Some(PathBuf::from("/etc/gatehouse/policies")),
            certificates: vec![
                PathBuf::from("/etc/letsencrypt/live/a/fullchain.pem"),
                PathBuf::from("/etc/letsencrypt/live/a/privkey.pem"),
            ],
        };
        for yes in [
            "/etc/gatehouse/config.yaml",
            "/etc/gatehouse/policies/staff.yaml",
            "/etc/gatehouse/policies/staff.yml",
            // A test file changing is harmless to reload on (it is skipped when loading).
            "/etc/gatehouse/policies/staff.test.yaml",
            // Kubernetes ConfigMap volumes swap `..data`.
            "/etc/gatehouse/..data",
            "/etc/gatehouse/policies/..data",
            // A renewal replaces the certificate files.
            "/etc/letsencrypt/live/a/fullchain.pem",
            "/etc/letsencrypt/live/a/privkey.pem",
        ] {
            assert!(w.relevant(Path::new(yes)), "{yes}");
        }
        for no in [
            "/etc/gatehouse/other.yaml",
            "/etc/gatehouse/config.yaml.swp",
            "/etc/gatehouse/policies/.staff.yaml.swp",
            "/etc/gatehouse/policies/4913",
            "/etc/gatehouse/policies/sub/x.yaml",
            "/elsewhere/config.yaml",
            "/etc/letsencrypt/live/a/README",
        ] {
            assert!(!w.relevant(Path::new(no)), "{no}");
        }
    }

    #[test]
    fn restart_only_changes_are_named_by_key() {
        let a = RestartOnly(vec![("address", 1), ("cookie_secret", 2), ("log_level", 3)]);
        let b = RestartOnly(vec![("address", 1), ("cookie_secret", 9), ("log_level", 4)]);
        assert_eq!(a.changed(&b), ["cookie_secret", "log_level"]);
        assert!(a.changed(&a.clone()).is_empty());
    }
}
