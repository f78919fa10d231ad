//! Criteria that parse but can never match (or never decide) on the route that uses them:
//! warnings for `gatehouse check` and the start-up log, each at the criterion's
//! `file:line:col` with a fix. They are warnings, not errors: the policy still denies
//! safely (a criterion that never matches lets nobody in through it), it just does not do
//! what its author meant.

use crate::{Action, Condition, CriterionKind, Origin, PolicySpec, Route, StringMatcher, StringOp};

/// The warnings for `route`'s policy.
pub(super) fn route(route: &Route) -> Vec<(Origin, String)> {
    let mut out = Vec::new();
    if let Some(g) = route.allowed_groups.iter().find(|g| shouts(g)) {
        out.push((
            route.origin.clone(),
            group_case(&format!("routes[{}].allowed_groups", route.index), g),
        ));
    }
    let Some(policy) = &route.policy else {
        return out;
    };
    let name = match &route.policy_name {
        Some(n) => format!("routes[{}] (policy `{n}`)", route.index),
        None => format!("routes[{}]", route.index),
    };
    if route.allow_any_authenticated_user {
        for b in policy.blocks.iter().filter(|b| b.action == Action::Allow) {
            out.push((
                b.origin.clone(),
                format!(
                    "{name}: this allow rule never decides anything, because \
                     `allow_any_authenticated_user: true` already lets everyone signed in \
                     through; remove one of the two"
                ),
            ));
        }
    }
    walk_spec(policy, &mut |kind, origin| {
        if let CriterionKind::Groups(m) = kind
            && let Some(v) = m.ops.iter().find_map(|op| match op {
                crate::ListOp::Has(v) | crate::ListOp::Is(v) if shouts(v) => Some(v),
                _ => None,
            })
        {
            out.push((origin.clone(), group_case(&name, v)));
        }
        if let Some(why) = never(kind, route) {
            out.push((origin.clone(), format!("{name}: `{}`: {why}", kind.name())));
        }
    });
    out
}

/// An email-shaped group name with capitals: Google gives group emails in lower case, and
/// groups are compared exactly (as in Pomerium).
pub(super) fn shouts(group: &str) -> bool {
    group.contains('@') && group.chars().any(|c| c.is_ascii_uppercase())
}

pub(super) fn group_case(place: &str, group: &str) -> String {
    format!(
        "{place}: groups are compared exactly, and group addresses come from the directory in \
         lower case, so \"{group}\" will not match; write \"{}\"",
        group.to_ascii_lowercase()
    )
}

fn walk_spec(spec: &PolicySpec, f: &mut impl FnMut(&CriterionKind, &Origin)) {
    fn walk(c: &Condition, f: &mut impl FnMut(&CriterionKind, &Origin)) {
        match c {
            Condition::Op { children, .. } => children.iter().for_each(|c| walk(c, f)),
            Condition::Criterion(c) => f(&c.kind, &c.origin),
        }
    }
    for b in &spec.blocks {
        walk(&b.rule, f);
    }
}

/// Values an `is` or `in` (the matchers that compare whole values) must equal.
fn whole_values(m: &StringMatcher) -> impl Iterator<Item = &str> {
    m.ops
        .iter()
        .flat_map(|op| match op {
            StringOp::Is(v) => std::slice::from_ref(v),
            StringOp::In(vs) => vs.as_slice(),
            _ => &[],
        })
        .map(String::as_str)
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Why this criterion can never match on `route`, if it cannot.
fn never(kind: &CriterionKind, route: &Route) -> Option<String> {
    match kind {
        CriterionKind::User(m) => whole_values(m).find(|v| v.contains('@')).map(|v| {
            format!(
                "it compares the identity provider's user id (`sub`, a number at Google), so \
                 \"{v}\" is unlikely ever to match; use `email: {{is: {v}}}`"
            )
        }),
        CriterionKind::HttpMethod(m) => whole_values(m)
            .find(|v| !METHODS.iter().any(|k| k.eq_ignore_ascii_case(v)))
            .map(|v| {
                format!(
                    "\"{v}\" is not an HTTP method, so it never matches (methods are {})",
                    METHODS.join(", ")
                )
            }),
        CriterionKind::HttpPath(m) => path_never(m, route),
        CriterionKind::Claim { name, matcher } if name == "email_verified" => {
            matcher.ops.iter().find_map(|op| match op {
                crate::ListOp::Has(v) | crate::ListOp::Is(v) if v != "true" && v != "false" => {
                    Some(format!(
                        "the claim holds \"true\" or \"false\", so \"{v}\" never matches"
                    ))
                }
                _ => None,
            })
        }
        _ => None,
    }
}

/// `http_path` values this route never sees: outside its `path`/`prefix`. (A value not
/// starting with `/` is already an error.)
fn path_never(m: &StringMatcher, route: &Route) -> Option<String> {
    for op in &m.ops {
        let (v, whole) = match op {
            StringOp::Is(v) => (v, true),
            StringOp::StartsWith(v) => (v, false),
            _ => continue,
        };
        if let Some(p) = &route.path
            && (v != p && (whole || !p.starts_with(v.as_str())))
        {
            return Some(format!(
                "this route serves only the path {p}, so \"{v}\" never matches"
            ));
        }
        if let Some(p) = &route.prefix
            && !v.starts_with(p.as_str())
            && (whole || !p.starts_with(v.as_str()))
        {
            return Some(format!(
                "this route serves only paths under {p}, so \"{v}\" never matches"
            ));
        }
    }
    None
}
