//! What to do with one request, as plain functions of the request header and the state:
//! docs/design.md's request flow, step by step ([`decide`]). No Pingora session here, so the
//! whole flow is driven by unit tests in `flow/tests.rs`. `request_filter` carries out the
//! [`Step`] it returns: proxy, answer, read one of Gatehouse's own forms, or get the
//! person's backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;

use gatehouse_auth::VerifiedIdentity;
use gatehouse_backends::Lease;
use gatehouse_policy::{Decision, Person};

use crate::credentials::{Credential, Presented};
use crate::endpoints;
use crate::pages::{self, Page};
use crate::refusal::{Outcome, Refusal};
use crate::request::{
    cross_origin_write, duplicated_cookie, gatehouse_path, is_cors_preflight, is_navigation,
    request_cookies,
};
use crate::routes::{is_canonical_path, split_host};
use crate::signin;
use crate::state::{RouteState, State, Target, person_id};

#[cfg(test)]
mod tests;

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
    /// What the access log records as the decision.
    pub(crate) outcome: Option<Outcome>,
    /// The upstream socket, once connected.
    pub(crate) upstream_fd: Option<std::os::unix::io::RawFd>,
    /// The id of this request in the open-streams registry, while it streams.
    pub(crate) stream: Option<u64>,
    /// The person's backend on a `to_backend` route, held for the whole request (a stream
    /// included) so the backend counts as in use.
    pub(crate) lease: Option<Lease>,
    /// This request's place in its client address's count ([`crate::clients`]).
    pub(crate) client: Option<crate::clients::ClientSlot>,
    /// What admitted the request: the cookie, an access token, an IdP token.
    pub(crate) credential: Option<Credential>,
    /// How an IdP callback ended (for the metrics).
    pub(crate) sign_in: signin::SignInResult,
    /// This request's id: in the access log, sent upstream as `X-Request-Id`.
    pub(crate) request_id: String,
}

