//! `policy:` in Pomerium's policy language (PPL): rules, logical operators nested to any
//! depth, criteria and matchers. Every problem is reported at its `file:line:col` with a fix,
//! and parsing goes on past it.

use marked_yaml::Node;

use super::node::{Ctx, Entry, Fields, Setting, Text, closest};
use super::values;
use crate::{
    Action, Condition, Criterion, CriterionKind, DaysOfWeek, ListMatcher, ListOp, LogicalOp,
    Origin, PolicyBlock, PolicySpec, StringMatcher, StringOp, TimeOfDay, TimeZone,
};

const OPERATORS: &[(&str, LogicalOp)] = &[
    ("and", LogicalOp::And),
    ("or", LogicalOp::Or),
    ("not", LogicalOp::Not),
    ("nor", LogicalOp::Nor),
];

/// The criteria Gatehouse understands (`claim/<name>` too).
const CRITERIA: &[&str] = &[
    "accept",
    "reject",
    "authenticated_user",
    "domain",
    "email",
    "user",
    "groups",
    "claim",
    "http_method",
    "http_path",
    "day_of_week",
    "time_of_day",
];

/// Criteria of Pomerium that Gatehouse does not implement. Ignoring one could let in people
/// the operator meant to keep out, so each is an error.
const PPL_UNSUPPORTED: &[&str] = &[
    "client_certificate",
    "cors_preflight",
    "date",
    "device",
    "invalid_client_certificate",
    "mcp_tool",
    "pomerium_routes",
    "record",
    "source_ip",
];

const STRING_OPS: &[&str] = &["is", "starts_with", "ends_with", "contains", "in", "not_in"];
const LIST_OPS: &[&str] = &["has", "is", "exclude"];

/// `policy:` a list of rules, or a single rule.
pub(super) fn policy(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<PolicySpec> {
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

/// `- allow: { or: [ … ] }`. A map with both `allow` and `deny` (valid PPL) becomes two
/// blocks; deny wins either way.
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
            && let Some(rule) = rule(ctx, &entry)
        {
            out.push(PolicyBlock {
                action,
                rule,
                origin: entry.key_origin.clone(),
            });
        }
    }
    for entry in fields.rest() {
        if is_operator(entry.key) {
            ctx.error(
                entry.key_origin.clone(),
                format!(
                    "{}: `{}` must be inside `allow:` or `deny:`",
                    entry.path, entry.key
                ),
            );
        } else {
            ctx.unknown_key(&entry, path, &["allow", "deny"]);
        }
    }
    out
}

fn is_operator(key: &str) -> bool {
    OPERATORS.iter().any(|(k, _)| *k == key)
}

fn is_criterion(key: &str) -> bool {
    let name = key.split_once('/').map_or(key, |(n, _)| n);
    CRITERIA.contains(&name) || PPL_UNSUPPORTED.contains(&name)
}

