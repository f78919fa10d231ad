//! Credentials other than the session cookie (issue 13): Gatehouse's personal access
//! tokens, and on routes that opt in, the IdP's own ID tokens.
//!
//! Gatehouse consumes an `Authorization` header only when it carries one of its own tokens
//! (`Bearer <token>`, or `Basic` with the token as password, as `opencode attach -p`
//! sends it), or an ID token on a route with `bearer_token_format: idp_identity_token`.
//! OpenCode's clients may also send `?auth_token=<base64(user:password)>`; that is read
//! the same way. Any other `Authorization` passes to a static upstream untouched (apps keep
//! their own auth). [`strip`] makes sure no Gatehouse token reaches an upstream, valid or
//! not, in the header or in the query.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pingora::http::RequestHeader;

use gatehouse_auth::tokens::is_gatehouse_token;

use crate::state::RouteState;

/// The query parameter OpenCode's clients send credentials in.
const QUERY_PARAM: &str = "auth_token";

/// What admitted a request, for the access log (`credential=…`) and the streams registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    /// The session cookie.
    Cookie,
    /// A personal access token: its id and name.
    Token { id: String, name: String },
    /// An ID token from the IdP.
    IdpJwt,
}

impl Credential {
    /// `cookie`, `token:<name>` or `idp-jwt`.
    pub(crate) fn label(&self) -> Cow<'_, str> {
        match self {
            Credential::Cookie => "cookie".into(),
            Credential::Token { name, .. } => format!("token:{name}").into(),
            Credential::IdpJwt => "idp-jwt".into(),
        }
    }
}

/// A credential the request presents besides cookies.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Presented {
    /// None that Gatehouse reads: the cookie decides.
    Nothing,
    /// One of Gatehouse's own tokens (from the header or the query).
    Token(String),
    /// A bearer that is not Gatehouse's, on a route that accepts IdP ID tokens.
    IdpJwt(String),
}

/// The password of a `Basic` value (`user:password` in base64), if it decodes.
fn basic_password(b64: &str) -> Option<String> {
    let raw = STANDARD.decode(b64.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.split_once(':').map(|(_, p)| p.to_string())
}

/// The Gatehouse token in an `Authorization` value, if it holds one.
fn token_in_authorization(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") && is_gatehouse_token(rest) {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        return basic_password(rest).filter(|p| is_gatehouse_token(p));
    }
    None
}

/// The Gatehouse token in an `auth_token` value: the token itself, or OpenCode's
/// `base64(user:token)`.
fn token_in_query_value(value: &str) -> Option<String> {
    if is_gatehouse_token(value) {
        return Some(value.to_string());
    }
    basic_password(value).filter(|p| is_gatehouse_token(p))
}

/// Whether a query may hold `auth_token` once decoded: most queries plainly do not, and are
/// not parsed (one with an escape is, whatever its letters).
fn may_hold_param(query: &str) -> bool {
    query.contains(QUERY_PARAM) || query.contains('%')
}

/// The `auth_token` values of the request's query, decoded.
fn query_tokens(req: &RequestHeader) -> impl Iterator<Item = String> + '_ {
    req.uri
        .query()
        .filter(|q| may_hold_param(q))
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .filter(|(k, _)| k == QUERY_PARAM)
        .map(|(_, v)| v.into_owned())
}

/// Which credential the request presents for `route`. The header wins over the query.
pub(crate) fn presented(req: &RequestHeader, route: &RouteState) -> Presented {
    let auth = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(token) = auth.and_then(token_in_authorization) {
        return Presented::Token(token);
    }
    if let Some(token) = query_tokens(req).find_map(|v| token_in_query_value(&v)) {
        return Presented::Token(token);
    }
    if route.idp_identity_tokens
        && let Some((scheme, rest)) = auth.and_then(|a| a.trim().split_once(' '))
        && scheme.eq_ignore_ascii_case("bearer")
        && !rest.trim().is_empty()
    {
        return Presented::IdpJwt(rest.trim().to_string());
    }
    Presented::Nothing
}

