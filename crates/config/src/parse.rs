//! YAML → [`Config`]: walks marked-yaml nodes (for line:col on every value), resolves
//! `${VAR}`, applies environment overrides, and collects every problem before returning.

mod backend;
mod directory;
mod lint;
mod named;
mod node;
mod policy;
mod relay;
mod route;
mod values;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoadError, Node};

use self::node::{Ctx, Fields, Setting, Text, split_commas, split_words};
use crate::{
    CertificatePair, Config, ConfigError, ConfigErrors, CookieConfig, IdpConfig, IdpProvider,
    Lookup, Origin, SameSite, Secret, Url,
};

/// Top-level keys: the Gatehouse name, then its Pomerium alias (same setting).
/// Each can also come from the environment variable of its upper-case name.
const TOP_KEYS: &[&[&str]] = &[
    &["address"],
    &["insecure_server"],
    &["http_redirect_addr"],
    &["certificate_file"],
    &["certificate_key_file"],
    &["authenticate_service_url"],
    &["idp_provider", "identity_provider"],
    &["idp_provider_url", "identity_provider_url"],
    &["idp_client_id", "identity_provider_client_id"],
    &["idp_client_secret", "identity_provider_client_secret"],
    &["idp_client_secret_file"],
    &["idp_scopes", "identity_provider_scopes"],
    &["cookie_name"],
    &["cookie_secret"],
    &["cookie_secret_file"],
    &["cookie_secret_previous"],
    &["cookie_expire"],
    &["cookie_domain"],
    &["cookie_same_site"],
    &["cookie_http_only"],
    &["cookie_secure"],
    &["cookie_host_prefix"],
    &["state_dir"],
    &["max_connections_per_client"],
    &["access_token_max_expire"],
    &["relay_address"],
    &["provider_key_secret"],
    &["provider_key_secret_file"],
    &["signing_key"],
    &["signing_key_file"],
    &["allowed_domains"],
    &["allowed_groups"],
    &["policies_dir"],
    &["metrics_address"],
    &["health_check_addr"],
    &["log_level"],
    &["idp_service_account"],
    &["idp_service_account_file"],
    &["idp_refresh_directory_interval"],
    &["idp_refresh_directory_timeout"],
    &["idp_directory_max_stale"],
    &["idp_directory_url"],
    &["idp_directory_token_url"],
    &["idp_directory_impersonate_user"],
];

/// Top-level keys read from the file only.
const FILE_ONLY_KEYS: &[&str] = &["certificates", "routes", "backends"];

/// Pomerium keys a migrated config may hold that change nothing about who gets in:
/// ignored with a warning until Gatehouse supports them.
const TOP_IGNORED: &[&str] = &[
    "shared_secret",
    "timeout",
    "timeout_read",
    "timeout_write",
    "timeout_idle",
    "forward_auth_url",
    "databroker_service_url",
    "grpc_address",
    "services",
];

const GOOGLE_ISSUER: &str = "https://accounts.google.com";
const DEFAULT_COOKIE_NAME: &str = "_pomerium";
/// The cookie name with `cookie_host_prefix` and no `cookie_name`.
const DEFAULT_HOST_COOKIE_NAME: &str = "__Host-gatehouse";
const HOST_PREFIX: &str = "__Host-";
/// `state_dir` without pools (with pools: `state` beside the first one's `data_root`).
const DEFAULT_STATE_DIR: &str = "/var/lib/gatehouse/state";
/// `max_connections_per_client` default: far above a person's browser tabs and scripts,
/// far below what would let one address hold the proxy's memory.
const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 512;
/// `relay_address` default port: just below the default backend ports (4101-4199).
const DEFAULT_RELAY_PORT: u16 = 4100;
/// `access_token_max_expire` default.
const DEFAULT_ACCESS_TOKEN_MAX_EXPIRE: Duration = Duration::from_secs(90 * 24 * 60 * 60);
const DEFAULT_COOKIE_EXPIRE: Duration = Duration::from_secs(14 * 60 * 60);
const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];
const DEFAULT_PORT: u16 = 443;

pub(crate) fn load(path: &Path, env: &dyn Lookup, offline: bool) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_text(path, &text, env, offline),
        Err(e) => {
            let ctx = Ctx::new(path, env);
            let origin = ctx.whole_file();
            Err(ConfigErrors {
                errors: vec![ConfigError::new(
                    origin,
                    format!("cannot read the config file: {e}"),
                )],
            })
        }
    }
}

pub(crate) fn load_str(name: &Path, text: &str, env: &dyn Lookup) -> Result<Config, ConfigErrors> {
    load_text(name, text, env, false)
}

