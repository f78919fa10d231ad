//! Signing in and out: the session cookies (sealed, chunked), the login-state cookie and
//! the IdP round trip, the route host's callback, and the authenticate host of the
//! two-host flow with its one-time handoff.

use std::collections::HashMap;

use http::Method;
use pingora::http::RequestHeader;
use pingora::prelude::*;

use gatehouse_auth::{CallbackError, VerifiedIdentity, now};
use gatehouse_config::SameSite;

use crate::pages::{self, Page, request_id};
use crate::refusal::Refusal;
use crate::request::{cookie_lookup, is_api_request, query_map};
use crate::state::State;

impl State {
    pub(crate) fn set_cookie(
        &self,
        name: &str,
        value: &str,
        max_age_secs: i64,
        same_site: SameSite,
        domain: bool,
    ) -> String {
        let mut c = cookie::Cookie::build((name, value))
            .path("/")
            .secure(true)
            .http_only(true)
            .max_age(cookie::time::Duration::seconds(max_age_secs.max(0)))
            .same_site(match same_site {
                SameSite::Lax => cookie::SameSite::Lax,
                SameSite::Strict => cookie::SameSite::Strict,
                SameSite::None => cookie::SameSite::None,
            });
        if domain && let Some(d) = &self.cookie.domain {
            c = c.domain(d.clone());
        }
        c.build().to_string()
    }

    /// Set-Cookie headers that store `session`, clearing leftover chunks of a larger one.
    fn session_cookies(
        &self,
        session: &gatehouse_auth::Session,
        jar: &[(String, String)],
        now: u64,
    ) -> Vec<String> {
        let pairs = self.auth.session.encode(session);
        let ttl = session.exp.saturating_sub(now) as i64;
        let mut out: Vec<String> = pairs
            .iter()
            .map(|(k, v)| self.set_cookie(k, v, ttl, self.cookie.same_site, true))
            .collect();
        let stale = self
            .auth
            .session
            .stale_chunks(pairs.len(), |n| jar.iter().any(|(k, _)| k == n));
        for chunk in stale {
            out.push(self.set_cookie(&chunk, "", 0, self.cookie.same_site, true));
        }
        out
    }

    /// Set-Cookie headers that delete the session (every chunk, also a host-only copy left
    /// from before `cookie_domain` was set) and the login cookie.
    pub(crate) fn clear_session_cookies(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for chunk in self.auth.session.chunk_names() {
            out.push(self.set_cookie(&chunk, "", 0, self.cookie.same_site, true));
            if self.cookie.domain.is_some() {
                out.push(self.set_cookie(&chunk, "", 0, self.cookie.same_site, false));
            }
        }
        out.push(self.set_cookie(self.auth.login_cookie_name(), "", 0, SameSite::Lax, false));
        out.push(self.set_cookie(self.auth.handoff_cookie_name(), "", 0, SameSite::Lax, false));
        // The provider keys this browser holds (issue 12) go with the session.
        let keys = crate::keys::cookie_name(self.auth.session.name());
        out.push(self.key_cookie(&keys, "", 0));
        out
    }

    /// `page` with every Gatehouse cookie this host can delete deleted.
    pub(crate) fn with_cleared_cookies(&self, page: Page) -> Page {
        self.clear_session_cookies()
            .into_iter()
            .fold(page, |p, c| p.with_header("set-cookie", c))
    }

    /// `return_url` is acceptable only if it is a URL of a configured route.
    fn checked_return_url(&self, raw: &str) -> Option<url::Url> {
        let u = url::Url::parse(raw).ok()?;
        if !matches!(u.scheme(), "https" | "http")
            || !u.username().is_empty()
            || u.password().is_some()
        {
            return None;
        }
        let host = u.host_str()?.to_ascii_lowercase();
        let port = u.port_or_known_default()?;
        let idx = self.table.find(&host, port, u.path())?;
        (self.routes[idx].from.scheme == u.scheme()).then_some(u)
    }