/// Removes from the upstream request every Gatehouse token (in `Authorization` or in
/// `auth_token`, valid or not), the IdP token a route consumed, and on a backend route
/// every `auth_token` (the backend's own password is set by Gatehouse).
pub(crate) fn strip(
    req: &mut RequestHeader,
    consumed_bearer: bool,
    backend: bool,
) -> pingora::Result<()> {
    let ours = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| token_in_authorization(v).is_some());
    if ours || consumed_bearer {
        req.remove_header(&http::header::AUTHORIZATION);
    }
    let Some(query) = req.uri.query().filter(|q| may_hold_param(q)) else {
        return Ok(());
    };
    let drop =
        |k: &str, v: &str| k == QUERY_PARAM && (backend || token_in_query_value(v).is_some());
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !pairs.iter().any(|(k, v)| drop(k, v)) {
        return Ok(());
    }
    let mut kept = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(k, v)| !drop(k, v)) {
        kept.append_pair(k, v);
    }
    let kept = kept.finish();
    let path = req.uri.path();
    let pq = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{kept}")
    };
    let uri = http::Uri::builder()
        .path_and_query(pq)
        .build()
        .map_err(|e| pingora::Error::because(pingora::ErrorType::InvalidHTTPHeader, "query", e))?;
    req.set_uri(uri);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str =
        "gatehouse_pat_0123456789abcdef0123_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn req(uri: &str, auth: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        r.insert_header("host", "a.example.com").unwrap();
        if let Some(a) = auth {
            r.insert_header("authorization", a).unwrap();
        }
        r
    }

    #[test]
    fn tokens_are_found_as_opencode_sends_them() {
        let basic = STANDARD.encode(format!("opencode:{TOKEN}"));
        assert_eq!(
            token_in_authorization(&format!("Bearer {TOKEN}")).as_deref(),
            Some(TOKEN)
        );
        assert_eq!(
            token_in_authorization(&format!("Basic {basic}")).as_deref(),
            Some(TOKEN)
        );
        assert_eq!(token_in_query_value(&basic).as_deref(), Some(TOKEN));
        assert_eq!(token_in_query_value(TOKEN).as_deref(), Some(TOKEN));
        // Another app's credentials are not Gatehouse's.
        assert_eq!(token_in_authorization("Bearer xyz"), None);
        let other = STANDARD.encode("opencode:hunter2");
        assert_eq!(token_in_authorization(&format!("Basic {other}")), None);
    }

    #[test]
    fn no_gatehouse_token_survives_stripping_and_other_values_do() {
        let enc: String = form_urlencoded::byte_serialize(
            STANDARD.encode(format!("opencode:{TOKEN}")).as_bytes(),
        )
        .collect();
        let mut r = req(
            &format!("/x?a=1&auth_token={enc}&b=2"),
            Some(&format!("Bearer {TOKEN}")),
        );
        strip(&mut r, false, false).unwrap();
        assert!(r.headers.get("authorization").is_none());
        assert_eq!(r.uri.to_string(), "/x?a=1&b=2");

        let mut r = req("/x?auth_token=appvalue", Some("Bearer xyz"));
        strip(&mut r, false, false).unwrap();
        assert_eq!(r.headers.get("authorization").unwrap(), "Bearer xyz");
        assert_eq!(r.uri.to_string(), "/x?auth_token=appvalue");

        // On a backend route every auth_token goes (the backend's password is Gatehouse's).
        strip(&mut r, true, true).unwrap();
        assert!(r.headers.get("authorization").is_none());
        assert_eq!(r.uri.to_string(), "/x");

        // An escaped name is the same parameter.
        let mut r = req(&format!("/x?auth%5Ftoken={enc}&b=2"), None);
        strip(&mut r, false, false).unwrap();
        assert_eq!(r.uri.to_string(), "/x?b=2");
    }
}
