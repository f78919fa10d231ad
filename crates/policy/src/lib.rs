//! Gatehouse policy: decides allow or deny for a request's facts, always with the reason
//! (issue 4).
//!
//! Pure and synchronous: no I/O, no clock (the caller passes the time in [`Facts`]), no
//! tokio. A route's rules are compiled once at load ([`Policy::for_route`]); evaluating them
//! allocates nothing except the strings a [`Reason`] carries.
//!
//! Rules, following Pomerium's documented semantics ("Pomerium Policy Language"):
//! - a matching `deny` block wins over any `allow`;
//! - with no matching `allow`, the answer is deny ("default deny");
//! - `and` = all hold, `or` = any holds, `not` = none holds (¬A ∧ ¬B), `nor` = not all hold
//!   (¬A ∨ ¬B) — Pomerium's meanings, see [`gatehouse_config::LogicalOp`];
//! - a route with no rule of its own uses the top-level `allowed_domains`;
//! - a route with no rule at all lets nobody in.
//!
//! Gatehouse's own rule on email addresses: an address the identity provider has not
//! verified never helps a request. In `allow` rules, `domain` and `email` criteria treat an
//! unverified address as not matching (or, under an odd number of `not`/`nor`, as matching,
//! so the negation cannot admit either). In `deny` rules they match the address as written
//! (verified or not), except under negation, where an unverified address counts as not
//! matching, so claiming an address cannot lift a deny.
//!
//! ```
//! use gatehouse_policy::{Facts, Policy};
//! let policy = Policy::allowed_domains(&["example.com".to_string()]);
//! let alice = Facts::signed_in("alice@example.com", true);
//! assert!(policy.evaluate(&alice).is_allow());
//! let mallory = Facts::signed_in("mallory@evil.test", true);
//! let decision = policy.evaluate(&mallory);
//! assert!(!decision.is_allow());
//! assert_eq!(decision.reason().code(), "not-allowed");
//! ```

#![warn(missing_docs, unreachable_pub)]

use std::sync::Arc;
use std::time::SystemTime;

use gatehouse_config::{
    Action, Condition, CriterionKind, ListOp, LogicalOp, PolicySpec, Route, StringMatcher, StringOp,
};

mod person;

pub use person::{Person, Request, STANDARD_CLAIMS};

// === Facts ===

/// What the policy may look at about a request. A signed-in person's come from
/// [`Person::request`] (the proxy and `gatehouse policy` both build them so); tests may
/// build them directly.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The IdP's user id (`sub`), for `user`.
    pub user: &'a str,
    /// The person's email address as the IdP gave it, for `email`, `domain` and the route
    /// shortcuts `allowed_users` and `allowed_domains`.
    pub email: &'a str,
    /// Whether the IdP verified `email`. When it did not, email rules never help the
    /// request (see the crate docs).
    pub email_verified: bool,
    /// Whether the IdP vouches that the person belongs to their address's domain, for
    /// `domain` and `allowed_domains`: `email_verified`, and on Google also the `hd`
    /// (Workspace) claim naming that domain.
    pub domain_verified: bool,
    /// The person's groups (ID-token `groups` claim or the directory), for `groups`.
    pub groups: &'a [String],
    /// Claims by name, for `claim/<name>`.
    pub claims: &'a [Claim<'a>],
    /// The request method, upper-case (`GET`).
    pub method: &'a str,
    /// The request path, without the query. The proxy passes only canonical paths (no
    /// `..`, `//` or needless percent-escapes: `routes::is_canonical_path`), so an
    /// `http_path` rule cannot be side-stepped by another spelling of the same path.
    pub path: &'a str,
    /// When the request arrived, for `day_of_week` and `time_of_day`.
    pub time: SystemTime,
}

impl<'a> Facts<'a> {
    /// A signed-in person's `GET /` at the Unix epoch, with no groups or claims; set the
    /// other fields as needed.
    pub fn signed_in(email: &'a str, email_verified: bool) -> Self {
        Facts {
            user: "",
            email,
            email_verified,
            domain_verified: email_verified,
            groups: &[],
            claims: &[],
            method: "GET",
            path: "/",
            time: SystemTime::UNIX_EPOCH,
        }
    }
}

/// One claim: its name and its value(s).
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The claim's name, as a `claim/<name>` criterion names it.
    pub name: &'a str,
    /// What the claim holds.
    pub values: ClaimValues<'a>,
}

