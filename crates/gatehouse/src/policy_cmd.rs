//! `gatehouse policy explain` and `gatehouse policy test`: decide a made-up request against
//! the configured routes, offline (nothing listens, no identity provider is contacted).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use gatehouse_config::{Config, Url};
use gatehouse_policy::{Decision, Person, Policy, Reason, Trace};
use gatehouse_proxy::routes::{RouteMatcher, RouteTable};

/// A request as the operator describes it, with owned values.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    pub user: String,
    pub email: String,
    pub email_verified: bool,
    pub groups: Vec<String>,
    pub claims: Vec<(String, Vec<String>)>,
    pub method: String,
    pub at: SystemTime,
}

/// What happened to a request: which route, the decision and the trace. A public route's
/// decision is `Allow(Reason::PublicRoute)`.
pub struct Outcome {
    pub route: usize,
    pub decision: Decision,
    pub trace: Trace,
}

/// Parses `2026-11-27T10:00:00Z` (RFC 3339, any offset).
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let ts: jiff::Timestamp = s.parse().map_err(|e| {
        format!("{s:?} is not a time (expected RFC 3339, like 2026-11-27T10:00:00Z): {e}")
    })?;
    SystemTime::try_from(ts).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `name=value`; several values for one name come from repeating it.
pub fn parse_claim(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() => Ok((n.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not a claim (expected name=value)")),
    }
}

/// Groups claims given as `name=value` pairs by name, in first-seen order.
pub fn group_claims(pairs: Vec<(String, String)>) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (n, v) in pairs {
        match out.iter_mut().find(|(m, _)| *m == n) {
            Some((_, vs)) => vs.push(v),
            None => out.push((n, vec![v])),
        }
    }
    out
}

/// The config's routes, matched as the proxy matches them.
pub struct Routes {
    pub config: Config,
    table: RouteTable,
}

impl Routes {
    pub fn new(config: Config) -> Self {
        let table = RouteTable::new(config.routes.iter().map(RouteMatcher::from_route).collect());
        Routes { config, table }
    }

    /// The route for `url` (host, port, path), or the route given by `choice`: a 0-based
    /// index or a `from` URL.
    pub fn pick(&self, url: &Url, choice: Option<&str>) -> Result<usize, String> {
        if let Some(c) = choice {
            if let Ok(i) = c.parse::<usize>() {
                return if i < self.config.routes.len() {
                    Ok(i)
                } else {
                    Err(format!(
                        "--route {i}: there are only {} route(s) (numbered from 0)",
                        self.config.routes.len()
                    ))
                };
            }
            let want =
                Url::parse(c).map_err(|e| format!("--route {c:?}: not a URL or index: {e}"))?;
            let host = want.host_str().unwrap_or("").to_ascii_lowercase();
            return self
                .config
                .routes
                .iter()
                .position(|r| {
                    r.from.scheme == want.scheme()
                        && r.from.host == host
                        && r.from.port == want.port()
                })
                .ok_or_else(|| format!("--route {c:?}: no route has this `from`"));
        }
        if url.host_str().is_none() {
            return Err(format!("{url}: the URL has no host"));
        }
        let host = gatehouse_proxy::routes::url_host(url);
        let port = url.port_or_known_default().unwrap_or(443);
        self.table
            .find(&host, port, url.path())
            .ok_or_else(|| format!("{url}: no route matches this host, port and path"))
    }

    /// Decides `req` on its route.
    pub fn decide(&self, req: &Request, choice: Option<&str>) -> Result<Outcome, String> {
        let url = Url::parse(&req.url).map_err(|e| format!("{:?} is not a URL: {e}", req.url))?;
        let route = self.pick(&url, choice)?;
        let r = &self.config.routes[route];
        if r.allow_public_unauthenticated_access {
            let mut trace = Trace::default();
            trace.lines.push(gatehouse_policy::TraceLine {
                depth: 0,
                matched: true,
                text: "allow_public_unauthenticated_access: anyone, signed in or not".into(),
            });
            return Ok(Outcome {
                route,
                decision: Decision::Allow(Reason::PublicRoute),
                trace,
            });
        }
        let policy =
            Policy::for_route(r, &self.config.allowed_domains, &self.config.allowed_groups);
        // The issuer `serve` signs people in through (as the auth crate compares it).
        let issuer = self.config.idp.issuer.as_str().trim_end_matches('/');
        let method = req.method.to_ascii_uppercase();
        let request = person(req, issuer)?.request(&method, url.path(), req.at);
        let (decision, trace) = policy.explain(&request.facts());
        Ok(Outcome {
            route,
            decision,
            trace,
        })
    }
}

