//! Loading configs that work, and the rules that decide what a value means: environment
//! overrides, aliases, defaults, Pomerium forms. Messages are pinned in `golden.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::{COOKIE_SECRET, env, fixture};
use gatehouse_config::{
    Action, Condition, Config, ConfigErrors, Criterion, CriterionKind, IdpProvider, LogicalOp,
    Origin, SameSite, StringOp, load, load_str,
};

/// The smallest config that loads (with `allowed_domains` so the route lets someone in).
const MINIMAL: &str = "\
idp_client_id: gatehouse-test
idp_client_secret: file-client-secret
allowed_domains: [example.com]
routes:
  - from: https://app.example.com
    to: http://localhost:8080
";

fn ok(text: &str, vars: &[(&str, &str)]) -> Config {
    match load_str(Path::new("config.yaml"), text, &env(vars)) {
        Ok(config) => config,
        Err(errors) => panic!("expected the config to load, got:\n{errors}"),
    }
}

fn fails(text: &str, vars: &[(&str, &str)]) -> ConfigErrors {
    match load_str(Path::new("config.yaml"), text, &env(vars)) {
        Ok(config) => panic!("expected errors, but it loaded: {config:?}"),
        Err(errors) => errors,
    }
}

fn with_secret(text: &str) -> String {
    format!("cookie_secret: {COOKIE_SECRET}\n{text}")
}

fn messages(errors: &ConfigErrors) -> Vec<String> {
    errors.errors.iter().map(ToString::to_string).collect()
}

// === the TeamOS seed ===