/// A claim's value: one string, or a list. `claim/<name>` criteria match either; `is`
/// holds for a list only when it has exactly that one value.
#[derive(Debug, Clone, Copy)]
pub enum ClaimValues<'a> {
    /// A single string (`sub`, `email`, `email_verified` as `"true"`/`"false"`, ...).
    One(&'a str),
    /// A list of strings (`groups`, and every claim beyond the standard ones).
    Many(&'a [String]),
}

// === Decision and Reason ===

/// The outcome, always with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through.
    Allow(Reason),
    /// Refuse the request.
    Deny(Reason),
}

impl Decision {
    /// Whether the request may go through.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
    /// Why it was allowed or denied.
    pub fn reason(&self) -> &Reason {
        match self {
            Decision::Allow(r) | Decision::Deny(r) => r,
        }
    }
}

/// Why a decision was made. `Display` is a sentence for the person; `code()` is for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// `allow_any_authenticated_user: true`.
    AnyAuthenticatedUser,
    /// `allowed_domains` (route or top level).
    DomainAllowed {
        /// The listed domain that matched (lower-case, as compiled).
        domain: String,
    },
    /// `allowed_users`.
    EmailAllowed {
        /// The listed address that matched (lower-case, as compiled).
        email: String,
    },
    /// `allowed_groups`.
    GroupAllowed {
        /// The listed group the person is a member of.
        group: String,
    },
    /// An `allow` block of the route's `policy` matched (0-based `block`). `criterion`
    /// describes the criterion that decided it when one did (an `or` that matched on it, or
    /// a lone criterion), and is `None` when the block matched as a whole (several criteria
    /// under `and`, or a `not`/`nor`).
    AllowBlockMatched {
        /// Which block of the route's `policy` matched, counting from 0.
        block: usize,
        /// The deciding criterion in words, when a single one decided.
        criterion: Option<Arc<str>>,
    },
    /// A `deny` block matched; fields as for `AllowBlockMatched`.
    DenyBlockMatched {
        /// Which block of the route's `policy` matched, counting from 0.
        block: usize,
        /// The deciding criterion in words, when a single one decided.
        criterion: Option<Arc<str>>,
    },
    /// Nothing allowed, and the address is not verified, so email rules could not admit.
    EmailNotVerified {
        /// The person's unverified address.
        email: String,
    },
    /// Nothing allowed, and the address's domain is not vouched for by the IdP (a Google
    /// account outside the Workspace of its address's domain), so domain rules could not
    /// admit.
    DomainNotVerified {
        /// The person's address.
        email: String,
    },
    /// Nothing allowed this person.
    NotAllowed {
        /// The person's address, for the message.
        email: String,
    },
    /// The route has no rule that lets anyone in.
    NoPolicy,
    /// The route lets anyone in, signed in or not (`allow_public_unauthenticated_access`);
    /// no policy was evaluated. Decided by the route, never by [`Policy::evaluate`].
    PublicRoute,
    /// The route's rules use groups, and the person's groups could not be looked up: the
    /// directory has not answered since `since` and the last groups it gave are too old
    /// (or there are none). Fail closed: see [`Policy::evaluate_groups_unavailable`].
    GroupsUnavailable {
        /// Since when the directory's lookups of this person have failed.
        since: SystemTime,
    },
}

