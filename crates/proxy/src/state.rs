//! What a request is decided against, built once per config (and again on each reload):
//! the routes with their targets and policies, the route table, the auth and directory
//! clients, the authenticate host and cookie settings.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use gatehouse_auth::directory::Directory;
use gatehouse_auth::{Auth, VerifiedIdentity};
use gatehouse_backends::{PersonId, Supervisor};
use gatehouse_config::{Config, ConfigError, RouteFrom, SameSite, Upstream};
use gatehouse_policy::Policy;

use crate::routes;
use crate::routes::RouteTable;

/// A route, ready to serve.
#[derive(Debug)]
pub struct RouteState {
    /// The route's `from`: scheme, host and port it serves.
    pub from: RouteFrom,
    /// `from` + prefix/path, for logs and pages.
    pub label: String,
    /// Where its requests go.
    pub target: Target,
    /// `pass_identity_headers`: send the signed identity JWT (`X-Pomerium-Jwt-Assertion`)
    /// and the `X-Pomerium-Claim-*` headers upstream.
    pub pass_identity_headers: bool,
    /// Send the client's `Host` upstream instead of the upstream's own. Always true for a
    /// per-person backend route.
    pub preserve_host_header: bool,
    /// Cross-site requests are the upstream's business (`cors_allow_preflight`).
    pub cross_site_allowed: bool,
    /// `bearer_token_format: idp_identity_token`: IdP ID tokens are accepted as bearers.
    pub idp_identity_tokens: bool,
    /// Audiences such a token may have besides the client id.
    pub idp_token_audiences: Vec<String>,
    /// `allow_public_unauthenticated_access`: no sign-in and no policy. Never true for a
    /// per-person backend route.
    pub public: bool,
    /// The route's rules, compiled.
    pub policy: Policy,
}

/// Where a route forwards to.
#[derive(Debug)]
pub enum Target {
    /// `to:`: one upstream for everyone.
    Static(StaticUpstream),
    /// `to_backend:`: each person's own backend from this pool.
    Backend(Supervisor),
}

/// A resolved `to:` URL.
#[derive(Debug)]
pub struct StaticUpstream {
    /// The upstream's address, resolved when the config was loaded.
    pub addr: SocketAddr,
    /// Whether to speak TLS to it (an `https` URL).
    pub tls: bool,
    /// The name to send in TLS SNI and verify the certificate against: the URL's host.
    pub sni: String,
    /// `Host` sent upstream unless `preserve_host_header`.
    pub host: String,
}

/// The authenticate host (`authenticate_service_url`).
#[derive(Debug, Clone)]
pub struct AuthHost {
    /// Its host name, lower-case, without a port.
    pub host: String,
    /// Its explicit port; `None` serves it on any port.
    pub port: Option<u16>,
    /// `https://auth.example.com` (with `:port` when not the default).
    pub origin: String,
}

/// Cookie attributes from the config.
#[derive(Debug, Clone)]
pub struct CookieSettings {
    /// `cookie.domain`: the `Domain` of the session cookie, so it is sent to every
    /// subdomain. `None`: host-only.
    pub domain: Option<String>,
    /// `cookie.same_site`: the `SameSite` of the session cookie.
    pub same_site: SameSite,
}

/// Everything a request needs, built once from the config.
#[derive(Debug)]
pub struct State {
    /// The routes, in config order.
    pub routes: Vec<RouteState>,
    /// Finds the route for a request: its answer indexes `routes`.
    pub table: RouteTable,
    /// Kept across reloads (sign-in state, keys, one-time tokens).
    pub auth: Arc<Auth>,
    /// Google Workspace groups (`idp_service_account`). Its cache outlives a config reload:
    /// carry it into the new state with `Directory::carry_over`.
    pub directory: Option<Arc<Directory>>,
    /// The authenticate host, when `authenticate_service_url` is set; otherwise sign-in
    /// happens on each route's own host.
    pub auth_host: Option<AuthHost>,
    /// Attributes of the session cookie.
    pub cookie: CookieSettings,
    /// Whether the main listener is TLS (for the default port of a Host without one).
    pub tls: bool,
    /// `max_connections_per_client`.
    pub max_connections_per_client: usize,
    /// `access_token_max_expire`: the longest a new access token may live.
    pub access_token_max_expire: std::time::Duration,
}

impl State {
    /// Whether some route (on any port and path), or the authenticate service, has `host`.
    pub(crate) fn serves_host(&self, host: &str) -> bool {
        self.routes.iter().any(|r| r.from.host == host)
            || self.auth_host.as_ref().is_some_and(|a| a.host == host)
    }

