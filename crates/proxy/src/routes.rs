//! Route matching: host (+ port when the route names one) and path.
//!
//! Most specific wins: an exact `path` beats the longest `prefix`, which beats a host-only
//! route; ties go to the route listed first.

use gatehouse_config::Route;

/// What a route matches on, taken from its config.
#[derive(Debug, Clone)]
pub struct RouteMatcher {
    /// The `from` host, lower-case, without a port.
    pub host: String,
    /// The `from` port: the route matches only that port. `None`: any port.
    pub port: Option<u16>,
    /// `prefix:`: the path must start with this.
    pub prefix: Option<String>,
    /// `path:`: the path must equal this.
    pub path: Option<String>,
}

impl RouteMatcher {
    /// What `r` matches on.
    pub fn from_route(r: &Route) -> Self {
        RouteMatcher {
            host: r.from.host.clone(),
            port: r.from.port,
            prefix: r.prefix.clone(),
            path: r.path.clone(),
        }
    }

    /// How specific a match is, or `None` if it doesn't match.
    fn score(&self, host: &str, port: u16, path: &str) -> Option<usize> {
        if self.host != host || self.port.is_some_and(|p| p != port) {
            return None;
        }
        let port_bonus = usize::from(self.port.is_some());
        if let Some(exact) = &self.path {
            return (exact == path).then_some(1_000_000 + port_bonus);
        }
        if let Some(prefix) = &self.prefix {
            return path
                .starts_with(prefix.as_str())
                .then_some(1000 + 2 * prefix.len() + port_bonus);
        }
        Some(port_bonus)
    }
}

/// All routes, in config order.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    matchers: Vec<RouteMatcher>,
}

impl RouteTable {
    /// The table of `matchers`, in config order (a route's index is its position).
    pub fn new(matchers: Vec<RouteMatcher>) -> Self {
        RouteTable { matchers }
    }

    /// The index of the most specific route for `host` (lower-case, no port), `port`
    /// (the one the client used) and `path`.
    pub fn find(&self, host: &str, port: u16, path: &str) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, m) in self.matchers.iter().enumerate() {
            if let Some(score) = m.score(host, port, path)
                && best.is_none_or(|(_, s)| score > s)
            {
                best = Some((i, score));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Whether some route serves `host` on `port` (any path).
    pub fn has_host(&self, host: &str, port: u16) -> bool {
        self.matchers
            .iter()
            .any(|m| m.host == host && m.port.is_none_or(|p| p == port))
    }
}

/// A URL's host as routes and resolvers want it: lower case, an IPv6 address without its
/// brackets; empty when the URL has none.
pub fn url_host(url: &url::Url) -> String {
    url.host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Splits a `Host` header (or `:authority`) into a lower-case host and optional port.
/// Returns `None` for values that are not a plausible host.
pub fn split_host(value: &str) -> Option<(String, Option<u16>)> {
    let value = value.trim();
    if value.is_empty() || value.len() > 255 {
        return None;
    }
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        // [v6]:port
        let (h, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if tail.is_empty() => None,
            None => return None,
        };
        (format!("[{h}]"), port)
    } else {
        match value.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
            None => (value.to_string(), None),
        }
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b))
    {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host: &str, port: Option<u16>, prefix: Option<&str>, path: Option<&str>) -> RouteMatcher {
        RouteMatcher {
            host: host.into(),
            port,
            prefix: prefix.map(Into::into),
            path: path.map(Into::into),
        }
    }

    #[test]
    fn most_specific_route_wins() {
        let t = RouteTable::new(vec![
            m("a.test", None, None, None),
            m("a.test", None, Some("/api"), None),
            m("a.test", None, Some("/api/v2"), None),
            m("a.test", None, None, Some("/api/v2/exact")),
        ]);
        assert_eq!(t.find("a.test", 443, "/"), Some(0));
        assert_eq!(t.find("a.test", 443, "/api/x"), Some(1));
        assert_eq!(t.find("a.test", 443, "/api/v2/y"), Some(2));
        assert_eq!(t.find("a.test", 443, "/api/v2/exact"), Some(3));
        assert_eq!(t.find("b.test", 443, "/"), None);
    }

    #[test]
    fn first_listed_wins_a_tie() {
        let t = RouteTable::new(vec![
            m("a.test", None, None, None),
            m("a.test", None, None, None),
        ]);
        assert_eq!(t.find("a.test", 443, "/"), Some(0));
    }

    #[test]
    fn explicit_port_matches_only_that_port() {
        let t = RouteTable::new(vec![
            m("a.test", Some(8443), None, None),
            m("b.test", None, None, None),
        ]);
        assert_eq!(t.find("a.test", 8443, "/"), Some(0));
        assert_eq!(t.find("a.test", 443, "/"), None);
        assert_eq!(t.find("b.test", 8443, "/"), Some(1));
        assert_eq!(t.find("b.test", 443, "/"), Some(1));
    }

    #[test]
    fn prefix_route_without_match_falls_back_to_nothing() {
        let t = RouteTable::new(vec![m("a.test", None, Some("/api"), None)]);
        assert_eq!(t.find("a.test", 443, "/other"), None);
    }

    #[test]
    fn host_header_is_split_and_lowercased() {
        assert_eq!(
            split_host("Assistant.Localhost:8443"),
            Some(("assistant.localhost".into(), Some(8443)))
        );
        assert_eq!(split_host("a.test"), Some(("a.test".into(), None)));
        assert_eq!(split_host("[::1]:80"), Some(("[::1]".into(), Some(80))));
        assert_eq!(split_host("a.test:notaport"), None);
        assert_eq!(split_host("a b"), None);
        assert_eq!(split_host(""), None);
        assert_eq!(split_host("evil/x"), None);
    }
}

