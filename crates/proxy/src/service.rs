//! The Pingora `ProxyHttp` implementation: each hook is a few lines that call plain
//! functions. See the crate docs for the request flow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::{ResponseCompression, ResponseCompressionBuilder};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType};

use gatehouse_auth::{VerifiedIdentity, now};
use gatehouse_backends::{BackendError, Lease, Status, Supervisor};
use gatehouse_policy::{Claim, ClaimValues, Decision, Facts, Reason};

use crate::Live;
use crate::pages::{self, Page, request_id};
use crate::request::{
    cross_origin_write, form_origin_ok, gatehouse_path, is_navigation, request_cookies,
};
use crate::routes::{is_canonical_path, split_host};
use crate::signin;
use crate::state::{RouteState, State, Target, person_id};
use crate::streams::{OpenStream, UpstreamSocket};
use crate::upstream::{self, COMPRESSION_LEVEL, compressible};

/// Decides a signed-in person's request on `route` (its policy, with the current time).
/// The same function decides a new request and re-decides an open stream after a reload.
///
/// `groups_unavailable_since`: the person's directory groups could not be had (since
/// then), so a policy that uses groups refuses.
pub(crate) fn decide_policy(
    route: &RouteState,
    identity: &VerifiedIdentity,
    method: &str,
    path: &str,
    groups_unavailable_since: Option<std::time::SystemTime>,
) -> Decision {
    let s = identity.session();
    let claims = [
        Claim {
            name: "sub",
            values: ClaimValues::One(&s.sub),
        },
        Claim {
            name: "email",
            values: ClaimValues::One(&s.email),
        },
        Claim {
            name: "email_verified",
            values: ClaimValues::One(if s.email_verified { "true" } else { "false" }),
        },
        Claim {
            name: "name",
            values: ClaimValues::One(s.name.as_deref().unwrap_or_default()),
        },
        Claim {
            name: "iss",
            values: ClaimValues::One(&s.iss),
        },
        Claim {
            name: "groups",
            values: ClaimValues::Many(identity.groups()),
        },
    ];
    let claims: &[Claim<'_>] = if s.name.is_some() {
        &claims
    } else {
        // No `name` claim: leave it out rather than match it as empty.
        &[claims[0], claims[1], claims[2], claims[4], claims[5]]
    };
    let facts = Facts {
        user: &s.sub,
        email: &s.email,
        email_verified: s.email_verified,
        groups: identity.groups(),
        claims,
        method,
        path,
        // The policy crate never reads the clock; the proxy passes the current UTC time.
        time: std::time::SystemTime::now(),
    };
    match groups_unavailable_since {
        Some(since) => route.policy.evaluate_groups_unavailable(&facts, since),
        None => route.policy.evaluate(&facts),
    }
}

/// Gatehouse's proxy service.
pub struct Gatehouse {
    pub live: Arc<Live>,
}

/// The facts of one request, filled in as `request_filter` goes.
pub struct Ctx {
    /// The state serving when the request came in; a reload during the request does not
    /// change it (so `route` stays an index into the same routes).
    pub(crate) state: Arc<State>,
    pub(crate) start: Instant,
    pub(crate) route: Option<usize>,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) authority: String,
    pub(crate) identity: Option<VerifiedIdentity>,
    pub(crate) reason: Option<&'static str>,
    /// The upstream socket, once connected.
    pub(crate) upstream_fd: Option<std::os::unix::io::RawFd>,
    /// The id of this request in the open-streams registry, while it streams.
    pub(crate) stream: Option<u64>,
    /// The person's backend on a `to_backend` route, held for the whole request (a stream
    /// included) so the backend counts as in use.
    pub(crate) lease: Option<Lease>,
}

/// What a step of `request_filter` decided.
enum Step {
    Continue,
    Respond(Page),
}

const MAX_FORM_BYTES: usize = 8 * 1024;

fn expires_text(exp: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(exp)).to_string()
}

async fn read_form(session: &mut Session) -> Result<HashMap<String, String>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_FORM_BYTES {
            return Ok(HashMap::new());
        }
    }
    Ok(form_urlencoded::parse(&body).into_owned().collect())
}