fn load_text(
    name: &Path,
    text: &str,
    env: &dyn Lookup,
    offline: bool,
) -> Result<Config, ConfigErrors> {
    let mut ctx = Ctx::new(name, env);
    ctx.offline = offline;
    // Editors on Windows may save a byte-order mark; it is not part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(root) = parse_yaml(&mut ctx, text) else {
        return Err(ctx.into_errors());
    };
    let Some(map) = root.as_mapping() else {
        // The loader is asked for a top-level mapping and refuses anything else.
        let origin = ctx.node_origin(&root);
        ctx.error(
            origin,
            "the file must be a YAML map of keys (like `address: \":443\"`)",
        );
        return Err(ctx.into_errors());
    };
    match build(&mut ctx, map) {
        Some(config) if ctx.errors.is_empty() => Ok(config),
        _ => {
            if ctx.errors.is_empty() {
                // Every `None` above comes with an error; this only guards that promise.
                let origin = ctx.whole_file();
                ctx.error(
                    origin,
                    "the configuration is incomplete (internal error: no reason recorded)",
                );
            }
            Err(ctx.into_errors())
        }
    }
}

/// YAML text → node tree (a top-level map), or a positioned syntax error.
fn parse_yaml(ctx: &mut Ctx<'_>, text: &str) -> Option<Node> {
    parse_yaml_top(ctx, text, &[false])
}

/// Parses YAML text as Gatehouse reads its files: duplicate keys refused, no type coercion,
/// the top level a list (`sequence`) or a map. `None` if the YAML parser panicked (it
/// guards some states with assertions); callers report that as a syntax error.
pub(crate) fn parse_yaml_node(text: &str, sequence: bool) -> Option<Result<Node, LoadError>> {
    let options = marked_yaml::LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .prevent_coercion(true);
    let options = if sequence {
        options.toplevel_sequence()
    } else {
        options
    };
    std::panic::catch_unwind(|| marked_yaml::parse_yaml_with_options(0, text, options)).ok()
}

/// YAML text → node tree whose top level is a list or a map (a policy file).
fn parse_yaml_any(ctx: &mut Ctx<'_>, text: &str) -> Option<Node> {
    parse_yaml_top(ctx, text, &[true, false])
}

/// Parses with each top-level shape in turn (`true` = a list); a shape mismatch moves on
/// to the next, any other problem is reported.
fn parse_yaml_top(ctx: &mut Ctx<'_>, text: &str, shapes: &[bool]) -> Option<Node> {
    if let Some(line) = second_document(text) {
        ctx.error(
            ctx.at(Some(&marked_yaml::Marker::new(0, 0, line, 1))),
            "a second YAML document starts here; a config file holds one document (remove the \
             `---` line or merge the two)",
        );
        return None;
    }
    let mut last = None;
    for &sequence in shapes {
        // marked-yaml 0.8 guards its event handler with `unreachable!`/`assert!`; a config
        // file must never crash the process, so a panic in there becomes a syntax error.
        match parse_yaml_node(text, sequence) {
            Some(Ok(node)) => return Some(node),
            Some(Err(LoadError::TopLevelMustBeSequence(m))) if shapes.len() > 1 => {
                last = Some(LoadError::TopLevelMustBeSequence(m));
            }
            Some(Err(error)) => {
                last = Some(error);
                break;
            }
            None => {
                let origin = ctx.whole_file();
                ctx.error(
                    origin,
                    "YAML syntax error: the YAML parser failed on this file",
                );
                return None;
            }
        }
    }
    let error = last?;
    let (marker, message) = match &error {
        LoadError::ScanError(m, e) => {
            // The scanner notices a mis-indented line only where the structure breaks.
            let hint = if e.info().contains("block") {
                " (check the indentation of this line)"
            } else {
                ""
            };
            (*m, format!("YAML syntax error: {}{hint}", e.info()))
        }
        LoadError::TopLevelMustBeMapping(m) => (
            *m,
            "the file must be a YAML map of keys (like `address: \":443\"`)".to_string(),
        ),
        LoadError::TopLevelMustBeSequence(m) => (
            *m,
            "a policy file holds a list of `- allow:`/`- deny:` blocks (or one such block)"
                .to_string(),
        ),
        LoadError::UnexpectedAnchor(m) => (
            *m,
            "YAML anchors and aliases (`&name`, `*name`) are not supported; write the value out"
                .to_string(),
        ),
        LoadError::MappingKeyMustBeScalar(m) => {
            (*m, "keys must be plain words (like `from:`)".to_string())
        }
        LoadError::UnexpectedTag(m) => (
            *m,
            "YAML tags (`!name`) are not supported; remove the tag".to_string(),
        ),
        LoadError::DuplicateKey(inner) => {
            let first = inner
                .prev_key
                .span()
                .start()
                .map(|m| format!(" (first at line {})", m.line()));
            let marker = inner
                .key
                .span()
                .start()
                .copied()
                .unwrap_or_else(|| marked_yaml::Marker::new(0, 0, 0, 0));
            (
                marker,
                format!(
                    "duplicate key `{}`{}; keep only one",
                    inner.key.as_str(),
                    first.unwrap_or_default()
                ),
            )
        }
    };
    ctx.error(ctx.at(Some(&marker)), message);
    None
}

