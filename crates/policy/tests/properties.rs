//! Property tests of the policy language (issue 4): parsing any YAML value as a policy never
//! panics; `not(not(x))` decides like `x`; an `allow` of `accept` is overridden by any `deny`
//! that matches, checked against a small reference evaluator written from Pomerium's docs.

use std::collections::HashMap;
use std::path::Path;

use gatehouse_config::{
    Action, Condition, Criterion, CriterionKind, ListMatcher, ListOp, LogicalOp, Origin,
    PolicyBlock, PolicySpec, StringMatcher, StringOp,
};
use gatehouse_policy::{Decision, Facts, Policy, Reason};
use proptest::prelude::*;

const COOKIE_SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

// === arbitrary YAML ===

/// A YAML value, written out in flow style (JSON with quoted strings is valid YAML).
#[derive(Debug, Clone)]
enum Yaml {
    Scalar(String),
    List(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn write(&self, out: &mut String) {
        match self {
            Yaml::Scalar(s) => out.push_str(&quote(s)),
            Yaml::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Yaml::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&quote(k));
                    out.push_str(": ");
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => q.push_str(&format!("\\u{:04x}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Words of the language, so generated maps often look like real policies.
fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "allow", "deny", "and", "or", "not", "nor", "accept", "reject",
            "authenticated_user", "domain", "email", "user", "groups", "claim/x", "claim/",
            "http_method", "http_path", "day_of_week", "time_of_day", "is", "starts_with",
            "ends_with", "contains", "in", "not_in", "has", "exclude", "timezone", "after",
            "before", "days", "true", "false", "", "example.com", "a@b.c", "mon-fri", "9:00",
            "25:61", "UTC", "Europe/Paris", "Nowhere/City", "*", "~", "null", "${X}",
        ]).prop_map(String::from),
        1 => any::<String>(),
    ]
}

fn yaml() -> impl Strategy<Value = Yaml> {
    let leaf = word().prop_map(Yaml::Scalar);
    leaf.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Yaml::List),
            prop::collection::vec((word(), inner), 0..4).prop_map(Yaml::Map),
        ]
    })
}

