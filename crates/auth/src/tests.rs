use super::*;
use gatehouse_config::{CookieConfig, IdpConfig, IdpProvider, Origin, SameSite, Secret, Url};
use std::time::Duration;

pub(crate) fn config(secret: [u8; 32]) -> Config {
    Config {
        source: "test.yaml".into(),
        address: "127.0.0.1:0".parse().unwrap(),
        insecure_server: false,
        http_redirect_addr: None,
        certificates: vec![],
        authenticate_service_url: None,
        idp: IdpConfig {
            provider: IdpProvider::Oidc,
            issuer: Url::parse("http://127.0.0.1:9").unwrap(),
            client_id: "gatehouse".into(),
            client_secret: Secret::new("s".into()),
            scopes: vec!["openid".into(), "email".into()],
            origin: Origin::Default,
        },
        directory: None,
        cookie: CookieConfig {
            name: "_pomerium".into(),
            secret: Secret::new(secret),
            previous_secrets: Vec::new(),
            expire: Duration::from_secs(3600),
            domain: None,
            same_site: SameSite::Lax,
            host_prefix: false,
        },
        signing_key: None,
        allowed_domains: vec![],
        allowed_groups: vec![],
        policies_dir: None,
        policies: vec![],
        metrics_address: None,
        health_check_addr: None,
        routes: vec![],
        backends: vec![],
        literal_secrets: Vec::new(),
        secret_files: Vec::new(),
        log_level: "info".into(),
        state_dir: "/nonexistent".into(),
        state_dir_origin: Origin::Default,
        relay_address: "127.0.0.1:4100".parse().unwrap(),
        provider_key_secret: None,
        max_connections_per_client: 512,
        access_token_max_expire: std::time::Duration::from_secs(90 * 86400),
        warnings: vec![],
    }
}

fn auth(config: &Config) -> Auth {
    let store = store::SqliteStore::in_memory().unwrap();
    Auth::new(config, Arc::new(store)).unwrap()
}

fn signed_in() -> SignedIn {
    SignedIn {
        iss: "http://idp".into(),
        sub: "alice".into(),
        email: "alice@example.com".into(),
        email_verified: true,
        name: Some("Alice".into()),
        groups: vec!["team-it".into()],
        hd: None,
    }
}

fn decode(
    auth: &Auth,
    pairs: &[(String, String)],
    now: UnixTime,
) -> Result<VerifiedIdentity, SessionRejected> {
    auth.session.decode(
        |n| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()),
        now,
    )
}

#[test]
fn session_cookie_round_trips() {
    let auth = auth(&config([1; 32]));
    let s = auth.new_session(signed_in(), 1000);
    let cookies = auth.session.encode(&s);
    let id = decode(&auth, &cookies, 1001).unwrap();
    assert_eq!(id.session(), &s);
    assert_eq!(id.user(), "alice");
}

#[test]
fn expired_session_is_refused() {
    let auth = auth(&config([1; 32]));
    let s = auth.new_session(signed_in(), 1000);
    let cookies = auth.session.encode(&s);
    assert_eq!(
        decode(&auth, &cookies, 1000 + 3600).unwrap_err(),
        SessionRejected::Expired
    );
}

/// The opened-cookie cache changes no answer: a remembered session still expires, a cookie
/// differing by one character from a remembered one is opened (and refused), and a
/// signed-out session is refused while remembered.
#[test]
fn a_remembered_session_is_checked_like_a_new_one() {
    let auth = auth(&config([1; 32]));
    let s = auth.new_session(signed_in(), 1000);
    let cookies = auth.session.encode(&s);
    assert!(decode(&auth, &cookies, 1001).is_ok());
    assert!(
        decode(&auth, &cookies, 1002).is_ok(),
        "taken from the cache"
    );
    assert_eq!(
        decode(&auth, &cookies, 1000 + 3600).unwrap_err(),
        SessionRejected::Expired
    );
    for i in [0, cookies[0].1.len() / 2, cookies[0].1.len() - 1] {
        let mut tampered = cookies.clone();
        let mut bytes = tampered[0].1.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        tampered[0].1 = String::from_utf8(bytes).unwrap();
        assert!(
            decode(&auth, &tampered, 1003).is_err(),
            "byte {i} changed in a remembered cookie"
        );
    }
    auth.end_session(&s, 1004).unwrap();
    let lookup = |n: &str| {
        cookies
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        auth.verify_session(lookup, 1005).unwrap_err(),
        SessionRejected::Revoked
    );
}

