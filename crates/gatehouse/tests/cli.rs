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

#[test]
fn demo_config_passes_check() {
    let dir = std::env::temp_dir().join(format!("gatehouse-demo-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["assistant.localhost".to_string()]).unwrap();
    std::fs::write(dir.join("demo.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("demo.key"), ck.key_pair.serialize_pem()).unwrap();
    let out = gatehouse()
        .args(["check", "--config"])
        .arg(root().join("deploy/demo/gatehouse.yaml"))
        .env("COOKIE_SECRET", SECRET)
        .env("DEMO_IDP_CLIENT_SECRET", "x")
        .env("DEMO_TLS_CERT", dir.join("demo.crt"))
        .env("DEMO_TLS_KEY", dir.join("demo.key"))
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
    let out = gatehouse()
        .args(["check", "--config"])
        .arg(root().join("deploy/demo/gatehouse.yaml"))
        .env("COOKIE_SECRET", SECRET)
        .env("DEMO_IDP_CLIENT_SECRET", "x")
        .env("DEMO_TLS_CERT", dir.join("demo.crt"))
        .env("DEMO_TLS_KEY", dir.join("other.key"))
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
    std::fs::write(
        &cfg,
        "idp_provider: oidc\nidp_provider_url: http://127.0.0.1:9\nidp_client_id: a\nidp_client_secret: b\nroutes:\n  - from: https://a.test\n    to: http://127.0.0.1:1\n    allow_any_authenticated_user: true\n",
    )
    .unwrap();
    let good = gatehouse()
        .args(["check", "--config"])
        .arg(&cfg)
        .env("COOKIE_SECRET", secret)
        .env("SIGNING_KEY", key)
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
