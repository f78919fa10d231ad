//! What an upstream receives and what comes back from it: identity headers (and the
//! client's spoofed ones stripped), Gatehouse's own cookies filtered both ways, forwarding
//! headers, the peer to connect to, and which responses are compressed.

use std::net::SocketAddr;
use std::time::Duration;

use pingora::ErrorType;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use gatehouse_auth::session::is_own_cookie;
use gatehouse_auth::{Auth, VerifiedIdentity, now};

use crate::flow::{Ctx, ctx_label};
use crate::request::{cookie_name, cookie_parts};
use crate::state::Target;

/// The peer for a request whose route is chosen: the person's own backend on loopback, or
/// the route's static upstream.
pub(crate) fn peer(ctx: &Ctx) -> Result<Box<HttpPeer>> {
    if let Some(lease) = &ctx.lease {
        // The person's own backend, on loopback. No read timeout: an SSE stream or a
        // terminal WebSocket may stay quiet for long and must not be cut.
        let mut peer = HttpPeer::new(
            SocketAddr::from(([127, 0, 0, 1], lease.port())),
            false,
            String::new(),
        );
        peer.options.connection_timeout = Some(Duration::from_secs(5));
        return Ok(Box::new(peer));
    }
    let Some(route) = ctx.route.and_then(|i| ctx.state.routes.get(i)) else {
        return Error::e_explain(ErrorType::InternalError, "no route chosen");
    };
    let Target::Static(to) = &route.target else {
        return Error::e_explain(ErrorType::InternalError, "backend route without a lease");
    };
    let mut peer = HttpPeer::new(to.addr, to.tls, to.sni.clone());
    peer.options.connection_timeout = Some(Duration::from_secs(5));
    peer.options.total_connection_timeout = Some(Duration::from_secs(10));
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    Ok(Box::new(peer))
}

/// Prepares the request for the upstream: strips every identity and forwarding header the
/// client sent and Gatehouse's own cookies, sets the forwarding headers, the backend's
/// password, and the identity headers when the route passes them.
pub(crate) fn prepare_request(
    req: &mut RequestHeader,
    ctx: &Ctx,
    client_ip: Option<String>,
) -> Result<()> {
    let st = &*ctx.state;
    let Some(route) = ctx.route.and_then(|i| st.routes.get(i)) else {
        return Error::e_explain(ErrorType::InternalError, "no route chosen");
    };
    // 1. Strip every identity header the client sent, in any letter case
    //    (header names are stored lower-case).
    let spoofed: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| is_identity_header(k.as_str()) || is_client_forwarding_header(k.as_str()))
        .cloned()
        .collect();
    for name in spoofed {
        req.remove_header(&name);
    }
    // 2. Gatehouse's own cookies never reach an upstream.
    if req.headers.contains_key(http::header::COOKIE) {
        let kept = cookies_without_own(req, st.auth.session.name());
        req.remove_header(&http::header::COOKIE);
        if let Some(kept) = kept {
            let value = http::HeaderValue::from_bytes(&kept)
                .or_else(|_| Error::e_explain(ErrorType::InvalidHTTPHeader, "cookie header"))?;
            req.insert_header(http::header::COOKIE, value)?;
        }
    }
    // 3. Forwarding headers, set by us (never trusted from the client).
    if let Some(ip) = client_ip {
        req.insert_header("x-forwarded-for", ip)?;
    }
    req.insert_header("x-forwarded-proto", route.from.scheme.as_str())?;
    // Gatehouse's id for this request (the access log's `request_id`), never the client's.
    req.insert_header("x-request-id", ctx.request_id.as_str())?;
    req.insert_header("x-forwarded-host", ctx.authority.as_str())?;
    if let Target::Static(to) = &route.target
        && !route.preserve_host_header
    {
        req.insert_header(http::header::HOST, to.host.as_str())?;
    }
    // 4. No Gatehouse token reaches an upstream, nor an IdP token the route consumed
    //    (issue 13); another app's own Authorization passes untouched.
    crate::credentials::strip(
        req,
        ctx.credential == Some(crate::credentials::Credential::IdpJwt),
        ctx.lease.is_some(),
    )?;
    // 5. A per-person backend: the client's own Authorization never reaches it; the
    //    backend's password (known only to Gatehouse) does, WebSocket upgrades included.
    if let Some(lease) = &ctx.lease {
        req.remove_header(&http::header::AUTHORIZATION);
        req.insert_header(http::header::AUTHORIZATION, lease.authorization())?;
    }
    // 6. Identity.
    if route.pass_identity_headers
        && let Some(id) = &ctx.identity
    {
        add_identity_headers(&st.auth, req, id, &ctx.host)?;
    }
    Ok(())
}