fn load(policy_yaml: &str) -> Result<gatehouse_config::Config, gatehouse_config::ConfigErrors> {
    let text = format!(
        "cookie_secret: {COOKIE_SECRET}\nidp_client_id: a\nidp_client_secret: b\nroutes:\n  \
         - from: https://app.example.com\n    to: http://localhost:1\n    policy: {policy_yaml}\n"
    );
    gatehouse_config::load_str(
        Path::new("config.yaml"),
        &text,
        &HashMap::<String, String>::new(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsing_any_yaml_value_as_a_policy_never_panics(value in yaml()) {
        let mut text = String::new();
        value.write(&mut text);
        match load(&text) {
            Ok(config) => {
                // What loads must compile and evaluate without panicking too.
                let policy = Policy::for_route(&config.routes[0], &[], &[]);
                let _ = policy.evaluate(&Facts::signed_in("a@b.c", true));
            }
            Err(errors) => {
                prop_assert!(!errors.errors.is_empty());
                for e in &errors.errors {
                    prop_assert!(e.to_string().starts_with("config.yaml"), "{e}");
                }
            }
        }
    }

    #[test]
    fn parsing_any_text_as_a_policy_never_panics(text in any::<String>()) {
        let _ = load(&text);
    }
}

// === arbitrary conditions and requests ===

fn is(v: &str) -> StringMatcher {
    StringMatcher {
        ops: vec![StringOp::Is(v.to_string())],
    }
}

fn leaf(kind: CriterionKind) -> Condition {
    Condition::Criterion(Criterion {
        kind,
        origin: Origin::Default,
    })
}

fn op(op: LogicalOp, children: Vec<Condition>) -> Condition {
    Condition::Op {
        op,
        children,
        origin: Origin::Default,
    }
}

fn criterion() -> impl Strategy<Value = Condition> {
    prop_oneof![
        Just(leaf(CriterionKind::Accept)),
        Just(leaf(CriterionKind::Reject)),
        Just(leaf(CriterionKind::AuthenticatedUser)),
        prop::sample::select(vec!["example.com", "evil.test"])
            .prop_map(|d| leaf(CriterionKind::Domain(is(d)))),
        prop::sample::select(vec!["alice@example.com", "eve@evil.test"])
            .prop_map(|e| leaf(CriterionKind::Email(is(e)))),
        prop::sample::select(vec!["admins", "devs"]).prop_map(|g| leaf(CriterionKind::Groups(
            ListMatcher {
                ops: vec![ListOp::Has(g.to_string())]
            }
        ))),
        prop::sample::select(vec!["GET", "POST"])
            .prop_map(|m| leaf(CriterionKind::HttpMethod(is(m)))),
    ]
}

fn condition() -> impl Strategy<Value = Condition> {
    criterion().prop_recursive(5, 40, 4, |inner| {
        (
            prop::sample::select(vec![
                LogicalOp::And,
                LogicalOp::Or,
                LogicalOp::Not,
                LogicalOp::Nor,
            ]),
            prop::collection::vec(inner, 1..4),
        )
            .prop_map(|(o, children)| op(o, children))
    })
}

#[derive(Debug, Clone)]
struct Req {
    email: &'static str,
    verified: bool,
    groups: Vec<String>,
    method: &'static str,
}

fn request() -> impl Strategy<Value = Req> {
    (
        prop::sample::select(vec![
            "alice@example.com",
            "bob@example.com",
            "eve@evil.test",
        ]),
        any::<bool>(),
        prop::sample::subsequence(vec!["admins", "devs"], 0..=2),
        prop::sample::select(vec!["GET", "POST"]),
    )
        .prop_map(|(email, verified, groups, method)| Req {
            email,
            verified,
            groups: groups.into_iter().map(String::from).collect(),
            method,
        })
}

impl Req {
    fn decide(&self, policy: &Policy) -> Decision {
        let mut facts = Facts::signed_in(self.email, self.verified);
        facts.groups = &self.groups;
        facts.method = self.method;
        policy.evaluate(&facts)
    }
}

fn spec(blocks: Vec<(Action, Condition)>) -> Policy {
    Policy::from_spec(&PolicySpec {
        blocks: blocks
            .into_iter()
            .map(|(action, rule)| PolicyBlock {
                action,
                rule,
                origin: Origin::Default,
            })
            .collect(),
    })
}

/// The reference: Pomerium's documented operators, plus Gatehouse's rule that an unverified
/// address never helps (`positive` = under an even number of `not`/`nor`).
fn reference(c: &Condition, r: &Req, action: Action, positive: bool) -> bool {
    match c {
        Condition::Op { op, children, .. } => {
            let mut values = children.iter().map(|c| {
                let flip = matches!(op, LogicalOp::Not | LogicalOp::Nor);
                reference(c, r, action, positive != flip)
            });
            match op {
                LogicalOp::And => values.all(|v| v),
                LogicalOp::Or => values.any(|v| v),
                LogicalOp::Not => values.all(|v| !v),
                LogicalOp::Nor => values.any(|v| !v),
            }
        }
        Condition::Criterion(c) => {
            let raw_is = |m: &StringMatcher, s: &str| match m.ops.as_slice() {
                [StringOp::Is(v)] => v.eq_ignore_ascii_case(s),
                _ => unreachable!("only `is` is generated"),
            };
            let address = |raw: bool| {
                if r.verified {
                    raw
                } else if action == Action::Allow {
                    !positive
                } else {
                    positive && raw
                }
            };
            match &c.kind {
                CriterionKind::Accept | CriterionKind::AuthenticatedUser => true,
                CriterionKind::Reject => false,
                CriterionKind::Domain(m) => {
                    address(raw_is(m, r.email.rsplit_once('@').map_or("", |x| x.1)))
                }
                CriterionKind::Email(m) => address(raw_is(m, r.email)),
                CriterionKind::Groups(l) => match l.ops.as_slice() {
                    [ListOp::Has(g)] => r.groups.contains(g),
                    _ => unreachable!("only `has` is generated"),
                },
                CriterionKind::HttpMethod(m) => raw_is(m, r.method),
                other => unreachable!("not generated: {other:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn not_not_x_decides_like_x(x in condition(), r in request(), deny in any::<bool>()) {
        let action = if deny { Action::Deny } else { Action::Allow };
        let twice = op(LogicalOp::Not, vec![op(LogicalOp::Not, vec![x.clone()])]);
        // A deny block needs an allow beside it to show its effect.
        let with = |rule: Condition| {
            let mut blocks = vec![(action, rule)];
            if deny {
                blocks.push((Action::Allow, leaf(CriterionKind::Accept)));
            }
            spec(blocks)
        };
        prop_assert_eq!(
            r.decide(&with(twice)).is_allow(),
            r.decide(&with(x)).is_allow()
        );
    }

    #[test]
    fn an_allow_of_accept_is_overridden_by_any_matching_deny(
        x in condition(),
        r in request(),
        deny_first in any::<bool>(),
    ) {
        let accept = (Action::Allow, leaf(CriterionKind::Accept));
        let deny = (Action::Deny, x.clone());
        let (blocks, deny_at) = if deny_first {
            (vec![deny, accept], 0)
        } else {
            (vec![accept, deny], 1)
        };
        let decision = r.decide(&spec(blocks));
        if reference(&x, &r, Action::Deny, true) {
            let denied_by_it = matches!(
                decision,
                Decision::Deny(Reason::DenyBlockMatched { block, .. }) if block == deny_at
            );
            prop_assert!(denied_by_it, "{:?}", decision);
        } else {
            prop_assert!(decision.is_allow(), "{:?}", decision);
        }
    }

    #[test]
    fn allow_blocks_agree_with_the_reference(x in condition(), r in request()) {
        let decision = r.decide(&spec(vec![(Action::Allow, x.clone())]));
        prop_assert_eq!(decision.is_allow(), reference(&x, &r, Action::Allow, true));
    }
}