/// The line of a `---` that starts a second document. marked-yaml reads only the first
/// document and would silently drop the rest (routes, policies).
fn second_document(text: &str) -> Option<usize> {
    let mut seen_content = false;
    for (i, line) in text.lines().enumerate() {
        let is_marker = line
            .strip_prefix("---")
            .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']));
        if is_marker && seen_content {
            return Some(i + 1);
        }
        let trimmed = line.trim();
        if is_marker || !(trimmed.is_empty() || trimmed.starts_with('#') || line.starts_with('%')) {
            seen_content = true;
        }
    }
    None
}

/// The top-level map → `Config`. `None` when a required part is missing or wrong (the
/// reason is on `ctx`).
fn build(ctx: &mut Ctx<'_>, root: &MarkedMappingNode) -> Option<Config> {
    let mut fields = Fields::new(ctx, "", root);
    let mut settings: Vec<Option<Setting<'_>>> = TOP_KEYS
        .iter()
        .map(|names| ctx.setting(&mut fields, names))
        .collect();
    let mut take = |name: &str| -> Option<Setting<'_>> {
        let i = TOP_KEYS.iter().position(|names| names[0] == name)?;
        settings.get_mut(i)?.take()
    };

    let default_address = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT);
    let address = take("address").and_then(|s| addr(ctx, &s));
    let insecure_server = take("insecure_server")
        .and_then(|s| ctx.flag(&s))
        .unwrap_or(false);
    let http_redirect_addr = take("http_redirect_addr").and_then(|s| addr(ctx, &s));

    let certificates = certificates(
        ctx,
        take("certificate_file"),
        take("certificate_key_file"),
        fields.take("certificates"),
    );

    let authenticate_service_url = take("authenticate_service_url").and_then(|s| {
        ctx.non_empty(&s)
            .and_then(|t| ctx.check(&t.origin, &s.path, values::service_url(&t.value)))
    });

    // Secrets written as they are in the file (docs/design.md: with backends, such a file must
    // be readable by Gatehouse alone).
    let mut literal_secrets = Vec::new();
    // Each secret, from the file (or the environment), or from the file `<name>_file`
    // names (Docker secrets, systemd credentials).
    let mut raw_secrets = Vec::new();
    for name in [
        "idp_client_secret",
        "cookie_secret",
        "cookie_secret_previous",
        "provider_key_secret",
        "signing_key",
        "idp_service_account",
    ] {
        let file = match name {
            "cookie_secret_previous" => None,
            _ => take(&format!("{name}_file")),
        };
        raw_secrets.push((name, take(name), file));
    }
    let mut secret_files = Vec::new();
    let mut secrets = raw_secrets.into_iter().map(|(name, value, file)| {
        let s = secret_setting(ctx, name, value, file, &mut secret_files)?;
        // Offline tools decide without secrets: one whose variable is not set counts as absent.
        if ctx.offline && !s.resolves(ctx.env) {
            return None;
        }
        if let Some(origin) = literal_in_file(&s) {
            literal_secrets.push((s.path.clone(), origin));
        }
        Some(s)
    });
    let mut next = || secrets.next().flatten();
    let client_secret = next();
    let cookie_secret = next();
    let previous_secrets = next();
    let provider_key_secret = next();
    let signing_key_setting = next();
    let service_account = next();
    drop(secrets);

    let idp = idp(
        ctx,
        take("idp_provider"),
        take("idp_provider_url"),
        take("idp_client_id"),
        client_secret,
        take("idp_scopes"),
    );

    let directory = directory::directory(
        ctx,
        idp.as_ref().map(|i| i.provider),
        directory::DirectorySettings {
            service_account,
            refresh_interval: take("idp_refresh_directory_interval"),
            timeout: take("idp_refresh_directory_timeout"),
            max_stale: take("idp_directory_max_stale"),
            url: take("idp_directory_url"),
            token_url: take("idp_directory_token_url"),
            impersonate_user: take("idp_directory_impersonate_user"),
        },
    );

    let cookie = cookie(
        ctx,
        take("cookie_name"),
        cookie_secret,
        take("cookie_expire"),
        take("cookie_domain"),
        take("cookie_same_site"),
        take("cookie_http_only"),
        take("cookie_secure"),
        take("cookie_host_prefix"),
    );
    let previous_secrets: Vec<Secret<[u8; 32]>> = match previous_secrets {
        Some(s) => ctx
            .list(&s, split_commas)
            .unwrap_or_default()
            .iter()
            .filter_map(|t| ctx.check(&t.origin, &s.path, values::cookie_secret(&t.value)))
            .map(Secret::new)
            .collect(),
        None => Vec::new(),
    };
    let provider_key_secret = provider_key_secret.and_then(|s| {
        let t = ctx.non_empty(&s)?;
        ctx.check(&t.origin, &s.path, values::cookie_secret(&t.value))
            .map(Secret::new)
    });
    let relay_address = match take("relay_address") {
        Some(s) => addr(ctx, &s).and_then(|a| {
            if a.ip().is_loopback() {
                Some(a)
            } else {
                ctx.error(
                    s.origin.clone(),
                    format!(
                        "{}: `{a}` is not a loopback address; the relay must only be reachable \
                         from this host's backends (like `127.0.0.1:4100`)",
                        s.path
                    ),
                );
                None
            }
        }),
        None => Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            DEFAULT_RELAY_PORT,
        )),
    };

    let signing_key = signing_key_setting.and_then(|s| {
        let t = ctx.non_empty(&s)?;
        ctx.check(&t.origin, &s.path, values::signing_key(&t.value))
            .map(Secret::new)
    });

    let allowed_domains: Vec<String> = match take("allowed_domains") {
        Some(s) => ctx
            .list(&s, split_commas)
            .unwrap_or_default()
            .iter()
            .filter_map(|t| ctx.check(&t.origin, &s.path, values::domain(&t.value)))
            .collect(),
        None => Vec::new(),
    };

    let allowed_groups: Vec<String> = match take("allowed_groups") {
        Some(s) => {
            let items = ctx.list(&s, split_commas).unwrap_or_default();
            for t in items.iter().filter(|t| lint::shouts(&t.value)) {
                ctx.warn(t.origin.clone(), lint::group_case(&s.path, &t.value));
            }
            items
                .iter()
                .filter_map(|t| ctx.check(&t.origin, &s.path, values::group(&t.value)))
                .collect()
        }
        None => Vec::new(),
    };

    let metrics_address = take("metrics_address").and_then(|s| addr(ctx, &s));
    let health_check_addr = take("health_check_addr").and_then(|s| addr(ctx, &s));

    let policies_dir = take("policies_dir").and_then(|s| named::directory(ctx, &s));
    if let Some(dir) = &policies_dir {
        named::load_all(ctx, dir);
    }

    let log_level = take("log_level")
        .and_then(|s| {
            ctx.non_empty(&s)
                .and_then(|t| ctx.check(&t.origin, &s.path, values::log_level(&t.value)))
        })
        .unwrap_or_else(|| "info".to_string());

    let (backends, pool_names) = match fields.take("backends") {
        Some(entry) => backend::pools(ctx, &entry),
        None => (Vec::new(), Vec::new()),
    };
    // A person's key is kept per provider id: two pools that give one id different APIs
    // would send a key entered for one to the other's address.
    let mut seen: Vec<(&str, &crate::RelayProvider)> = Vec::new();
    for pool in &backends {
        for p in pool.relay.iter().flat_map(|r| &r.providers) {
            match seen.iter().find(|(_, q)| q.id == p.id) {
                Some((other, q))
                    if q.style != p.style
                        || q.base_url != p.base_url
                        || q.auth_header != p.auth_header
                        || q.auth_prefix != p.auth_prefix =>
                {
                    ctx.error(
                        p.origin.clone(),
                        format!(
                            "backends.{}.relay.providers.{}: pool `{other}` relays `{}` with another \
                             style, base_url or key header; a person's key is kept per provider id, \
                             so give this one another id or the same settings",
                            pool.name, p.id, p.id
                        ),
                    );
                }
                Some(_) => {}
                None => seen.push((&pool.name, p)),
            }
        }
    }
    if let Some(relay_at) = relay_address {
        for pool in backends.iter().filter(|p| p.relay.is_some()) {
            let origin = pool
                .relay
                .as_ref()
                .map_or_else(|| pool.origin.clone(), |r| r.origin.clone());
            if relay_at.ip().is_loopback()
                && (pool.ports.0..=pool.ports.1).contains(&relay_at.port())
            {
                ctx.error(
                    origin.clone(),
                    format!(
                        "backends.{}.relay: the relay's port {} (relay_address) is inside the \
                         pool's ports {}-{}; move relay_address or the pool's ports",
                        pool.name,
                        relay_at.port(),
                        pool.ports.0,
                        pool.ports.1
                    ),
                );
            }
            if pool.isolation_none.is_some() {
                ctx.warn(
                    origin,
                    format!(
                        "backends.{}.relay with `isolation: none`: every backend runs as \
                         Gatehouse's uid, so the relay cannot check which backend calls it; \
                         a backend that learns another's relay token can spend that person's \
                         key (run as root with `uids` to close this)",
                        pool.name
                    ),
                );
            }
        }
    }
    let max_connections_per_client = match take("max_connections_per_client") {
        Some(s) => ctx.non_empty(&s).and_then(|t| {
            let parsed = match t.value.trim().parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!(
                    "`{}` must be a whole number, 1 or more (the requests one client address may have open at once; default {DEFAULT_MAX_CONNECTIONS_PER_CLIENT})",
                    t.value
                )),
            };
            ctx.check(&t.origin, &s.path, parsed)
        }),
        None => Some(DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
    };
    let access_token_max_expire = match take("access_token_max_expire") {
        Some(s) => ctx.non_empty(&s).and_then(|t| {
            let parsed = values::duration(&t.value).and_then(|d| {
                if d < Duration::from_secs(60 * 60) {
                    Err(format!(
                        "`{}` is shorter than an hour; personal access tokens need at least `1h` (default 90d)",
                        t.value
                    ))
                } else {
                    Ok(d)
                }
            });
            ctx.check(&t.origin, &s.path, parsed)
        }),
        None => Some(DEFAULT_ACCESS_TOKEN_MAX_EXPIRE),
    };
    let state_dir = match take("state_dir") {
        Some(s) => ctx.non_empty(&s).map(|t| {
            let p = std::path::PathBuf::from(t.value);
            (if p.is_relative() { ctx.dir.join(p) } else { p }, t.origin)
        }),
        None => Some((
            backends
                .first()
                .and_then(|p: &crate::BackendPool| p.data_root.parent())
                .map(|d| d.join("state"))
                .unwrap_or_else(|| std::path::PathBuf::from(DEFAULT_STATE_DIR)),
            Origin::Default,
        )),
    };
    let routes = match fields.take("routes") {
        Some(entry) => route::routes(ctx, &entry, &pool_names),
        None => Vec::new(),
    };
    if routes.is_empty() && ctx.errors.is_empty() {
        let origin = ctx.whole_file();
        ctx.warn(
            origin,
            "no routes: every request will get 404 (add `routes:` with `from:` and `to:`)",
        );
    }
    let mut route_list = Vec::with_capacity(routes.len());
    // A criterion shared by several routes (a named policy) is warned about once.
    let mut linted: Vec<Origin> = Vec::new();
    for (route, access) in routes {
        for (origin, message) in lint::route(&route) {
            if !linted.contains(&origin) {
                linted.push(origin.clone());
                ctx.warn(origin, message);
            }
        }
        // Any Google account (a gmail.com one too) passes `allow_any_authenticated_user`, and
        // a backend route hands each a shell on this host (issue 11).
        if route.allow_any_authenticated_user
            && matches!(route.to, crate::Upstream::Backend(_))
            && idp
                .as_ref()
                .is_some_and(|i| i.provider == IdpProvider::Google)
        {
            ctx.warn(
                route.origin.clone(),
                format!(
                    "routes[{}]: `allow_any_authenticated_user` with `to_backend` on Google: \
                     anyone with any Google account gets their own assistant, with a shell on \
                     this host; use `allowed_domains` (your Workspace domain) instead",
                    route.index
                ),
            );
        }
        if !access.grants_someone && allowed_domains.is_empty() && allowed_groups.is_empty() {
            ctx.warn(
                route.origin.clone(),
                format!(
                    "routes[{}] lets nobody in: add a `policy`, `allowed_domains` or `allowed_users`, \
                     or `allow_any_authenticated_user: true`",
                    route.index
                ),
            );
        }
        route_list.push(route);
    }

    for entry in fields.rest() {
        if TOP_IGNORED.contains(&entry.key) {
            ctx.warn(
                entry.key_origin.clone(),
                format!("ignored: `{}` is not supported by Gatehouse yet", entry.key),
            );
        } else if route::ACCESS_UNSUPPORTED.contains(&entry.key) {
            ctx.error(
                entry.key_origin.clone(),
                route::access_unsupported(&entry.path),
            );
        } else {
            let known: Vec<&str> = TOP_KEYS
                .iter()
                .flat_map(|n| n.iter().copied())
                .chain(FILE_ONLY_KEYS.iter().copied())
                .collect();
            ctx.unknown_key(&entry, "", &known);
        }
    }

    let warnings = ctx.take_warnings();
    Some(Config {
        source: ctx.file.to_path_buf(),
        address: address.unwrap_or(default_address),
        insecure_server,
        http_redirect_addr,
        certificates,
        authenticate_service_url,
        idp: idp?,
        directory,
        cookie: cookie.map(|mut c| {
            c.previous_secrets = previous_secrets;
            c
        })?,
        relay_address: relay_address?,
        secret_files,
        access_token_max_expire: access_token_max_expire?,
        provider_key_secret,
        signing_key,
        allowed_domains,
        allowed_groups,
        policies_dir,
        policies: std::mem::take(&mut ctx.named_policies),
        metrics_address,
        health_check_addr,
        routes: route_list,
        backends,
        literal_secrets,
        log_level,
        max_connections_per_client: max_connections_per_client?,
        state_dir: state_dir.as_ref()?.0.clone(),
        state_dir_origin: state_dir?.1,
        warnings,
    })
}

