use super::*;

use base64::Engine as _;

use std::sync::OnceLock;

use gatehouse_config::{Origin, Secret, ServiceAccount, Url};
use jsonwebtoken::{DecodingKey, Validation};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

/// One RSA key pair per test run (made now; no key is committed): (private, public) PEM.
fn keys() -> &'static (String, String) {
    static KEYS: OnceLock<(String, String)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
        let private = key.to_pkcs8_pem(LineEnding::LF).expect("pem").to_string();
        let public = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        (private, public)
    })
}

fn config(pem: &str) -> DirectoryConfig {
    DirectoryConfig {
        service_account: ServiceAccount {
            client_email: "gh@project.iam.gserviceaccount.com".into(),
            private_key_id: Some("kid-7".into()),
            private_key: Secret::new(pem.to_string()),
        },
        impersonate_user: "admin@example.com".into(),
        token_url: Url::parse("https://oauth2.example.com/token").unwrap(),
        directory_url: Url::parse("https://admin.example.com").unwrap(),
        refresh_interval: Duration::from_secs(600),
        timeout: Duration::from_secs(10),
        max_stale: Duration::from_secs(3600),
        origin: Origin::Default,
    }
}

// === the assertion ===

#[test]
fn the_assertion_is_rs256_with_rfc7523_claims_and_verifies_with_the_public_key() {
    let (private, public) = keys();
    let signer = AssertionSigner::new(&config(private)).unwrap();
    let jwt = signer.assertion(1_800_000_000).unwrap();

    let header = jsonwebtoken::decode_header(&jwt).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some("kid-7"));

    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&["https://oauth2.example.com/token"]);
    v.validate_exp = false;
    let key = DecodingKey::from_rsa_pem(public.as_bytes()).unwrap();
    let claims = jsonwebtoken::decode::<AssertionClaims>(&jwt, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(
        claims,
        AssertionClaims {
            iss: "gh@project.iam.gserviceaccount.com".into(),
            sub: "admin@example.com".into(),
            scope: "https://www.googleapis.com/auth/admin.directory.group.readonly".into(),
            aud: "https://oauth2.example.com/token".into(),
            iat: 1_800_000_000,
            exp: 1_800_003_600,
        }
    );

    // Claims changed under the same signature do not verify: the stand-in's check means
    // something.
    let parts: Vec<&str> = jwt.split('.').collect();
    let forged_claims = AssertionClaims {
        sub: "someone-else@example.com".into(),
        ..claims
    };
    let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&forged_claims).unwrap());
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert!(jsonwebtoken::decode::<AssertionClaims>(&forged, &key, &v).is_err());
}

#[test]
fn the_token_request_is_the_jwt_bearer_grant_form() {
    let body = token_request_body("a.b.c");
    assert_eq!(
        body,
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c"
    );
}

#[test]
fn a_key_that_is_not_rsa_is_refused_at_setup_without_showing_it() {
    use p256::pkcs8::EncodePrivateKey as _;
    let ec = p256::SecretKey::random(&mut rand::rngs::OsRng)
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    let err = AssertionSigner::new(&config(&ec)).unwrap_err();
    assert!(matches!(err, ServiceAccountKeyError::NotRsa));
    assert!(err.to_string().contains("is not an RSA private key"));
    assert!(!err.to_string().contains("-----"));

    // RSA armour around something that is not a key.
    let (private, _) = keys();
    let lines: Vec<&str> = private.lines().collect();
    let garbage = format!("{}\nAAAA\n{}\n", lines[0], lines[lines.len() - 1]);
    assert!(AssertionSigner::new(&config(&garbage)).is_err());
}

// === responses ===

