//! Every page Gatehouse itself shows a person, and the small JSON answers for scripts.
//! One layout, escaped values, no scripts, `Cache-Control: no-store`.

use bytes::Bytes;
use gatehouse_backends::BackendError;
use gatehouse_policy::Reason;

use crate::refusal::Refusal;
use html_escape::{encode_double_quoted_attribute as attr, encode_text as text};

/// A response Gatehouse writes itself (never reaches an upstream).
#[derive(Debug)]
pub struct Page {
    /// The HTTP status code.
    pub status: u16,
    /// Response headers, names in lower case, written in this order.
    pub headers: Vec<(&'static str, String)>,
    /// The response body.
    pub body: Bytes,
}

impl Page {
    /// A page in Gatehouse's layout, with its security headers (CSP, no framing, no-store).
    /// `title` is escaped here; `body_html` is written as is, so its values must be escaped
    /// already.
    pub fn html(status: u16, title: &str, body_html: &str) -> Page {
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · Gatehouse</title><style>\
body{{font:16px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f5f6f8;color:#1c2430;margin:0}}\
main{{max-width:36rem;margin:8vh auto;background:#fff;border:1px solid #dde1e7;border-radius:12px;padding:2rem 2.25rem;box-shadow:0 1px 3px rgba(0,0,0,.05)}}\
h1{{font-size:1.4rem;margin:0 0 1rem}}p{{margin:.6rem 0}}code,.mono{{font-family:ui-monospace,Menlo,monospace;font-size:.92em}}\
dl{{display:grid;grid-template-columns:max-content 1fr;gap:.35rem 1rem}}dt{{color:#5b6472}}dd{{margin:0;word-break:break-all}}\
button,.button{{font:inherit;background:#1f5fd1;color:#fff;border:0;border-radius:8px;padding:.55rem 1.1rem;cursor:pointer;text-decoration:none;display:inline-block}}\
.reason{{background:#fff4e5;border-left:4px solid #f0a030;padding:.6rem .9rem;border-radius:4px}}\
footer{{margin-top:1.5rem;color:#7a8391;font-size:.85rem}}</style></head>\
<body><main><h1>{title}</h1>{body_html}<footer>Gatehouse</footer></main></body></html>\n",
            title = text(title),
        );
        Page {
            status,
            headers: vec![
                ("content-type", "text/html; charset=utf-8".into()),
                ("cache-control", "no-store".into()),
                ("x-content-type-options", "nosniff".into()),
                ("x-frame-options", "DENY".into()),
                // A backend's script on the same origin that opens a Gatehouse page (the keys
                // page) gets no handle on it: the page is put in a browsing context group of
                // its own (issue 12).
                ("cross-origin-opener-policy", "same-origin".into()),
                // Not `no-referrer`: with it, browsers send `Origin: null` on the page's own form POST.
                ("referrer-policy", "same-origin".into()),
                ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https:; frame-ancestors 'none'".into()),
            ],
            body: Bytes::from(html),
        }
    }

    /// A JSON answer (for scripts), not cached.
    pub fn json(status: u16, value: &serde_json::Value) -> Page {
        Page {
            status,
            headers: vec![
                ("content-type", "application/json".into()),
                ("cache-control", "no-store".into()),
                ("x-content-type-options", "nosniff".into()),
            ],
            body: Bytes::from(value.to_string()),
        }
    }

    /// A plain-text answer, not cached.
    pub fn text(status: u16, body: &'static str) -> Page {
        Page {
            status,
            headers: vec![
                ("content-type", "text/plain; charset=utf-8".into()),
                ("cache-control", "no-store".into()),
            ],
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    /// A redirect to `location` (`status` 302, 303, 308...), with an empty body.
    pub fn redirect(status: u16, location: &str) -> Page {
        Page {
            status,
            headers: vec![
                ("location", location.to_string()),
                ("cache-control", "no-store".into()),
            ],
            body: Bytes::new(),
        }
    }

    /// The page with one more header.
    pub fn with_header(mut self, name: &'static str, value: String) -> Page {
        self.headers.push((name, value));
        self
    }
}

fn sign_out_form(csrf: &str, label: &str) -> String {
    post_form("sign_out", csrf, label)
}

/// Sign-out whose next sign-in asks the IdP to let the person pick another account.
fn switch_account_form(csrf: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/.gatehouse/sign_out\"><input type=\"hidden\" name=\"csrf_token\" value=\"{}\"><input type=\"hidden\" name=\"switch\" value=\"1\"><button type=\"submit\">Sign out and switch account</button></form>",
        attr(csrf)
    )
}

/// A button that posts to `/.gatehouse/<action>` with the session's CSRF token.
fn post_form(action: &str, csrf: &str, label: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/.gatehouse/{}\"><input type=\"hidden\" name=\"csrf_token\" value=\"{}\"><button type=\"submit\">{}</button></form>",
        attr(action),
        attr(csrf),
        text(label)
    )
}

fn not_found(host: &str) -> Page {
    Page::html(
        404,
        "No such site here",
        &format!(
            "<p>Gatehouse has no route for <span class=\"mono\">{}</span>.</p><p>Check the address, or ask the operator to add a route for it.</p>",
            text(host)
        ),
    )
}

/// The 403 page. `temporary`: the refusal is not about the policy but about something
/// Gatehouse could not check (the group directory), so it says to try again, not to ask for
/// a policy change.
fn forbidden(email: &str, reason: &str, temporary: bool, csrf: &str) -> Page {
    let hint = if temporary {
        "This is not a decision about you: Gatehouse could not check your groups just now. Try again in a few minutes; if it keeps happening, tell the operator."
    } else {
        "If you should have access, ask the operator to change the policy. To use another account, sign out and sign in again."
    };
    Page::html(
        403,
        "You don't have access",
        &format!(
            "<p>You are signed in as <strong>{}</strong>.</p><p class=\"reason\">{}</p>\
<p>{hint}</p>{}",
            text(email),
            text(reason),
            switch_account_form(csrf)
        ),
    )
}

fn sign_in_failed(reason: &str, retry_url: &str) -> Page {
    Page::html(
        400,
        "Sign-in failed",
        &format!(
            "<p>Sign-in failed: {}.</p><p>This happens when a sign-in link is reused, takes too long, or comes from another browser. Nothing was changed.</p>\
<p><a class=\"button\" href=\"{}\">Start again</a></p>",
            text(reason),
            attr(retry_url)
        ),
    )
}

fn bad_request(message: &str) -> Page {
    Page::html(400, "Bad request", &format!("<p>{}</p>", text(message)))
}

/// The page after signing out, with a link to sign in again.
pub fn signed_out() -> Page {
    Page::html(
        200,
        "You are signed out",
        "<p>Your Gatehouse session has ended in this browser.</p><p><a class=\"button\" href=\"/\">Sign in again</a></p>",
    )
}

/// What the user page (`/.gatehouse/`) shows about the signed-in person.
pub struct UserView<'a> {
    /// The person's email address.
    pub email: &'a str,
    /// Their display name, when the identity provider gave one.
    pub name: Option<&'a str>,
    /// The identity provider's user id (`sub`).
    pub user: &'a str,
    /// Their groups (shown as "(none)" when empty).
    pub groups: &'a [String],
    /// When the session ends, already formatted (RFC 3339).
    pub expires: String,
    /// The CSRF token for the page's sign-out and restart forms.
    pub csrf: &'a str,
    /// The person's backend on each pool, when the config has pools.
    pub backends: Vec<BackendView>,
    /// Each relayed provider and whether the person's key is there (and in which mode).
    pub providers: Vec<(String, String)>,
    /// How many personal access tokens the person has.
    pub tokens: usize,
}

/// One line of the user page's "Your assistant" section.
pub struct BackendView {
    /// The pool's name (config `backends.<name>`).
    pub pool: String,
    /// "running since …, last activity …", "stopped", "starting", "failing: …".
    pub state: String,
    /// Where the person opens it: the first route to this pool (with this request's port
    /// when the route names none).
    pub url: Option<String>,
}

fn backends_section(v: &UserView<'_>) -> String {
    if v.backends.is_empty() {
        return String::new();
    }
    let mut out = String::from("<h2>Your assistant</h2><dl>");
    for b in &v.backends {
        out.push_str(&format!(
            "<dt>{}</dt><dd>{}{}<form method=\"post\" action=\"/.gatehouse/backend/restart\"><input type=\"hidden\" name=\"csrf_token\" value=\"{}\"><input type=\"hidden\" name=\"pool\" value=\"{}\"><button type=\"submit\">Restart</button></form></dd>",
            text(&b.pool),
            text(&b.state),
            b.url.as_deref().map_or(String::new(), |u| format!(
                "<p><a class=\"button\" href=\"{}\">Open your assistant</a></p>",
                attr(u)
            )),
            attr(v.csrf),
            attr(&b.pool),
        ));
    }
    out.push_str("</dl>");
    out
}

fn providers_section(v: &UserView<'_>) -> String {
    if v.providers.is_empty() {
        return String::new();
    }
    let mut out = String::from("<h2>Provider keys</h2><dl>");
    for (id, state) in &v.providers {
        out.push_str(&format!("<dt>{}</dt><dd>{}</dd>", text(id), text(state)));
    }
    out.push_str(
        "</dl><p><a class=\"button\" href=\"/.gatehouse/providers\">Manage your keys</a></p>",
    );
    out
}

fn tokens_section(v: &UserView<'_>) -> String {
    format!(
        "<h2>Access tokens</h2><p>For <code>opencode attach</code> and scripts: {} token{}.</p>\
         <p><a class=\"button\" href=\"/.gatehouse/tokens\">Manage your tokens</a></p>",
        v.tokens,
        if v.tokens == 1 { "" } else { "s" }
    )
}

/// Shown to a browser navigating to a per-person route while their backend starts: it
/// reloads itself every 2 s (a meta refresh, so no script is needed under the CSP).
fn backend_starting() -> Page {
    Page::html(
        503,
        "Starting your assistant",
        "<meta http-equiv=\"refresh\" content=\"2\"><p>Your own assistant is starting. This takes a few seconds; this page continues by itself.</p>",
    )
    .with_header("retry-after", "2".into())
}

/// A per-person backend cannot be had now: `status` 503 (pool full, failing) or 504 (start
/// took too long). `what` says which, in words for the person.
fn backend_unavailable(status: u16, what: &str, request_id: &str) -> Page {
    let title = match status {
        504 => "Your assistant is taking too long to start",
        _ => "Your assistant is not available",
    };
    Page::html(
        status,
        title,
        &format!(
            "<p>{}</p><p><a class=\"button\" href=\"/.gatehouse/\">Your session and assistant</a></p><p>Request id: <span class=\"mono\">{}</span></p>",
            text(what),
            text(request_id)
        ),
    )
}

/// The user page: the person's session, their backends with a restart button each, a
/// sign-out button, and one that signs them out of every browser.
pub fn user_page(v: &UserView<'_>) -> Page {
    let groups = if v.groups.is_empty() {
        "(none)".to_string()
    } else {
        v.groups.join(", ")
    };
    Page::html(
        200,
        "Your session",
        &format!(
            "<dl><dt>Email</dt><dd>{}</dd><dt>Name</dt><dd>{}</dd><dt>User</dt><dd class=\"mono\">{}</dd><dt>Groups</dt><dd>{}</dd><dt>Session ends</dt><dd>{}</dd></dl>{}{}{}",
            text(v.email),
            text(v.name.unwrap_or("")),
            text(v.user),
            text(&groups),
            text(&v.expires),
            backends_section(v) + &providers_section(v) + &tokens_section(v),
            sign_out_form(v.csrf, "Sign out"),
            post_form("sign_out_everywhere", v.csrf, "Sign out of every browser")
        ),
    )
}

fn upstream_error(status: u16, what: &str, request_id: &str) -> Page {
    let title = if status == 504 {
        "The site took too long to answer"
    } else {
        "The site is not answering"
    };
    Page::html(
        status,
        title,
        &format!(
            "<p>{}</p><p>Request id: <span class=\"mono\">{}</span></p>",
            text(what),
            text(request_id)
        ),
    )
}

fn internal_error(request_id: &str) -> Page {
    Page::html(
        500,
        "Something went wrong",
        &format!(
            "<p>Request id: <span class=\"mono\">{}</span></p>",
            text(request_id)
        ),
    )
}

impl Page {
    pub(crate) fn with_body(mut self, body: &str) -> Page {
        self.body = Bytes::copy_from_slice(body.as_bytes());
        self
    }
    pub(crate) fn with_cache(mut self, value: &str) -> Page {
        self.headers.retain(|(k, _)| *k != "cache-control");
        self.headers.push(("cache-control", value.to_string()));
        self
    }
}

/// A cross-site write to a person's backend, refused (cross-site request forgery,
/// cross-site WebSocket hijacking).
fn cross_origin() -> Page {
    Page::html(
        403,
        "Request refused",
        "<p>This request came from another site, so Gatehouse did not pass it to your assistant.</p>",
    )
}

/// A sign-out or Restart form that did not come from Gatehouse's own page.
fn form_not_confirmed(sign_out: bool) -> Page {
    let (title, what) = if sign_out {
        (
            "Sign-out not confirmed",
            "sign-out request did not come from Gatehouse's own sign-out button",
        )
    } else {
        (
            "Restart not confirmed",
            "restart request did not come from Gatehouse's own button",
        )
    };
    Page::html(
        403,
        title,
        &format!(
            "<p>This {what}, so nothing was changed.</p><p><a class=\"button\" href=\"/.gatehouse/\">Go to your session page</a></p>"
        ),
    )
}

/// `/.gatehouse/<name>` that does not exist.
fn no_such_page(name: &str) -> Page {
    Page::html(
        404,
        "Not found",
        &format!(
            "<p>Gatehouse has no page called {}.</p>",
            html_escape::encode_text(name)
        ),
    )
}

/// The page for a refusal: the one place that chooses what a person sees when Gatehouse
/// answers instead of the upstream. A 403 shows the policy's reason; a 502/503/504 says
/// which part failed; a 500 shows only the request id.
/// A refused credential: JSON for the script that sent it, and a `Bearer` challenge (never
/// `Basic`: a browser would prompt for a password and then send it on its own).
fn token_refused(status: u16, code: &str, message: &str) -> Page {
    Page::json(
        status,
        &serde_json::json!({"error": "invalid_token", "code": code, "message": message}),
    )
    .with_header(
        "www-authenticate",
        "Bearer realm=\"gatehouse\", error=\"invalid_token\"".into(),
    )
}

pub(crate) fn refusal(r: &Refusal) -> Page {
    match r {
        Refusal::BadHost => bad_request("The request has no valid Host header."),
        Refusal::HeadersTooLarge => Page::html(
            431,
            "Request headers too large",
            "<p>This request's headers (often its cookies) are larger than Gatehouse accepts. Clear this site's cookies and try again.</p>",
        ),
        Refusal::TooManyConnections => Page::html(
            429,
            "Too many open requests",
            "<p>Your address has more requests open at once than Gatehouse allows. Close some tabs or wait for running requests to finish, then try again.</p>",
        )
        .with_header("retry-after", "5".into()),
        Refusal::DuplicateCookie { name } => bad_request(&format!(
            "Your browser sent two cookies named {name}. Another site under the same domain \
             may have set one to take over your session here, so Gatehouse accepts neither. \
             Clear this site's cookies (and those of its parent domain), then sign in again."
        )),
        Refusal::UnusualPath => bad_request(
            "This address has an unusual form (an empty, \".\" or \"..\" segment, a backslash, or an escaped character that needs no escaping). Use the plain form of the address.",
        ),
        Refusal::NoRoute { host } => not_found(host),
        Refusal::PolicyDenied {
            email,
            reason,
            csrf,
        } => forbidden(
            email,
            &reason.to_string(),
            matches!(reason, Reason::GroupsUnavailable { .. }),
            csrf,
        ),
        Refusal::CrossOrigin => cross_origin(),
        Refusal::TokenRefused { message } | Refusal::IdpTokenRefused { message } => {
            token_refused(401, r.code(), message)
        }
        Refusal::TokenWrongRoute => token_refused(
            401,
            r.code(),
            "this access token is not valid for this route; make one for it on the user page",
        ),
        Refusal::TokenOnOwnPages => token_refused(
            403,
            r.code(),
            "access tokens do not open Gatehouse's own pages (except /.gatehouse/user); sign in with a browser to make or revoke tokens",
        ),
        Refusal::ServiceWorker => Page::html(
            403,
            "Request refused",
            "<p>Gatehouse does not let a site behind it install a service worker: it could read what you type on Gatehouse's own pages.</p>",
        ),
        Refusal::ProviderOAuth => Page::html(
            403,
            "Add an API key instead",
            "<p>Gatehouse keeps the provider keys of your assistant, so signing in to a provider from the assistant is turned off here: it would hand the provider's tokens to the assistant itself.</p><p><a class=\"button\" href=\"/.gatehouse/providers\">Add your API key</a></p>",
        ),
        Refusal::FormNotConfirmed { sign_out } => form_not_confirmed(*sign_out),
        Refusal::NoSuchPage { name } => no_such_page(name),
        Refusal::NoSuchPool => bad_request("There is no such assistant pool."),
        Refusal::SignInFailed { shown, retry } => sign_in_failed(shown, retry),
        Refusal::SignInElsewhere => sign_in_failed(
            "this site signs in through the authenticate service, not here",
            "/",
        ),
        Refusal::ReturnUrlRefused => bad_request(
            "The page to return to is not one Gatehouse protects, so Gatehouse will not send you there.",
        ),
        Refusal::SignInLinkIncomplete => bad_request(
            "This sign-in link is incomplete. Open the page you wanted again to sign in.",
        ),
        Refusal::SignInLinkUsed => bad_request(
            "This sign-in link was already used. Open the page you wanted again to sign in.",
        ),
        Refusal::SignOutLinkInvalid => {
            bad_request("This sign-out link is not valid (it may have expired).")
        }
        Refusal::SignOutNotRecorded { request_id } => upstream_error(
            500,
            "Gatehouse could not record your sign-out, so your session is still valid. Try again; if it keeps failing, tell your administrator.",
            request_id,
        ),
        Refusal::IdpUnreachable { request_id } => upstream_error(
            502,
            "Gatehouse cannot reach the identity provider to sign you in. Try again in a moment.",
            request_id,
        ),
        Refusal::BackendStarting => backend_starting(),
        Refusal::BackendUnavailable { error, request_id } => {
            backend_unavailable(503, &backend_trouble(error), request_id)
        }
        Refusal::BackendTimeout { request_id } => backend_unavailable(
            504,
            "Your assistant is still starting. Try again in a few seconds.",
            request_id,
        ),
        Refusal::UpstreamTimeout { request_id } => upstream_error(
            504,
            "The service behind this address did not answer in time.",
            request_id,
        ),
        Refusal::UpstreamDown { request_id } => upstream_error(
            502,
            "The service behind this address is not answering. It may be starting or stopped.",
            request_id,
        ),
        Refusal::RequestUnreadable => bad_request("The request could not be read."),
        Refusal::RequestRefused => bad_request("The request was refused."),
        Refusal::Internal { request_id } => internal_error(request_id),
    }
}

/// Why a person's backend cannot be had, in words for them.
fn backend_trouble(e: &BackendError) -> String {
    match e {
        BackendError::PoolFull { .. } | BackendError::NoFreePort { .. } => {
            "Every assistant this server can run is in use right now. Try again in a few minutes.".into()
        }
        BackendError::Crashing { .. } => "Your assistant failed to start several times in a row, so Gatehouse stopped trying. Restart it from your session page, or tell the operator.".into(),
        BackendError::HomeRefused(why) => format!(
            "Gatehouse will not start your assistant in its home directory: {why}. Tell the operator."
        ),
        BackendError::ShuttingDown => "Gatehouse is restarting. Try again in a moment.".into(),
        _ => "Your assistant could not be started. Try again, or tell the operator.".into(),
    }
}

/// A short random id for a request, shown on error pages and logged with the details.
pub(crate) fn request_id() -> String {
    gatehouse_auth::random_token(9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let p = forbidden(
            "<script>x</script>@e.com",
            "a \"reason\" <b>",
            false,
            "tok\"en",
        );
        let s = String::from_utf8(p.body.to_vec()).unwrap();
        assert!(!s.contains("<script>x"));
        assert!(s.contains("&lt;script&gt;"));
        assert!(s.contains("value=\"tok&quot;en\""));
        assert_eq!(p.status, 403);
    }
}