/// Where a setting holds its value literally in the file: not from the environment and not
/// a `${VAR}` reference.
/// A secret's setting: its value as written (or from the environment), or the contents of
/// the file `<name>_file` names (relative to the config file; trailing whitespace dropped),
/// recorded in `files` for the permission check. Both at once is an error.
fn secret_setting<'n>(
    ctx: &mut Ctx<'_>,
    name: &str,
    value: Option<Setting<'n>>,
    file: Option<Setting<'n>>,
    files: &mut Vec<(String, std::path::PathBuf, Origin)>,
) -> Option<Setting<'n>> {
    let Some(file) = file else {
        return value;
    };
    if value.is_some() {
        ctx.error(
            file.origin.clone(),
            format!(
                "give {name} or {}, not both (the {} environment variable counts as {name})",
                file.path,
                name.to_ascii_uppercase()
            ),
        );
        return value;
    }
    let t = ctx.non_empty(&file)?;
    // Relative to the config file's directory (an absolute path replaces it).
    let path = ctx.dir.join(t.value.trim());
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            files.push((file.path.clone(), path, t.origin.clone()));
            Some(Setting {
                path: file.path.clone(),
                origin: t.origin,
                src: node::Source::Env(text.trim_end().to_string()),
            })
        }
        Err(e) => {
            ctx.error(
                t.origin,
                format!(
                    "{}: cannot read {} ({e}); check the path (a relative one is relative to the config file) and that Gatehouse's user may read it",
                    file.path,
                    path.display()
                ),
            );
            None
        }
    }
}