#[test]
fn teamos_seed_loads_with_secrets_from_the_environment() {
    let path = fixture("teamos-seed.yaml");
    let vars = env(&[
        ("GOOGLE_CLIENT_ID", "1234.apps.googleusercontent.com"),
        ("GOOGLE_CLIENT_SECRET", "GOCSPX-not-a-real-secret"),
        ("COOKIE_SECRET", COOKIE_SECRET),
    ]);
    let config = load(&path, &vars).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(config.source, path);
    assert_eq!(config.idp.provider, IdpProvider::Google);
    assert_eq!(config.idp.issuer.as_str(), "https://accounts.google.com/");
    assert_eq!(config.idp.client_id, "1234.apps.googleusercontent.com");
    assert_eq!(
        config.idp.client_secret.expose(),
        "GOCSPX-not-a-real-secret"
    );
    assert_eq!(config.cookie.secret.expose()[31], 31);
    assert_eq!(config.allowed_domains, ["yourcompany.com"]);
    assert_eq!(
        config.authenticate_service_url.as_ref().map(|u| u.as_str()),
        Some("https://auth.34-22-146-168.nip.io/")
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    assert_eq!(config.routes.len(), 2);
    let (main, api) = (&config.routes[0], &config.routes[1]);
    assert_eq!(main.from.host, "assistant.34-22-146-168.nip.io");
    assert_eq!(main.from.scheme, "https");
    assert_eq!(main.from.port, None);
    assert_eq!(main.prefix, None);
    assert_eq!(api.prefix.as_deref(), Some("/api"));
    assert_eq!(api.index, 1);
    for route in [main, api] {
        assert_eq!(
            route.to.url().expect("static upstream").as_str(),
            "http://localhost:4096/"
        );
        assert!(route.pass_identity_headers);
        let policy = route.policy.as_ref().expect("policy");
        assert_eq!(policy.blocks.len(), 1);
        let block = &policy.blocks[0];
        assert_eq!(
            (block.action, op(&block.rule)),
            (Action::Allow, LogicalOp::Or)
        );
        assert_eq!(criteria(&block.rule).len(), 1);
        assert_eq!(
            is_value(&criteria(&block.rule)[0]),
            ("domain", "yourcompany.com")
        );
    }
    assert_eq!(
        main.origin,
        Origin::File {
            file: path.as_path().into(),
            line: 20,
            col: 5
        }
    );
    assert_eq!(
        criterion(&criteria(&api.policy.as_ref().expect("policy").blocks[0].rule)[0]).origin,
        Origin::File {
            file: path.as_path().into(),
            line: 36,
            col: 15
        }
    );
}

fn op(c: &Condition) -> LogicalOp {
    match c {
        Condition::Op { op, .. } => *op,
        Condition::Criterion(_) => panic!("expected an operator, found {c:?}"),
    }
}

fn criteria(c: &Condition) -> &[Condition] {
    match c {
        Condition::Op { children, .. } => children,
        Condition::Criterion(_) => panic!("expected an operator, found {c:?}"),
    }
}

fn criterion(c: &Condition) -> &Criterion {
    match c {
        Condition::Criterion(c) => c,
        Condition::Op { .. } => panic!("expected a criterion, found {c:?}"),
    }
}

/// `(name, value)` of a `domain`/`email` criterion with a single `is`.
fn is_value(c: &Condition) -> (&'static str, &str) {
    let (name, m) = match &criterion(c).kind {
        CriterionKind::Domain(m) => ("domain", m),
        CriterionKind::Email(m) => ("email", m),
        other => panic!("expected domain or email, found {other:?}"),
    };
    match m.ops.as_slice() {
        [StringOp::Is(v)] => (name, v.as_str()),
        other => panic!("expected one `is`, found {other:?}"),
    }
}

// === environment ===

#[test]
fn cookie_secret_from_environment_wins_over_the_file() {
    let other = "Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA="; // bytes 31..=0
    let config = ok(&with_secret(MINIMAL), &[("COOKIE_SECRET", other)]);
    assert_eq!(config.cookie.secret.expose()[0], 31);
}

#[test]
fn idp_client_secret_from_environment_wins_over_the_file_and_its_alias() {
    let config = ok(
        &with_secret(MINIMAL),
        &[("IDP_CLIENT_SECRET", "env-secret")],
    );
    assert_eq!(config.idp.client_secret.expose(), "env-secret");

    let aliased =
        with_secret(&MINIMAL.replace("idp_client_secret", "identity_provider_client_secret"));
    let config = ok(
        &aliased,
        &[("IDENTITY_PROVIDER_CLIENT_SECRET", "env-secret-2")],
    );
    assert_eq!(config.idp.client_secret.expose(), "env-secret-2");
    let config = ok(&aliased, &[("IDP_CLIENT_SECRET", "env-secret-3")]);
    assert_eq!(config.idp.client_secret.expose(), "env-secret-3");
}

#[test]
fn empty_environment_variable_counts_as_unset() {
    let config = ok(
        &with_secret(MINIMAL),
        &[("COOKIE_SECRET", ""), ("ADDRESS", "")],
    );
    assert_eq!(config.cookie.secret.expose()[0], 0);
    assert_eq!(
        config.address,
        "0.0.0.0:443".parse::<SocketAddr>().expect("addr")
    );
}

#[test]
fn environment_lists_are_comma_separated_and_bools_are_true_or_false() {
    let config = ok(
        &with_secret(MINIMAL),
        &[
            ("ALLOWED_DOMAINS", "Example.COM, example.org,"),
            ("INSECURE_SERVER", "true"),
            ("IDP_SCOPES", "openid,email,groups"),
            ("ADDRESS", ":8080"),
        ],
    );
    assert_eq!(config.allowed_domains, ["example.com", "example.org"]);
    assert!(config.insecure_server);
    assert_eq!(config.idp.scopes, ["openid", "email", "groups"]);
    assert_eq!(
        config.address,
        "0.0.0.0:8080".parse::<SocketAddr>().expect("addr")
    );
}

#[test]
fn bad_value_from_environment_names_the_variable_not_the_value() {
    let errors = fails(
        &with_secret(MINIMAL),
        &[
            ("COOKIE_SECRET", "c2hvcnQtc2VjcmV0"),
            ("INSECURE_SERVER", "yes"),
        ],
    );
    assert_eq!(
        messages(&errors),
        [
            "environment variable COOKIE_SECRET: cookie_secret: decodes to 12 bytes but must be exactly 32 (make one \
         with `gatehouse keygen` or `head -c32 /dev/urandom | base64`)",
            "environment variable INSECURE_SERVER: insecure_server: must be true or false",
        ]
    );
    assert_eq!(
        errors.errors[0].origin,
        Origin::Env {
            var: "COOKIE_SECRET".into()
        }
    );
}

#[test]
fn only_environment_variables_of_known_keys_are_read() {
    struct Recorder(std::cell::RefCell<Vec<String>>);
    impl gatehouse_config::Lookup for Recorder {
        fn get(&self, name: &str) -> Option<String> {
            self.0.borrow_mut().push(name.to_string());
            None
        }
    }
    let recorder = Recorder(Default::default());
    let text = with_secret(&format!(
        "shared_secret: x\n{MINIMAL}    to_port: ${{UPSTREAM}}\n"
    ));
    let _ = load_str(Path::new("config.yaml"), &text, &recorder);
    let asked = recorder.0.into_inner();
    assert!(asked.contains(&"COOKIE_SECRET".to_string()));
    assert!(asked.contains(&"IDENTITY_PROVIDER_CLIENT_SECRET".to_string()));
    assert!(!asked.contains(&"SHARED_SECRET".to_string()), "{asked:?}");
    assert!(!asked.contains(&"ROUTES".to_string()), "{asked:?}");
    assert!(
        !asked.contains(&"UPSTREAM".to_string()),
        "unknown keys are not interpolated: {asked:?}"
    );
}

#[test]
fn variables_are_interpolated_anywhere_and_double_dollar_escapes() {
    let text = with_secret(
        "idp_client_id: ${CLIENT_ID}\n\
         idp_client_secret: \"pa$$w0rd-$${LITERAL}-${SECRET}\"\n\
         allowed_domains: [\"${DOMAIN}\"]\n\
         routes:\n  - from: https://${HOST}\n    to: http://localhost:${PORT}/base\n",
    );
    let config = ok(
        &text,
        &[
            ("CLIENT_ID", "id-1"),
            ("SECRET", "s3"),
            ("DOMAIN", "example.com"),
            ("HOST", "App.Example.com"),
            ("PORT", "9000"),
        ],
    );
    assert_eq!(config.idp.client_id, "id-1");
    assert_eq!(config.idp.client_secret.expose(), "pa$$w0rd-${LITERAL}-s3");
    assert_eq!(config.allowed_domains, ["example.com"]);
    assert_eq!(config.routes[0].from.host, "app.example.com");
    assert_eq!(
        config.routes[0].to.url().expect("static upstream").as_str(),
        "http://localhost:9000/base"
    );
}

// === aliases ===

#[test]
fn name_and_its_pomerium_alias_together_are_an_error() {
    let text = with_secret(&format!(
        "identity_provider: google\n{MINIMAL}idp_provider: google\n"
    ));
    let errors = fails(&text, &[]);
    assert_eq!(
        messages(&errors),
        [
            "config.yaml:9:1: `idp_provider` and `identity_provider` (line 2) are the same setting; keep only one"
        ]
    );
}

#[test]
fn name_and_alias_both_in_the_environment_are_an_error() {
    let errors = fails(
        &with_secret(MINIMAL),
        &[("IDP_CLIENT_ID", "a"), ("IDENTITY_PROVIDER_CLIENT_ID", "b")],
    );
    assert_eq!(
        messages(&errors),
        [
            "environment variable IDENTITY_PROVIDER_CLIENT_ID: IDP_CLIENT_ID and IDENTITY_PROVIDER_CLIENT_ID are both \
         set and are the same setting (idp_client_id); set only one"
        ]
    );
}

#[test]
fn pomerium_aliases_load_the_same_fields() {
    let text = with_secret(
        "identity_provider: oidc\n\
         identity_provider_url: https://login.example.com/realms/team\n\
         identity_provider_client_id: cid\n\
         identity_provider_client_secret: cs\n\
         identity_provider_scopes: openid email\n\
         allowed_domains: [example.com]\n",
    );
    let config = ok(&text, &[]);
    assert_eq!(config.idp.provider, IdpProvider::Oidc);
    assert_eq!(
        config.idp.issuer.as_str(),
        "https://login.example.com/realms/team"
    );
    assert_eq!(config.idp.client_id, "cid");
    assert_eq!(config.idp.scopes, ["openid", "email"]);
    assert!(
        matches!(
            config.idp.origin,
            Origin::File {
                line: 2,
                col: 20,
                ..
            }
        ),
        "{:?}",
        config.idp.origin
    );
}

// === defaults ===

#[test]
fn defaults_apply_when_keys_are_absent() {
    let config = ok(&with_secret(MINIMAL), &[]);
    assert_eq!(
        config.address,
        "0.0.0.0:443".parse::<SocketAddr>().expect("addr")
    );
    assert!(!config.insecure_server);
    assert_eq!(config.http_redirect_addr, None);
    assert!(config.certificates.is_empty());
    assert_eq!(config.cookie.name, "_pomerium");
    assert_eq!(config.cookie.expire, Duration::from_secs(14 * 3600));
    assert_eq!(config.cookie.same_site, SameSite::Lax);
    assert_eq!(config.cookie.domain, None);
    assert_eq!(config.idp.provider, IdpProvider::Google);
    assert_eq!(config.idp.issuer.as_str(), "https://accounts.google.com/");
    assert_eq!(config.idp.origin, Origin::Default);
    assert_eq!(config.idp.scopes, ["openid", "email", "profile"]);
    assert_eq!(config.log_level, "info");
    assert!(config.signing_key.is_none());
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn every_supported_key_is_read() {
    let pem = crate::util::generated_pem();
    let signing_key = base64_encode(pem.as_bytes());
    let text = format!(
        "address: 127.0.0.1:8443\n\
         insecure_server: false\n\
         http_redirect_addr: \"[::]:80\"\n\
         authenticate_service_url: http://localhost:8443\n\
         idp_provider: google\n\
         idp_provider_url: http://127.0.0.1:9000/\n\
         idp_client_id: cid\n\
         idp_client_secret: cs\n\
         idp_scopes: [openid, email]\n\
         cookie_name: gh\n\
         cookie_host_prefix: false\n\
         state_dir: run/state\n\
         cookie_secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8\n\
         cookie_expire: 1h30m\n\
         cookie_domain: .Example.com\n\
         cookie_same_site: STRICT\n\
         cookie_http_only: true\n\
         cookie_secure: true\n\
         signing_key: {signing_key}\n\
         log_level: DEBUG\n\
         routes:\n\
         \x20 - from: http://App.example.com:8080\n\
         \x20   to: [http://10.0.0.1:80, http://10.0.0.2:80]\n\
         \x20   path: /exact\n\
         \x20   preserve_host_header: true\n\
         \x20   allow_any_authenticated_user: true\n\
         \x20 - from: https://public.example.com\n\
         \x20   to: https://upstream.internal\n\
         \x20   allow_public_unauthenticated_access: true\n\
         \x20 - from: https://team.example.com\n\
         \x20   to: http://localhost:1\n\
         \x20   allowed_domains: [Example.com]\n\
         \x20   allowed_users: [Bob@Example.com]\n"
    );
    let config = ok(&text, &[]);
    assert_eq!(
        config.address,
        "127.0.0.1:8443".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(
        config.http_redirect_addr,
        Some("[::]:80".parse().expect("addr"))
    );
    assert_eq!(config.idp.issuer.as_str(), "http://127.0.0.1:9000/");
    assert_eq!(config.cookie.name, "gh");
    assert!(!config.cookie.host_prefix);
    assert_eq!(config.state_dir, Path::new("run/state"));
    assert_eq!(config.cookie.expire, Duration::from_secs(5400));
    assert_eq!(config.cookie.domain.as_deref(), Some(".example.com"));
    assert_eq!(config.cookie.same_site, SameSite::Strict);
    assert_eq!(
        config.signing_key.as_ref().map(|k| k.expose().as_str()),
        Some(pem.as_str())
    );
    assert_eq!(config.log_level, "debug");

    let r = &config.routes;
    assert_eq!(
        (
            r[0].from.scheme.as_str(),
            r[0].from.host.as_str(),
            r[0].from.port
        ),
        ("http", "app.example.com", Some(8080))
    );
    assert_eq!(
        r[0].to.url().expect("static upstream").as_str(),
        "http://10.0.0.1/"
    );
    assert_eq!(r[0].path.as_deref(), Some("/exact"));
    assert!(r[0].preserve_host_header && r[0].allow_any_authenticated_user);
    assert!(r[1].allow_public_unauthenticated_access);
    assert_eq!(r[2].allowed_domains, ["example.com"]);
    assert_eq!(r[2].allowed_users, ["bob@example.com"]);
    assert_eq!(
        messages_of(&config.warnings),
        [
            "config.yaml:23:9: routes[0].to: lists 2 upstreams, but load balancing is not supported yet; only the \
         first is used"
        ]
    );
}

fn messages_of(list: &[gatehouse_config::ConfigError]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// === listen addresses, secrets, URLs ===

#[test]
fn listen_addresses_accept_the_pomerium_forms() {
    for (written, expected) in [
        ("\":443\"", "0.0.0.0:443"),
        ("0.0.0.0:443", "0.0.0.0:443"),
        ("127.0.0.1:8443", "127.0.0.1:8443"),
        ("\"[::]:443\"", "[::]:443"),
        ("localhost:8443", "127.0.0.1:8443"),
    ] {
        let config = ok(&with_secret(&format!("address: {written}\n{MINIMAL}")), &[]);
        assert_eq!(
            config.address,
            expected.parse::<SocketAddr>().expect("addr"),
            "{written}"
        );
    }
    let errors = fails(
        &with_secret(&format!("address: example.com:443\n{MINIMAL}")),
        &[],
    );
    assert_eq!(
        messages(&errors),
        [
            "config.yaml:2:10: address: `example.com:443`: listen on an IP address (or `localhost`), not a host name \
         (expected `:443`, `0.0.0.0:443`, `127.0.0.1:8443` or `[::]:443`)"
        ]
    );
}

#[test]
fn cookie_secret_accepts_url_safe_and_unpadded_base64() {
    // Bytes 0xfb 0xff … encode with `+`/`/` in the standard alphabet, `-`/`_` in the URL-safe one.
    let bytes: Vec<u8> = (0..32)
        .map(|i| if i % 2 == 0 { 0xfb } else { 0xff })
        .collect();
    let standard = base64_encode(&bytes);
    assert!(standard.contains('/') || standard.contains('+'));
    let url_safe = standard.replace('+', "-").replace('/', "_");
    let unpadded = url_safe.trim_end_matches('=').to_string();
    for secret in [standard, url_safe, unpadded] {
        let config = ok(MINIMAL, &[("COOKIE_SECRET", &secret)]);
        assert_eq!(
            config.cookie.secret.expose().as_slice(),
            bytes.as_slice(),
            "{secret}"
        );
    }
}

#[test]
fn missing_cookie_secret_says_how_to_make_one() {
    let errors = fails(MINIMAL, &[]);
    let message = messages(&errors).join("\n");
    assert!(
        message.starts_with("config.yaml: cookie_secret is required"),
        "{message}"
    );
    assert!(
        message.contains("gatehouse keygen") && message.contains("head -c32 /dev/urandom | base64")
    );
    assert!(message.contains("COOKIE_SECRET environment variable"));
}

#[test]
fn secret_values_never_appear_in_messages_or_debug_output() {
    let text = "cookie_secret: \"SUPERSECRET-not-base64!\"\nidp_client_id: cid\nidp_client_secret: \
                HUSH-client-secret\nsigning_key: SIGNINGSECRET!!\nallowed_domains: [example.com]\n";
    let errors = fails(text, &[]).to_string();
    assert_eq!(errors.lines().count(), 2, "{errors}");
    for secret in ["SUPERSECRET", "HUSH", "SIGNINGSECRET"] {
        assert!(!errors.contains(secret), "{errors}");
    }
    let errors = fails(&with_secret(MINIMAL), &[("COOKIE_SECRET", "ENVSECRET")]).to_string();
    assert!(!errors.contains("ENVSECRET"), "{errors}");

    let config = ok(&with_secret(MINIMAL), &[("IDP_CLIENT_SECRET", "HUSH-2")]);
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("HUSH") && debug.contains("[redacted]"),
        "{debug}"
    );
}

#[test]
fn http_issuer_is_allowed_on_loopback_hosts_only() {
    for url in [
        "http://127.0.0.1:5556/dex",
        "http://127.1.2.3",
        "http://[::1]:8080",
        "http://localhost:9000",
    ] {
        let text = with_secret(&format!(
            "idp_provider: oidc\nidp_provider_url: {url}\n{MINIMAL}"
        ));
        assert_eq!(ok(&text, &[]).idp.issuer.scheme(), "http", "{url}");
    }
    let text = with_secret(&format!(
        "idp_provider: oidc\nidp_provider_url: http://10.0.0.1\n{MINIMAL}"
    ));
    assert!(messages(&fails(&text, &[]))[0].contains("uses http on a non-loopback host"));
}

#[test]
fn oidc_provider_needs_an_issuer_url() {
    let errors = fails(&with_secret(&format!("idp_provider: oidc\n{MINIMAL}")), &[]);
    assert_eq!(
        messages(&errors),
        [
            "config.yaml:2:15: idp_provider_url is required with `oidc`: the issuer URL of your provider (like \
         https://login.example.com/realms/team)"
        ]
    );
}

#[test]
fn scopes_must_include_openid() {
    let errors = fails(
        &with_secret(&format!("idp_scopes: email profile\n{MINIMAL}")),
        &[],
    );
    assert_eq!(
        messages(&errors),
        ["config.yaml:2:13: idp_scopes: must include `openid` (like `openid email profile`)"]
    );
}

#[test]
fn cookie_http_only_and_secure_accept_only_true() {
    let errors = fails(
        &with_secret(&format!("cookie_http_only: false\n{MINIMAL}")),
        &[],
    );
    assert_eq!(
        messages(&errors),
        [
            "config.yaml:2:19: cookie_http_only: Gatehouse always sets HttpOnly on its session cookies, so this can \
         only be `true`; remove the line"
        ]
    );
}

// === routes and policy ===

#[test]
fn policy_accepts_a_single_block_and_the_short_criterion_form() {
    let text = with_secret(
        "idp_client_id: a\nidp_client_secret: b\nroutes:\n\
         \x20 - from: https://app.example.com\n    to: http://localhost:1\n    policy:\n\
         \x20     allow:\n        and:\n          - email: Alice@Example.com\n          - domain: {is: example.com}\n\
         \x20     deny:\n        or: [{email: {is: mallory@example.com}}]\n",
    );
    let config = ok(&text, &[]);
    let blocks = &config.routes[0].policy.as_ref().expect("policy").blocks;
    assert_eq!(blocks.len(), 2);
    assert_eq!(
        (blocks[0].action, op(&blocks[0].rule)),
        (Action::Allow, LogicalOp::And)
    );
    let first = criteria(&blocks[0].rule);
    assert_eq!(is_value(&first[0]), ("email", "alice@example.com"));
    assert_eq!(is_value(&first[1]), ("domain", "example.com"));
    assert_eq!(
        (blocks[1].action, op(&blocks[1].rule)),
        (Action::Deny, LogicalOp::Or)
    );
    assert!(
        matches!(
            blocks[1].origin,
            Origin::File {
                line: 12,
                col: 7,
                ..
            }
        ),
        "{:?}",
        blocks[1].origin
    );
}

#[test]
fn public_route_with_a_policy_is_a_contradiction() {
    let text = with_secret(
        "idp_client_id: a\nidp_client_secret: b\nroutes:\n\
         \x20 - from: https://app.example.com\n    to: http://localhost:1\n\
         \x20   allow_public_unauthenticated_access: true\n    policy: {allow: {or: [domain: example.com]}}\n",
    );
    assert_eq!(
        messages(&fails(&text, &[])),
        [
            "config.yaml:7:42: routes[0]: allow_public_unauthenticated_access lets everyone in without signing in, so \
         its `policy` would never apply; remove one or the other"
        ]
    );
}

#[test]
fn route_that_lets_nobody_in_is_a_warning() {
    let text = with_secret(
        "idp_client_id: a\nidp_client_secret: b\nroutes:\n  - from: https://app.example.com\n    to: http://localhost:1\n",
    );
    assert_eq!(
        messages_of(&ok(&text, &[]).warnings),
        [
            "config.yaml:5:5: routes[0] lets nobody in: add a `policy`, `allowed_domains` or `allowed_users`, or \
         `allow_any_authenticated_user: true`"
        ]
    );
}

#[test]
fn prefix_and_path_together_are_an_error() {
    let text = with_secret(&format!("{MINIMAL}    prefix: /a\n    path: /a/b\n"));
    assert_eq!(
        messages(&fails(&text, &[])),
        ["config.yaml:9:11: routes[0]: give `prefix` or `path`, not both"]
    );
}

#[test]
fn top_level_allowed_groups_is_read_like_allowed_domains() {
    let text = with_secret(&format!(
        "allowed_groups: [admins@example.com, 00gv40ki4gmtCyl5d4x6]\n{MINIMAL}"
    ));
    let config = ok(&text, &[]);
    assert_eq!(
        config.allowed_groups,
        ["admins@example.com", "00gv40ki4gmtCyl5d4x6"]
    );
    // A route with no rules of its own and only top-level groups is not "nobody".
    let only_groups = text.replace("allowed_domains: [example.com]\n", "");
    assert!(ok(&only_groups, &[]).warnings.is_empty());
}

/// A config file in a fresh directory, with `files` (relative path → text) beside it.
fn config_dir(config: &str, files: &[(&str, &str)]) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "gatehouse-config-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policies")).expect("make a temp dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write a test file");
    }
    let path = dir.join("gatehouse.yaml");
    std::fs::write(&path, with_secret(config)).expect("write the config");
    path
}

