//! Every way a request ends without reaching its upstream, as one type: the refusals of the
//! flow (policy, cross-site, signed-in checks), sign-in failures, the backend that cannot be
//! had, and the upstream that failed. Each has a stable [`Refusal::code`] for the access log
//! (`decision=…`), and [`crate::pages::refusal`] turns each into the page the person sees.
//!
//! [`Outcome`] is what the access log records for every request: the policy's reason when
//! it decided, or the refusal's code when something else ended the request.

use gatehouse_backends::BackendError;
use gatehouse_policy::Reason;

/// Why a request is answered by Gatehouse instead of its upstream.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No usable `Host` header.
    BadHost,
    /// The request's header block is larger than [`crate::flow::MAX_HEADER_BYTES`].
    HeadersTooLarge,
    /// One of Gatehouse's own cookies came more than once (cookie tossing, or a leftover
    /// from before `cookie_domain` changed).
    DuplicateCookie { name: String },
    /// The client address has `max_connections_per_client` requests open already.
    TooManyConnections,
    /// A path with empty, `.` or `..` segments, a backslash, or a needless escape.
    UnusualPath,
    /// No route for this host (and port, and path).
    NoRoute { host: String },
    /// The route's policy denied the person.
    PolicyDenied {
        email: String,
        reason: Reason,
        /// For the page's sign-out button.
        csrf: String,
    },
    /// A cross-site write (or WebSocket) to a person's backend.
    CrossOrigin,
    /// A sign-out or Restart form that did not come from Gatehouse's own page.
    FormNotConfirmed { sign_out: bool },
    /// `/.gatehouse/<name>` that does not exist.
    NoSuchPage { name: String },
    /// The Restart form named a pool that does not exist.
    NoSuchPool,
    /// The IdP's answer was refused (state, code, token checks), or a handoff was.
    SignInFailed { shown: String, retry: String },
    /// A route host with an authenticate host received an IdP callback.
    SignInElsewhere,
    /// A sign-in or sign-out asked to return to a URL that is not a route.
    ReturnUrlRefused,
    /// A sign-in link without its browser binding.
    SignInLinkIncomplete,
    /// A sign-in link used a second time.
    SignInLinkUsed,
    /// A sign-out link that is not valid (expired, forged).
    SignOutLinkInvalid,
    /// A sign-out could not be written to the state store (the session is still valid).
    SignOutNotRecorded { request_id: String },
    /// The identity provider could not be reached to start a sign-in.
    IdpUnreachable { request_id: String },
    /// The person's backend is starting (a browser navigation; the page reloads itself).
    BackendStarting,
    /// The person's backend cannot be had (pool full, failing, refused home, shutting down).
    BackendUnavailable {
        error: BackendError,
        request_id: String,
    },
    /// The person's backend was not ready within `start_timeout`.
    BackendTimeout { request_id: String },
    /// The upstream did not answer in time.
    UpstreamTimeout { request_id: String },
    /// The upstream refused the connection or broke it.
    UpstreamDown { request_id: String },
    /// The request could not be read (a client error).
    RequestUnreadable,
    /// The request was refused while proxying (a 4xx from the proxy machinery).
    RequestRefused,
    /// OpenCode's provider OAuth on a backend route whose pool relays providers: it would
    /// write the provider's tokens into the backend's `auth.json` (issue 12).
    ProviderOAuth,
    /// A service worker's script on a backend route: it would see every request of the
    /// origin, Gatehouse's own pages (the keys page) included.
    ServiceWorker,
    /// A Gatehouse access token that is malformed, unknown, revoked or expired (issue 13).
    TokenRefused { message: String },
    /// A valid access token used on a route it was not made for.
    TokenWrongRoute,
    /// An access token on Gatehouse's own pages (a token cannot make or revoke tokens).
    TokenOnOwnPages,
    /// An IdP ID token as bearer on a route that accepts them, which did not verify.
    IdpTokenRefused { message: String },
    /// Anything else: the details are in the log under the request id.
    Internal { request_id: String },
}

