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
        to: Url::parse("http://127.0.0.1:1").unwrap(),
        pass_identity_headers: false,
        preserve_host_header: false,
        allow_public_unauthenticated_access: false,
        allow_any_authenticated_user: false,
        allowed_domains: vec![],
        allowed_users: vec![],
        allowed_groups: vec![],
        policy: None,
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
    let p = Policy::for_route(&route(), &["Example.com".into()]);
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
    let p = Policy::for_route(&r, &["example.com".into()]);
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
    let p = Policy::for_route(&r, &[]);
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
    let p = Policy::for_route(&r, &[]);
    assert!(p.evaluate(&verified("alice@example.com")).is_allow());
    assert!(!p.evaluate(&verified("bob@example.com")).is_allow());
}

#[test]
fn route_without_any_rule_lets_nobody_in() {
    let p = Policy::for_route(&route(), &[]);
    assert_eq!(
        p.evaluate(&verified("alice@example.com")),
        Decision::Deny(Reason::NoPolicy)
    );
}

#[test]
fn any_authenticated_user_admits_unverified_too() {
    let mut r = route();
    r.allow_any_authenticated_user = true;
    let p = Policy::for_route(&r, &["example.com".into()]);
    assert!(p.evaluate(&Facts::signed_in("x@y.z", false)).is_allow());
}

#[test]
fn allowed_users_on_route() {
    let mut r = route();
    r.allowed_users = vec!["Bob@Example.com".into()];
    let p = Policy::for_route(&r, &["example.com".into()]);
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
    let p = Policy::for_route(&r, &[]);
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
