//! `routes:`; their `policy:` is parsed in `policy.rs`.

use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::node::{Ctx, Entry, Fields, Setting, Text, split_commas};
use super::policy::policy;
use super::values;
use crate::{Route, RouteFrom, Upstream};

const ROUTE_KEYS: &[&str] = &[
    "from",
    "to",
    "to_backend",
    "prefix",
    "path",
    "pass_identity_headers",
    "preserve_host_header",
    "cors_allow_preflight",
    "bearer_token_format",
    "idp_token_audiences",
    "allow_public_unauthenticated_access",
    "allow_any_authenticated_user",
    "allowed_domains",
    "allowed_users",
    "allowed_groups",
    "policy",
];

/// Pomerium route keys that change nothing about who gets in: ignored with a warning.
const ROUTE_IGNORED: &[&str] = &["allow_websockets", "timeout", "idle_timeout"];

/// Pomerium route keys that restrict access. Ignoring one would let in people the operator
/// meant to keep out, so they are errors until they are supported.
pub(super) const ACCESS_UNSUPPORTED: &[&str] = &["allowed_idp_claims"];

/// What a route's access rules amount to, for the "lets nobody in" warning.
pub(super) struct RouteAccess {
    pub grants_someone: bool,
}

/// `routes:` → the routes that parsed (problems are on `ctx`).
pub(super) fn routes(
    ctx: &mut Ctx<'_>,
    entry: &Entry<'_>,
    pools: &[String],
) -> Vec<(Route, RouteAccess)> {
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
                if let Some(route) = route(ctx, index, &path, map, origin, pools) {
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
    pools: &[String],
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
    let to = match (fields.take("to"), fields.take("to_backend")) {
        (Some(entry), None) => to(ctx, &entry).map(Upstream::Url),
        (None, Some(entry)) => to_backend(ctx, &entry, pools).map(Upstream::Backend),
        (Some(_), Some(entry)) => {
            ctx.error(
                entry.key_origin.clone(),
                format!(
                    "{path}: give `to` (one upstream for everyone) or `to_backend` (each \
                     person's own backend), not both"
                ),
            );
            None
        }
        (None, None) => {
            ctx.error(
                origin.clone(),
                format!(
                    "{path}: `to` is required (like `to: http://localhost:8080`, or \
                     `to_backend: assistant` for each person's own backend)"
                ),
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
    let (cors_allow_preflight, _) = flag(ctx, "cors_allow_preflight");
    let (public, public_at) = flag(ctx, "allow_public_unauthenticated_access");
    let (any_user, _) = flag(ctx, "allow_any_authenticated_user");
    let idp_identity_tokens = fields
        .take("bearer_token_format")
        .map(Setting::file)
        .and_then(|s| {
            let t = ctx.non_empty(&s)?;
            let parsed = match t.value.trim() {
                "default" => Ok(false),
                "idp_identity_token" => Ok(true),
                "idp_access_token" | "jwt" => Err(format!(
                    "not supported: `{}` (Gatehouse accepts the IdP's ID tokens, which it verifies \
                     as at sign-in: use `idp_identity_token`, or personal access tokens from the \
                     user page)",
                    t.value.trim()
                )),
                other => Err(format!(
                    "`{other}` is not a bearer token format; use `default` (bearer tokens other \
                     than Gatehouse's own pass to the upstream) or `idp_identity_token`"
                )),
            };
            ctx.check(&t.origin, &s.path, parsed)
        })
        .unwrap_or(false);

    let allowed_domains = list(ctx, &mut fields, "allowed_domains", values::domain);
    let allowed_users = list(ctx, &mut fields, "allowed_users", values::email);
    let allowed_groups = list(ctx, &mut fields, "allowed_groups", values::group);
    let idp_token_audiences = list(ctx, &mut fields, "idp_token_audiences", |v| {
        if v.trim().is_empty() {
            Err("an audience must not be empty (an IdP client id)".to_string())
        } else {
            Ok(v.trim().to_string())
        }
    });
    let (policy, policy_name) = match fields.take("policy") {
        Some(e) if matches!(e.node, Node::Scalar(_)) => match named(ctx, &e) {
            Some((name, spec)) => (Some(spec), Some(name)),
            None => (None, None),
        },
        Some(e) => (policy(ctx, &e), None),
        None => (None, None),
    };

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

    if !idp_token_audiences.is_empty() && !idp_identity_tokens {
        ctx.error(
            origin.clone(),
            format!(
                "{path}: idp_token_audiences applies only with `bearer_token_format: \
                 idp_identity_token`; add that, or remove idp_token_audiences"
            ),
        );
    }
    if let Some(Upstream::Backend(_)) = &to {
        if public {
            ctx.error(
                public_at.clone().unwrap_or_else(|| origin.clone()),
                format!(
                    "{path}: a `to_backend` route gives each signed-in person their own backend, \
                     so it cannot allow_public_unauthenticated_access; remove one or the other"
                ),
            );
        }
        if let Some(p) = prefix.as_ref().or(exact.as_ref()) {
            ctx.error(
                p.origin.clone(),
                format!(
                    "{path}: a `to_backend` route serves a whole host (OpenCode's web UI works only \
                     at the root of a host); remove `{}` and give the route its own host",
                    if prefix.is_some() { "prefix" } else { "path" }
                ),
            );
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
        if !allowed_groups.is_empty() {
            also.push("`allowed_groups`");
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
        || !allowed_groups.is_empty()
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
            cors_allow_preflight,
            idp_identity_tokens,
            idp_token_audiences,
            allow_public_unauthenticated_access: public,
            allow_any_authenticated_user: any_user,
            allowed_domains,
            allowed_users,
            allowed_groups,
            policy,
            policy_name,
            origin,
        },
        RouteAccess { grants_someone },
    ))
}

/// `policy: <name>`: the named policy from `policies_dir`.
fn named(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<(String, crate::PolicySpec)> {
    let text = ctx.non_empty(&Setting::file(entry.clone()))?;
    let name = text.value.trim();
    if let Some(p) = ctx.named_policies.iter().find(|p| p.name == name) {
        return Some((p.name.clone(), p.spec.clone()));
    }
    let names: Vec<&str> = ctx.named_policies.iter().map(|p| p.name.as_str()).collect();
    let message = if ctx.broken_policies.iter().any(|b| b == name) {
        format!(
            "{}: the policy `{name}` has errors (listed with its file); fix them and this route \
             uses it",
            entry.path
        )
    } else if names.is_empty() {
        format!(
            "{}: `{name}` names a policy, but no named policies are loaded; set \
             `policies_dir: policies` and put the blocks in policies/{name}.yaml (or write the \
             blocks here as a list)",
            entry.path
        )
    } else {
        let hint = match super::node::closest(name, &names) {
            Some(best) => format!("did you mean `{best}`? "),
            None => String::new(),
        };
        format!(
            "{}: no policy named `{name}` in policies_dir; {hint}(known: {}; a policy `x` is \
             the file x.yaml)",
            entry.path,
            names.join(", ")
        )
    };
    ctx.error(text.origin, message);
    None
}

pub(super) fn access_unsupported(path: &str) -> String {
    let fix = if path.ends_with("allowed_groups") {
        "put `allowed_groups` on each route, or use a `policy` with `groups`"
    } else {
        "use a `policy` with `claim/<name>`"
    };
    format!(
        "{path} is not supported yet; Gatehouse refuses to start rather than ignore it and let in \
         people it should keep out ({fix})"
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

/// `to_backend:` the name of a pool in `backends:`.
fn to_backend(ctx: &mut Ctx<'_>, entry: &Entry<'_>, pools: &[String]) -> Option<String> {
    let text = ctx.non_empty(&Setting::file(entry.clone()))?;
    let name = text.value.trim();
    if pools.iter().any(|p| p == name) {
        return Some(name.to_string());
    }
    let names: Vec<&str> = pools.iter().map(String::as_str).collect();
    let hint = match super::node::closest(name, &names) {
        Some(best) => format!("; did you mean `{best}`?"),
        None if names.is_empty() => {
            format!(
                "; define it under `backends:` (like `backends: {{ {name}: {{ ports: 4101-4199 }} }}`)"
            )
        }
        None => format!("; the pools are: {}", names.join(", ")),
    };
    ctx.error(
        text.origin,
        format!("{}: no pool `{name}` in `backends:`{hint}", entry.path),
    );
    None
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