pub(crate) async fn write_page(session: &mut Session, page: Page) -> Result<u16> {
    let mut resp = ResponseHeader::build(page.status, Some(page.headers.len() + 1))?;
    for (k, v) in page.headers {
        resp.append_header(k, v)?;
    }
    resp.insert_header("content-length", page.body.len().to_string())?;
    let head_only = session.req_header().method == Method::HEAD;
    let end = page.body.is_empty() || head_only;
    session.write_response_header(Box::new(resp), end).await?;
    if !end {
        session.write_response_body(Some(page.body), true).await?;
    }
    Ok(page.status)
}

/// A `to_backend` route, after the policy allowed the person: refuse cross-site writes,
/// then get the person's own backend (starting it if needed). A browser navigation during
/// a start sees a page that continues by itself; API calls wait up to `start_timeout`.
async fn backend_step(
    sup: &Supervisor,
    req: &RequestHeader,
    identity: &VerifiedIdentity,
    route_origin: &str,
    ctx: &mut Ctx,
) -> Step {
    if cross_origin_write(req, route_origin) {
        tracing::info!(user = %identity.email(), method = %req.method, "cross-origin request to a backend refused");
        ctx.reason = Some("cross-origin");
        return Step::Respond(Page::html(
            403,
            "Request refused",
            "<p>This request came from another site, so Gatehouse did not pass it to your assistant.</p>",
        ));
    }
    let id = person_id(identity);
    // A browser navigation waits only briefly: long enough to learn at once that the pool is
    // full or the backend keeps failing (those pages must not be a "starting" page that
    // reloads forever), then it gets the starting page while the start goes on (it runs on
    // its own task, so giving up the wait does not stop it). API calls wait start_timeout.
    // The header check first: it is free, `is_running` takes the pool's locks.
    let navigation = is_navigation(req) && !sup.is_running(&id);
    let wait = if navigation {
        NAVIGATION_WAIT
    } else {
        sup.settings().pool.start_timeout
    };
    let rid = request_id();
    let (status, what) = match tokio::time::timeout(wait, sup.ensure(&id)).await {
        Ok(Ok(lease)) => {
            ctx.lease = Some(lease);
            return Step::Continue;
        }
        Ok(Err(e)) => {
            let what = match &e {
                BackendError::PoolFull { .. } | BackendError::NoFreePort { .. } => {
                    "Every assistant this server can run is in use right now. Try again in a few minutes.".to_string()
                }
                BackendError::Crashing { .. } => {
                    "Your assistant failed to start several times in a row, so Gatehouse stopped trying. Restart it from your session page, or tell the operator.".to_string()
                }
                BackendError::HomeRefused(why) => format!(
                    "Gatehouse will not start your assistant in its home directory: {why}. Tell the operator."
                ),
                BackendError::ShuttingDown => "Gatehouse is restarting. Try again in a moment.".to_string(),
                _ => "Your assistant could not be started. Try again, or tell the operator.".to_string(),
            };
            tracing::warn!(pool = %sup.settings().pool.name, person = %id, request_id = %rid, error = %e, "no backend for request");
            (503, what)
        }
        Err(_) if navigation => {
            ctx.reason = Some("backend-starting");
            return Step::Respond(pages::backend_starting());
        }
        Err(_) => {
            tracing::warn!(pool = %sup.settings().pool.name, person = %id, request_id = %rid, "backend not ready within start_timeout");
            (
                504,
                "Your assistant is still starting. Try again in a few seconds.".to_string(),
            )
        }
    };
    ctx.reason = Some("backend-unavailable");
    Step::Respond(pages::backend_unavailable(status, &what, &rid))
}