/// The value of `allow:`/`deny:`: one or more of `and:`/`or:`/`not:`/`nor:`. Several hold
/// if any one holds (Pomerium's "Multiple Operators in a Rule").
fn rule(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<Condition> {
    let expected = || {
        format!(
            "{}: expected `and:`, `or:`, `not:` or `nor:` with a list of criteria",
            entry.path
        )
    };
    let Some(map) = entry.node.as_mapping() else {
        ctx.error(entry.origin.clone(), expected());
        return None;
    };
    let mut fields = Fields::new(ctx, &entry.path, map);
    let mut ops = Vec::new();
    for (key, op) in OPERATORS {
        if let Some(e) = fields.take(key) {
            ops.push((*op, e));
        }
    }
    ops.sort_by_key(|(_, e)| position(&e.key_origin));
    let mut ok = true;
    for rest in fields.rest() {
        ok = false;
        if is_criterion(rest.key) {
            ctx.error(
                rest.key_origin.clone(),
                format!(
                    "{}: criteria go in a list under `and:`, `or:`, `not:` or `nor:` (like \
                     `or: [{{{}: …}}]`)",
                    entry.path, rest.key
                ),
            );
        } else {
            let known: Vec<&str> = OPERATORS.iter().map(|(k, _)| *k).collect();
            ctx.unknown_key(&rest, &entry.path, &known);
        }
    }
    if ops.is_empty() {
        if ok {
            ctx.error(entry.origin.clone(), expected());
        }
        return None;
    }
    let origin = entry.origin.clone();
    let mut children = Vec::new();
    for (op, e) in &ops {
        match operator(ctx, *op, e) {
            Some(c) => children.push(c),
            None => ok = false,
        }
    }
    if !ok {
        return None;
    }
    if children.len() == 1 {
        return children.pop();
    }
    Some(Condition::Op {
        op: LogicalOp::Or,
        children,
        origin,
    })
}

/// `and: [ … ]` (or `or`/`not`/`nor`): a non-empty list of criteria or nested operators.
fn operator(ctx: &mut Ctx<'_>, op: LogicalOp, entry: &Entry<'_>) -> Option<Condition> {
    let Node::Sequence(items) = entry.node else {
        ctx.error(
            entry.origin.clone(),
            format!(
                "{}: expected a list of criteria (like `{}: [{{domain: example.com}}]`)",
                entry.path,
                op.keyword()
            ),
        );
        return None;
    };
    if items.is_empty() {
        // Pomerium's empty operator never matches; an empty list is almost surely a mistake.
        ctx.error(
            entry.origin.clone(),
            format!("{}: the list of criteria is empty", entry.path),
        );
        return None;
    }
    let mut children = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match condition(ctx, &format!("{}[{i}]", entry.path), item) {
            Some(c) => children.push(c),
            None => ok = false,
        }
    }
    ok.then_some(Condition::Op {
        op,
        children,
        origin: entry.key_origin.clone(),
    })
}

/// One list item: a criterion (`- domain: …`) or a nested operator (`- or: [ … ]`).
fn condition(ctx: &mut Ctx<'_>, path: &str, node: &Node) -> Option<Condition> {
    let origin = ctx.node_origin(node);
    let Some(map) = node.as_mapping() else {
        ctx.error(
            origin,
            format!("{path}: expected a criterion like `domain: {{is: example.com}}`"),
        );
        return None;
    };
    let fields = Fields::new(ctx, path, map);
    let entries: Vec<Entry<'_>> = fields.rest().collect();
    match entries.as_slice() {
        [] => {
            ctx.error(
                origin,
                format!("{path}: empty criterion; write one like `domain: {{is: example.com}}`"),
            );
            None
        }
        [entry] => match OPERATORS.iter().find(|(k, _)| *k == entry.key) {
            Some((_, op)) => operator(ctx, *op, entry),
            None => criterion(ctx, entry).map(Condition::Criterion),
        },
        [_, second, ..] => {
            ctx.error(
                second.key_origin.clone(),
                format!(
                    "{path}: one criterion per list item; start `{}` on its own `- ` line",
                    second.key
                ),
            );
            None
        }
    }
}