fn literal_in_file(setting: &Setting<'_>) -> Option<Origin> {
    match &setting.src {
        node::Source::File(entry) => match entry.node {
            marked_yaml::Node::Scalar(s)
                if !s.as_str().trim().is_empty() && !s.as_str().contains("${") =>
            {
                Some(entry.origin.clone())
            }
            _ => None,
        },
        node::Source::Env(_) => None,
    }
}

fn addr(ctx: &mut Ctx<'_>, setting: &Setting<'_>) -> Option<SocketAddr> {
    let text = ctx.non_empty(setting)?;
    ctx.check(
        &text.origin,
        &setting.path,
        values::listen_addr(&text.value),
    )
}

/// `certificate_file` + `certificate_key_file`, then each `certificates:` entry, in order.
/// The files must be readable; the proxy parses them.
fn certificates(
    ctx: &mut Ctx<'_>,
    cert_file: Option<Setting<'_>>,
    key_file: Option<Setting<'_>>,
    list: Option<node::Entry<'_>>,
) -> Vec<CertificatePair> {
    let mut out = Vec::new();
    match (cert_file, key_file) {
        (Some(cert), Some(key)) => {
            if let (Some(c), Some(k)) = (readable_file(ctx, &cert), readable_file(ctx, &key)) {
                out.push(CertificatePair {
                    cert_file: c.0,
                    key_file: k.0,
                    origin: c.1,
                });
            }
        }
        (Some(one), None) | (None, Some(one)) => {
            let (has, lacks) = if one.path == "certificate_file" {
                ("certificate_file", "certificate_key_file")
            } else {
                ("certificate_key_file", "certificate_file")
            };
            ctx.error(
                one.origin.clone(),
                format!("{has} is set but {lacks} is not; give both (or neither)"),
            );
        }
        (None, None) => {}
    }
    let Some(list) = list else { return out };
    let items = match list.node {
        Node::Sequence(items) => items,
        Node::Scalar(s) if s.as_str().is_empty() => return out,
        _ => {
            ctx.error(
                list.origin.clone(),
                "certificates: expected a list of `{cert: file, key: file}`",
            );
            return out;
        }
    };
    for (i, item) in items.iter().enumerate() {
        let path = format!("certificates[{i}]");
        let origin = ctx.node_origin(item);
        let Some(map) = item.as_mapping() else {
            ctx.error(
                origin,
                format!("{path}: expected `cert:` and `key:` file paths"),
            );
            continue;
        };
        let mut fields = Fields::new(ctx, &path, map);
        let cert = fields.take("cert").map(Setting::file);
        let key = fields.take("key").map(Setting::file);
        for entry in fields.rest() {
            ctx.unknown_key(&entry, &path, &["cert", "key"]);
        }
        let (Some(cert), Some(key)) = (cert, key) else {
            ctx.error(
                origin,
                format!("{path}: needs both `cert:` and `key:` (file paths)"),
            );
            continue;
        };
        if let (Some(c), Some(k)) = (readable_file(ctx, &cert), readable_file(ctx, &key)) {
            out.push(CertificatePair {
                cert_file: c.0,
                key_file: k.0,
                origin: c.1,
            });
        }
    }
    out
}

