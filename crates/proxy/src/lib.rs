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
//!    │    └─ policy::evaluate                   deny → 403 page with the reason
//!    ├─ upstream_peer: the route's `to`
//!    ├─ upstream_request_filter: strip client identity headers and our cookies,
//!    │    set X-Forwarded-*, Host, identity headers + signed JWT
//!    ├─ (Pingora streams the response: SSE and WebSocket unbuffered)
//!    ├─ fail_to_proxy: one function picks the error page
//!    └─ logging: one access line (path without query), target `gatehouse::access`
//! ```

pub mod pages;
pub mod routes;
mod service;
pub mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use pingora::listeners::tls::TlsSettings;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

use gatehouse_auth::Auth;
use gatehouse_config::{Config, ConfigError, ConfigErrors};
use gatehouse_policy::Policy;

pub use service::{AuthHost, CookieSettings, Gatehouse, HttpsRedirect, RouteState, State};

/// Everything checked and built, ready to bind. `gatehouse check` stops here.
pub struct Prepared {
    state: Arc<State>,
    tls: Option<tls::SniResolver>,
    address: SocketAddr,
    redirect_addr: Option<SocketAddr>,
    /// Notes for the operator (e.g. "using a self-signed certificate").
    pub notes: Vec<String>,
}

impl Prepared {
    pub fn routes(&self) -> usize {
        self.state.routes.len()
    }
}

/// Checks what the config crate cannot (certificates, keys, upstream addresses) and builds
/// the request-time state. All problems are reported together, each at its config position.
pub fn prepare(config: &Config) -> Result<Prepared, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut notes = Vec::new();

    let auth = match Auth::new(config) {
        Ok(a) => Some(a),
        Err(e) => {
            errors.push(ConfigError::new(config.idp.origin.clone(), e.to_string()));
            None
        }
    };

    let directory = directory(config, &mut errors, &mut notes);

    let mut routes = Vec::new();
    let mut matchers = Vec::new();
    for r in &config.routes {
        let host =
            r.to.host_str()
                .unwrap_or("")
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
        let Some(port) = r.to.port_or_known_default() else {
            errors.push(ConfigError::new(
                r.origin.clone(),
                format!("routes[{}].to: {} has no port", r.index, r.to),
            ));
            continue;
        };
        let upstream = match (host.as_str(), port)
            .to_socket_addrs()
            .map(|mut a| a.next())
        {
            Ok(Some(a)) => a,
            _ => {
                errors.push(ConfigError::new(
                    r.origin.clone(),
                    format!("routes[{}].to: cannot resolve upstream host {host:?} (check the name, or use an IP address)", r.index),
                ));
                continue;
            }
        };
        let default_port = if r.to.scheme() == "https" { 443 } else { 80 };
        let upstream_host = match r.to.port() {
            Some(p) if p != default_port => format!("{}:{p}", r.to.host_str().unwrap_or("")),
            _ => r.to.host_str().unwrap_or("").to_string(),
        };
        let mut label = format!("{}://{}", r.from.scheme, r.from.host);
        if let Some(p) = r.from.port {
            label.push_str(&format!(":{p}"));
        }
        if let Some(p) = r.path.as_ref().or(r.prefix.as_ref()) {
            label.push_str(p);
        }
        matchers.push(routes::RouteMatcher::from_route(r));
        routes.push(RouteState {
            from: r.from.clone(),
            label,
            upstream,
            tls: r.to.scheme() == "https",
            sni: host,
            upstream_host,
            pass_identity_headers: r.pass_identity_headers,
            preserve_host_header: r.preserve_host_header,
            public: r.allow_public_unauthenticated_access,
            policy: Policy::for_route(r, &config.allowed_domains),
        });
    }

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

    if let Some(a) = &auth_host {
        for r in &config.routes {
            if r.from.host == a.host
                && (r.from.port.is_none() || a.port.is_none() || r.from.port == a.port)
            {
                errors.push(ConfigError::new(
                    r.origin.clone(),
                    format!(
                        "routes[{}].from: host {} is also the host of authenticate_service_url, which only serves sign-in; give the authenticate service its own host name (e.g. auth.{})",
                        r.index, r.from.host, r.from.host
                    ),
                ));
            }
        }
    }

    let Some(auth) = auth else {
        return Err(ConfigErrors { errors });
    };
    if !errors.is_empty() {
        return Err(ConfigErrors { errors });
    }
    let state = State {
        routes,
        table: routes::RouteTable::new(matchers),
        auth,
        directory,
        auth_host,
        cookie: CookieSettings {
            domain: config.cookie.domain.clone(),
            same_site: config.cookie.same_site,
        },
        tls: !config.insecure_server,
    };
    Ok(Prepared {
        state: Arc::new(state),
        tls,
        address: config.address,
        redirect_addr: config.http_redirect_addr,
        notes,
    })
}

/// The Google directory client (`idp_service_account`), whose key must sign; with Google
/// and no service account, a note when a route's rules use groups (they never match).
fn directory(
    config: &Config,
    errors: &mut Vec<ConfigError>,
    notes: &mut Vec<String>,
) -> Option<Arc<gatehouse_auth::directory::Directory>> {
    let Some(d) = &config.directory else {
        if config.idp.provider == gatehouse_config::IdpProvider::Google {
            let grouped: Vec<String> = config
                .routes
                .iter()
                .filter(|r| Policy::for_route(r, &config.allowed_domains).uses_groups())
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
        Ok(directory) => Some(Arc::new(directory)),
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
            state: prepared.state.clone(),
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
    server.run_forever()
}
