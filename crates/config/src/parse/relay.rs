//! `backends.<pool>.relay`: the LLM relay that keeps provider keys out of the backends
//! (issue 12).
//!
//! ```yaml
//! backends:
//!   assistant:
//!     relay:
//!       keys: ephemeral          # or persistent (encrypted in the state store)
//!       rate_limit: 120          # relay requests per person per minute
//!       providers:
//!         openai: {}             # built-in: OpenAI-style, https://api.openai.com/v1
//!         anthropic: {}          # built-in: Anthropic-style, https://api.anthropic.com/v1
//!         local:
//!           style: openai
//!           base_url: http://127.0.0.1:18999/v1
//! ```

use marked_yaml::Node;

use super::node::{Ctx, Entry, Fields, Setting};
use super::values;
use crate::{KeyMode, ProviderStyle, RelayProvider, RelaySettings};

const RELAY_KEYS: &[&str] = &["keys", "rate_limit", "providers"];
const PROVIDER_KEYS: &[&str] = &["style", "base_url", "auth_header", "auth_prefix"];

/// Relay requests one person may make per minute unless `rate_limit` says otherwise: far
/// above an agent's pace (a chat turn is one request), far below a scripted drain.
pub(super) const DEFAULT_RATE_LIMIT: u32 = 120;

/// `relay:` of the pool at `pool_path`.
pub(super) fn relay(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<RelaySettings> {
    let path = entry.path.clone();
    let Node::Mapping(map) = entry.node else {
        ctx.error(
            entry.origin.clone(),
            format!("{path}: expected a map (like `relay: {{ providers: {{ openai: {{}} }} }}`)"),
        );
        return None;
    };
    let mut fields = Fields::new(ctx, &path, map);
    let errors_before = ctx.errors.len();
    let keys = match fields.take("keys").map(Setting::file) {
        Some(s) => ctx.non_empty(&s).and_then(|t| match t.value.trim() {
            "ephemeral" => Some(KeyMode::Ephemeral),
            "persistent" => Some(KeyMode::Persistent),
            other => {
                ctx.error(
                    t.origin,
                    format!(
                        "{}: `{other}` is not a key mode; write `ephemeral` (the default: keys \
                         live in the browser that entered them and in memory) or `persistent` \
                         (encrypted in the state store)",
                        s.path
                    ),
                );
                None
            }
        }),
        None => Some(KeyMode::Ephemeral),
    };
    let rate_limit = match fields.take("rate_limit").map(Setting::file) {
        Some(s) => ctx.non_empty(&s).and_then(|t| {
            let parsed = match t.value.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!(
                    "`{}` must be a whole number, 1 or more (relay requests per person per \
                     minute; default {DEFAULT_RATE_LIMIT})",
                    t.value
                )),
            };
            ctx.check(&t.origin, &s.path, parsed)
        }),
        None => Some(DEFAULT_RATE_LIMIT),
    };
    let providers = match fields.take("providers") {
        Some(e) => providers(ctx, &e),
        None => {
            ctx.error(
                entry.key_origin.clone(),
                format!(
                    "{path}: no `providers`; name the providers to relay (like \
                     `providers: {{ openai: {{}}, anthropic: {{}} }}`)"
                ),
            );
            None
        }
    };
    for rest in fields.rest() {
        ctx.unknown_key(&rest, &path, RELAY_KEYS);
    }
    if ctx.errors.len() > errors_before {
        return None;
    }
    Some(RelaySettings {
        keys: keys?,
        rate_limit: rate_limit?,
        providers: providers?,
        origin: entry.key_origin.clone(),
    })
}

