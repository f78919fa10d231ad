//! `idp_service_account` and the directory keys → [`DirectoryConfig`]. The key's JSON is
//! checked here (base64, JSON, fields, PEM armour); the auth crate parses the RSA key itself
//! when Gatehouse prepares (so `check` reports a bad key too). No message ever holds the key.

use std::time::Duration;

use super::node::{Ctx, Setting};
use super::values;
use crate::directory::{
    DEFAULT_MAX_STALE, DEFAULT_REFRESH_INTERVAL, DEFAULT_REFRESH_TIMEOUT, GOOGLE_DIRECTORY_URL,
    GOOGLE_TOKEN_URL,
};
use crate::{DirectoryConfig, IdpProvider, Origin, Secret, ServiceAccount, Url};

/// The top-level keys read here, in `TOP_KEYS` order.
pub(super) struct DirectorySettings<'n> {
    pub service_account: Option<Setting<'n>>,
    pub refresh_interval: Option<Setting<'n>>,
    pub timeout: Option<Setting<'n>>,
    pub max_stale: Option<Setting<'n>>,
    pub url: Option<Setting<'n>>,
    pub token_url: Option<Setting<'n>>,
    pub impersonate_user: Option<Setting<'n>>,
}

const KEY_HELP: &str = "it must be the service account's JSON key file from the Google Cloud \
                        console, base64-encoded (`base64 -w0 key.json`)";

/// `Some` only for `idp_provider: google` with `idp_service_account` set. Every key is
/// checked either way, so a typo shows up before the provider is switched.
pub(super) fn directory(
    ctx: &mut Ctx<'_>,
    provider: Option<IdpProvider>,
    s: DirectorySettings<'_>,
) -> Option<DirectoryConfig> {
    let duration = |ctx: &mut Ctx<'_>, setting: Option<Setting<'_>>, default: Duration| {
        let Some(s) = setting else {
            return Some((default, None));
        };
        let t = ctx.non_empty(&s)?;
        let d = ctx.check(&t.origin, &s.path, values::duration(&t.value))?;
        Some((d, Some((t.origin, s.path))))
    };
    let refresh = duration(ctx, s.refresh_interval, DEFAULT_REFRESH_INTERVAL);
    let timeout = duration(ctx, s.timeout, DEFAULT_REFRESH_TIMEOUT);
    let max_stale = duration(ctx, s.max_stale, DEFAULT_MAX_STALE);
    if let (Some((refresh, refresh_place)), Some((stale, stale_place))) = (&refresh, &max_stale)
        && stale < refresh
    {
        let (origin, path) = stale_place
            .clone()
            .or_else(|| refresh_place.clone())
            .unwrap_or((Origin::Default, "idp_directory_max_stale".into()));
        ctx.error(
            origin,
            format!(
                "{path}: idp_directory_max_stale ({}) is shorter than \
                 idp_refresh_directory_interval ({}), so groups would expire between two \
                 refreshes; make idp_directory_max_stale longer (its default is 1h)",
                humantime::format_duration(*stale),
                humantime::format_duration(*refresh)
            ),
        );
    }
    let url = |ctx: &mut Ctx<'_>, setting: Option<Setting<'_>>| -> Option<Option<Url>> {
        let Some(s) = setting else { return Some(None) };
        let t = ctx.non_empty(&s)?;
        ctx.check(&t.origin, &s.path, values::secure_url(&t.value))
            .map(Some)
    };
    let directory_url = url(ctx, s.url);
    let token_url = url(ctx, s.token_url);
    let impersonate = match s.impersonate_user {
        Some(setting) => ctx.non_empty(&setting).and_then(|t| {
            ctx.check(&t.origin, &setting.path, values::email(&t.value))
                .map(Some)
        }),
        None => Some(None),
    };

    let setting = s.service_account?;
    let text = ctx.non_empty(&setting)?;
    let key = ctx.check(&text.origin, &setting.path, service_account(&text.value));
    if provider != Some(IdpProvider::Google) {
        if provider.is_some() {
            ctx.warn(
                text.origin.clone(),
                format!(
                    "ignored: {} is used only with `idp_provider: google` (other providers \
                     send groups in the ID token's `groups` claim)",
                    setting.path
                ),
            );
        }
        return None;
    }
    let key = key?;
    let impersonate_user = match (impersonate?, key.impersonate_user.clone()) {
        (Some(user), _) | (None, Some(user)) => user,
        (None, None) => {
            ctx.error(
                text.origin.clone(),
                format!(
                    "{}: the key's JSON has no `impersonate_user` (the Workspace admin whose \
                     rights Gatehouse uses to read groups); add it to the JSON as Pomerium \
                     expects, or set idp_directory_impersonate_user",
                    setting.path
                ),
            );
            return None;
        }
    };
    let token_url = match token_url? {
        Some(u) => u,
        None => match key.token_uri {
            Some(u) => u,
            None => builtin(ctx, GOOGLE_TOKEN_URL)?,
        },
    };
    let directory_url = match directory_url? {
        Some(u) => u,
        None => builtin(ctx, GOOGLE_DIRECTORY_URL)?,
    };
    Some(DirectoryConfig {
        service_account: key.account,
        impersonate_user,
        token_url,
        directory_url,
        refresh_interval: refresh?.0,
        timeout: timeout?.0,
        max_stale: max_stale?.0,
        origin: text.origin,
    })
}

