//! `idp_service_account` and the directory keys: what loads, the defaults, and the errors
//! (each at its place, none showing the key).

use std::path::Path;
use std::time::Duration;

use crate::util::{COOKIE_SECRET, env};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gatehouse_config::{Config, ConfigErrors, load_str};

/// Google sign-in and one route, on as few lines as possible (the tests put the directory
/// keys first, so their positions are easy to read).
const GOOGLE: &str = "idp_provider: google\nidp_client_id: gh\nidp_client_secret: s\n\
                      allowed_domains: [example.com]\n\
                      routes: [{from: 'https://app.example.com', to: 'http://localhost:8080'}]\n";

/// A PKCS#8 PEM made now (EC: the armour is all the config crate checks; the auth crate
/// refuses it as not RSA).
fn pkcs8_pem() -> String {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    key.to_pkcs8_pem(LineEnding::LF)
        .expect("a fresh key encodes")
        .to_string()
}

fn key_json(extra: serde_json::Value) -> serde_json::Value {
    key_json_with(&pkcs8_pem(), extra)
}

/// The service-account JSON with `pem` as its key, and `extra` fields set (null: removed).
fn key_json_with(pem: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({
        "type": "service_account",
        "client_email": "gatehouse@project.iam.gserviceaccount.com",
        "private_key_id": "kid-1",
        "private_key": pem,
        "token_uri": "https://oauth2.example.com/token",
        "impersonate_user": "Admin@Example.com",
    });
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            if x.is_null() {
                m.remove(k);
            } else {
                m.insert(k.clone(), x.clone());
            }
        }
    }
    v
}

fn b64(v: &serde_json::Value) -> String {
    STANDARD.encode(v.to_string())
}

fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let text = format!("cookie_secret: {COOKIE_SECRET}\n{text}");
    load_str(Path::new("config.yaml"), &text, &env(vars))
}