#[test]
fn pages_parse_and_unknown_fields_are_ignored() {
    let page = parse_page(
        br#"{"kind":"admin#directory#groups","etag":"x","groups":[
            {"kind":"admin#directory#group","id":"01abc","email":"eng@example.com","name":"Engineering","directMembersCount":"3"}
        ],"nextPageToken":"p2"}"#,
    )
    .unwrap();
    assert_eq!(page.groups.len(), 1);
    assert_eq!(page.groups[0].email, "eng@example.com");
    assert_eq!(page.groups[0].id, "01abc");
    assert_eq!(page.next_page_token.as_deref(), Some("p2"));
    // A group in no group: the API leaves `groups` out.
    assert_eq!(
        parse_page(br#"{"kind":"admin#directory#groups"}"#),
        Some(GroupPage::default())
    );
    assert_eq!(parse_page(b"<html>"), None);
    assert_eq!(parse_page(br#"{"groups":"nope"}"#), None);
}

#[test]
fn the_groups_url_encodes_the_key_and_keeps_a_base_path() {
    let base = Url::parse("http://127.0.0.1:9/prefix/").unwrap();
    assert_eq!(
        groups_url(&base, "a+b@example.com", Some("t/1")).as_str(),
        "http://127.0.0.1:9/prefix/admin/directory/v1/groups?userKey=a%2Bb%40example.com&maxResults=200&pageToken=t%2F1"
    );
    let base = Url::parse("https://admin.googleapis.com").unwrap();
    assert_eq!(
        groups_url(&base, "u@x", None).as_str(),
        "https://admin.googleapis.com/admin/directory/v1/groups?userKey=u%40x&maxResults=200"
    );
}

#[test]
fn error_answers_become_short_plain_words() {
    assert_eq!(
        error_words(br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#),
        "invalid_grant (Invalid JWT Signature.)"
    );
    assert_eq!(
        error_words(br#"{"error":{"code":404,"message":"Resource Not Found: userKey"}}"#),
        "Resource Not Found: userKey"
    );
    assert_eq!(error_words(b"<html>secret</html>"), "no error description");
    assert_eq!(error_words(br#"{"error":"a\u0000<b>"}"#), "ab");
}

/// Pages of `(id, email)` groups.
type Pages = Vec<Vec<(&'static str, &'static str)>>;

/// A directory in memory: key → pages of groups. Counts calls.
struct Fake {
    pages: HashMap<String, Pages>,
    calls: Mutex<Vec<(String, Option<String>)>>,
}

impl Fake {
    fn new(entries: &[(&str, Pages)]) -> Self {
        Fake {
            pages: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            calls: Mutex::new(Vec::new()),
        }
    }

    async fn list(&self, key: String, page: Option<String>) -> Result<GroupPage, DirectoryError> {
        self.calls.lock().unwrap().push((key.clone(), page.clone()));
        let pages = self.pages.get(&key).cloned().unwrap_or_default();
        let i: usize = page.as_deref().map(|p| p.parse().unwrap()).unwrap_or(0);
        let groups = pages
            .get(i)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, email)| Group {
                id: id.into(),
                email: email.into(),
                name: String::new(),
            })
            .collect();
        let next = (i + 1 < pages.len()).then(|| (i + 1).to_string());
        Ok(GroupPage {
            groups,
            next_page_token: next,
        })
    }
}

fn run<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn groups_are_followed_across_pages_and_through_nesting_breadth_first() {
    let fake = Fake::new(&[
        (
            "alice@example.com",
            vec![vec![("1", "eng@x")], vec![("2", "all@x")]],
        ),
        ("eng@x", vec![vec![("3", "staff@x")]]),
        ("staff@x", vec![vec![("2", "all@x")]]),
    ]);
    let groups = run(expand("alice@example.com", |k, p| fake.list(k, p))).unwrap();
    let names = group_names(&groups);
    assert_eq!(names, ["eng@x", "all@x", "staff@x", "1", "2", "3"]);
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            ("alice@example.com".to_string(), None),
            ("alice@example.com".to_string(), Some("1".to_string())),
            ("eng@x".to_string(), None),
            ("all@x".to_string(), None),
            ("staff@x".to_string(), None),
        ],
        "each group listed once (all@x reached twice)"
    );
}

#[test]
fn a_cycle_of_groups_ends() {
    let fake = Fake::new(&[
        ("bob@example.com", vec![vec![("a", "a@x")]]),
        ("a@x", vec![vec![("b", "b@x")]]),
        ("b@x", vec![vec![("a", "a@x"), ("b", "b@x")]]),
    ]);
    let groups = run(expand("bob@example.com", |k, p| fake.list(k, p))).unwrap();
    assert_eq!(group_names(&groups), ["a@x", "b@x", "a", "b"]);
    assert_eq!(fake.calls.lock().unwrap().len(), 3);
}

#[test]
fn too_many_groups_is_an_error_not_a_shortened_list() {
    // A chain deeper than the call cap.
    let keys: Vec<String> = (0..=MAX_CALLS).map(|i| format!("g{i}@x")).collect();
    let list = |key: String, _page: Option<String>| {
        let next = key
            .strip_prefix('g')
            .and_then(|r| r.strip_suffix("@x"))
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| n + 1)
            .unwrap_or(0);
        let groups = vec![Group {
            id: format!("id{next}"),
            email: keys
                .get(next)
                .cloned()
                .unwrap_or_else(|| format!("g{next}@x")),
            name: String::new(),
        }];
        async move {
            Ok(GroupPage {
                groups,
                next_page_token: None,
            })
        }
    };
    assert_eq!(
        run(expand("carol@example.com", list)),
        Err(DirectoryError::TooMany)
    );
}

#[test]
fn a_failing_page_fails_the_lookup() {
    let list = |key: String, _page: Option<String>| async move {
        if key == "u@x" {
            Ok(GroupPage {
                groups: vec![Group {
                    id: "1".into(),
                    email: "g@x".into(),
                    name: String::new(),
                }],
                next_page_token: None,
            })
        } else {
            Err(DirectoryError::Unreachable("connection refused".into()))
        }
    };
    assert!(matches!(
        run(expand("u@x", list)),
        Err(DirectoryError::Unreachable(_))
    ));
}

// === the cache: its states, driven by a clock the test moves ===

const T0: Duration = Duration::from_secs(1_800_000_000);

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + T0 + Duration::from_secs(secs)
}

