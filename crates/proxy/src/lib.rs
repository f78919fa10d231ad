//! Gatehouse's proxy: the only crate that knows Pingora.
//!
//! It owns listeners, TLS, routing, Gatehouse's own endpoints, header handling, the pages a
//! person sees and the request log. It holds no policy or crypto logic: it asks
//! `gatehouse-policy` for decisions and `gatehouse-auth` for identities.
//!
//! The request flow (docs/design.md), with the module and function of each step:
//!
//! ```text
//! TCP :80  ── listeners::HttpsRedirect: 308 to https (except /.gatehouse/health)
//! TCP :443 ── rustls (tls::SniResolver picks the certificate) ── HTTP/1.1 or HTTP/2
//!    │
//!    ├─ service: request_filter → flow::decide(&State, backends, &RequestHeader, &mut Ctx)
//!    │    ├─ host and path checks (request, routes)                → 400 (Refusal)
//!    │    ├─ /.gatehouse/health                                    → 200
//!    │    ├─ authenticate host: signin::authenticate_host (sign_in, /oauth2/callback, sign_out)
//!    │    ├─ route match (routes::RouteTable)           no route   → 404 (Refusal::NoRoute)
//!    │    ├─ JWKS (endpoints::jwks), callback (signin::route_callback), signed_out
//!    │    ├─ public route                                          → Step::Continue
//!    │    ├─ identity: credentials::presented: a Gatehouse access token (Bearer, Basic,
//!    │    │    ?auth_token=) or, where the route opts in, an IdP ID token → 401 JSON if bad,
//!    │    │    or if the token is not for this route; else signin (sealed session cookie)
//!    │    │    none → login cookie + 302 to IdP (401 JSON for scripts)
//!    │    ├─ /.gatehouse/ pages: endpoints::page; posted forms → Step::ReadForm, then
//!    │    │    request_filter reads the body (the only one) and calls endpoints::submit
//!    │    ├─ flow::decide_policy → policy::evaluate   deny → 403 (Refusal::PolicyDenied)
//!    │    └─ to_backend route: cross-site write → 403; else Step::Backend, then
//!    │         flow::backend_step gets the person's backend (starting page / 503 / 504)
//!    ├─ upstream_peer → upstream::peer: the route's `to`, or 127.0.0.1:<backend port>
//!    ├─ upstream_request_filter → upstream::prepare_request: strip client identity
//!    │    headers, our cookies and our tokens (credentials::strip), the backend's password replaces any client
//!    │    Authorization, set X-Forwarded-*, Host, identity headers + signed JWT
//!    ├─ response_filter: streams registered (streams), upstream::strip_own_set_cookies,
//!    │    compression of backend assets (upstream::compressible)
//!    ├─ (Pingora streams the response: SSE and WebSocket unbuffered)
//!    ├─ fail_to_proxy: the error as a Refusal; pages::refusal picks every page
//!    └─ logging: one access line (path without query, decision = refusal::Outcome),
//!         target `gatehouse::access`
//! ```
//!
//! Other modules: `state` (what a request is decided against, rebuilt on reload),
//! `listeners` (every listener, background services, `run`, signals), `host` (checks
//! against the machine: backend confinement, secret files), `reload`, `streams`, `metrics`,
//! `tls`.

#![warn(missing_docs, unreachable_pub)]

mod access_tokens;
pub mod clients;
pub mod control;
mod credentials;
mod endpoints;
mod flow;
pub mod health;
mod host;
pub mod keys;
mod listeners;
pub mod metrics;
pub mod pages;
mod peer_uid;
mod providers;
mod refusal;
pub mod relay;
pub mod reload;
mod request;
pub mod routes;
mod service;
mod signin;
mod state;
pub mod streams;
pub mod tls;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::prelude::*;

use arc_swap::ArcSwap;
use gatehouse_auth::Auth;
use gatehouse_backends::{PoolSettings, Supervisor};
use gatehouse_config::{Config, ConfigError, ConfigErrors};
use gatehouse_policy::{Decision, Policy};

