//! Unit tests for the pieces under the loader: interpolation, value parsers, suggestions.
//! Whole-file behaviour is tested in `crates/config/tests/`.

use std::collections::HashMap;

use super::node::{Interpolation, closest, interpolate, split_commas, split_words};
use super::{second_document, values};

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn interpolation_replaces_variables_and_keeps_other_dollars() {
    let env = env(&[("A", "1"), ("B_2", "two"), ("EMPTY", "")]);
    assert_eq!(
        interpolate("x${A}y${B_2}z", &env),
        Ok("x1ytwoz".to_string())
    );
    assert_eq!(interpolate("${EMPTY}", &env), Ok(String::new()));
    assert_eq!(interpolate("$A $ $$ $", &env), Ok("$A $ $$ $".to_string()));
    assert_eq!(interpolate("", &env), Ok(String::new()));
}

#[test]
fn double_dollar_brace_is_a_literal_and_is_not_expanded_again() {
    let env = env(&[("A", "${B}")]);
    assert_eq!(interpolate("$${A}", &env), Ok("${A}".to_string()));
    assert_eq!(
        interpolate("${A}", &env),
        Ok("${B}".to_string()),
        "values are not expanded again"
    );
    // Read left to right: a lone `$`, then the escape `$${`.
    assert_eq!(interpolate("$$${A}", &env), Ok("$${A}".to_string()));
}

#[test]
fn interpolation_reports_every_missing_variable_and_malformed_reference() {
    let env = env(&[]);
    assert_eq!(
        interpolate("${ONE}-${TWO}", &env),
        Err(vec![
            Interpolation::NotSet("ONE".into()),
            Interpolation::NotSet("TWO".into())
        ])
    );
    assert_eq!(
        interpolate("${1X}", &env),
        Err(vec![Interpolation::BadName])
    );
    assert_eq!(interpolate("${}", &env), Err(vec![Interpolation::BadName]));
    assert_eq!(
        interpolate("${A-b}", &env),
        Err(vec![Interpolation::BadName])
    );
    assert_eq!(
        interpolate("abc${DEF", &env),
        Err(vec![Interpolation::Unclosed])
    );
}