const NAMED: &str = "\
idp_client_id: gatehouse-test
idp_client_secret: file-client-secret
policies_dir: policies
routes:
  - from: https://app.example.com
    to: http://localhost:8080
    policy: staff
  - from: https://wiki.example.com
    to: http://localhost:8081
    policy: staff
";

#[test]
fn routes_share_a_named_policy_from_policies_dir() {
    let path = config_dir(
        NAMED,
        &[
            (
                "policies/staff.yaml",
                "- allow:\n    or:\n      - domain: { is: example.com }\n",
            ),
            ("policies/staff.test.yaml", "cases: []\n"),
            ("policies/.staff.yaml.swp", "binary junk"),
        ],
    );
    let config = load(&path, &env(&[])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.policies.len(), 1, "only staff.yaml is a policy");
    assert_eq!(config.policies[0].name, "staff");
    for r in &config.routes {
        assert_eq!(r.policy_name.as_deref(), Some("staff"));
        assert_eq!(r.policy.as_ref(), Some(&config.policies[0].spec));
    }
    // One block (a map, not a list) is a policy too.
    let path = config_dir(
        NAMED,
        &[(
            "policies/staff.yaml",
            "allow: { or: [ { domain: { is: example.com } } ] }\n",
        )],
    );
    assert!(load(&path, &env(&[])).is_ok());
}