pub use listeners::{
    HttpsRedirect, MetricsEndpoint, RunOptions, downstream_buffers, run, server_conf,
};
pub use service::Gatehouse;
pub(crate) use state::pool;
pub use state::{
    AuthHost, CookieSettings, RouteState, State, StaticUpstream, Target, build_routes,
};

/// Everything checked and built, ready to bind. `gatehouse check` stops here.
pub struct Prepared {
    live: Arc<Live>,
    tls: Option<Arc<tls::SniResolver>>,
    address: SocketAddr,
    redirect_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    /// Where the LLM relay listens, when a pool relays providers.
    relay_addr: Option<SocketAddr>,
    /// The control socket (`serve` only).
    control_path: Option<std::path::PathBuf>,
    watched: reload::Watched,
    started_with: reload::RestartOnly,
    /// Notes for the operator (e.g. "using a self-signed certificate").
    pub notes: Vec<String>,
}

impl Prepared {
    /// How many routes the config defines.
    pub fn routes(&self) -> usize {
        self.live.state.load().routes.len()
    }
}

/// What the proxy service and the reloader share: the state serving now (swapped whole by
/// a reload), the open streams and the metrics.
#[derive(Debug)]
pub struct Live {
    /// The routes, policies and settings serving now; a reload stores a new one.
    pub state: ArcSwap<State>,
    /// Long-lived responses open now, so a reload or sign-out can end them.
    pub streams: streams::Streams,
    /// Gatehouse's metrics, served on `metrics_address`.
    pub metrics: metrics::Metrics,
    /// Requests open now per client address, for `max_connections_per_client`.
    pub clients: Arc<clients::OpenPerClient>,
    /// One supervisor per `backends:` pool, made once at start: a reload swaps the routes
    /// that name them, never the running backends (pool settings are restart-only).
    pub backends: Vec<Supervisor>,
    /// People's provider keys in memory (issue 12); a reload keeps them.
    pub keys: keys::KeyRing,
    /// Readiness, as the last probe found it ([`health`]).
    pub health: health::Health,
    /// The main listener's certificates, swapped by a reload when their files change.
    pub certificates: Option<Arc<tls::SniResolver>>,
}

impl Live {
    /// Serving `state` with `backends`, no streams open, and the start counted as a
    /// successful load in the metrics.
    pub fn new(state: State, backends: Vec<Supervisor>, keys: keys::KeyRing) -> Self {
        let metrics = metrics::Metrics::default();
        metrics.loaded(true);
        Live {
            state: ArcSwap::from_pointee(state),
            streams: streams::Streams::default(),
            clients: Arc::default(),
            metrics,
            backends,
            keys,
            health: health::Health::default(),
            certificates: None,
        }
    }

    /// Decides every open stream again under `state` and ends those it no longer allows:
    /// their route is gone, became someone else's, or its policy now denies the person.
    pub fn end_disallowed_streams(&self, state: &State) -> usize {
        self.end_streams(|s| {
            let Some(idx) = state.table.find(&s.host, s.port, &s.path) else {
                return Some("no route serves it any more".to_string());
            };
            let route = &state.routes[idx];
            if route.public {
                return None;
            }
            // The groups it was admitted with (directory groups are kept on the identity).
            match flow::decide_policy(state, route, &s.identity, &s.method, &s.path, None) {
                Decision::Allow(_) => None,
                Decision::Deny(reason) => Some(reason.code().to_string()),
            }
        })
    }

    /// Ends the open streams opened with one of the access tokens `ids` (just revoked).
    pub(crate) fn end_token_streams(&self, ids: &[String]) -> usize {
        if ids.is_empty() {
            return 0;
        }
        self.end_streams(|s| {
            s.token
                .as_ref()
                .filter(|t| ids.contains(t))
                .map(|_| "its access token was revoked".to_string())
        })
    }