/// An upstream must not plant Gatehouse's own cookies (a public app could otherwise set
/// someone's session for the whole host): such `Set-Cookie` headers are removed.
pub(crate) fn strip_own_set_cookies(resp: &mut ResponseHeader, ctx: &Ctx) -> Result<()> {
    let name = ctx.state.auth.session.name();
    let mut planted = false;
    for v in resp.headers.get_all(http::header::SET_COOKIE) {
        planted |= is_own_cookie(name, cookie_name(v.as_bytes()));
    }
    if planted {
        let kept: Vec<http::HeaderValue> = resp
            .headers
            .get_all(http::header::SET_COOKIE)
            .iter()
            .filter(|v| !is_own_cookie(name, cookie_name(v.as_bytes())))
            .cloned()
            .collect();
        resp.remove_header(&http::header::SET_COOKIE);
        for v in kept {
            resp.append_header(http::header::SET_COOKIE, v)?;
        }
        tracing::warn!(
            route = ctx_label(&ctx.state, ctx),
            "upstream tried to set Gatehouse's own cookie; removed"
        );
    }
    Ok(())
}

/// Header names that only Gatehouse may set: client-sent ones are removed on every route.
/// Also in underscore spelling: CGI-style upstreams (WSGI, Rack, PHP) read
/// `X_Pomerium_Claim_Email` and `X-Pomerium-Claim-Email` as the same variable.
pub(crate) fn is_identity_header(name: &str) -> bool {
    let n = name.as_bytes();
    [b"x-pomerium-".as_slice(), b"x-gatehouse-"]
        .iter()
        .any(|prefix| {
            n.get(..prefix.len())
                .is_some_and(|head| spelled_as(head, prefix))
        })
}

/// Whether a header name is `canonical` (lower case, with `-`) in any letter case, with `_`
/// for `-` allowed: the spellings an upstream may treat as the same header.
fn spelled_as(name: &[u8], canonical: &[u8]) -> bool {
    name.len() == canonical.len()
        && name
            .iter()
            .zip(canonical)
            .all(|(a, b)| a.to_ascii_lowercase() == *b || (*a == b'_' && *b == b'-'))
}

/// Headers a client could use to lie to the upstream about where a request came from or
/// which URL it asked for. Gatehouse sets `X-Forwarded-For`/`-Proto`/`-Host` itself.
const CLIENT_FORWARDING_HEADERS: [&str; 11] = [
    "forwarded",
    "x-real-ip",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    // Rewrites honoured by some frameworks (Symfony, IIS): a path the route never checked.
    "x-original-url",
    "x-rewrite-url",
];

/// Whether a client-sent header is one of [`CLIENT_FORWARDING_HEADERS`], in any letter
/// case and in underscore spelling too (`X_Forwarded_For`: CGI-style upstreams read it as
/// `X-Forwarded-For`).
pub(crate) fn is_client_forwarding_header(name: &str) -> bool {
    CLIENT_FORWARDING_HEADERS
        .iter()
        .any(|h| spelled_as(name.as_bytes(), h.as_bytes()))
}

/// The `Cookie` header without Gatehouse's own cookies, byte for byte otherwise
/// (non-UTF-8 cookies of other apps pass unchanged). `None` if nothing is left.
pub(crate) fn cookies_without_own(req: &RequestHeader, name: &str) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::new();
    for part in cookie_parts(req).filter(|p| !is_own_cookie(name, cookie_name(p))) {
        if !out.is_empty() {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(part);
    }
    (!out.is_empty()).then_some(out)
}

/// A header value for a claim: non-ASCII and control characters percent-encoded (the JWT
/// carries the exact value).
pub(crate) fn claim_header_value(value: &str) -> String {
    const ENCODE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    percent_encoding::utf8_percent_encode(value, ENCODE).to_string()
}

/// Adds the identity headers. Needs a [`VerifiedIdentity`], which only the auth crate makes.
pub(crate) fn add_identity_headers(
    auth: &Auth,
    req: &mut RequestHeader,
    id: &VerifiedIdentity,
    host: &str,
) -> Result<()> {
    let s = id.session();
    match auth.identity_jwt(id, host, now()) {
        Ok(jwt) => req.insert_header("x-pomerium-jwt-assertion", &*jwt)?,
        Err(e) => {
            tracing::error!(error = %e, "cannot sign the identity JWT");
            return Error::e_explain(ErrorType::InternalError, "identity JWT signing failed");
        }
    }
    // An address the identity provider has not verified does not speak for the person: the
    // header is left out and the JWT says `email_verified: false` (issue 11).
    if s.email_verified {
        req.insert_header("x-pomerium-claim-email", claim_header_value(&s.email))?;
    }
    req.insert_header("x-pomerium-claim-user", claim_header_value(&s.sub))?;
    req.insert_header(
        "x-pomerium-claim-groups",
        claim_header_value(&id.groups().join(",")),
    )?;
    Ok(())
}

