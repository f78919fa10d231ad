//! A person's personal access tokens from the browser's side (issue 13): the tokens page
//! (`/.gatehouse/tokens`, forms with the CSRF token) and its JSON API
//! (`/.gatehouse/api/tokens`). Both need the session cookie: a token cannot make or revoke
//! tokens ([`crate::flow::decide`] refuses tokens on Gatehouse's pages). Revoking ends the
//! streams opened with the token.

use http::Method;
use pingora::http::RequestHeader;

use gatehouse_auth::tokens::{MintError, MintedToken, TokenInfo};
use gatehouse_auth::{VerifiedIdentity, now};
use gatehouse_policy::Decision;
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

use crate::Live;
use crate::flow::{Ctx, Step, decide_policy, refuse};
use crate::pages::Page;
use crate::refusal::Refusal;
use crate::request::cross_origin_write;
use crate::state::State;

/// The largest JSON body read to make a token.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024;
/// A token's lifetime when the person does not choose one (capped by the config).
const DEFAULT_DAYS: u64 = 30;
const DAY: u64 = 24 * 60 * 60;

/// `/.gatehouse/tokens` and `/.gatehouse/api/tokens[/<id>]`; `None`: another page.
pub(crate) fn page(
    st: &State,
    live: &Live,
    req: &RequestHeader,
    name: &str,
    id: &VerifiedIdentity,
    ctx: &mut Ctx,
) -> Option<Step> {
    Some(match (name, &req.method) {
        ("tokens", &Method::GET | &Method::HEAD) => {
            Step::Respond(tokens_page(st, id, ctx, None, None))
        }
        ("tokens", &Method::POST) => Step::ReadForm(crate::endpoints::FormAction::Tokens),
        ("api/tokens", m) | ("api/tokens/", m) if m == Method::GET || m == Method::HEAD => {
            Step::Respond(api_list(st, id, ctx))
        }
        (n, m) if n == "api/tokens" || n.starts_with("api/tokens/") => {
            if cross_origin_write(req, &crate::providers::route_origin(st, ctx)) {
                return Some(refuse(ctx, Refusal::CrossOrigin));
            }
            let which = n.strip_prefix("api/tokens").unwrap_or("");
            let which = which.trim_start_matches('/');
            if *m == Method::POST && which.is_empty() {
                Step::ReadTokenBody
            } else if *m == Method::DELETE {
                let one = (!which.is_empty()).then_some(which);
                Step::Respond(api_revoke(st, live, id, one))
            } else {
                Step::Respond(error(405, "use GET, POST (make) or DELETE (revoke)"))
            }
        }
        _ => return None,
    })
}

fn error(status: u16, message: &str) -> Page {
    Page::json(status, &serde_json::json!({"error": message}))
}

/// The routes a token may be made for: every signed-in route whose policy lets the person
/// in (checked as a `GET /`); the route of this request first.
fn routes_for(st: &State, id: &VerifiedIdentity, ctx: &Ctx) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let here = ctx.route.and_then(|i| st.routes.get(i));
    for r in here.into_iter().chain(st.routes.iter()) {
        if r.public || out.contains(&r.label) {
            continue;
        }
        if matches!(
            decide_policy(st, r, id, "GET", "/", None),
            Decision::Allow(_)
        ) {
            out.push(r.label.clone());
        }
    }
    out
}

fn max_days(st: &State) -> u64 {
    (st.access_token_max_expire.as_secs() / DAY).max(1)
}

/// What the person asked for, checked: the lifetime in seconds and the routes.
fn request_terms(
    st: &State,
    id: &VerifiedIdentity,
    ctx: &Ctx,
    days: Option<u64>,
    routes: Option<Vec<String>>,
) -> Result<(u64, Vec<String>), String> {
    let cap = st.access_token_max_expire.as_secs();
    let lifetime = match days {
        None => (DEFAULT_DAYS * DAY).min(cap),
        Some(0) => return Err("expires_in_days must be 1 or more".into()),
        Some(d) if d.saturating_mul(DAY) > cap => {
            return Err(format!(
                "expires_in_days may be at most {} (access_token_max_expire)",
                max_days(st)
            ));
        }
        Some(d) => d * DAY,
    };
    let allowed = routes_for(st, id, ctx);
    let routes = match routes {
        None => allowed.first().cloned().into_iter().collect(),
        Some(list) => {
            if let Some(bad) = list.iter().find(|r| !allowed.contains(r)) {
                return Err(format!(
                    "route {bad:?} is not one you can use; choose from: {}",
                    allowed.join(", ")
                ));
            }
            list
        }
    };
    Ok((lifetime, routes))
}

fn mint(
    st: &State,
    id: &VerifiedIdentity,
    name: &str,
    lifetime: u64,
    routes: Vec<String>,
) -> Result<MintedToken, (u16, String)> {
    match st.auth.mint_token(id, name, lifetime, routes, now()) {
        Ok(m) => {
            tracing::info!(user = %id.email(), token_id = %m.info.id, token_name = %m.info.name, routes = ?m.info.routes, "access token made");
            Ok(m)
        }
        Err(MintError::Store(e)) => {
            tracing::error!(user = %id.email(), error = %e, "an access token could not be recorded");
            Err((500, "the token could not be recorded; try again".into()))
        }
        Err(e) => Err((400, e.to_string())),
    }
}

