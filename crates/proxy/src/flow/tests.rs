//! The request flow in-process: a `State` built from a config string, requests driven
//! through [`decide`] with no socket, no Pingora session and no identity provider (sessions
//! are sealed with the state's own keys, as a browser would present them).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use gatehouse_auth::SignedIn;
use pingora::http::RequestHeader;

use super::{Ctx, Step, decide, is_landing};
use crate::endpoints::FormAction;
use crate::refusal::Outcome;
use crate::state::State;

const CONFIG: &str = "
address: 127.0.0.1:8443
insecure_server: true
idp_provider: oidc
idp_provider_url: http://127.0.0.1:9
idp_client_id: gatehouse-test
idp_client_secret: not-a-real-secret
cookie_secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
allowed_domains: [example.com]
backends:
  assistant:
    command: [opencode, serve, --port, '{port}']
    relay:
      providers:
        fake: {style: openai, base_url: 'http://127.0.0.1:9/v1'}
routes:
  - from: https://app.example.com
    to: http://127.0.0.1:9001
  - from: https://public.example.com
    to: http://127.0.0.1:9002
    allow_public_unauthenticated_access: true
  - from: https://admins.example.com
    to: http://127.0.0.1:9003
    policy:
      - allow:
          or:
            - groups: {has: admins}
  - from: https://assistant.example.com
    to_backend: assistant
  - from: https://cors.example.com
    to: http://127.0.0.1:9004
    cors_allow_preflight: true
";

/// The state and the backend pools, as `serve` would build them (no socket is opened).
struct Flow {
    state: Arc<State>,
    live: Arc<crate::Live>,
}