/// `domain: {is: example.com}`, `email: alice@example.com` (short for `is`), `claim/x: y`.
fn criterion(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<Criterion> {
    let (name, sub) = match entry.key.split_once('/') {
        Some((n, s)) => (n, Some(s)),
        None => (entry.key, None),
    };
    if sub.is_some() && name != "claim" {
        ctx.error(
            entry.key_origin.clone(),
            format!(
                "{}: only `claim` takes a `/name` (like `claim/department`)",
                entry.path
            ),
        );
        return None;
    }
    let kind = match name {
        "accept" => flag(ctx, entry, CriterionKind::Accept)?,
        "reject" => flag(ctx, entry, CriterionKind::Reject)?,
        "authenticated_user" => flag(ctx, entry, CriterionKind::AuthenticatedUser)?,
        "domain" => CriterionKind::Domain(strings(ctx, entry, Value::Domain)?),
        "email" => CriterionKind::Email(strings(ctx, entry, Value::Email)?),
        "user" => CriterionKind::User(strings(ctx, entry, Value::Plain)?),
        "http_method" => CriterionKind::HttpMethod(strings(ctx, entry, Value::Method)?),
        "http_path" => CriterionKind::HttpPath(strings(ctx, entry, Value::Path)?),
        "groups" => CriterionKind::Groups(list(ctx, entry)?),
        "claim" => {
            let Some(claim) = sub.map(str::trim).filter(|s| !s.is_empty()) else {
                ctx.error(
                    entry.key_origin.clone(),
                    format!(
                        "{}: name the claim, like `claim/department: engineering`",
                        entry.path
                    ),
                );
                return None;
            };
            CriterionKind::Claim {
                name: claim.to_string(),
                matcher: list(ctx, entry)?,
            }
        }
        "day_of_week" => CriterionKind::DayOfWeek(day_of_week(ctx, entry)?),
        "time_of_day" => CriterionKind::TimeOfDay(time_of_day(ctx, entry)?),
        _ if PPL_UNSUPPORTED.contains(&name) => {
            ctx.error(
                entry.key_origin.clone(),
                format!(
                    "{}: the Pomerium criterion `{name}` is not supported by Gatehouse; \
                     Gatehouse refuses to start rather than ignore it (supported: {})",
                    entry.path,
                    CRITERIA.join(", ")
                ),
            );
            return None;
        }
        _ => {
            let hint = match closest(name, CRITERIA) {
                Some(best) => format!("did you mean `{best}`?"),
                None => format!("criteria are {}", CRITERIA.join(", ")),
            };
            ctx.error(
                entry.key_origin.clone(),
                format!(
                    "unknown criterion `{}` in {}; {hint}",
                    entry.key,
                    parent(&entry.path)
                ),
            );
            return None;
        }
    };
    Some(Criterion {
        kind,
        origin: entry.key_origin.clone(),
    })
}

fn parent(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(p, _)| p)
}

/// `accept: true`. Pomerium matches whatever the value, so `accept: false` would still
/// let everyone in: only `true` is accepted.
fn flag(ctx: &mut Ctx<'_>, entry: &Entry<'_>, kind: CriterionKind) -> Option<CriterionKind> {
    let text = ctx.scalar(&entry.path, entry.node, &entry.origin)?;
    if text.value.trim().eq_ignore_ascii_case("true") {
        return Some(kind);
    }
    let fix = match entry.key {
        "accept" => "; to match nobody, write `reject: true`",
        "reject" => "; to match everybody, write `accept: true`",
        _ => "; to match nobody, write `reject: true`",
    };
    ctx.error(
        text.origin,
        format!(
            "{}: write `{}: true` (in Pomerium any value means true){fix}",
            entry.path, entry.key
        ),
    );
    None
}

/// What the values of a string criterion must look like.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Value {
    Domain,
    Email,
    Method,
    Path,
    Plain,
}

impl Value {
    /// A value for `op`, normalised (lower-case for addresses, upper-case for methods).
    fn check(self, op: &str, s: &str) -> Result<String, String> {
        let whole = matches!(op, "is" | "in" | "not_in");
        match self {
            Value::Domain if whole => values::domain(s),
            Value::Email if whole => values::email(s),
            Value::Domain | Value::Email => Ok(s.trim().to_ascii_lowercase()),
            Value::Method => {
                let m = s.trim().to_ascii_uppercase();
                if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphabetic()) {
                    return Err(format!(
                        "`{s}` is not an HTTP method (like `GET` or `POST`)"
                    ));
                }
                Ok(m)
            }
            Value::Path if whole || op == "starts_with" => {
                if !s.starts_with('/') {
                    return Err(format!("`{s}` must start with `/` (like `/api`)"));
                }
                Ok(s.to_string())
            }
            Value::Path | Value::Plain => Ok(s.to_string()),
        }
    }
}