#[test]
fn session_from_another_secret_is_refused() {
    let a = auth(&config([1; 32]));
    let b = auth(&config([2; 32]));
    let cookies = a.session.encode(&a.new_session(signed_in(), 1000));
    assert!(matches!(
        decode(&b, &cookies, 1001),
        Err(SessionRejected::Unseal(_))
    ));
}

/// `cookie_secret` `secret`, with `cookie_secret_previous` `previous`.
pub(crate) fn rotated(secret: [u8; 32], previous: &[[u8; 32]]) -> Config {
    let mut c = config(secret);
    c.cookie.previous_secrets = previous.iter().map(|p| Secret::new(*p)).collect();
    c
}

#[test]
fn a_session_sealed_with_a_previous_secret_opens_after_rotation() {
    let old = auth(&config([1; 32]));
    let cookies = old.session.encode(&old.new_session(signed_in(), 1000));
    let new = auth(&rotated([2; 32], &[[1; 32]]));
    let id = decode(&new, &cookies, 1001).unwrap();
    assert_eq!(id.email(), "alice@example.com");
    // New sessions are sealed with the current secret only.
    let fresh = new.session.encode(&new.new_session(signed_in(), 1000));
    assert!(decode(&old, &fresh, 1001).is_err());
    assert!(decode(&auth(&config([2; 32])), &fresh, 1001).is_ok());
    // Once the old secret is dropped, what it sealed is refused.
    let dropped = auth(&config([2; 32]));
    assert!(matches!(
        decode(&dropped, &cookies, 1001),
        Err(SessionRejected::Unseal(_))
    ));
}

#[test]
fn login_handoff_sign_out_and_csrf_of_a_previous_secret_work_after_rotation() {
    let old = auth(&config([1; 32]));
    let new = auth(&rotated([2; 32], &[[3; 32], [1; 32]]));
    let dropped = auth(&config([2; 32]));

    let login = old.login.seal(&old.login_cookie, b"{}");
    assert!(new.login.open(&new.login_cookie, &login).is_ok());
    assert!(dropped.login.open(&dropped.login_cookie, &login).is_err());

    let s = old.new_session(signed_in(), 1000);
    let t = old.seal_handoff(&s, "a.test", "https://a.test/", &handoff_binding("n"), 1000);
    assert!(dropped.open_handoff(&t, "a.test", Some("n"), 1001).is_err());
    let (id, _) = new.open_handoff(&t, "a.test", Some("n"), 1001).unwrap();
    assert_eq!(id.email(), "alice@example.com");

    let out = old.seal_sign_out("https://a.test/", &s.sid, 1000);
    assert_eq!(new.open_sign_out(&out, 1001).unwrap().sid, s.sid);
    assert!(dropped.open_sign_out(&out, 1001).is_none());

    let id = VerifiedIdentity::new(s);
    let token = old.csrf_token(&id);
    assert!(new.check_csrf(&id, &token));
    assert!(!dropped.check_csrf(&id, &token));
    assert_ne!(
        new.csrf_token(&id),
        token,
        "new tokens use the current secret"
    );
}

#[test]
fn login_cookie_value_in_session_cookie_is_refused() {
    let auth = auth(&config([1; 32]));
    let login = auth.login.seal(auth.login_cookie_name(), b"{}");
    let cookies = vec![("_pomerium".to_string(), login)];
    assert!(matches!(
        decode(&auth, &cookies, 1),
        Err(SessionRejected::Unseal(_))
    ));
}

#[test]
fn large_session_is_chunked_and_reassembled() {
    let auth = auth(&config([1; 32]));
    let mut si = signed_in();
    si.groups = (0..300)
        .map(|i| format!("group-number-{i}@example.com"))
        .collect();
    let s = auth.new_session(si, 1000);
    let cookies = auth.session.encode(&s);
    assert!(cookies.len() > 1, "a 300-group session must be chunked");
    assert!(cookies.iter().all(|(_, v)| v.len() < 4000));
    assert_eq!(decode(&auth, &cookies, 1001).unwrap().session(), &s);
}

