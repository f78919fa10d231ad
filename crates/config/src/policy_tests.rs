//! Policy test files, as `gatehouse policy test` runs them: made-up requests, each with the
//! decision expected. Every case keeps its place (`file:line:col`) for its report, and every
//! problem in a file is a [`ConfigError`] at its place.
//!
//! A file is a map with `config:` (optional, relative to the file) and `cases:`, or just the
//! list of cases:
//!
//! ```
//! use std::path::Path;
//! use gatehouse_config::policy_tests;
//!
//! let text = "\
//! config: ../gatehouse.yaml
//! cases:
//!   - name: staff read the wiki
//!     url: https://wiki.example.com/
//!     email: ann@example.com
//!     groups: [staff]
//!     expect: allow
//! ";
//! let file = policy_tests::parse(Path::new("policies/wiki.test.yaml"), text).unwrap();
//! let case = &file.cases[0];
//! assert_eq!(case.name, "staff read the wiki");
//! assert_eq!(case.origin.to_string(), "policies/wiki.test.yaml:3:5");
//! assert!(case.allow);
//! assert_eq!(file.config.unwrap(), Path::new("policies/../gatehouse.yaml"));
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use marked_yaml::{LoadError, Node, Span};

use crate::{ConfigError, Origin, Url};

/// A parsed test file.
#[derive(Debug, Clone)]
pub struct PolicyTestFile {
    /// The config to test against (`config:`, relative to the test file), if named.
    pub config: Option<PathBuf>,
    /// `cases:`, in file order.
    pub cases: Vec<Case>,
}

/// One case of a test file: a request and the decision expected.
#[derive(Debug, Clone)]
pub struct Case {
    /// `name:`, or `case N` (1-based).
    pub name: String,
    /// The request the case makes (`url`, `email`, `groups`, …).
    pub request: Request,
    /// `expect: allow` (else `deny`).
    pub allow: bool,
    /// `reason:`, a reason code (`deny-block-matched`) the decision must have.
    pub reason: Option<String>,
    /// Where the case starts (its first key).
    pub origin: Origin,
}

/// A made-up request: a person, the URL they ask for, how and when. `gatehouse policy
/// explain` builds one from its flags, a test case from its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The URL requested (`https://host[:port]/path`).
    pub url: String,
    /// The identity provider's user id (`sub`).
    pub user: String,
    /// The person's email address (`email:`).
    pub email: String,
    /// Whether the identity provider verified it (`email_verified:`, default true).
    pub email_verified: bool,
    /// The person's groups (`groups:`).
    pub groups: Vec<String>,
    /// Other claims by name, each with its values, in the order given.
    pub claims: Vec<(String, Vec<String>)>,
    /// The HTTP method (`method:`, default `GET`).
    pub method: String,
    /// When the request arrives; `None` for whenever it is decided.
    pub at: Option<SystemTime>,
}

/// Reads and parses the test file at `file`.
pub fn read(file: &Path) -> Result<PolicyTestFile, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| whole(file, e.to_string()))?;
    parse(file, &text)
}

/// Parses test-file text as if read from `file` (for positions and `config:`). Stops at the
/// first problem.
pub fn parse(file: &Path, text: &str) -> Result<PolicyTestFile, ConfigError> {
    let file: Arc<Path> = Arc::from(file);
    let place = Place { file: &file };
    // A file is either a map (`config:`, `cases:`) or just the list of cases.
    let yaml = |sequence: bool| {
        crate::parse::parse_yaml_node(text, sequence)
            .ok_or_else(|| whole(&file, "YAML syntax error"))
    };
    let parsed = match yaml(false)? {
        Err(LoadError::TopLevelMustBeMapping(_)) => yaml(true)?,
        other => other,
    };
    let root = parsed.map_err(|e| match &e {
        LoadError::ScanError(m, s) => ConfigError::new(
            Origin::File {
                file: file.clone(),
                line: m.line(),
                col: m.column(),
            },
            format!("YAML syntax error: {}", s.info()),
        ),
        _ => whole(&file, e.to_string()),
    })?;
    let (config, list) = match &root {
        Node::Mapping(m) => {
            for (k, _) in m.iter() {
                if !["config", "cases"].contains(&k.as_str()) {
                    return Err(ConfigError::new(
                        place.span(k.span()),
                        format!(
                            "unknown key `{}` (a test file has `config:` and `cases:`)",
                            k.as_str()
                        ),
                    ));
                }
            }
            let config = match m.get_node("config") {
                Some(c) => {
                    let rel = place.scalar(c, "config")?;
                    Some(file.parent().unwrap_or(Path::new(".")).join(rel))
                }
                None => None,
            };
            let cases = m.get_node("cases").ok_or_else(|| {
                ConfigError::new(place.node(&root), "missing `cases:` (a list of test cases)")
            })?;
            (config, cases)
        }
        other => (None, other),
    };
    let Node::Sequence(items) = list else {
        return Err(ConfigError::new(
            place.node(list),
            "`cases` must be a list of test cases",
        ));
    };
    let cases = items
        .iter()
        .enumerate()
        .map(|(i, item)| case(&place, i, item))
        .collect::<Result<_, _>>()?;
    Ok(PolicyTestFile { config, cases })
}

