//! The LLM relay (issue 12, docs/relay.md): the one Gatehouse address a backend may reach.
//! A backend's OpenCode sends its provider calls here (`http://<relay_address>/p/<provider>/…`)
//! with its relay token as the API key; the relay checks who is calling, adds that person's
//! real key the way the provider expects, and streams the provider's answer back.
//!
//! Checks, in order, each refusal a JSON error in the provider's own error shape (OpenCode
//! shows its message) and a log line without the token:
//! 1. the token belongs to a running backend (`unknown-token`, 401): a token dies with its
//!    process;
//! 2. the provider is one the backend's pool relays (`unknown-provider`, 404);
//! 3. the connecting socket belongs to that backend's uid (`wrong-peer`, 403), looked up
//!    with sock_diag ([`crate::peer_uid`]): loopback TCP has no `SO_PEERCRED`. Under
//!    `isolation: none` every backend shares Gatehouse's uid and this check cannot tell them
//!    apart: the token alone decides;
//! 4. the method and path are ones the provider's style needs (`path-not-relayed`, 403):
//!    the agent holds its token, so the relay is no open door to the provider's whole API;
//! 5. the person's rate limit (`rate-limited`, 429);
//! 6. the person has a key for the provider (`no-key`, 401, saying where to add one).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::Method;
use pingora::ErrorType;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use zeroize::Zeroizing;

use gatehouse_backends::{PersonId, RELAY_TOKEN_PREFIX, Supervisor};
use gatehouse_config::{KeyMode, ProviderStyle, RelayProvider};

use crate::Live;
use crate::keys::HeldKey;
use crate::pages::Page;
use crate::service::write_page;
use crate::state::Target;

/// The most of a request body the relay keeps to find the `model` for the audit line.
const MODEL_SCAN_BYTES: usize = 256 * 1024;

/// The relay's Pingora service.
pub struct Relay {
    live: Arc<Live>,
    /// The main listener's port, for links to the keys page.
    listen_port: u16,
    /// One limiter per pool (its `rate_limit`), keyed by person.
    limits: Vec<(String, DefaultKeyedRateLimiter<PersonId>)>,
}

impl Relay {
    /// The relay for `live`'s pools that have `relay:`; `listen_port` is the main
    /// listener's (for links to the keys page in its messages).
    pub fn new(live: Arc<Live>, listen_port: u16) -> Self {
        let limits = live
            .backends
            .iter()
            .filter_map(|sup| {
                let pool = &sup.settings().pool;
                let relay = pool.relay.as_ref()?;
                let n = NonZeroU32::new(relay.rate_limit).unwrap_or(NonZeroU32::MIN);
                Some((pool.name.clone(), RateLimiter::keyed(Quota::per_minute(n))))
            })
            .collect();
        Relay {
            live,
            listen_port,
            limits,
        }
    }
}

/// Where one relayed request goes.
struct Forward {
    addr: std::net::SocketAddr,
    tls: bool,
    sni: String,
    host: String,
    path_and_query: String,
    auth_header: http::HeaderName,
    auth_value: Zeroizing<String>,
}

/// One relay request's facts, for the later hooks and the audit line.
#[derive(Default)]
pub struct RelayCtx {
    start: Option<Instant>,
    provider: Option<String>,
    person: Option<PersonId>,
    email: Option<String>,
    forward: Option<Forward>,
    body: Vec<u8>,
    refused: Option<&'static str>,
}

/// A relay refusal: status, code, words.
struct Refused {
    status: u16,
    code: &'static str,
    message: String,
    /// Seconds, for a 429's `Retry-After`.
    retry_after: Option<u64>,
}