    /// Ends the open streams `why` gives a reason for, and counts them.
    pub(crate) fn end_streams(
        &self,
        why: impl FnMut(&streams::OpenStream) -> Option<String>,
    ) -> usize {
        let ended = self.streams.end_where(why);
        self.metrics.streams_ended.inc_by(ended as u64);
        ended
    }

    /// The metrics text, with each pool's backend counters brought up to date.
    pub fn render_metrics(&self) -> String {
        self.metrics.streams_open.set(self.streams.len() as i64);
        if let Some(certs) = &self.certificates {
            self.metrics.certificates(&certs.expiries());
        }
        for sup in &self.backends {
            self.metrics
                .sync_backends(&sup.settings().pool.name, &sup.counters());
        }
        self.metrics.render()
    }

    /// Ends every open stream of the person who signed out (same issuer and subject), in
    /// this browser and any other: sign-out means "stop talking to my assistant now".
    /// (Another browser's session is still valid; its page may reconnect.)
    pub fn end_person_streams(&self, iss: &str, sub: &str) -> usize {
        self.end_streams(|s| {
            let who = s.identity.session();
            (who.iss == iss && who.sub == sub).then(|| "signed out".to_string())
        })
    }
}

/// What a config is prepared for: each step adds checks (and side effects) to the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// `policy explain`, `policy test`: the machine is not looked at.
    Offline,
    /// `check`: also the checks against this machine, but nothing is created.
    Check,
    /// `serve`: also opens (or creates) the state store in `state_dir`.
    Serve,
}

/// Checks what the config crate cannot (certificates, keys, upstream addresses) and builds
/// the request-time state. All problems are reported together, each at its config position.
/// For the offline tools (`policy explain`, `policy test`): the machine is not checked, and
/// the state store lives in memory.
pub fn prepare(config: &Config) -> Result<Prepared, ConfigErrors> {
    prepare_with(config, Purpose::Offline)
}

/// [`prepare`], plus the checks against this machine that `check` makes: the backend
/// pools' isolation and confinement, and Gatehouse's secret files (issue 9).
pub fn prepare_to_check(config: &Config) -> Result<Prepared, ConfigErrors> {
    prepare_with(config, Purpose::Check)
}

/// [`prepare_to_check`], and the state store opened from `state_dir` (created if missing;
/// a damaged or unwritable one is an error).
pub fn prepare_to_serve(config: &Config) -> Result<Prepared, ConfigErrors> {
    prepare_with(config, Purpose::Serve)
}

/// Where the LLM relay listens: only when a pool relays providers.
fn relay_addr(config: &Config) -> Option<SocketAddr> {
    config
        .backends
        .iter()
        .any(|p| p.relay.is_some())
        .then_some(config.relay_address)
}

/// The addresses `serve` would listen on that it cannot: a port below 1024 without the
/// capability, one another process holds, an address not on this machine. Checked by
/// binding each once before anything starts, because Pingora binds later, in a thread of
/// its own, and a failure there would leave Gatehouse running without that listener.
fn unlistenable(config: &Config) -> Vec<ConfigError> {
    let relay = relay_addr(config);
    [
        ("address", Some(config.address)),
        ("http_redirect_addr", config.http_redirect_addr),
        ("metrics_address", config.metrics_address),
        ("health_check_addr", config.health_check_addr),
        ("relay_address", relay),
    ]
    .into_iter()
    .filter_map(|(key, addr)| Some((key, addr?)))
    .filter_map(|(key, addr)| {
        let e = std::net::TcpListener::bind(addr).err()?;
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
                "ports below 1024 need root or CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE; podman/docker: --cap-add NET_BIND_SERVICE), or set {key} to a port of 1024 or more"
            ),
            std::io::ErrorKind::AddrInUse => format!(
                "another process listens there (`ss -ltnp 'sport = :{}'` names it): stop it or set {key} to another port",
                addr.port()
            ),
            std::io::ErrorKind::AddrNotAvailable => format!(
                "{} is not an address of this machine: use one it has, or 0.0.0.0 / [::] for all",
                addr.ip()
            ),
            _ => format!("set {key} to an address Gatehouse can listen on"),
        };
        Some(ConfigError::new(
            gatehouse_config::Origin::Default,
            format!("{key}: cannot listen on {addr}: {e}; {hint}"),
        ))
    })
    .collect()
}