#[test]
fn a_mistake_in_a_policy_file_is_reported_at_its_line_in_that_file() {
    let path = config_dir(
        NAMED,
        &[(
            "policies/staff.yaml",
            "- allow:\n    or:\n      - emial: { is: a@example.com }\n",
        )],
    );
    let errors = messages(&load(&path, &env(&[])).unwrap_err());
    let file = path.parent().unwrap().join("policies/staff.yaml");
    let in_file: Vec<_> = errors
        .iter()
        .filter(|e| e.starts_with(&format!("{}:3:9: ", file.display())))
        .collect();
    assert_eq!(in_file.len(), 1, "{errors:?}");
    assert!(
        in_file[0]
            .contains("unknown criterion `emial` in staff[0].allow.or[0]; did you mean `email`?"),
        "{errors:?}"
    );
    // The routes using it say so, without a misleading "no such policy".
    assert!(
        errors
            .iter()
            .filter(|e| e.contains("the policy `staff` has errors"))
            .count()
            == 2,
        "{errors:?}"
    );
}

#[test]
fn an_unknown_policy_name_is_an_error_with_the_known_names() {
    let path = config_dir(
        &NAMED.replace(
            "policy: staff\n  - from: https://wiki",
            "policy: stafff\n  - from: https://wiki",
        ),
        &[(
            "policies/staff.yaml",
            "- allow: { or: [ { domain: { is: example.com } } ] }\n",
        )],
    );
    let errors = messages(&load(&path, &env(&[])).unwrap_err());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(":8:13: routes[0].policy: no policy named `stafff`")
            && errors[0].contains("did you mean `staff`?"),
        "{errors:?}"
    );
    // Without policies_dir, the message says how to add one.
    let text = with_secret(&format!("{MINIMAL}    policy: staff\n"));
    let errors = messages(&fails(&text, &[]));
    assert!(
        errors[0].contains("set `policies_dir: policies`"),
        "{errors:?}"
    );
}