impl Refused {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Refused {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// OpenAI's and Anthropic's error shapes both carry `error.message`, which OpenCode
    /// shows to the person.
    fn page(&self) -> Page {
        let page = Page::json(
            self.status,
            &serde_json::json!({
                "type": "error",
                "error": {"type": "gatehouse_relay", "code": self.code, "message": self.message},
            }),
        );
        match self.retry_after {
            Some(s) => page.with_header("retry-after", s.to_string()),
            None => page,
        }
    }
}

/// The methods and paths (below the provider's base URL) a style needs.
pub(crate) fn allowed(style: ProviderStyle, method: &Method, rest: &str) -> bool {
    // A model id as providers write them (`gpt-4o`, `claude-3-5-sonnet-20241022`,
    // `ft:gpt-4o:org:x:id`); never `.`/`..` or an escape a provider's front end might decode
    // into another path.
    let model_id = |r: &str| {
        r.strip_prefix("/models/").is_some_and(|id| {
            !id.is_empty()
                && id != "."
                && id != ".."
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
        })
    };
    match style {
        ProviderStyle::OpenAi => match *method {
            Method::POST => matches!(
                rest,
                "/chat/completions" | "/completions" | "/responses" | "/embeddings"
            ),
            Method::GET => rest == "/models" || model_id(rest),
            _ => false,
        },
        ProviderStyle::Anthropic => match *method {
            Method::POST => matches!(rest, "/messages" | "/messages/count_tokens"),
            Method::GET => rest == "/models" || model_id(rest),
            _ => false,
        },
    }
}

/// The token the backend presented: `Authorization: Bearer` (OpenAI style) or `x-api-key`
/// (Anthropic style), whichever carries a relay token.
fn presented_token(req: &RequestHeader) -> Option<&str> {
    let bearer = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let api_key = req
        .headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    [bearer, api_key]
        .into_iter()
        .flatten()
        .find(|t| t.starts_with(RELAY_TOKEN_PREFIX))
}

/// `https://<host>[:port]/.gatehouse/providers` on a route of `pool`, for the no-key
/// message. A route without a port is served on the main listener's (`listen_port`).
fn keys_page(live: &Live, pool: &str, listen_port: u16) -> String {
    let st = live.state.load();
    st.routes
        .iter()
        .find(|r| matches!(&r.target, Target::Backend(s) if s.settings().pool.name == pool))
        .map(|r| {
            let port = r.from.port.unwrap_or(listen_port);
            let default = if r.from.scheme == "https" { 443 } else { 80 };
            let port = if port == default {
                String::new()
            } else {
                format!(":{port}")
            };
            format!(
                "{}://{}{port}/.gatehouse/providers",
                r.from.scheme, r.from.host
            )
        })
        .unwrap_or_else(|| "/.gatehouse/providers on your assistant's address".into())
}

impl Relay {
    /// Checks 1–6 of the module docs; on success fills `ctx.forward`.
    async fn admit(&self, session: &Session, ctx: &mut RelayCtx) -> Result<(), Refused> {
        let req = session.req_header();
        let path = req.uri.path();
        let Some(after) = path.strip_prefix("/p/") else {
            return Err(Refused::new(
                404,
                "unknown-provider",
                "not a relay path (/p/<provider>/…)",
            ));
        };
        let (provider_id, rest) = after.find('/').map_or((after, ""), |i| after.split_at(i));
        ctx.provider = Some(provider_id.to_string());

        let holder = presented_token(req).and_then(|t| {
            self.live
                .backends
                .iter()
                .find_map(|sup| sup.relay_holder(t).map(|h| (sup, h)))
        });
        let Some((sup, holder)) = holder else {
            return Err(Refused::new(
                401,
                "unknown-token",
                "the relay does not know this token (it belongs to no running backend)",
            ));
        };
        ctx.person = Some(holder.person.clone());
        let pool = &sup.settings().pool;
        let Some(provider) = pool.relay.as_ref().and_then(|r| r.provider(provider_id)) else {
            return Err(Refused::new(
                404,
                "unknown-provider",
                format!("the relay does not relay `{provider_id}` for this assistant"),
            ));
        };

        if let Some(uid) = holder.uid {
            let owner = match (
                session.server_addr().and_then(|a| a.as_inet()),
                session.client_addr().and_then(|a| a.as_inet()),
            ) {
                (Some(local), Some(peer)) => crate::peer_uid::tcp_peer_uid(*local, *peer),
                _ => Ok(None),
            };
            match owner {
                Ok(Some(u)) if u == uid => {}
                Ok(found) => {
                    tracing::warn!(target: "gatehouse::relay", person = %holder.person, provider = provider_id, expected_uid = uid, socket_uid = ?found, "relay: a token presented from another uid's socket; refused");
                    return Err(Refused::new(
                        403,
                        "wrong-peer",
                        "this token belongs to another backend",
                    ));
                }
                Err(e) => {
                    tracing::error!(target: "gatehouse::relay", error = %e, "relay: cannot look up the caller's uid (sock_diag); refused");
                    return Err(Refused::new(
                        403,
                        "wrong-peer",
                        "the caller could not be checked",
                    ));
                }
            }
        }

        if !allowed(provider.style, &req.method, rest) {
            tracing::warn!(target: "gatehouse::relay", person = %holder.person, provider = provider_id, method = %req.method, path = rest, "relay: a path the provider's style does not need; refused");
            return Err(Refused::new(
                403,
                "path-not-relayed",
                format!(
                    "the relay does not forward {} {rest} to `{provider_id}`",
                    req.method
                ),
            ));
        }

        if let Some((_, limiter)) = self.limits.iter().find(|(n, _)| *n == pool.name)
            && let Err(not_until) = limiter.check_key(&holder.person)
        {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            tracing::warn!(target: "gatehouse::relay", person = %holder.person, provider = provider_id, "relay: rate limit reached; refused");
            let mut r = Refused::new(
                429,
                "rate-limited",
                format!(
                    "too many requests to the relay (the limit is {} a minute); try again in {} s",
                    pool.relay.as_ref().map_or(0, |r| r.rate_limit),
                    wait.as_secs() + 1
                ),
            );
            r.retry_after = Some(wait.as_secs() + 1);
            return Err(r);
        }

        let mode = pool.relay.as_ref().map_or(KeyMode::Ephemeral, |r| r.keys);
        let Some(key) = self.key_for(&holder.person, provider_id, mode, ctx)? else {
            return Err(Refused::new(
                401,
                "no-key",
                format!(
                    "no API key for `{provider_id}`: add yours at {} (or in OpenCode's provider dialog)",
                    keys_page(&self.live, &pool.name, self.listen_port)
                ),
            ));
        };
        ctx.forward = Some(forward(provider, rest, req, key).await?);
        Ok(())
    }