/// The user page's lines about the person's backends.
fn backend_views(backends: &[Supervisor], id: &VerifiedIdentity) -> Vec<pages::BackendView> {
    let person = person_id(id);
    backends
        .iter()
        .map(|sup| pages::BackendView {
            pool: sup.settings().pool.name.clone(),
            state: match sup.status(&person) {
                Status::Stopped => "stopped (starts on your next visit)".into(),
                Status::Starting => "starting".into(),
                Status::Running {
                    since,
                    last_activity,
                    open_requests,
                } => format!(
                    "running since {}, last activity {}, {open_requests} open connection(s)",
                    humantime::format_rfc3339_seconds(since),
                    humantime::format_rfc3339_seconds(last_activity)
                ),
                Status::Crashing { failures, .. } => {
                    format!("not starting: it failed {failures} times in a row")
                }
            },
        })
        .collect()
}

/// Reads one of Gatehouse's own POST forms (sign-out, restart) and says whether it came
/// from our page: same origin, and the session's CSRF token. Each caller answers a refusal
/// with its own page.
async fn confirmed_form(
    st: &State,
    session: &mut Session,
    id: &VerifiedIdentity,
    scheme: &str,
    authority: &str,
) -> Result<(bool, bool, HashMap<String, String>)> {
    let origin_ok = form_origin_ok(session.req_header(), scheme, authority);
    let form = read_form(session).await?;
    let token_ok = form
        .get("csrf_token")
        .is_some_and(|t| st.auth.check_csrf(id, t));
    Ok((origin_ok, token_ok, form))
}

impl Gatehouse {
    /// Registers a signed-in person's long-lived response (SSE, WebSocket) so a reload or a
    /// sign-out can end it.
    fn track_stream(&self, session: &Session, resp: &ResponseHeader, ctx: &mut Ctx) {
        let is_stream = resp.status == http::StatusCode::SWITCHING_PROTOCOLS
            || resp
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
        let (Some(identity), Some(fd), None) = (&ctx.identity, ctx.upstream_fd, ctx.stream) else {
            return;
        };
        if !is_stream {
            return;
        }
        let Some(upstream) = UpstreamSocket::current(fd) else {
            return;
        };
        let req = session.req_header();
        let id = self.live.streams.register(OpenStream {
            identity: identity.clone(),
            host: ctx.host.clone(),
            port: ctx.port,
            path: req.uri.path().to_string(),
            method: req.method.to_string(),
            route: ctx_label(&ctx.state, ctx).to_string(),
            upstream,
        });
        ctx.stream = Some(id);
    }

    fn untrack_stream(&self, ctx: &mut Ctx) {
        if let Some(id) = ctx.stream.take() {
            self.live.streams.remove(id);
        }
    }

