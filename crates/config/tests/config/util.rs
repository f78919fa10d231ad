//! Helpers shared by the config integration tests: an environment map (no test touches the
//! process environment), fixture paths, and golden files compared with a line diff.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A valid `cookie_secret`: base64 of the bytes 0..32.
pub const COOKIE_SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A fresh EC P-256 private key in SEC1 PEM, made now (no key is ever committed).
pub fn generated_pem() -> String {
    use p256::pkcs8::LineEnding;
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    key.to_sec1_pem(LineEnding::LF)
        .expect("a fresh key encodes")
        .to_string()
}

/// The environment a test passes in, instead of the process environment.
pub fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `tests/fixtures/config/<name>` at the repository root.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/config")
        .join(name)
}

/// Compares `actual` with `crates/config/tests/golden/<name>.txt`, printing a line diff on
/// a mismatch. `UPDATE_GOLDEN=1 cargo test -p gatehouse-config` rewrites the file instead.
pub fn assert_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\n(run with UPDATE_GOLDEN=1 to create it)\nactual:\n{actual}",
            path.display()
        )
    });
    if expected != actual {
        panic!(
            "{} does not match (- expected, + actual; UPDATE_GOLDEN=1 rewrites it):\n{}",
            path.display(),
            diff(&expected, actual)
        );
    }
}

/// A line diff (longest common subsequence), enough to see what changed in a message.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] > lcs[i + 1][j]) {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        } else {
            out += &format!("- {}\n", a[i]);
            i += 1;
        }
    }
    if !expected.ends_with('\n') || !actual.ends_with('\n') {
        out += &format!(
            "(trailing newline: expected {}, actual {})\n",
            expected.ends_with('\n'),
            actual.ends_with('\n')
        );
    }
    out
}