#[test]
fn handoff_works_once_for_its_host_and_browser_only() {
    let auth = auth(&config([1; 32]));
    let s = auth.new_session(signed_in(), 1000);
    let binding = handoff_binding("browser-nonce");
    let t = auth.seal_handoff(
        &s,
        "assistant.example.com",
        "https://assistant.example.com/x",
        &binding,
        1000,
    );
    assert!(matches!(
        auth.open_handoff(&t, "other.example.com", Some("browser-nonce"), 1001),
        Err(HandoffRejected::WrongHost { .. })
    ));
    assert_eq!(
        auth.open_handoff(&t, "assistant.example.com", Some("another-browser"), 1001)
            .unwrap_err(),
        HandoffRejected::NotThisBrowser
    );
    assert_eq!(
        auth.open_handoff(&t, "assistant.example.com", None, 1001)
            .unwrap_err(),
        HandoffRejected::NotThisBrowser
    );
    let (id, ret) = auth
        .open_handoff(&t, "assistant.example.com", Some("browser-nonce"), 1001)
        .unwrap();
    assert_eq!(id.email(), "alice@example.com");
    assert_eq!(ret, "https://assistant.example.com/x");
    assert_eq!(
        auth.open_handoff(&t, "assistant.example.com", Some("browser-nonce"), 1002)
            .unwrap_err(),
        HandoffRejected::Replayed
    );
}

#[test]
fn expired_handoff_is_refused() {
    let auth = auth(&config([1; 32]));
    let s = auth.new_session(signed_in(), 1000);
    let t = auth.seal_handoff(&s, "a.test", "https://a.test/", &handoff_binding("n"), 1000);
    assert_eq!(
        auth.open_handoff(&t, "a.test", Some("n"), 1000 + HANDOFF_TTL_SECS)
            .unwrap_err(),
        HandoffRejected::Expired
    );
}

#[test]
fn csrf_token_is_bound_to_the_session() {
    let auth = auth(&config([1; 32]));
    let a = VerifiedIdentity::new(auth.new_session(signed_in(), 1000));
    let b = VerifiedIdentity::new(auth.new_session(signed_in(), 1000));
    let t = auth.csrf_token(&a);
    assert!(auth.check_csrf(&a, &t));
    assert!(!auth.check_csrf(&b, &t), "another session's token");
    assert!(!auth.check_csrf(&a, ""));
    assert!(!auth.check_csrf(&a, "!!"));
}

#[tokio::test]
async fn callback_without_login_cookie_or_with_wrong_state_is_refused() {
    let auth = auth(&config([1; 32]));
    let mut q = HashMap::new();
    q.insert("state".to_string(), "abc".to_string());
    q.insert("code".to_string(), "c".to_string());
    assert!(matches!(
        auth.finish_login(None, &q, 1).await,
        Err(CallbackError::LoginCookieMissing)
    ));
    let state = LoginState {
        state: "expected".into(),
        nonce: "n".into(),
        pkce_verifier: "v".into(),
        return_url: "https://a.test/".into(),
        redirect_uri: "https://a.test/.gatehouse/callback".into(),
        binding: None,
        exp: 100,
    };
    let sealed = auth.login.seal(
        auth.login_cookie_name(),
        &serde_json::to_vec(&state).unwrap(),
    );
    assert!(matches!(
        auth.finish_login(Some(&sealed), &q, 1).await,
        Err(CallbackError::StateMismatch)
    ));
    assert!(matches!(
        auth.finish_login(Some(&sealed), &q, 100).await,
        Err(CallbackError::LoginExpired)
    ));
    // Change one character in the middle (the last one may only carry padding bits).
    let mid = sealed.len() / 2;
    let swapped = if &sealed[mid..mid + 1] == "A" {
        "B"
    } else {
        "A"
    };
    let tampered = format!("{}{swapped}{}", &sealed[..mid], &sealed[mid + 1..]);
    assert!(matches!(
        auth.finish_login(Some(&tampered), &q, 1).await,
        Err(CallbackError::LoginCookieRefused(_))
    ));
}

#[test]
fn identity_jwt_is_reused_briefly_per_session_and_host() {
    let auth = auth(&config([1; 32]));
    let a = VerifiedIdentity::new(auth.new_session(signed_in(), 1000));
    let b = VerifiedIdentity::new(auth.new_session(signed_in(), 1000));
    let t1 = auth.identity_jwt(&a, "x.test", 1000).unwrap();
    assert_eq!(
        auth.identity_jwt(&a, "x.test", 1000 + IDENTITY_JWT_REUSE_SECS - 1)
            .unwrap(),
        t1
    );
    assert_ne!(
        auth.identity_jwt(&a, "y.test", 1000).unwrap(),
        t1,
        "another host gets its own aud"
    );
    assert_ne!(
        auth.identity_jwt(&b, "x.test", 1000).unwrap(),
        t1,
        "another session gets its own token"
    );
    let later = auth
        .identity_jwt(&a, "x.test", 1000 + IDENTITY_JWT_REUSE_SECS)
        .unwrap();
    assert_ne!(later, t1, "re-signed after the reuse window");
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = later.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    };
    assert_eq!(claims["iat"], 1000 + IDENTITY_JWT_REUSE_SECS);
    assert_eq!(claims["aud"], "x.test");
}