    /// The person's key: from memory, or (persistent mode) from the state store.
    fn key_for(
        &self,
        person: &PersonId,
        provider: &str,
        mode: KeyMode,
        ctx: &mut RelayCtx,
    ) -> Result<Option<Zeroizing<String>>, Refused> {
        if let Some((key, email)) = self.live.keys.get(person, provider) {
            ctx.email = Some(email);
            return Ok(Some(key));
        }
        if mode != KeyMode::Persistent {
            return Ok(None);
        }
        let st = self.live.state.load();
        match crate::keys::stored_key(&st.auth, person, provider) {
            Ok(Some((key, added_ms))) => {
                let email = self.live.keys.email(person).unwrap_or_else(|| "-".into());
                // Cached only if the key was not removed or replaced since it was read: a
                // removal racing this read must not bring the old key back into memory.
                self.live.keys.set_if(
                    person,
                    &email,
                    provider,
                    HeldKey {
                        key: key.clone(),
                        added_ms,
                        mode: KeyMode::Persistent,
                    },
                    || {
                        crate::keys::changed_at(&st.auth, person, provider)
                            .is_none_or(|c| c <= added_ms)
                    },
                );
                Ok(Some(key))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::error!(target: "gatehouse::relay", person = %person, provider, error = %e, "relay: a stored provider key cannot be read");
                Err(Refused::new(500, "key-unreadable", e.to_string()))
            }
        }
    }
}

/// Where the request goes and with which key header.
async fn forward(
    provider: &RelayProvider,
    rest: &str,
    req: &RequestHeader,
    key: Zeroizing<String>,
) -> Result<Forward, Refused> {
    let base = &provider.base_url;
    let tls = base.scheme() == "https";
    let host = base.host_str().unwrap_or("").to_string();
    let port = base
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let unreachable = |why: String| {
        tracing::error!(target: "gatehouse::relay", provider = %provider.id, base_url = %base, error = %why, "relay: cannot resolve the provider's address");
        Refused::new(
            502,
            "provider-unreachable",
            format!("`{}` cannot be reached: {why}", provider.id),
        )
    };
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .next()
        .ok_or_else(|| unreachable("no address".into()))?;
    let mut path_and_query = format!("{}{rest}", base.path().trim_end_matches('/'));
    if let Some(q) = req.uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let host_header = match base.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let auth_header =
        http::HeaderName::from_bytes(provider.auth_header.as_bytes()).map_err(|_| {
            Refused::new(
                500,
                "bad-config",
                "the provider's auth_header is not a header name",
            )
        })?;
    let mut value = Zeroizing::new(String::with_capacity(
        provider.auth_prefix.len() + key.len(),
    ));
    value.push_str(&provider.auth_prefix);
    value.push_str(&key);
    Ok(Forward {
        addr,
        tls,
        sni: host,
        host: host_header,
        path_and_query,
        auth_header,
        auth_value: value,
    })
}

#[async_trait]
impl ProxyHttp for Relay {
    type CTX = RelayCtx;