impl Reason {
    /// A short stable code for logs and JSON.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::AnyAuthenticatedUser => "any-authenticated-user",
            Reason::DomainAllowed { .. } => "domain-allowed",
            Reason::EmailAllowed { .. } => "email-allowed",
            Reason::GroupAllowed { .. } => "group-allowed",
            Reason::AllowBlockMatched { .. } => "allow-block-matched",
            Reason::DenyBlockMatched { .. } => "deny-block-matched",
            Reason::EmailNotVerified { .. } => "email-not-verified",
            Reason::DomainNotVerified { .. } => "domain-not-verified",
            Reason::NotAllowed { .. } => "not-allowed",
            Reason::NoPolicy => "no-policy",
            Reason::PublicRoute => "public-route",
            Reason::GroupsUnavailable { .. } => "groups-unavailable",
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
            Reason::GroupAllowed { group } => write!(f, "members of the group {group} are allowed"),
            Reason::AllowBlockMatched { block, criterion } => {
                write!(f, "allowed by rule {} of this route's policy", block + 1)?;
                match criterion {
                    Some(c) => write!(f, ": {c}"),
                    None => Ok(()),
                }
            }
            Reason::DenyBlockMatched { block, criterion } => {
                write!(
                    f,
                    "refused by rule {} of this route's policy (a deny rule)",
                    block + 1
                )?;
                match criterion {
                    Some(c) => write!(f, ": {c}"),
                    None => Ok(()),
                }
            }
            Reason::EmailNotVerified { email } => write!(
                f,
                "your email address {email} is not verified by the identity provider, so email and domain rules cannot admit you"
            ),
            Reason::DomainNotVerified { email } => write!(
                f,
                "your account {email} is not one of its domain's Google Workspace accounts (a personal Google account registered with that address), so domain rules cannot admit you"
            ),
            Reason::NotAllowed { email } => {
                write!(f, "no rule of this route allows {email}")
            }
            Reason::NoPolicy => f.write_str("this route has no policy that lets anyone in"),
            Reason::PublicRoute => {
                f.write_str("this route is public: anyone may use it, signed in or not")
            }
            Reason::GroupsUnavailable { since } => {
                let since = jiff::Timestamp::try_from(*since)
                    .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_else(|_| "a while".into());
                write!(
                    f,
                    "your groups could not be checked: the group directory has not answered \
                     since {since}, and this route's rules depend on groups. Try again later"
                )
            }
        }
    }
}

// === compiled form ===

/// A string matcher, compiled. `fold` = compare ignoring ASCII case (addresses, methods).
#[derive(Debug, Clone)]
struct Text {
    ops: Box<[TextOp]>,
    fold: bool,
}

#[derive(Debug, Clone)]
enum TextOp {
    Is(Box<str>),
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    Contains(Box<str>),
    In(Box<[Box<str>]>),
    NotIn(Box<[Box<str>]>),
}

#[derive(Debug, Clone)]
enum Check {
    Accept,
    Reject,
    Authenticated,
    Domain(Text),
    Email(Text),
    User(Text),
    Method(Text),
    Path(Text),
    Groups(Box<[ListOp]>),
    Claim(Box<str>, Box<[ListOp]>),
    Days(u8, jiff::tz::TimeZone),
    TimeOfDay(jiff::tz::TimeZone, Option<u32>, Option<u32>),
}

#[derive(Debug, Clone)]
struct Leaf {
    check: Check,
    /// What it means when it matches, for the reason ("your email domain is example.com").
    says: Arc<str>,
}

#[derive(Debug, Clone)]
enum Node {
    Op {
        op: LogicalOp,
        children: Box<[Node]>,
    },
    Leaf(Leaf),
}

#[derive(Debug, Clone)]
struct Block {
    action: Action,
    rule: Node,
}

/// A compiled policy for one route.
#[derive(Debug, Clone)]
pub struct Policy {
    any_authenticated: bool,
    domains: Vec<String>,
    users: Vec<String>,
    groups: Vec<String>,
    blocks: Vec<Block>,
    /// Whether any rule looks at groups (see [`Policy::uses_groups`]).
    uses_groups: bool,
}

impl Policy {
    /// A policy that only knows a list of allowed domains (top-level `allowed_domains`).
    pub fn allowed_domains(domains: &[String]) -> Self {
        Policy {
            any_authenticated: false,
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            users: Vec::new(),
            groups: Vec::new(),
            blocks: Vec::new(),
            uses_groups: false,
        }
    }

    /// Compiles a `policy:` on its own (no route shortcuts).
    pub fn from_spec(spec: &PolicySpec) -> Self {
        let blocks = compile_blocks(Some(spec));
        Policy {
            any_authenticated: false,
            domains: Vec::new(),
            users: Vec::new(),
            groups: Vec::new(),
            uses_groups: blocks.iter().any(|b| b.rule.uses_groups()),
            blocks,
        }
    }