#[test]
fn identity_jwt_is_not_reused_once_the_directory_groups_change() {
    let auth = auth(&config([1; 32]));
    let session = auth.new_session(signed_in(), 1000);
    let with = |groups: &[&str]| {
        VerifiedIdentity::new(session.clone())
            .with_directory_groups(groups.iter().map(|g| g.to_string()).collect())
    };
    let before = with(&["eng@example.com"]);
    assert_eq!(
        before.groups(),
        ["eng@example.com"],
        "directory groups replace the token's"
    );
    let t1 = auth.identity_jwt(&before, "x.test", 1000).unwrap();
    assert_eq!(auth.identity_jwt(&before, "x.test", 1001).unwrap(), t1);
    let after = with(&["eng@example.com", "ops@example.com"]);
    let t2 = auth.identity_jwt(&after, "x.test", 1002).unwrap();
    assert_ne!(t2, t1, "new groups, new token at once");
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = t2.split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    };
    assert_eq!(
        claims["groups"],
        serde_json::json!(["eng@example.com", "ops@example.com"])
    );
}

#[test]
fn a_sign_in_binding_is_claimed_once() {
    let auth = auth(&config([1; 32]));
    assert!(auth.claim_binding("b1", 1000));
    assert!(
        !auth.claim_binding("b1", 1001),
        "the same sign-in link used again"
    );
    assert!(auth.claim_binding("b2", 1001));
}

#[test]
fn cookie_layout_names_every_chunk_and_only_our_cookies() {
    let auth = auth(&config([1; 32]));
    let codec = &auth.session;
    let names: Vec<String> = codec.chunk_names().collect();
    assert_eq!(names.first().map(String::as_str), Some("_pomerium"));
    assert_eq!(names.get(1).map(String::as_str), Some("_pomerium_1"));
    assert!(names.len() >= 2);
    // A browser holds chunks 0-3 of an old, large session; the new one needs 2.
    let held = [
        "_pomerium",
        "_pomerium_1",
        "_pomerium_2",
        "_pomerium_3",
        "other",
    ];
    assert_eq!(
        codec.stale_chunks(2, |n| held.contains(&n)),
        ["_pomerium_2", "_pomerium_3"]
    );
    assert!(codec.stale_chunks(4, |n| held.contains(&n)).is_empty());
    for own in [
        "_pomerium",
        "_pomerium_1",
        "_pomerium_login",
        "_pomerium_handoff",
    ] {
        assert!(codec.is_own_cookie(own.as_bytes()), "{own}");
    }
    for other in ["_pomeriumx", "pomerium", "session", "_pomerium-x", ""] {
        assert!(!codec.is_own_cookie(other.as_bytes()), "{other}");
    }
}

#[test]
fn a_signed_out_session_is_refused_until_it_would_have_expired() {
    let auth = auth(&config([1; 32]));
    let s = auth.new_session(signed_in(), 1000);
    let other = auth.new_session(signed_in(), 1000);
    let cookies = auth.session.encode(&s);
    let get = |n: &str| {
        cookies
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert!(auth.verify_session(get, 1001).is_ok());
    auth.end_session(&s, 1002).unwrap();
    assert_eq!(
        auth.verify_session(get, 1003).unwrap_err(),
        SessionRejected::Revoked,
        "the copied cookie no longer works"
    );
    let other_cookies = auth.session.encode(&other);
    assert!(
        auth.verify_session(
            |n| other_cookies
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str()),
            1003
        )
        .is_ok(),
        "another session of the same person (another browser) is not ended"
    );
}