    fn new_ctx(&self) -> RelayCtx {
        RelayCtx {
            start: Some(Instant::now()),
            ..RelayCtx::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RelayCtx) -> Result<bool> {
        match self.admit(session, ctx).await {
            Ok(()) => Ok(false),
            Err(r) => {
                if r.code == "unknown-token" {
                    tracing::warn!(target: "gatehouse::relay", provider = ctx.provider.as_deref().unwrap_or("-"), client = ?session.client_addr().map(|a| a.to_string()), "relay: unknown or stale token; refused");
                }
                ctx.refused = Some(r.code);
                write_page(session, r.page()).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RelayCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(f) = &ctx.forward else {
            return Error::e_explain(ErrorType::InternalError, "relay: no provider chosen");
        };
        let mut peer = HttpPeer::new(f.addr, f.tls, f.sni.clone());
        peer.options.connection_timeout = Some(Duration::from_secs(10));
        peer.options.total_connection_timeout = Some(Duration::from_secs(20));
        // No read timeout: a completion streams for as long as the model writes.
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RelayCtx,
    ) -> Result<()> {
        let Some(f) = &ctx.forward else {
            return Error::e_explain(ErrorType::InternalError, "relay: no provider chosen");
        };
        // The token (in either header), cookies and forwarding headers stay here.
        for name in [
            "authorization",
            "x-api-key",
            "proxy-authorization",
            "cookie",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
        ] {
            req.remove_header(name);
        }
        let uri: http::Uri = f
            .path_and_query
            .parse()
            .or_else(|_| Error::e_explain(ErrorType::InvalidHTTPHeader, "relay: upstream path"))?;
        req.set_uri(uri);
        req.insert_header(http::header::HOST, f.host.as_str())?;
        let mut value = http::HeaderValue::from_str(&f.auth_value).or_else(|_| {
            Error::e_explain(
                ErrorType::InvalidHTTPHeader,
                "relay: the key is not a header value",
            )
        })?;
        value.set_sensitive(true);
        req.insert_header(f.auth_header.clone(), value)?;
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RelayCtx,
    ) -> Result<()> {
        if let Some(b) = body
            && ctx.body.len() < MODEL_SCAN_BYTES
        {
            let take = b.len().min(MODEL_SCAN_BYTES - ctx.body.len());
            ctx.body.extend_from_slice(&b[..take]);
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RelayCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let model = model_of(&ctx.body);
        let person = ctx.person.as_ref().map(|p| p.to_string());
        let email = ctx
            .email
            .clone()
            .or_else(|| ctx.person.as_ref().and_then(|p| self.live.keys.email(p)));
        tracing::info!(
            target: "gatehouse::relay",
            person = person.as_deref().unwrap_or("-"),
            user = email.as_deref().unwrap_or("-"),
            provider = ctx.provider.as_deref().unwrap_or("-"),
            model = model.as_deref().unwrap_or("-"),
            status,
            refused = ctx.refused.unwrap_or("-"),
            bytes = session.body_bytes_sent(),
            duration_ms = ctx.start.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1000.0),
            "relay"
        );
        // The request body may hold the prompt: not kept past the audit line.
        ctx.body = Vec::new();
    }
}

/// The `model` of a provider request body (both styles name it at the top level).
fn model_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct M {
        model: Option<String>,
    }
    serde_json::from_slice::<M>(body)
        .ok()?
        .model
        .map(|m| m.chars().take(100).collect())
}

/// Whether the person has a backend running (or starting) in any pool: their keys stay in
/// memory while they do.
pub(crate) fn active(backends: &[Supervisor], person: &PersonId) -> bool {
    backends.iter().any(|s| {
        !matches!(
            s.status(person),
            gatehouse_backends::Status::Stopped | gatehouse_backends::Status::Crashing { .. }
        )
    })
}

/// Wipes from memory the keys of people none of whose backends runs (an idle stop, a
/// crash): ephemeral keys come back from the browser's key cookie at its next request,
/// persistent ones from the state store.
pub struct Sweeper(pub Arc<Live>);

/// How often the sweeper looks, and how long a key entered before any backend started is
/// kept (so it is not lost while the backend starts).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const SWEEP_GRACE: Duration = Duration::from_secs(10);

#[async_trait]
impl pingora::services::background::BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let live = &self.0;
            let wiped = live.keys.sweep(|p| active(&live.backends, p), SWEEP_GRACE);
            if wiped > 0 {
                tracing::info!(target: "gatehouse::relay", people = wiped, "provider keys wiped from memory: no backend of theirs runs");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_style_relays_only_the_paths_it_needs() {
        use ProviderStyle::*;
        for (style, method, path, ok) in [
            (OpenAi, Method::POST, "/chat/completions", true),
            (OpenAi, Method::POST, "/responses", true),
            (OpenAi, Method::POST, "/embeddings", true),
            (OpenAi, Method::GET, "/models", true),
            (OpenAi, Method::GET, "/models/gpt-4o", true),
            (OpenAi, Method::GET, "/chat/completions", false),
            (OpenAi, Method::POST, "/files", false),
            (OpenAi, Method::POST, "/fine_tuning/jobs", false),
            (OpenAi, Method::DELETE, "/models/ft-x", false),
            (OpenAi, Method::GET, "/models/a/b", false),
            (OpenAi, Method::GET, "/models/..", false),
            (OpenAi, Method::GET, "/models/%2e%2e", false),
            (OpenAi, Method::GET, "/models/..%2Fadmin", false),
            (OpenAi, Method::GET, "/models/ft:gpt-4o:org:x:1", true),
            (OpenAi, Method::POST, "/chat/completions/../files", false),
            (OpenAi, Method::POST, "/messages", false),
            (Anthropic, Method::POST, "/messages", true),
            (Anthropic, Method::POST, "/messages/count_tokens", true),
            (Anthropic, Method::POST, "/messages/batches", false),
            (Anthropic, Method::POST, "/chat/completions", false),
            (Anthropic, Method::GET, "/models", true),
        ] {
            assert_eq!(
                allowed(style, &method, path),
                ok,
                "{style:?} {method} {path}"
            );
        }
    }

    #[test]
    fn the_model_is_read_from_the_body_and_nothing_else() {
        assert_eq!(
            model_of(br#"{"model":"gpt-4o","messages":[{"role":"user","content":"secret"}]}"#)
                .as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(model_of(b"{\"messages\":[]}"), None);
        assert_eq!(model_of(b"{\"model\":\"x\",\"mess"), None);
    }
}