    /// Compiles a route's rules. `global_domains` and `global_groups` are the top-level
    /// `allowed_domains` and `allowed_groups`, used only when the route has no rule of its
    /// own (either lets a person in).
    pub fn for_route(route: &Route, global_domains: &[String], global_groups: &[String]) -> Self {
        let blocks = compile_blocks(route.policy.as_ref());
        let own_rules = route.allow_any_authenticated_user
            || !route.allowed_domains.is_empty()
            || !route.allowed_users.is_empty()
            || !route.allowed_groups.is_empty()
            || !blocks.is_empty();
        let (domains, groups) = if own_rules {
            (
                route.allowed_domains.as_slice(),
                route.allowed_groups.as_slice(),
            )
        } else {
            (global_domains, global_groups)
        };
        Policy {
            any_authenticated: route.allow_any_authenticated_user,
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            users: route
                .allowed_users
                .iter()
                .map(|u| u.to_ascii_lowercase())
                .collect(),
            groups: groups.to_vec(),
            uses_groups: !groups.is_empty() || blocks.iter().any(|b| b.rule.uses_groups()),
            blocks,
        }
    }

    /// Whether any rule of this route looks at the person's groups: `allowed_groups`, a
    /// `groups` criterion or `claim/groups`, in an allow or a deny rule.
    pub fn uses_groups(&self) -> bool {
        self.uses_groups
    }

    /// Decides when the person's groups could not be looked up (the directory has not
    /// answered since `since`, and the last groups it gave are too old to use). Fail closed:
    /// a policy that uses groups refuses with [`Reason::GroupsUnavailable`], whatever its
    /// other rules say (a deny rule on a group could otherwise be side-stepped); any other
    /// policy decides as usual (`facts.groups` should then be empty).
    pub fn evaluate_groups_unavailable(&self, facts: &Facts<'_>, since: SystemTime) -> Decision {
        if self.uses_groups {
            return Decision::Deny(Reason::GroupsUnavailable { since });
        }
        self.evaluate(facts)
    }

    /// Decides for a signed-in person. Deny blocks are checked first: deny wins.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Decision {
        for (i, b) in self.blocks.iter().enumerate() {
            if b.action == Action::Deny {
                let (hit, leaf) = b.rule.eval(facts, Action::Deny, true);
                if hit {
                    return Decision::Deny(Reason::DenyBlockMatched {
                        block: i,
                        criterion: leaf.map(|l| l.says.clone()),
                    });
                }
            }
        }
        if self.any_authenticated {
            return Decision::Allow(Reason::AnyAuthenticatedUser);
        }
        if let Some(found) = self.domain_hit(facts) {
            return Decision::Allow(Reason::DomainAllowed {
                domain: found.clone(),
            });
        }
        if let Some(found) = self.user_hit(facts) {
            return Decision::Allow(Reason::EmailAllowed {
                email: found.clone(),
            });
        }
        if let Some(found) = self.group_hit(facts) {
            return Decision::Allow(Reason::GroupAllowed {
                group: found.clone(),
            });
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if b.action == Action::Allow {
                let (hit, leaf) = b.rule.eval(facts, Action::Allow, true);
                if hit {
                    return Decision::Allow(Reason::AllowBlockMatched {
                        block: i,
                        criterion: leaf.map(|l| l.says.clone()),
                    });
                }
            }
        }
        if self.domains.is_empty()
            && self.users.is_empty()
            && self.groups.is_empty()
            && self.blocks.iter().all(|b| b.action == Action::Deny)
        {
            return Decision::Deny(Reason::NoPolicy);
        }
        if !facts.email_verified {
            return Decision::Deny(Reason::EmailNotVerified {
                email: facts.email.to_string(),
            });
        }
        let domain_rules = !self.domains.is_empty()
            || self
                .blocks
                .iter()
                .any(|b| b.action == Action::Allow && b.rule.uses_domain());
        if !facts.domain_verified && domain_rules {
            return Decision::Deny(Reason::DomainNotVerified {
                email: facts.email.to_string(),
            });
        }
        Decision::Deny(Reason::NotAllowed {
            email: facts.email.to_string(),
        })
    }
}

// === explanation ===

/// One line of a [`Trace`]: a rule, block or criterion, whether it matched, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLine {
    /// Nesting depth: 0 for route shortcuts and blocks, 1 for their criteria, and so on.
    pub depth: usize,
    /// Whether this rule, block or criterion matched the request.
    pub matched: bool,
    /// What it is, in words (e.g. `rule 1 (deny)`, or a criterion as it applied).
    pub text: String,
}

/// How a decision was reached: every route shortcut and policy block, and every criterion
/// inside them (nested operators too), each matched or not. Built by [`Policy::explain`],
/// for operators; the request path never builds one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// The lines, in evaluation order; `depth` gives the nesting.
    pub lines: Vec<TraceLine>,
}

