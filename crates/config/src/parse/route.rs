//! `routes:` and the `policy:` subset supported in this release.

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::node::{Ctx, Entry, Fields, Setting, Text, split_commas};
use super::values;
use crate::{
    Action, Criterion, CriterionKind, LogicalOp, PolicyBlock, PolicySpec, Route, RouteFrom,
};

const ROUTE_KEYS: &[&str] = &[
    "from",
    "to",
    "prefix",
    "path",
    "pass_identity_headers",
    "preserve_host_header",
    "allow_public_unauthenticated_access",
    "allow_any_authenticated_user",
    "allowed_domains",
    "allowed_users",
    "policy",
];

/// Pomerium route keys that change nothing about who gets in: ignored with a warning.
const ROUTE_IGNORED: &[&str] = &["allow_websockets", "timeout", "idle_timeout"];

/// Pomerium keys that restrict access. Ignoring one would let in people the operator meant
/// to keep out, so they are errors until they are supported.
pub(super) const ACCESS_UNSUPPORTED: &[&str] = &["allowed_groups", "allowed_idp_claims"];

/// What a route's access rules amount to, for the "lets nobody in" warning.
pub(super) struct RouteAccess {
    pub grants_someone: bool,
}

/// `routes:` → the routes that parsed (problems are on `ctx`).
pub(super) fn routes(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Vec<(Route, RouteAccess)> {
    let items = match entry.node {
        Node::Sequence(items) => items,
        Node::Scalar(s) if s.as_str().is_empty() || s.as_str() == "~" => return Vec::new(),
        _ => {
            ctx.error(
                entry.origin.clone(),
                "routes: expected a list of routes (each item starting with `- from: https://…`)",
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = format!("routes[{index}]");
        let origin = ctx.node_origin(item);
        match item.as_mapping() {
            Some(map) => {
                if let Some(route) = route(ctx, index, &path, map, origin) {
                    out.push(route);
                }
            }
            None => ctx.error(
                origin,
                format!("{path}: expected a map with `from:` and `to:`"),
            ),
        }
    }
    out
}

fn route(
    ctx: &mut Ctx<'_>,
    index: usize,
    path: &str,
    map: &MarkedMappingNode,
    origin: crate::Origin,
) -> Option<(Route, RouteAccess)> {
    let errors_before = ctx.errors.len();
    let mut fields = Fields::new(ctx, path, map);

    let from = match fields.take("from").map(Setting::file) {
        Some(s) => ctx
            .non_empty(&s)
            .and_then(|t| ctx.check(&t.origin, &s.path, route_from(&t.value))),
        None => {
            ctx.error(
                origin.clone(),
                format!("{path}: `from` is required (like `from: https://app.example.com`)"),
            );
            None
        }
    };
    let to = match fields.take("to") {
        Some(entry) => to(ctx, &entry),
        None => {
            ctx.error(
                origin.clone(),
                format!("{path}: `to` is required (like `to: http://localhost:8080`)"),
            );
            None
        }
    };
    let prefix = fields
        .take("prefix")
        .map(Setting::file)
        .and_then(|s| path_value(ctx, &s, "prefix"));
    let exact = fields
        .take("path")
        .map(Setting::file)
        .and_then(|s| path_value(ctx, &s, "path"));
    if let (Some(_), Some(p)) = (&prefix, &exact) {
        ctx.error(
            p.origin.clone(),
            format!("{path}: give `prefix` or `path`, not both"),
        );
    }

    let mut flag = |ctx: &mut Ctx<'_>, key: &str| -> (bool, Option<crate::Origin>) {
        match fields.take(key).map(Setting::file) {
            Some(s) => (ctx.flag(&s).unwrap_or(false), Some(s.origin)),
            None => (false, None),
        }
    };
    let (pass_identity_headers, _) = flag(ctx, "pass_identity_headers");
    let (preserve_host_header, _) = flag(ctx, "preserve_host_header");
    let (public, public_at) = flag(ctx, "allow_public_unauthenticated_access");
    let (any_user, _) = flag(ctx, "allow_any_authenticated_user");

    let allowed_domains = list(ctx, &mut fields, "allowed_domains", values::domain);
    let allowed_users = list(ctx, &mut fields, "allowed_users", values::email);
    let policy = fields.take("policy").and_then(|e| policy(ctx, &e));

    for entry in fields.rest() {
        if ROUTE_IGNORED.contains(&entry.key) {
            ctx.warn(
                entry.key_origin.clone(),
                format!(
                    "ignored: `{}` in {path} is not supported by Gatehouse yet",
                    entry.key
                ),
            );
        } else if ACCESS_UNSUPPORTED.contains(&entry.key) {
            ctx.error(entry.key_origin.clone(), access_unsupported(&entry.path));
        } else {
            ctx.unknown_key(&entry, path, ROUTE_KEYS);
        }
    }

    if public {
        let mut also = Vec::new();
        if policy.is_some() {
            also.push("`policy`");
        }
        if !allowed_domains.is_empty() {
            also.push("`allowed_domains`");
        }
        if !allowed_users.is_empty() {
            also.push("`allowed_users`");
        }
        if any_user {
            also.push("`allow_any_authenticated_user`");
        }
        if !also.is_empty() {
            ctx.error(
                public_at.unwrap_or_else(|| origin.clone()),
                format!(
                    "{path}: allow_public_unauthenticated_access lets everyone in without signing \
                     in, so its {} would never apply; remove one or the other",
                    also.join(" and ")
                ),
            );
        }
    }

    let grants_someone = public
        || any_user
        || !allowed_domains.is_empty()
        || !allowed_users.is_empty()
        || policy
            .as_ref()
            .is_some_and(|p| p.blocks.iter().any(|b| b.action == crate::Action::Allow));

    if ctx.errors.len() > errors_before {
        return None;
    }
    Some((
        Route {
            index,
            from: from?,
            prefix: prefix.map(|t| t.value),
            path: exact.map(|t| t.value),
            to: to?,
            pass_identity_headers,
            preserve_host_header,
            allow_public_unauthenticated_access: public,
            allow_any_authenticated_user: any_user,
            allowed_domains,
            allowed_users,
            policy,
            origin,
        },
        RouteAccess { grants_someone },
    ))
}

pub(super) fn access_unsupported(path: &str) -> String {
    format!(
        "{path} is not supported yet; Gatehouse refuses to start rather than ignore it and let in \
         people it should keep out (use `policy` with `domain`/`email`, or `allowed_users`)"
    )
}

/// `from:` `https://host` or `http://host`, optional port, no path or query.
fn route_from(s: &str) -> Result<RouteFrom, String> {
    let url = values::http_url(s)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "\"{}\" must not contain a user name or password",
            values::shown(s)
        ));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        let hint = if url.path() != "/" {
            format!("; to match a path, write `prefix: {}`", url.path())
        } else {
            String::new()
        };
        return Err(format!(
            "\"{s}\" must be scheme and host only (and a port), no path or query{hint}"
        ));
    }
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    if host.contains('*') {
        return Err(format!(
            "\"{s}\": wildcard hosts are not supported yet; list each host as its own route"
        ));
    }
    Ok(RouteFrom {
        scheme: url.scheme().to_string(),
        host,
        port: url.port(),
    })
}