impl Flow {
    fn new() -> Self {
        let config = gatehouse_config::load_str(
            Path::new("gatehouse.yaml"),
            CONFIG,
            &HashMap::<String, String>::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let prepared = crate::prepare(&config).unwrap_or_else(|e| panic!("{e}"));
        Flow {
            state: prepared.live.state.load_full(),
            live: Arc::clone(&prepared.live),
        }
    }

    /// The cookie header of a signed-in person with a verified `email` and `groups`.
    fn cookie(&self, email: &str, groups: &[&str]) -> String {
        let auth = &self.state.auth;
        let session = auth.new_session(
            SignedIn {
                iss: "http://127.0.0.1:9".into(),
                sub: format!("sub-{email}"),
                email: email.into(),
                email_verified: true,
                name: None,
                groups: groups.iter().map(|g| g.to_string()).collect(),
                hd: None,
            },
            gatehouse_auth::now(),
        );
        auth.session
            .encode(&session)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn run(&self, req: RequestHeader) -> (Step, Ctx) {
        let mut ctx = Ctx::new(Arc::clone(&self.state));
        let step = decide(&self.state, &self.live, &req, &mut ctx).await;
        (step, ctx)
    }
}

fn request(method: &str, url: &str, headers: &[(&'static str, &str)]) -> RequestHeader {
    let uri: http::Uri = url.parse().expect("test URL");
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut req = RequestHeader::build(method, path.as_bytes(), None).expect("request");
    req.insert_header("host", uri.authority().expect("authority").as_str())
        .expect("host");
    for (k, v) in headers {
        req.append_header(*k, *v).expect("header");
    }
    req
}

fn respond(step: Step) -> crate::pages::Page {
    match step {
        Step::Respond(page) => page,
        other => panic!("expected a page, got {other:?}"),
    }
}

const JSON: (&str, &str) = ("accept", "application/json");

#[tokio::test]
async fn signed_out_script_gets_401_with_the_sign_in_url() {
    let f = Flow::new();
    let (step, ctx) = f
        .run(request("GET", "https://app.example.com/x?y=1", &[JSON]))
        .await;
    let page = respond(step);
    assert_eq!(page.status, 401);
    let body = String::from_utf8_lossy(&page.body);
    assert!(body.contains("https://app.example.com/x?y=1"), "{body}");
    assert_eq!(ctx.outcome.map(Outcome::code), Some("signed-out"));
    assert_eq!(ctx.route, Some(0));
}

#[tokio::test]
async fn allowed_person_on_a_static_route_is_proxied() {
    let f = Flow::new();
    let cookie = f.cookie("alice@example.com", &[]);
    let (step, ctx) = f
        .run(request(
            "GET",
            "https://app.example.com/",
            &[("cookie", &cookie)],
        ))
        .await;
    assert!(matches!(step, Step::Continue), "{step:?}");
    assert_eq!(ctx.outcome.map(Outcome::code), Some("domain-allowed"));
    assert_eq!(
        ctx.identity.as_ref().map(|i| i.email()),
        Some("alice@example.com")
    );
}

#[tokio::test]
async fn policy_deny_answers_403_with_the_reason() {
    let f = Flow::new();
    let cookie = f.cookie("bob@example.com", &["staff"]);
    let (step, ctx) = f
        .run(request(
            "GET",
            "https://admins.example.com/",
            &[("cookie", &cookie)],
        ))
        .await;
    let page = respond(step);
    assert_eq!(page.status, 403);
    let body = String::from_utf8_lossy(&page.body);
    assert!(body.contains("bob@example.com"), "{body}");
    assert_eq!(ctx.outcome.map(Outcome::code), Some("not-allowed"));
    // The same person in the group is let in.
    let cookie = f.cookie("bob@example.com", &["admins"]);
    let (step, _) = f
        .run(request(
            "GET",
            "https://admins.example.com/",
            &[("cookie", &cookie)],
        ))
        .await;
    assert!(matches!(step, Step::Continue), "{step:?}");
}

#[tokio::test]
async fn a_tampered_session_cookie_is_no_session() {
    let f = Flow::new();
    let mut cookie = f.cookie("alice@example.com", &[]);
    cookie.push('A');
    let (step, ctx) = f
        .run(request(
            "GET",
            "https://app.example.com/",
            &[("cookie", &cookie), JSON],
        ))
        .await;
    assert_eq!(respond(step).status, 401);
    assert!(ctx.identity.is_none());
}

#[tokio::test]
async fn backend_route_asks_for_the_persons_backend_without_starting_it() {
    let f = Flow::new();
    let cookie = f.cookie("alice@example.com", &[]);
    let (step, ctx) = f
        .run(request(
            "GET",
            "https://assistant.example.com/session",
            &[("cookie", &cookie)],
        ))
        .await;
    assert!(matches!(step, Step::Backend), "{step:?}");
    assert!(ctx.identity.is_some() && ctx.lease.is_none());
    assert!(
        !f.live.backends[0].is_running(&gatehouse_backends::PersonId::new(
            "http://127.0.0.1:9",
            "sub-alice@example.com"
        ))
    );
}

#[tokio::test]
async fn a_cross_site_write_to_a_backend_is_refused() {
    let f = Flow::new();
    let cookie = f.cookie("alice@example.com", &[]);
    for headers in [
        vec![
            ("cookie", cookie.as_str()),
            ("origin", "https://evil.example"),
        ],
        vec![
            ("cookie", cookie.as_str()),
            ("sec-fetch-site", "cross-site"),
        ],
    ] {
        let (step, ctx) = f
            .run(request(
                "POST",
                "https://assistant.example.com/session",
                &headers,
            ))
            .await;
        assert_eq!(respond(step).status, 403);
        assert_eq!(ctx.outcome.map(Outcome::code), Some("cross-origin"));
    }
    // Same origin passes on to the backend step.
    let (step, _) = f
        .run(request(
            "POST",
            "https://assistant.example.com/session",
            &[
                ("cookie", &cookie),
                ("origin", "https://assistant.example.com"),
            ],
        ))
        .await;
    assert!(matches!(step, Step::Backend), "{step:?}");
}

#[tokio::test]
async fn public_routes_health_unknown_hosts_and_odd_paths() {
    let f = Flow::new();
    let (step, ctx) = f
        .run(request("GET", "https://public.example.com/a", &[]))
        .await;
    assert!(matches!(step, Step::Continue), "{step:?}");
    assert_eq!(ctx.outcome.map(Outcome::code), Some("public-route"));
    let (step, _) = f
        .run(request(
            "GET",
            "https://anything.example.org/.gatehouse/health",
            &[],
        ))
        .await;
    assert_eq!(respond(step).status, 200);
    let (step, _) = f
        .run(request("GET", "https://nope.example.com/", &[]))
        .await;
    assert_eq!(respond(step).status, 404);
    let (step, _) = f
        .run(request("GET", "https://app.example.com/a/../b", &[]))
        .await;
    assert_eq!(respond(step).status, 400);
}

#[tokio::test]
async fn own_forms_ask_for_their_body_and_unknown_pages_are_404() {
    let f = Flow::new();
    let cookie = f.cookie("alice@example.com", &[]);
    for (path, action) in [
        ("/.gatehouse/sign_out", FormAction::SignOut),
        ("/.pomerium/backend/restart", FormAction::RestartBackend),
    ] {
        let (step, ctx) = f
            .run(request(
                "POST",
                &format!("https://app.example.com{path}"),
                &[("cookie", &cookie)],
            ))
            .await;
        assert!(
            matches!(step, Step::ReadForm(a) if a == action),
            "{path}: {step:?}"
        );
        assert!(ctx.identity.is_some());
    }
    let (step, _) = f
        .run(request(
            "GET",
            "https://app.example.com/.gatehouse/nothing-here",
            &[("cookie", &cookie)],
        ))
        .await;
    assert_eq!(respond(step).status, 404);
}

#[tokio::test]
async fn cross_site_writes_are_refused_on_static_routes_too_unless_the_route_serves_other_sites() {
    let f = Flow::new();
    let cookie = f.cookie("alice@example.com", &[]);
    let evil = [
        ("cookie", cookie.as_str()),
        ("origin", "https://evil.example"),
    ];
    let (step, ctx) = f
        .run(request("POST", "https://app.example.com/transfer", &evil))
        .await;
    assert_eq!(respond(step).status, 403);
    assert_eq!(ctx.outcome.map(Outcome::code), Some("cross-origin"));
    // A cross-site WebSocket upgrade (a GET) counts as a write.
    let ws = [
        ("cookie", cookie.as_str()),
        ("origin", "https://evil.example"),
        ("upgrade", "websocket"),
    ];
    let (step, _) = f
        .run(request("GET", "https://app.example.com/socket", &ws))
        .await;
    assert_eq!(respond(step).status, 403);
    // A cross-site GET is a plain link: it passes.
    let (step, _) = f
        .run(request("GET", "https://app.example.com/", &evil))
        .await;
    assert!(matches!(step, Step::Continue), "{step:?}");
    // `cors_allow_preflight`: the upstream decides about other sites.
    let (step, _) = f
        .run(request("POST", "https://cors.example.com/api", &evil))
        .await;
    assert!(matches!(step, Step::Continue), "{step:?}");
    let preflight = [
        ("origin", "https://evil.example"),
        ("access-control-request-method", "POST"),
    ];
    let (step, ctx) = f
        .run(request(
            "OPTIONS",
            "https://cors.example.com/api",
            &preflight,
        ))
        .await;
    assert!(
        matches!(step, Step::Continue),
        "a preflight needs no session: {step:?}"
    );
    assert_eq!(ctx.outcome.map(Outcome::code), Some("cors-preflight"));
    // Without the key a preflight is a signed-out request like any other.
    let (step, _) = f
        .run(request(
            "OPTIONS",
            "https://app.example.com/api",
            &[preflight[0], preflight[1], JSON],
        ))
        .await;
    assert_eq!(respond(step).status, 401);
}

#[tokio::test]
async fn an_oversized_header_block_is_refused_with_431() {
    let f = Flow::new();
    let big = "a".repeat(64 * 1024);
    let (step, ctx) = f
        .run(request(
            "GET",
            "https://public.example.com/",
            &[("x-big", &big)],
        ))
        .await;
    assert_eq!(respond(step).status, 431);
    assert_eq!(ctx.outcome.map(Outcome::code), Some("headers-too-large"));
    // A session in its largest form still fits.
    let cookie = format!("_pomerium={}", "b".repeat(28 * 1024));
    let (step, _) = f
        .run(request(
            "GET",
            "https://public.example.com/",
            &[("cookie", &cookie)],
        ))
        .await;
    assert!(matches!(step, Step::Continue), "{step:?}");
}

/// Issue 12: OpenCode's provider dialog on a relaying pool's route is Gatehouse's to answer.
#[tokio::test]
async fn opencodes_auth_calls_are_answered_here_and_its_provider_oauth_refused() {
    let f = Flow::new();
    let cookie = f.cookie("alice@example.com", &[]);
    let (step, _) = f
        .run(request(
            "PUT",
            "https://assistant.example.com/auth/fake?directory=/x",
            &[("cookie", &cookie), ("content-type", "application/json")],
        ))
        .await;
    assert!(
        matches!(&step, Step::ReadKeyBody(crate::providers::KeyRequest::OpencodeAuth(p)) if p == "fake"),
        "{step:?}"
    );
    for path in [
        "/provider/openai/oauth/authorize",
        "/provider/anthropic/oauth/callback",
    ] {
        let (step, ctx) = f
            .run(request(
                "POST",
                &format!("https://assistant.example.com{path}"),
                &[("cookie", &cookie)],
            ))
            .await;
        assert_eq!(respond(step).status, 403, "{path}");
        assert_eq!(
            ctx.outcome.map(Outcome::code),
            Some("provider-oauth-refused")
        );
    }
    // Other OpenCode calls still go to the backend.
    let (step, _) = f
        .run(request(
            "GET",
            "https://assistant.example.com/provider",
            &[("cookie", &cookie)],
        ))
        .await;
    assert!(matches!(step, Step::Backend), "{step:?}");
    // A cross-site PUT /auth is refused before it is read.
    let (step, _) = f
        .run(request(
            "PUT",
            "https://assistant.example.com/auth/fake",
            &[("cookie", &cookie), ("origin", "https://evil.example")],
        ))
        .await;
    assert_eq!(respond(step).status, 403);
}

#[tokio::test]
async fn the_keys_api_lists_relayed_providers_and_refuses_cross_site_changes() {
    let f = Flow::new();
    let cookie = f.cookie("alice@example.com", &[]);
    let (step, _) = f
        .run(request(
            "GET",
            "https://app.example.com/.gatehouse/api/providers",
            &[("cookie", &cookie), JSON],
        ))
        .await;
    let page = respond(step);
    let v: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
    assert_eq!(v["providers"][0]["id"], "fake");
    assert_eq!(v["providers"][0]["connected"], false);
    assert_eq!(v["providers"][0]["mode"], "ephemeral");
    for method in ["PUT", "DELETE"] {
        let (step, ctx) = f
            .run(request(
                method,
                "https://app.example.com/.gatehouse/api/providers/fake",
                &[("cookie", &cookie), ("origin", "https://evil.example")],
            ))
            .await;
        assert_eq!(respond(step).status, 403, "{method}");
        assert_eq!(ctx.outcome.map(Outcome::code), Some("cross-origin"));
    }
    let (step, _) = f
        .run(request(
            "PUT",
            "https://app.example.com/.gatehouse/api/providers/fake",
            &[("cookie", &cookie), ("origin", "https://app.example.com")],
        ))
        .await;
    assert!(
        matches!(&step, Step::ReadKeyBody(crate::providers::KeyRequest::ApiPut(p)) if p == "fake"),
        "{step:?}"
    );
}

/// Issue 12 review: what could carry a key to the backend, or read the keys page, is refused.
#[tokio::test]
async fn key_carrying_writes_and_service_workers_never_reach_the_backend() {
    let f = Flow::new();
    let cookie = f.cookie("alice@example.com", &[]);
    let json = ("content-type", "application/json");
    // A trailing slash is the same call.
    let (step, _) = f
        .run(request(
            "PUT",
            "https://assistant.example.com/auth/fake/",
            &[("cookie", &cookie), json],
        ))
        .await;
    assert!(matches!(step, Step::ReadKeyBody(_)), "{step:?}");
    // Not JSON (a cross-site form's text/plain): refused, not read, not proxied.
    let (step, _) = f
        .run(request(
            "PUT",
            "https://assistant.example.com/auth/fake",
            &[("cookie", &cookie), ("content-type", "text/plain")],
        ))
        .await;
    assert_eq!(respond(step).status, 415);
    // Other writes to /auth: refused.
    for method in ["POST", "PATCH"] {
        let (step, _) = f
            .run(request(
                method,
                "https://assistant.example.com/auth/fake",
                &[("cookie", &cookie), json],
            ))
            .await;
        assert_eq!(respond(step).status, 405, "{method}");
    }
    // A service worker's script (it would see the keys page's form): refused.
    let (step, ctx) = f
        .run(request(
            "GET",
            "https://assistant.example.com/sw.js",
            &[("cookie", &cookie), ("service-worker", "script")],
        ))
        .await;
    assert_eq!(respond(step).status, 403);
    assert_eq!(
        ctx.outcome.map(Outcome::code),
        Some("service-worker-refused")
    );
    // The same script fetched as a plain script is the backend's.
    let (step, _) = f
        .run(request(
            "GET",
            "https://assistant.example.com/sw.js",
            &[("cookie", &cookie)],
        ))
        .await;
    assert!(matches!(step, Step::Backend), "{step:?}");
}

#[tokio::test]
async fn gatehouse_pages_keep_other_scripts_of_the_origin_out() {
    let f = Flow::new();
    let cookie = f.cookie("alice@example.com", &[]);
    let (step, _) = f
        .run(request(
            "GET",
            "https://assistant.example.com/.gatehouse/providers",
            &[("cookie", &cookie)],
        ))
        .await;
    let page = respond(step);
    assert_eq!(page.status, 200);
    let header = |name: &str| {
        page.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("cross-origin-opener-policy").as_deref(),
        Some("same-origin")
    );
    assert!(
        header("content-security-policy").is_some_and(|c| c.contains("frame-ancestors 'none'"))
    );
    let body = String::from_utf8_lossy(&page.body);
    assert!(
        body.contains("type=\"password\"") && body.contains("csrf_token"),
        "{body}"
    );
}

#[test]
fn only_a_browser_page_load_of_the_bare_root_is_a_landing() {
    let build = |method: &str, path: &str, headers: &[(&str, &str)]| {
        let mut req = RequestHeader::build(method, path.as_bytes(), None).expect("request");
        for (k, v) in headers {
            req.insert_header(k.to_string(), v.to_string())
                .expect("header");
        }
        req
    };
    let page = [
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
    ];
    assert!(is_landing(&build("GET", "/", &page)));
    // Not: the app's own fetches, other pages, a query, a frame, a POST.
    assert!(!is_landing(&build("GET", "/", &[("accept", "text/html")])));
    assert!(!is_landing(&build(
        "GET",
        "/",
        &[("sec-fetch-mode", "cors"), ("sec-fetch-dest", "empty")]
    )));
    assert!(!is_landing(&build("GET", "/session", &page)));
    assert!(!is_landing(&build("GET", "/?x=1", &page)));
    assert!(!is_landing(&build(
        "GET",
        "/",
        &[("sec-fetch-mode", "navigate"), ("sec-fetch-dest", "iframe")]
    )));
    assert!(!is_landing(&build("POST", "/", &page)));
}