#[test]
fn a_missing_policies_dir_is_an_error() {
    let text = with_secret(&format!("policies_dir: nowhere\n{MINIMAL}"));
    let errors = messages(&fails(&text, &[]));
    assert!(
        errors[0].starts_with("config.yaml:2:15: policies_dir: cannot open the directory"),
        "{errors:?}"
    );
}

#[test]
fn route_allowed_groups_are_kept_as_written() {
    let text = with_secret(&format!(
        "{MINIMAL}    allowed_groups: [Admins@Example.com, 00gv40ki4gmtCyl5d4x6]\n"
    ));
    let config = ok(&text, &[]);
    assert_eq!(
        config.routes[0].allowed_groups,
        ["Admins@Example.com", "00gv40ki4gmtCyl5d4x6"]
    );
}

#[test]
fn pomerium_keys_gatehouse_does_not_support_yet_are_warnings() {
    let text = with_secret(&format!(
        "shared_secret: abc\ntimeout: 30s\nservices: all\n{MINIMAL}    allow_websockets: true\n"
    ));
    assert_eq!(
        messages_of(&ok(&text, &[]).warnings),
        [
            "config.yaml:2:1: ignored: `shared_secret` is not supported by Gatehouse yet",
            "config.yaml:3:1: ignored: `timeout` is not supported by Gatehouse yet",
            "config.yaml:4:1: ignored: `services` is not supported by Gatehouse yet",
            "config.yaml:11:5: ignored: `allow_websockets` in routes[0] is not supported by Gatehouse yet",
        ]
    );
}