fn cache() -> GroupCache {
    GroupCache::new(Ttls {
        refresh: Duration::from_secs(10),
        max_stale: Duration::from_secs(30),
        timeout: Duration::from_secs(2),
    })
}

fn groups(names: &[&str]) -> Arc<[String]> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The lookup uses the last groups, and starts a background refresh or not.
#[track_caller]
fn assert_stale(c: &mut GroupCache, user: &str, t: u64, refresh: bool) {
    match c.lookup(user, at(t)) {
        Lookup::Stale { refresh: r, .. } => assert_eq!(r, refresh, "refresh at {t}"),
        other => panic!("expected stale at {t}, got {other:?}"),
    }
}

#[test]
fn fresh_then_stale_with_one_background_refresh_then_fresh_again() {
    let mut c = cache();
    assert!(
        matches!(c.lookup("alice", at(0)), Lookup::Fetch(_)),
        "nothing known"
    );
    c.succeeded("alice", groups(&["eng"]), at(0));
    assert!(matches!(c.lookup("alice", at(9)), Lookup::Fresh(g) if g[0] == "eng"));
    // Older than the refresh interval: use, and one request starts the refresh.
    assert_stale(&mut c, "alice", 10, true);
    assert_stale(&mut c, "alice", 11, false);
    c.succeeded("alice", groups(&["eng", "ops"]), at(12));
    assert!(matches!(c.lookup("alice", at(13)), Lookup::Fresh(g) if g.len() == 2));
}