impl Trace {
    fn push(&mut self, depth: usize, matched: bool, text: impl Into<String>) {
        self.lines.push(TraceLine {
            depth,
            matched,
            text: text.into(),
        });
    }
}

impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for l in &self.lines {
            let mark = if l.matched {
                "matched    "
            } else {
                "not matched"
            };
            writeln!(f, "{}{mark}  {}", "  ".repeat(l.depth), l.text)?;
        }
        Ok(())
    }
}

impl Policy {
    /// The route's `allowed_domains` entry the person's verified address is at, if any.
    /// (One function for `evaluate` and `explain`, so the trace never disagrees.)
    fn domain_hit(&self, f: &Facts<'_>) -> Option<&String> {
        let d = domain_of(f.email).filter(|_| f.domain_verified)?;
        self.domains.iter().find(|x| x.eq_ignore_ascii_case(d))
    }

    /// The route's `allowed_users` entry that is the person's verified address, if any.
    fn user_hit(&self, f: &Facts<'_>) -> Option<&String> {
        if !f.email_verified {
            return None;
        }
        self.users.iter().find(|u| u.eq_ignore_ascii_case(f.email))
    }

    /// The first of the route's `allowed_groups` the person is in, if any.
    fn group_hit(&self, f: &Facts<'_>) -> Option<&String> {
        self.groups.iter().find(|g| f.groups.contains(g))
    }

    /// Decides like [`Policy::evaluate`] (the decision is `evaluate`'s own) and also
    /// returns the trace: deny blocks first, then the route shortcuts, then allow blocks,
    /// in the order `evaluate` considers them. Every criterion is traced, including those
    /// `evaluate` skips once the outcome is known. Allocates freely: not for the hot path.
    pub fn explain(&self, facts: &Facts<'_>) -> (Decision, Trace) {
        let decision = self.evaluate(facts);
        let mut t = Trace::default();
        for (i, b) in self.blocks.iter().enumerate() {
            if b.action == Action::Deny {
                let hit = b.rule.eval(facts, Action::Deny, true).0;
                t.push(0, hit, format!("rule {} (deny)", i + 1));
                b.rule.trace(facts, Action::Deny, true, 1, &mut t);
            }
        }
        if self.any_authenticated {
            t.push(0, true, "allow_any_authenticated_user: you are signed in");
        }
        let verified = if facts.email_verified {
            ""
        } else {
            " (your address is not verified, so it cannot match)"
        };
        if !self.domains.is_empty() {
            let hit = self.domain_hit(facts).is_some();
            t.push(
                0,
                hit,
                format!(
                    "allowed_domains: your email domain is one of {}{verified}",
                    self.domains.join(", ")
                ),
            );
        }
        if !self.users.is_empty() {
            let hit = self.user_hit(facts).is_some();
            t.push(
                0,
                hit,
                format!(
                    "allowed_users: your email address is one of the {} listed{verified}",
                    self.users.len()
                ),
            );
        }
        if !self.groups.is_empty() {
            let hit = self.group_hit(facts).is_some();
            t.push(
                0,
                hit,
                format!(
                    "allowed_groups: your groups include one of {}",
                    self.groups.join(", ")
                ),
            );
        }
        for (i, b) in self.blocks.iter().enumerate() {
            if b.action == Action::Allow {
                let hit = b.rule.eval(facts, Action::Allow, true).0;
                t.push(0, hit, format!("rule {} (allow)", i + 1));
                b.rule.trace(facts, Action::Allow, true, 1, &mut t);
            }
        }
        if t.lines.is_empty() {
            t.push(0, false, "this route has no rule");
        }
        (decision, t)
    }
}

impl Node {
    /// Adds this node and all its children to the trace, each with whether it holds.
    fn trace(&self, f: &Facts<'_>, action: Action, positive: bool, depth: usize, t: &mut Trace) {
        match self {
            Node::Leaf(leaf) => t.push(depth, leaf.check.matches(f, action, positive), &*leaf.says),
            Node::Op { op, children } => {
                let hit = self.eval(f, action, positive).0;
                let words = match op {
                    LogicalOp::And => "and: all of these hold",
                    LogicalOp::Or => "or: at least one of these holds",
                    LogicalOp::Not => "not: none of these holds",
                    LogicalOp::Nor => "nor: not all of these hold",
                };
                t.push(depth, hit, words);
                let child_positive = match op {
                    LogicalOp::And | LogicalOp::Or => positive,
                    LogicalOp::Not | LogicalOp::Nor => !positive,
                };
                for c in children.iter() {
                    c.trace(f, action, child_positive, depth + 1, t);
                }
            }
        }
    }
}