// === files ===

#[test]
fn missing_config_file_is_one_error_naming_the_path_and_the_os_error() {
    let path = Path::new("/nonexistent/gatehouse/config.yaml");
    let errors = load(path, &env(&[])).expect_err("no such file");
    assert_eq!(
        errors.to_string(),
        "/nonexistent/gatehouse/config.yaml: cannot read the config file: No such file or directory (os error 2)"
    );
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("gatehouse-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tls")).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn certificate_paths_are_relative_to_the_config_file_and_kept_in_order() {
    let dir = TempDir::new("certs");
    for name in ["tls/a.crt", "tls/a.key", "tls/b.crt", "tls/b.key"] {
        std::fs::write(dir.0.join(name), "not parsed here").expect("write");
    }
    let config_path = dir.0.join("config.yaml");
    let text = with_secret(&format!(
        "certificate_file: tls/a.crt\ncertificate_key_file: tls/a.key\n\
         certificates:\n  - cert: tls/b.crt\n    key: {}\n{MINIMAL}",
        dir.0.join("tls/b.key").display()
    ));
    std::fs::write(&config_path, text).expect("write");
    let config = load(&config_path, &env(&[])).unwrap_or_else(|e| panic!("{e}"));
    let certs = &config.certificates;
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[0].cert_file, dir.0.join("tls/a.crt"));
    assert_eq!(certs[0].key_file, dir.0.join("tls/a.key"));
    assert_eq!(certs[1].cert_file, dir.0.join("tls/b.crt"));
    assert_eq!(certs[1].key_file, dir.0.join("tls/b.key"));
    assert!(
        matches!(
            certs[1].origin,
            Origin::File {
                line: 5,
                col: 11,
                ..
            }
        ),
        "{:?}",
        certs[1].origin
    );
}

#[test]
fn unreadable_certificate_paths_are_reported_at_their_position() {
    let dir = TempDir::new("missing-certs");
    let config_path = dir.0.join("config.yaml");
    let text = with_secret(&format!(
        "certificate_file: tls/missing.crt\n\
         certificates:\n  - cert: tls\n    key: tls/none.key\n  - {{cert: a.crt}}\n{MINIMAL}"
    ));
    std::fs::write(&config_path, text).expect("write");
    let errors = load(&config_path, &env(&[])).expect_err("missing files");
    let shown = errors
        .to_string()
        .replace(&format!("{}/", dir.0.display()), "<dir>/");
    assert_eq!(shown, [
        "<dir>/config.yaml:2:19: certificate_file is set but certificate_key_file is not; give both (or neither)",
        "<dir>/config.yaml:4:11: certificates[0].cert: `<dir>/tls` is a directory, not a file",
        "<dir>/config.yaml:5:10: certificates[0].key: `<dir>/tls/none.key` cannot be read: No such file or directory \
         (os error 2)",
        "<dir>/config.yaml:6:5: certificates[1]: needs both `cert:` and `key:` (file paths)",
    ]
    .join("\n"));
}

#[test]
fn a_second_yaml_document_is_an_error_not_silently_dropped() {
    let text = with_secret(&format!("{MINIMAL}---\nroutes: []\n"));
    assert_eq!(
        messages(&fails(&text, &[])),
        [
            "config.yaml:8:1: a second YAML document starts here; a config file holds one document (remove the `---` \
         line or merge the two)"
        ]
    );
}

#[test]
fn duplicate_keys_are_an_error() {
    let text = with_secret(&format!("{MINIMAL}cookie_name: a\ncookie_name: b\n"));
    assert_eq!(
        messages(&fails(&text, &[])),
        ["config.yaml:9:1: duplicate key `cookie_name` (first at line 8); keep only one"]
    );
}

#[test]
fn byte_order_mark_at_the_start_is_ignored() {
    let config = ok(&format!("\u{feff}{}", with_secret(MINIMAL)), &[]);
    assert_eq!(config.routes.len(), 1);
}

