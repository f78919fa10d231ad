//! Gatehouse's proxy: the only crate that knows Pingora.
//!
//! It owns listeners, TLS, routing, Gatehouse's own endpoints, header handling, the pages a
//! person sees and the request log. It holds no policy or crypto logic: it asks
//! `gatehouse-policy` for decisions and `gatehouse-auth` for identities.
//!
//! The request flow (DESIGN.md), with the hook that implements each step:
//!
//! ```text
//! TCP :80  ── HttpsRedirect::request_filter: 308 to https (except /.gatehouse/health)
//! TCP :443 ── rustls (tls::SniResolver picks the certificate) ── HTTP/1.1 or HTTP/2
//!    │
//!    ├─ request_filter → Gatehouse::decide
//!    │    ├─ /.gatehouse/health                                   → 200
//!    │    ├─ authenticate host: sign_in, /oauth2/callback, sign_out
//!    │    ├─ route match (routes::RouteTable)          no route   → 404 page
//!    │    ├─ JWKS, /.gatehouse/callback (code or handoff), signed_out
//!    │    ├─ public route                                         → forward
//!    │    ├─ identity: sealed session cookie    none/expired → login cookie + 302 to IdP
//!    │    │                                                 (401 JSON for scripts)
//!    │    ├─ /.gatehouse/ pages (user page, user JSON, sign_out)
//!    │    ├─ policy::evaluate                   deny → 403 page with the reason
//!    │    └─ to_backend route (backend_step): cross-site write → 403; the person's
//!    │         backend from the supervisor (starting page / wait / 503 / 504)
//!    ├─ upstream_peer: the route's `to`, or 127.0.0.1:<the person's backend port>
//!    ├─ upstream_request_filter: strip client identity headers and our cookies,
//!    │    a backend's password replaces any client Authorization,
//!    │    set X-Forwarded-*, Host, identity headers + signed JWT
//!    ├─ (Pingora streams the response: SSE and WebSocket unbuffered)
//!    ├─ fail_to_proxy: one function picks the error page
//!    └─ logging: one access line (path without query), target `gatehouse::access`
//! ```

mod host;
pub mod metrics;
pub mod pages;
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

use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

use arc_swap::ArcSwap;
use gatehouse_auth::Auth;
use gatehouse_backends::{PoolSettings, Supervisor};
use gatehouse_config::{Config, ConfigError, ConfigErrors};
use gatehouse_policy::{Decision, Policy};

pub use service::{Gatehouse, HttpsRedirect, MetricsEndpoint};
pub(crate) use state::pool;
pub use state::{
    AuthHost, CookieSettings, RouteState, State, StaticUpstream, Target, build_routes,
};

/// Everything checked and built, ready to bind. `gatehouse check` stops here.
pub struct Prepared {
    live: Arc<Live>,
    tls: Option<tls::SniResolver>,
    address: SocketAddr,
    redirect_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    watched: reload::Watched,
    started_with: reload::RestartOnly,
    /// Notes for the operator (e.g. "using a self-signed certificate").
    pub notes: Vec<String>,
}

impl Prepared {
    pub fn routes(&self) -> usize {
        self.live.state.load().routes.len()
    }
}

/// What the proxy service and the reloader share: the state serving now (swapped whole by
/// a reload), the open streams and the metrics.
#[derive(Debug)]
pub struct Live {
    pub state: ArcSwap<State>,
    pub streams: streams::Streams,
    pub metrics: metrics::Metrics,
    /// One supervisor per `backends:` pool, made once at start: a reload swaps the routes
    /// that name them, never the running backends (pool settings are restart-only).
    pub backends: Vec<Supervisor>,
}

