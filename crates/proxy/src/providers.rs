//! A person's provider keys from the browser's side (issue 12): the keys page
//! (`/.gatehouse/providers`), its JSON API (`/.gatehouse/api/providers`), OpenCode's own
//! provider dialog (`PUT`/`DELETE /auth/<provider>` on a backend route, answered here so
//! the key never reaches the backend), the refusal of OpenCode's provider OAuth, and the
//! restoring of ephemeral keys from the browser's key cookie.

use http::Method;
use pingora::http::RequestHeader;
use zeroize::Zeroizing;

use gatehouse_auth::{VerifiedIdentity, now};
use gatehouse_backends::{PersonId, Supervisor};
use gatehouse_config::{KeyMode, SameSite};
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

use crate::Live;
use crate::flow::{Ctx, Step, refuse};
use crate::keys::{self, HeldKey, KeyView, MAX_KEY_LEN};
use crate::pages::Page;
use crate::refusal::{Outcome, Refusal};
use crate::request::{cookie_lookup, cross_origin_write, form_origin_ok, request_cookies};
use crate::state::{RouteState, State, Target, person_id};

/// A request whose body Gatehouse reads to change a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyRequest {
    /// The keys page's form (`POST /.gatehouse/providers`).
    Form,
    /// `PUT /.gatehouse/api/providers/<id>` with `{"key": "..."}`.
    ApiPut(String),
    /// OpenCode's `PUT /auth/<id>` with `{"type": "api", "key": "..."}`.
    OpencodeAuth(String),
}

/// The largest body read for a key change.
pub(crate) const MAX_BODY_BYTES: usize = 8 * 1024;

/// A relayed provider as the keys page lists it.
struct Row<'a> {
    id: &'a str,
    mode: KeyMode,
    key: Option<KeyView>,
}

/// The pool whose relay decides how `provider`'s key is kept for a request on `route`:
/// the route's own pool if it relays the provider, else the first pool that does.
fn pool_for<'a>(
    backends: &'a [Supervisor],
    route: Option<&RouteState>,
    provider: &str,
) -> Option<(&'a Supervisor, KeyMode)> {
    let relays = |s: &Supervisor| {
        s.settings()
            .pool
            .relay
            .as_ref()
            .filter(|r| r.provider(provider).is_some())
            .map(|r| r.keys)
    };
    let own = route.and_then(|r| match &r.target {
        Target::Backend(s) => backends
            .iter()
            .find(|b| b.settings().pool.name == s.settings().pool.name),
        Target::Static(_) => None,
    });
    own.and_then(|s| relays(s).map(|m| (s, m)))
        .or_else(|| backends.iter().find_map(|s| relays(s).map(|m| (s, m))))
}

/// Every relayed provider (each once, in config order) with the person's key, if any.
fn rows<'a>(st: &State, live: &'a Live, person: &PersonId) -> Vec<Row<'a>> {
    let in_memory = live.keys.views(person);
    let mut stored: Option<Vec<KeyView>> = None;
    let mut out: Vec<Row<'a>> = Vec::new();
    for sup in &live.backends {
        let Some(relay) = &sup.settings().pool.relay else {
            continue;
        };
        for p in &relay.providers {
            if out.iter().any(|r| r.id == p.id) {
                continue;
            }
            let mut key = in_memory.iter().find(|v| v.provider == p.id).cloned();
            if key.is_none() && relay.keys == KeyMode::Persistent {
                let list = stored.get_or_insert_with(|| keys::stored_views(&st.auth, person));
                key = list.iter().find(|v| v.provider == p.id).cloned();
            }
            out.push(Row {
                id: &p.id,
                mode: relay.keys,
                key,
            });
        }
    }
    out
}

