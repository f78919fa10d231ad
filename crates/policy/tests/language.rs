//! Table tests of the policy language, end to end: each policy is written in YAML, loaded by
//! the real config loader (as `gatehouse check` and `serve` do), compiled, and evaluated
//! against a request's facts. One table per topic; each row says what it checks.

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use gatehouse_policy::{Claim, ClaimValues, Decision, Facts, Policy, Reason};

const COOKIE_SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Compiles a route whose extra YAML lines are `route` (indented by 4, like `policy:`).
fn route_policy(route: &str) -> Policy {
    let text = format!(
        "cookie_secret: {COOKIE_SECRET}\nidp_client_id: a\nidp_client_secret: b\nroutes:\n  \
         - from: https://app.example.com\n    to: http://localhost:1\n{route}"
    );
    let config = gatehouse_config::load_str(
        Path::new("config.yaml"),
        &text,
        &HashMap::<String, String>::new(),
    )
    .unwrap_or_else(|e| panic!("policy does not load:\n{e}\n---\n{text}"));
    Policy::for_route(
        &config.routes[0],
        &config.allowed_domains,
        &config.allowed_groups,
    )
}

/// Compiles `policy:` given as a flow-style YAML value.
fn policy(yaml: &str) -> Policy {
    route_policy(&format!("    policy: {yaml}\n"))
}

/// A request, with owned values so rows can build it inline.
#[derive(Clone)]
struct Req {
    user: &'static str,
    email: &'static str,
    verified: bool,
    groups: Vec<String>,
    claims: Vec<(&'static str, Vec<String>)>,
    method: &'static str,
    path: &'static str,
    /// `YYYY-MM-DDTHH:MM` in UTC.
    at: &'static str,
}

fn req(email: &'static str) -> Req {
    Req {
        user: "u-123",
        email,
        verified: true,
        groups: vec![],
        claims: vec![],
        method: "GET",
        path: "/",
        // A Friday.
        at: "2026-11-27T10:00",
    }
}

impl Req {
    fn unverified(mut self) -> Self {
        self.verified = false;
        self
    }
    fn groups(mut self, g: &[&str]) -> Self {
        self.groups = g.iter().map(|s| s.to_string()).collect();
        self
    }
    fn claim(mut self, name: &'static str, values: &[&str]) -> Self {
        self.claims
            .push((name, values.iter().map(|s| s.to_string()).collect()));
        self
    }
    fn method(mut self, m: &'static str) -> Self {
        self.method = m;
        self
    }
    fn path(mut self, p: &'static str) -> Self {
        self.path = p;
        self
    }
    fn user(mut self, u: &'static str) -> Self {
        self.user = u;
        self
    }
    fn at(mut self, t: &'static str) -> Self {
        self.at = t;
        self
    }