/// A string matcher: a single value (short for `is`), or a map of operators that must all
/// hold.
fn strings(ctx: &mut Ctx<'_>, entry: &Entry<'_>, value: Value) -> Option<StringMatcher> {
    let map = match entry.node {
        Node::Mapping(m) => m,
        Node::Sequence(_) => {
            ctx.error(
                entry.origin.clone(),
                format!(
                    "{}: a list here needs an operator: write `{}: {{in: [a, b]}}` to match any \
                     of them",
                    entry.path, entry.key
                ),
            );
            return None;
        }
        Node::Scalar(_) => {
            let text = ctx.non_empty(&Setting::file(entry.clone()))?;
            let v = ctx.check(&text.origin, &entry.path, value.check("is", &text.value))?;
            return Some(StringMatcher {
                ops: vec![StringOp::Is(v)],
            });
        }
    };
    let fields = Fields::new(ctx, &entry.path, map);
    let mut ops = Vec::new();
    let mut ok = true;
    for e in fields.rest() {
        let op = match e.key {
            "is" | "starts_with" | "ends_with" | "contains" => {
                let Some(text) = ctx.non_empty(&Setting::file(e.clone())) else {
                    ok = false;
                    continue;
                };
                let Some(v) = ctx.check(&text.origin, &e.path, value.check(e.key, &text.value))
                else {
                    ok = false;
                    continue;
                };
                match e.key {
                    "is" => StringOp::Is(v),
                    "starts_with" => StringOp::StartsWith(v),
                    "ends_with" => StringOp::EndsWith(v),
                    _ => StringOp::Contains(v),
                }
            }
            "in" | "not_in" => {
                let Some(items) = string_list(ctx, &e, value) else {
                    ok = false;
                    continue;
                };
                if e.key == "in" {
                    StringOp::In(items)
                } else {
                    StringOp::NotIn(items)
                }
            }
            "has" | "exclude" => {
                ok = false;
                ctx.error(
                    e.key_origin.clone(),
                    format!(
                        "{}: `{}` is for list criteria (groups, claim/…); `{}` is a single value, \
                         so use `is` or `in`",
                        e.path, e.key, entry.key
                    ),
                );
                continue;
            }
            _ => {
                ok = false;
                unknown_matcher(ctx, &e, &entry.path, STRING_OPS);
                continue;
            }
        };
        ops.push(op);
    }
    if ok && ops.is_empty() {
        ctx.error(
            entry.origin.clone(),
            format!("{}: expected a matcher like `is: …`", entry.path),
        );
        return None;
    }
    ok.then_some(StringMatcher { ops })
}

fn unknown_matcher(ctx: &mut Ctx<'_>, e: &Entry<'_>, parent: &str, known: &[&str]) {
    let hint = match closest(e.key, known) {
        Some(best) => format!("did you mean `{best}`?"),
        None => format!("matchers here are {}", known.join(", ")),
    };
    ctx.error(
        e.key_origin.clone(),
        format!("unknown matcher `{}` in {parent}; {hint}", e.key),
    );
}