fn added_text(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// The user page's line about connected providers (empty without a relay).
pub(crate) fn summary(st: &State, live: &Live, id: &VerifiedIdentity) -> Vec<(String, String)> {
    rows(st, live, &person_id(id))
        .into_iter()
        .map(|r| {
            let state = match &r.key {
                Some(k) => format!("connected (…{}, {} mode)", k.last4, r.mode.as_str()),
                None => "no key".to_string(),
            };
            (r.id.to_string(), state)
        })
        .collect()
}

/// `/.gatehouse/providers` and `/.gatehouse/api/providers[/<id>]`; `None` for other pages.
pub(crate) fn page(
    st: &State,
    live: &Live,
    req: &RequestHeader,
    name: &str,
    id: &VerifiedIdentity,
    ctx: &mut Ctx,
) -> Option<Step> {
    let person = person_id(id);
    let route_origin = route_origin(st, ctx);
    Some(match (name, &req.method) {
        ("providers", &Method::GET | &Method::HEAD) => {
            Step::Respond(keys_page(st, live, id, &person, None))
        }
        ("providers", &Method::POST) => Step::ReadKeyBody(KeyRequest::Form),
        ("api/providers", &Method::GET | &Method::HEAD) => {
            Step::Respond(api_list(st, live, &person))
        }
        (n, m) if n.starts_with("api/providers/") => {
            let provider = &n["api/providers/".len()..];
            if cross_origin_write(req, &route_origin) {
                return Some(refuse(ctx, Refusal::CrossOrigin));
            }
            match *m {
                Method::PUT => Step::ReadKeyBody(KeyRequest::ApiPut(provider.to_string())),
                Method::DELETE => {
                    let route = ctx.route.and_then(|i| st.routes.get(i));
                    Step::Respond(match change(st, live, req, route, id, provider, None) {
                        Ok(cookie) => with_cookie(
                            Page::json(200, &serde_json::json!({"removed": true, "id": provider})),
                            cookie,
                        ),
                        Err(e) => e.json(),
                    })
                }
                _ => Step::Respond(KeyError::new(405, "use PUT or DELETE").json()),
            }
        }
        _ => return None,
    })
}

/// On a backend route whose pool relays providers: OpenCode's provider dialog is answered
/// here, and its provider OAuth refused. `None`: not such a request (proxy it).
pub(crate) fn intercept(
    st: &State,
    live: &Live,
    req: &RequestHeader,
    route: &RouteState,
    id: &VerifiedIdentity,
    ctx: &mut Ctx,
) -> Option<Step> {
    let Target::Backend(sup) = &route.target else {
        return None;
    };
    sup.settings().pool.relay.as_ref()?;
    let path = req.uri.path();
    if let Some(rest) = path.strip_prefix("/provider/")
        && let Some((_, tail)) = rest.split_once('/')
        && (tail.starts_with("oauth/authorize") || tail.starts_with("oauth/callback"))
    {
        tracing::info!(user = %id.email(), path, "provider OAuth refused: the relay keeps provider keys");
        return Some(refuse(ctx, Refusal::ProviderOAuth));
    }
    let provider = path
        .strip_prefix("/auth/")
        .map(|p| p.strip_suffix('/').unwrap_or(p))
        .filter(|p| !p.is_empty() && !p.contains('/'))?;
    // Checked here whatever the route says about other sites (`cors_allow_preflight`): a key
    // set by another site would send the person's prompts to that site's account.
    if cross_origin_write(req, &route_origin(st, ctx)) {
        return Some(refuse(ctx, Refusal::CrossOrigin));
    }
    match req.method {
        Method::PUT => {
            let json = req
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.trim_start().starts_with("application/json"));
            Some(if json {
                Step::ReadKeyBody(KeyRequest::OpencodeAuth(provider.to_string()))
            } else {
                Step::Respond(
                    KeyError::new(415, "send the key as JSON (content-type: application/json)")
                        .json(),
                )
            })
        }
        Method::DELETE => {
            ctx.outcome = Some(Outcome::Allowed("provider-key"));
            Some(Step::Respond(
                match change(st, live, req, Some(route), id, provider, None) {
                    Ok(cookie) => {
                        with_cookie(Page::json(200, &serde_json::Value::Bool(true)), cookie)
                    }
                    Err(e) => e.json(),
                },
            ))
        }
        Method::GET | Method::HEAD => None,
        // Any other write could carry a key to the backend: none reaches it.
        _ => Some(Step::Respond(
            KeyError::new(405, "use PUT to add a key or DELETE to remove it").json(),
        )),
    }
}

