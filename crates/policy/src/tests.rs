use super::*;
use gatehouse_config::{
    Condition, Criterion, CriterionKind, Origin, PolicyBlock, PolicySpec, RouteFrom, StringMatcher,
    Url,
};

/// The criteria the first tests were written with.
#[derive(Clone, Copy)]
enum Kind {
    Domain,
    Email,
}

fn route() -> Route {
    Route {
        index: 0,
        from: RouteFrom {
            scheme: "https".into(),
            host: "a.test".into(),
            port: None,
        },
        prefix: None,
        path: None,
        to: gatehouse_config::Upstream::Url(Url::parse("http://127.0.0.1:1").unwrap()),
        pass_identity_headers: false,
        preserve_host_header: false,
        cors_allow_preflight: false,
        idp_identity_tokens: false,
        idp_token_audiences: vec![],
        allow_public_unauthenticated_access: false,
        allow_any_authenticated_user: false,
        allowed_domains: vec![],
        allowed_users: vec![],
        allowed_groups: vec![],
        policy: None,
        policy_name: None,
        origin: Origin::Default,
    }
}

fn block(action: Action, op: LogicalOp, crit: &[(Kind, &str)]) -> PolicyBlock {
    PolicyBlock {
        action,
        rule: Condition::Op {
            op,
            children: crit
                .iter()
                .map(|(k, v)| {
                    let m = StringMatcher {
                        ops: vec![gatehouse_config::StringOp::Is(v.to_string())],
                    };
                    Condition::Criterion(Criterion {
                        kind: match k {
                            Kind::Domain => CriterionKind::Domain(m),
                            Kind::Email => CriterionKind::Email(m),
                        },
                        origin: Origin::Default,
                    })
                })
                .collect(),
            origin: Origin::Default,
        },
        origin: Origin::Default,
    }
}

fn verified(email: &str) -> Facts<'_> {
    Facts::signed_in(email, true)
}

#[test]
fn top_level_domains_apply_to_route_without_rules() {
    let p = Policy::for_route(&route(), &["Example.com".into()], &[]);
    assert_eq!(
        p.evaluate(&verified("alice@EXAMPLE.com")),
        Decision::Allow(Reason::DomainAllowed {
            domain: "example.com".into()
        })
    );
    assert_eq!(
        p.evaluate(&verified("mallory@evil.test")),
        Decision::Deny(Reason::NotAllowed {
            email: "mallory@evil.test".into()
        })
    );
}

#[test]
fn domain_match_is_exact_not_suffix() {
    let p = Policy::allowed_domains(&["example.com".into()]);
    assert!(!p.evaluate(&verified("x@evilexample.com")).is_allow());
    assert!(!p.evaluate(&verified("x@example.com.evil.test")).is_allow());
    assert!(!p.evaluate(&verified("example.com")).is_allow());
}

#[test]
fn unverified_email_is_never_admitted_by_email_rules() {
    let p = Policy::allowed_domains(&["example.com".into()]);
    let d = p.evaluate(&Facts::signed_in("eve@example.com", false));
    assert_eq!(
        d,
        Decision::Deny(Reason::EmailNotVerified {
            email: "eve@example.com".into()
        })
    );
    assert!(d.reason().to_string().contains("not verified"));
}

#[test]
fn route_policy_replaces_top_level_domains() {
    let mut r = route();
    r.policy = Some(PolicySpec {
        blocks: vec![block(
            Action::Allow,
            LogicalOp::Or,
            &[(Kind::Email, "bob@example.com")],
        )],
    });
    let p = Policy::for_route(&r, &["example.com".into()], &[]);
    assert!(p.evaluate(&verified("bob@example.com")).is_allow());
    assert!(!p.evaluate(&verified("alice@example.com")).is_allow());
}