/// gzip/brotli level for backend assets: fast, most of the gain.
pub(crate) const COMPRESSION_LEVEL: u32 = 5;

/// Whether a backend response is a static text asset worth compressing: a complete 200 of
/// script, style, HTML, JSON or SVG, not already encoded, and never `text/event-stream`
/// (compressing a stream would hold events back).
pub(crate) fn compressible(resp: &ResponseHeader) -> bool {
    if resp.status != 200 || resp.headers.contains_key(http::header::CONTENT_ENCODING) {
        return false;
    }
    let ct = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    !ct.starts_with("text/event-stream")
        && (ct.starts_with("text/")
            || ct.contains("javascript")
            || ct.contains("json")
            || ct.contains("svg")
            || ct.contains("wasm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_and_rewrite_headers_are_recognised_in_any_spelling() {
        for h in [
            "forwarded",
            "X-Forwarded-For",
            "x_forwarded_for",
            "X_FORWARDED_HOST",
            "x-real-ip",
            "X_Real_IP",
            "x-original-url",
            "X_Rewrite_URL",
        ] {
            assert!(is_client_forwarding_header(h), "{h}");
        }
        for h in ["x-forwarded", "x-forwarded-forx", "accept", "x-request-id"] {
            assert!(!is_client_forwarding_header(h), "{h}");
        }
    }

    #[test]
    fn identity_headers_are_recognised_in_any_spelling() {
        assert!(is_identity_header("x-pomerium-claim-email"));
        assert!(is_identity_header("x-gatehouse-anything"));
        assert!(is_identity_header("x_pomerium_claim_email"));
        assert!(is_identity_header("X_Pomerium-Jwt-Assertion"));
        assert!(!is_identity_header("x-forwarded-for"));
        assert!(!is_identity_header("x-pomerium"));
    }

    #[test]
    fn own_cookies_are_removed_and_others_kept_byte_for_byte() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.append_header(
            "cookie",
            http::HeaderValue::from_bytes(b"a=1; _pomerium=x; t=\xc3\xa9").unwrap(),
        )
        .unwrap();
        r.append_header(
            "cookie",
            "_pomerium_1=y; _pomerium_login=z; _pomeriumx=keep; _pomerium_handoff=h",
        )
        .unwrap();
        let kept = cookies_without_own(&r, "_pomerium").unwrap();
        assert_eq!(kept, b"a=1; t=\xc3\xa9; _pomeriumx=keep".to_vec());
        let mut only_ours = RequestHeader::build("GET", b"/", None).unwrap();
        only_ours.append_header("cookie", "_pomerium=x").unwrap();
        assert_eq!(cookies_without_own(&only_ours, "_pomerium"), None);
    }

    #[test]
    fn non_ascii_claims_are_percent_encoded() {
        assert_eq!(
            claim_header_value("zoë@example.com"),
            "zo%C3%AB@example.com"
        );
        assert_eq!(claim_header_value("a%b"), "a%25b");
        assert_eq!(claim_header_value("plain@example.com"), "plain@example.com");
    }

    #[test]
    fn only_complete_text_assets_are_compressed_never_event_streams() {
        let resp = |status: u16, ct: &str, enc: Option<&str>| {
            let mut r = ResponseHeader::build(status, None).unwrap();
            r.insert_header("content-type", ct).unwrap();
            if let Some(e) = enc {
                r.insert_header("content-encoding", e).unwrap();
            }
            r
        };
        assert!(compressible(&resp(200, "text/javascript", None)));
        assert!(compressible(&resp(
            200,
            "application/javascript; charset=utf-8",
            None
        )));
        assert!(compressible(&resp(200, "text/css", None)));
        assert!(compressible(&resp(200, "text/html; charset=utf-8", None)));
        assert!(!compressible(&resp(200, "text/event-stream", None)));
        assert!(!compressible(&resp(200, "text/javascript", Some("gzip"))));
        assert!(!compressible(&resp(200, "image/png", None)));
        assert!(!compressible(&resp(206, "text/javascript", None)));
    }
}