/// Revokes one token of the person's (or all) and ends the streams opened with them.
fn revoke(
    st: &State,
    live: &Live,
    id: &VerifiedIdentity,
    token_id: Option<&str>,
) -> Result<Vec<String>, String> {
    let s = id.session();
    match st.auth.revoke_tokens(&s.iss, &s.sub, token_id) {
        Ok(ids) => {
            let ended = live.end_token_streams(&ids);
            tracing::info!(user = %s.email, token_ids = ?ids, streams_ended = ended, "access tokens revoked");
            Ok(ids)
        }
        Err(e) => {
            tracing::error!(user = %s.email, error = %e, "access token revocation could not be recorded");
            Err("the revocation could not be recorded; the token still works; try again".into())
        }
    }
}

fn info_json(t: &TokenInfo) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "name": t.name, "last4": t.last4, "routes": t.routes,
        "created_at": time_text(t.created), "expires_at": time_text(t.expires),
        "last_used_at": t.last_used.map(time_text),
    })
}

fn time_text(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        .to_string()
}

fn api_list(st: &State, id: &VerifiedIdentity, ctx: &Ctx) -> Page {
    let tokens: Vec<serde_json::Value> = st.auth.tokens(id).iter().map(info_json).collect();
    Page::json(
        200,
        &serde_json::json!({
            "tokens": tokens,
            "routes": routes_for(st, id, ctx),
            "max_expires_in_days": max_days(st),
        }),
    )
}

fn api_revoke(st: &State, live: &Live, id: &VerifiedIdentity, token_id: Option<&str>) -> Page {
    match revoke(st, live, id, token_id) {
        Ok(ids) if ids.is_empty() && token_id.is_some() => error(404, "no such token of yours"),
        Ok(ids) => Page::json(200, &serde_json::json!({"revoked": ids})),
        Err(e) => error(500, &e),
    }
}

/// `POST /.gatehouse/api/tokens` with `{"name", "expires_in_days"?, "routes"?}`: 201 with
/// the token, shown this once.
pub(crate) fn api_mint(
    st: &State,
    req: &RequestHeader,
    body: &[u8],
    id: &VerifiedIdentity,
    ctx: &Ctx,
) -> Page {
    let json_body = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim_start().starts_with("application/json"));
    if !json_body {
        return error(
            415,
            "send the token's terms as JSON (content-type: application/json)",
        );
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Terms {
        name: String,
        expires_in_days: Option<u64>,
        /// For short-lived tokens (a CI job): seconds instead of days.
        expires_in_seconds: Option<u64>,
        routes: Option<Vec<String>>,
    }
    let terms: Terms = match serde_json::from_slice(body) {
        Ok(t) => t,
        Err(e) => {
            return error(
                400,
                &format!(
                    "the body must be {{\"name\": …, \"expires_in_days\"?: n, \"routes\"?: […]}} ({e})"
                ),
            );
        }
    };
    let (lifetime, routes) = match request_terms(st, id, ctx, terms.expires_in_days, terms.routes) {
        Ok(t) => t,
        Err(e) => return error(400, &e),
    };
    let lifetime = match (terms.expires_in_seconds, terms.expires_in_days) {
        (Some(_), Some(_)) => {
            return error(400, "give expires_in_days or expires_in_seconds, not both");
        }
        (Some(0), None) => return error(400, "expires_in_seconds must be 1 or more"),
        (Some(secs), None) if secs > st.access_token_max_expire.as_secs() => {
            return error(
                400,
                "expires_in_seconds is longer than access_token_max_expire allows",
            );
        }
        (Some(secs), None) => secs,
        (None, _) => lifetime,
    };
    match mint(st, id, &terms.name, lifetime, routes) {
        Ok(m) => {
            let mut v = info_json(&m.info);
            v["token"] = serde_json::Value::String(m.token.to_string());
            Page::json(201, &v)
        }
        Err((status, e)) => error(status, &e),
    }
}