/// The person `req` describes, as `serve` would see them after signing in through
/// `issuer`. `name` and `iss` may be given as claims (they have no flag of their own); the
/// other standard claims have their own flag and key, so a claim of that name is refused
/// rather than quietly ignored.
fn person<'a>(req: &'a Request, issuer: &'a str) -> Result<Person<'a>, String> {
    let mut name = None;
    let mut iss = issuer;
    for (claim, values) in &req.claims {
        let one = || match values.as_slice() {
            [v] => Ok(v.as_str()),
            _ => Err(format!("claim `{claim}`: give it one value")),
        };
        let own = match claim.as_str() {
            "name" => {
                name = Some(one()?);
                continue;
            }
            "iss" => {
                iss = one()?;
                continue;
            }
            "sub" => "the user id: --user (`user:` in a test case)",
            "email" => "the email address: --email (`email:` in a test case)",
            "email_verified" => {
                "whether the address is verified: --email-unverified (`email_verified:` in a \
                 test case)"
            }
            "groups" => "the groups: --groups (`groups:` in a test case)",
            _ => continue,
        };
        return Err(format!("claim `{claim}` is {own}, not a claim"));
    }
    Ok(Person {
        sub: &req.user,
        email: &req.email,
        email_verified: req.email_verified,
        name,
        iss,
        groups: &req.groups,
        claims: &req.claims,
    })
}

/// Prints an explanation; exit 0 allowed, 1 denied, 2 the request could not be decided.
pub fn explain(routes: &Routes, req: &Request, choice: Option<&str>) -> ExitCode {
    let out = match routes.decide(req, choice) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gatehouse policy explain: {e}");
            return ExitCode::from(2);
        }
    };
    let r = &routes.config.routes[out.route];
    let mut from = format!("{}://{}", r.from.scheme, r.from.host);
    if let Some(p) = r.from.port {
        from.push_str(&format!(":{p}"));
    }
    let place = match (&r.path, &r.prefix) {
        (Some(p), _) => format!(" path {p}"),
        (None, Some(p)) => format!(" prefix {p}"),
        _ => String::new(),
    };
    println!("routes[{}] ({from}{place}, {})", out.route, r.origin);
    if let Some(name) = &r.policy_name {
        let file = routes
            .config
            .policies
            .iter()
            .find(|p| &p.name == name)
            .map(|p| p.file.display().to_string())
            .unwrap_or_default();
        println!("policy: {name} ({file})");
    }
    let (word, code) = if out.decision.is_allow() {
        ("ALLOW", ExitCode::SUCCESS)
    } else {
        ("DENY", ExitCode::from(1))
    };
    if *out.decision.reason() == Reason::PublicRoute {
        println!("{word}: this route is public (no sign-in, no policy)");
    } else {
        let reason = out.decision.reason();
        println!("{word}: {reason} [{}]", reason.code());
    }
    println!();
    println!("How it was decided (deny rules first, then the route's lists, then allow rules):");
    print!("{}", out.trace);
    code
}

// === policy test ===

/// One case of a test file.
pub struct Case {
    pub name: String,
    pub req: Request,
    pub allow: bool,
    pub reason: Option<String>,
    /// `file:line:col` of the case.
    pub at: String,
}

/// A parsed test file.
pub struct TestFile {
    pub config: Option<PathBuf>,
    pub cases: Vec<Case>,
}

use marked_yaml::Node;

fn pos(file: &Path, n: &Node) -> String {
    at_span(file, n.span())
}

fn at_span(file: &Path, span: &marked_yaml::Span) -> String {
    match span.start() {
        Some(m) => format!("{}:{}:{}", file.display(), m.line(), m.column()),
        None => file.display().to_string(),
    }
}

fn scalar<'a>(file: &Path, n: &'a Node, key: &str) -> Result<&'a str, String> {
    n.as_scalar()
        .map(|s| s.as_str())
        .ok_or_else(|| format!("{}: `{key}` must be a single value", pos(file, n)))
}