#[test]
fn while_the_directory_is_down_the_last_groups_serve_until_max_stale_then_it_fails_closed() {
    let mut c = cache();
    c.succeeded("alice", groups(&["eng"]), at(0));
    assert_stale(&mut c, "alice", 10, true);
    // The background refresh fails: the last groups still serve.
    assert_eq!(c.failed("alice", at(11)), Ok(groups(&["eng"])));
    // No new attempt for a few seconds after a failure…
    assert_stale(&mut c, "alice", 12, false);
    // …then another.
    assert_stale(&mut c, "alice", 16, true);
    assert!(c.failed("alice", at(16)).is_ok());
    assert!(matches!(
        c.lookup("alice", at(30)),
        Lookup::Stale { groups, .. } if groups[0] == "eng"
    ));
    // Past max_stale (30 s after the last success): wait for a fetch; if it fails, refuse,
    // saying since when the directory has not answered.
    assert!(matches!(c.lookup("alice", at(31)), Lookup::Fetch(_)));
    let u = c.failed("alice", at(31)).unwrap_err();
    assert_eq!(
        u,
        Unavailable {
            since: at(11),
            last_success: Some(at(0)),
        }
    );
    // Right after that failure, requests refuse without waiting for another attempt.
    assert!(matches!(c.lookup("alice", at(32)), Lookup::Unavailable(x) if x == u));
    assert!(matches!(c.lookup("alice", at(37)), Lookup::Fetch(_)));
    // The directory answers again: fresh, and the failure is forgotten.
    c.succeeded("alice", groups(&["eng"]), at(38));
    assert!(matches!(c.lookup("alice", at(39)), Lookup::Fresh(_)));
    assert_eq!(c.failed("alice", at(40)), Ok(groups(&["eng"])));
    assert_eq!(
        c.failed("alice", at(69)).unwrap_err(),
        Unavailable {
            since: at(40),
            last_success: Some(at(38)),
        }
    );
}

#[test]
fn a_first_lookup_that_fails_is_unavailable_since_then() {
    let mut c = cache();
    assert!(matches!(c.lookup("bob", at(0)), Lookup::Fetch(_)));
    assert_eq!(
        c.failed("bob", at(1)),
        Err(Unavailable {
            since: at(1),
            last_success: None,
        })
    );
    assert!(matches!(c.lookup("bob", at(2)), Lookup::Unavailable(_)));
    // People are separate.
    assert!(matches!(c.lookup("carol", at(2)), Lookup::Fetch(_)));
}

#[test]
fn a_request_that_waited_for_the_lock_takes_the_fetch_that_finished_meanwhile() {
    let mut c = cache();
    assert_eq!(c.settled_since("alice", at(0)), None);
    c.succeeded("alice", groups(&["eng"]), at(1));
    assert_eq!(c.settled_since("alice", at(0)), Some(Ok(groups(&["eng"]))));
    assert_eq!(c.settled_since("alice", at(2)), None, "older than the wait");
    let _ = c.failed("alice", at(50));
    assert!(matches!(c.settled_since("alice", at(49)), Some(Err(_))));
}

#[test]
fn a_lost_background_refresh_is_started_again() {
    let mut c = cache();
    c.succeeded("alice", groups(&["eng"]), at(0));
    assert_stale(&mut c, "alice", 10, true);
    // Never reported (its runtime went away): after twice the timeout, another starts.
    assert_stale(&mut c, "alice", 13, false);
    assert_stale(&mut c, "alice", 14, true);
}

#[test]
fn a_config_reload_keeps_the_groups_when_the_directory_and_admin_are_the_same() {
    let (private, _) = keys();
    let old = Directory::new(&config(private)).unwrap();
    old.cache().succeeded("alice", groups(&["eng"]), at(0));

    let mut same = config(private);
    same.refresh_interval = Duration::from_secs(60);
    let kept = Directory::new(&same).unwrap().carry_over(&old);
    assert!(Arc::ptr_eq(&kept.cache, &old.cache), "same cache");
    assert_eq!(
        kept.cache().ttls.refresh,
        Duration::from_secs(60),
        "new settings apply"
    );

    let mut other = config(private);
    other.directory_url = Url::parse("https://elsewhere.example.com").unwrap();
    let fresh = Directory::new(&other).unwrap().carry_over(&old);
    assert!(
        !Arc::ptr_eq(&fresh.cache, &old.cache),
        "another directory starts empty"
    );
    assert!(fresh.cache().is_empty());
}
