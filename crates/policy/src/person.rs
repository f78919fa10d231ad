//! From a signed-in person to the [`Facts`] a policy decides on. One way for every caller
//! (`serve`, `gatehouse policy explain` and `gatehouse policy test`), so a `claim/<name>`
//! criterion sees the same claims in each (issue 10).
//!
//! ```
//! use std::time::SystemTime;
//! use gatehouse_policy::{Person, Policy};
//!
//! let groups = vec!["staff".to_string()];
//! let ann = Person {
//!     sub: "u-1",
//!     email: "ann@example.com",
//!     email_verified: true,
//!     domain_verified: true,
//!     name: None,
//!     iss: "https://accounts.google.com",
//!     groups: &groups,
//!     claims: &[],
//! };
//! let policy = Policy::allowed_domains(&["example.com".to_string()]);
//! let request = ann.request("GET", "/", SystemTime::UNIX_EPOCH);
//! assert!(policy.evaluate(&request.facts()).is_allow());
//! ```

use std::time::SystemTime;

use crate::{Claim, ClaimValues, Facts};

/// The claims every [`Person`] has, from its fields, in the order [`Facts::claims`] lists
/// them (`name` only when the person has one). Other claims come after these.
pub const STANDARD_CLAIMS: [&str; 6] = ["sub", "email", "email_verified", "name", "iss", "groups"];

/// A signed-in person, as the policy sees them. The proxy builds one from the session,
/// `gatehouse policy` from the operator's flags or test case.
#[derive(Debug, Clone, Copy)]
pub struct Person<'a> {
    /// The identity provider's user id: the `sub` claim, and what `user` criteria match.
    pub sub: &'a str,
    /// The person's email address (the `email` claim): what `email` and `domain` criteria,
    /// `allowed_users` and `allowed_domains` match.
    pub email: &'a str,
    /// Whether the identity provider verified `email` (the `email_verified` claim is
    /// `"true"` or `"false"`).
    pub email_verified: bool,
    /// Whether the identity provider vouches for the address's domain (`email_verified`,
    /// and on Google the `hd` claim naming that domain): what `domain` criteria and
    /// `allowed_domains` need.
    pub domain_verified: bool,
    /// The display name, when the identity provider gave one. Without one there is no
    /// `name` claim (rather than an empty one).
    pub name: Option<&'a str>,
    /// The issuer that signed the person in (`iss`).
    pub iss: &'a str,
    /// The person's groups (ID-token `groups` claim or the directory): what `groups`
    /// criteria and `claim/groups` match.
    pub groups: &'a [String],
    /// Other claims, by name, for `claim/<name>`. One named like a standard claim
    /// ([`STANDARD_CLAIMS`]) is left out: those always come from the fields above.
    pub claims: &'a [(String, Vec<String>)],
}

impl<'a> Person<'a> {
    /// This person's request for `path` with `method` (upper-case), arriving at `time`.
    /// Its [`Request::facts`] are what a [`crate::Policy`] decides on.
    pub fn request(self, method: &'a str, path: &'a str, time: SystemTime) -> Request<'a> {
        let mut claims = ClaimList {
            standard: [Claim {
                name: "",
                values: ClaimValues::Many(&[]),
            }; STANDARD_CLAIMS.len()],
            len: 0,
            all: Vec::new(),
        };
        if self.claims.is_empty() {
            for (slot, claim) in claims.standard.iter_mut().zip(self.standard_claims()) {
                *slot = claim;
                claims.len += 1;
            }
        } else {
            let extra = self
                .claims
                .iter()
                .filter(|(name, _)| !STANDARD_CLAIMS.contains(&name.as_str()))
                .map(|(name, values)| Claim {
                    name,
                    values: ClaimValues::Many(values),
                });
            claims.all = self.standard_claims().chain(extra).collect();
        }
        Request {
            person: self,
            claims,
            method,
            path,
            time,
        }
    }

    /// The standard claims, in [`STANDARD_CLAIMS`] order; `name` only when known.
    fn standard_claims(&self) -> impl Iterator<Item = Claim<'a>> + use<'a> {
        let one = |name: &'static str, value: &'a str| Claim {
            name,
            values: ClaimValues::One(value),
        };
        [
            Some(one("sub", self.sub)),
            Some(one("email", self.email)),
            Some(one(
                "email_verified",
                if self.email_verified { "true" } else { "false" },
            )),
            self.name.map(|n| one("name", n)),
            Some(one("iss", self.iss)),
            Some(Claim {
                name: "groups",
                values: ClaimValues::Many(self.groups),
            }),
        ]
        .into_iter()
        .flatten()
    }
}

/// A person's request, ready to decide: holds the claim list its [`Facts`] borrow. Made by
/// [`Person::request`]; allocates only when the person has claims beyond the standard ones.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    person: Person<'a>,
    claims: ClaimList<'a>,
    method: &'a str,
    path: &'a str,
    time: SystemTime,
}

/// A person's claims: the first `len` of `standard` when there are no others (`name` may
/// be missing), else all of them in `all`.
#[derive(Debug, Clone)]
struct ClaimList<'a> {
    standard: [Claim<'a>; STANDARD_CLAIMS.len()],
    len: usize,
    all: Vec<Claim<'a>>,
}

impl Request<'_> {
    /// The facts a policy decides this request on.
    pub fn facts(&self) -> Facts<'_> {
        let claims = if self.claims.all.is_empty() {
            &self.claims.standard[..self.claims.len]
        } else {
            self.claims.all.as_slice()
        };
        Facts {
            user: self.person.sub,
            email: self.person.email,
            email_verified: self.person.email_verified,
            domain_verified: self.person.domain_verified,
            groups: self.person.groups,
            claims,
            method: self.method,
            path: self.path,
            time: self.time,
        }
    }
}