    /// The answer on a route host once a session is made: set its cookies, clear the
    /// one-time cookie that carried the sign-in (`spent`), and go back to `return_url` if it
    /// is a route URL on this host (else `/`).
    fn signed_in(
        &self,
        session: &gatehouse_auth::Session,
        return_url: &str,
        host: &str,
        jar: &[(String, String)],
        now: u64,
        spent: &str,
    ) -> Page {
        let target = self
            .checked_return_url(return_url)
            .filter(|u| u.host_str().is_some_and(|h| h.eq_ignore_ascii_case(host)))
            .map(|u| u.to_string())
            .unwrap_or_else(|| "/".to_string());
        let mut page = Page::redirect(302, &target);
        for c in self.session_cookies(session, jar, now) {
            page = page.with_header("set-cookie", c);
        }
        page.with_header(
            "set-cookie",
            self.set_cookie(spent, "", 0, SameSite::Lax, false),
        )
    }

    /// A new sign-in looks up the person's directory groups now (at most the directory
    /// timeout), so the first request after it sees current ones.
    pub(crate) async fn groups_at_sign_in(&self, session: &gatehouse_auth::Session) {
        if let Some(directory) = &self.directory {
            directory.refresh_now(&session.sub).await;
        }
    }

    /// The identity from the session cookie, if it verifies, has not expired and was not
    /// signed out.
    pub(crate) fn identity(&self, jar: &[(String, String)]) -> Option<VerifiedIdentity> {
        match self.auth.verify_session(cookie_lookup(jar), now()) {
            Ok(id) => Some(id),
            Err(gatehouse_auth::SessionRejected::Missing) => None,
            Err(e) => {
                tracing::debug!(reason = %e, "session cookie not accepted; treating as signed out");
                None
            }
        }
    }

    /// Sends the person to sign in (or answers 401 to a script).
    pub(crate) async fn start_sign_in(
        &self,
        req: &RequestHeader,
        scheme: &str,
        authority: &str,
    ) -> Page {
        let path_and_query = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut return_url = format!("{scheme}://{authority}{path_and_query}");
        if return_url.len() > 2048 {
            return_url = format!("{scheme}://{authority}/");
        }
        if is_api_request(req) || !matches!(req.method, Method::GET | Method::HEAD) {
            return Page::json(
                401,
                &serde_json::json!({"error": "unauthenticated", "message": "sign in first", "sign_in_url": return_url}),
            )
            .with_header("www-authenticate", "Bearer realm=\"gatehouse\"".into());
        }
        // "Sign out and switch account" left a marker: ask the IdP to let the person choose.
        let switch_name = switch_cookie_name(self.auth.session.name());
        let switching =
            crate::request::cookie_lookup(&crate::request::request_cookies(req))(&switch_name)
                .is_some();
        let cleared = self.set_cookie(&switch_name, "", 0, SameSite::Lax, false);
        if let Some(a) = &self.auth_host {
            // Bind the coming handoff to this browser: only a browser holding this cookie
            // can open it (otherwise a handoff minted by one person could sign in another).
            let nonce = gatehouse_auth::random_token(16);
            let binding = gatehouse_auth::handoff_binding(&nonce);
            let enc: String = form_urlencoded::byte_serialize(return_url.as_bytes()).collect();
            return Page::redirect(
                302,
                &format!(
                    "{}/.gatehouse/sign_in?return_url={enc}&binding={binding}{}",
                    a.origin,
                    if switching { "&switch=1" } else { "" }
                ),
            )
            .with_header("set-cookie", cleared)
            .with_header(
                "set-cookie",
                self.set_cookie(
                    self.auth.handoff_cookie_name(),
                    &nonce,
                    gatehouse_auth::LOGIN_TTL_SECS as i64,
                    SameSite::Lax,
                    false,
                ),
            );
        }
        let redirect_uri = format!("{scheme}://{authority}/.gatehouse/callback");
        let page = self
            .begin_login(&redirect_uri, &return_url, None, switching)
            .await;
        if switching {
            page.with_header("set-cookie", cleared)
        } else {
            page
        }
    }