#[test]
fn deny_wins_over_allow() {
    let mut r = route();
    r.policy = Some(PolicySpec {
        blocks: vec![
            block(
                Action::Allow,
                LogicalOp::Or,
                &[(Kind::Domain, "example.com")],
            ),
            block(
                Action::Deny,
                LogicalOp::Or,
                &[(Kind::Email, "bob@example.com")],
            ),
        ],
    });
    let p = Policy::for_route(&r, &[], &[]);
    assert_eq!(
        p.evaluate(&verified("bob@example.com")),
        Decision::Deny(Reason::DenyBlockMatched {
            block: 1,
            criterion: Some("your email address is bob@example.com".into())
        })
    );
    assert_eq!(
        p.evaluate(&verified("alice@example.com")),
        Decision::Allow(Reason::AllowBlockMatched {
            block: 0,
            criterion: Some("your email domain is example.com".into())
        })
    );
}

#[test]
fn and_block_needs_every_criterion() {
    let mut r = route();
    r.policy = Some(PolicySpec {
        blocks: vec![block(
            Action::Allow,
            LogicalOp::And,
            &[
                (Kind::Domain, "example.com"),
                (Kind::Email, "alice@example.com"),
            ],
        )],
    });
    let p = Policy::for_route(&r, &[], &[]);
    assert!(p.evaluate(&verified("alice@example.com")).is_allow());
    assert!(!p.evaluate(&verified("bob@example.com")).is_allow());
}

#[test]
fn route_without_any_rule_lets_nobody_in() {
    let p = Policy::for_route(&route(), &[], &[]);
    assert_eq!(
        p.evaluate(&verified("alice@example.com")),
        Decision::Deny(Reason::NoPolicy)
    );
}

#[test]
fn any_authenticated_user_admits_unverified_too() {
    let mut r = route();
    r.allow_any_authenticated_user = true;
    let p = Policy::for_route(&r, &["example.com".into()], &[]);
    assert!(p.evaluate(&Facts::signed_in("x@y.z", false)).is_allow());
}

#[test]
fn allowed_users_on_route() {
    let mut r = route();
    r.allowed_users = vec!["Bob@Example.com".into()];
    let p = Policy::for_route(&r, &["example.com".into()], &[]);
    assert!(p.evaluate(&verified("bob@example.com")).is_allow());
    assert!(
        !p.evaluate(&verified("alice@example.com")).is_allow(),
        "route rules replace the top-level domains"
    );
}

#[test]
fn deny_rules_apply_to_unverified_addresses_too() {
    let mut r = route();
    r.allow_any_authenticated_user = true;
    r.policy = Some(PolicySpec {
        blocks: vec![block(
            Action::Deny,
            LogicalOp::Or,
            &[(Kind::Domain, "contractors.example.com")],
        )],
    });
    let p = Policy::for_route(&r, &[], &[]);
    let unverified = Facts::signed_in("x@contractors.example.com", false);
    assert_eq!(
        p.evaluate(&unverified),
        Decision::Deny(Reason::DenyBlockMatched {
            block: 0,
            criterion: Some("your email domain is contractors.example.com".into())
        })
    );
    assert!(p.evaluate(&verified("alice@example.com")).is_allow());
}

// === explain ===

fn two_block_policy() -> Policy {
    let mut r = route();
    r.allowed_groups = vec!["ops".into()];
    r.policy = Some(PolicySpec {
        blocks: vec![
            block(
                Action::Allow,
                LogicalOp::Or,
                &[(Kind::Domain, "example.com"), (Kind::Email, "x@y.test")],
            ),
            block(
                Action::Deny,
                LogicalOp::Not,
                &[(Kind::Email, "bob@example.com")],
            ),
        ],
    });
    Policy::for_route(&r, &[], &[])
}

fn lines(t: &Trace) -> Vec<(usize, bool, &str)> {
    t.lines
        .iter()
        .map(|l| (l.depth, l.matched, l.text.as_str()))
        .collect()
}

#[test]
fn explain_traces_every_block_and_criterion_in_evaluation_order() {
    let p = two_block_policy();
    let facts = verified("bob@example.com");
    let (decision, trace) = p.explain(&facts);
    assert_eq!(decision, p.evaluate(&facts));
    assert!(decision.is_allow());
    assert_eq!(
        lines(&trace),
        vec![
            (0, false, "rule 2 (deny)"),
            (1, false, "not: none of these holds"),
            (2, true, "your email address is bob@example.com"),
            (0, false, "allowed_groups: your groups include one of ops"),
            (0, true, "rule 1 (allow)"),
            (1, true, "or: at least one of these holds"),
            (2, true, "your email domain is example.com"),
            // Traced although `or` stopped at the first match.
            (2, false, "your email address is x@y.test"),
        ]
    );
}

