//! Pure readers of a request header: Gatehouse's own paths, cookies, the query, and what
//! kind of client and request this is. No state, no I/O.

use std::collections::HashMap;

use http::Method;
use pingora::http::RequestHeader;

pub(crate) const GATEHOUSE_PREFIX: &str = "/.gatehouse/";

pub(crate) const POMERIUM_PREFIX: &str = "/.pomerium/";

/// `/.pomerium/x` is an alias of `/.gatehouse/x`.
pub(crate) fn gatehouse_path(path: &str) -> Option<&str> {
    path.strip_prefix(GATEHOUSE_PREFIX)
        .or_else(|| path.strip_prefix(POMERIUM_PREFIX))
        .or_else(|| (path == "/.gatehouse" || path == "/.pomerium").then_some(""))
}

/// All cookies of the request (every `Cookie` header; HTTP/2 may send several).
pub(crate) fn request_cookies(req: &RequestHeader) -> Vec<(String, String)> {
    cookie_parts(req)
        .filter_map(|part| {
            // Bytes, not `to_str()`: one non-ASCII cookie from another app must not hide ours.
            let part = String::from_utf8_lossy(part);
            let (k, v) = part.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect()
}

/// Every `name=value` part of every `Cookie` header, trimmed, as sent.
pub(crate) fn cookie_parts(req: &RequestHeader) -> impl Iterator<Item = &[u8]> {
    req.headers
        .get_all(http::header::COOKIE)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|part| !part.is_empty())
}

/// The name of a cookie in a `Cookie` part or a `Set-Cookie` value (before the first `=`).
pub(crate) fn cookie_name(part: &[u8]) -> &[u8] {
    part.split(|b| *b == b'=')
        .next()
        .unwrap_or_default()
        .trim_ascii()
}

/// The value of the cookie `name`, for Gatehouse's own cookies: `None` when it is missing
/// and also when the request carries it more than once. A second value is how cookie
/// tossing looks (a sibling subdomain or an upstream's script set one with `Domain=` the
/// parent or a longer `Path`, which the browser sends first); no value is trusted then.
pub(crate) fn cookie_lookup<'a>(
    jar: &'a [(String, String)],
) -> impl Fn(&str) -> Option<&'a str> + 'a {
    move |name| {
        let mut values = jar
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str());
        let first = values.next()?;
        values.next().is_none().then_some(first)
    }
}

/// The first of Gatehouse's own cookies (`own` says which names are) that the request
/// carries more than once, if any.
pub(crate) fn duplicated_cookie(
    jar: &[(String, String)],
    own: impl Fn(&[u8]) -> bool,
) -> Option<&str> {
    // A set, not a scan per cookie: a header may hold thousands of names.
    let mut seen = std::collections::HashSet::new();
    jar.iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| own(k.as_bytes()))
        .find(|k| !seen.insert(*k))
}