/// Carries out a key change whose body was read.
pub(crate) fn submit(
    st: &State,
    live: &Live,
    req: &RequestHeader,
    what: KeyRequest,
    body: &[u8],
    ctx: &mut Ctx,
) -> Page {
    let (Some(id), route) = (
        ctx.identity.clone(),
        ctx.route.and_then(|i| st.routes.get(i)),
    ) else {
        return KeyError::new(401, "sign in first").json();
    };
    match what {
        KeyRequest::Form => {
            let form: std::collections::HashMap<String, Zeroizing<String>> =
                form_urlencoded::parse(body)
                    .map(|(k, v)| (k.into_owned(), Zeroizing::new(v.into_owned())))
                    .collect();
            let scheme = route.map_or("https", |r| r.from.scheme.as_str());
            let origin_ok = form_origin_ok(req, scheme, &ctx.authority);
            let token_ok = form
                .get("csrf_token")
                .is_some_and(|t| st.auth.check_csrf(&id, t));
            if !origin_ok || !token_ok {
                tracing::info!(user = %id.email(), origin_ok, token_ok, "key form refused: not from Gatehouse's own page (another origin, or a missing or wrong CSRF token)");
                let refusal = Refusal::FormNotConfirmed { sign_out: false };
                ctx.outcome = Some(Outcome::from(&refusal));
                return crate::pages::refusal(&refusal);
            }
            let provider = form.get("provider").map(|p| p.as_str()).unwrap_or("");
            let remove = form.get("action").is_some_and(|a| a.as_str() == "remove");
            let key = form.get("key").map(|k| k.as_str().trim());
            let result = change(
                st,
                live,
                req,
                route,
                &id,
                provider,
                if remove {
                    None
                } else {
                    Some(key.unwrap_or(""))
                },
            );
            match result {
                Ok(cookie) => with_cookie(Page::redirect(303, "/.gatehouse/providers"), cookie),
                Err(e) => {
                    let person = person_id(&id);
                    let mut p = keys_page(st, live, &id, &person, Some(&e.message));
                    p.status = e.status;
                    p
                }
            }
        }
        KeyRequest::ApiPut(provider) => {
            let key = match serde_json::from_slice::<KeyBody>(body) {
                Ok(b) => b.key,
                Err(_) => {
                    return KeyError::new(400, "send JSON like {\"key\": \"sk-...\"}").json();
                }
            };
            match change(st, live, req, route, &id, &provider, Some(key.trim())) {
                Ok(cookie) => {
                    let view = live
                        .keys
                        .views(&person_id(&id))
                        .into_iter()
                        .find(|v| v.provider == provider);
                    with_cookie(
                        Page::json(
                            200,
                            &serde_json::json!({
                                "id": provider,
                                "last4": view.as_ref().map(|v| v.last4.clone()),
                                "added_at": view.as_ref().map(|v| added_text(v.added_ms)),
                                "mode": view.as_ref().map(|v| v.mode.as_str()),
                            }),
                        ),
                        cookie,
                    )
                }
                Err(e) => e.json(),
            }
        }
        KeyRequest::OpencodeAuth(provider) => {
            ctx.outcome = Some(Outcome::Allowed("provider-key"));
            let body = match serde_json::from_slice::<OpencodeAuth>(body) {
                Ok(b) if b.kind == "api" => b,
                Ok(_) => {
                    return KeyError::new(
                        400,
                        "only API keys can be added here (Gatehouse keeps them for your assistant); sign-in tokens are not accepted",
                    )
                    .json();
                }
                Err(_) => {
                    return KeyError::new(400, "expected {\"type\": \"api\", \"key\": \"...\"}")
                        .json();
                }
            };
            match change(st, live, req, route, &id, &provider, Some(body.key.trim())) {
                Ok(cookie) => with_cookie(Page::json(200, &serde_json::Value::Bool(true)), cookie),
                Err(e) => e.json(),
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct KeyBody {
    key: Zeroizing<String>,
}

#[derive(serde::Deserialize)]
struct OpencodeAuth {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    key: Zeroizing<String>,
}

/// Why a key change was refused.
pub(crate) struct KeyError {
    status: u16,
    message: String,
}

impl KeyError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        KeyError {
            status,
            message: message.into(),
        }
    }
    fn json(&self) -> Page {
        Page::json(self.status, &serde_json::json!({"error": self.message}))
    }
}

/// A key as entered must be one header value: printable ASCII, no spaces.
fn check_key(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::new(400, "the key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::new(
            400,
            format!("the key is longer than {MAX_KEY_LEN} characters"),
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::new(
            400,
            "the key has spaces or characters no provider key has; paste it again",
        ));
    }
    Ok(())
}

/// Sets (`Some(key)`) or removes (`None`) the person's key for `provider`, where the
/// provider's pool keeps it. Returns the key cookie to set (ephemeral mode), if any.
fn change(
    st: &State,
    live: &Live,
    req: &RequestHeader,
    route: Option<&RouteState>,
    id: &VerifiedIdentity,
    provider: &str,
    key: Option<&str>,
) -> Result<Option<String>, KeyError> {
    let Some((_, mode)) = pool_for(&live.backends, route, provider) else {
        return Err(KeyError::new(
            400,
            format!(
                "`{provider}` is not a provider Gatehouse relays here; ask your operator to add it to the pool's `relay.providers`"
            ),
        ));
    };
    if let Some(k) = key {
        check_key(k)?;
    }
    let person = person_id(id);
    let s = id.session();
    let at = now_ms();
    // The change time makes older copies of the key in other browsers' cookies stale. In
    // persistent mode the vault writes it with the key, in the same transaction.
    let vault = &st.auth.vault;
    let recorded = match (mode, key) {
        (KeyMode::Persistent, Some(k)) => vault
            .put_provider_key(person.as_str(), provider, k, at)
            .map(|_| ()),
        (KeyMode::Persistent, None) => vault
            .remove_provider_key(person.as_str(), provider, at)
            .map(|_| ()),
        (KeyMode::Ephemeral, _) => vault.record_key_change(person.as_str(), provider, at),
    };
    if let Err(e) = recorded {
        tracing::error!(user = %s.email, provider, error = %e, "a provider key change could not be recorded");
        return Err(KeyError::new(
            503,
            "the change could not be recorded; nothing changed, try again",
        ));
    }
    match key {
        Some(k) => live.keys.set(
            &person,
            &s.email,
            provider,
            HeldKey {
                key: Zeroizing::new(k.to_string()),
                added_ms: at,
                mode,
            },
        ),
        None => live.keys.remove(&person, provider),
    }
    tracing::info!(user = %s.email, provider, mode = mode.as_str(), change = if key.is_some() { "set" } else { "removed" }, "provider key changed");
    if mode != KeyMode::Ephemeral {
        return Ok(None);
    }
    let jar = request_cookies(req);
    let name = live.keys.cookie_name().to_string();
    let old = cookie_lookup(&jar)(&name);
    let value = live
        .keys
        .cookie_with(old, &person, &s.sid, provider, key.map(|k| (k, at)));
    let ttl = s.exp.saturating_sub(now()) as i64;
    Ok(Some(match value {
        Some(v) => st.key_cookie(&name, &v, ttl),
        None => st.key_cookie(&name, "", 0),
    }))
}

fn with_cookie(page: Page, cookie: Option<String>) -> Page {
    match cookie {
        Some(c) => page.with_header("set-cookie", c),
        None => page,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `scheme://authority` of the request's route, what a same-origin request's `Origin` is.
pub(crate) fn route_origin(st: &State, ctx: &Ctx) -> String {
    let scheme = ctx
        .route
        .and_then(|i| st.routes.get(i))
        .map_or("https", |r| r.from.scheme.as_str());
    format!("{scheme}://{}", ctx.authority)
}

fn api_list(st: &State, live: &Live, person: &PersonId) -> Page {
    let list: Vec<serde_json::Value> = rows(st, live, person)
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "mode": r.mode.as_str(),
                "connected": r.key.is_some(),
                "last4": r.key.as_ref().map(|k| k.last4.clone()),
                "added_at": r.key.as_ref().map(|k| added_text(k.added_ms)),
            })
        })
        .collect();
    Page::json(200, &serde_json::json!({ "providers": list }))
}