    async fn begin_login(
        &self,
        redirect_uri: &str,
        return_url: &str,
        binding: Option<&str>,
        switch_account: bool,
    ) -> Page {
        match self
            .auth
            .begin_login(redirect_uri, return_url, binding, switch_account, now())
            .await
        {
            Ok((idp_url, login_cookie)) => Page::redirect(302, &idp_url).with_header(
                "set-cookie",
                self.set_cookie(
                    self.auth.login_cookie_name(),
                    &login_cookie,
                    gatehouse_auth::LOGIN_TTL_SECS as i64,
                    SameSite::Lax,
                    false,
                ),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start sign-in");
                pages::refusal(&Refusal::IdpUnreachable {
                    request_id: request_id(),
                })
            }
        }
    }

    /// The IdP came back with `code` and `state`: check everything and make a session.
    async fn finish_login(
        &self,
        jar: &[(String, String)],
        query: &HashMap<String, String>,
        retry: &str,
        result: &mut SignInResult,
    ) -> Result<gatehouse_auth::LoginDone, Page> {
        let login = cookie_lookup(jar)(self.auth.login_cookie_name());
        match self.auth.finish_login(login, query, now()).await {
            Ok(ok) => {
                *result = Some(Ok(()));
                Ok(ok)
            }
            Err(e) => {
                tracing::info!(reason = %e, "sign-in refused");
                *result = Some(Err(e.code()));
                let shown = match &e {
                    CallbackError::Oidc(
                        gatehouse_auth::OidcError::IdTokenRefused(_)
                        | gatehouse_auth::OidcError::AzpMismatch { .. },
                    ) => {
                        "the identity provider's answer did not pass Gatehouse's checks".to_string()
                    }
                    other => other.to_string(),
                };
                let refusal = Refusal::SignInFailed {
                    shown,
                    retry: retry.to_string(),
                };
                Err(pages::refusal(&refusal).with_header(
                    "set-cookie",
                    self.set_cookie(self.auth.login_cookie_name(), "", 0, SameSite::Lax, false),
                ))
            }
        }
    }
}

/// `/.gatehouse/callback` on a route host: either a handoff from the authenticate host,
/// or (without `authenticate_service_url`) the IdP's redirect with `code` and `state`.
pub(crate) async fn route_callback(
    st: &State,
    req: &RequestHeader,
    jar: &[(String, String)],
    host: &str,
    result: &mut SignInResult,
) -> Page {
    let query = query_map(req.uri.query());
    let t = now();
    if let Some(token) = query.get("handoff") {
        let binding = cookie_lookup(jar)(st.auth.handoff_cookie_name());
        return match st.auth.open_handoff(token, host, binding, t) {
            Ok((id, return_url)) => {
                tracing::info!(user = %id.email(), "signed in (handoff)");
                st.signed_in(
                    id.session(),
                    &return_url,
                    host,
                    jar,
                    t,
                    st.auth.handoff_cookie_name(),
                )
            }
            Err(e) => {
                tracing::info!(reason = %e, "handoff refused");
                *result = Some(Err("handoff-refused"));
                pages::refusal(&Refusal::SignInFailed {
                    shown: e.to_string(),
                    retry: "/".into(),
                })
            }
        };
    }
    if st.auth_host.is_some() {
        return pages::refusal(&Refusal::SignInElsewhere);
    }
    match st.finish_login(jar, &query, "/", result).await {
        Ok(done) => {
            tracing::info!(user = %done.session.email, "signed in");
            st.groups_at_sign_in(&done.session).await;
            st.signed_in(
                &done.session,
                &done.return_url,
                host,
                jar,
                t,
                st.auth.login_cookie_name(),
            )
        }
        Err(page) => page,
    }
}