/// `in: [a, b]`: a non-empty YAML list of single values.
fn string_list(ctx: &mut Ctx<'_>, e: &Entry<'_>, value: Value) -> Option<Vec<String>> {
    let Node::Sequence(items) = e.node else {
        ctx.error(
            e.origin.clone(),
            format!("{}: expected a list, like `{}: [a, b]`", e.path, e.key),
        );
        return None;
    };
    if items.is_empty() {
        ctx.error(e.origin.clone(), format!("{}: the list is empty", e.path));
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let path = format!("{}[{i}]", e.path);
        let origin = ctx.node_origin(item);
        let checked = ctx
            .scalar(&path, item, &origin)
            .and_then(|t: Text| ctx.check(&t.origin, &path, value.check(e.key, &t.value)));
        match checked {
            Some(v) => out.push(v),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// A string list matcher: a single value (short for `has`), or a map of `has`/`is`/`exclude`.
fn list(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<ListMatcher> {
    let map = match entry.node {
        Node::Mapping(m) => m,
        Node::Sequence(_) => {
            ctx.error(
                entry.origin.clone(),
                format!(
                    "{}: a list here needs an operator: use one `- {}: {{has: …}}` item per value \
                     inside `or:` (any) or `and:` (all)",
                    entry.path, entry.key
                ),
            );
            return None;
        }
        Node::Scalar(_) => {
            let text = ctx.non_empty(&Setting::file(entry.clone()))?;
            return Some(ListMatcher {
                ops: vec![ListOp::Has(text.value.trim().to_string())],
            });
        }
    };
    let fields = Fields::new(ctx, &entry.path, map);
    let mut ops = Vec::new();
    let mut ok = true;
    for e in fields.rest() {
        match e.key {
            "has" | "is" | "exclude" => {
                let Some(text) = ctx.non_empty(&Setting::file(e.clone())) else {
                    ok = false;
                    continue;
                };
                let v = text.value.trim().to_string();
                ops.push(match e.key {
                    "has" => ListOp::Has(v),
                    "is" => ListOp::Is(v),
                    _ => ListOp::Exclude(v),
                });
            }
            "starts_with" | "ends_with" | "contains" | "in" | "not_in" => {
                ok = false;
                ctx.error(
                    e.key_origin.clone(),
                    format!(
                        "{}: `{}` holds a list, which takes `has`, `is` or `exclude`; for several \
                         values use one `has` per item inside `or:`",
                        e.path, entry.key
                    ),
                );
            }
            _ => {
                ok = false;
                unknown_matcher(ctx, &e, &entry.path, LIST_OPS);
            }
        }
    }
    if ok && ops.is_empty() {
        ctx.error(
            entry.origin.clone(),
            format!("{}: expected a matcher like `has: …`", entry.path),
        );
        return None;
    }
    ok.then_some(ListMatcher { ops })
}

fn timezone(ctx: &mut Ctx<'_>, e: &Entry<'_>) -> Option<TimeZone> {
    let text = ctx.non_empty(&Setting::file(e.clone()))?;
    let name = text.value.trim();
    let zone = TimeZone::get(name);
    if zone.is_none() {
        ctx.error(
            text.origin,
            format!(
                "{}: `{name}` is not a time zone; use a tz database name like `Europe/Paris`, \
                 `America/New_York` or `UTC`",
                e.path
            ),
        );
    }
    zone
}

/// `day_of_week: mon-fri` (UTC), or `{days: "mon,wed", timezone: Europe/Paris}` (a Gatehouse
/// addition: Pomerium's day matcher is the bare string).
fn day_of_week(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<DaysOfWeek> {
    let (days, zone) = match entry.node {
        Node::Mapping(m) => {
            let mut fields = Fields::new(ctx, &entry.path, m);
            let days = fields.take("days");
            let tz = fields.take("timezone");
            let mut ok = true;
            for e in fields.rest() {
                ok = false;
                ctx.unknown_key(&e, &entry.path, &["days", "timezone"]);
            }
            let zone = match tz {
                Some(e) => timezone(ctx, &e),
                None => Some(TimeZone::utc()),
            };
            let Some(days) = days else {
                ctx.error(
                    entry.origin.clone(),
                    format!("{}: expected `days:` (like `days: mon-fri`)", entry.path),
                );
                return None;
            };
            if !ok {
                return None;
            }
            (days, zone?)
        }
        _ => (entry.clone(), TimeZone::utc()),
    };
    let text = ctx.non_empty(&Setting::file(days.clone()))?;
    let set = ctx.check(&text.origin, &days.path, parse_days(&text.value))?;
    Some(DaysOfWeek {
        days: set,
        timezone: zone,
    })
}

const DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// `*`, `mon,wed,fri`, `mon-fri`, `fri-mon` (wraps over the weekend), full names too.
fn parse_days(s: &str) -> Result<u8, String> {
    let day = |w: &str| -> Result<u8, String> {
        let w = w.trim().to_ascii_lowercase();
        DAY_NAMES
            .iter()
            .position(|d| *d == w || (w.len() == 3 && d.starts_with(&w)))
            .map(|i| i as u8)
            .ok_or_else(|| {
                format!(
                    "`{w}` is not a day; write days like `mon-fri`, `sat,sun` or `*` (mon, tue, \
                     wed, thu, fri, sat, sun or full names)"
                )
            })
    };
    if s.trim() == "*" {
        return Ok(0x7f);
    }
    let mut set = 0u8;
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    set |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => set |= 1 << day(part)?,
        }
    }
    Ok(set)
}

/// `time_of_day: {timezone: Europe/Paris, after: "9:00", before: "5:30 PM"}`: the time zone
/// is required (as in Pomerium), and at least one bound.
fn time_of_day(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<TimeOfDay> {
    let Node::Mapping(m) = entry.node else {
        ctx.error(
            entry.origin.clone(),
            format!(
                "{}: expected a map like `{{timezone: Europe/Paris, after: \"9:00\", before: \
                 \"17:00\"}}`",
                entry.path
            ),
        );
        return None;
    };
    let mut fields = Fields::new(ctx, &entry.path, m);
    let tz = fields.take("timezone");
    let after = fields.take("after");
    let before = fields.take("before");
    let mut ok = true;
    for e in fields.rest() {
        ok = false;
        unknown_matcher(ctx, &e, &entry.path, &["timezone", "after", "before"]);
    }
    let zone = match tz {
        Some(e) => timezone(ctx, &e),
        None => {
            ctx.error(
                entry.origin.clone(),
                format!(
                    "{}: `timezone:` is required (like `timezone: Europe/Paris` or `UTC`)",
                    entry.path
                ),
            );
            None
        }
    };
    let mut bound = |e: Option<Entry<'_>>| -> Option<Option<u32>> {
        let Some(e) = e else { return Some(None) };
        let text = ctx.non_empty(&Setting::file(e.clone()))?;
        ctx.check(&text.origin, &e.path, parse_time(&text.value))
            .map(Some)
    };
    let after_at = after.as_ref().map(|e| e.origin.clone());
    let (after, before) = (bound(after), bound(before));
    let (zone, after, before) = (zone?, after?, before?);
    if !ok {
        return None;
    }
    match (after, before) {
        (None, None) => {
            ctx.error(
                entry.origin.clone(),
                format!("{}: give `after:`, `before:` or both", entry.path),
            );
            None
        }
        (Some(a), Some(b)) if a >= b => {
            ctx.error(
                after_at.unwrap_or_else(|| entry.origin.clone()),
                format!(
                    "{}: `after` is not earlier than `before`, so this never matches; for a \
                     window across midnight, write `or:` with one `time_of_day` `after:` and one \
                     `before:`",
                    entry.path
                ),
            );
            None
        }
        _ => Some(TimeOfDay {
            timezone: zone,
            after,
            before,
        }),
    }
}

/// Pomerium's time formats: `3:04 PM`, `3:04PM`, `3 PM`, `3PM`, `15:04:05.999999999`,
/// `15:04:05`, `15:04`. Returns seconds after midnight (fractions dropped).
pub(super) fn parse_time(s: &str) -> Result<u32, String> {
    let bad = || {
        format!(
            "`{s}` is not a time of day (write it like `9:00`, `17:30`, `17:30:00` or `5:30 PM`)"
        )
    };
    let t = s.trim().to_ascii_uppercase();
    let (clock, meridiem) = if let Some(c) = t.strip_suffix("AM") {
        (c.trim_end(), Some(false))
    } else if let Some(c) = t.strip_suffix("PM") {
        (c.trim_end(), Some(true))
    } else {
        (t.as_str(), None)
    };
    let mut parts = clock.split(':');
    let num = |p: Option<&str>, max: u32| -> Result<Option<u32>, String> {
        match p {
            None => Ok(None),
            Some(p) if !p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()) => {
                let n: u32 = p.parse().map_err(|_| bad())?;
                if n > max { Err(bad()) } else { Ok(Some(n)) }
            }
            Some(_) => Err(bad()),
        }
    };
    let hour = num(parts.next(), 23)?.ok_or_else(bad)?;
    let minute = num(parts.next(), 59)?;
    let second = match parts.next() {
        Some(p) => {
            let whole = match p.split_once('.') {
                Some((w, frac)) if !frac.is_empty() && frac.bytes().all(|b| b.is_ascii_digit()) => {
                    w
                }
                Some(_) => return Err(bad()),
                None => p,
            };
            num(Some(whole), 59)?
        }
        None => None,
    };
    if parts.next().is_some() {
        return Err(bad());
    }
    let hour = match meridiem {
        Some(pm) => {
            if !(1..=12).contains(&hour) || second.is_some() {
                return Err(bad());
            }
            (hour % 12) + if pm { 12 } else { 0 }
        }
        None if minute.is_none() => return Err(bad()),
        None => hour,
    };
    Ok(hour * 3600 + minute.unwrap_or(0) * 60 + second.unwrap_or(0))
}

fn position(origin: &Origin) -> (usize, usize) {
    match origin {
        Origin::File { line, col, .. } => (*line, *col),
        _ => (usize::MAX, usize::MAX),
    }
}
