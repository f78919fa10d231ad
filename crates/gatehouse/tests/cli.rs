//! The `gatehouse` command as an operator runs it: exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gatehouse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

const SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

#[test]
fn example_config_in_deploy_passes_check() {
    let out = gatehouse()
        .args(["check", "--config"])
        .arg(root().join("deploy/gatehouse.example.yaml"))
        .env("COOKIE_SECRET", SECRET)
        .env("GOOGLE_CLIENT_ID", "id.apps.googleusercontent.com")
        .env("GOOGLE_CLIENT_SECRET", "not-a-real-secret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK (2 route(s)"), "{stdout}");
}

/// Mode 0600: the certificate key of a config with backends must be Gatehouse's alone.
fn private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

#[test]
fn demo_config_passes_check() {
    let dir = std::env::temp_dir().join(format!("gatehouse-demo-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["assistant.localhost".to_string()]).unwrap();
    std::fs::write(dir.join("demo.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("demo.key"), ck.key_pair.serialize_pem()).unwrap();
    private(&dir.join("demo.key"));
    let out = gatehouse()
        .args(["check", "--config"])
        .arg(root().join("deploy/demo/gatehouse.yaml"))
        .env("COOKIE_SECRET", SECRET)
        .env("DEMO_IDP_CLIENT_SECRET", "x")
        .env("DEMO_TLS_CERT", dir.join("demo.crt"))
        .env("DEMO_TLS_KEY", dir.join("demo.key"))
        .env("DEMO_OPENCODE_BIN", "/usr/bin/true")
        .env("DEMO_DATA_ROOT", &dir)
        .env("DEMO_OPENCODE_CONFIG", "{}")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same file with a key that does not belong to the certificate is refused.
    let other = rcgen::generate_simple_self_signed(vec!["x.test".to_string()]).unwrap();
    std::fs::write(dir.join("other.key"), other.key_pair.serialize_pem()).unwrap();
    private(&dir.join("other.key"));
    let out = gatehouse()
        .args(["check", "--config"])
        .arg(root().join("deploy/demo/gatehouse.yaml"))
        .env("COOKIE_SECRET", SECRET)
        .env("DEMO_IDP_CLIENT_SECRET", "x")
        .env("DEMO_TLS_CERT", dir.join("demo.crt"))
        .env("DEMO_TLS_KEY", dir.join("other.key"))
        .env("DEMO_OPENCODE_BIN", "/usr/bin/true")
        .env("DEMO_DATA_ROOT", &dir)
        .env("DEMO_OPENCODE_CONFIG", "{}")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gatehouse.yaml:") && stderr.contains("does not match"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_secret_exits_1_naming_the_variable_and_place() {
    let out = gatehouse()
        .args(["check", "--config"])
        .arg(root().join("deploy/gatehouse.example.yaml"))
        .env("GOOGLE_CLIENT_ID", "id")
        .env("GOOGLE_CLIENT_SECRET", "s")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gatehouse.example.yaml:"), "{stderr}");
    assert!(stderr.contains("COOKIE_SECRET"), "{stderr}");
    assert!(!stderr.contains(SECRET));
}

#[test]
fn missing_config_file_exits_1() {
    let out = gatehouse()
        .args(["check", "--config", "/nonexistent/gatehouse.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gatehouse.yaml"));
}

#[test]
fn keygen_prints_a_usable_secret_and_key() {
    let out = gatehouse().arg("keygen").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let secret = text
        .lines()
        .find_map(|l| l.strip_prefix("cookie_secret: "))
        .unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("signing_key: "))
        .unwrap();
    assert!(
        text.lines().any(|l| l == "cookie_host_prefix: true"),
        "{text}"
    );
    assert!(key.len() > 100, "a PEM key, base64: {key}");
    let dir = std::env::temp_dir().join(format!("gatehouse-keygen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("g.yaml");
    std::fs::write(
        &cfg,
        "idp_provider: oidc\nidp_provider_url: http://127.0.0.1:9\nidp_client_id: a\nidp_client_secret: b\nrouting: x\n",
    )
    .unwrap();
    // Unknown key `routing` → exit 1 with a suggestion.
    let bad = gatehouse()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("COOKIE_SECRET", secret)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("routes"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // keygen's whole output pasted into a config works as it is.
    std::fs::write(
        &cfg,
        format!("{text}idp_provider: oidc\nidp_provider_url: http://127.0.0.1:9\nidp_client_id: a\nidp_client_secret: b\nroutes:\n  - from: https://a.test\n    to: http://127.0.0.1:1\n    allow_any_authenticated_user: true\n"),
    )
    .unwrap();
    let good = gatehouse()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--help` texts are part of the interface: pinned in tests/golden/ (rewrite with UPDATE_GOLDEN=1).
#[test]
fn help_texts_match_golden_files() {
    for (args, file) in [
        (vec!["--help"], "help.txt"),
        (vec!["serve", "--help"], "help-serve.txt"),
        (vec!["check", "--help"], "help-check.txt"),
        (vec!["keygen", "--help"], "help-keygen.txt"),
        (vec!["policy", "--help"], "help-policy.txt"),
        (
            vec!["policy", "explain", "--help"],
            "help-policy-explain.txt",
        ),
        (vec!["policy", "test", "--help"], "help-policy-test.txt"),
    ] {
        let out = gatehouse().args(&args).output().unwrap();
        assert!(out.status.success());
        let got = String::from_utf8(out.stdout).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(file);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            panic!("{file} differs (UPDATE_GOLDEN=1 to accept)\n--- want\n{want}\n--- got\n{got}");
        }
    }
}

// === policy tools (issue 4, "Tools for operators") ===

/// `gatehouse` with what `deploy/policies-example.yaml` reads from the environment.
fn with_example_env() -> Command {
    let mut c = gatehouse();
    c.env("COOKIE_SECRET", SECRET)
        .env("IDP_CLIENT_ID", "id")
        .env("IDP_CLIENT_SECRET", "not-a-real-secret");
    c
}

fn example_config() -> PathBuf {
    root().join("deploy/policies-example.yaml")
}

fn show(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn example_policy_config_passes_check() {
    let out = with_example_env()
        .args(["check", "--config"])
        .arg(example_config())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK (5 route(s)"),
        "{}",
        show(&out)
    );
}

#[test]
fn shipped_policy_tests_pass() {
    let out = with_example_env()
        .args(["policy", "test"])
        .arg(root().join("policies"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        stdout.contains("ok   contractors are refused even as wiki guests"),
        "{stdout}"
    );
    assert!(stdout.ends_with("15 passed, 0 failed\n"), "{stdout}");
}

#[test]
fn failing_policy_test_exits_1_with_the_fail_line() {
    let out = with_example_env()
        .args(["policy", "test"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/failing.test.yaml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stdout.contains("ok   staff read the wiki\n"), "{stdout}");
    assert!(
        stdout.contains(
            "FAIL contractors read the wiki: expected allow, got deny (reason deny-block-matched: "
        ),
        "{stdout}"
    );
    assert!(stdout.ends_with("1 passed, 1 failed\n"), "{stdout}");
}

#[test]
fn bad_policy_test_file_exits_2_at_file_line_col() {
    let out = with_example_env()
        .args(["policy", "test"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad.test.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("bad.test.yaml:6:13: expect: \"alow\" (expected allow or deny)"),
        "{}",
        show(&out)
    );
}

#[test]
fn policy_explain_allowed_exits_0_with_the_trace() {
    let out = with_example_env()
        .args(["policy", "explain", "--config"])
        .arg(example_config())
        .args([
            "--email",
            "ann@example.com",
            "--groups",
            "staff,admins",
            "--at",
            "2026-11-27T10:00:00Z",
            "https://deploy.example.com/admin/users",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("routes[4] (https://deploy.example.com prefix /admin, "),
        "{stdout}"
    );
    assert!(
        stdout.contains("\npolicy: admins-office-hours (")
            && stdout.contains("policies/admins-office-hours.yaml)\n"),
        "the named policy and its file are shown: {stdout}"
    );
    assert!(
        stdout.contains("ALLOW: allowed by rule 1 of this route's policy [allow-block-matched]"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "matched      rule 1 (allow)\n  matched      and: all of these hold\n    \
             matched      your groups include admins\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("    matched      the time is between 08:00 and 19:00 (Europe/Paris)"),
        "{stdout}"
    );
}

#[test]
fn policy_explain_denied_exits_1_with_the_reason() {
    let out = with_example_env()
        .args(["policy", "explain", "--config"])
        .arg(example_config())
        .args([
            "--email",
            "bob@contractors.example.com",
            "--groups",
            "wiki-guests",
            "https://wiki.example.com/page",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "DENY: refused by rule 2 of this route's policy (a deny rule): your email domain is \
             contractors.example.com [deny-block-matched]"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("matched      rule 2 (deny)"), "{stdout}");
}

#[test]
fn policy_explain_exits_2_on_a_url_no_route_serves() {
    let out = with_example_env()
        .args(["policy", "explain", "--config"])
        .arg(example_config())
        .args(["--email", "a@example.com", "https://other.example.com/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no route matches"),
        "{}",
        show(&out)
    );
}

#[test]
fn policy_explain_exits_2_on_a_bad_config() {
    // Secrets are not needed offline, but the client id (not a secret) still is.
    let out = gatehouse()
        .env_remove("IDP_CLIENT_ID")
        .args(["policy", "explain", "--config"])
        .arg(example_config())
        .arg("https://wiki.example.com/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("IDP_CLIENT_ID"),
        "{}",
        show(&out)
    );
}

#[test]
fn policy_explain_route_option_picks_the_route_by_index() {
    // /pipelines matches the deploy route (2); --route 3 asks the admin route's policy.
    let out = with_example_env()
        .args(["policy", "explain", "--config"])
        .arg(example_config())
        .args([
            "--route",
            "4",
            "--email",
            "carol@example.com",
            "--groups",
            "engineering",
            "https://deploy.example.com/pipelines",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("routes[4] "), "{stdout}");
    assert!(
        stdout.contains("    not matched  your groups include admins"),
        "{stdout}"
    );

    let out = with_example_env()
        .args(["policy", "explain", "--config"])
        .arg(example_config())
        .args(["--route", "9", "https://deploy.example.com/"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--route 9: there are only 5 route(s)"),
        "{}",
        show(&out)
    );
}

/// A config with one backend pool, written to `dir/gatehouse.yaml` with `mode`.
fn pool_config(dir: &Path, mode: u32, cookie_secret: &str, pool: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).expect("make the test dir");
    let file = dir.join("gatehouse.yaml");
    std::fs::write(
        &file,
        format!(
            "address: 127.0.0.1:1\ninsecure_server: true\nidp_provider: oidc\n\
             idp_provider_url: http://127.0.0.1:9\nidp_client_id: x\n\
             idp_client_secret: ${{IDP_SECRET}}\ncookie_secret: {cookie_secret}\n\
             allowed_domains: [example.com]\nbackends:\n  assistant:\n    command: [/bin/sh, \"{{port}}\"]\n\
             \x20   data_root: {}\n{pool}routes:\n  - from: https://a.example.com\n    to_backend: assistant\n",
            dir.join("data").display()
        ),
    )
    .expect("write the config");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
    file
}

fn serve(config: &Path) -> (Option<i32>, String) {
    let out = gatehouse()
        .args(["serve", "--config"])
        .arg(config)
        .env("IDP_SECRET", "s")
        .output()
        .expect("run gatehouse serve");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gatehouse check --config <config>` with the secrets the test configs take from the
/// environment; its exit code and stderr.
fn check_with_secrets(config: &Path) -> (Option<i32>, String) {
    let out = gatehouse()
        .args(["check", "--config"])
        .arg(config)
        .env("IDP_SECRET", "s")
        .env("COOKIE_SECRET", SECRET)
        .output()
        .expect("run gatehouse check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn serve_refuses_a_readable_config_with_a_literal_secret_when_backends_run() {
    let dir = std::env::temp_dir().join(format!("gatehouse-cli-secret-{}", std::process::id()));
    let uids = if is_root() {
        "    uids: 64500-64599\n    confinement: best_effort\n"
    } else {
        "    isolation: none\n    confinement: best_effort\n"
    };
    let file = pool_config(&dir, 0o644, SECRET, uids);
    let (code, stderr) = serve(&file);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:7:", file.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("cookie_secret: this file holds cookie_secret literally")
            && stderr.contains("(mode 0644)")
            && stderr.contains(&format!("`chmod 600 {}`", file.display())),
        "{stderr}"
    );
    assert!(
        !stderr.contains(SECRET),
        "the secret itself was printed: {stderr}"
    );
    // The same secret from the environment is fine at 0644.
    let file = pool_config(&dir, 0o644, "${COOKIE_SECRET}", uids);
    let (_, stderr) = check_with_secrets(&file);
    assert!(!stderr.contains("literally"), "{stderr}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_secret_file_readable_by_others_is_refused_when_backends_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir =
        std::env::temp_dir().join(format!("gatehouse-cli-secret-file-{}", std::process::id()));
    let uids = if is_root() {
        "    uids: 64500-64599\n    confinement: best_effort\n"
    } else {
        "    isolation: none\n    confinement: best_effort\n"
    };
    let file = pool_config(&dir, 0o600, "${COOKIE_SECRET}", uids);
    let secret = dir.join("cookie.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write the secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = std::fs::read_to_string(&file)
        .expect("read the config")
        .replace(
            "cookie_secret: ${COOKIE_SECRET}",
            "cookie_secret_file: cookie.secret",
        );
    std::fs::write(&file, text).expect("write the config");
    let check = || {
        let out = gatehouse()
            .args(["check", "--config"])
            .arg(&file)
            .env("IDP_SECRET", "s")
            .env_remove("COOKIE_SECRET")
            .output()
            .expect("run gatehouse check");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cookie_secret_file: ")
            && stderr.contains("is readable by group or others (mode 0644)")
            && stderr.contains(&format!("`chmod 600 {}`", secret.display())),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET), "the secret was printed: {stderr}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (_, stderr) = check();
    assert!(!stderr.contains("readable by group"), "{stderr}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_root_gatehouse_refuses_a_pool_without_uids() {
    let dir = std::env::temp_dir().join(format!("gatehouse-cli-uids-{}", std::process::id()));
    let file = pool_config(&dir, 0o600, SECRET, "");
    let (code, stderr) = serve(&file);
    assert_eq!(code, Some(1), "{stderr}");
    let at = format!("{}:10:3: backends.assistant:", file.display());
    if is_root() {
        assert!(
            stderr.contains(&at)
                && stderr.contains("Gatehouse runs as root")
                && stderr.contains("add `uids:"),
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains(&at) && stderr.contains("set `isolation: none`"),
            "{stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn group_rules_on_google_without_the_directory_are_an_error() {
    // Google's ID tokens carry no groups: a deny on a group would never fire (fails open).
    let dir = std::env::temp_dir().join(format!("gatehouse-cli-google-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("make the test dir");
    let file = dir.join("gatehouse.yaml");
    std::fs::write(
        &file,
        "insecure_server: true\nidp_provider: google\nidp_client_id: x\n\
         idp_client_secret: ${IDP_SECRET}\ncookie_secret: ${COOKIE_SECRET}\n\
         allowed_domains: [example.com]\nroutes:\n  - from: https://a.example.com\n    \
         to: http://127.0.0.1:9\n    policy:\n      - allow: {or: [{domain: {is: example.com}}]}\n      \
         - deny: {or: [{groups: {has: contractors@example.com}}]}\n",
    )
    .expect("write the config");
    let (code, stderr) = check_with_secrets(&file);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:8:5: routes[0]: its rules use groups",
            file.display()
        )) && stderr.contains("idp_service_account"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// A config without pools whose state store is `state_dir`, on an address already taken
/// (so a serve that got past the store would stop at once instead of running).
fn store_config(dir: &Path, state_dir: &Path, taken: u16) -> PathBuf {
    std::fs::create_dir_all(dir).expect("make the test dir");
    let file = dir.join("gatehouse.yaml");
    std::fs::write(
        &file,
        format!(
            "address: 127.0.0.1:{taken}\ninsecure_server: true\nidp_provider: oidc\n\
             idp_provider_url: http://127.0.0.1:9\nidp_client_id: x\n\
             idp_client_secret: ${{IDP_SECRET}}\ncookie_secret: {SECRET}\n\
             allowed_domains: [example.com]\nstate_dir: {}\nroutes:\n\
             \x20 - from: https://a.example.com\n    to: http://127.0.0.1:9\n",
            state_dir.display()
        ),
    )
    .expect("write the config");
    file
}

#[test]
fn serve_refuses_a_state_store_that_is_not_a_database() {
    let dir = std::env::temp_dir().join(format!("gatehouse-cli-store-{}", std::process::id()));
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    let db = state.join("gatehouse.sqlite3");
    std::fs::write(&db, vec![b'x'; 4096]).expect("write junk");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (code, stderr) = serve(&store_config(&dir, &state, port));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("state_dir: state store {}", db.display()))
            && stderr.contains("not a Gatehouse state database")
            && stderr.contains("move the file aside")
            && stderr.contains("nothing was started"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&db).expect("read").len(),
        4096,
        "the damaged file is left as it was, for inspection"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn serve_refuses_a_state_dir_it_cannot_write() {
    let dir = std::env::temp_dir().join(format!("gatehouse-cli-ro-{}", std::process::id()));
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let config = store_config(&dir, &state, port);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    // Root writes anywhere its mode bits say no, so the directory is made read-only the way
    // a read-only volume is: a read-only bind mount, in a mount namespace of its own.
    let mut cmd = if is_root() {
        let mut c = Command::new("unshare");
        c.args(["--mount", "sh", "-c"])
            .arg(r#"mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(&state)
            .arg(env!("CARGO_BIN_EXE_gatehouse"));
        c
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
    };
    let out = cmd
        .args(["serve", "--config"])
        .arg(&config)
        .env("IDP_SECRET", "s")
        .output()
        .expect("run gatehouse serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:9:12: state_dir: state store {}",
            config.display(),
            state.display()
        )) && stderr.contains("cannot create gatehouse.lock: Read-only file system")
            && stderr.contains("make the directory writable"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// The policy tools decide offline: they need no secret (issue 14, first use), while
/// `check` still asks for them.
#[test]
fn policy_tools_need_no_secrets_but_check_does() {
    let mut test = gatehouse();
    test.env_remove("COOKIE_SECRET")
        .env_remove("IDP_CLIENT_SECRET")
        .env("IDP_CLIENT_ID", "id");
    let out = test
        .args(["policy", "test"])
        .arg(root().join("policies"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let mut check = gatehouse();
    check
        .env_remove("COOKIE_SECRET")
        .env_remove("IDP_CLIENT_SECRET")
        .env("IDP_CLIENT_ID", "id");
    let out = check
        .args(["check", "--config"])
        .arg(example_config())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("COOKIE_SECRET"),
        "{}",
        show(&out)
    );
}

#[test]
fn serve_refuses_an_address_it_cannot_listen_on_before_starting_anything() {
    let dir = std::env::temp_dir().join(format!("gatehouse-cli-listen-{}", std::process::id()));
    let state = dir.join("state");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let free_port = free.local_addr().expect("addr").port();
    drop(free);
    let config = store_config(&dir, &state, free_port);
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(
        &config,
        format!("{text}http_redirect_addr: 127.0.0.1:{port}\n"),
    )
    .expect("write config");
    let (code, stderr) = serve(&config);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "http_redirect_addr: cannot listen on 127.0.0.1:{port}"
        )) && stderr.contains("another process listens there")
            && stderr.contains("nothing was started"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("address: cannot listen"),
        "the free main address is not named: {stderr}"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}