#[test]
fn explain_shows_the_deny_that_decided() {
    let p = two_block_policy();
    let facts = verified("eve@example.com");
    let (decision, trace) = p.explain(&facts);
    assert_eq!(decision.reason().code(), "deny-block-matched");
    assert_eq!(lines(&trace)[0], (0, true, "rule 2 (deny)"));
    assert_eq!(lines(&trace)[1], (1, true, "not: none of these holds"));
    let text = trace.to_string();
    assert!(text.starts_with("matched      rule 2 (deny)\n"), "{text}");
    assert!(
        text.contains("\n    not matched  your email address is bob@example.com\n"),
        "{text}"
    );
}

#[test]
fn explain_marks_unverified_addresses_in_shortcuts() {
    let p = Policy::allowed_domains(&["example.com".to_string()]);
    let facts = Facts::signed_in("alice@example.com", false);
    let (decision, trace) = p.explain(&facts);
    assert_eq!(decision.reason().code(), "email-not-verified");
    assert_eq!(trace.lines.len(), 1);
    assert!(!trace.lines[0].matched);
    assert!(trace.lines[0].text.contains("not verified"), "{trace}");
}

#[test]
fn explain_of_a_route_without_rules_says_so() {
    let p = Policy::for_route(&route(), &[], &[]);
    let (decision, trace) = p.explain(&verified("a@b.test"));
    assert_eq!(decision, Decision::Deny(Reason::NoPolicy));
    assert_eq!(lines(&trace), vec![(0, false, "this route has no rule")]);
}

// === groups that could not be looked up ===

fn groups_block(action: Action, op: LogicalOp, kind: CriterionKind) -> PolicyBlock {
    PolicyBlock {
        action,
        rule: Condition::Op {
            op,
            children: vec![Condition::Criterion(Criterion {
                kind,
                origin: Origin::Default,
            })],
            origin: Origin::Default,
        },
        origin: Origin::Default,
    }
}

fn has(group: &str) -> gatehouse_config::ListMatcher {
    gatehouse_config::ListMatcher {
        ops: vec![ListOp::Has(group.into())],
    }
}

#[test]
fn a_policy_uses_groups_through_allowed_groups_a_groups_criterion_or_the_groups_claim() {
    let mut r = route();
    r.allowed_domains = vec!["example.com".into()];
    assert!(!Policy::for_route(&r, &[], &[]).uses_groups());
    r.allowed_groups = vec!["admins".into()];
    assert!(Policy::for_route(&r, &[], &[]).uses_groups());

    let mut r = route();
    r.policy = Some(PolicySpec {
        blocks: vec![groups_block(
            Action::Deny,
            LogicalOp::Not,
            CriterionKind::Groups(has("staff")),
        )],
    });
    assert!(
        Policy::for_route(&r, &[], &[]).uses_groups(),
        "nested in a deny"
    );

    let claim = CriterionKind::Claim {
        name: "groups".into(),
        matcher: has("staff"),
    };
    let spec = PolicySpec {
        blocks: vec![groups_block(Action::Allow, LogicalOp::Or, claim)],
    };
    assert!(Policy::from_spec(&spec).uses_groups());
    let other_claim = CriterionKind::Claim {
        name: "department".into(),
        matcher: has("sales"),
    };
    let spec = PolicySpec {
        blocks: vec![groups_block(Action::Allow, LogicalOp::Or, other_claim)],
    };
    assert!(!Policy::from_spec(&spec).uses_groups());
}