fn errors(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match load(text, vars) {
        Ok(c) => panic!("expected errors, it loaded: {c:?}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_pomerium_service_account_loads_with_the_defaults() {
    let pem = pkcs8_pem();
    let key = b64(&key_json_with(&pem, serde_json::json!({})));
    let c = load(&format!("idp_service_account: {key}\n{GOOGLE}"), &[]).unwrap();
    let d = c.directory.expect("directory configured");
    assert_eq!(
        d.service_account.client_email,
        "gatehouse@project.iam.gserviceaccount.com"
    );
    assert_eq!(d.service_account.private_key_id.as_deref(), Some("kid-1"));
    assert_eq!(
        d.service_account.private_key.expose(),
        pem.trim(),
        "the key is kept as given (trimmed)"
    );
    assert_eq!(d.impersonate_user, "admin@example.com");
    assert_eq!(d.token_url.as_str(), "https://oauth2.example.com/token");
    assert_eq!(d.directory_url.as_str(), "https://admin.googleapis.com/");
    assert_eq!(d.refresh_interval, Duration::from_secs(600));
    assert_eq!(d.timeout, Duration::from_secs(10));
    assert_eq!(d.max_stale, Duration::from_secs(3600));
    assert_eq!(d.origin.to_string(), "config.yaml:2:22");
    assert!(
        !format!("{:?}", d.service_account).contains("PRIVATE KEY"),
        "Debug shows no key"
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn every_directory_key_can_be_set_and_the_environment_works_too() {
    let key = b64(&key_json(
        serde_json::json!({"token_uri": null, "impersonate_user": null}),
    ));
    let text = format!(
        "idp_refresh_directory_interval: 1s\nidp_refresh_directory_timeout: 2s\n\
         idp_directory_max_stale: 3s\nidp_directory_url: http://127.0.0.1:9/dir\n\
         idp_directory_token_url: http://127.0.0.1:9/token\n\
         idp_directory_impersonate_user: root@example.com\n{GOOGLE}"
    );
    let c = load(&text, &[("IDP_SERVICE_ACCOUNT", &key)]).unwrap();
    let d = c.directory.expect("directory configured");
    assert_eq!(d.refresh_interval, Duration::from_secs(1));
    assert_eq!(d.timeout, Duration::from_secs(2));
    assert_eq!(d.max_stale, Duration::from_secs(3));
    assert_eq!(d.directory_url.as_str(), "http://127.0.0.1:9/dir");
    assert_eq!(d.token_url.as_str(), "http://127.0.0.1:9/token");
    assert_eq!(d.impersonate_user, "root@example.com");
    assert_eq!(
        d.origin.to_string(),
        "environment variable IDP_SERVICE_ACCOUNT"
    );

    // Without token_uri or a token URL key: Google's.
    let c = load(
        &format!("idp_directory_impersonate_user: root@example.com\n{GOOGLE}"),
        &[("IDP_SERVICE_ACCOUNT", &key)],
    )
    .unwrap();
    assert_eq!(
        c.directory.unwrap().token_url.as_str(),
        "https://oauth2.googleapis.com/token"
    );
}

#[test]
fn raw_json_is_accepted_as_well_as_base64() {
    let json = key_json(serde_json::json!({})).to_string();
    let c = load(GOOGLE, &[("IDP_SERVICE_ACCOUNT", &json)]).unwrap();
    assert!(c.directory.is_some());
}

#[test]
fn with_another_provider_the_service_account_is_ignored_with_a_warning() {
    let key = b64(&key_json(serde_json::json!({})));
    let text = format!(
        "idp_service_account: {key}\n{}idp_provider_url: https://login.example.com\n",
        GOOGLE.replace("idp_provider: google", "idp_provider: oidc")
    );
    let c = load(&text, &[]).unwrap();
    assert!(c.directory.is_none());
    let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        w,
        [
            "config.yaml:2:22: ignored: idp_service_account is used only with `idp_provider: \
          google` (other providers send groups in the ID token's `groups` claim)"
        ]
    );
}

#[test]
fn a_broken_key_is_reported_at_its_place_without_its_value() {
    let cases: Vec<(String, &str)> = vec![
        ("not base64 !!".into(), "is not valid base64"),
        (
            STANDARD.encode("{not json"),
            "does not decode to JSON (error at line 1 column 2",
        ),
        (
            STANDARD.encode("[1]"),
            "decodes to JSON that is not an object",
        ),
        (
            b64(&key_json(serde_json::json!({"client_email": null}))),
            "the key's JSON has no `client_email`",
        ),
        (
            b64(&key_json(
                serde_json::json!({"private_key": "secret-material"}),
            )),
            "the key's JSON field `private_key` is not a PEM RSA private key",
        ),
        (
            b64(&key_json(serde_json::json!({"type": "authorized_user"}))),
            "not `service_account`",
        ),
        (
            b64(&key_json(serde_json::json!({"private_key_id": 7}))),
            "field `private_key_id` must be a string",
        ),
        (
            b64(&key_json(
                serde_json::json!({"token_uri": "http://evil.example/token"}),
            )),
            "the key's JSON field `token_uri`: \"http://evil.example/token\" uses http",
        ),
        (
            b64(&key_json(serde_json::json!({"impersonate_user": null}))),
            "the key's JSON has no `impersonate_user` (the Workspace admin whose rights \
             Gatehouse uses to read groups); add it to the JSON as Pomerium expects, or set \
             idp_directory_impersonate_user",
        ),
    ];
    for (key, expected) in cases {
        let e = errors(&format!("idp_service_account: {key}\n{GOOGLE}"), &[]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("config.yaml:2:22: idp_service_account: "),
            "{}",
            e[0]
        );
        assert!(
            e[0].contains(expected),
            "{} should contain {expected}",
            e[0]
        );
        assert!(!e[0].contains("secret-material") && !e[0].contains("PRIVATE KEY-----\n"));
    }
}

#[test]
fn max_stale_shorter_than_the_refresh_interval_is_an_error() {
    let key = b64(&key_json(serde_json::json!({})));
    let e = errors(
        &format!(
            "idp_service_account: {key}\nidp_refresh_directory_interval: 10m\n\
             idp_directory_max_stale: 5m\n{GOOGLE}"
        ),
        &[],
    );
    assert_eq!(
        e,
        [
            "config.yaml:4:26: idp_directory_max_stale: idp_directory_max_stale (5m) is shorter \
          than idp_refresh_directory_interval (10m), so groups would expire between two \
          refreshes; make idp_directory_max_stale longer (its default is 1h)"
        ]
    );
    let e = errors(
        &format!("idp_service_account: {key}\nidp_refresh_directory_interval: 2h\n{GOOGLE}"),
        &[],
    );
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("config.yaml:3:33: idp_refresh_directory_interval: "),
        "{}",
        e[0]
    );
    let e = errors(
        &format!(
            "idp_service_account: {key}\nidp_directory_url: http://directory.example.com\n{GOOGLE}"
        ),
        &[],
    );
    assert!(e[0].contains("uses http on a non-loopback host"), "{e:?}");
}