    /// DESIGN.md's request flow, in order. Each step either continues or answers.
    async fn decide(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Step> {
        let state = Arc::clone(&ctx.state);
        let st = &*state;
        let req = session.req_header();
        let authority = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_string();
        let path = req.uri.path().to_string();
        let Some((host, port)) = split_host(&authority) else {
            return Ok(Step::Respond(pages::bad_request(
                "The request has no valid Host header.",
            )));
        };
        let port = port.unwrap_or(st.default_port());
        if !is_canonical_path(&path) {
            return Ok(Step::Respond(pages::bad_request(
                "This address has an unusual form (an empty, \".\" or \"..\" segment, a backslash, or an escaped character that needs no escaping). Use the plain form of the address.",
            )));
        }
        ctx.host.clone_from(&host);
        ctx.port = port;
        ctx.authority.clone_from(&authority);
        let gh = gatehouse_path(&path).map(str::to_string);

        // Health check: any host, no auth.
        if matches!(gh.as_deref(), Some("health" | "ping")) {
            return Ok(Step::Respond(Page::text(200, "ok\n")));
        }

        // The authenticate host (two-host flow).
        if st.is_auth_host(&host, port) {
            return signin::authenticate_host(st, session.req_header(), &path, gh.as_deref())
                .await
                .map(Step::Respond);
        }

        // Route match.
        let Some(idx) = st.table.find(&host, port, &path) else {
            return Ok(Step::Respond(pages::not_found(&host)));
        };
        ctx.route = Some(idx);
        let route = &st.routes[idx];
        let scheme = route.from.scheme.as_str();

        if path == "/.well-known/pomerium/jwks.json" || gh.as_deref() == Some("jwks.json") {
            return Ok(Step::Respond(
                Page::json(200, &serde_json::Value::Null)
                    .with_body(st.auth.signer.jwks_json())
                    .with_cache("public, max-age=300"),
            ));
        }
        // A public route needs no cookie at all: answer before parsing them.
        if route.public && gh.is_none() {
            ctx.reason = Some("public-route");
            return Ok(Step::Continue);
        }

        let jar = request_cookies(session.req_header());
        match gh.as_deref() {
            Some("callback") => {
                return signin::route_callback(st, session.req_header(), &jar, &host)
                    .await
                    .map(Step::Respond);
            }
            Some("signed_out") => return Ok(Step::Respond(pages::signed_out())),
            _ => {}
        }

        let Some(identity) = st.identity(&jar) else {
            if gh.as_deref() == Some("sign_out") {
                // Nothing to end; make sure no cookie is left and show the page.
                let mut page = Page::redirect(302, "/.gatehouse/signed_out");
                for c in st.clear_session_cookies() {
                    page = page.with_header("set-cookie", c);
                }
                return Ok(Step::Respond(page));
            }
            ctx.reason = Some("signed-out");
            return Ok(Step::Respond(
                st.start_sign_in(session.req_header(), scheme, &authority)
                    .await,
            ));
        };

        // Google Workspace groups: from the directory's cache, or looked up now (waiting at
        // most idp_refresh_directory_timeout), wherever they are used: the route's rules,
        // its identity headers, Gatehouse's own pages. `unavailable`: none usable; the
        // policy fails closed below.
        let needs_groups =
            gh.is_some() || route.pass_identity_headers || route.policy.uses_groups();
        let (identity, unavailable) = match &st.directory {
            Some(directory) if needs_groups => directory.resolve(identity).await,
            _ => (identity, None),
        };

        if let Some(g) = gh.as_deref() {
            ctx.identity = Some(identity.clone());
            return self
                .gatehouse_page(st, session, g, &identity, scheme, &authority)
                .await
                .map(Step::Respond);
        }

        let s = identity.session();
        let req = session.req_header();
        let decision = decide_policy(
            route,
            &identity,
            req.method.as_str(),
            req.uri.path(),
            unavailable.map(|u| u.since),
        );
        ctx.reason = Some(decision.reason().code());
        match decision {
            Decision::Allow(_) => {
                let step = match &route.target {
                    Target::Backend(sup) => {
                        let origin = format!("{scheme}://{authority}");
                        backend_step(sup, session.req_header(), &identity, &origin, ctx).await
                    }
                    Target::Static(_) => Step::Continue,
                };
                ctx.identity = Some(identity);
                Ok(step)
            }
            Decision::Deny(reason) => {
                tracing::info!(user = %s.email, route = %route.label, reason = reason.code(), "denied by policy");
                ctx.identity = Some(identity.clone());
                Ok(Step::Respond(pages::forbidden(
                    &s.email,
                    &reason.to_string(),
                    matches!(reason, Reason::GroupsUnavailable { .. }),
                    &st.auth.csrf_token(&identity),
                )))
            }
        }
    }

    /// Gatehouse's own pages on a route host, for a signed-in person.
    async fn gatehouse_page(
        &self,
        st: &State,
        session: &mut Session,
        page: &str,
        id: &VerifiedIdentity,
        scheme: &str,
        authority: &str,
    ) -> Result<Page> {
        let s = id.session();
        Ok(match page {
            "" => pages::user_page(&pages::UserView {
                email: &s.email,
                name: s.name.as_deref(),
                user: &s.sub,
                groups: id.groups(),
                expires: expires_text(s.exp),
                csrf: &st.auth.csrf_token(id),
                backends: backend_views(&self.live.backends, id),
            }),
            "user" => Page::json(
                200,
                &serde_json::json!({
                    "email": s.email, "email_verified": s.email_verified, "name": s.name, "user": s.sub,
                    "groups": id.groups(), "expires_at": expires_text(s.exp),
                }),
            ),
            "backend/restart" if session.req_header().method == Method::POST => {
                let (origin_ok, token_ok, form) =
                    confirmed_form(st, session, id, scheme, authority).await?;
                let pool = form.get("pool").map(String::as_str).unwrap_or("");
                let sup = crate::pool(&self.live.backends, pool);
                match (origin_ok && token_ok, sup) {
                    (true, Some(sup)) => {
                        let person = person_id(id);
                        tracing::info!(user = %s.email, pool, person = %person, "backend restart requested");
                        // Stopping it ends its open streams too.
                        sup.restart(&person).await;
                        Page::redirect(303, "/.gatehouse/")
                    }
                    (true, None) => pages::bad_request("There is no such assistant pool."),
                    (false, _) => {
                        tracing::info!(user = %s.email, origin_ok, token_ok, "backend restart refused: missing or wrong CSRF token");
                        Page::html(
                            403,
                            "Restart not confirmed",
                            "<p>This restart request did not come from Gatehouse's own button, so nothing was changed.</p><p><a class=\"button\" href=\"/.gatehouse/\">Go to your session page</a></p>",
                        )
                    }
                }
            }
            "sign_out" if session.req_header().method == Method::POST => {
                let (origin_ok, token_ok, _) =
                    confirmed_form(st, session, id, scheme, authority).await?;
                if !origin_ok || !token_ok {
                    tracing::info!(user = %s.email, origin_ok, token_ok, "sign-out refused: missing or wrong CSRF token");
                    return Ok(Page::html(
                        403,
                        "Sign-out not confirmed",
                        "<p>This sign-out request did not come from Gatehouse's own sign-out button, so nothing was changed.</p><p><a class=\"button\" href=\"/.gatehouse/\">Go to your session page</a></p>",
                    ));
                }
                let ended = self.live.end_person_streams(&s.iss, &s.sub);
                tracing::info!(user = %s.email, streams_ended = ended, "signed out");
                // Pools that say so also stop the person's backend.
                let person = person_id(id);
                for sup in self
                    .live
                    .backends
                    .iter()
                    .filter(|b| b.settings().pool.stop_on_sign_out)
                {
                    let (sup, person) = (sup.clone(), person.clone());
                    tokio::spawn(async move { sup.stop(&person).await });
                }
                let signed_out = format!("{scheme}://{authority}/.gatehouse/signed_out");
                let location = match &st.auth_host {
                    Some(a) => {
                        let token = st.auth.seal_sign_out(&signed_out, &s.sid, now());
                        format!("{}/.gatehouse/sign_out?token={token}", a.origin)
                    }
                    None => signed_out,
                };
                let mut p = Page::redirect(302, &location);
                for c in st.clear_session_cookies() {
                    p = p.with_header("set-cookie", c);
                }
                p
            }
            "sign_out" => pages::user_page(&pages::UserView {
                email: &s.email,
                name: s.name.as_deref(),
                user: &s.sub,
                groups: id.groups(),
                expires: expires_text(s.exp),
                csrf: &st.auth.csrf_token(id),
                backends: backend_views(&self.live.backends, id),
            }),
            other => Page::html(
                404,
                "Not found",
                &format!(
                    "<p>Gatehouse has no page called {}.</p>",
                    html_escape::encode_text(other)
                ),
            ),
        })
    }
}

/// The label of the request's route, for logs (`-` when none matched).
pub(crate) fn ctx_label<'a>(st: &'a State, ctx: &Ctx) -> &'a str {
    ctx.route
        .and_then(|i| st.routes.get(i))
        .map(|r| r.label.as_str())
        .unwrap_or("-")
}