    pub(crate) fn is_auth_host(&self, host: &str, port: u16) -> bool {
        self.auth_host
            .as_ref()
            .is_some_and(|a| a.host == host && a.port.is_none_or(|p| p == port))
    }

    pub(crate) fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }
}

/// The person a backend belongs to: their issuer and subject, never the raw email.
pub(crate) fn person_id(id: &VerifiedIdentity) -> PersonId {
    let s = id.session();
    PersonId::new(&s.iss, &s.sub)
}

/// The running pool called `name`.
pub(crate) fn pool<'a>(backends: &'a [Supervisor], name: &str) -> Option<&'a Supervisor> {
    backends.iter().find(|b| b.settings().pool.name == name)
}

/// A route's static `to:`: its address resolved now, the TLS name and the `Host` to send.
fn static_upstream(
    r: &gatehouse_config::Route,
    to: &gatehouse_config::Url,
) -> Result<StaticUpstream, ConfigError> {
    let host = routes::url_host(to);
    let Some(port) = to.port_or_known_default() else {
        return Err(ConfigError::new(
            r.origin.clone(),
            format!("routes[{}].to: {} has no port", r.index, to),
        ));
    };
    let addr = match (host.as_str(), port)
        .to_socket_addrs()
        .map(|mut a| a.next())
    {
        Ok(Some(a)) => a,
        _ => {
            return Err(ConfigError::new(
                r.origin.clone(),
                format!(
                    "routes[{}].to: cannot resolve upstream host {host:?} (check the name, or use an IP address)",
                    r.index
                ),
            ));
        }
    };
    let default_port = if to.scheme() == "https" { 443 } else { 80 };
    let upstream_host = match to.port() {
        Some(p) if p != default_port => format!("{}:{p}", to.host_str().unwrap_or("")),
        _ => to.host_str().unwrap_or("").to_string(),
    };
    Ok(StaticUpstream {
        addr,
        tls: to.scheme() == "https",
        sni: host,
        host: upstream_host,
    })
}

/// The routes of `config`, ready to serve: upstream addresses resolved, policies compiled.
/// Used at start and by every reload.
pub fn build_routes(
    config: &Config,
    backends: &[Supervisor],
) -> Result<(Vec<RouteState>, routes::RouteTable), Vec<ConfigError>> {
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut routes = Vec::new();
    let mut matchers = Vec::new();
    for r in &config.routes {
        let (target, preserve_host_header, public) = match &r.to {
            Upstream::Url(to) => match static_upstream(r, to) {
                Ok(up) => (
                    Target::Static(up),
                    r.preserve_host_header,
                    r.allow_public_unauthenticated_access,
                ),
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
            Upstream::Backend(name) => {
                let Some(sup) = pool(backends, name) else {
                    // The config crate checks the name, so on a reload this is a new pool.
                    errors.push(ConfigError::new(
                        r.origin.clone(),
                        format!(
                            "routes[{}].to_backend: pool `{name}` is not running; new pools take effect after a restart",
                            r.index
                        ),
                    ));
                    continue;
                };
                // OpenCode's terminal checks Origin against Host (docs/opencode.md §6);
                // a per-person route is never public.
                (Target::Backend(sup.clone()), true, false)
            }
        };
        matchers.push(routes::RouteMatcher::from_route(r));
        routes.push(RouteState {
            from: r.from.clone(),
            label: route_label(r),
            target,
            pass_identity_headers: r.pass_identity_headers,
            preserve_host_header,
            cross_site_allowed: r.cors_allow_preflight,
            idp_identity_tokens: r.idp_identity_tokens,
            idp_token_audiences: r.idp_token_audiences.clone(),
            public,
            policy: Policy::for_route(r, &config.allowed_domains, &config.allowed_groups),
        });
    }
    if let Some(a) = config.authenticate_service_url.as_ref() {
        let host = a.host_str().unwrap_or("").to_ascii_lowercase();
        for r in &config.routes {
            if r.from.host == host
                && (r.from.port.is_none() || a.port().is_none() || r.from.port == a.port())
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
    if errors.is_empty() {
        Ok((routes, routes::RouteTable::new(matchers)))
    } else {
        Err(errors)
    }
}

/// `https://host[:port][/prefix]`, for logs and pages.
fn route_label(r: &gatehouse_config::Route) -> String {
    let mut label = format!("{}://{}", r.from.scheme, r.from.host);
    if let Some(p) = r.from.port {
        label.push_str(&format!(":{p}"));
    }
    if let Some(p) = r.path.as_ref().or(r.prefix.as_ref()) {
        label.push_str(p);
    }
    label
}