// === backends: and to_backend: ===

/// A config whose one route is `to_backend: assistant`, with `pool` as the pool's settings.
fn with_pool(pool: &str) -> String {
    with_secret(&format!(
        "\
idp_client_id: gatehouse-test
idp_client_secret: file-client-secret
allowed_domains: [example.com]
backends:
  assistant:
{pool}routes:
  - from: https://assistant.example.com
    to_backend: assistant
"
    ))
}

#[test]
fn a_pool_with_nothing_set_gets_the_documented_defaults() {
    let text = with_pool("");
    let config = ok(&text, &[]);
    let pool = &config.backends[0];
    assert_eq!(pool.name, "assistant");
    assert_eq!(
        pool.command,
        [
            "opencode",
            "serve",
            "--hostname",
            "127.0.0.1",
            "--port",
            "{port}"
        ]
    );
    assert_eq!(pool.ports, (4101, 4199));
    assert_eq!(pool.max_backends, 99);
    assert_eq!(pool.max_starting, 2);
    assert_eq!(pool.idle_timeout, Duration::from_secs(30 * 60));
    assert_eq!(pool.start_timeout, Duration::from_secs(60));
    assert_eq!(pool.data_root, Path::new("/var/lib/gatehouse/backends"));
    assert_eq!(pool.uids, None);
    assert_eq!(pool.isolation_none, None);
    assert_eq!(pool.limits, gatehouse_config::Limits::default());
    assert!(pool.egress.is_empty());
    assert_eq!(pool.confinement, gatehouse_config::Confinement::Required);
    assert!(!pool.stop_on_sign_out);
    assert_eq!(
        config.routes[0].to,
        gatehouse_config::Upstream::Backend("assistant".into())
    );
}