    fn decide(&self, policy: &Policy) -> Decision {
        let time: jiff::Timestamp = format!("{}:00Z", self.at).parse().expect("time");
        let claims: Vec<Claim<'_>> = self
            .claims
            .iter()
            .map(|(name, values)| Claim {
                name,
                values: ClaimValues::Many(values),
            })
            .collect();
        policy.evaluate(&Facts {
            user: self.user,
            email: self.email,
            email_verified: self.verified,
            domain_verified: self.verified,
            groups: &self.groups,
            claims: &claims,
            method: self.method,
            path: self.path,
            time: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(time.as_second() as u64),
        })
    }
}

/// Runs rows of `(what, policy, request, allowed?)`.
fn table(rows: &[(&str, &str, Req, bool)]) {
    let mut failed = Vec::new();
    for (what, yaml, r, want) in rows {
        let d = r.decide(&policy(yaml));
        if d.is_allow() != *want {
            failed.push(format!(
                "{what}: {yaml} for {} gave {d:?}, expected {}",
                r.email,
                if *want { "allow" } else { "deny" }
            ));
        }
    }
    assert!(failed.is_empty(), "\n{}", failed.join("\n"));
}

const ALICE: &str = "alice@example.com";

#[test]
fn string_matchers_on_email() {
    table(&[
        (
            "is",
            "{allow: {or: [email: {is: alice@example.com}]}}",
            req(ALICE),
            true,
        ),
        (
            "is other",
            "{allow: {or: [email: {is: bob@example.com}]}}",
            req(ALICE),
            false,
        ),
        (
            "short form means is",
            "{allow: {or: [email: alice@example.com]}}",
            req(ALICE),
            true,
        ),
        (
            "is ignores case",
            "{allow: {or: [email: Alice@Example.COM]}}",
            req("ALICE@example.com"),
            true,
        ),
        (
            "starts_with",
            "{allow: {or: [email: {starts_with: alice@}]}}",
            req(ALICE),
            true,
        ),
        (
            "starts_with no",
            "{allow: {or: [email: {starts_with: bob@}]}}",
            req(ALICE),
            false,
        ),
        (
            "ends_with",
            "{allow: {or: [email: {ends_with: '@example.com'}]}}",
            req(ALICE),
            true,
        ),
        (
            "ends_with is not a suffix of the domain only",
            "{allow: {or: [email: {ends_with: '@example.com'}]}}",
            req("x@evilexample.com"),
            false,
        ),
        (
            "contains",
            "{allow: {or: [email: {contains: ice@ex}]}}",
            req(ALICE),
            true,
        ),
        (
            "contains no",
            "{allow: {or: [email: {contains: bob}]}}",
            req(ALICE),
            false,
        ),
        (
            "in",
            "{allow: {or: [email: {in: [bob@example.com, alice@example.com]}]}}",
            req(ALICE),
            true,
        ),
        (
            "in no",
            "{allow: {or: [email: {in: [bob@example.com]}]}}",
            req(ALICE),
            false,
        ),
        (
            "not_in",
            "{allow: {or: [email: {not_in: [bob@example.com]}]}}",
            req(ALICE),
            true,
        ),
        (
            "not_in no",
            "{allow: {or: [email: {not_in: [alice@example.com]}]}}",
            req(ALICE),
            false,
        ),
        (
            "several matchers must all hold",
            "{allow: {or: [email: {starts_with: alice, ends_with: example.com}]}}",
            req(ALICE),
            true,
        ),
        (
            "several matchers, one fails",
            "{allow: {or: [email: {starts_with: alice, ends_with: evil.test}]}}",
            req(ALICE),
            false,
        ),
    ]);
}

#[test]
fn string_matchers_on_domain_user_method_and_path() {
    table(&[
        (
            "domain is",
            "{allow: {or: [domain: {is: example.com}]}}",
            req(ALICE),
            true,
        ),
        (
            "domain is exact, not a suffix",
            "{allow: {or: [domain: example.com]}}",
            req("x@sub.example.com"),
            false,
        ),
        (
            "domain ends_with covers subdomains",
            "{allow: {or: [domain: {ends_with: .example.com}]}}",
            req("x@sub.example.com"),
            true,
        ),
        (
            "user is",
            "{allow: {or: [user: {is: u-123}]}}",
            req(ALICE),
            true,
        ),
        (
            "user is case-sensitive",
            "{allow: {or: [user: U-123]}}",
            req(ALICE),
            false,
        ),
        (
            "user starts_with",
            "{allow: {or: [user: {starts_with: u-}]}}",
            req(ALICE).user("u-9"),
            true,
        ),
        (
            "http_method is (written lower-case)",
            "{allow: {or: [http_method: get]}}",
            req(ALICE),
            true,
        ),
        (
            "http_method is other",
            "{allow: {or: [http_method: POST]}}",
            req(ALICE),
            false,
        ),
        (
            "http_method in",
            "{allow: {or: [http_method: {in: [GET, HEAD]}]}}",
            req(ALICE).method("HEAD"),
            true,
        ),
        (
            "http_method not_in",
            "{allow: {or: [http_method: {not_in: [GET, HEAD]}]}}",
            req(ALICE).method("DELETE"),
            true,
        ),
        (
            "http_path is",
            "{allow: {or: [http_path: /]}}",
            req(ALICE),
            true,
        ),
        (
            "http_path starts_with",
            "{allow: {or: [http_path: {starts_with: /api/}]}}",
            req(ALICE).path("/api/x"),
            true,
        ),
        (
            "http_path starts_with no",
            "{allow: {or: [http_path: {starts_with: /api/}]}}",
            req(ALICE).path("/apix"),
            false,
        ),
        (
            "http_path is case-sensitive",
            "{allow: {or: [http_path: {is: /Admin}]}}",
            req(ALICE).path("/admin"),
            false,
        ),
        (
            "http_path ends_with",
            "{allow: {or: [http_path: {ends_with: .json}]}}",
            req(ALICE).path("/a/b.json"),
            true,
        ),
        (
            "http_path contains",
            "{allow: {or: [http_path: {contains: /v2/}]}}",
            req(ALICE).path("/api/v2/x"),
            true,
        ),
    ]);
}

#[test]
fn list_matchers_on_groups_and_claims() {
    let admin = || req(ALICE).groups(&["admins@example.com", "devs@example.com"]);
    table(&[
        (
            "groups has",
            "{allow: {or: [groups: {has: admins@example.com}]}}",
            admin(),
            true,
        ),
        (
            "groups short form means has",
            "{allow: {or: [groups: devs@example.com]}}",
            admin(),
            true,
        ),
        (
            "groups has no",
            "{allow: {or: [groups: {has: ops@example.com}]}}",
            admin(),
            false,
        ),
        (
            "groups has is exact",
            "{allow: {or: [groups: {has: Admins@example.com}]}}",
            admin(),
            false,
        ),
        (
            "groups is: exactly that one group",
            "{allow: {or: [groups: {is: admins@example.com}]}}",
            admin(),
            false,
        ),
        (
            "groups is, one group",
            "{allow: {or: [groups: {is: admins@example.com}]}}",
            req(ALICE).groups(&["admins@example.com"]),
            true,
        ),
        (
            "groups exclude",
            "{allow: {or: [groups: {exclude: contractors}]}}",
            admin(),
            true,
        ),
        (
            "groups exclude no",
            "{allow: {or: [groups: {exclude: devs@example.com}]}}",
            admin(),
            false,
        ),
        (
            "no groups: has fails",
            "{allow: {or: [groups: admins@example.com]}}",
            req(ALICE),
            false,
        ),
        (
            "claim short form means has",
            "{allow: {or: ['claim/department': engineering]}}",
            req(ALICE).claim("department", &["engineering"]),
            true,
        ),
        (
            "claim has among several",
            "{allow: {or: ['claim/roles': {has: editor}]}}",
            req(ALICE).claim("roles", &["viewer", "editor"]),
            true,
        ),
        (
            "claim missing",
            "{allow: {or: ['claim/department': engineering]}}",
            req(ALICE),
            false,
        ),
        (
            "claim other value",
            "{allow: {or: ['claim/department': engineering]}}",
            req(ALICE).claim("department", &["sales"]),
            false,
        ),
        (
            "claim exclude when missing",
            "{allow: {or: ['claim/department': {exclude: sales}]}}",
            req(ALICE),
            true,
        ),
        (
            "claim/email admits a verified address",
            "{allow: {or: ['claim/email': alice@example.com]}}",
            req(ALICE),
            true,
        ),
        (
            "claim/email never admits an unverified address (as `email` does not)",
            "{allow: {or: ['claim/email': alice@example.com]}}",
            req(ALICE).unverified(),
            false,
        ),
        (
            "claim/email in a deny block still refuses an unverified address",
            "[{allow: {or: [authenticated_user: true]}}, {deny: {or: ['claim/email': alice@example.com]}}]",
            req(ALICE).unverified(),
            false,
        ),
    ]);
}

#[test]
fn accept_reject_and_authenticated_user() {
    table(&[
        ("accept", "{allow: {or: [accept: true]}}", req(ALICE), true),
        ("reject", "{allow: {or: [reject: true]}}", req(ALICE), false),
        (
            "authenticated_user",
            "{allow: {or: [authenticated_user: true]}}",
            req(ALICE),
            true,
        ),
        (
            "authenticated_user admits an unverified address",
            "{allow: {or: [authenticated_user: true]}}",
            req(ALICE).unverified(),
            true,
        ),
    ]);
}

#[test]
fn day_of_week_and_time_of_day_with_time_zones() {
    // 2026-11-27 is a Friday.
    table(&[
        (
            "mon-fri on a Friday",
            "{allow: {or: [day_of_week: mon-fri]}}",
            req(ALICE),
            true,
        ),
        (
            "mon-fri on a Saturday",
            "{allow: {or: [day_of_week: mon-fri]}}",
            req(ALICE).at("2026-11-28T10:00"),
            false,
        ),
        (
            "list of days",
            "{allow: {or: [day_of_week: 'sat,sun']}}",
            req(ALICE).at("2026-11-29T10:00"),
            true,
        ),
        (
            "full names and ranges over the weekend",
            "{allow: {or: [day_of_week: friday-monday]}}",
            req(ALICE).at("2026-11-29T10:00"),
            true,
        ),
        (
            "star",
            "{allow: {or: [day_of_week: '*']}}",
            req(ALICE),
            true,
        ),
        (
            "Friday 23:30 UTC is Saturday in Tokyo",
            "{allow: {or: [day_of_week: {days: sat, timezone: Asia/Tokyo}]}}",
            req(ALICE).at("2026-11-27T23:30"),
            true,
        ),
        (
            "inside the window",
            "{allow: {or: [time_of_day: {timezone: UTC, after: '9:00', before: '17:00'}]}}",
            req(ALICE),
            true,
        ),
        (
            "after is inclusive",
            "{allow: {or: [time_of_day: {timezone: UTC, after: '10:00'}]}}",
            req(ALICE),
            true,
        ),
        (
            "before is exclusive",
            "{allow: {or: [time_of_day: {timezone: UTC, before: '10:00'}]}}",
            req(ALICE),
            false,
        ),
        (
            "12-hour clock",
            "{allow: {or: [time_of_day: {timezone: UTC, after: '9 AM', before: '5:30 PM'}]}}",
            req(ALICE).at("2026-11-27T17:29"),
            true,
        ),
        (
            "10:00 UTC is 05:00 in New York",
            "{allow: {or: [time_of_day: {timezone: America/New_York, after: '9:00', before: '17:00'}]}}",
            req(ALICE),
            false,
        ),
        (
            "15:00 UTC is 10:00 in New York",
            "{allow: {or: [time_of_day: {timezone: America/New_York, after: '9:00', before: '17:00'}]}}",
            req(ALICE).at("2026-11-27T15:00"),
            true,
        ),
        (
            "daylight saving: 13:00 UTC is 09:00 in New York in July",
            "{allow: {or: [time_of_day: {timezone: America/New_York, after: '9:00'}]}}",
            req(ALICE).at("2026-07-01T13:00"),
            true,
        ),
    ]);
}

#[test]
fn logical_operators_follow_pomerium() {
    let both = || req(ALICE).groups(&["admins"]);
    let one = || req(ALICE);
    let neither = || req("eve@evil.test");
    let a_b = "[domain: example.com, groups: admins]";
    let rows: Vec<(String, Req, bool)> = vec![
        (format!("{{allow: {{and: {a_b}}}}}"), both(), true),
        (format!("{{allow: {{and: {a_b}}}}}"), one(), false),
        (format!("{{allow: {{or: {a_b}}}}}"), one(), true),
        (format!("{{allow: {{or: {a_b}}}}}"), neither(), false),
        // not = none holds (¬A ∧ ¬B).
        (format!("{{allow: {{not: {a_b}}}}}"), neither(), true),
        (format!("{{allow: {{not: {a_b}}}}}"), one(), false),
        (format!("{{allow: {{not: {a_b}}}}}"), both(), false),
        // nor = not all hold (¬A ∨ ¬B).
        (format!("{{allow: {{nor: {a_b}}}}}"), neither(), true),
        (format!("{{allow: {{nor: {a_b}}}}}"), one(), true),
        (format!("{{allow: {{nor: {a_b}}}}}"), both(), false),
    ];
    let rows: Vec<(&str, &str, Req, bool)> = rows
        .iter()
        .map(|(y, r, w)| ("operator", y.as_str(), r.clone(), *w))
        .collect();
    table(&rows);
}

#[test]
fn operators_nest_to_any_depth() {
    // Allow example.com people who are admins or on a GET, but never on /admin unless in ops.
    let yaml = "{allow: {and: [domain: example.com, {or: [groups: admins, http_method: GET]}, \
                {nor: [http_path: {starts_with: /admin}, {not: [groups: ops]}]}]}}";
    table(&[
        ("GET /", yaml, req(ALICE), true),
        ("POST / not admin", yaml, req(ALICE).method("POST"), false),
        (
            "POST / admin",
            yaml,
            req(ALICE).method("POST").groups(&["admins"]),
            true,
        ),
        (
            "GET /admin not ops",
            yaml,
            req(ALICE).path("/admin/x"),
            false,
        ),
        (
            "GET /admin ops",
            yaml,
            req(ALICE).path("/admin/x").groups(&["ops"]),
            true,
        ),
        ("other domain", yaml, req("eve@evil.test"), false),
        (
            "depth 6",
            "{allow: {not: [{not: [{or: [{and: [{nor: [{not: [email: alice@example.com]}]}]}]}]}]}}",
            req(ALICE),
            true,
        ),
    ]);
}

#[test]
fn several_operators_in_one_block_hold_if_any_holds() {
    let yaml = "{allow: {and: ['claim/family_name': Smith], or: [domain: a.test, domain: b.test]}}";
    table(&[
        (
            "the and",
            yaml,
            req("x@c.test").claim("family_name", &["Smith"]),
            true,
        ),
        ("the or", yaml, req("x@b.test"), true),
        ("neither", yaml, req("x@c.test"), false),
    ]);
}

#[test]
fn deny_wins_over_allow_and_nothing_allowed_means_deny() {
    let p =
        policy("[{allow: {or: [domain: example.com]}}, {deny: {or: [email: bob@example.com]}}]");
    assert_eq!(
        req("bob@example.com").decide(&p),
        Decision::Deny(Reason::DenyBlockMatched {
            block: 1,
            criterion: Some("your email address is bob@example.com".into())
        })
    );
    assert!(req(ALICE).decide(&p).is_allow());
    assert_eq!(
        req("eve@evil.test").decide(&p),
        Decision::Deny(Reason::NotAllowed {
            email: "eve@evil.test".into()
        })
    );
    // Deny wins whatever the order of the blocks, and over every shortcut.
    let p = route_policy(
        "    allow_any_authenticated_user: true\n    allowed_groups: [admins]\n    policy:\n      \
         - deny: {or: [http_method: DELETE]}\n      - allow: {or: [accept: true]}\n",
    );
    assert!(
        !req(ALICE)
            .method("DELETE")
            .groups(&["admins"])
            .decide(&p)
            .is_allow()
    );
    assert!(req(ALICE).decide(&p).is_allow());
}

#[test]
fn only_deny_blocks_let_nobody_in() {
    let p = policy("{deny: {or: [email: bob@example.com]}}");
    assert_eq!(req(ALICE).decide(&p), Decision::Deny(Reason::NoPolicy));
}

#[test]
fn allowed_groups_on_a_route() {
    let p = route_policy("    allowed_groups: [admins@example.com]\n");
    assert_eq!(
        req(ALICE).groups(&["admins@example.com"]).decide(&p),
        Decision::Allow(Reason::GroupAllowed {
            group: "admins@example.com".into()
        })
    );
    assert!(
        !req(ALICE)
            .groups(&["devs@example.com"])
            .decide(&p)
            .is_allow()
    );
    assert!(!req(ALICE).decide(&p).is_allow());
}

#[test]
fn an_unverified_address_never_helps_a_request() {
    let eve = || req("eve@example.com").unverified();
    table(&[
        (
            "allow domain",
            "{allow: {or: [domain: example.com]}}",
            eve(),
            false,
        ),
        (
            "allow email",
            "{allow: {or: [email: eve@example.com]}}",
            eve(),
            false,
        ),
        (
            "allow not(domain evil)",
            "{allow: {not: [domain: evil.test]}}",
            eve(),
            false,
        ),
        (
            "allow nor(domain evil)",
            "{allow: {nor: [domain: evil.test]}}",
            eve(),
            false,
        ),
        (
            "allow not(not(domain))",
            "{allow: {not: [{not: [domain: example.com]}]}}",
            eve(),
            false,
        ),
        (
            "groups still count",
            "{allow: {or: [groups: admins]}}",
            eve().groups(&["admins"]),
            true,
        ),
    ]);
    // A deny matches the address as written, verified or not...
    let p = route_policy(
        "    allow_any_authenticated_user: true\n    policy: {deny: {or: [domain: example.com]}}\n",
    );
    assert!(!eve().decide(&p).is_allow());
    // ...and claiming an address cannot lift a deny.
    let p = route_policy(
        "    allow_any_authenticated_user: true\n    policy: {deny: {not: [domain: example.com]}}\n",
    );
    assert!(!eve().decide(&p).is_allow());
    assert!(req("bob@example.com").decide(&p).is_allow());
    assert!(!req("x@evil.test").decide(&p).is_allow());
}

#[test]
fn reasons_name_the_block_and_criterion_in_words() {
    let p = policy(
        "[{allow: {or: [groups: admins, domain: example.com]}}, \
         {allow: {and: [domain: a.test, http_method: GET]}}, \
         {deny: {or: [time_of_day: {timezone: Europe/Paris, after: '22:00'}]}}, \
         {deny: {not: [http_path: {starts_with: /}]}}]",
    );
    let cases = [
        (
            req(ALICE),
            "allow-block-matched",
            "allowed by rule 1 of this route's policy: your email domain is example.com",
        ),
        (
            req("x@evil.test").groups(&["admins"]),
            "allow-block-matched",
            "allowed by rule 1 of this route's policy: your groups include admins",
        ),
        (
            req("x@a.test"),
            "allow-block-matched",
            "allowed by rule 2 of this route's policy",
        ),
        (
            req(ALICE).at("2026-11-27T22:30"),
            "deny-block-matched",
            "refused by rule 3 of this route's policy (a deny rule): the time is after 22:00 \
             (Europe/Paris)",
        ),
        (
            req(ALICE).path("x"),
            "deny-block-matched",
            "refused by rule 4 of this route's policy (a deny rule)",
        ),
        (
            req("x@evil.test"),
            "not-allowed",
            "no rule of this route allows x@evil.test",
        ),
        (
            req("x@evil.test").unverified(),
            "email-not-verified",
            "your email address x@evil.test is not verified by the identity provider, so email \
             and domain rules cannot admit you",
        ),
    ];
    for (r, code, sentence) in cases {
        let d = r.decide(&p);
        assert_eq!(
            (d.reason().code(), d.reason().to_string().as_str()),
            (code, sentence)
        );
    }
}

#[test]
fn every_criterion_describes_itself() {
    let cases = [
        ("accept: true", "it lets every request through"),
        ("authenticated_user: true", "you are signed in"),
        (
            "email: {in: [alice@example.com, b@x.test]}",
            "your email address is one of the 2 listed",
        ),
        ("user: {starts_with: u-}", "your user id starts with u-"),
        (
            "http_method: {not_in: [DELETE]}",
            "the request method is none of the 1 listed",
        ),
        ("http_path: {contains: /}", "the request path contains /"),
        (
            "'claim/dept': {exclude: sales}",
            "your `dept` claim does not include sales",
        ),
        ("day_of_week: fri", "the day is Fri (UTC)"),
    ];
    for (criterion, says) in cases {
        let p = policy(&format!("{{allow: {{or: [{{{criterion}}}]}}}}"));
        let d = req(ALICE).decide(&p);
        assert_eq!(
            d.reason().to_string(),
            format!("allowed by rule 1 of this route's policy: {says}"),
            "{criterion}"
        );
    }
}