/// Requests to the authenticate host: sign-in start, the IdP callback, sign-out.
pub(crate) async fn authenticate_host(
    st: &State,
    req: &RequestHeader,
    jar: &[(String, String)],
    path: &str,
    gh: Option<&str>,
    result: &mut SignInResult,
) -> Page {
    let Some(auth_host) = st.auth_host.clone() else {
        return pages::refusal(&Refusal::NoRoute {
            host: String::new(),
        });
    };
    let query = query_map(req.uri.query());
    let t = now();
    if path == "/oauth2/callback" {
        return match st
            .finish_login(jar, &query, &format!("{}/", auth_host.origin), result)
            .await
        {
            Ok(done) => {
                let s = done.session;
                let Some(target) = st.checked_return_url(&done.return_url) else {
                    return pages::refusal(&Refusal::ReturnUrlRefused);
                };
                let Some(binding) = done.binding else {
                    return pages::refusal(&Refusal::SignInFailed {
                        shown: "this sign-in was not started from a Gatehouse page".into(),
                        retry: "/".into(),
                    });
                };
                tracing::info!(user = %s.email, "signed in");
                st.groups_at_sign_in(&s).await;
                let mut page = handoff_redirect(st, &s, &target, &binding, t);
                for c in st.session_cookies(&s, jar, t) {
                    page = page.with_header("set-cookie", c);
                }
                page.with_header(
                    "set-cookie",
                    st.set_cookie(st.auth.login_cookie_name(), "", 0, SameSite::Lax, false),
                )
            }
            Err(page) => page,
        };
    }
    match gh {
        Some("sign_in") => {
            let raw = query.get("return_url").map(String::as_str).unwrap_or("");
            let Some(target) = st.checked_return_url(raw) else {
                tracing::info!("sign-in refused: return_url is not a configured route");
                return pages::refusal(&Refusal::ReturnUrlRefused);
            };
            // The route host's binding for the browser that asked (see start_sign_in).
            let Some(binding) = query
                .get("binding")
                .filter(|b| !b.is_empty() && b.len() <= 128)
            else {
                return pages::refusal(&Refusal::SignInLinkIncomplete);
            };
            if !st.auth.claim_binding(binding, t) {
                tracing::info!("sign-in refused: this sign-in link was already used");
                return pages::refusal(&Refusal::SignInLinkUsed);
            }
            // Already signed in at the authenticate host: hand the session over directly.
            if let Some(id) = st.identity(jar) {
                return handoff_redirect(st, id.session(), &target, binding, t);
            }
            let redirect_uri = format!("{}/oauth2/callback", auth_host.origin);
            let switching = query.get("switch").is_some_and(|v| v == "1");
            st.begin_login(&redirect_uri, target.as_str(), Some(binding), switching)
                .await
        }
        Some("sign_out") => {
            let token = query.get("token").map(String::as_str).unwrap_or("");
            let Some(req) = st.auth.open_sign_out(token, t) else {
                return pages::refusal(&Refusal::SignOutLinkInvalid);
            };
            let target = st
                .checked_return_url(&req.return_url)
                .map(|u| u.to_string())
                .unwrap_or_else(|| "/.gatehouse/signed_out".into());
            let mut page = Page::redirect(302, &target);
            // End this host's session only if it is the one being signed out, so a
            // sign-out link can't be used to sign someone else out.
            // (Read without the revocation check: that session was just signed out.)
            if st
                .auth
                .session
                .decode(cookie_lookup(jar), t)
                .is_ok_and(|id| id.session().sid == req.sid)
            {
                for c in st.clear_session_cookies() {
                    page = page.with_header("set-cookie", c);
                }
            }
            page
        }
        Some("signed_out") => pages::signed_out(),
        _ => pages::refusal(&Refusal::NoRoute {
            host: auth_host.host.clone(),
        }),
    }
}

/// Redirect from the authenticate host to the route host's callback, carrying a handoff.
fn handoff_redirect(
    st: &State,
    s: &gatehouse_auth::Session,
    target: &url::Url,
    binding: &str,
    t: u64,
) -> Page {
    let host = target.host_str().unwrap_or("").to_ascii_lowercase();
    let token = st.auth.seal_handoff(s, &host, target.as_str(), binding, t);
    let origin = target.origin().ascii_serialization();
    Page::redirect(
        302,
        &format!("{origin}/.gatehouse/callback?handoff={token}"),
    )
}

/// The cookie "Sign out and switch account" leaves for the next sign-in on this host
/// (`<cookie_name>_switch`, ten minutes).
pub(crate) fn switch_cookie_name(session_cookie: &str) -> String {
    format!("{session_cookie}_switch")
}

/// How an IdP callback ended, for the metrics: `None` when the request was not one.
pub(crate) type SignInResult = Option<Result<(), &'static str>>;