#[test]
fn ending_every_session_refuses_every_one_begun_up_to_then() {
    let auth = auth(&config([1; 32]));
    let a = auth.new_session(signed_in(), 1000);
    let b = auth.new_session(signed_in(), 1500);
    let mut bob = signed_in();
    bob.sub = "bob".into();
    let c = auth.new_session(bob, 1000);
    auth.end_every_session(&a.iss, &a.sub, 1500).unwrap();
    let check = |s: &Session| {
        let cookies = auth.session.encode(s);
        auth.verify_session(
            |n| {
                cookies
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| v.as_str())
            },
            1600,
        )
    };
    assert_eq!(check(&a).unwrap_err(), SessionRejected::Revoked);
    assert_eq!(
        check(&b).unwrap_err(),
        SessionRejected::Revoked,
        "begun in the same second, before the click"
    );
    assert!(check(&c).is_ok(), "another person's session is untouched");
    let again = auth.new_session(signed_in(), 1500);
    assert_eq!(again.iat, 1501, "dated after the click");
    assert!(
        check(&again).is_ok(),
        "a sign-in right after, in the same second, works (no loop through the IdP)"
    );
    let later = auth.new_session(signed_in(), 1600);
    assert_eq!(later.iat, 1600);
    assert!(check(&later).is_ok());
}

#[test]
fn a_handoff_of_a_signed_out_session_is_refused() {
    let auth = auth(&config([1; 32]));
    let s = auth.new_session(signed_in(), 1000);
    let binding = handoff_binding("nonce");
    let token = auth.seal_handoff(&s, "a.test", "https://a.test/", &binding, 1000);
    auth.end_session(&s, 1001).unwrap();
    assert_eq!(
        auth.open_handoff(&token, "a.test", Some("nonce"), 1002)
            .unwrap_err(),
        HandoffRejected::Revoked
    );
}

#[tokio::test]
async fn a_sign_in_state_is_used_once_before_any_token_call() {
    let auth = auth(&config([1; 32]));
    let state = LoginState {
        state: "st".into(),
        nonce: "n".into(),
        pkce_verifier: "v".into(),
        return_url: "https://a.test/".into(),
        redirect_uri: "https://a.test/.gatehouse/callback".into(),
        binding: None,
        exp: 1600,
    };
    let sealed = auth.login.seal(
        auth.login_cookie_name(),
        &serde_json::to_vec(&state).unwrap(),
    );
    let mut q = HashMap::new();
    q.insert("state".to_string(), "st".to_string());
    q.insert("code".to_string(), "junk".to_string());
    // The first try reaches the token endpoint (unreachable here: an Oidc error).
    assert!(matches!(
        auth.finish_login(Some(&sealed), &q, 1000).await,
        Err(CallbackError::Oidc(_))
    ));
    // A replay with another code stops before it.
    q.insert("code".to_string(), "junk2".to_string());
    assert!(matches!(
        auth.finish_login(Some(&sealed), &q, 1001).await,
        Err(CallbackError::StateUsed)
    ));
}

#[test]
fn on_google_an_address_speaks_for_its_domain_only_with_a_matching_hd() {
    let mut google = config([1; 32]);
    google.idp.provider = IdpProvider::Google;
    let g = auth(&google);
    let session = |email: &str, hd: Option<&str>| {
        let mut s = signed_in();
        s.email = email.into();
        s.hd = hd.map(str::to_string);
        g.new_session(s, 1000)
    };
    assert!(g.domain_verified(&session("alice@example.com", Some("example.com"))));
    assert!(g.domain_verified(&session("alice@example.com", Some("EXAMPLE.com"))));
    assert!(
        !g.domain_verified(&session("alice@example.com", None)),
        "a consumer account registered with a work address"
    );
    assert!(
        !g.domain_verified(&session("alice@example.com", Some("other.test"))),
        "another Workspace's account"
    );
    assert!(g.domain_verified(&session("someone@gmail.com", None)));
    let mut unverified = session("alice@example.com", Some("example.com"));
    unverified.email_verified = false;
    assert!(!g.domain_verified(&unverified));
    // Google's issuer under `idp_provider: oidc` is Google all the same.
    let oidc = auth(&config([1; 32]));
    let mut consumer = signed_in();
    consumer.iss = "https://accounts.google.com".into();
    consumer.hd = None;
    assert!(!oidc.domain_verified(&oidc.new_session(consumer, 1000)));
    // Other IdPs: a verified address speaks for its domain (they have no `hd`).
    let mut s = signed_in();
    s.hd = None;
    assert!(oidc.domain_verified(&oidc.new_session(s, 1000)));
}