#[test]
fn groups_unavailable_refuses_group_routes_and_leaves_others_alone() {
    let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
    let alice = Facts::signed_in("alice@example.com", true);

    let mut r = route();
    r.allowed_domains = vec!["example.com".into()];
    r.allowed_groups = vec!["admins".into()];
    let decision = Policy::for_route(&r, &[], &[]).evaluate_groups_unavailable(&alice, since);
    assert_eq!(
        decision,
        Decision::Deny(Reason::GroupsUnavailable { since })
    );
    assert_eq!(decision.reason().code(), "groups-unavailable");
    assert_eq!(
        decision.reason().to_string(),
        "your groups could not be checked: the group directory has not answered since \
         2027-01-15 08:00:00 UTC, and this route's rules depend on groups. Try again later"
    );

    let mut r = route();
    r.allowed_domains = vec!["example.com".into()];
    let decision = Policy::for_route(&r, &[], &[]).evaluate_groups_unavailable(&alice, since);
    assert_eq!(
        decision,
        Decision::Allow(Reason::DomainAllowed {
            domain: "example.com".into()
        })
    );
}

#[test]
fn top_level_allowed_groups_admit_on_routes_without_rules_and_count_as_using_groups() {
    let r = route();
    let p = Policy::for_route(&r, &[], &["admins@example.com".into()]);
    assert!(p.uses_groups());
    let groups = vec!["admins@example.com".to_string()];
    let mut alice = Facts::signed_in("alice@other.test", true);
    alice.groups = &groups;
    assert_eq!(
        p.evaluate(&alice),
        Decision::Allow(Reason::GroupAllowed {
            group: "admins@example.com".into()
        })
    );
    // A route with rules of its own ignores the top-level lists.
    let mut own = route();
    own.allowed_users = vec!["bob@example.com".into()];
    let p = Policy::for_route(&own, &[], &["admins@example.com".into()]);
    assert!(!p.evaluate(&alice).is_allow());
    assert!(!p.uses_groups());
}

// === from a person to facts ===

fn ann<'a>(groups: &'a [String], claims: &'a [(String, Vec<String>)]) -> Person<'a> {
    Person {
        sub: "u-ann",
        email: "ann@example.com",
        email_verified: true,
        domain_verified: true,
        name: None,
        iss: "https://idp.example.com",
        groups,
        claims,
    }
}

fn allow_one(kind: CriterionKind) -> Policy {
    Policy::from_spec(&PolicySpec {
        blocks: vec![groups_block(Action::Allow, LogicalOp::Or, kind)],
    })
}

fn claim_has(name: &str, value: &str) -> CriterionKind {
    CriterionKind::Claim {
        name: name.into(),
        matcher: has(value),
    }
}

fn names<'a>(facts: &Facts<'a>) -> Vec<&'a str> {
    facts.claims.iter().map(|c| c.name).collect()
}

#[test]
fn claim_email_from_a_person_matches_as_the_email_criterion_does() {
    let by_email = allow_one(CriterionKind::Email(StringMatcher {
        ops: vec![gatehouse_config::StringOp::Is("ann@example.com".into())],
    }));
    let by_claim = allow_one(claim_has("email", "ann@example.com"));
    let at = SystemTime::UNIX_EPOCH;
    let ann = ann(&[], &[]);
    let bob = Person {
        email: "bob@example.com",
        ..ann
    };
    for (who, want) in [(ann, true), (bob, false)] {
        let request = who.request("GET", "/", at);
        let facts = request.facts();
        assert_eq!(
            by_email.evaluate(&facts).is_allow(),
            want,
            "email, {}",
            who.email
        );
        assert_eq!(
            by_claim.evaluate(&facts).is_allow(),
            want,
            "claim/email, {}",
            who.email
        );
    }
}