impl Refusal {
    /// The stable code for the access log and the tests. A policy denial uses the policy's
    /// own reason code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Refusal::BadHost => "bad-host",
            Refusal::HeadersTooLarge => "headers-too-large",
            Refusal::DuplicateCookie { .. } => "duplicate-cookie",
            Refusal::TooManyConnections => "too-many-connections",
            Refusal::SignOutNotRecorded { .. } => "sign-out-not-recorded",
            Refusal::UnusualPath => "unusual-path",
            Refusal::NoRoute { .. } => "no-route",
            Refusal::PolicyDenied { reason, .. } => reason.code(),
            Refusal::CrossOrigin => "cross-origin",
            Refusal::FormNotConfirmed { .. } => "form-not-confirmed",
            Refusal::NoSuchPage { .. } => "no-such-page",
            Refusal::NoSuchPool => "no-such-pool",
            Refusal::SignInFailed { .. } => "sign-in-failed",
            Refusal::SignInElsewhere => "sign-in-elsewhere",
            Refusal::ReturnUrlRefused => "return-url-refused",
            Refusal::SignInLinkIncomplete => "sign-in-link-incomplete",
            Refusal::SignInLinkUsed => "sign-in-link-used",
            Refusal::SignOutLinkInvalid => "sign-out-link-invalid",
            Refusal::IdpUnreachable { .. } => "idp-unreachable",
            Refusal::BackendStarting => "backend-starting",
            Refusal::BackendUnavailable { .. } => "backend-unavailable",
            Refusal::BackendTimeout { .. } => "backend-timeout",
            Refusal::UpstreamTimeout { .. } => "upstream-timeout",
            Refusal::UpstreamDown { .. } => "upstream-down",
            Refusal::RequestUnreadable => "request-unreadable",
            Refusal::RequestRefused => "request-refused",
            Refusal::ProviderOAuth => "provider-oauth-refused",
            Refusal::ServiceWorker => "service-worker-refused",
            Refusal::TokenRefused { .. } => "token-refused",
            Refusal::TokenWrongRoute => "token-wrong-route",
            Refusal::TokenOnOwnPages => "token-on-own-pages",
            Refusal::IdpTokenRefused { .. } => "idp-token-refused",
            Refusal::Internal { .. } => "internal-error",
        }
    }
}

/// What the access log says about a request's decision (`decision=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A public route: no sign-in, no policy.
    Public,
    /// No session: sent to sign in (or 401 for a script).
    SignedOut,
    /// The route's policy allowed the person, for this reason.
    Allowed(&'static str),
    /// Gatehouse answered instead of the upstream, for this reason (a policy denial's code
    /// included).
    Refused(&'static str),
}

impl Outcome {
    pub(crate) fn code(self) -> &'static str {
        match self {
            Outcome::Public => Reason::PublicRoute.code(),
            Outcome::SignedOut => "signed-out",
            Outcome::Allowed(code) | Outcome::Refused(code) => code,
        }
    }
}

impl From<&Refusal> for Outcome {
    fn from(r: &Refusal) -> Self {
        Outcome::Refused(r.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        let all = [
            Refusal::BadHost,
            Refusal::HeadersTooLarge,
            Refusal::DuplicateCookie { name: "x".into() },
            Refusal::TooManyConnections,
            Refusal::SignOutNotRecorded {
                request_id: "r".into(),
            },
            Refusal::UnusualPath,
            Refusal::NoRoute { host: "x".into() },
            Refusal::CrossOrigin,
            Refusal::FormNotConfirmed { sign_out: true },
            Refusal::NoSuchPage { name: "x".into() },
            Refusal::NoSuchPool,
            Refusal::SignInFailed {
                shown: "x".into(),
                retry: "/".into(),
            },
            Refusal::SignInElsewhere,
            Refusal::ReturnUrlRefused,
            Refusal::SignInLinkIncomplete,
            Refusal::SignInLinkUsed,
            Refusal::SignOutLinkInvalid,
            Refusal::IdpUnreachable {
                request_id: "r".into(),
            },
            Refusal::BackendStarting,
            Refusal::BackendUnavailable {
                error: BackendError::ShuttingDown,
                request_id: "r".into(),
            },
            Refusal::BackendTimeout {
                request_id: "r".into(),
            },
            Refusal::UpstreamTimeout {
                request_id: "r".into(),
            },
            Refusal::UpstreamDown {
                request_id: "r".into(),
            },
            Refusal::RequestUnreadable,
            Refusal::RequestRefused,
            Refusal::ProviderOAuth,
            Refusal::ServiceWorker,
            Refusal::TokenRefused {
                message: "x".into(),
            },
            Refusal::TokenWrongRoute,
            Refusal::TokenOnOwnPages,
            Refusal::IdpTokenRefused {
                message: "x".into(),
            },
            Refusal::Internal {
                request_id: "r".into(),
            },
        ];
        let mut codes: Vec<&str> = all.iter().map(Refusal::code).collect();
        assert!(
            codes
                .iter()
                .all(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '-'))
        );
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n, "two refusals share a code");
        assert_eq!(Refusal::CrossOrigin.code(), "cross-origin");
        assert_eq!(Outcome::Public.code(), "public-route");
        assert_eq!(Outcome::SignedOut.code(), "signed-out");
    }
}