#[test]
fn listen_addresses_in_pomerium_forms_parse_without_dns() {
    let parsed = |s| values::listen_addr(s).map(|a| a.to_string());
    assert_eq!(parsed(":443"), Ok("0.0.0.0:443".into()));
    assert_eq!(parsed("0.0.0.0:443"), Ok("0.0.0.0:443".into()));
    assert_eq!(parsed("127.0.0.1:8443"), Ok("127.0.0.1:8443".into()));
    assert_eq!(parsed("[::]:443"), Ok("[::]:443".into()));
    assert_eq!(parsed("localhost:8443"), Ok("127.0.0.1:8443".into()));
    assert_eq!(parsed("LocalHost:1"), Ok("127.0.0.1:1".into()));
    for bad in [
        "",
        ":",
        ":99999",
        "443",
        "example.com:443",
        "1.2.3.4",
        "localhost:x",
        "[::]",
    ] {
        assert!(
            values::listen_addr(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn cookie_secret_must_decode_to_exactly_32_bytes() {
    let ok = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    assert_eq!(values::cookie_secret(ok).map(|b| b[31]), Ok(31));
    assert_eq!(
        values::cookie_secret(&format!(" {ok}\n")).map(|b| b[0]),
        Ok(0),
        "surrounding space is trimmed"
    );
    assert_eq!(
        values::cookie_secret(ok.trim_end_matches('=')).map(|b| b[1]),
        Ok(1)
    );
    let short = values::cookie_secret("AAECAwQFBgcICQoLDA0ODw==").expect_err("16 bytes");
    assert!(
        short.starts_with("decodes to 16 bytes but must be exactly 32"),
        "{short}"
    );
    let long = values::cookie_secret("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g")
        .expect_err("33 bytes");
    assert!(long.starts_with("decodes to 33 bytes"), "{long}");
    let junk = values::cookie_secret("s3cr3t!value").expect_err("not base64");
    assert!(
        junk.starts_with("is not valid base64") && !junk.contains("s3cr3t"),
        "{junk}"
    );
}

#[test]
fn signing_key_is_base64_of_a_pem_or_the_pem_itself() {
    // A fresh key, made now: no key is ever committed.
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret
        .to_sec1_pem(p256::pkcs8::LineEnding::LF)
        .expect("a fresh key encodes");
    // As written in YAML: no trailing newline (the loader trims the value).
    let pem: &str = pem.trim_end();
    let encoded = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(pem)
    };
    let encoded: &str = &encoded;
    assert_eq!(values::signing_key(encoded).as_deref(), Ok(pem));
    assert_eq!(values::signing_key(pem).as_deref(), Ok(pem));
    assert!(
        values::signing_key("aGVsbG8=")
            .expect_err("not PEM")
            .contains("no `-----BEGIN` line")
    );
    assert!(
        values::signing_key("!!!")
            .expect_err("not base64")
            .starts_with("is not valid base64")
    );
}

#[test]
fn issuer_urls_need_https_unless_the_host_is_loopback() {
    for ok in [
        "https://accounts.google.com",
        "http://127.0.0.1:5556",
        "http://127.9.9.9",
        "http://[::1]",
        "http://LOCALHOST",
    ] {
        assert!(values::secure_url(ok).is_ok(), "{ok}");
    }
    for bad in [
        "http://example.com",
        "http://10.0.0.1",
        "http://localhost.example.com",
        "ftp://localhost",
        "accounts.google.com",
    ] {
        assert!(values::secure_url(bad).is_err(), "{bad}");
    }
}

#[test]
fn authenticate_service_url_has_no_path() {
    assert!(values::service_url("https://auth.example.com/").is_ok());
    assert!(values::service_url("https://auth.example.com/oauth2/callback").is_err());
    assert!(values::service_url("https://auth.example.com?x=1").is_err());
}

#[test]
fn urls_in_messages_do_not_show_passwords() {
    assert_eq!(
        values::shown("http://user:hunter2@example.com/"),
        "http://user:%5Bredacted%5D@example.com/"
    );
    let message = values::http_url("gopher://u:hunter2@example.com").expect_err("not http");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn durations_take_humantime_and_go_forms_and_must_be_positive() {
    assert_eq!(values::duration("14h").map(|d| d.as_secs()), Ok(14 * 3600));
    assert_eq!(
        values::duration("14h0m0s").map(|d| d.as_secs()),
        Ok(14 * 3600)
    );
    assert_eq!(values::duration("1h30m").map(|d| d.as_secs()), Ok(5400));
    assert_eq!(values::duration("30m").map(|d| d.as_secs()), Ok(1800));
    assert!(values::duration("0s").is_err());
    assert!(values::duration("fortnight").is_err());
    assert!(values::duration("14").is_err());
}

#[test]
fn cookie_names_are_rfc6265_tokens() {
    for ok in ["_pomerium", "__Host-session", "a.b~c"] {
        assert!(values::cookie_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "a b", "a;b", "a=b", "é", "a\"b"] {
        assert!(values::cookie_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn same_site_and_log_level_are_case_insensitive() {
    assert_eq!(values::same_site("None"), Ok(crate::SameSite::None));
    assert_eq!(values::same_site("STRICT"), Ok(crate::SameSite::Strict));
    assert!(values::same_site("sometimes").is_err());
    assert_eq!(values::log_level("WARN").as_deref(), Ok("warn"));
    assert!(values::log_level("fatal").is_err());
}

#[test]
fn domains_and_emails_are_lower_cased_and_checked() {
    assert_eq!(
        values::domain(" Example.COM ").as_deref(),
        Ok("example.com")
    );
    assert!(
        values::domain("alice@example.com")
            .expect_err("email")
            .contains("looks like an email")
    );
    assert_eq!(
        values::email("Alice@Example.com").as_deref(),
        Ok("alice@example.com")
    );
    for bad in ["alice", "@example.com", "alice@", "a@b@c"] {
        assert!(values::email(bad).is_err(), "{bad}");
    }
}

#[test]
fn suggestions_pick_the_closest_key_only_when_it_is_close() {
    let keys = [
        "allowed_domains",
        "allowed_users",
        "cookie_secret",
        "cookie_name",
    ];
    assert_eq!(closest("allowed_domain", &keys), Some("allowed_domains"));
    assert_eq!(closest("cookie_secert", &keys), Some("cookie_secret"));
    assert_eq!(closest("COOKIE_NAME", &keys), Some("cookie_name"));
    assert_eq!(closest("xyzzy", &keys), None);
}

#[test]
fn lists_split_on_commas_or_words() {
    assert_eq!(split_commas(" a.com, b.com,,"), ["a.com", "b.com"]);
    assert_eq!(
        split_words("openid email,profile  groups"),
        ["openid", "email", "profile", "groups"]
    );
}

#[test]
fn second_document_is_found_after_content_only() {
    assert_eq!(second_document("---\na: 1\n"), None);
    assert_eq!(second_document("# c\n\n---\na: 1\n"), None);
    assert_eq!(second_document("a: 1\n---\nb: 2\n"), Some(2));
    assert_eq!(
        second_document("a: |\n  ---\n  x\n"),
        None,
        "indented text is not a marker"
    );
    assert_eq!(second_document("a: 1\n----\n"), None);
}

#[test]
fn times_of_day_in_pomerium_formats() {
    use super::policy::parse_time;
    let hms = |h: u32, m: u32, s: u32| Ok(h * 3600 + m * 60 + s);
    assert_eq!(parse_time("3:04 PM"), hms(15, 4, 0));
    assert_eq!(parse_time("3:04PM"), hms(15, 4, 0));
    assert_eq!(parse_time("3 PM"), hms(15, 0, 0));
    assert_eq!(parse_time("3pm"), hms(15, 0, 0));
    assert_eq!(parse_time("12 AM"), hms(0, 0, 0));
    assert_eq!(parse_time("12:30 PM"), hms(12, 30, 0));
    assert_eq!(parse_time("15:04:05.999999999"), hms(15, 4, 5));
    assert_eq!(parse_time("15:04:05"), hms(15, 4, 5));
    assert_eq!(parse_time("9:00"), hms(9, 0, 0));
    assert_eq!(parse_time("00:00"), hms(0, 0, 0));
    for bad in [
        "",
        "9",
        "24:00",
        "9:60",
        "13 PM",
        "0 AM",
        "9:00:00 PM",
        "9:00:61",
        "9:0:0:0",
        "a:b",
        "9:00.5",
        "15:04:05.",
        "-1:00",
        "+9:00",
    ] {
        assert!(parse_time(bad).is_err(), "{bad:?} should be refused");
    }
}