#[test]
fn a_pool_reads_every_setting_and_relative_data_root_is_next_to_the_config() {
    let text = with_pool(
        "    command: /opt/opencode/bin/opencode serve --hostname 127.0.0.1 --port {port}
    ports: 5000-5009
    data_root: data/backends
    idle_timeout: 10m
    start_timeout: 20s
    max_starting: 1
    max_backends: 4
    env:
      OPENCODE_DISABLE_SHARE: \"1\"
      LLM_URL: ${LLM_URL}
    uids: 200000-200999
    limits: {processes: 300, memory: 6G, open_files: 2048}
    egress:
      allow: [127.0.0.1:9100, 10.1.0.0/16, \"[fd00::1]:443\", llm.internal:8443]
    confinement: best_effort
    stop_on_sign_out: true
",
    );
    let config = load_str(
        Path::new("/etc/gatehouse/config.yaml"),
        &text,
        &env(&[("LLM_URL", "http://127.0.0.1:9000/v1")]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pool = &config.backends[0];
    assert_eq!(pool.command[0], "/opt/opencode/bin/opencode");
    assert_eq!(pool.command[5], "{port}");
    assert_eq!(pool.ports, (5000, 5009));
    assert_eq!(pool.data_root, Path::new("/etc/gatehouse/data/backends"));
    assert_eq!(pool.idle_timeout, Duration::from_secs(600));
    assert_eq!(pool.start_timeout, Duration::from_secs(20));
    assert_eq!(pool.max_starting, 1);
    assert_eq!(pool.max_backends, 4);
    assert_eq!(
        pool.env,
        [
            ("OPENCODE_DISABLE_SHARE".to_string(), "1".to_string()),
            (
                "LLM_URL".to_string(),
                "http://127.0.0.1:9000/v1".to_string()
            )
        ]
    );
    let uids = pool.uids.as_ref().expect("uids");
    assert_eq!((uids.first, uids.last), (200000, 200999));
    assert_eq!(uids.origin.to_string(), "/etc/gatehouse/config.yaml:17:11");
    assert_eq!(
        pool.limits,
        gatehouse_config::Limits {
            processes: 300,
            memory_bytes: 6 << 30,
            open_files: 2048
        }
    );
    let allowed: Vec<String> = pool
        .egress
        .iter()
        .map(|r| format!("{:?} {:?}", r.target, r.port))
        .collect();
    assert_eq!(
        allowed,
        [
            "Net { addr: 127.0.0.1, prefix: 32 } Some(9100)",
            "Net { addr: 10.1.0.0, prefix: 16 } None",
            "Net { addr: fd00::1, prefix: 128 } Some(443)",
            "Host(\"llm.internal\") Some(8443)",
        ]
    );
    assert_eq!(pool.confinement, gatehouse_config::Confinement::BestEffort);
    assert!(pool.stop_on_sign_out);
}

#[test]
fn secrets_written_in_the_file_are_noted_but_not_those_from_the_environment() {
    let text = "\
cookie_secret: ${COOKIE_SECRET}
idp_client_id: gatehouse-test
idp_client_secret: file-client-secret
allowed_domains: [example.com]
routes:
  - from: https://a.example.com
    to: http://127.0.0.1:1
";
    let config = load_str(
        Path::new("/etc/gatehouse/config.yaml"),
        text,
        &env(&[(
            "COOKIE_SECRET",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let noted: Vec<String> = config
        .literal_secrets
        .iter()
        .map(|(k, o)| format!("{k} at {o}"))
        .collect();
    assert_eq!(
        noted,
        ["idp_client_secret at /etc/gatehouse/config.yaml:3:20"]
    );
    // The same secret from its environment variable is not in the file.
    let config = load_str(
        Path::new("/etc/gatehouse/config.yaml"),
        text,
        &env(&[
            (
                "COOKIE_SECRET",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
            ("IDP_CLIENT_SECRET", "from-env"),
        ]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        config.literal_secrets.is_empty(),
        "{:?}",
        config.literal_secrets
    );
}

#[test]
fn any_google_account_with_a_shell_is_warned_about() {
    let text = with_secret(
        "\
idp_provider: google
idp_client_id: gatehouse-test
idp_client_secret: file-client-secret
backends:
  assistant:
routes:
  - from: https://assistant.example.com
    to_backend: assistant
    allow_any_authenticated_user: true
",
    );
    let config =
        load_str(Path::new("gatehouse.yaml"), &text, &env(&[])).unwrap_or_else(|e| panic!("{e}"));
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.starts_with("gatehouse.yaml:8:5: routes[0]: `allow_any_authenticated_user` with `to_backend` on Google")
            && w.contains("any Google account")),
        "{warnings:?}"
    );
    // With the Workspace domain instead: no such warning.
    let text = text.replace(
        "allow_any_authenticated_user: true",
        "allowed_domains: [example.com]",
    );
    let config =
        load_str(Path::new("gatehouse.yaml"), &text, &env(&[])).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !config
            .warnings
            .iter()
            .any(|w| w.to_string().contains("any Google account"))
    );
}

#[test]
fn cookie_host_prefix_names_the_cookies_host_only() {
    let plain = ok(&with_secret(MINIMAL), &[]);
    assert_eq!(plain.cookie.name, "_pomerium", "Pomerium's name by default");
    assert!(!plain.cookie.host_prefix);
    let prefixed = ok(
        &with_secret(&format!("cookie_host_prefix: true\n{MINIMAL}")),
        &[],
    );
    assert_eq!(prefixed.cookie.name, "__Host-gatehouse");
    assert!(prefixed.cookie.host_prefix);
    let named = ok(
        &with_secret(&format!(
            "cookie_host_prefix: true\ncookie_name: gh\n{MINIMAL}"
        )),
        &[],
    );
    assert_eq!(named.cookie.name, "__Host-gh");
    let written = ok(
        &with_secret(&format!("cookie_name: __Host-gh\n{MINIMAL}")),
        &[],
    );
    assert!(
        written.cookie.host_prefix,
        "a __Host- name is a host-only cookie too"
    );
}

#[test]
fn state_dir_defaults_beside_the_first_pools_data_root() {
    let without_pools = ok(&with_secret(MINIMAL), &[]);
    assert_eq!(
        without_pools.state_dir,
        Path::new("/var/lib/gatehouse/state")
    );
    let with_pool = ok(
        &with_secret(
            "idp_client_id: gatehouse-test\n\
             idp_client_secret: s\n\
             allowed_domains: [example.com]\n\
             backends:\n\
             \x20 opencode:\n\
             \x20   data_root: /srv/gh/homes\n\
             routes:\n\
             \x20 - from: https://app.example.com\n\
             \x20   to_backend: opencode\n",
        ),
        &[],
    );
    assert_eq!(with_pool.state_dir, Path::new("/srv/gh/state"));
}

#[test]
fn max_connections_per_client_is_a_positive_number_with_a_default() {
    assert_eq!(
        ok(&with_secret(MINIMAL), &[]).max_connections_per_client,
        512
    );
    let set = ok(
        &with_secret(&format!("max_connections_per_client: 40\n{MINIMAL}")),
        &[],
    );
    assert_eq!(set.max_connections_per_client, 40);
    let e = messages(&fails(
        &with_secret(&format!("max_connections_per_client: 0\n{MINIMAL}")),
        &[],
    ));
    assert_eq!(
        e,
        [
            "config.yaml:2:29: max_connections_per_client: `0` must be a whole number, 1 or more (the requests one client address may have open at once; default 512)"
        ]
    );
}

/// Secrets from files (issue 14): Docker secrets and systemd credentials, read relative to
/// the config file, trailing newline dropped, never counted as written in the config.
#[test]
fn secrets_are_read_from_the_files_their_file_keys_name() {
    let dir = std::env::temp_dir().join(format!("gatehouse-secret-files-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    std::fs::write(dir.join("secrets/cookie"), format!("{COOKIE_SECRET}\n")).unwrap();
    std::fs::write(dir.join("secrets/client"), "client-from-file\n").unwrap();
    let signing = crate::util::generated_pem();
    std::fs::write(dir.join("signing.pem"), &signing).unwrap();
    let text = format!(
        "idp_client_id: gatehouse-test\n\
         idp_client_secret_file: secrets/client\n\
         cookie_secret_file: {}\n\
         signing_key_file: ${{SIGNING_FILE}}\n\
         allowed_domains: [example.com]\n\
         routes:\n  - from: https://app.example.com\n    to: http://localhost:8080\n",
        dir.join("secrets/cookie").display()
    );
    let path = dir.join("gatehouse.yaml");
    let signing_file = dir.join("signing.pem");
    let config = load_str(
        &path,
        &text,
        &env(&[("SIGNING_FILE", signing_file.to_str().unwrap())]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.idp.client_secret.expose(), "client-from-file");
    assert_eq!(
        config.cookie.secret.expose(),
        &std::array::from_fn::<u8, 32, _>(|i| i as u8)
    );
    assert!(config.signing_key.is_some());
    assert!(config.literal_secrets.is_empty());
    let keys: Vec<&str> = config
        .secret_files
        .iter()
        .map(|(k, _, _)| k.as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "idp_client_secret_file",
            "cookie_secret_file",
            "signing_key_file"
        ]
    );

    // Both forms at once, and a file that is not there: each named with its place.
    let both = format!("{text}cookie_secret: {COOKIE_SECRET}\n").replace(
        "idp_client_secret_file: secrets/client",
        "idp_client_secret_file: secrets/missing",
    );
    let e = load_str(
        &path,
        &both,
        &env(&[("SIGNING_FILE", signing_file.to_str().unwrap())]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("give cookie_secret or cookie_secret_file, not both"),
        "{e}"
    );
    assert!(
        e.contains("idp_client_secret_file: cannot read") && e.contains("secrets/missing"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