impl Ctx {
    /// A request's facts before any step: only the state it is decided against.
    pub(crate) fn new(state: Arc<State>) -> Self {
        Ctx {
            state,
            start: Instant::now(),
            route: None,
            host: String::new(),
            port: 0,
            authority: String::new(),
            identity: None,
            outcome: None,
            upstream_fd: None,
            stream: None,
            lease: None,
            client: None,
            credential: None,
            sign_in: None,
            // Not a secret: a cheap random id (no system call per request).
            request_id: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

/// What [`decide`] concluded; `request_filter` carries it out.
#[derive(Debug)]
pub(crate) enum Step {
    /// Proxy the request to the route's upstream.
    Continue,
    /// Answer with this page; nothing is proxied.
    Respond(Page),
    /// One of Gatehouse's own forms was posted: read the body, then [`endpoints::submit`].
    ReadForm(endpoints::FormAction),
    /// A `to_backend` route allowed the person: get their backend ([`backend_step`]).
    Backend,
    /// A provider key is being added or changed: read the body, then
    /// [`crate::providers::submit`].
    ReadKeyBody(crate::providers::KeyRequest),
    /// An access token is being made through the JSON API: read the body, then
    /// [`crate::access_tokens::api_mint`].
    ReadTokenBody,
}

/// docs/design.md's request flow, in order: host and path checks, health, the authenticate host,
/// the route, JWKS, public routes, the sign-in callback, the session, groups, Gatehouse's
/// own pages, the policy, and for a `to_backend` route the cross-site check. Records the
/// route, host, identity and reason in `ctx` for the later hooks and the access log.
pub(crate) async fn decide(
    st: &State,
    live: &crate::Live,
    req: &RequestHeader,
    ctx: &mut Ctx,
) -> Step {
    if header_bytes(req) > MAX_HEADER_BYTES {
        return refuse(ctx, Refusal::HeadersTooLarge);
    }
    let authority = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let path = req.uri.path();
    let Some((host, port)) = split_host(authority) else {
        return refuse(ctx, Refusal::BadHost);
    };
    let port = port.unwrap_or(st.default_port());
    if !is_canonical_path(path) {
        return refuse(ctx, Refusal::UnusualPath);
    }
    ctx.host.clone_from(&host);
    ctx.port = port;
    ctx.authority = authority.to_string();
    let gh = gatehouse_path(path);

    // Health checks: any host, no auth.
    if matches!(gh, Some("health" | "ping")) {
        return Step::Respond(Page::text(200, "ok\n"));
    }
    if let Some(page) = gh.and_then(|g| live.health.answer(g)) {
        return Step::Respond(page);
    }

    // The authenticate host (two-host flow).
    if st.is_auth_host(&host, port) {
        let jar = request_cookies(req);
        if let Some(step) = tossed_cookie(st, &jar, &host, ctx) {
            return step;
        }
        let page = signin::authenticate_host(st, req, &jar, path, gh, &mut ctx.sign_in).await;
        return Step::Respond(page);
    }

    // Route match.
    let Some(idx) = st.table.find(&host, port, path) else {
        return refuse(ctx, Refusal::NoRoute { host });
    };
    ctx.route = Some(idx);
    let route = &st.routes[idx];
    let scheme = route.from.scheme.as_str();

    if path == "/.well-known/pomerium/jwks.json" || gh == Some("jwks.json") {
        return Step::Respond(endpoints::jwks(st));
    }
    // A public route needs no cookie at all: answer before parsing them.
    if route.public && gh.is_none() {
        ctx.outcome = Some(Outcome::Public);
        return Step::Continue;
    }
    // A CORS preflight carries no cookie by design; the upstream answers it on routes that
    // serve other sites (`cors_allow_preflight`, as in Pomerium).
    if route.cross_site_allowed && gh.is_none() && is_cors_preflight(req) {
        ctx.outcome = Some(Outcome::Allowed("cors-preflight"));
        return Step::Continue;
    }

    let jar = request_cookies(req);
    if let Some(step) = tossed_cookie(st, &jar, &host, ctx) {
        return step;
    }
    match gh {
        Some("callback") => {
            let page = signin::route_callback(st, req, &jar, &host, &mut ctx.sign_in).await;
            return Step::Respond(page);
        }
        Some("signed_out") => return Step::Respond(pages::signed_out()),
        _ => {}
    }

    let identity = match crate::credentials::presented(req, route) {
        Presented::Token(raw) => match st.auth.verify_token(&raw, gatehouse_auth::now()) {
            Ok((identity, grant)) => {
                if !grant.routes.contains(&route.label) {
                    tracing::info!(user = %identity.email(), token_id = %grant.id, route = %route.label, "access token used on a route it was not made for; refused");
                    return refuse(ctx, Refusal::TokenWrongRoute);
                }
                if gh.is_some_and(|g| g != "user") {
                    return refuse(ctx, Refusal::TokenOnOwnPages);
                }
                ctx.credential = Some(Credential::Token {
                    id: grant.id,
                    name: grant.name,
                });
                identity
            }
            Err(e) => {
                tracing::info!(route = %route.label, reason = %e, "access token refused");
                return refuse(
                    ctx,
                    Refusal::TokenRefused {
                        message: e.to_string(),
                    },
                );
            }
        },
        Presented::IdpJwt(raw) => {
            let verified = st
                .auth
                .verify_idp_bearer(&raw, &route.idp_token_audiences, gatehouse_auth::now())
                .await;
            match verified {
                Ok(identity) if gh.is_none() => {
                    ctx.credential = Some(Credential::IdpJwt);
                    identity
                }
                Ok(_) => return refuse(ctx, Refusal::TokenOnOwnPages),
                Err(e) => {
                    tracing::info!(route = %route.label, reason = %e, "IdP bearer token refused");
                    return refuse(
                        ctx,
                        Refusal::IdpTokenRefused {
                            message: format!("the identity token was refused: {e}"),
                        },
                    );
                }
            }
        }
        Presented::Nothing => {
            let Some(identity) = st.identity(&jar) else {
                if gh == Some("sign_out") {
                    return Step::Respond(endpoints::sign_out_without_session(st));
                }
                ctx.outcome = Some(Outcome::SignedOut);
                return Step::Respond(st.start_sign_in(req, scheme, authority).await);
            };
            // Provider keys this browser holds, if memory lost them (issue 12). Before any
            // wait, so a sign-out cannot land between the session check and the restore.
            crate::providers::restore(st, live, &jar, &identity);
            ctx.credential = Some(Credential::Cookie);
            identity
        }
    };

    // Google Workspace groups: from the directory's cache, or looked up now (waiting at
    // most idp_refresh_directory_timeout), wherever they are used: the route's rules, its
    // identity headers, Gatehouse's own pages. `unavailable`: none usable; the policy fails
    // closed below.
    let needs_groups = gh.is_some() || route.pass_identity_headers || route.policy.uses_groups();
    let (identity, unavailable) = match &st.directory {
        Some(directory) if needs_groups => directory.resolve(identity).await,
        _ => (identity, None),
    };

    if let Some(g) = gh {
        let step = endpoints::page(st, live, req, g, &identity, ctx);
        ctx.identity = Some(identity);
        return step;
    }

    let decision = decide_policy(
        st,
        route,
        &identity,
        req.method.as_str(),
        path,
        unavailable.map(|u| u.since),
    );
    match decision {
        Decision::Allow(reason) => {
            ctx.outcome = Some(Outcome::Allowed(reason.code()));
            // The session cookie rides along on another site's request, so a cross-site
            // write (or WebSocket) is refused on every signed-in route, unless the route
            // says its upstream serves other sites (issue 11).
            let cross_site = !route.cross_site_allowed
                && cross_origin_write(req, &format!("{scheme}://{authority}"));
            let step = match &route.target {
                _ if cross_site => {
                    tracing::info!(user = %identity.email(), method = %req.method, route = %route.label, "cross-origin request refused");
                    refuse(ctx, Refusal::CrossOrigin)
                }
                Target::Backend(sup) if is_landing(req) => Step::Respond(landing(sup, &identity)),
                Target::Backend(_) if req.headers.get("service-worker").is_some() => {
                    tracing::warn!(user = %identity.email(), path, route = %route.label, "a service worker's script on a backend route refused");
                    refuse(ctx, Refusal::ServiceWorker)
                }
                Target::Backend(_) => {
                    crate::providers::intercept(st, live, req, route, &identity, ctx)
                        .unwrap_or(Step::Backend)
                }
                Target::Static(_) => Step::Continue,
            };
            ctx.identity = Some(identity);
            step
        }
        Decision::Deny(reason) => {
            let s = identity.session();
            tracing::info!(user = %s.email, route = %route.label, reason = reason.code(), "denied by policy");
            let refusal = Refusal::PolicyDenied {
                email: s.email.clone(),
                reason,
                csrf: st.auth.csrf_token(&identity),
            };
            ctx.identity = Some(identity);
            refuse(ctx, refusal)
        }
    }
}

/// Decides a signed-in person's request on `route` (its policy, with the current time).
/// The same function decides a new request and re-decides an open stream after a reload.
///
/// `groups_unavailable_since`: the person's directory groups could not be had (since
/// then), so a policy that uses groups refuses.
pub(crate) fn decide_policy(
    st: &State,
    route: &RouteState,
    identity: &VerifiedIdentity,
    method: &str,
    path: &str,
    groups_unavailable_since: Option<std::time::SystemTime>,
) -> Decision {
    let s = identity.session();
    let person = Person {
        sub: &s.sub,
        email: &s.email,
        email_verified: s.email_verified,
        domain_verified: st.auth.domain_verified(s),
        name: s.name.as_deref(),
        iss: &s.iss,
        groups: identity.groups(),
        claims: &[],
    };
    // The policy crate never reads the clock; the proxy passes the current UTC time.
    let request = person.request(method, path, std::time::SystemTime::now());
    let facts = request.facts();
    match groups_unavailable_since {
        Some(since) => route.policy.evaluate_groups_unavailable(&facts, since),
        None => route.policy.evaluate(&facts),
    }
}

/// [`Step::Backend`]: get the signed-in person's own backend (starting it if needed) and
/// hold its lease in `ctx`. A browser navigation during a start sees a page that continues
/// by itself; API calls wait up to `start_timeout`. Kept out of [`decide`] because it
/// starts processes.
pub(crate) async fn backend_step(st: &State, req: &RequestHeader, ctx: &mut Ctx) -> Step {
    let route = ctx.route.and_then(|i| st.routes.get(i));
    let (Some(Target::Backend(sup)), Some(identity)) =
        (route.map(|r| &r.target), ctx.identity.as_ref())
    else {
        let request_id = ctx.request_id.clone();
        return refuse(ctx, Refusal::Internal { request_id });
    };
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
    let request_id = ctx.request_id.clone();
    let refusal = match tokio::time::timeout(wait, sup.ensure(&id)).await {
        Ok(Ok(lease)) => {
            ctx.lease = Some(lease);
            return Step::Continue;
        }
        Ok(Err(error)) => {
            tracing::warn!(pool = %sup.settings().pool.name, person = %id, request_id = %request_id, error = %error, "no backend for request");
            Refusal::BackendUnavailable { error, request_id }
        }
        Err(_) if navigation => Refusal::BackendStarting,
        Err(_) => {
            tracing::warn!(pool = %sup.settings().pool.name, person = %id, request_id = %request_id, "backend not ready within start_timeout");
            Refusal::BackendTimeout { request_id }
        }
    };
    refuse(ctx, refusal)
}

/// A browser's page load of exactly `/` on a backend route: where the person lands.
fn is_landing(req: &RequestHeader) -> bool {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    req.method == http::Method::GET
        && req.uri.path() == "/"
        && req.uri.query().is_none()
        && header("sec-fetch-mode") == Some("navigate")
        && header("sec-fetch-dest") == Some("document")
}

/// OpenCode's web app shows no project on its home page until the browser has picked one
/// (its project list lives in the browser), and its "New session" does nothing without one.
/// So a page load of `/` goes to a new session in the person's workspace instead:
/// `/<base64url(directory)>/session`, the app's own link form (docs/opencode.md §12). The
/// app's home button navigates inside the page and is never redirected.
fn landing(sup: &gatehouse_backends::Supervisor, identity: &VerifiedIdentity) -> Page {
    use base64::Engine;
    let dir = sup.workspace_of(&person_id(identity));
    let encoded =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(dir.as_os_str().as_encoded_bytes());
    let mut page = Page::redirect(302, &format!("/{encoded}/session"));
    page.headers.push(("cache-control", "no-store".into()));
    page
}

/// Answers with the refusal's page, recording its code for the access log.
/// One of Gatehouse's own cookies sent more than once ([`duplicated_cookie`]): refused with
/// a page that deletes what this host can delete.
fn tossed_cookie(st: &State, jar: &[(String, String)], host: &str, ctx: &mut Ctx) -> Option<Step> {
    let name = duplicated_cookie(jar, |n| st.auth.session.is_own_cookie(n))?;
    tracing::warn!(cookie = name, host = %host, "a Gatehouse cookie came twice (cookie tossing?); refused");
    let refusal = Refusal::DuplicateCookie { name: name.into() };
    ctx.outcome = Some(Outcome::from(&refusal));
    Some(Step::Respond(
        st.with_cleared_cookies(pages::refusal(&refusal)),
    ))
}

pub(crate) fn refuse(ctx: &mut Ctx, refusal: Refusal) -> Step {
    ctx.outcome = Some(Outcome::from(&refusal));
    Step::Respond(pages::refusal(&refusal))
}

/// The largest request header block (names and values) Gatehouse passes on: room for a
/// session in its largest chunked form (8 chunks of ~3.5 KB) and the upstream's own cookies,
/// far below what would let one request tie up memory (issue 11).
pub(crate) const MAX_HEADER_BYTES: usize = 48 * 1024;

/// The size of the request's header block, as names and values.
fn header_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri.path_and_query().map_or(0, |p| p.as_str().len())
}

/// The label of the request's route, for logs (`-` when none matched).
pub(crate) fn ctx_label<'a>(st: &'a State, ctx: &Ctx) -> &'a str {
    ctx.route
        .and_then(|i| st.routes.get(i))
        .map(|r| r.label.as_str())
        .unwrap_or("-")
}

/// How long a browser navigation waits for a backend before it gets the starting page:
/// a full pool or a failing backend is known at once, while OpenCode itself needs 1.2 s or
/// more to start, so a person sees the page at once rather than a blank wait.
const NAVIGATION_WAIT: Duration = Duration::from_millis(500);
