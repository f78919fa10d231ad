//! `gatehouse policy explain` and `gatehouse policy test`: decide a made-up request against
//! the configured routes, offline (nothing listens, no identity provider is contacted). The
//! person becomes policy facts exactly as `serve` makes them ([`Person`]), and test files
//! are read by the config crate ([`policy_tests`]).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use gatehouse_config::policy_tests::{self, Case, Request};
use gatehouse_config::{Config, Url};
use gatehouse_policy::{Decision, Person, Policy, Reason, Trace, TraceLine};
use gatehouse_proxy::routes::{RouteMatcher, RouteTable};

/// `policy explain`: prints how `req` is decided; exit 0 allowed, 1 denied, 2 the config
/// or the request is invalid. `choice` is `--route`.
pub fn explain(config: &std::path::Path, req: &Request, choice: Option<&str>) -> ExitCode {
    let routes = match super::load(config, 2) {
        Ok((config, _)) => Routes::new(config),
        Err(code) => return code,
    };
    let out = match routes.decide(req, choice) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("gatehouse policy explain: {e}");
            return ExitCode::from(2);
        }
    };
    let r = &routes.config.routes[out.route];
    let place = match (&r.path, &r.prefix) {
        (Some(p), _) => format!(" path {p}"),
        (None, Some(p)) => format!(" prefix {p}"),
        _ => String::new(),
    };
    println!("routes[{}] ({}{place}, {})", out.route, r.from, r.origin);
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
    let reason = out.decision.reason();
    if *reason == Reason::PublicRoute {
        println!("{word}: this route is public (no sign-in, no policy)");
    } else {
        println!("{word}: {reason} [{}]", reason.code());
    }
    println!();
    println!("How it was decided (deny rules first, then the route's lists, then allow rules):");
    print!("{}", out.trace);
    code
}

/// `policy test`: runs the test files at `paths` (default: `policies/` beside the config,
/// else `policies/` here) against `config` or the config a file names. Exit 0 when every
/// case passed, 1 when one failed, 2 when a file or config is invalid.
pub fn test(config: Option<PathBuf>, paths: Vec<PathBuf>) -> ExitCode {
    let paths = if paths.is_empty() {
        let beside = config
            .as_deref()
            .and_then(|c| c.parent())
            .map(|d| d.join("policies"));
        vec![
            beside
                .filter(|d| d.is_dir())
                .unwrap_or_else(|| PathBuf::from("policies")),
        ]
    } else {
        paths
    };
    let mut files = Vec::new();
    for p in &paths {
        match policy_tests::find(p) {
            Ok(f) => files.extend(f),
            Err(e) => {
                eprintln!("gatehouse policy test: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if files.is_empty() {
        eprintln!("gatehouse policy test: no test files (*.test.yaml) found");
        return ExitCode::from(2);
    }
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let tests = match policy_tests::read(file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let Some(config_path) = tests.config.or_else(|| config.clone()) else {
            eprintln!(
                "{}: no config: add `config: FILE` to the test file or pass --config",
                file.display()
            );
            return ExitCode::from(2);
        };
        let routes = match super::load(&config_path, 2) {
            Ok((c, _)) => Routes::new(c),
            Err(code) => return code,
        };
        println!("# {}", file.display());
        let (p, f) = run_cases(&routes, &tests.cases);
        passed += p;
        failed += f;
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Parses `--claim name=value`; several values for one name come from repeating it.
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

/// What happened to a request: which route, the decision and the trace. A public route's
/// decision is `Allow(Reason::PublicRoute)`.
struct Outcome {
    route: usize,
    decision: Decision,
    trace: Trace,
}

/// The config's routes, matched as the proxy matches them.
struct Routes {
    config: Config,
    table: RouteTable,
}

impl Routes {
    fn new(config: Config) -> Self {
        let table = RouteTable::new(config.routes.iter().map(RouteMatcher::from_route).collect());
        Routes { config, table }
    }

    /// The route for `url` (host, port, path), or the route given by `choice`: a 0-based
    /// index or a `from` URL.
    fn pick(&self, url: &Url, choice: Option<&str>) -> Result<usize, String> {
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

    /// Decides `req` on its route (`choice`: see [`Routes::pick`]), at `req.at` or now.
    fn decide(&self, req: &Request, choice: Option<&str>) -> Result<Outcome, String> {
        let url = Url::parse(&req.url).map_err(|e| format!("{:?} is not a URL: {e}", req.url))?;
        let route = self.pick(&url, choice)?;
        let r = &self.config.routes[route];
        if r.allow_public_unauthenticated_access {
            let trace = Trace {
                lines: vec![TraceLine {
                    depth: 0,
                    matched: true,
                    text: "allow_public_unauthenticated_access: anyone, signed in or not".into(),
                }],
            };
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
        let at = req.at.unwrap_or_else(SystemTime::now);
        let request = person(req, issuer)?.request(&method, url.path(), at);
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
        // (Google's `hd` is not simulated: a verified address speaks for its domain here.)
        domain_verified: req.email_verified,
        name,
        iss,
        groups: &req.groups,
        claims: &req.claims,
    })
}

/// Runs the cases of one file; returns (passed, failed).
fn run_cases(routes: &Routes, cases: &[Case]) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for c in cases {
        let got = match routes.decide(&c.request, None) {
            Ok(o) => o,
            Err(e) => {
                println!("FAIL {}: {e} ({})", c.name, c.origin);
                failed += 1;
                continue;
            }
        };
        let allow = got.decision.is_allow();
        let reason = got.decision.reason();
        let code = reason.code();
        let word = |a: bool| if a { "allow" } else { "deny" };
        if allow != c.allow {
            println!(
                "FAIL {}: expected {}, got {} (reason {code}: {reason})",
                c.name,
                word(c.allow),
                word(allow),
            );
            failed += 1;
        } else if let Some(want) = c.reason.as_deref().filter(|w| *w != code) {
            println!(
                "FAIL {}: expected reason {want}, got {code} ({reason})",
                c.name
            );
            failed += 1;
        } else {
            println!("ok   {}", c.name);
            passed += 1;
        }
    }
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            at: None,
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
