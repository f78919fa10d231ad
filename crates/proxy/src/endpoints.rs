//! Gatehouse's own pages on a route host (`/.gatehouse/…`, Pomerium's `/.pomerium/…`), one
//! function each: the user page and its JSON, JWKS, sign-out and the backend's Restart
//! button. The two forms are posted: [`page`] asks `request_filter` to read the body
//! ([`Step::ReadForm`]), then [`submit`] checks origin and CSRF token and acts.

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use pingora::http::RequestHeader;

use gatehouse_auth::{VerifiedIdentity, now};
use gatehouse_backends::{Status, Supervisor};

use crate::Live;
use crate::flow::{Ctx, Step, refuse};
use crate::pages::{self, Page};
use crate::refusal::{Outcome, Refusal};
use crate::request::form_origin_ok;
use crate::state::{State, person_id};

/// One of Gatehouse's own POST forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FormAction {
    SignOut,
    /// Sign-out of every session of this person, in every browser.
    SignOutEverywhere,
    RestartBackend,
    /// The access tokens page: make or revoke tokens.
    Tokens,
}

/// The page `name` (after `/.gatehouse/`) for a signed-in person.
pub(crate) fn page(
    st: &State,
    live: &Live,
    req: &RequestHeader,
    name: &str,
    id: &VerifiedIdentity,
    ctx: &mut Ctx,
) -> Step {
    if let Some(step) = crate::providers::page(st, live, req, name, id, ctx) {
        return step;
    }
    if let Some(step) = crate::access_tokens::page(st, live, req, name, id, ctx) {
        return step;
    }
    let post = req.method == Method::POST;
    Step::Respond(match name {
        "" => user_page(st, live, id, ctx.port),
        "user" => user_json(id),
        "backend/restart" if post => return Step::ReadForm(FormAction::RestartBackend),
        "sign_out" if post => return Step::ReadForm(FormAction::SignOut),
        "sign_out" => user_page(st, live, id, ctx.port),
        "sign_out_everywhere" if post => return Step::ReadForm(FormAction::SignOutEverywhere),
        "sign_out_everywhere" => user_page(st, live, id, ctx.port),
        other => return refuse(ctx, Refusal::NoSuchPage { name: other.into() }),
    })
}

/// The JWKS that upstreams verify the identity JWT with (also at Pomerium's path).
pub(crate) fn jwks(st: &State) -> Page {
    Page::json(200, &serde_json::Value::Null)
        .with_body(st.auth.signer.jwks_json())
        .with_cache("public, max-age=300")
}

/// Sign-out without a session: nothing to end; make sure no cookie is left.
pub(crate) fn sign_out_without_session(st: &State) -> Page {
    let mut page = Page::redirect(302, "/.gatehouse/signed_out");
    for c in st.clear_session_cookies() {
        page = page.with_header("set-cookie", c);
    }
    page
}

