//! The Google Workspace directory settings: where Gatehouse looks up a person's groups when
//! the identity provider is Google (its ID tokens carry no groups).

use std::time::Duration;

use crate::{Origin, Secret, Url};

/// Built-in Directory API base URL.
pub(crate) const GOOGLE_DIRECTORY_URL: &str = "https://admin.googleapis.com";
/// Built-in token URL when the key's JSON has no `token_uri`.
pub(crate) const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// `idp_refresh_directory_interval` default (Pomerium's).
pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// `idp_refresh_directory_timeout` default. Pomerium's is 1m for a whole-directory sync;
/// here it bounds one person's lookup, which a request may wait for, so it is shorter.
pub(crate) const DEFAULT_REFRESH_TIMEOUT: Duration = Duration::from_secs(10);
/// `idp_directory_max_stale` default.
pub(crate) const DEFAULT_MAX_STALE: Duration = Duration::from_secs(60 * 60);

/// Groups from the Admin SDK Directory API, read with a service account (Google only;
/// `None` in [`crate::Config::directory`] means groups come from the ID token).
#[derive(Debug)]
pub struct DirectoryConfig {
    /// `idp_service_account`: the decoded service-account key the lookups sign in with.
    pub service_account: ServiceAccount,
    /// The Workspace user the service account acts as (`impersonate_user` in the key's JSON,
    /// or `idp_directory_impersonate_user`): the JWT-bearer grant's `sub`.
    pub impersonate_user: String,
    /// `idp_directory_token_url`, else the key's `token_uri`, else
    /// `https://oauth2.googleapis.com/token`.
    pub token_url: Url,
    /// `idp_directory_url` (default `https://admin.googleapis.com`).
    pub directory_url: Url,
    /// `idp_refresh_directory_interval`: groups older than this are refreshed (in the
    /// background; the request uses the ones it has).
    pub refresh_interval: Duration,
    /// `idp_refresh_directory_timeout`: the longest one lookup (all its calls) may take.
    pub timeout: Duration,
    /// `idp_directory_max_stale`: the oldest groups ever used. Past it, with the directory
    /// not answering, routes whose rules use groups refuse (fail closed).
    pub max_stale: Duration,
    /// Where `idp_service_account` was set (for errors found later, like a key that does
    /// not parse as RSA).
    pub origin: Origin,
}

/// The fields Gatehouse uses from a Google service-account key (the JSON file). `Debug`
/// shows the key as `[redacted]` (it is a [`Secret`]).
#[derive(Debug)]
pub struct ServiceAccount {
    /// `client_email`: the JWT-bearer grant's `iss`.
    pub client_email: String,
    /// `private_key_id`: sent as the assertion's `kid`, when present.
    pub private_key_id: Option<String>,
    /// `private_key`: PEM (`BEGIN PRIVATE KEY` or `BEGIN RSA PRIVATE KEY`).
    pub private_key: Secret<String>,
}