/// The test files `path` stands for: the file itself, or a directory's `*.test.yaml` (and
/// `*.test.yml`) files, sorted by name.
pub fn find(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| whole(path, e.to_string()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Parses `2026-11-27T10:00:00Z` (RFC 3339, any offset): a case's `at:` and `policy
/// explain --at`.
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let ts: jiff::Timestamp = s.parse().map_err(|e| {
        format!("{s:?} is not a time (expected RFC 3339, like 2026-11-27T10:00:00Z): {e}")
    })?;
    SystemTime::try_from(ts).map_err(|e| format!("{s:?}: {e}"))
}

const CASE_KEYS: &[&str] = &[
    "name",
    "url",
    "email",
    "email_verified",
    "groups",
    "user",
    "claims",
    "method",
    "at",
    "expect",
    "reason",
];

/// The `i`th (0-based) case of a file.
fn case(place: &Place<'_>, i: usize, item: &Node) -> Result<Case, ConfigError> {
    let Node::Mapping(m) = item else {
        return Err(ConfigError::new(
            place.node(item),
            "a test case must be a map",
        ));
    };
    // marked-yaml starts a map's span after its first key; the case starts at that key.
    let here = m
        .keys()
        .next()
        .map(|k| place.span(k.span()))
        .unwrap_or_else(|| place.node(item));
    for (k, _) in m.iter() {
        if !CASE_KEYS.contains(&k.as_str()) {
            return Err(ConfigError::new(
                place.span(k.span()),
                format!(
                    "unknown key `{}` in a test case (expected one of: {})",
                    k.as_str(),
                    CASE_KEYS.join(", ")
                ),
            ));
        }
    }
    let get = |key: &str| -> Result<Option<&str>, ConfigError> {
        m.get_node(key).map(|n| place.scalar(n, key)).transpose()
    };
    let need = |key: &str| -> Result<&str, ConfigError> {
        get(key)?.ok_or_else(|| ConfigError::new(here.clone(), format!("the case has no `{key}:`")))
    };
    // Where `key`'s value is (the case's place when it has none).
    let at_key = |key: &str| place.node(m.get_node(key).unwrap_or(item));
    let name = get("name")?
        .map(str::to_string)
        .unwrap_or_else(|| format!("case {}", i + 1));
    let url = need("url")?.to_string();
    if let Err(e) = Url::parse(&url) {
        return Err(ConfigError::new(
            at_key("url"),
            format!("{url:?} is not a URL: {e}"),
        ));
    }
    let allow = match need("expect")? {
        "allow" => true,
        "deny" => false,
        other => {
            return Err(ConfigError::new(
                at_key("expect"),
                format!("expect: {other:?} (expected allow or deny)"),
            ));
        }
    };
    let email_verified = match get("email_verified")? {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(ConfigError::new(
                at_key("email_verified"),
                format!("email_verified: {other:?} (expected true or false)"),
            ));
        }
    };
    let at = match m.get_node("at") {
        Some(n) => Some(
            parse_time(place.scalar(n, "at")?)
                .map_err(|e| ConfigError::new(place.node(n), format!("at: {e}")))?,
        ),
        None => None,
    };
    let groups = match m.get_node("groups") {
        Some(n) => place.strings(n, "groups")?,
        None => Vec::new(),
    };
    let mut claims = Vec::new();
    if let Some(n) = m.get_node("claims") {
        let Node::Mapping(cm) = n else {
            return Err(ConfigError::new(
                place.node(n),
                "`claims` must be a map of claim name to value(s)",
            ));
        };
        for (k, v) in cm.iter() {
            claims.push((k.as_str().to_string(), place.strings(v, k.as_str())?));
        }
    }
    Ok(Case {
        name,
        request: Request {
            url,
            user: get("user")?.unwrap_or("").to_string(),
            email: get("email")?.unwrap_or("").to_string(),
            email_verified,
            groups,
            claims,
            method: get("method")?.unwrap_or("GET").to_string(),
            at,
        },
        allow,
        reason: get("reason")?.map(str::to_string),
        origin: here,
    })
}