/// Carries out a posted form once its body is read: only when it came from Gatehouse's own
/// page (same origin, and the session's CSRF token); otherwise a page says nothing changed.
pub(crate) async fn submit(
    st: &State,
    live: &Live,
    req: &RequestHeader,
    action: FormAction,
    fields: &[(String, String)],
    ctx: &mut Ctx,
) -> Page {
    let form: HashMap<&str, &str> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (Some(id), Some(route)) = (
        ctx.identity.as_ref(),
        ctx.route.and_then(|i| st.routes.get(i)),
    ) else {
        let refusal = Refusal::Internal {
            request_id: ctx.request_id.clone(),
        };
        ctx.outcome = Some(Outcome::from(&refusal));
        return pages::refusal(&refusal);
    };
    let scheme = route.from.scheme.as_str();
    let s = id.session();
    let origin_ok = form_origin_ok(req, scheme, &ctx.authority);
    let token_ok = form
        .get("csrf_token")
        .is_some_and(|t| st.auth.check_csrf(id, t));
    if !origin_ok || !token_ok {
        tracing::info!(user = %s.email, origin_ok, token_ok, action = ?action, "form refused: missing or wrong CSRF token");
        let refusal = Refusal::FormNotConfirmed {
            sign_out: matches!(action, FormAction::SignOut | FormAction::SignOutEverywhere),
        };
        ctx.outcome = Some(Outcome::from(&refusal));
        return pages::refusal(&refusal);
    }
    match action {
        FormAction::Tokens => crate::access_tokens::form_submit(st, live, fields, id, ctx),
        FormAction::RestartBackend => {
            let pool = form.get("pool").copied().unwrap_or("");
            let Some(sup) = crate::pool(&live.backends, pool) else {
                ctx.outcome = Some(Outcome::from(&Refusal::NoSuchPool));
                return pages::refusal(&Refusal::NoSuchPool);
            };
            let person = person_id(id);
            tracing::info!(user = %s.email, pool, person = %person, "backend restart requested");
            // Stopping it ends its open streams too.
            sup.restart(&person).await;
            Page::redirect(303, "/.gatehouse/")
        }
        FormAction::SignOut | FormAction::SignOutEverywhere => {
            let everywhere = action == FormAction::SignOutEverywhere;
            // Recorded first: the cookie may have been copied, and the browser may not
            // delete it. If it cannot be recorded, say so rather than pretend.
            let t = now();
            let recorded = if everywhere {
                // Access tokens too: "every browser" means every credential (issue 13).
                st.auth
                    .end_every_session(&s.iss, &s.sub, t)
                    .and_then(|()| st.auth.end_session(s, t))
                    .and_then(|()| st.auth.revoke_tokens(&s.iss, &s.sub, None).map(|_| ()))
            } else {
                st.auth.end_session(s, t)
            };
            if let Err(e) = recorded {
                tracing::error!(user = %s.email, error = %e, "sign-out could not be recorded");
                let refusal = Refusal::SignOutNotRecorded {
                    request_id: ctx.request_id.clone(),
                };
                ctx.outcome = Some(Outcome::from(&refusal));
                return pages::refusal(&refusal);
            }
            let ended = live.end_person_streams(&s.iss, &s.sub);
            // The person's provider keys leave memory; this browser's key cookie is
            // deleted below, another browser's restores only into its own session.
            let person = person_id(id);
            if live.keys.forget(&person) {
                tracing::info!(user = %s.email, "provider keys wiped from memory at sign-out");
            }
            tracing::info!(user = %s.email, streams_ended = ended, everywhere, "signed out");
            // Pools that say so also stop the person's backend.
            for sup in live
                .backends
                .iter()
                .filter(|b| b.settings().pool.stop_on_sign_out)
            {
                let (sup, person) = (sup.clone(), person.clone());
                tokio::spawn(async move { sup.stop(&person).await });
            }
            let signed_out = format!("{scheme}://{}/.gatehouse/signed_out", ctx.authority);
            let location = match &st.auth_host {
                Some(a) => {
                    let token = st.auth.seal_sign_out(&signed_out, &s.sid, t);
                    format!("{}/.gatehouse/sign_out?token={token}", a.origin)
                }
                None => signed_out,
            };
            let mut p = Page::redirect(302, &location);
            for c in st.clear_session_cookies() {
                p = p.with_header("set-cookie", c);
            }
            if form.get("switch") == Some(&"1") {
                let name = crate::signin::switch_cookie_name(st.auth.session.name());
                p = p.with_header(
                    "set-cookie",
                    st.set_cookie(&name, "1", 600, gatehouse_config::SameSite::Lax, false),
                );
            }
            p
        }
    }
}

/// The person's session page: who they are, their groups, when the session ends, the
/// sign-out button, and their backends with a Restart button.
fn user_page(st: &State, live: &Live, id: &VerifiedIdentity, port: u16) -> Page {
    let backends: &[Supervisor] = &live.backends;
    let s = id.session();
    pages::user_page(&pages::UserView {
        email: &s.email,
        name: s.name.as_deref(),
        user: &s.sub,
        groups: id.groups(),
        expires: expires_text(s.exp),
        csrf: &st.auth.csrf_token(id),
        backends: backend_views(st, backends, id, port),
        providers: crate::providers::summary(st, live, id),
        tokens: crate::access_tokens::summary(st, id),
    })
}

fn user_json(id: &VerifiedIdentity) -> Page {
    let s = id.session();
    Page::json(
        200,
        &serde_json::json!({
            "email": s.email, "email_verified": s.email_verified, "name": s.name, "user": s.sub,
            "groups": id.groups(), "expires_at": expires_text(s.exp),
        }),
    )
}

/// The user page's lines about the person's backends.
fn backend_views(
    st: &State,
    backends: &[Supervisor],
    id: &VerifiedIdentity,
    port: u16,
) -> Vec<pages::BackendView> {
    let person = person_id(id);
    backends
        .iter()
        .map(|sup| pages::BackendView {
            pool: sup.settings().pool.name.clone(),
            url: assistant_url(st, &sup.settings().pool.name, port),
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

/// The address of the first route to the pool `pool`: `scheme://host[:port]/`, with the
/// route's own port, else this request's port unless it is the scheme's default.
fn assistant_url(st: &State, pool: &str, port: u16) -> Option<String> {
    let route = st.routes.iter().find(
        |r| matches!(&r.target, crate::state::Target::Backend(s) if s.settings().pool.name == pool),
    )?;
    let from = &route.from;
    let port = from.port.unwrap_or(port);
    let default = if from.scheme == "https" { 443 } else { 80 };
    Some(if port == default {
        format!("{}://{}/", from.scheme, from.host)
    } else {
        format!("{}://{}:{port}/", from.scheme, from.host)
    })
}

fn expires_text(exp: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(exp)).to_string()
}