impl Live {
    pub fn new(state: State, backends: Vec<Supervisor>) -> Self {
        let metrics = metrics::Metrics::default();
        metrics.loaded(true);
        Live {
            state: ArcSwap::from_pointee(state),
            streams: streams::Streams::default(),
            metrics,
            backends,
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
            match service::decide_policy(route, &s.identity, &s.method, &s.path, None) {
                Decision::Allow(_) => None,
                Decision::Deny(reason) => Some(reason.code().to_string()),
            }
        })
    }

    /// Ends the open streams `why` gives a reason for, and counts them.
    fn end_streams(&self, why: impl FnMut(&streams::OpenStream) -> Option<String>) -> usize {
        let ended = self.streams.end_where(why);
        self.metrics.streams_ended.inc_by(ended as u64);
        ended
    }

    /// The metrics text, with each pool's backend counters brought up to date.
    pub fn render_metrics(&self) -> String {
        self.metrics.streams_open.set(self.streams.len() as i64);
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

/// Checks what the config crate cannot (certificates, keys, upstream addresses) and builds
/// the request-time state. All problems are reported together, each at its config position.
/// For the offline tools (`policy explain`, `policy test`): the machine is not checked.
pub fn prepare(config: &Config) -> Result<Prepared, ConfigErrors> {
    prepare_with(config, None)
}

/// [`prepare`], plus the checks against this machine that `check` and `serve` make: the
/// backend pools' isolation and confinement, and Gatehouse's secret files (issue 9).
pub fn prepare_to_serve(config: &Config) -> Result<Prepared, ConfigErrors> {
    prepare_with(
        config,
        Some(&gatehouse_backends::preflight::Host::current()),
    )
}

fn prepare_with(
    config: &Config,
    host: Option<&gatehouse_backends::preflight::Host>,
) -> Result<Prepared, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut notes = Vec::new();

    let auth = match Auth::new(config) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.push(ConfigError::new(config.idp.origin.clone(), e.to_string()));
            None
        }
    };

    // One supervisor per pool, shared by every route that names it.
    let pools = match host {
        Some(host) => {
            let plan = host::plan(config, host, &mut errors);
            notes.extend(plan.warnings);
            plan.pools
        }
        None => config
            .backends
            .iter()
            .map(|pool| PoolSettings::from_pool(pool.clone()))
            .collect(),
    };
    let backends: Vec<Supervisor> = pools.into_iter().map(Supervisor::new).collect();
    let built = build_routes(config, &backends)
        .map_err(|mut e| errors.append(&mut e))
        .ok();
    let directory = directory(config, &mut errors, &mut notes);

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
    };
    let watched = reload::Watched {
        config_path: reload::absolute(&config.source),
        policies_dir: config.policies_dir.as_deref().map(reload::absolute),
    };
    Ok(Prepared {
        live: Arc::new(Live::new(state, backends)),
        tls,
        address: config.address,
        redirect_addr: config.http_redirect_addr,
        metrics_addr: config.metrics_address,
        watched,
        started_with: reload::RestartOnly::of(config),
        notes,
    })
}

/// Runs one pool's supervisor beside the proxy: stops what a crashed Gatehouse left,
/// checks idle and exited backends, and stops every backend when Gatehouse shuts down.
struct BackendService(Supervisor);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for BackendService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        let left = self.0.stop_leftovers().await;
        if left > 0 {
            tracing::warn!(pool = %self.0.settings().pool.name, stopped = left, "stopped backends left running by an earlier Gatehouse");
        }
        self.0.run(shutdown).await;
    }
}