#[test]
fn a_person_has_the_standard_claims_then_the_others_and_no_name_when_absent() {
    let groups = vec!["staff".to_string()];
    let claims = vec![("department".to_string(), vec!["sales".to_string()])];
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(60);
    let person = ann(&groups, &claims);
    let request = person.request("POST", "/a", at);
    let facts = request.facts();
    assert_eq!(
        names(&facts),
        [
            "sub",
            "email",
            "email_verified",
            "iss",
            "groups",
            "department"
        ]
    );
    assert_eq!(
        (facts.user, facts.email, facts.email_verified),
        ("u-ann", "ann@example.com", true)
    );
    assert_eq!((facts.method, facts.path, facts.time), ("POST", "/a", at));
    assert_eq!(facts.groups, groups.as_slice());

    // No name: `claim/name` cannot match, not even an empty one.
    let empty_name = allow_one(CriterionKind::Claim {
        name: "name".into(),
        matcher: gatehouse_config::ListMatcher {
            ops: vec![ListOp::Is(String::new())],
        },
    });
    assert!(!empty_name.evaluate(&facts).is_allow());

    let named = Person {
        name: Some("Ann"),
        ..person
    };
    let request = named.request("GET", "/", at);
    assert_eq!(
        names(&request.facts()),
        [
            "sub",
            "email",
            "email_verified",
            "name",
            "iss",
            "groups",
            "department"
        ]
    );
    assert!(
        allow_one(claim_has("name", "Ann"))
            .evaluate(&request.facts())
            .is_allow()
    );
    // Without other claims, the same standard claims (kept without allocating).
    let request = Person {
        claims: &[],
        ..named
    }
    .request("GET", "/", at);
    assert_eq!(names(&request.facts()), STANDARD_CLAIMS);
}

#[test]
fn another_claim_cannot_stand_in_for_a_standard_one() {
    let claims = vec![
        ("email".to_string(), vec!["boss@example.com".to_string()]),
        ("groups".to_string(), vec!["admins".to_string()]),
    ];
    let person = ann(&[], &claims);
    let request = person.request("GET", "/", SystemTime::UNIX_EPOCH);
    let facts = request.facts();
    assert_eq!(
        names(&facts),
        ["sub", "email", "email_verified", "iss", "groups"]
    );
    assert!(
        !allow_one(claim_has("email", "boss@example.com"))
            .evaluate(&facts)
            .is_allow()
    );
    assert!(
        !allow_one(claim_has("groups", "admins"))
            .evaluate(&facts)
            .is_allow()
    );
    assert!(
        allow_one(claim_has("email_verified", "true"))
            .evaluate(&facts)
            .is_allow()
    );
    assert!(
        allow_one(claim_has("iss", "https://idp.example.com"))
            .evaluate(&facts)
            .is_allow()
    );
}

#[test]
fn a_public_route_reason_has_its_code() {
    assert_eq!(Reason::PublicRoute.code(), "public-route");
    assert_eq!(
        Reason::PublicRoute.to_string(),
        "this route is public: anyone may use it, signed in or not"
    );
}

#[test]
fn an_address_whose_domain_is_not_vouched_for_passes_no_domain_rule() {
    // A consumer Google account registered with ann@example.com: her address is verified,
    // but Google's `hd` does not name example.com.
    let by_domain = allow_one(CriterionKind::Domain(StringMatcher {
        ops: vec![gatehouse_config::StringOp::Is("example.com".into())],
    }));
    let by_email = allow_one(CriterionKind::Email(StringMatcher {
        ops: vec![gatehouse_config::StringOp::Is("ann@example.com".into())],
    }));
    let at = SystemTime::UNIX_EPOCH;
    let workspace = ann(&[], &[]);
    let consumer = Person {
        domain_verified: false,
        ..workspace
    };
    let decide = |p: &Policy, who: Person<'_>| p.evaluate(&who.request("GET", "/", at).facts());
    assert!(decide(&by_domain, workspace).is_allow());
    let refused = decide(&by_domain, consumer);
    assert_eq!(
        refused,
        Decision::Deny(Reason::DomainNotVerified {
            email: "ann@example.com".into()
        })
    );
    assert!(refused.reason().to_string().contains("Google Workspace"));
    assert!(
        decide(&by_email, consumer).is_allow(),
        "her own address still speaks for her"
    );
    // A deny on the domain still fires for the unvouched account.
    let deny_domain = Policy::from_spec(&PolicySpec {
        blocks: vec![
            groups_block(Action::Allow, LogicalOp::Or, CriterionKind::Accept),
            groups_block(
                Action::Deny,
                LogicalOp::Or,
                CriterionKind::Domain(StringMatcher {
                    ops: vec![gatehouse_config::StringOp::Is("example.com".into())],
                }),
            ),
        ],
    });
    assert!(!decide(&deny_domain, consumer).is_allow());
}
