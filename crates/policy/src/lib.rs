//! Gatehouse policy: decides whether a signed-in person may use a route, and says why.
//!
//! This release knows the subset the TeamOS seed uses: top-level and route-level
//! `allowed_domains`, route `allowed_users`, `allow_any_authenticated_user`, and a route
//! `policy:` of `allow`/`deny` blocks whose `and`/`or` combine `domain: {is}` and
//! `email: {is}` criteria. The full Pomerium language comes next (issue 4).
//!
//! Pure and synchronous: no I/O, no clock, no allocation per decision beyond the reason.
//!
//! Rules, following Pomerium's documented semantics:
//! - a matching `deny` block wins over any `allow`;
//! - with no matching `allow`, the answer is deny ("default deny");
//! - a route with no rule of its own uses the top-level `allowed_domains`;
//! - a route with no rule at all lets nobody in;
//! - in `allow` rules, email-based criteria (`domain`, `email`) only match a verified email
//!   address; in `deny` rules they match verified or not.
//!
//! ```
//! use gatehouse_policy::{Facts, Policy};
//! let policy = Policy::allowed_domains(&["example.com".to_string()]);
//! let alice = Facts { email: "alice@example.com", email_verified: true };
//! assert!(policy.evaluate(&alice).is_allow());
//! let mallory = Facts { email: "mallory@evil.test", email_verified: true };
//! assert!(!policy.evaluate(&mallory).is_allow());
//! ```

use gatehouse_config::{Action, CriterionKind, LogicalOp, Route};

/// What the policy may look at about a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub email: &'a str,
    pub email_verified: bool,
}

/// The outcome, always with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Reason),
    Deny(Reason),
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
    pub fn reason(&self) -> &Reason {
        match self {
            Decision::Allow(r) | Decision::Deny(r) => r,
        }
    }
}

/// Why a decision was made. `Display` is a sentence for the person; `code()` is for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    AnyAuthenticatedUser,
    DomainAllowed { domain: String },
    EmailAllowed { email: String },
    AllowBlockMatched { block: usize },
    DenyBlockMatched { block: usize },
    EmailNotVerified { email: String },
    NotAllowed { email: String },
    NoPolicy,
}

impl Reason {
    /// A short stable code for logs and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::AnyAuthenticatedUser => "any-authenticated-user",
            Reason::DomainAllowed { .. } => "domain-allowed",
            Reason::EmailAllowed { .. } => "email-allowed",
            Reason::AllowBlockMatched { .. } => "allow-block-matched",
            Reason::DenyBlockMatched { .. } => "deny-block-matched",
            Reason::EmailNotVerified { .. } => "email-not-verified",
            Reason::NotAllowed { .. } => "not-allowed",
            Reason::NoPolicy => "no-policy",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::AnyAuthenticatedUser => {
                f.write_str("this route lets in anyone who is signed in")
            }
            Reason::DomainAllowed { domain } => write!(f, "addresses at {domain} are allowed"),
            Reason::EmailAllowed { email } => write!(f, "{email} is allowed by name"),
            Reason::AllowBlockMatched { block } => {
                write!(f, "allowed by rule {} of this route's policy", block + 1)
            }
            Reason::DenyBlockMatched { block } => {
                write!(
                    f,
                    "refused by rule {} of this route's policy (a deny rule)",
                    block + 1
                )
            }
            Reason::EmailNotVerified { email } => write!(
                f,
                "your email address {email} is not verified by the identity provider, so email and domain rules cannot admit you"
            ),
            Reason::NotAllowed { email } => {
                write!(f, "no rule of this route allows {email}")
            }
            Reason::NoPolicy => f.write_str("this route has no policy that lets anyone in"),
        }
    }
}

#[derive(Debug, Clone)]
enum Matcher {
    Domain(String),
    Email(String),
}