#[async_trait]
impl ProxyHttp for Gatehouse {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            state: self.live.state.load_full(),
            start: Instant::now(),
            route: None,
            host: String::new(),
            port: 0,
            authority: String::new(),
            identity: None,
            reason: None,
            upstream_fd: None,
            stream: None,
            lease: None,
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Only the number: the socket's cookie is read if the response turns out to be a
        // stream (the request owns the connection until then).
        ctx.upstream_fd = Some(fd);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        // The upstream finished: its connection may go back to the pool and serve
        // another request, so this one must no longer be ended through it.
        if end_of_stream {
            self.untrack_stream(ctx);
        }
        Ok(None)
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // With backend pools: enabled so the module reads the request's Accept-Encoding (it
        // ignores it when disabled); `request_filter` turns it off for every response and
        // `response_filter` back on for backend assets only. Without: Pingora's default,
        // present and off (pools are restart-only, so this never changes while serving).
        let level = if self.live.backends.is_empty() {
            0
        } else {
            COMPRESSION_LEVEL
        };
        modules.add_module(ResponseCompressionBuilder::enable(level));
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if !self.live.backends.is_empty()
            && let Some(c) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
        {
            c.adjust_level(0);
        }
        match self.decide(session, ctx).await? {
            Step::Continue => Ok(false),
            Step::Respond(page) => {
                write_page(session, page).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        upstream::peer(ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        upstream::prepare_request(req, ctx, client_ip)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.track_stream(session, resp, ctx);
        // OpenCode serves its 2.7 MB of scripts uncompressed (docs/opencode.md §6):
        // compress them for browsers that accept gzip/br. Never an event stream.
        if ctx.lease.is_some()
            && compressible(resp)
            && let Some(c) = session
                .downstream_modules_ctx
                .get_mut::<ResponseCompression>()
        {
            c.adjust_level(COMPRESSION_LEVEL);
        }
        upstream::strip_own_set_cookies(resp, ctx)
    }

    fn request_summary(&self, session: &Session, ctx: &Ctx) -> String {
        // Pingora's default includes the query string, which may hold an authorization code.
        format!(
            "{} {} host={}",
            session.req_header().method,
            session.req_header().uri.path(),
            ctx.host
        )
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // A client that went away is not an operator problem.
        error.esource() == &ErrorSource::Downstream
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let label = ctx
            .route
            .and_then(|i| ctx.state.routes.get(i))
            .map(|r| r.label.as_str())
            .unwrap_or("");
        let rid = request_id();
        let page = match (e.esource(), e.etype()) {
            (
                ErrorSource::Downstream,
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ) => None,
            (ErrorSource::Downstream, _) => {
                Some(pages::bad_request("The request could not be read."))
            }
            (_, ErrorType::HTTPStatus(code)) if *code < 500 => {
                Some(pages::bad_request("The request was refused."))
            }
            (
                _,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => Some(pages::upstream_error(
                504,
                "The service behind this address did not answer in time.",
                &rid,
            )),
            (ErrorSource::Upstream, _)
            | (
                _,
                ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute,
            ) => Some(pages::upstream_error(
                502,
                "The service behind this address is not answering. It may be starting or stopped.",
                &rid,
            )),
            _ => Some(pages::internal_error(&rid)),
        };
        if page.is_some() {
            tracing::warn!(route = label, request_id = %rid, error = e.etype().as_str(), source = ?e.esource(), "request failed");
        }
        let code = match page {
            Some(p) => {
                let status = p.status;
                let _ = write_page(session, p).await;
                status
            }
            None => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        self.untrack_stream(ctx);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let req = session.req_header();
        let route = ctx
            .route
            .and_then(|i| ctx.state.routes.get(i))
            .map(|r| r.label.as_str())
            .unwrap_or("-");
        let user = ctx.identity.as_ref().map(|i| i.email()).unwrap_or("-");
        // The path only: the query may hold an authorization code or a handoff token.
        tracing::info!(
            target: "gatehouse::access",
            method = %req.method,
            host = %ctx.host,
            path = %req.uri.path(),
            status,
            route,
            user,
            decision = ctx.reason.unwrap_or("-"),
            bytes = session.body_bytes_sent(),
            duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0,
        );
    }
}

/// How long a browser navigation waits for a backend before it gets the starting page:
/// a full pool or a failing backend is known at once, while OpenCode itself needs 1.2 s or
/// more to start, so a person sees the page at once rather than a blank wait.
const NAVIGATION_WAIT: Duration = Duration::from_millis(500);
