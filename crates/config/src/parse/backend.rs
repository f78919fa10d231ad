//! `backends:`: pools of per-person backends (issue 5). Routes name a pool with
//! `to_backend: <name>`; the pools are read first so routes can check the name.
//!
//! ```yaml
//! backends:
//!   assistant:
//!     ports: 4101-4199
//!     data_root: /var/lib/gatehouse/backends
//!     idle_timeout: 30m
//!     uids: 200000-200999
//! routes:
//!   - from: https://assistant.example.com
//!     to_backend: assistant
//!     allowed_domains: [example.com]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use marked_yaml::Node;

use super::node::{Ctx, Entry, Fields, Setting, Text, split_words};
use super::values;
use crate::{BackendPool, Confinement, EgressRule, Limits, Origin, UidRange};

const POOL_KEYS: &[&str] = &[
    "command",
    "ports",
    "data_root",
    "idle_timeout",
    "start_timeout",
    "max_starting",
    "max_backends",
    "env",
    "uids",
    "isolation",
    "limits",
    "egress",
    "confinement",
    "stop_on_sign_out",
    "relay",
    "workspace",
];

const LIMIT_KEYS: &[&str] = &["processes", "memory", "open_files"];

/// Environment variables Gatehouse sets itself for every backend.
const RESERVED_ENV: &[&str] = &[
    "OPENCODE_SERVER_PASSWORD",
    "OPENCODE_SERVER_USERNAME",
    "HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "GATEHOUSE_BACKEND_PORT",
];