/// `to:` a URL, or a list of URLs (Pomerium's load balancing): the first is used.
fn to(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<url::Url> {
    let (text, path) = match entry.node {
        Node::Sequence(items) => {
            let Some(first) = items.first() else {
                ctx.error(
                    entry.origin.clone(),
                    format!("{}: the list of upstreams is empty", entry.path),
                );
                return None;
            };
            let path = format!("{}[0]", entry.path);
            let origin = ctx.node_origin(first);
            let text = ctx.scalar(&path, first, &origin)?;
            if items.len() > 1 {
                ctx.warn(
                    entry.origin.clone(),
                    format!(
                        "{}: lists {} upstreams, but load balancing is not supported yet; only the \
                         first is used",
                        entry.path,
                        items.len()
                    ),
                );
            }
            (text, path)
        }
        _ => (
            ctx.non_empty(&Setting::file(entry.clone()))?,
            entry.path.clone(),
        ),
    };
    ctx.check(&text.origin, &path, values::http_url(&text.value))
}

/// `prefix:` / `path:` must start with `/`.
fn path_value(ctx: &mut Ctx<'_>, setting: &Setting<'_>, key: &str) -> Option<Text> {
    let text = ctx.non_empty(setting)?;
    if !text.value.starts_with('/') {
        ctx.error(
            text.origin.clone(),
            format!(
                "{}: `{}` must start with `/` (like `{key}: /api`)",
                setting.path, text.value
            ),
        );
        return None;
    }
    Some(text)
}

fn list(
    ctx: &mut Ctx<'_>,
    fields: &mut Fields<'_>,
    key: &str,
    check: fn(&str) -> Result<String, String>,
) -> Vec<String> {
    let Some(setting) = fields.take(key).map(Setting::file) else {
        return Vec::new();
    };
    let Some(items) = ctx.list(&setting, split_commas) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|t| ctx.check(&t.origin, &setting.path, check(&t.value)))
        .collect()
}