// === evaluation ===

impl Node {
    /// Whether a criterion in here looks at groups.
    fn uses_groups(&self) -> bool {
        match self {
            Node::Leaf(leaf) => match &leaf.check {
                Check::Groups(_) => true,
                Check::Claim(name, _) => &**name == "groups",
                _ => false,
            },
            Node::Op { children, .. } => children.iter().any(Node::uses_groups),
        }
    }

    /// Whether a `domain` criterion is in here.
    fn uses_domain(&self) -> bool {
        match self {
            Node::Leaf(leaf) => matches!(leaf.check, Check::Domain(_)),
            Node::Op { children, .. } => children.iter().any(Node::uses_domain),
        }
    }

    /// Whether the condition holds, and the criterion that decided it when it was a single
    /// one reached through `or`s (or a lone criterion under `and`). `positive` is false
    /// under an odd number of `not`/`nor`: see the crate docs on unverified addresses.
    fn eval(&self, f: &Facts<'_>, action: Action, positive: bool) -> (bool, Option<&Leaf>) {
        match self {
            Node::Leaf(leaf) => (leaf.check.matches(f, action, positive), Some(leaf)),
            Node::Op { op, children } => match op {
                LogicalOp::And => {
                    let mut witness = None;
                    for c in children.iter() {
                        let (hit, w) = c.eval(f, action, positive);
                        if !hit {
                            return (false, None);
                        }
                        witness = w;
                    }
                    (true, if children.len() == 1 { witness } else { None })
                }
                LogicalOp::Or => {
                    for c in children.iter() {
                        let (hit, w) = c.eval(f, action, positive);
                        if hit {
                            return (true, w);
                        }
                    }
                    (false, None)
                }
                // PPL `not`: none of the children holds (¬A ∧ ¬B).
                LogicalOp::Not => {
                    let none = children.iter().all(|c| !c.eval(f, action, !positive).0);
                    (none, None)
                }
                // PPL `nor`: not all of the children hold (¬A ∨ ¬B).
                LogicalOp::Nor => {
                    let some_fails = children.iter().any(|c| !c.eval(f, action, !positive).0);
                    (some_fails, None)
                }
            },
        }
    }
}

impl Check {
    fn matches(&self, f: &Facts<'_>, action: Action, positive: bool) -> bool {
        match self {
            Check::Accept => true,
            Check::Reject => false,
            Check::Authenticated => true,
            Check::Domain(t) => vouched(f.domain_verified, action, positive, || {
                domain_of(f.email).is_some_and(|d| t.matches(d))
            }),
            Check::Email(t) => address(f, action, positive, || t.matches(f.email)),
            Check::User(t) => t.matches(f.user),
            Check::Method(t) => t.matches(f.method),
            Check::Path(t) => t.matches(f.path),
            Check::Groups(ops) => list_matches(ops, Values::Many(f.groups)),
            // `claim/email` speaks for the address as `email` does: an unverified one never
            // helps a request (issue 11).
            Check::Claim(name, ops) if &**name == "email" => address(f, action, positive, || {
                list_matches(ops, Values::One(f.email))
            }),
            Check::Claim(name, ops) => {
                let values = match f.claims.iter().find(|c| c.name == &**name) {
                    Some(Claim {
                        values: ClaimValues::One(v),
                        ..
                    }) => Values::One(v),
                    Some(Claim {
                        values: ClaimValues::Many(v),
                        ..
                    }) => Values::Many(v),
                    None => Values::Many(&[]),
                };
                list_matches(ops, values)
            }
            Check::Days(days, zone) => local(f, zone).is_some_and(|dt| {
                let day = dt.weekday().to_monday_zero_offset();
                days & (1 << day) != 0
            }),
            Check::TimeOfDay(zone, after, before) => local(f, zone).is_some_and(|dt| {
                let t = dt.hour() as u32 * 3600 + dt.minute() as u32 * 60 + dt.second() as u32;
                after.is_none_or(|a| t >= a) && before.is_none_or(|b| t < b)
            }),
        }
    }
}