/// The keys page: each relayed provider, its key (last four characters) and a form to add,
/// replace or remove it.
fn keys_page(
    st: &State,
    live: &Live,
    id: &VerifiedIdentity,
    person: &PersonId,
    error: Option<&str>,
) -> Page {
    let csrf = st.auth.csrf_token(id);
    let rows = rows(st, live, person);
    let mut html = String::new();
    if let Some(e) = error {
        html.push_str(&format!("<p class=\"error\">{}</p>", text(e)));
    }
    if rows.is_empty() {
        html.push_str("<p>This Gatehouse relays no LLM provider, so there is no key to add.</p>");
    }
    let ephemeral = rows.iter().any(|r| r.mode == KeyMode::Ephemeral);
    html.push_str("<p>Your keys stay in Gatehouse: your assistant only ever sees a relay token that works nowhere else.</p>");
    if ephemeral {
        html.push_str("<p>Keys in <b>ephemeral</b> mode are kept in this browser (sealed) and in Gatehouse's memory while you work. Signing out forgets them; in another browser, enter the key again.</p>");
    }
    html.push_str("<dl>");
    for r in &rows {
        let state = match &r.key {
            Some(k) => format!(
                "key …{} added {} ({} mode)",
                text(&k.last4),
                text(&added_text(k.added_ms)),
                r.mode.as_str()
            ),
            None => format!("no key ({} mode)", r.mode.as_str()),
        };
        html.push_str(&format!(
            "<dt>{id}</dt><dd>{state}\
             <form method=\"post\" action=\"/.gatehouse/providers\"><input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\"><input type=\"hidden\" name=\"provider\" value=\"{pid}\"><input type=\"hidden\" name=\"action\" value=\"set\">\
             <input type=\"password\" name=\"key\" autocomplete=\"off\" placeholder=\"API key\" aria-label=\"API key for {pid}\"><button type=\"submit\">{verb}</button></form>{remove}</dd>",
            id = text(r.id),
            pid = attr(r.id),
            csrf = attr(&csrf),
            verb = if r.key.is_some() { "Replace" } else { "Add" },
            remove = if r.key.is_some() {
                format!(
                    "<form method=\"post\" action=\"/.gatehouse/providers\"><input type=\"hidden\" name=\"csrf_token\" value=\"{}\"><input type=\"hidden\" name=\"provider\" value=\"{}\"><input type=\"hidden\" name=\"action\" value=\"remove\"><button type=\"submit\">Remove</button></form>",
                    attr(&csrf),
                    attr(r.id)
                )
            } else {
                String::new()
            },
        ));
    }
    html.push_str("</dl><p><a href=\"/.gatehouse/\">Your session</a></p>");
    Page::html(200, "Your provider keys", &html)
}