fn strings(file: &Path, n: &Node, key: &str) -> Result<Vec<String>, String> {
    match n {
        Node::Sequence(s) => s
            .iter()
            .map(|v| scalar(file, v, key).map(str::to_string))
            .collect(),
        Node::Scalar(s) => Ok(s
            .as_str()
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect()),
        Node::Mapping(_) => Err(format!(
            "{}: `{key}` must be a list (like [a, b])",
            pos(file, n)
        )),
    }
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

/// Reads a test file: a map with `config:` (optional, relative to the file) and `cases:`
/// (a list), or just the list of cases. Errors are `file:line:col: message`.
pub fn read_test_file(file: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    // marked-yaml may panic on odd input; a test file must never crash the command.
    let parse = |sequence: bool| {
        gatehouse_config::parse_yaml_node(&text, sequence)
            .ok_or_else(|| format!("{}: YAML syntax error", file.display()))
    };
    // A file is either a map (`config:`, `cases:`) or just the list of cases.
    let parsed = match parse(false)? {
        Err(marked_yaml::LoadError::TopLevelMustBeMapping(_)) => parse(true)?,
        other => other,
    };
    let root = parsed.map_err(|e| match &e {
        marked_yaml::LoadError::ScanError(m, s) => format!(
            "{}:{}:{}: YAML syntax error: {}",
            file.display(),
            m.line(),
            m.column(),
            s.info()
        ),
        _ => format!("{}: {e}", file.display()),
    })?;
    let (config, list) = match &root {
        Node::Mapping(m) => {
            for (k, _) in m.iter() {
                if !["config", "cases"].contains(&k.as_str()) {
                    return Err(format!(
                        "{}: unknown key `{}` (a test file has `config:` and `cases:`)",
                        at_span(file, k.span()),
                        k.as_str()
                    ));
                }
            }
            let config = match m.get_node("config") {
                Some(c) => {
                    let rel = scalar(file, c, "config")?;
                    Some(file.parent().unwrap_or(Path::new(".")).join(rel))
                }
                None => None,
            };
            let cases = m.get_node("cases").ok_or_else(|| {
                format!(
                    "{}: missing `cases:` (a list of test cases)",
                    pos(file, &root)
                )
            })?;
            (config, cases)
        }
        other => (None, other),
    };
    let Node::Sequence(items) = list else {
        return Err(format!(
            "{}: `cases` must be a list of test cases",
            pos(file, list)
        ));
    };
    let mut cases = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Node::Mapping(m) = item else {
            return Err(format!("{}: a test case must be a map", pos(file, item)));
        };
        // marked-yaml starts a map's span after its first key; the case starts at that key.
        let here = m
            .keys()
            .next()
            .map(|k| at_span(file, k.span()))
            .unwrap_or_else(|| pos(file, item));
        for (k, _) in m.iter() {
            if !CASE_KEYS.contains(&k.as_str()) {
                return Err(format!(
                    "{}: unknown key `{}` in a test case (expected one of: {})",
                    at_span(file, k.span()),
                    k.as_str(),
                    CASE_KEYS.join(", ")
                ));
            }
        }
        let get = |key: &str| -> Result<Option<&str>, String> {
            m.get_node(key).map(|n| scalar(file, n, key)).transpose()
        };
        let need = |key: &str| -> Result<&str, String> {
            get(key)?.ok_or_else(|| format!("{here}: the case has no `{key}:`"))
        };
        let name = get("name")?
            .map(str::to_string)
            .unwrap_or_else(|| format!("case {}", i + 1));
        let url = need("url")?.to_string();
        if let Err(e) = Url::parse(&url) {
            let n = m.get_node("url").unwrap_or(item);
            return Err(format!("{}: {url:?} is not a URL: {e}", pos(file, n)));
        }
        let expect_node = m.get_node("expect").unwrap_or(item);
        let allow = match need("expect")? {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(format!(
                    "{}: expect: {other:?} (expected allow or deny)",
                    pos(file, expect_node)
                ));
            }
        };
        let email_verified = match get("email_verified")? {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                let n = m.get_node("email_verified").unwrap_or(item);
                return Err(format!(
                    "{}: email_verified: {other:?} (expected true or false)",
                    pos(file, n)
                ));
            }
        };
        let at = match m.get_node("at") {
            Some(n) => parse_time(scalar(file, n, "at")?)
                .map_err(|e| format!("{}: at: {e}", pos(file, n)))?,
            None => SystemTime::now(),
        };
        let groups = match m.get_node("groups") {
            Some(n) => strings(file, n, "groups")?,
            None => Vec::new(),
        };
        let mut claims = Vec::new();
        if let Some(n) = m.get_node("claims") {
            let Node::Mapping(cm) = n else {
                return Err(format!(
                    "{}: `claims` must be a map of claim name to value(s)",
                    pos(file, n)
                ));
            };
            for (k, v) in cm.iter() {
                claims.push((k.as_str().to_string(), strings(file, v, k.as_str())?));
            }
        }
        cases.push(Case {
            name,
            req: Request {
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
            at: here.clone(),
        });
    }
    Ok(TestFile { config, cases })
}

