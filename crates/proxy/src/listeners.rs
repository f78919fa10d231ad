//! Everything that listens: the main proxy service, the plain-HTTP redirect listener, the
//! metrics listener, one background service per backend pool, the config reloader, and the
//! signal handling around them. `run` builds Pingora's server from our own settings (it
//! never parses argv or reads Pingora's YAML).

use std::sync::Arc;

use async_trait::async_trait;
use pingora::ErrorType;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

use gatehouse_backends::Supervisor;

use crate::pages::{self, Page};
use crate::refusal::Refusal;
use crate::request::gatehouse_path;
use crate::routes::split_host;
use crate::service::{Gatehouse, write_page};
use crate::{Live, Prepared, reload};

/// The plain-HTTP listener (`http_redirect_addr`): a permanent redirect to https for the
/// hosts Gatehouse serves, and nothing else (health checks excepted). Another host gets 404,
/// so the listener is no open redirector for names that merely resolve here.
pub struct HttpsRedirect {
    /// The https port to send people to (omitted from URLs when 443).
    pub https_port: u16,
    /// The serving state, for the hosts that have a route (or are the authenticate host).
    pub live: Arc<Live>,
}

#[async_trait]
impl ProxyHttp for HttpsRedirect {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let req = session.req_header();
        let path = req.uri.path();
        if matches!(gatehouse_path(path), Some("health" | "ping")) {
            write_page(session, Page::text(200, "ok\n")).await?;
            return Ok(true);
        }
        let authority = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let st = self.live.state.load();
        let page = match split_host(authority) {
            Some((host, _)) if !st.serves_host(&host) => pages::refusal(&Refusal::NoRoute { host }),
            Some((host, _)) => {
                let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let port = if self.https_port == 443 {
                    String::new()
                } else {
                    format!(":{}", self.https_port)
                };
                Page::redirect(308, &format!("https://{host}{port}{pq}"))
            }
            None => pages::refusal(&Refusal::BadHost),
        };
        write_page(session, page).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        proxies_nothing("the redirect listener")
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &(), _error: &Error) -> bool {
        true
    }
}

/// The metrics listener (`metrics_address`): `GET /metrics` in the Prometheus text format,
/// 404 for anything else. Nothing is proxied.
pub struct MetricsEndpoint {
    /// Where the metrics are read from (shared with the proxy service).
    pub live: Arc<Live>,
}

#[async_trait]
impl ProxyHttp for MetricsEndpoint {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let page = if session.req_header().uri.path() == "/metrics" {
            // Prometheus' text format is plain text (version 0.0.4).
            Page::text(200, "").with_body(&self.live.render_metrics())
        } else {
            Page::text(404, "not found: metrics are at /metrics\n")
        };
        write_page(session, page).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        proxies_nothing("the metrics listener")
    }
}

/// The `upstream_peer` of a listener that answers everything in `request_filter`.
pub(crate) fn proxies_nothing(listener: &str) -> Result<Box<HttpPeer>> {
    Error::e_explain(
        ErrorType::InternalError,
        format!("{listener} proxies nothing"),
    )
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

/// The buffers under each client connection's TLS. Pingora reads through a 64 KB buffer
/// per connection by default, filled with zeros when the connection starts: 64 KB of
/// memory for every open connection, idle or streaming, for a gain only on large uploads
/// (rustls reads at most a TLS record's worth at a time anyway). Unbuffered reads take
/// 115 KB per idle connection to 50 KB (docs/pingora.md, "Memory per connection"); the
/// small write buffer (Pingora's default, one MSS) is kept.
pub fn downstream_buffers() -> L4BufferSettings {
    L4BufferSettings::default().read(0)
}

/// Pingora's server settings, with `threads` workers (the bench's bare passthrough uses
/// them too, so it measures the same engine).
pub fn server_conf(threads: usize) -> ServerConf {
    ServerConf {
        threads: threads.max(1),
        // Let in-flight requests finish, but don't keep a stopping server around for long
        // (Pingora's default is 300 s; long streams are cut at the end anyway).
        grace_period_seconds: Some(5),
        graceful_shutdown_timeout_seconds: Some(5),
        upstream_keepalive_pool_size: 256,
        ..Default::default()
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
    let mut server = Server::new_with_opt_and_conf(None, server_conf(opts.threads));
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
            tls.set_cert_resolver(resolver);
            tls.enable_h2();
            main.add_listener(
                ListenerConfig::tcp(addr.as_str())
                    .tls(tls)
                    .l4_buffer(downstream_buffers()),
            );
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
                live: Arc::clone(&prepared.live),
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
    if let Some(h) = prepared.health_addr {
        let mut health = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            crate::health::HealthEndpoint {
                live: Arc::clone(&prepared.live),
            },
            "gatehouse-health",
        );
        health.add_tcp(&h.to_string());
        server.add_service(health);
        tracing::info!(address = %h, "health checks at http://{h}/healthz, /readyz, /startupz");
    }
    server.add_service(background_service(
        "gatehouse-readiness",
        crate::health::Prober(Arc::clone(&prepared.live)),
    ));
    if let Some(addr) = prepared.relay_addr {
        let mut relay = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            crate::relay::Relay::new(Arc::clone(&prepared.live), prepared.address.port()),
            "gatehouse-relay",
        );
        relay.add_tcp(&addr.to_string());
        server.add_service(relay);
        server.add_service(background_service(
            "gatehouse-relay-sweeper",
            crate::relay::Sweeper(Arc::clone(&prepared.live)),
        ));
        tracing::info!(address = %addr, "LLM relay listening (loopback, for backends only)");
    }
    if let Some(path) = prepared.control_path.clone() {
        server.add_service(background_service(
            "gatehouse-control",
            crate::control::ControlSocket {
                live: Arc::clone(&prepared.live),
                path,
            },
        ));
    }
    server.add_service(background_service(
        "gatehouse-token-use",
        crate::access_tokens::UseRecorder(Arc::clone(&prepared.live)),
    ));
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