/// Restores the keys of this browser's key cookie into memory if memory lost them (an idle
/// stop, a restart): once per cookie value, only for the session it was made in, and only
/// keys not changed since.
pub(crate) fn restore(st: &State, live: &Live, jar: &[(String, String)], id: &VerifiedIdentity) {
    let Some(value) = cookie_lookup(jar)(live.keys.cookie_name()) else {
        return;
    };
    let person = person_id(id);
    if live.keys.restored(&person, value) {
        return;
    }
    let s = id.session();
    let n = live
        .keys
        .restore(&person, &s.email, &s.sid, value, |provider, at| {
            keys::changed_at(&st.auth, &person, provider).is_some_and(|c| c > at)
        });
    if n > 0 {
        tracing::info!(user = %s.email, keys = n, "provider keys restored from this browser's key cookie");
    }
}

impl State {
    /// Set-Cookie for the key cookie: host-only, SameSite=Strict (only this site's own
    /// requests restore keys).
    pub(crate) fn key_cookie(&self, name: &str, value: &str, max_age_secs: i64) -> String {
        self.set_cookie(name, value, max_age_secs, SameSite::Strict, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_one_plain_header_value() {
        assert!(check_key("sk-proj-abc_123").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("sk abc").is_err());
        assert!(check_key("sk\r\nx-evil: 1").is_err());
        assert!(check_key("sk-ü").is_err());
        assert!(check_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn only_the_last_four_characters_are_shown() {
        assert_eq!(crate::keys::last4("sk-live-abcd"), "abcd");
    }
}