/// Runs the cases of one file; returns (passed, failed).
pub fn run_cases(routes: &Routes, cases: &[Case]) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for c in cases {
        let got = match routes.decide(&c.req, None) {
            Ok(o) => o,
            Err(e) => {
                println!("FAIL {}: {e} ({})", c.name, c.at);
                failed += 1;
                continue;
            }
        };
        let allow = got.decision.is_allow();
        let code = got.decision.reason().code();
        let word = |a: bool| if a { "allow" } else { "deny" };
        if allow != c.allow {
            println!(
                "FAIL {}: expected {}, got {} (reason {code}: {})",
                c.name,
                word(c.allow),
                word(allow),
                got.decision.reason()
            );
            failed += 1;
        } else if let Some(want) = c.reason.as_deref().filter(|w| *w != code) {
            println!(
                "FAIL {}: expected reason {want}, got {code} ({})",
                c.name,
                got.decision.reason()
            );
            failed += 1;
        } else {
            println!("ok   {}", c.name);
            passed += 1;
        }
    }
    (passed, failed)
}

/// The `*.yaml` files a path stands for: the file itself, or the test files in a directory
/// (`*.test.yaml`, or every `*.yaml` that is not a config when none is named so).
pub fn test_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, text: &str) -> Result<TestFile, String> {
        let dir = std::env::temp_dir().join(format!("gatehouse-policy-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        read_test_file(&path).map_err(|e| e.replace(&dir.display().to_string(), "DIR"))
    }

    #[test]
    fn test_file_with_config_and_defaults() {
        let t = read(
            "a.test.yaml",
            "config: c.yaml\ncases:\n  - url: https://a.test/\n    expect: deny\n    \
             groups: a, b\n    claims: {dept: [x, y], level: '3'}\n",
        )
        .unwrap();
        assert!(t.config.unwrap().ends_with("c.yaml"));
        let c = &t.cases[0];
        assert_eq!(c.name, "case 1");
        assert!(!c.allow);
        assert!(c.req.email_verified);
        assert_eq!(c.req.method, "GET");
        assert_eq!(c.req.groups, ["a", "b"]);
        assert_eq!(
            c.req.claims,
            [
                ("dept".to_string(), vec!["x".to_string(), "y".to_string()]),
                ("level".to_string(), vec!["3".to_string()])
            ]
        );
    }

    #[test]
    fn unknown_case_key_is_reported_at_the_key() {
        let e = read(
            "b.test.yaml",
            "- url: https://a.test/\n  expect: allow\n  emial: a@b.test\n",
        )
        .err()
        .unwrap();
        assert!(
            e.starts_with("DIR/b.test.yaml:3:3: unknown key `emial` in a test case"),
            "{e}"
        );
    }

    #[test]
    fn missing_expect_and_bad_time_are_positioned() {
        let e = read("c.test.yaml", "- url: https://a.test/\n")
            .err()
            .unwrap();
        assert_eq!(e, "DIR/c.test.yaml:1:3: the case has no `expect:`");
        let e = read(
            "d.test.yaml",
            "- url: https://a.test/\n  expect: allow\n  at: tomorrow\n",
        )
        .err()
        .unwrap();
        assert!(
            e.starts_with("DIR/d.test.yaml:3:7: at: \"tomorrow\" is not a time"),
            "{e}"
        );
    }

    #[test]
    fn name_and_iss_may_be_claims_and_the_other_standard_claims_are_refused() {
        let mut req = Request {
            url: "https://a.test/".into(),
            user: "u-1".into(),
            email: "ann@example.com".into(),
            email_verified: true,
            groups: vec![],
            claims: group_claims(vec![
                parse_claim("name=Ann").unwrap(),
                parse_claim("dept=sales").unwrap(),
            ]),
            method: "GET".into(),
            at: SystemTime::UNIX_EPOCH,
        };
        let p = person(&req, "https://idp.test").unwrap();
        assert_eq!(
            (p.name, p.iss, p.sub),
            (Some("Ann"), "https://idp.test", "u-1")
        );
        req.claims = group_claims(vec![parse_claim("iss=https://other.test").unwrap()]);
        assert_eq!(
            person(&req, "https://idp.test").unwrap().iss,
            "https://other.test"
        );
        req.claims = group_claims(vec![parse_claim("email=boss@example.com").unwrap()]);
        assert_eq!(
            person(&req, "https://idp.test").err().unwrap(),
            "claim `email` is the email address: --email (`email:` in a test case), not a claim"
        );
    }

    #[test]
    fn claims_group_by_name() {
        let pairs = vec![
            parse_claim("dept=a").unwrap(),
            parse_claim("level=3").unwrap(),
            parse_claim("dept=b").unwrap(),
        ];
        assert_eq!(
            group_claims(pairs),
            [
                ("dept".to_string(), vec!["a".to_string(), "b".to_string()]),
                ("level".to_string(), vec!["3".to_string()])
            ]
        );
        assert!(parse_claim("=x").is_err());
        assert!(parse_claim("novalue").is_err());
    }
}
