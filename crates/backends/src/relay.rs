//! The OpenCode configuration a backend gets when its pool relays LLM providers (issue 12):
//! the operator's own `OPENCODE_CONFIG_CONTENT` (its model choices, its provider packages),
//! with each relayed provider's `baseURL` pointing at Gatehouse's relay and its `apiKey` set
//! to the backend's relay token. No provider key ever enters the backend.

use gatehouse_config::RelaySettings;
use serde_json::{Map, Value};

/// `operator` (the pool's `OPENCODE_CONFIG_CONTENT`, if any) with the relay's entries merged
/// in: for each relayed provider, `provider.<id>.options.baseURL = <relay_url>/p/<id>` and
/// `provider.<id>.options.apiKey = <token>`; everything else the operator wrote is kept.
/// `Err` when `operator` is not a JSON object (`check` refuses such a config first).
pub fn opencode_config(
    operator: Option<&str>,
    relay: &RelaySettings,
    relay_url: &str,
    token: &str,
) -> Result<String, String> {
    let mut root = match operator {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => return Err("OPENCODE_CONFIG_CONTENT is not a JSON object".into()),
            Err(e) => return Err(format!("OPENCODE_CONFIG_CONTENT is not JSON: {e}")),
        },
    };
    let providers = object_at(&mut root, "provider")?;
    for p in &relay.providers {
        let entry = object_at(providers, &p.id)?;
        let options = object_at(entry, "options")?;
        options.insert(
            "baseURL".into(),
            Value::String(format!("{}/p/{}", relay_url.trim_end_matches('/'), p.id)),
        );
        options.insert("apiKey".into(), Value::String(token.to_string()));
    }
    serde_json::to_string(&Value::Object(root)).map_err(|e| e.to_string())
}

/// The object under `key`, made if missing; `Err` if something else is there.
fn object_at<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    match map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(o) => Ok(o),
        _ => Err(format!("OPENCODE_CONFIG_CONTENT: `{key}` is not an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_config::{KeyMode, Origin, ProviderStyle, RelayProvider};

    fn relay(ids: &[&str]) -> RelaySettings {
        RelaySettings {
            keys: KeyMode::Ephemeral,
            rate_limit: 10,
            providers: ids
                .iter()
                .map(|id| RelayProvider {
                    id: id.to_string(),
                    style: ProviderStyle::OpenAi,
                    base_url: "https://api.example.com/v1".parse().unwrap(),
                    auth_header: "authorization".into(),
                    auth_prefix: "Bearer ".into(),
                    origin: Origin::Default,
                })
                .collect(),
            origin: Origin::Default,
        }
    }

    #[test]
    fn relay_entries_are_merged_and_the_operators_choices_kept() {
        let operator = r#"{"model":"fake/fake-model","provider":{"fake":{"npm":"@ai-sdk/openai-compatible",
            "options":{"baseURL":"http://127.0.0.1:1/v1","timeout":5},"models":{"fake-model":{}}},
            "other":{"options":{"baseURL":"http://x"}}}}"#;
        let out = opencode_config(
            Some(operator),
            &relay(&["fake", "openai"]),
            "http://127.0.0.1:4100",
            "ghr_t",
        )
        .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["model"], "fake/fake-model");
        assert_eq!(v["provider"]["fake"]["npm"], "@ai-sdk/openai-compatible");
        assert_eq!(v["provider"]["fake"]["options"]["timeout"], 5);
        assert_eq!(
            v["provider"]["fake"]["options"]["baseURL"],
            "http://127.0.0.1:4100/p/fake"
        );
        assert_eq!(v["provider"]["fake"]["options"]["apiKey"], "ghr_t");
        assert_eq!(
            v["provider"]["openai"]["options"]["baseURL"],
            "http://127.0.0.1:4100/p/openai"
        );
        // A provider the pool does not relay is left as the operator wrote it.
        assert_eq!(v["provider"]["other"]["options"]["baseURL"], "http://x");
        assert!(v["provider"]["other"]["options"].get("apiKey").is_none());
    }

    #[test]
    fn without_an_operator_config_only_the_relay_entries_are_written() {
        let out =
            opencode_config(None, &relay(&["openai"]), "http://127.0.0.1:4100/", "ghr_t").unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["provider"]["openai"]["options"]["baseURL"],
            "http://127.0.0.1:4100/p/openai"
        );
    }

    #[test]
    fn a_config_that_is_not_an_object_is_refused() {
        assert!(opencode_config(Some("[1]"), &relay(&["a"]), "http://r", "t").is_err());
        assert!(opencode_config(Some("{"), &relay(&["a"]), "http://r", "t").is_err());
        assert!(
            opencode_config(
                Some(r#"{"provider":{"a":3}}"#),
                &relay(&["a"]),
                "http://r",
                "t"
            )
            .is_err()
        );
    }
}