/// A path (relative to the config file's directory) to a file that can be opened.
fn readable_file(ctx: &mut Ctx<'_>, setting: &Setting<'_>) -> Option<(std::path::PathBuf, Origin)> {
    let text = ctx.non_empty(setting)?;
    let path = ctx.dir.join(text.value.trim());
    let problem = match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => Some("is a directory, not a file".to_string()),
        Ok(_) => std::fs::File::open(&path)
            .err()
            .map(|e| format!("cannot be read: {e}")),
        Err(e) => Some(format!("cannot be read: {e}")),
    };
    if let Some(problem) = problem {
        ctx.error(
            text.origin,
            format!("{}: `{}` {problem}", setting.path, path.display()),
        );
        return None;
    }
    Some((path, text.origin))
}

fn idp(
    ctx: &mut Ctx<'_>,
    provider: Option<Setting<'_>>,
    url: Option<Setting<'_>>,
    client_id: Option<Setting<'_>>,
    client_secret: Option<Setting<'_>>,
    scopes: Option<Setting<'_>>,
) -> Option<IdpConfig> {
    let (provider, origin) = match provider {
        Some(s) => {
            let text = ctx.non_empty(&s);
            let provider =
                text.as_ref()
                    .and_then(|t| match t.value.trim().to_ascii_lowercase().as_str() {
                        "google" => Some(IdpProvider::Google),
                        "oidc" => Some(IdpProvider::Oidc),
                        _ => {
                            ctx.error(
                        t.origin.clone(),
                        format!(
                            "{}: `{}` is not supported (supported: google, oidc); for another \
                             OpenID Connect provider use `oidc` with idp_provider_url",
                            s.path, t.value
                        ),
                    );
                            None
                        }
                    });
            (provider, s.origin)
        }
        None => (Some(IdpProvider::Google), Origin::Default),
    };

    let issuer = match url {
        Some(s) => ctx
            .non_empty(&s)
            .and_then(|t| ctx.check(&t.origin, &s.path, values::secure_url(&t.value))),
        None => match provider {
            Some(IdpProvider::Google) => match Url::parse(GOOGLE_ISSUER) {
                Ok(url) => Some(url),
                Err(e) => {
                    ctx.error(
                        Origin::Default,
                        format!("internal error: Google's issuer URL: {e}"),
                    );
                    None
                }
            },
            Some(IdpProvider::Oidc) => {
                ctx.error(
                    origin.clone(),
                    "idp_provider_url is required with `oidc`: the issuer URL of your provider \
                     (like https://login.example.com/realms/team)",
                );
                None
            }
            None => None,
        },
    };

    let required =
        |ctx: &mut Ctx<'_>, setting: Option<Setting<'_>>, what: &str, name: &str, alias: &str| {
            match setting {
                Some(s) => ctx.non_empty(&s),
                None => {
                    let origin = ctx.whole_file();
                    ctx.error(
                        origin,
                        format!(
                            "{name} is required ({what} from your identity provider); set {name} \
                         (or {alias}), or the {} environment variable",
                            name.to_ascii_uppercase()
                        ),
                    );
                    None
                }
            }
        };
    let client_id = required(
        ctx,
        client_id,
        "the OAuth client ID",
        "idp_client_id",
        "identity_provider_client_id",
    );
    let client_secret = match client_secret {
        // Offline tools never talk to the IdP.
        None if ctx.offline => Some(Text {
            value: "offline".into(),
            origin: ctx.whole_file(),
        }),
        s => required(
            ctx,
            s,
            "the OAuth client secret",
            "idp_client_secret",
            "identity_provider_client_secret",
        ),
    };

    let scopes = match scopes {
        Some(s) => {
            let list = ctx.list(&s, split_words)?;
            let scopes: Vec<String> = list.iter().map(|t| t.value.trim().to_string()).collect();
            if !scopes.iter().any(|x| x == "openid") {
                ctx.error(
                    s.origin.clone(),
                    format!(
                        "{}: must include `openid` (like `openid email profile`)",
                        s.path
                    ),
                );
                return None;
            }
            scopes
        }
        None => DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect(),
    };

    Some(IdpConfig {
        provider: provider?,
        issuer: issuer?,
        client_id: client_id?.value.trim().to_string(),
        client_secret: Secret::new(client_secret?.value.trim().to_string()),
        scopes,
        origin,
    })
}