/// The Google directory client (`idp_service_account`), whose key must sign; with Google
/// and no service account, a note when a route's rules use groups (they never match).
pub(crate) fn directory(
    config: &Config,
    errors: &mut Vec<ConfigError>,
    notes: &mut Vec<String>,
) -> Option<gatehouse_auth::directory::Directory> {
    let Some(d) = &config.directory else {
        if config.idp.provider == gatehouse_config::IdpProvider::Google {
            let grouped: Vec<String> = config
                .routes
                .iter()
                .filter(|r| {
                    Policy::for_route(r, &config.allowed_domains, &config.allowed_groups)
                        .uses_groups()
                })
                .map(|r| format!("routes[{}]", r.index))
                .collect();
            if !grouped.is_empty() {
                notes.push(format!(
                    "{} use groups, but Google sign-in gives none without idp_service_account \
                     (Google's ID tokens carry no groups), so those group rules never match",
                    grouped.join(", ")
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

/// Options for running (from the command line, not the config file).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Worker threads for the proxy service.
    pub threads: usize,
}

/// Binds the listeners and serves until SIGTERM/SIGINT. Never returns on success
/// (Pingora exits the process after its graceful shutdown).
pub fn run(prepared: Prepared, opts: RunOptions) -> anyhow::Result<()> {
    let conf = ServerConf {
        threads: opts.threads.max(1),
        // Let in-flight requests finish, but don't keep a stopping server around for long
        // (Pingora's default is 300 s; long streams are cut at the end anyway).
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: 256,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut main = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Gatehouse {
            live: Arc::clone(&prepared.live),
        },
        "gatehouse",
    );
    let addr = prepared.address.to_string();
    match prepared.tls {
        Some(resolver) => {
            let mut tls = TlsSettings::intermediate("", "")?;
            tls.set_cert_resolver(Arc::new(resolver));
            tls.enable_h2();
            main.add_tls_with_settings(&addr, None, tls);
            tracing::info!(address = %addr, "listening (https, HTTP/1.1 and HTTP/2)");
        }
        None => {
            main.add_tcp(&addr);
            tracing::warn!(address = %addr, "listening on plain HTTP (insecure_server: true): put a TLS terminator in front");
        }
    }
    server.add_service(main);
    for sup in &prepared.live.backends {
        let name = format!("backends-{}", sup.settings().pool.name);
        server.add_service(background_service(&name, BackendService(sup.clone())));
        tracing::info!(pool = %sup.settings().pool.name, ports = ?sup.settings().pool.ports, isolated = sup.isolated(), confinement = %sup.confinement(), "per-person backends");
        if let Some(reason) = sup.not_isolated() {
            tracing::warn!(pool = %sup.settings().pool.name, reason, "backends are NOT isolated from each other: every person's OpenCode runs as the same Unix user and can read the others' files");
        }
    }

    if let Some(r) = prepared.redirect_addr {
        let mut redirect = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            HttpsRedirect {
                https_port: prepared.address.port(),
            },
            "gatehouse-redirect",
        );
        redirect.add_tcp(&r.to_string());
        server.add_service(redirect);
        tracing::info!(address = %r, "listening (http, redirects to https)");
    }
    if let Some(m) = prepared.metrics_addr {
        let mut metrics = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            MetricsEndpoint {
                live: Arc::clone(&prepared.live),
            },
            "gatehouse-metrics",
        );
        metrics.add_tcp(&m.to_string());
        server.add_service(metrics);
        tracing::info!(address = %m, "metrics at http://{m}/metrics");
    }
    server.add_service(pingora::services::background::background_service(
        "gatehouse-reload",
        reload::Reloader {
            live: Arc::clone(&prepared.live),
            watched: prepared.watched.clone(),
            started_with: prepared.started_with.clone(),
        },
    ));
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(Signals {
            backends: prepared.live.backends.clone(),
        }),
    });
    std::process::exit(0)
}

/// Pingora's signals (SIGTERM graceful, SIGINT fast, SIGQUIT upgrade), except that a fast
/// shutdown first stops every backend: Pingora's fast shutdown drops the background
/// services without telling them, which would leave every person's backend running.
struct Signals {
    backends: Vec<Supervisor>,
}

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for Signals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        let signal = pingora::server::UnixShutdownSignalWatch.recv().await;
        if matches!(signal, pingora::server::ShutdownSignal::FastShutdown) {
            tracing::info!("SIGINT: stopping every backend, then exiting");
            let stops: Vec<_> = self
                .backends
                .iter()
                .map(|sup| {
                    let sup = sup.clone();
                    tokio::spawn(async move { sup.stop_all().await })
                })
                .collect();
            for s in stops {
                let _ = s.await;
            }
        }
        signal
    }
}
