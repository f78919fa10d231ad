//! Every operator-facing message for a broken config, pinned as `file:line:col: message`
//! in `tests/golden/*.txt`. Run with `UPDATE_GOLDEN=1` to rewrite them after a deliberate
//! change, then read the diff.

use std::path::Path;

use crate::util::{assert_golden, env, fixture};
use gatehouse_config::load_str;

/// Loads `tests/fixtures/config/broken/<name>.yaml` as `<name>.yaml` (so the golden text
/// does not depend on where the repository is checked out) and pins its errors and warnings.
fn check(name: &str, vars: &[(&str, &str)]) {
    let file = fixture(&format!("broken/{name}.yaml"));
    let text = std::fs::read_to_string(&file).expect("read fixture");
    match load_str(Path::new(&format!("{name}.yaml")), &text, &env(vars)) {
        Ok(config) => panic!(
            "{name}.yaml loaded, but should fail; warnings: {:?}",
            config.warnings
        ),
        Err(errors) => assert_golden(name, &format!("{errors}\n")),
    }
}

#[test]
fn bad_yaml_syntax_is_reported_with_position() {
    check("bad-yaml-syntax", &[]);
}

#[test]
fn unknown_keys_are_errors_with_the_closest_known_key_suggested() {
    check("unknown-key", &[]);
}

#[test]
fn missing_env_var_is_reported_with_position() {
    check(
        "missing-env-var",
        &[("GOOGLE_CLIENT_SECRET", "not-a-real-secret")],
    );
}

#[test]
fn cookie_secret_of_wrong_length_gives_decoded_length_and_how_to_make_one() {
    check("cookie-secret-wrong-length", &[]);
}

#[test]
fn cookie_secret_that_is_not_base64_is_reported_without_its_value() {
    check("cookie-secret-not-base64", &[]);
}

#[test]
fn bad_urls_in_route_from_and_to_are_reported() {
    check("bad-route-urls", &[]);
}

#[test]
fn bad_backend_pools_and_to_backend_routes_are_reported() {
    check("bad-backends", &[]);
}

#[test]
fn relay_mistakes_are_each_named_with_a_fix() {
    check("bad-relay", &[]);
    check("bad-relay-address", &[]);
}

#[test]
fn bearer_token_settings_that_would_not_work_are_named_with_a_fix() {
    check("bad-bearer-format", &[]);
}

#[test]
fn http_issuer_on_non_loopback_host_is_refused() {
    check("http-issuer", &[]);
}

#[test]
fn policy_mistakes_are_each_named_with_a_fix() {
    check("bad-policy", &[]);
}

#[test]
fn several_errors_in_one_file_are_all_reported_in_line_order() {
    check("several-errors", &[]);
}

#[test]
fn teamos_seed_without_its_environment_reports_each_missing_variable() {
    let text = std::fs::read_to_string(fixture("teamos-seed.yaml")).expect("read fixture");
    let errors =
        load_str(Path::new("config.yaml"), &text, &env(&[])).expect_err("secrets are missing");
    assert_golden("teamos-seed-without-env", &format!("{errors}\n"));
}

#[test]
fn criteria_that_can_never_match_are_warnings_with_a_fix() {
    let name = "never-matches";
    let file = fixture(&format!("warn/{name}.yaml"));
    let text = std::fs::read_to_string(&file).expect("read fixture");
    let config = load_str(Path::new(&format!("{name}.yaml")), &text, &env(&[]))
        .unwrap_or_else(|e| panic!("{name}.yaml should load (with warnings): {e}"));
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_golden(name, &format!("{}\n", warnings.join("\n")));
}

#[test]
fn a_host_prefixed_cookie_with_a_domain_is_refused() {
    check("cookie-host-prefix-with-domain", &[]);
}