/// Whether `path` is in the one form Gatehouse matches routes on. Anything an upstream might
/// normalise differently is refused, so a path-scoped policy can't be side-stepped
/// (`/public/../secret`, `//admin`, `/%61dmin` all match other routes than they reach):
/// empty segments, `.`/`..` segments, backslashes, and percent-escapes of `.`, `/`, `\`
/// or of an unreserved character (RFC 3986 2.3 says those are never to be escaped).
pub fn is_canonical_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    // `;` starts a path parameter that some servers strip before routing
    // (`/public/..;/admin` is `/admin` to Tomcat): refuse it, as a backslash (issue 11).
    if bytes.first() != Some(&b'/') || bytes.contains(&b'\\') || bytes.contains(&b';') {
        return false;
    }
    if path.contains("//") {
        return false;
    }
    for segment in path.split('/').skip(1) {
        if segment == "." || segment == ".." {
            return false;
        }
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|c| hex(*c)),
                bytes.get(i + 2).and_then(|c| hex(*c)),
            ) else {
                return false;
            };
            let decoded = (h * 16 + l) as u8;
            // An escape that needs none, an escaped separator, a NUL (C strings end there) or
            // an escaped `;` (a path parameter after decoding).
            if decoded.is_ascii_alphanumeric() || b"-._~/\\\0;".contains(&decoded) {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

#[cfg(test)]
mod canonical_tests {
    use super::is_canonical_path;

    #[test]
    fn ordinary_paths_are_canonical() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/api/v1/x.json",
            "/a%20b",
            "/q%3Fx",
            "/file.tar.gz",
            "/.well-known/x",
            "/a..b",
            "/..a",
        ] {
            assert!(is_canonical_path(p), "{p}");
        }
    }

    #[test]
    fn paths_an_upstream_could_normalise_differently_are_refused() {
        for p in [
            "",
            "a",
            "//admin",
            "/a//b",
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/public/..",
            "/a\\b",
            "/%61dmin",
            "/%2e%2e/x",
            "/a%2Fb",
            "/a%2fb",
            "/a%5Cb",
            "/%7E",
            "/%2D",
            "/bad%zz",
            "/trail%",
            "/trail%4",
            "/public/..;/admin",
            "/admin;jsessionid=x",
            "/a;",
            "/a%3Bb",
            "/a%3bb",
            "/file%00.txt",
            "/%00",
        ] {
            assert!(!is_canonical_path(p), "{p:?}");
        }
    }
}