#[allow(clippy::too_many_arguments)] // one per `cookie_*` key
fn cookie(
    ctx: &mut Ctx<'_>,
    name: Option<Setting<'_>>,
    secret: Option<Setting<'_>>,
    expire: Option<Setting<'_>>,
    domain: Option<Setting<'_>>,
    same_site: Option<Setting<'_>>,
    http_only: Option<Setting<'_>>,
    secure: Option<Setting<'_>>,
    host_prefix: Option<Setting<'_>>,
) -> Option<CookieConfig> {
    let prefix_asked = host_prefix.and_then(|s| ctx.flag(&s)).unwrap_or(false);
    let name = match name {
        Some(s) => ctx
            .non_empty(&s)
            .and_then(|t| ctx.check(&t.origin, &s.path, values::cookie_name(t.value.trim())))
            .map(|n| {
                if prefix_asked && !n.starts_with(HOST_PREFIX) {
                    format!("{HOST_PREFIX}{n}")
                } else {
                    n
                }
            }),
        None if prefix_asked => Some(DEFAULT_HOST_COOKIE_NAME.to_string()),
        None => Some(DEFAULT_COOKIE_NAME.to_string()),
    };
    let host_prefix = prefix_asked || name.as_ref().is_some_and(|n| n.starts_with(HOST_PREFIX));
    let secret = match secret {
        Some(s) => ctx.text(&s).and_then(|t: Text| {
            if t.value.trim().is_empty() {
                ctx.error(t.origin, values::cookie_secret_missing());
                return None;
            }
            ctx.check(&t.origin, &s.path, values::cookie_secret(&t.value))
        }),
        // Offline tools seal nothing: a placeholder stands in.
        None if ctx.offline => Some([0x5a; 32]),
        None => {
            let origin = ctx.whole_file();
            ctx.error(origin, values::cookie_secret_missing());
            None
        }
    };
    let expire = match expire {
        Some(s) => ctx
            .non_empty(&s)
            .and_then(|t| ctx.check(&t.origin, &s.path, values::duration(&t.value))),
        None => Some(DEFAULT_COOKIE_EXPIRE),
    };
    let domain = domain.and_then(|s| {
        let t = ctx.text(&s)?;
        if t.value.trim().is_empty() {
            return None;
        }
        let d = ctx.check(&t.origin, &s.path, values::cookie_domain(&t.value))?;
        if host_prefix {
            ctx.error(
                t.origin,
                format!(
                    "{}: a `__Host-` cookie (cookie_host_prefix: true, or a cookie_name that \
                     begins with `__Host-`) cannot carry a Domain, so it cannot be shared \
                     with other hosts; remove cookie_domain (each route host then gets its \
                     own session, through authenticate_service_url) or set \
                     cookie_host_prefix: false",
                    s.path
                ),
            );
            return None;
        }
        Some(d)
    });
    let same_site = match same_site {
        Some(s) => ctx
            .non_empty(&s)
            .and_then(|t| ctx.check(&t.origin, &s.path, values::same_site(&t.value))),
        None => Some(SameSite::Lax),
    };
    for (setting, attribute) in [(http_only, "HttpOnly"), (secure, "Secure")] {
        if let Some(s) = setting
            && ctx.flag(&s) == Some(false)
        {
            ctx.error(
                s.origin.clone(),
                format!(
                    "{}: Gatehouse always sets {attribute} on its session cookies, so this can \
                     only be `true`; remove the line",
                    s.path
                ),
            );
        }
    }
    Some(CookieConfig {
        name: name?,
        secret: Secret::new(secret?),
        expire: expire?,
        domain,
        same_site: same_site?,
        host_prefix,
        previous_secrets: Vec::new(),
    })
}