#[test]
fn a_google_session_from_before_hd_was_recorded_signs_in_again() {
    let mut google = config([1; 32]);
    google.idp.provider = IdpProvider::Google;
    let g = auth(&google);
    let mut old = g.new_session(signed_in(), 1000);
    old.v = 0;
    let cookies = g.session.encode(&old);
    let get = |n: &str| {
        cookies
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        g.verify_session(get, 1001).unwrap_err(),
        SessionRejected::Outdated
    );
    let new = g.session.encode(&g.new_session(signed_in(), 1000));
    assert!(
        g.verify_session(
            |n| new.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()),
            1001
        )
        .is_ok()
    );
    // Another IdP has no `hd`: its old sessions stay good.
    let o = auth(&config([1; 32]));
    let mut old = o.new_session(signed_in(), 1000);
    old.v = 0;
    let cookies = o.session.encode(&old);
    assert!(
        o.verify_session(
            |n| cookies
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str()),
            1001
        )
        .is_ok()
    );
}

#[test]
fn an_access_token_speaks_for_its_person_until_expiry_revocation_or_sign_out_everywhere() {
    use crate::tokens::TokenRejected;
    let auth = auth(&config([1; 32]));
    let who = test_util::identity(auth.new_session(signed_in(), 1000));
    let routes = vec!["https://a.example.com".to_string()];
    let minted = auth
        .mint_token(&who, "laptop", 3600, routes.clone(), 1000)
        .unwrap();
    let token = minted.token.as_str();
    let (id, grant) = auth.verify_token(token, 1001).unwrap();
    assert_eq!(id.email(), "alice@example.com");
    assert_eq!(id.groups(), ["team-it"]);
    assert_eq!(grant.routes, routes);
    assert_eq!(grant.name, "laptop");
    // The secret part is checked, not just the id.
    let mut tampered = token.to_string();
    let last = if tampered.ends_with('A') { "B" } else { "A" };
    tampered.replace_range(tampered.len() - 1.., last);
    assert_eq!(
        auth.verify_token(&tampered, 1001).unwrap_err(),
        TokenRejected::Unknown
    );
    assert_eq!(
        auth.verify_token(token, 4600).unwrap_err(),
        TokenRejected::Expired
    );
    // The last use is listed before it is written, and after.
    assert_eq!(auth.tokens(&who)[0].last_used, Some(1001));
    auth.flush_token_use().unwrap();
    assert_eq!(auth.tokens(&who)[0].last_used, Some(1001));
    // Sign out of every browser: tokens made before are refused, one made after works.
    auth.end_every_session("http://idp", "alice", 1002).unwrap();
    assert_eq!(
        auth.verify_token(token, 1003).unwrap_err(),
        TokenRejected::SignedOut
    );
    let later = auth.mint_token(&who, "new", 3600, routes, 1002).unwrap();
    assert!(auth.verify_token(later.token.as_str(), 1003).is_ok());
    // Revoking: only the person's own tokens, by id.
    let mut bob = signed_in();
    bob.sub = "bob".into();
    assert!(
        auth.revoke_tokens(&bob.iss, &bob.sub, Some(&later.info.id))
            .unwrap()
            .is_empty()
    );
    auth.revoke_tokens("http://idp", "alice", Some(&later.info.id))
        .unwrap();
    assert_eq!(
        auth.verify_token(later.token.as_str(), 1003).unwrap_err(),
        TokenRejected::Unknown
    );
    assert!(
        auth.mint_token(&who, " ", 60, vec!["x".into()], 1003)
            .is_err()
    );
    assert!(auth.mint_token(&who, "x", 60, vec![], 1003).is_err());
}

#[test]
fn an_administrators_sign_out_by_address_ends_sessions_and_tokens_of_that_address_only() {
    let auth = auth(&config([1; 32]));
    let alice = auth.new_session(signed_in(), 1000);
    let who = test_util::identity(alice.clone());
    let token = auth
        .mint_token(&who, "ci", 3600, vec!["r".into()], 1000)
        .unwrap();
    let mut bob_in = signed_in();
    bob_in.sub = "bob".into();
    bob_in.email = "bob@example.com".into();
    let bob = auth.new_session(bob_in, 1000);
    let revoked = auth.sign_out_email("ALICE@example.com", 1100).unwrap();
    assert_eq!(revoked, std::slice::from_ref(&token.info.id));
    assert!(auth.check_not_revoked(&alice, 1101).is_err());
    assert!(auth.check_not_revoked(&bob, 1101).is_ok());
    assert!(auth.verify_token(token.token.as_str(), 1101).is_err());
    // Signing in again afterwards works.
    let again = auth.new_session(signed_in(), 1200);
    assert!(auth.check_not_revoked(&again, 1201).is_ok());
}