/// `backends:` → the pools that parsed (problems are on `ctx`) and the names of all pools
/// written, broken or not (so a route naming a broken pool gets no second, misleading error).
pub(super) fn pools(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> (Vec<BackendPool>, Vec<String>) {
    let map = match entry.node {
        Node::Mapping(map) => map,
        Node::Scalar(s) if s.as_str().is_empty() || s.as_str() == "~" => {
            return (Vec::new(), Vec::new());
        }
        _ => {
            ctx.error(
                entry.origin.clone(),
                "backends: expected a map of pool names to settings (like `backends: { assistant: { ports: 4101-4199 } }`)",
            );
            return (Vec::new(), Vec::new());
        }
    };
    let mut out = Vec::new();
    let mut names = Vec::new();
    for pool_entry in Fields::new(ctx, "backends", map).rest() {
        names.push(pool_entry.key.to_string());
        if let Some(p) = pool(ctx, &pool_entry) {
            out.push(p);
        }
    }
    (out, names)
}

fn pool(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<BackendPool> {
    let name = entry.key.to_string();
    let path = entry.path.clone();
    if !values::is_name(&name) {
        ctx.error(
            entry.key_origin.clone(),
            format!("{path}: pool names use letters, digits, `-` and `_` only (like `assistant`)"),
        );
        return None;
    }
    let errors_before = ctx.errors.len();
    let map = match entry.node {
        Node::Mapping(map) => Some(map),
        // `assistant:` with nothing below: all defaults.
        Node::Scalar(s) if s.as_str().is_empty() || s.as_str() == "~" => None,
        _ => {
            ctx.error(
                entry.origin.clone(),
                format!(
                    "{path}: expected the pool's settings as a map (or nothing, for all defaults)"
                ),
            );
            return None;
        }
    };
    let empty = marked_yaml::types::MarkedMappingNode::new_empty(marked_yaml::Span::new_blank());
    let mut fields = Fields::new(ctx, &path, map.unwrap_or(&empty));
    let defaults = BackendPool::with_defaults(&name);

    let command = match fields.take("command").map(Setting::file) {
        Some(s) => command(ctx, &s),
        None => Some(defaults.command.clone()),
    };
    let ports = match fields.take("ports").map(Setting::file) {
        Some(s) => range(ctx, &s, "ports", "4101-4199", |a: u16, b| {
            if a == 0 {
                Err("port 0 is not a port")
            } else if a > b {
                Err("the first port is above the last")
            } else {
                Ok(())
            }
        }),
        None => Some(defaults.ports),
    };
    let data_root = match fields.take("data_root").map(Setting::file) {
        Some(s) => ctx.non_empty(&s).map(|t| {
            let p = PathBuf::from(t.value);
            if p.is_relative() { ctx.dir.join(p) } else { p }
        }),
        None => Some(defaults.data_root.clone()),
    };
    let workspace = match fields.take("workspace").map(Setting::file) {
        Some(s) => ctx.non_empty(&s).and_then(|t| {
            let name = t.value.trim();
            let plain = name.len() <= 64
                && name != "."
                && name != ".."
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if plain {
                Some(name.to_string())
            } else {
                ctx.error(
                    t.origin,
                    format!(
                        "{}: `{name}` is not a plain directory name; write one name of up to 64 \
                         letters, digits, `.`, `_` or `-` (like `workspace`): the project \
                         directory made in each person's home",
                        s.path
                    ),
                );
                None
            }
        }),
        None => Some(defaults.workspace.clone()),
    };
    let idle_timeout = duration(ctx, &mut fields, "idle_timeout", defaults.idle_timeout);
    let start_timeout = duration(ctx, &mut fields, "start_timeout", defaults.start_timeout);
    let max_starting = count(ctx, &mut fields, "max_starting");
    let max_backends = count(ctx, &mut fields, "max_backends");
    let env_entry = fields.take("env");
    let env_origin = env_entry.as_ref().map(|e| e.origin.clone());
    let env = env_entry.map(|e| env(ctx, &e)).unwrap_or(Some(Vec::new()));
    let uids = fields.take("uids").map(Setting::file).map(|s| {
        range(ctx, &s, "uids", "200000-200999", |a: u32, b| {
            if a == 0 {
                Err("uid 0 is root: backends must never run as root")
            } else if a > b {
                Err("the first uid is above the last")
            } else if b == u32::MAX {
                Err("uid 4294967295 is not a uid (it means \"no change\" to the kernel)")
            } else {
                Ok(())
            }
        })
        .map(|(first, last)| UidRange {
            first,
            last,
            origin: s.origin.clone(),
        })
    });
    let isolation_none = fields.take("isolation").map(Setting::file).and_then(|s| {
        let t = ctx.non_empty(&s)?;
        match t.value.trim() {
            "none" => Some(Some(t.origin)),
            "uids" => Some(None),
            other => {
                ctx.error(
                    t.origin,
                    format!(
                        "{}: `{other}` is not an isolation; write `uids` (one uid per person, \
                         the default) or `none` (backends share Gatehouse's uid)",
                        s.path
                    ),
                );
                None
            }
        }
    });
    let limits = match fields.take("limits") {
        Some(e) => limits(ctx, &e),
        None => Some(Limits::default()),
    };
    let egress = match fields.take("egress") {
        Some(e) => egress(ctx, &e),
        None => Some(Vec::new()),
    };
    let confinement = fields.take("confinement").map(Setting::file).and_then(|s| {
        let t = ctx.non_empty(&s)?;
        match t.value.trim() {
            "required" => Some(Confinement::Required),
            "best_effort" => Some(Confinement::BestEffort),
            other => {
                ctx.error(
                    t.origin,
                    format!(
                        "{}: `{other}` is not a confinement; write `required` (refuse to start \
                         without nftables and Landlock, the default) or `best_effort`",
                        s.path
                    ),
                );
                None
            }
        }
    });
    if let (Some(Some(none_at)), Some(Some(_))) = (&isolation_none, &uids) {
        ctx.error(
            none_at.clone(),
            format!("{path}.isolation: `none` and `uids` contradict each other; keep one"),
        );
    }
    let stop_on_sign_out = fields
        .take("stop_on_sign_out")
        .map(Setting::file)
        .and_then(|s| ctx.flag(&s))
        .unwrap_or(false);
    let relay = fields.take("relay").map(|e| super::relay::relay(ctx, &e));
    if let (Some(Some(_)), Some(env)) = (&relay, &env) {
        relay_config_content(ctx, &path, env, env_origin);
    }
    for rest in fields.rest() {
        ctx.unknown_key(&rest, &path, POOL_KEYS);
    }

    let ports = ports?;
    let port_count = usize::from(ports.1 - ports.0) + 1;
    let max_backends = match max_backends {
        Some(Some((n, origin))) if n > port_count => {
            ctx.error(
                origin,
                format!(
                    "{path}.max_backends: {n} backends need {n} ports, but `ports` has {port_count}; \
                     widen `ports` or lower `max_backends`"
                ),
            );
            None
        }
        Some(Some((n, _))) => Some(n),
        Some(None) => None,
        None => Some(port_count),
    };
    if ctx.errors.len() > errors_before {
        return None;
    }
    Some(BackendPool {
        name,
        command: command?,
        ports,
        data_root: data_root?,
        idle_timeout: idle_timeout?,
        start_timeout: start_timeout?,
        max_starting: match max_starting {
            Some(v) => v?.0,
            None => defaults.max_starting,
        },
        max_backends: max_backends?,
        env: env?,
        uids: uids.flatten(),
        isolation_none: isolation_none.flatten(),
        limits: limits?,
        egress: egress?,
        confinement: confinement.unwrap_or_default(),
        stop_on_sign_out,
        workspace: workspace?,
        relay: match relay {
            Some(r) => Some(r?),
            None => None,
        },
        origin: entry.key_origin.clone(),
    })
}

/// With a relay, Gatehouse merges its provider entries into the pool's
/// `OPENCODE_CONFIG_CONTENT`, which must then be a JSON object.
fn relay_config_content(
    ctx: &mut Ctx<'_>,
    path: &str,
    env: &[(String, String)],
    origin: Option<crate::Origin>,
) {
    let Some((_, content)) = env.iter().find(|(k, _)| k == "OPENCODE_CONFIG_CONTENT") else {
        return;
    };
    let problem = match serde_json::from_str::<serde_json::Value>(content) {
        Ok(serde_json::Value::Object(o)) => match o.get("provider") {
            None | Some(serde_json::Value::Object(_)) => return,
            Some(_) => "its `provider` is not an object".to_string(),
        },
        Ok(_) => "it is not a JSON object".to_string(),
        Err(e) => format!("it is not JSON ({e})"),
    };
    let origin = origin.unwrap_or_else(|| ctx.whole_file());
    ctx.error(
        origin,
        format!(
            "{path}.env.OPENCODE_CONFIG_CONTENT: {problem}; with `relay`, Gatehouse merges its \
             provider entries into this OpenCode config, so it must be a JSON object like \
             `{{\"model\": \"openai/gpt-4o\"}}`"
        ),
    );
}

/// `command:` a list (`[opencode, serve, --port, "{port}"]`) or one string split on spaces.
fn command(ctx: &mut Ctx<'_>, setting: &Setting<'_>) -> Option<Vec<String>> {
    let items: Vec<Text> = ctx.list(setting, split_words)?;
    if items.is_empty() {
        ctx.error(
            setting.origin.clone(),
            format!("{}: must not be empty", setting.path),
        );
        return None;
    }
    if !items.iter().any(|t| t.value.contains("{port}")) {
        ctx.error(
            setting.origin.clone(),
            format!(
                "{}: no argument contains `{{port}}`, so the backend cannot know which port to \
                 listen on (like `[opencode, serve, --hostname, 127.0.0.1, --port, \"{{port}}\"]`)",
                setting.path
            ),
        );
        return None;
    }
    Some(items.into_iter().map(|t| t.value).collect())
}

/// `first-last` (or one number) of `T`.
fn range<T: std::str::FromStr + Copy + std::fmt::Display>(
    ctx: &mut Ctx<'_>,
    setting: &Setting<'_>,
    key: &str,
    example: &str,
    check: impl Fn(T, T) -> Result<(), &'static str>,
) -> Option<(T, T)> {
    let text = ctx.non_empty(setting)?;
    let v = text.value.trim();
    let (a, b) = v.split_once('-').unwrap_or((v, v));
    let parsed = match (a.trim().parse::<T>(), b.trim().parse::<T>()) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(format!(
            "`{v}` is not a range (write it like `{key}: {example}`)"
        )),
    }
    .and_then(|(a, b)| {
        check(a, b)
            .map(|()| (a, b))
            .map_err(|e| format!("`{v}`: {e}"))
    });
    ctx.check(&text.origin, &setting.path, parsed)
}

fn duration(
    ctx: &mut Ctx<'_>,
    fields: &mut Fields<'_>,
    key: &str,
    default: Duration,
) -> Option<Duration> {
    match fields.take(key).map(Setting::file) {
        Some(s) => ctx
            .non_empty(&s)
            .and_then(|t| ctx.check(&t.origin, &s.path, values::duration(&t.value))),
        None => Some(default),
    }
}

/// A whole number ≥ 1. Outer `None`: not given; inner `None`: given but wrong.
fn count(ctx: &mut Ctx<'_>, fields: &mut Fields<'_>, key: &str) -> Option<Option<(usize, Origin)>> {
    let s = fields.take(key).map(Setting::file)?;
    let Some(t) = ctx.non_empty(&s) else {
        return Some(None);
    };
    let parsed = match t.value.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{}` must be a whole number, 1 or more", t.value)),
    };
    Some(ctx.check(&t.origin, &s.path, parsed).map(|n| (n, t.origin)))
}

/// `env:` a map of names to values.
fn env(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<Vec<(String, String)>> {
    let map = map_of(
        ctx,
        entry,
        " of names to values (like `env: { OPENCODE_DISABLE_SHARE: \"1\" }`)",
    )?;
    let mut out = Vec::new();
    let mut ok = true;
    for var in Fields::new(ctx, &entry.path, map).rest() {
        let valid_name = !var.key.is_empty()
            && !var.key.starts_with(|c: char| c.is_ascii_digit())
            && var
                .key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            ctx.error(
                var.key_origin.clone(),
                format!(
                    "{}: not a variable name (letters, digits and `_`)",
                    var.path
                ),
            );
            ok = false;
            continue;
        }
        if RESERVED_ENV.contains(&var.key) {
            ctx.error(
                var.key_origin.clone(),
                format!(
                    "{}: Gatehouse sets `{}` itself for every backend; remove it",
                    var.path, var.key
                ),
            );
            ok = false;
            continue;
        }
        match ctx.scalar(&var.path, var.node, &var.origin) {
            Some(t) => out.push((var.key.to_string(), t.value)),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// `limits: {processes: 512, memory: 8G, open_files: 4096}`; keys left out keep their
/// defaults.
fn limits(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<Limits> {
    let map = map_of(
        ctx,
        entry,
        " (like `limits: { processes: 512, memory: 8G, open_files: 4096 }`)",
    )?;
    let mut out = Limits::default();
    let mut ok = true;
    for item in Fields::new(ctx, &entry.path, map).rest() {
        let Some(t) = ctx.scalar(&item.path, item.node, &item.origin) else {
            ok = false;
            continue;
        };
        let parsed = match item.key {
            "processes" => whole(&t.value, 16).map(|n| out.processes = n),
            "open_files" => whole(&t.value, 64).map(|n| out.open_files = n),
            "memory" => bytes(&t.value).map(|n| out.memory_bytes = n),
            _ => {
                ctx.unknown_key(&item, &entry.path, LIMIT_KEYS);
                ok = false;
                continue;
            }
        };
        if ctx.check(&t.origin, &item.path, parsed).is_none() {
            ok = false;
        }
    }
    ok.then_some(out)
}

fn whole(text: &str, min: u64) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        Ok(_) => Err(format!(
            "`{text}` is too low to run OpenCode; use {min} or more"
        )),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// `512M`, `8G`, `8GiB`, or a number of bytes. At least 1 GiB: OpenCode (Bun) reserves
/// part of its data segment at start and aborts below that (docs/opencode.md).
fn bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(format!("`{text}` is not a size (like `8G` or `512M`)")),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size (like `8G` or `512M`)"))?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes < 1 << 30 {
        return Err(format!(
            "`{text}` is below 1G, too little for OpenCode to start (it reserves part of its \
             data segment at start)"
        ));
    }
    Ok(bytes)
}

/// `egress: {allow: [127.0.0.1:9100, 10.1.0.0/16, llm.internal:443]}`.
fn egress(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<Vec<EgressRule>> {
    let map = map_of(
        ctx,
        entry,
        " (like `egress: { allow: [\"10.0.0.5:443\"] }`)",
    )?;
    let mut out = Vec::new();
    let mut ok = true;
    for item in Fields::new(ctx, &entry.path, map).rest() {
        if item.key != "allow" {
            ctx.unknown_key(&item, &entry.path, &["allow"]);
            ok = false;
            continue;
        }
        let setting = Setting::file(item);
        let Some(list) = ctx.list(&setting, split_words) else {
            ok = false;
            continue;
        };
        for t in list {
            match values::egress_rule(&t.value) {
                Ok((target, port)) => out.push(EgressRule {
                    target,
                    port,
                    written: t.value.trim().to_string(),
                    origin: t.origin.clone(),
                }),
                Err(e) => {
                    ctx.error(t.origin, format!("{}: {e}", setting.path));
                    ok = false;
                }
            }
        }
    }
    ok.then_some(out)
}

/// The map under `entry`, or an error that shows what one looks like (`what` follows
/// "expected a map").
fn map_of<'n>(
    ctx: &mut Ctx<'_>,
    entry: &Entry<'n>,
    what: &str,
) -> Option<&'n marked_yaml::types::MarkedMappingNode> {
    match entry.node {
        Node::Mapping(map) => Some(map),
        _ => {
            ctx.error(
                entry.origin.clone(),
                format!("{}: expected a map{what}", entry.path),
            );
            None
        }
    }
}