fn builtin(ctx: &mut Ctx<'_>, url: &str) -> Option<Url> {
    match Url::parse(url) {
        Ok(u) => Some(u),
        Err(e) => {
            ctx.error(Origin::Default, format!("internal error: {url}: {e}"));
            None
        }
    }
}

/// What the key's JSON holds, checked.
#[derive(Debug)]
pub(super) struct ServiceAccountKey {
    pub account: ServiceAccount,
    pub impersonate_user: Option<String>,
    pub token_uri: Option<Url>,
}

/// `idp_service_account`: base64 of the JSON key (Pomerium's form) or the JSON itself.
/// Messages name the field that is wrong, never a value from the key.
pub(super) fn service_account(s: &str) -> Result<ServiceAccountKey, String> {
    let s = s.trim();
    let json = if s.starts_with('{') {
        s.as_bytes().to_vec()
    } else {
        values::decode_base64(s).ok_or_else(|| format!("is not valid base64; {KEY_HELP}"))?
    };
    let value: serde_json::Value = serde_json::from_slice(&json).map_err(|e| {
        format!(
            "does not decode to JSON (error at line {} column {} of the JSON); {KEY_HELP}",
            e.line(),
            e.column()
        )
    })?;
    let Some(map) = value.as_object() else {
        return Err(format!("decodes to JSON that is not an object; {KEY_HELP}"));
    };
    let field = |name: &str| -> Result<Option<&str>, String> {
        match map.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(v)) if v.trim().is_empty() => Ok(None),
            Some(serde_json::Value::String(v)) => Ok(Some(v.trim())),
            Some(_) => Err(format!(
                "the key's JSON field `{name}` must be a string; {KEY_HELP}"
            )),
        }
    };
    let required = |name: &str| -> Result<&str, String> {
        field(name)?.ok_or_else(|| format!("the key's JSON has no `{name}`; {KEY_HELP}"))
    };
    if let Some(kind) = field("type")?
        && kind != "service_account"
    {
        return Err(format!(
            "the key's JSON has `type: {kind}`, not `service_account` (an OAuth client or a \
             user credential cannot use the JWT-bearer grant); {KEY_HELP}"
        ));
    }
    let client_email = required("client_email")?;
    values::email(client_email)
        .map_err(|_| "the key's JSON field `client_email` is not an email address".to_string())?;
    let pem = required("private_key")?;
    // Only the armour is checked here (PKCS#8 or PKCS#1); the auth crate parses the key.
    if !matches!(pem_label(pem), Some("PRIVATE KEY" | "RSA PRIVATE KEY")) {
        return Err(format!(
            "the key's JSON field `private_key` is not a PEM RSA private key (its first line \
             must be the PEM armour line of a `PRIVATE KEY`); {KEY_HELP}"
        ));
    }
    let impersonate_user = field("impersonate_user")?
        .map(|u| {
            values::email(u).map_err(|_| {
                "the key's JSON field `impersonate_user` is not an email address".to_string()
            })
        })
        .transpose()?;
    let token_uri = field("token_uri")?
        .map(|u| {
            values::secure_url(u).map_err(|e| format!("the key's JSON field `token_uri`: {e}"))
        })
        .transpose()?;
    Ok(ServiceAccountKey {
        account: ServiceAccount {
            client_email: client_email.to_string(),
            private_key_id: field("private_key_id")?.map(str::to_string),
            private_key: Secret::new(pem.to_string()),
        },
        impersonate_user,
        token_uri,
    })
}

/// The label on the `BEGIN` armour line `text` starts with (`PRIVATE KEY` for PKCS#8,
/// `RSA PRIVATE KEY` for PKCS#1), if it starts with one.
fn pem_label(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("-----BEGIN ")?;
    rest.find("-----").map(|end| &rest[..end])
}