/// The tokens page's form, once its origin and CSRF token are checked: make (`name`,
/// `days`, `route`…), `revoke=<id>` or `revoke_all`.
pub(crate) fn form_submit(
    st: &State,
    live: &Live,
    form: &[(String, String)],
    id: &VerifiedIdentity,
    ctx: &Ctx,
) -> Page {
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(token_id) = get("revoke") {
        return match revoke(st, live, id, Some(token_id)) {
            Ok(_) => Page::redirect(303, "/.gatehouse/tokens"),
            Err(e) => tokens_page(st, id, ctx, None, Some(&e)),
        };
    }
    if get("revoke_all").is_some() {
        return match revoke(st, live, id, None) {
            Ok(_) => Page::redirect(303, "/.gatehouse/tokens"),
            Err(e) => tokens_page(st, id, ctx, None, Some(&e)),
        };
    }
    let days = match get("days").map(str::trim).filter(|d| !d.is_empty()) {
        None => None,
        Some(d) => match d.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return tokens_page(
                    st,
                    id,
                    ctx,
                    None,
                    Some("the lifetime must be a number of days"),
                );
            }
        },
    };
    let routes: Vec<String> = form
        .iter()
        .filter(|(n, _)| n == "route")
        .map(|(_, v)| v.clone())
        .collect();
    let routes = (!routes.is_empty()).then_some(routes);
    let made = request_terms(st, id, ctx, days, routes).and_then(|(lifetime, routes)| {
        mint(st, id, get("name").unwrap_or(""), lifetime, routes).map_err(|(_, e)| e)
    });
    match made {
        Ok(m) => tokens_page(st, id, ctx, Some(&m), None),
        Err(e) => tokens_page(st, id, ctx, None, Some(&e)),
    }
}

/// The tokens page: a new token shown once (if one was just made), the list with a Revoke
/// button each, and the form to make one.
fn tokens_page(
    st: &State,
    id: &VerifiedIdentity,
    ctx: &Ctx,
    minted: Option<&MintedToken>,
    problem: Option<&str>,
) -> Page {
    let csrf = attr(&st.auth.csrf_token(id)).into_owned();
    let hidden = format!("<input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">");
    let mut html = String::new();
    if let Some(e) = problem {
        html.push_str(&format!("<p class=\"reason\">{}</p>", text(e)));
    }
    if let Some(m) = minted {
        let host = ctx.authority.as_str();
        html.push_str(&format!(
            "<div class=\"reason\"><p>Your new token <b>{name}</b>. Copy it now: it is not shown again.</p>\
             <p><code id=\"token\">{token}</code></p>\
             <p>Use it with <code>opencode attach https://{host} -p &lt;token&gt;</code>, or send it as <code>Authorization: Bearer &lt;token&gt;</code>.</p></div>",
            name = text(&m.info.name),
            token = text(m.token.as_str()),
            host = text(host),
        ));
    }
    let tokens = st.auth.tokens(id);
    if tokens.is_empty() {
        html.push_str("<p>You have no access tokens.</p>");
    } else {
        html.push_str("<dl>");
        for t in &tokens {
            html.push_str(&format!(
                "<dt>{name}</dt><dd>…{last4} · for {routes} · made {created} · expires {expires} · last used {used}\
                 <form method=\"post\" action=\"/.gatehouse/tokens\">{hidden}<input type=\"hidden\" name=\"revoke\" value=\"{id}\"><button type=\"submit\">Revoke</button></form></dd>",
                name = text(&t.name),
                last4 = text(&t.last4),
                routes = text(&t.routes.join(", ")),
                created = time_text(t.created),
                expires = time_text(t.expires),
                used = t.last_used.map_or("never".to_string(), time_text),
                id = attr(&t.id),
            ));
        }
        html.push_str(&format!(
            "</dl><form method=\"post\" action=\"/.gatehouse/tokens\">{hidden}<input type=\"hidden\" name=\"revoke_all\" value=\"1\"><button type=\"submit\">Revoke all</button></form>"
        ));
    }
    let routes = routes_for(st, id, ctx);
    let mut choices = String::new();
    for (i, r) in routes.iter().enumerate() {
        choices.push_str(&format!(
            "<label><input type=\"checkbox\" name=\"route\" value=\"{v}\"{checked}> {t}</label><br>",
            v = attr(r),
            t = text(r),
            checked = if i == 0 { " checked" } else { "" },
        ));
    }
    let max = max_days(st);
    html.push_str(&format!(
        "<h2>Make a token</h2><form method=\"post\" action=\"/.gatehouse/tokens\">{hidden}\
         <p><label>Name <input name=\"name\" required maxlength=\"64\" placeholder=\"laptop TUI\"></label></p>\
         <p><label>Expires in <input name=\"days\" type=\"number\" min=\"1\" max=\"{max}\" value=\"{default}\"> days</label></p>\
         <p>Routes it may be used on:<br>{choices}</p><button type=\"submit\">Make token</button></form>\
         <p><a href=\"/.gatehouse/\">Your session</a></p>",
        default = DEFAULT_DAYS.min(max),
    ));
    Page::html(200, "Your access tokens", &html)
}

/// The user page's line about tokens: how many the person has.
pub(crate) fn summary(st: &State, id: &VerifiedIdentity) -> usize {
    st.auth.tokens(id).len()
}

/// How often access tokens' last-used times are written (in one batch).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Writes access tokens' last-used times every [`FLUSH_EVERY`], and once more at shutdown.
pub(crate) struct UseRecorder(pub(crate) std::sync::Arc<Live>);

impl UseRecorder {
    fn flush(&self) {
        if let Err(e) = self.0.state.load().auth.flush_token_use() {
            tracing::warn!(error = %e, "access tokens' last-used times could not be written; they are kept for the next try");
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for UseRecorder {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush(),
                _ = shutdown.changed() => {
                    self.flush();
                    return;
                }
            }
        }
    }
}