fn open_store(
    config: &Config,
    purpose: Purpose,
) -> Result<Arc<dyn gatehouse_auth::store::StateStore>, ConfigError> {
    use gatehouse_auth::store::SqliteStore;
    let store = if purpose == Purpose::Serve {
        SqliteStore::open(&config.state_dir, gatehouse_auth::now())
    } else {
        SqliteStore::in_memory()
    };
    match store {
        Ok(s) => Ok(Arc::new(s)),
        Err(e) => Err(ConfigError::new(
            config.state_dir_origin.clone(),
            match config.state_dir_origin {
                gatehouse_config::Origin::Default => {
                    format!("state_dir (not set, so the default): {e}")
                }
                _ => format!("state_dir: {e}"),
            },
        )),
    }
}

/// Stored provider keys sealed with a previous `cookie_secret` are sealed again under the
/// current one (issue 12). Rows no configured secret opens are left as they are. What was
/// done, as notes for the start-up log (logging is not set up yet when this runs).
fn rotate_provider_keys(auth: &Auth) -> Vec<String> {
    match auth.vault.rotate_provider_keys() {
        Ok(r) => {
            let mut notes = Vec::new();
            if r.resealed > 0 {
                notes.push(format!(
                    "stored provider keys: {} re-encrypted under the current cookie_secret (they were sealed with one in cookie_secret_previous)",
                    r.resealed
                ));
            }
            for (person, provider) in &r.unreadable {
                notes.push(format!(
                    "stored provider key of person {person} for `{provider}` cannot be decrypted with any configured secret (sealed with another one, or the row was changed); it is kept as it is: put the old cookie_secret in cookie_secret_previous, or the person enters the key again"
                ));
            }
            notes
        }
        Err(e) => vec![format!(
            "stored provider keys could not be re-encrypted under the current secret ({e}); they still open with the previous one"
        )],
    }
}

