//! Cost of one decision under a realistic policy (issue 4: 10 rules, groups of 50; target
//! under 1 µs). Run with `cargo bench -p gatehouse-policy`. On the 2-core dev machine
//! (2026-11-27): about 320 ns for the allow below and 250 ns for the deny.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse_policy::{Claim, ClaimValues, Facts, Policy};

/// Ten rules of the kinds a team writes: blocked people, method and path guards, office
/// hours for contractors, group and claim based access.
const POLICY: &str = r#"
      - deny:
          or:
            - email: {in: [x1@example.com, x2@example.com, x3@example.com, x4@example.com, x5@example.com]}
            - domain: {in: [evil.test, spam.test]}
      - deny:
          and:
            - http_method: {in: [DELETE, PUT]}
            - not: [{groups: {has: g-admins}}, {groups: {has: g-ops}}]
      - deny:
          and:
            - http_path: {starts_with: /admin}
            - nor: [{groups: {has: g-admins}}]
      - deny:
          and:
            - groups: {has: g-contractors}
            - or:
                - day_of_week: {days: sat-sun, timezone: Europe/Paris}
                - time_of_day: {timezone: Europe/Paris, before: "8:00"}
                - time_of_day: {timezone: Europe/Paris, after: "20:00"}
      - allow:
          and:
            - domain: {is: partner.test}
            - groups: {has: g-partners}
      - allow:
          or:
            - groups: {has: g-admins}
            - groups: {has: g-ops}
      - allow:
          and:
            - "claim/department": {has: engineering}
            - email: {ends_with: "@example.com"}
            - groups: {has: g-49}
      - allow:
          and:
            - http_method: {in: [GET, HEAD]}
            - groups: {has: g-readers}
      - allow:
          or:
            - email: {in: [ceo@example.com, cto@example.com]}
      - allow:
          and:
            - domain: example.com
            - groups: {has: g-all-staff}
"#;

fn policy() -> Policy {
    let text = format!(
        "cookie_secret: AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\nidp_client_id: a\n\
         idp_client_secret: b\nroutes:\n  - from: https://app.example.com\n    to: \
         http://localhost:1\n    policy:{POLICY}"
    );
    let config = gatehouse_config::load_str(
        Path::new("bench.yaml"),
        &text,
        &HashMap::<String, String>::new(),
    )
    .expect("the bench policy loads");
    Policy::for_route(&config.routes[0], &[], &[])
}

fn bench(c: &mut Criterion) {
    let policy = policy();
    // 50 groups; the one that admits is the last.
    let groups: Vec<String> = (0..50).map(|i| format!("g-{i}")).collect();
    let department = [String::from("engineering")];
    let claims = [Claim {
        name: "department",
        values: ClaimValues::Many(&department),
    }];
    let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let allowed = Facts {
        user: "u-1",
        email: "alice@example.com",
        email_verified: true,
        domain_verified: true,
        groups: &groups,
        claims: &claims,
        method: "POST",
        path: "/api/session",
        time,
    };
    assert!(policy.evaluate(&allowed).is_allow());
    let denied = Facts {
        email: "mallory@elsewhere.test",
        claims: &[],
        ..allowed
    };
    assert!(!policy.evaluate(&denied).is_allow());

    c.bench_function("decision/allow (10 rules, 50 groups)", |b| {
        b.iter(|| policy.evaluate(black_box(&allowed)))
    });
    c.bench_function(
        "decision/deny, every rule tried (10 rules, 50 groups)",
        |b| b.iter(|| policy.evaluate(black_box(&denied))),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