impl Matcher {
    /// For an `allow`, only a verified address counts. For a `deny`, the address counts
    /// whether verified or not: an unverified claim must never get someone *past* a deny.
    fn matches(&self, facts: &Facts<'_>, action: Action) -> bool {
        if action == Action::Allow && !facts.email_verified {
            return false;
        }
        match self {
            Matcher::Domain(d) => domain_of(facts.email).is_some_and(|x| x.eq_ignore_ascii_case(d)),
            Matcher::Email(e) => facts.email.eq_ignore_ascii_case(e),
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    action: Action,
    op: LogicalOp,
    criteria: Vec<Matcher>,
}

impl Block {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        match self.op {
            LogicalOp::And => {
                !self.criteria.is_empty()
                    && self.criteria.iter().all(|c| c.matches(facts, self.action))
            }
            LogicalOp::Or => self.criteria.iter().any(|c| c.matches(facts, self.action)),
        }
    }
}

/// A compiled policy for one route.
#[derive(Debug, Clone)]
pub struct Policy {
    any_authenticated: bool,
    domains: Vec<String>,
    users: Vec<String>,
    blocks: Vec<Block>,
}

impl Policy {
    /// A policy that only knows a list of allowed domains (top-level `allowed_domains`).
    pub fn allowed_domains(domains: &[String]) -> Self {
        Policy {
            any_authenticated: false,
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            users: Vec::new(),
            blocks: Vec::new(),
        }
    }

    /// Compiles a route's rules; `global_domains` is the top-level `allowed_domains`, used
    /// only when the route has no rule of its own.
    pub fn for_route(route: &Route, global_domains: &[String]) -> Self {
        let blocks: Vec<Block> = route
            .policy
            .iter()
            .flat_map(|p| p.blocks.iter())
            .map(|b| Block {
                action: b.action,
                op: b.op,
                criteria: b
                    .criteria
                    .iter()
                    .map(|c| match c.kind {
                        CriterionKind::Domain => Matcher::Domain(c.is.to_ascii_lowercase()),
                        CriterionKind::Email => Matcher::Email(c.is.to_ascii_lowercase()),
                    })
                    .collect(),
            })
            .collect();
        let own_rules = route.allow_any_authenticated_user
            || !route.allowed_domains.is_empty()
            || !route.allowed_users.is_empty()
            || !blocks.is_empty();
        let domains = if own_rules {
            &route.allowed_domains
        } else {
            global_domains
        };
        Policy {
            any_authenticated: route.allow_any_authenticated_user,
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            users: route
                .allowed_users
                .iter()
                .map(|u| u.to_ascii_lowercase())
                .collect(),
            blocks,
        }
    }

    /// Decides for a signed-in person. Deny blocks are checked first: deny wins.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Decision {
        for (i, b) in self.blocks.iter().enumerate() {
            if b.action == Action::Deny && b.matches(facts) {
                return Decision::Deny(Reason::DenyBlockMatched { block: i });
            }
        }
        if self.any_authenticated {
            return Decision::Allow(Reason::AnyAuthenticatedUser);
        }
        if facts.email_verified {
            if let Some(d) = domain_of(facts.email)
                && let Some(found) = self.domains.iter().find(|x| x.eq_ignore_ascii_case(d))
            {
                return Decision::Allow(Reason::DomainAllowed {
                    domain: found.clone(),
                });
            }
            if let Some(found) = self
                .users
                .iter()
                .find(|u| u.eq_ignore_ascii_case(facts.email))
            {
                return Decision::Allow(Reason::EmailAllowed {
                    email: found.clone(),
                });
            }
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if b.action == Action::Allow && b.matches(facts) {
                return Decision::Allow(Reason::AllowBlockMatched { block: i });
            }
        }
        if self.domains.is_empty()
            && self.users.is_empty()
            && self.blocks.iter().all(|b| b.action == Action::Deny)
        {
            return Decision::Deny(Reason::NoPolicy);
        }
        if !facts.email_verified {
            return Decision::Deny(Reason::EmailNotVerified {
                email: facts.email.to_string(),
            });
        }
        Decision::Deny(Reason::NotAllowed {
            email: facts.email.to_string(),
        })
    }
}

/// The part after the last `@`, if there is one and it is not empty.
fn domain_of(email: &str) -> Option<&str> {
    email
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

#[cfg(test)]
mod tests;