/// An email-based criterion: as written for a verified address; for an unverified one, the
/// value that cannot help the request (see the crate docs).
fn address(f: &Facts<'_>, action: Action, positive: bool, raw: impl FnOnce() -> bool) -> bool {
    vouched(f.email_verified, action, positive, raw)
}

/// [`address`] for a fact the IdP may or may not vouch for (`verified`): when it does not,
/// the criterion can only ever refuse.
fn vouched(verified: bool, action: Action, positive: bool, raw: impl FnOnce() -> bool) -> bool {
    if verified {
        return raw();
    }
    match action {
        Action::Allow => !positive,
        Action::Deny => positive && raw(),
    }
}

fn local(f: &Facts<'_>, zone: &jiff::tz::TimeZone) -> Option<jiff::civil::DateTime> {
    let ts = jiff::Timestamp::try_from(f.time).ok()?;
    Some(zone.to_datetime(ts))
}

impl Text {
    fn matches(&self, s: &str) -> bool {
        let fold = self.fold;
        self.ops.iter().all(|op| match op {
            TextOp::Is(v) => same(s, v, fold),
            TextOp::StartsWith(v) => {
                s.len() >= v.len() && same_bytes(&s.as_bytes()[..v.len()], v.as_bytes(), fold)
            }
            TextOp::EndsWith(v) => {
                s.len() >= v.len()
                    && same_bytes(&s.as_bytes()[s.len() - v.len()..], v.as_bytes(), fold)
            }
            TextOp::Contains(v) => {
                v.is_empty()
                    || s.as_bytes()
                        .windows(v.len())
                        .any(|w| same_bytes(w, v.as_bytes(), fold))
            }
            TextOp::In(vs) => vs.iter().any(|v| same(s, v, fold)),
            TextOp::NotIn(vs) => !vs.iter().any(|v| same(s, v, fold)),
        })
    }
}

fn same(a: &str, b: &str, fold: bool) -> bool {
    same_bytes(a.as_bytes(), b.as_bytes(), fold)
}