pub(crate) fn query_map(query: Option<&str>) -> HashMap<String, String> {
    query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Whether the client is a script rather than a browser navigation.
pub(crate) fn is_api_request(req: &RequestHeader) -> bool {
    if req.headers.contains_key(http::header::AUTHORIZATION) {
        return true;
    }
    let accept = req
        .headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    accept.contains("application/json") && !accept.contains("text/html")
}

/// Whether a request changes state on behalf of a page from another site. OpenCode does
/// not check (a cross-site `text/plain` POST executes, docs/opencode.md §6), and the
/// session cookie would ride along, so Gatehouse refuses: any method but GET, HEAD and
/// OPTIONS whose `Origin` is not the route's own (`null` included), or that the browser
/// marks `Sec-Fetch-Site: cross-site`. Scripts that send no `Origin` are not browsers and
/// carry no ambient cookie risk. A WebSocket upgrade is a GET but opens a channel that
/// writes (OpenCode's terminal), so it counts as a write: another site's page must not open
/// one with the person's cookies (cross-site WebSocket hijacking).
pub(crate) fn cross_origin_write(req: &RequestHeader, route_origin: &str) -> bool {
    let upgrade = req.headers.contains_key(http::header::UPGRADE);
    if !upgrade && matches!(req.method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(origin) = header("origin")
        && !origin.eq_ignore_ascii_case(route_origin)
    {
        return true;
    }
    header("sec-fetch-site") == Some("cross-site")
}

/// A CORS preflight: `OPTIONS` with `Access-Control-Request-Method` (browsers send it
/// without cookies).
pub(crate) fn is_cors_preflight(req: &RequestHeader) -> bool {
    req.method == Method::OPTIONS && req.headers.contains_key("access-control-request-method")
}

/// Whether a browser is navigating to a page (rather than a script calling the API).
pub(crate) fn is_navigation(req: &RequestHeader) -> bool {
    if req.method != Method::GET || is_api_request(req) {
        return false;
    }
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    header("sec-fetch-mode") == Some("navigate")
        || header("accept").is_some_and(|a| a.contains("text/html"))
}

/// The same-origin check for Gatehouse's own forms (sign-out, restart). The CSRF token is
/// the protection; this is defence in depth. `null` is what privacy settings make browsers
/// send, so it is not a mismatch.
pub(crate) fn form_origin_ok(req: &RequestHeader, scheme: &str, authority: &str) -> bool {
    match req
        .headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        Some("null") | None => true,
        Some(o) => o == format!("{scheme}://{authority}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pomerium_paths_are_aliases() {
        assert_eq!(gatehouse_path("/.pomerium/sign_out"), Some("sign_out"));
        assert_eq!(gatehouse_path("/.gatehouse/"), Some(""));
        assert_eq!(gatehouse_path("/.gatehouse"), Some(""));
        assert_eq!(gatehouse_path("/.gatehousex"), None);
        assert_eq!(gatehouse_path("/app"), None);
    }

    #[test]
    fn api_requests_are_recognised() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(!is_api_request(&r));
        r.insert_header("accept", "application/json").unwrap();
        assert!(is_api_request(&r));
        r.insert_header("accept", "text/html,application/json;q=0.9")
            .unwrap();
        assert!(!is_api_request(&r));
        r.insert_header("authorization", "Bearer x").unwrap();
        assert!(is_api_request(&r));
    }

    #[test]
    fn cross_origin_writes_to_a_backend_are_recognised() {
        let own = "https://assistant.example.com";
        let req = |method: &str, headers: &[(&'static str, &str)]| {
            let mut r = RequestHeader::build(method, b"/session", None).unwrap();
            for (k, v) in headers {
                r.insert_header(*k, *v).unwrap();
            }
            r
        };
        // Reads are never refused, whatever their origin.
        assert!(!cross_origin_write(
            &req("GET", &[("origin", "https://evil.test")]),
            own
        ));
        assert!(!cross_origin_write(
            &req("OPTIONS", &[("origin", "https://evil.test")]),
            own
        ));
        // Writes from the route's own origin, or from a script without Origin, pass.
        assert!(!cross_origin_write(&req("POST", &[("origin", own)]), own));
        assert!(!cross_origin_write(&req("POST", &[]), own));
        // Another origin, `null`, another port or scheme, or a cross-site fetch: refused.
        for o in [
            "https://evil.test",
            "null",
            "https://assistant.example.com:8443",
            "http://assistant.example.com",
        ] {
            assert!(
                cross_origin_write(&req("POST", &[("origin", o)]), own),
                "{o}"
            );
        }
        assert!(cross_origin_write(
            &req("DELETE", &[("origin", "https://evil.test")]),
            own
        ));
        assert!(cross_origin_write(
            &req("PUT", &[("sec-fetch-site", "cross-site")]),
            own
        ));
        // A WebSocket opened by another site's page is refused; by the route's own page, not.
        let ws = |origin: &str| {
            req(
                "GET",
                &[
                    ("upgrade", "websocket"),
                    ("connection", "Upgrade"),
                    ("origin", origin),
                ],
            )
        };
        assert!(cross_origin_write(&ws("https://evil.test"), own));
        assert!(!cross_origin_write(&ws(own), own));
        assert!(!cross_origin_write(
            &req("GET", &[("origin", "https://evil.test")]),
            own
        ));
    }

    #[test]
    fn navigations_are_told_from_api_calls() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("sec-fetch-mode", "navigate").unwrap();
        assert!(is_navigation(&r));
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("accept", "text/html,*/*").unwrap();
        assert!(is_navigation(&r));
        let mut r = RequestHeader::build("GET", b"/session", None).unwrap();
        r.insert_header("accept", "application/json").unwrap();
        assert!(!is_navigation(&r));
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        r.insert_header("sec-fetch-mode", "navigate").unwrap();
        assert!(!is_navigation(&r));
    }

    #[test]
    fn cookies_from_several_headers_are_all_read() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.append_header("cookie", "a=1; b=2").unwrap();
        r.append_header("cookie", "c=\"3\"").unwrap();
        let jar = request_cookies(&r);
        assert_eq!(
            jar,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("c".into(), "3".into())
            ]
        );
    }

    #[test]
    fn an_own_cookie_sent_twice_has_no_value() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        // A tossed `_pomerium` (Domain=parent, Path=/session) comes first, then ours.
        r.append_header("cookie", "_pomerium=tossed; other=1; _pomerium=ours")
            .unwrap();
        let jar = request_cookies(&r);
        assert_eq!(cookie_lookup(&jar)("_pomerium"), None);
        assert_eq!(cookie_lookup(&jar)("other"), Some("1"));
        let own = |n: &[u8]| n.starts_with(b"_pomerium");
        assert_eq!(duplicated_cookie(&jar, own), Some("_pomerium"));
        let mut once = RequestHeader::build("GET", b"/", None).unwrap();
        once.append_header("cookie", "_pomerium=a; _pomerium_login=b; x=1; x=2")
            .unwrap();
        assert_eq!(
            duplicated_cookie(&request_cookies(&once), own),
            None,
            "another app's duplicates are its own business"
        );
    }
}