fn prepare_with(config: &Config, purpose: Purpose) -> Result<Prepared, ConfigErrors> {
    let check_host = purpose != Purpose::Offline;
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut notes = Vec::new();
    if purpose == Purpose::Serve {
        errors.extend(unlistenable(config));
    }

    let auth = match open_store(config, purpose) {
        Ok(store) => match Auth::new(config, store) {
            Ok(a) => {
                if purpose == Purpose::Serve {
                    notes.extend(rotate_provider_keys(&a));
                }
                Some(a)
            }
            Err(e) => {
                errors.push(ConfigError::new(config.idp.origin.clone(), e.to_string()));
                None
            }
        },
        Err(e) => {
            errors.push(e);
            None
        }
    };

    // One supervisor per pool, shared by every route that names it.
    let pools = if check_host {
        let plan = host::plan(config, &mut errors);
        notes.extend(plan.warnings);
        plan.pools
    } else {
        config
            .backends
            .iter()
            .map(|pool| PoolSettings::from_pool(pool.clone()))
            .collect()
    };
    let backends: Vec<Supervisor> = pools.into_iter().map(Supervisor::new).collect();
    let built = build_routes(config, &backends)
        .map_err(|mut e| errors.append(&mut e))
        .ok();
    let directory = directory(config, &mut errors);

    let tls = if config.insecure_server {
        None
    } else if config.certificates.is_empty() {
        let mut names: Vec<String> = config.routes.iter().map(|r| r.from.host.clone()).collect();
        if let Some(h) = config
            .authenticate_service_url
            .as_ref()
            .and_then(|u| u.host_str())
        {
            names.push(h.to_string());
        }
        names.push("localhost".into());
        names.sort();
        names.dedup();
        match tls::self_signed(names) {
            Ok(r) => {
                notes.push("no certificate is configured: serving a self-signed certificate made at start (browsers will warn); set certificate_file/certificate_key_file or certificates:".into());
                Some(r)
            }
            Err(e) => {
                errors.push(ConfigError::new(
                    gatehouse_config::Origin::Default,
                    format!("cannot make a self-signed certificate: {e}"),
                ));
                None
            }
        }
    } else {
        match tls::load_resolver(&config.certificates) {
            Ok(r) => Some(r),
            Err(mut e) => {
                errors.append(&mut e);
                None
            }
        }
    };

    let auth_host = config.authenticate_service_url.as_ref().map(|u| AuthHost {
        host: u.host_str().unwrap_or("").to_ascii_lowercase(),
        port: u.port(),
        origin: u.origin().ascii_serialization(),
    });

    let Some(auth) = auth else {
        return Err(ConfigErrors { errors });
    };
    let Some((routes, table)) = built.filter(|_| errors.is_empty()) else {
        return Err(ConfigErrors { errors });
    };
    let state = State {
        routes,
        table,
        auth: Arc::new(auth),
        directory: directory.map(Arc::new),
        auth_host,
        cookie: CookieSettings {
            domain: config.cookie.domain.clone(),
            same_site: config.cookie.same_site,
        },
        tls: !config.insecure_server,
        max_connections_per_client: config.max_connections_per_client,
        access_token_max_expire: config.access_token_max_expire,
    };
    let watched = reload::Watched {
        config_path: reload::absolute(&config.source),
        policies_dir: config.policies_dir.as_deref().map(reload::absolute),
        certificates: reload::certificate_files(config),
    };
    let tls = tls.map(Arc::new);
    let mut live = Live::new(state, backends, keys::KeyRing::new(config));
    live.certificates = tls.clone();
    Ok(Prepared {
        live: Arc::new(live),
        relay_addr: relay_addr(config),
        control_path: (purpose == Purpose::Serve)
            .then(|| config.state_dir.join(control::SOCKET_FILE)),
        tls,
        address: config.address,
        redirect_addr: config.http_redirect_addr,
        metrics_addr: config.metrics_address,
        health_addr: config.health_check_addr,
        watched,
        started_with: reload::RestartOnly::of(config),
        notes,
    })
}

/// The Google directory client (`idp_service_account`), whose key must sign; with Google
/// and no service account, an error for each route whose rules use groups.
pub(crate) fn directory(
    config: &Config,
    errors: &mut Vec<ConfigError>,
) -> Option<gatehouse_auth::directory::Directory> {
    let Some(d) = &config.directory else {
        if config.idp.provider == gatehouse_config::IdpProvider::Google {
            // Google's ID tokens carry no groups: without the directory a group rule never
            // matches, so a `deny` on a group would never fire (fails open). An error, not a
            // note (issue 11).
            for r in config.routes.iter().filter(|r| {
                Policy::for_route(r, &config.allowed_domains, &config.allowed_groups).uses_groups()
            }) {
                errors.push(ConfigError::new(
                    r.origin.clone(),
                    format!(
                        "routes[{}]: its rules use groups, but Google sign-in gives no groups \
                         without idp_service_account (Google's ID tokens carry none), so they \
                         would never match and a deny on a group would never fire; set \
                         idp_service_account (see README, \"Google Workspace groups\") or \
                         remove the group rules",
                        r.index
                    ),
                ));
            }
        }
        return None;
    };
    match gatehouse_auth::directory::Directory::new(d) {
        Ok(directory) => Some(directory),
        Err(e) => {
            errors.push(ConfigError::new(d.origin.clone(), e.to_string()));
            None
        }
    }
}