fn same_bytes(a: &[u8], b: &[u8], fold: bool) -> bool {
    if fold {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

#[derive(Clone, Copy)]
enum Values<'a> {
    One(&'a str),
    Many(&'a [String]),
}

impl Values<'_> {
    fn has(self, v: &str) -> bool {
        match self {
            Values::One(x) => x == v,
            Values::Many(xs) => xs.iter().any(|x| x == v),
        }
    }
}

fn list_matches(ops: &[ListOp], values: Values<'_>) -> bool {
    ops.iter().all(|op| match op {
        ListOp::Has(v) => values.has(v),
        ListOp::Is(v) => match values {
            Values::One(x) => x == v,
            Values::Many(xs) => xs.len() == 1 && xs[0] == *v,
        },
        ListOp::Exclude(v) => !values.has(v),
    })
}

/// The part after the last `@`, if there is one and it is not empty.
fn domain_of(email: &str) -> Option<&str> {
    email
        .rsplit_once('@')
        .map(|(_, d)| d)
        .filter(|d| !d.is_empty())
}

// === compilation ===

fn compile_blocks(spec: Option<&PolicySpec>) -> Vec<Block> {
    spec.iter()
        .flat_map(|p| p.blocks.iter())
        .map(|b| Block {
            action: b.action,
            rule: compile(&b.rule),
        })
        .collect()
}

fn compile(c: &Condition) -> Node {
    match c {
        Condition::Op { op, children, .. } => Node::Op {
            op: *op,
            children: children.iter().map(compile).collect(),
        },
        Condition::Criterion(c) => Node::Leaf(Leaf {
            says: describe(&c.kind).into(),
            check: check(&c.kind),
        }),
    }
}

fn check(kind: &CriterionKind) -> Check {
    let text = |m: &StringMatcher, fold: bool| Text {
        ops: m
            .ops
            .iter()
            .map(|op| {
                let b = |s: &String| -> Box<str> { s.as_str().into() };
                let bs = |v: &Vec<String>| -> Box<[Box<str>]> { v.iter().map(b).collect() };
                match op {
                    StringOp::Is(v) => TextOp::Is(b(v)),
                    StringOp::StartsWith(v) => TextOp::StartsWith(b(v)),
                    StringOp::EndsWith(v) => TextOp::EndsWith(b(v)),
                    StringOp::Contains(v) => TextOp::Contains(b(v)),
                    StringOp::In(v) => TextOp::In(bs(v)),
                    StringOp::NotIn(v) => TextOp::NotIn(bs(v)),
                }
            })
            .collect(),
        fold,
    };
    match kind {
        CriterionKind::Accept => Check::Accept,
        CriterionKind::Reject => Check::Reject,
        CriterionKind::AuthenticatedUser => Check::Authenticated,
        CriterionKind::Domain(m) => Check::Domain(text(m, true)),
        CriterionKind::Email(m) => Check::Email(text(m, true)),
        CriterionKind::User(m) => Check::User(text(m, false)),
        CriterionKind::HttpMethod(m) => Check::Method(text(m, true)),
        CriterionKind::HttpPath(m) => Check::Path(text(m, false)),
        CriterionKind::Groups(m) => Check::Groups(m.ops.clone().into()),
        CriterionKind::Claim { name, matcher } => {
            Check::Claim(name.as_str().into(), matcher.ops.clone().into())
        }
        CriterionKind::DayOfWeek(d) => Check::Days(d.days, d.timezone.zone.clone()),
        CriterionKind::TimeOfDay(t) => Check::TimeOfDay(t.timezone.zone.clone(), t.after, t.before),
    }
}

/// What a criterion means when it matches, in words for the deny page and the log.
fn describe(kind: &CriterionKind) -> String {
    match kind {
        CriterionKind::Accept => "it lets every request through".into(),
        CriterionKind::Reject => "it matches no request".into(),
        CriterionKind::AuthenticatedUser => "you are signed in".into(),
        CriterionKind::Domain(m) => format!("your email domain {}", describe_text(m)),
        CriterionKind::Email(m) => format!("your email address {}", describe_text(m)),
        CriterionKind::User(m) => format!("your user id {}", describe_text(m)),
        CriterionKind::HttpMethod(m) => format!("the request method {}", describe_text(m)),
        CriterionKind::HttpPath(m) => format!("the request path {}", describe_text(m)),
        CriterionKind::Groups(m) => format!("your groups {}", describe_list(&m.ops, true)),
        CriterionKind::Claim { name, matcher } => {
            format!("your `{name}` claim {}", describe_list(&matcher.ops, false))
        }
        CriterionKind::DayOfWeek(d) => {
            const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
            let days: Vec<&str> = (0..7)
                .filter(|i| d.days & (1 << i) != 0)
                .map(|i| DAYS[i])
                .collect();
            format!("the day is {} ({})", days.join(", "), d.timezone.name)
        }
        CriterionKind::TimeOfDay(t) => {
            let hm = |s: u32| format!("{:02}:{:02}", s / 3600, (s / 60) % 60);
            let window = match (t.after, t.before) {
                (Some(a), Some(b)) => format!("between {} and {}", hm(a), hm(b)),
                (Some(a), None) => format!("after {}", hm(a)),
                (None, Some(b)) => format!("before {}", hm(b)),
                (None, None) => "any time".into(),
            };
            format!("the time is {window} ({})", t.timezone.name)
        }
    }
}

/// The values of `in`/`not_in` are not listed: the deny page would show a person the other
/// addresses on a block or allow list.
fn describe_text(m: &StringMatcher) -> String {
    let parts: Vec<String> = m
        .ops
        .iter()
        .map(|op| match op {
            StringOp::Is(v) => format!("is {v}"),
            StringOp::StartsWith(v) => format!("starts with {v}"),
            StringOp::EndsWith(v) => format!("ends with {v}"),
            StringOp::Contains(v) => format!("contains {v}"),
            StringOp::In(v) => format!("is one of the {} listed", v.len()),
            StringOp::NotIn(v) => format!("is none of the {} listed", v.len()),
        })
        .collect();
    parts.join(" and ")
}

fn describe_list(ops: &[ListOp], plural: bool) -> String {
    let (has, is, excl) = if plural {
        ("include", "are exactly", "do not include")
    } else {
        ("includes", "is exactly", "does not include")
    };
    let parts: Vec<String> = ops
        .iter()
        .map(|op| match op {
            ListOp::Has(v) => format!("{has} {v}"),
            ListOp::Is(v) => format!("{is} {v}"),
            ListOp::Exclude(v) => format!("{excl} {v}"),
        })
        .collect();
    parts.join(" and ")
}

#[cfg(test)]
mod tests;