fn providers(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<Vec<RelayProvider>> {
    let Node::Mapping(map) = entry.node else {
        ctx.error(
            entry.origin.clone(),
            format!(
                "{}: expected a map of provider ids to settings (like `providers: {{ openai: {{}} }}`)",
                entry.path
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for p in Fields::new(ctx, &entry.path, map).rest() {
        match provider(ctx, &p) {
            Some(p) => out.push(p),
            None => ok = false,
        }
    }
    if ok && out.is_empty() {
        ctx.error(
            entry.origin.clone(),
            format!("{}: name at least one provider", entry.path),
        );
        return None;
    }
    ok.then_some(out)
}

fn provider(ctx: &mut Ctx<'_>, entry: &Entry<'_>) -> Option<RelayProvider> {
    let id = entry.key.to_string();
    let path = entry.path.clone();
    if !values::is_name(&id) {
        ctx.error(
            entry.key_origin.clone(),
            format!(
                "{path}: provider ids use letters, digits, `-` and `_` only (OpenCode's id, \
                 like `openai`)"
            ),
        );
        return None;
    }
    let empty = marked_yaml::types::MarkedMappingNode::new_empty(marked_yaml::Span::new_blank());
    let map = match entry.node {
        Node::Mapping(m) => m,
        Node::Scalar(s) if s.as_str().is_empty() || s.as_str() == "~" => &empty,
        _ => {
            ctx.error(
                entry.origin.clone(),
                format!("{path}: expected the provider's settings as a map (or `{{}}`)"),
            );
            return None;
        }
    };
    let mut fields = Fields::new(ctx, &path, map);
    let errors_before = ctx.errors.len();
    let builtin = builtin(&id);
    let style = match fields.take("style").map(Setting::file) {
        Some(s) => ctx.non_empty(&s).and_then(|t| match t.value.trim() {
            "openai" => Some(ProviderStyle::OpenAi),
            "anthropic" => Some(ProviderStyle::Anthropic),
            other => {
                ctx.error(
                    t.origin,
                    format!(
                        "{}: `{other}` is not a provider style; write `openai` (OpenAI and \
                         compatible APIs: Bearer key, /chat/completions, /responses, \
                         /embeddings, /models) or `anthropic` (x-api-key, /messages, /models)",
                        s.path
                    ),
                );
                None
            }
        }),
        None => Some(builtin.map(|b| b.0).unwrap_or(ProviderStyle::OpenAi)),
    };
    let base_url = match fields.take("base_url").map(Setting::file) {
        Some(s) => ctx
            .non_empty(&s)
            .and_then(|t| ctx.check(&t.origin, &s.path, values::http_url(&t.value))),
        None => match builtin {
            Some((_, url)) => url::Url::parse(url).ok(),
            None => {
                ctx.error(
                    entry.key_origin.clone(),
                    format!(
                        "{path}: Gatehouse has no built-in address for `{id}`; write its API's \
                         `base_url` (like `https://api.example.com/v1`) and its `style`"
                    ),
                );
                None
            }
        },
    };
    let auth_header = match fields.take("auth_header").map(Setting::file) {
        Some(s) => ctx.non_empty(&s).and_then(|t| {
            let name = t.value.trim().to_ascii_lowercase();
            let parsed = http_header_name(&name).map(|()| name);
            ctx.check(&t.origin, &s.path, parsed)
        }),
        None => None,
    };
    let auth_prefix = fields
        .take("auth_prefix")
        .map(Setting::file)
        .and_then(|s| ctx.text(&s))
        .map(|t| t.value);
    for rest in fields.rest() {
        ctx.unknown_key(&rest, &path, PROVIDER_KEYS);
    }
    if ctx.errors.len() > errors_before {
        return None;
    }
    let style = style?;
    let (default_header, default_prefix) = match style {
        ProviderStyle::OpenAi => ("authorization", "Bearer "),
        ProviderStyle::Anthropic => ("x-api-key", ""),
    };
    Some(RelayProvider {
        id,
        style,
        base_url: base_url?,
        auth_header: auth_header.unwrap_or_else(|| default_header.to_string()),
        auth_prefix: auth_prefix.unwrap_or_else(|| default_prefix.to_string()),
        origin: entry.key_origin.clone(),
    })
}

/// The providers Gatehouse knows the address of.
fn builtin(id: &str) -> Option<(ProviderStyle, &'static str)> {
    match id {
        "openai" => Some((ProviderStyle::OpenAi, "https://api.openai.com/v1")),
        "anthropic" => Some((ProviderStyle::Anthropic, "https://api.anthropic.com/v1")),
        _ => None,
    }
}

fn http_header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(format!("`{name}` is not a header name (like `x-api-key`)"));
    }
    if matches!(
        name,
        "host" | "cookie" | "content-length" | "transfer-encoding"
    ) {
        return Err(format!(
            "`{name}` cannot carry a key; name the provider's key header"
        ));
    }
    Ok(())
}