// === policy ===

/// Words of Pomerium's policy language (PPL) that this release does not support yet.
const PPL_UNSUPPORTED: &[&str] = &[
    "not",
    "nor",
    "accept",
    "reject",
    "authenticated_user",
    "claim",
    "client_certificate",
    "cors_preflight",
    "date",
    "day_of_week",
    "device",
    "groups",
    "http_method",
    "http_path",
    "invalid_client_certificate",
    "mcp_tool",
    "pomerium_routes",
    "record",
    "source_ip",
    "time_of_day",
    "user",
    "starts_with",
    "ends_with",
    "contains",
    "has",
    "exclude",
    "after",
    "before",
];

fn is_ppl_unsupported(key: &str) -> bool {
    PPL_UNSUPPORTED.contains(&key) || key.starts_with("claim/")
}

fn ppl_unsupported(ctx: &mut Ctx<'_>, entry: &Entry<'_>) {
    ctx.error(
        entry.key_origin.clone(),
        format!(
            "`{}` in policy is not supported yet (supported here: allow/deny with and/or of \
             domain/email `is`); it comes in the next release",
            entry.key
        ),
    );
}

/// `policy:` a list of blocks, or a single block.
fn policy(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<PolicySpec> {
    let errors_before = ctx.errors.len();
    let mut blocks = Vec::new();
    match entry.node {
        Node::Sequence(items) => {
            if items.is_empty() {
                ctx.error(
                    entry.origin.clone(),
                    format!("{}: the list of policy blocks is empty", entry.path),
                );
            }
            for (i, item) in items.iter().enumerate() {
                blocks.extend(block(ctx, &format!("{}[{i}]", entry.path), item));
            }
        }
        Node::Mapping(_) => blocks.extend(block(ctx, &entry.path, entry.node)),
        Node::Scalar(_) => ctx.error(
            entry.origin.clone(),
            format!("{}: expected a list of `allow:`/`deny:` blocks", entry.path),
        ),
    }
    (ctx.errors.len() == errors_before).then_some(PolicySpec { blocks })
}

/// `- allow: { or: [ … ] }`. A map with both `allow` and `deny` (valid Pomerium) becomes
/// two blocks; deny wins either way.
fn block(ctx: &mut Ctx<'_>, path: &str, node: &Node) -> Vec<PolicyBlock> {
    let origin = ctx.node_origin(node);
    let Some(map) = node.as_mapping() else {
        ctx.error(
            origin,
            format!(
                "{path}: expected a block like `allow: {{or: [{{domain: {{is: example.com}}}}]}}`"
            ),
        );
        return Vec::new();
    };
    if map.is_empty() {
        ctx.error(
            origin,
            format!("{path}: empty policy block; write `allow:` or `deny:`"),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut fields = Fields::new(ctx, path, map);
    for (key, action) in [("allow", Action::Allow), ("deny", Action::Deny)] {
        if let Some(entry) = fields.take(key)
            && let Some((op, criteria)) = rule(ctx, &entry)
        {
            out.push(PolicyBlock {
                action,
                op,
                criteria,
                origin: entry.key_origin.clone(),
            });
        }
    }
    for entry in fields.rest() {
        if matches!(entry.key, "and" | "or") {
            ctx.error(
                entry.key_origin.clone(),
                format!(
                    "{}: `{}` must be inside `allow:` or `deny:`",
                    entry.path, entry.key
                ),
            );
        } else if is_ppl_unsupported(entry.key) {
            ppl_unsupported(ctx, &entry);
        } else {
            ctx.unknown_key(&entry, path, &["allow", "deny"]);
        }
    }
    out
}

/// The value of `allow:`/`deny:`: one of `and:`/`or:` with a non-empty list of criteria.
fn rule(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<(LogicalOp, Vec<Criterion>)> {
    let Some(map) = entry.node.as_mapping() else {
        ctx.error(
            entry.origin.clone(),
            format!(
                "{}: expected `and:` or `or:` with a list of criteria",
                entry.path
            ),
        );
        return None;
    };
    let mut fields = Fields::new(ctx, &entry.path, map);
    let mut ops = Vec::new();
    for (key, op) in [("and", LogicalOp::And), ("or", LogicalOp::Or)] {
        if let Some(e) = fields.take(key) {
            ops.push((op, e));
        }
    }
    let mut ok = true;
    for rest in fields.rest() {
        ok = false;
        if is_ppl_unsupported(rest.key) {
            ppl_unsupported(ctx, &rest);
        } else if matches!(rest.key, "domain" | "email") {
            ctx.error(
                rest.key_origin.clone(),
                format!(
                    "{}: criteria go in a list under `and:` or `or:` (like `or: [{{{}: {{is: …}}}}]`)",
                    entry.path, rest.key
                ),
            );
        } else {
            ctx.unknown_key(&rest, &entry.path, &["and", "or"]);
        }
    }
    let (op, list) = match ops.as_slice() {
        [] if ok => {
            ctx.error(
                entry.origin.clone(),
                format!(
                    "{}: expected `and:` or `or:` with a list of criteria",
                    entry.path
                ),
            );
            return None;
        }
        [] => return None,
        [(op, list)] => (*op, list),
        [_, (_, second), ..] => {
            ctx.error(
                second.key_origin.clone(),
                format!(
                    "{}: has both `and` and `or`; this release supports one of them per block",
                    entry.path
                ),
            );
            return None;
        }
    };
    let Node::Sequence(items) = list.node else {
        ctx.error(
            list.origin.clone(),
            format!("{}: expected a list of criteria (`- domain: …`)", list.path),
        );
        return None;
    };
    if items.is_empty() {
        // `and: []` would be true for everyone.
        ctx.error(
            list.origin.clone(),
            format!("{}: the list of criteria is empty", list.path),
        );
        return None;
    }
    let mut criteria = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match criterion(ctx, &format!("{}[{i}]", list.path), item) {
            Some(c) => criteria.push(c),
            None => ok = false,
        }
    }
    ok.then_some((op, criteria))
}

/// `- domain: {is: example.com}`, `- email: alice@example.com` (short for `is`).
fn criterion(ctx: &mut Ctx<'_>, path: &str, node: &Node) -> Option<Criterion> {
    let origin = ctx.node_origin(node);
    let Some(map) = node.as_mapping() else {
        ctx.error(
            origin,
            format!("{path}: expected a criterion like `domain: {{is: example.com}}`"),
        );
        return None;
    };
    let mut fields = Fields::new(ctx, path, map);
    let mut found = Vec::new();
    for (key, kind) in [
        ("domain", CriterionKind::Domain),
        ("email", CriterionKind::Email),
    ] {
        if let Some(e) = fields.take(key) {
            found.push((kind, e));
        }
    }
    let mut ok = true;
    for rest in fields.rest() {
        ok = false;
        if is_ppl_unsupported(rest.key) || matches!(rest.key, "and" | "or") {
            ppl_unsupported(ctx, &rest);
        } else {
            ctx.unknown_key(&rest, path, &["domain", "email"]);
        }
    }
    let (kind, entry) = match found.len() {
        0 if ok => {
            ctx.error(
                origin,
                format!("{path}: empty criterion; write `domain: {{is: …}}` or `email: {{is: …}}`"),
            );
            return None;
        }
        1 if ok => found.pop()?,
        1 | 0 => return None,
        _ => {
            ctx.error(
                origin,
                format!("{path}: one criterion per list item; put `domain` and `email` in separate items"),
            );
            return None;
        }
    };
    let text = match entry.node {
        Node::Mapping(m) => {
            let mut inner = Fields::new(ctx, &entry.path, m);
            let is = inner.take("is");
            let mut ok = true;
            for rest in inner.rest() {
                ok = false;
                if is_ppl_unsupported(rest.key) {
                    ppl_unsupported(ctx, &rest);
                } else {
                    ctx.unknown_key(&rest, &entry.path, &["is"]);
                }
            }
            match is {
                Some(is) if ok => ctx.non_empty(&Setting::file(is))?,
                Some(_) => return None,
                None if ok => {
                    ctx.error(
                        entry.origin.clone(),
                        format!("{}: expected `is: …`", entry.path),
                    );
                    return None;
                }
                None => return None,
            }
        }
        _ => ctx.non_empty(&Setting::file(entry.clone()))?,
    };
    let value = match kind {
        CriterionKind::Domain => values::domain(&text.value),
        CriterionKind::Email => values::email(&text.value),
    };
    let is = ctx.check(&text.origin, &entry.path, value)?;
    Some(Criterion {
        kind,
        is,
        origin: entry.key_origin,
    })
}