/// The file as a whole (a problem with no better place).
fn whole(file: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::new(
        Origin::File {
            file: Arc::from(file),
            line: 0,
            col: 0,
        },
        message,
    )
}

/// The file being read, for the places of its nodes.
struct Place<'a> {
    file: &'a Arc<Path>,
}

impl Place<'_> {
    fn span(&self, span: &Span) -> Origin {
        let (line, col) = span.start().map_or((0, 0), |m| (m.line(), m.column()));
        Origin::File {
            file: self.file.clone(),
            line,
            col,
        }
    }

    fn node(&self, n: &Node) -> Origin {
        self.span(n.span())
    }

    fn scalar<'n>(&self, n: &'n Node, key: &str) -> Result<&'n str, ConfigError> {
        n.as_scalar().map(|s| s.as_str()).ok_or_else(|| {
            ConfigError::new(self.node(n), format!("`{key}` must be a single value"))
        })
    }

    /// A list (`[a, b]`) or a comma-separated scalar (`a, b`).
    fn strings(&self, n: &Node, key: &str) -> Result<Vec<String>, ConfigError> {
        match n {
            Node::Sequence(s) => s
                .iter()
                .map(|v| self.scalar(v, key).map(str::to_string))
                .collect(),
            Node::Scalar(s) => Ok(s
                .as_str()
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect()),
            Node::Mapping(_) => Err(ConfigError::new(
                self.node(n),
                format!("`{key}` must be a list (like [a, b])"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<PolicyTestFile, String> {
        super::parse(&Path::new("DIR").join(name), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_with_config_and_defaults() {
        let t = parse(
            "a.test.yaml",
            "config: c.yaml\ncases:\n  - url: https://a.test/\n    expect: deny\n    \
             groups: a, b\n    claims: {dept: [x, y], level: '3'}\n",
        )
        .unwrap();
        assert_eq!(t.config.unwrap(), Path::new("DIR/c.yaml"));
        let c = &t.cases[0];
        assert_eq!(c.name, "case 1");
        assert_eq!(c.origin.to_string(), "DIR/a.test.yaml:3:5");
        assert!(!c.allow);
        assert!(c.request.email_verified);
        assert_eq!(c.request.method, "GET");
        assert_eq!(c.request.at, None);
        assert_eq!(c.request.groups, ["a", "b"]);
        assert_eq!(
            c.request.claims,
            [
                ("dept".to_string(), vec!["x".to_string(), "y".to_string()]),
                ("level".to_string(), vec!["3".to_string()])
            ]
        );
    }

    #[test]
    fn each_case_keeps_its_place() {
        let t = parse(
            "p.test.yaml",
            "- url: https://a.test/\n  expect: allow\n\n- name: second\n  url: https://b.test/\n  \
             expect: deny\n  at: 2026-11-27T10:00:00Z\n",
        )
        .unwrap();
        let places: Vec<String> = t.cases.iter().map(|c| c.origin.to_string()).collect();
        assert_eq!(places, ["DIR/p.test.yaml:1:3", "DIR/p.test.yaml:4:3"]);
        assert_eq!(t.cases[1].name, "second");
        assert_eq!(
            t.cases[1].request.at,
            Some(parse_time("2026-11-27T10:00:00Z").unwrap())
        );
    }

    #[test]
    fn unknown_case_key_is_reported_at_the_key() {
        let e = parse(
            "b.test.yaml",
            "- url: https://a.test/\n  expect: allow\n  emial: a@b.test\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("DIR/b.test.yaml:3:3: unknown key `emial` in a test case"),
            "{e}"
        );
    }

    #[test]
    fn missing_expect_and_bad_time_are_positioned() {
        let e = parse("c.test.yaml", "- url: https://a.test/\n").unwrap_err();
        assert_eq!(e, "DIR/c.test.yaml:1:3: the case has no `expect:`");
        let e = parse(
            "d.test.yaml",
            "- url: https://a.test/\n  expect: allow\n  at: tomorrow\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("DIR/d.test.yaml:3:7: at: \"tomorrow\" is not a time"),
            "{e}"
        );
    }

    #[test]
    fn yaml_errors_and_a_missing_file_name_the_file() {
        let e = parse("e.test.yaml", "- url: [\n").unwrap_err();
        assert!(e.starts_with("DIR/e.test.yaml:"), "{e}");
        assert!(e.contains("YAML syntax error"), "{e}");
        let e = read(Path::new("/nonexistent/f.test.yaml")).unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent/f.test.yaml: "),
            "{e}"
        );
    }
}
