//! Gatehouse configuration.
//!
//! Reads one YAML file (Pomerium-compatible keys, plus Gatehouse's own), resolves `${VAR}`
//! from the environment, lets an upper-case environment variable override any top-level key
//! (`COOKIE_SECRET` overrides `cookie_secret`), and turns it into a checked [`Config`].
//! Every problem is reported with the place it came from (`config.yaml:14:9: …` or
//! `environment variable COOKIE_SECRET: …`), and parsing goes on past the first problem so
//! the operator sees them all at once.
//!
//! It also reads the policy test files `gatehouse policy test` runs ([`policy_tests`]).
//!
//! This crate must not open sockets. It reads files only to load the config itself (and
//! policy test files); the proxy checks that certificate files parse (it owns TLS) and
//! reports with the [`Origin`] kept on each value.
//!
//! ```
//! use std::collections::HashMap;
//! use std::path::Path;
//!
//! // Tests pass a map; production passes `ProcessEnv`.
//! let env: HashMap<String, String> = [
//!     ("COOKIE_SECRET", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
//!     ("GOOGLE_CLIENT_SECRET", "not-a-real-secret"),
//! ]
//! .into_iter()
//! .map(|(k, v)| (k.to_string(), v.to_string()))
//! .collect();
//! let yaml = "\
//! idp_client_id: 1234.apps.googleusercontent.com
//! idp_client_secret: ${GOOGLE_CLIENT_SECRET}
//! routes:
//!   - from: https://assistant.example.com
//!     to: http://127.0.0.1:4096
//!     policy:
//!       - allow: { or: [ { domain: { is: example.com } } ] }
//! ";
//! let config = gatehouse_config::load_str(Path::new("gatehouse.yaml"), yaml, &env).unwrap();
//! assert_eq!(config.routes[0].from.host, "assistant.example.com");
//!
//! let broken = yaml.replace("http://127", "htp://127");
//! let errors = gatehouse_config::load_str(Path::new("gatehouse.yaml"), &broken, &env).unwrap_err();
//! assert_eq!(
//!     errors.to_string(),
//!     "gatehouse.yaml:5:9: routes[0].to: \"htp://127.0.0.1:4096\" is not a URL (expected http:// or https://)"
//! );
//! ```

#![warn(missing_docs, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use secrecy::{ExposeSecret, SecretBox, SecretString};
pub use url::Url;

mod directory;
mod parse;
pub mod policy_tests;

pub use directory::{DirectoryConfig, ServiceAccount};

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A place in a YAML file (1-based line and column). Line 0 means the file as a whole
    /// (it could not be read, or a required key is missing) and displays as just the path.
    File {
        /// The YAML file (the config file, or a policy file in `policies_dir`).
        file: Arc<Path>,
        /// 1-based line; 0 for the file as a whole.
        line: usize,
        /// 1-based column.
        col: usize,
    },
    /// An environment variable that overrode a top-level key.
    Env {
        /// The variable's name (`COOKIE_SECRET`).
        var: String,
    },
    /// A built-in default.
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File { file, line: 0, .. } => write!(f, "{}", file.display()),
            Origin::File { file, line, col } => write!(f, "{}:{line}:{col}", file.display()),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

/// One problem found in the configuration. `Display` is `origin: message`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// Where the offending value was written (or came from).
    pub origin: Origin,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl ConfigError {
    /// A problem at `origin`.
    pub fn new(origin: Origin, message: impl Into<String>) -> Self {
        ConfigError {
            origin,
            message: message.into(),
        }
    }
}

/// Every problem found, sorted by file and line. Never empty.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors {
    /// The problems, one per line when displayed.
    pub errors: Vec<ConfigError>,
}

/// How environment variables are read. Production uses [`ProcessEnv`]; tests pass a map.
pub trait Lookup {
    /// The value of the environment variable `name`; `None` if it is not set.
    fn get(&self, name: &str) -> Option<String>;
}

/// Reads the process environment.
pub struct ProcessEnv;

impl Lookup for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Lookup for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// Loads and checks the config file at `path`.
pub fn load(path: &Path, env: &dyn Lookup) -> Result<Config, ConfigErrors> {
    parse::load(path, env, false)
}

/// [`load`] for the offline tools (`policy explain`, `policy test`), which decide requests
/// without signing anyone in: secrets (`cookie_secret`, `idp_client_secret`, …) may be
/// absent or name unset variables; placeholders stand in for the required ones. Never for
/// `serve` or `check`.
pub fn load_offline(path: &Path, env: &dyn Lookup) -> Result<Config, ConfigErrors> {
    parse::load(path, env, true)
}

/// Loads config from text, as if read from the file `name` (for tests and `init`).
pub fn load_str(name: &Path, text: &str, env: &dyn Lookup) -> Result<Config, ConfigErrors> {
    parse::load_str(name, text, env)
}

/// The checked configuration. Other crates only ever see this.
#[derive(Debug)]
pub struct Config {
    /// The file this was loaded from.
    pub source: PathBuf,
    /// Main listener (`address`, default `:443` = `0.0.0.0:443`).
    pub address: SocketAddr,
    /// `insecure_server: true`: plain HTTP on `address` (behind a TLS terminator).
    pub insecure_server: bool,
    /// `http_redirect_addr`: plain HTTP listener that only redirects to https.
    pub http_redirect_addr: Option<SocketAddr>,
    /// From `certificate_file`/`certificate_key_file` and the `certificates:` list, in order.
    /// Empty and not `insecure_server` = self-signed at start (with a warning).
    pub certificates: Vec<CertificatePair>,
    /// `authenticate_service_url`: where the IdP callback lands (`/oauth2/callback`).
    pub authenticate_service_url: Option<Url>,
    /// `idp_*`: the identity provider people sign in with.
    pub idp: IdpConfig,
    /// Google Workspace groups from the Directory API (`idp_service_account` with
    /// `idp_provider: google`). `None`: groups come from the ID token's `groups` claim.
    pub directory: Option<DirectoryConfig>,
    /// `cookie_*`: the session cookie.
    pub cookie: CookieConfig,
    /// `signing_key`: PEM (decoded from base64) of an EC P-256 private key for the identity JWT.
    pub signing_key: Option<Secret<String>>,
    /// Top-level `allowed_domains` (TeamOS seed): applies to routes without a policy of their own.
    pub allowed_domains: Vec<String>,
    /// Top-level `allowed_groups`: like `allowed_domains`, for routes without a policy of
    /// their own (either list lets a person in).
    pub allowed_groups: Vec<String>,
    /// `policies_dir`: the directory of named policies (relative paths are relative to the
    /// config file), watched for changes.
    pub policies_dir: Option<PathBuf>,
    /// The named policies found in `policies_dir`, by name (sorted).
    pub policies: Vec<NamedPolicy>,
    /// `metrics_address`: a plain-HTTP listener serving Prometheus metrics at `/metrics`.
    pub metrics_address: Option<SocketAddr>,
    /// `health_check_addr`: a plain-HTTP listener answering `/healthz`, `/readyz` and
    /// `/startupz` (for a container's or a load balancer's health checks).
    pub health_check_addr: Option<SocketAddr>,
    /// `routes:`, in the order written.
    pub routes: Vec<Route>,
    /// `backends:`: pools of per-person backends that routes name with `to_backend:`.
    pub backends: Vec<BackendPool>,
    /// Secrets written literally in the config file (not `${VAR}`, not from the
    /// environment): the key and where. With backends, the file must not be readable by
    /// group or others.
    pub literal_secrets: Vec<(String, Origin)>,
    /// Secrets read from files (`cookie_secret_file`, …): the key, the file and where it was
    /// named. With backends, each file must be readable by Gatehouse alone.
    pub secret_files: Vec<(String, PathBuf, Origin)>,
    /// `log_level` (default `info`).
    pub log_level: String,
    /// `state_dir`: the state store's directory (revoked sessions, one-time values),
    /// default `state` beside the first pool's `data_root` (`/var/lib/gatehouse/state`).
    pub state_dir: PathBuf,
    /// `relay_address`: where the LLM relay listens (loopback only; default
    /// `127.0.0.1:4100`). Used when a pool has `relay`.
    pub relay_address: SocketAddr,
    /// `provider_key_secret`: the master secret of persistent provider keys; `None`:
    /// derived from `cookie_secret` (a purpose of its own).
    pub provider_key_secret: Option<Secret<[u8; 32]>>,
    /// `max_connections_per_client`: the most requests one client address may have open
    /// at once (streams included); more get 429. Default 512.
    pub max_connections_per_client: usize,
    /// `access_token_max_expire`: the longest a personal access token may live (default
    /// 90 days). A new token lives 30 days unless the person picks less (or this is less).
    pub access_token_max_expire: std::time::Duration,
    /// Where `state_dir` was set ([`Origin::Default`] when it was not), for its errors.
    pub state_dir_origin: Origin,
    /// Non-fatal notes (deprecated or ignored keys), shown by `check` and logged at start.
    pub warnings: Vec<ConfigError>,
}

/// A TLS certificate and its private key (`certificate_file`/`certificate_key_file`, or a
/// `certificates:` entry), chosen by SNI. The proxy parses the files.
#[derive(Debug, Clone)]
pub struct CertificatePair {
    /// `cert`: the PEM certificate chain, resolved against the config file's directory.
    pub cert_file: PathBuf,
    /// `key`: the PEM private key, resolved against the config file's directory.
    pub key_file: PathBuf,
    /// Where the certificate path was written, for errors found when the proxy reads it.
    pub origin: Origin,
}

/// `idp_provider`: which kind of identity provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdpProvider {
    /// `google` (the default): Google accounts, issuer `https://accounts.google.com`.
    Google,
    /// `oidc`: any OpenID Connect provider, found by discovery at `idp_provider_url`.
    Oidc,
}

/// The identity provider people sign in with (OpenID Connect).
#[derive(Debug)]
pub struct IdpConfig {
    /// `idp_provider` (default `google`).
    pub provider: IdpProvider,
    /// Issuer URL: `https://accounts.google.com` for google, `idp_provider_url` for oidc.
    /// http only on a loopback host.
    pub issuer: Url,
    /// `idp_client_id`: the OAuth client ID registered with the provider.
    pub client_id: String,
    /// `idp_client_secret`: the OAuth client secret.
    pub client_secret: Secret<String>,
    /// `idp_scopes`: the scopes asked for; always includes `openid`. Default
    /// `openid email profile`.
    pub scopes: Vec<String>,
    /// Where `idp_provider` was set (the built-in default when it was not).
    pub origin: Origin,
}

/// `cookie_same_site`: the session cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `lax` (the default): also sent on top-level navigation from other sites.
    Lax,
    /// `strict`: never sent on requests started by another site.
    Strict,
    /// `none`: sent on every request, cross-site included.
    None,
}

/// The session cookie (`cookie_*`). Gatehouse always sets `HttpOnly` and `Secure`.
#[derive(Debug)]
pub struct CookieConfig {
    /// `cookie_name`, default `_pomerium` (`__Host-gatehouse` with `cookie_host_prefix`).
    /// With `cookie_host_prefix`, it begins with `__Host-`.
    pub name: String,
    /// `cookie_host_prefix` (or a `cookie_name` that begins with `__Host-`): the cookies
    /// are `__Host-` cookies, which the browser takes only from this exact host over HTTPS,
    /// so a sibling subdomain cannot set them (cookie tossing). Never with `domain`.
    pub host_prefix: bool,
    /// `cookie_secret`: exactly 32 bytes after base64 decoding.
    pub secret: Secret<[u8; 32]>,
    /// `cookie_secret_previous`: earlier secrets, still accepted to open what they sealed
    /// (sessions, stored provider keys) after a rotation; never used to seal.
    pub previous_secrets: Vec<Secret<[u8; 32]>>,
    /// `cookie_expire`, default 14h.
    pub expire: Duration,
    /// `cookie_domain`: the cookie's `Domain` attribute. `None`: a host-only cookie.
    pub domain: Option<String>,
    /// `cookie_same_site`, default lax.
    pub same_site: SameSite,
}

/// A secret value: `Debug` prints `[redacted]`, there is no `Display`.
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps `value` so that it is never printed.
    pub fn new(value: T) -> Self {
        Secret(value)
    }
    /// The secret itself. Never log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `from:` of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFrom {
    /// `https` or `http`.
    pub scheme: String,
    /// Lower-case host name (no port).
    pub host: String,
    /// Explicit port: the route matches only that port. `None`: any port.
    pub port: Option<u16>,
}

/// `scheme://host[:port]`, for messages and logs.
impl std::fmt::Display for RouteFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => Ok(()),
        }
    }
}

/// One entry of `routes:`: which requests it matches, who may pass, and where they go.
#[derive(Debug)]
pub struct Route {
    /// Position in `routes:` (0-based), for messages: `routes[2]`.
    pub index: usize,
    /// `from:`: the scheme, host and optional port the route answers on.
    pub from: RouteFrom,
    /// `prefix:`: path must start with this.
    pub prefix: Option<String>,
    /// `path:`: path must equal this.
    pub path: Option<String>,
    /// `to:` (a static URL) or `to_backend:` (the person's own backend from a pool).
    pub to: Upstream,
    /// `pass_identity_headers` (default false): send the person's identity upstream
    /// (`X-Pomerium-Claim-*` headers and the signed JWT in `X-Pomerium-Jwt-Assertion`).
    pub pass_identity_headers: bool,
    /// `preserve_host_header`: send the client's Host upstream instead of `to`'s host.
    pub preserve_host_header: bool,
    /// `cors_allow_preflight` (Pomerium's key, default false): the upstream serves other
    /// sites. CORS preflights (`OPTIONS` with `Access-Control-Request-Method`) pass without
    /// sign-in, and signed-in cross-site writes are not refused.
    pub cors_allow_preflight: bool,
    /// `bearer_token_format: idp_identity_token` (Pomerium's key and value; default
    /// `default`): an `Authorization: Bearer` ID token from the configured IdP is accepted
    /// on this route, verified as at sign-in. Otherwise a bearer that is not one of
    /// Gatehouse's own tokens passes to the upstream untouched.
    pub idp_identity_tokens: bool,
    /// `idp_token_audiences`: audiences an accepted IdP ID token may have besides
    /// `idp_client_id` (another client of the same IdP, e.g. a CLI's).
    pub idp_token_audiences: Vec<String>,
    /// `allow_public_unauthenticated_access` (default false): anyone, without signing in.
    pub allow_public_unauthenticated_access: bool,
    /// `allow_any_authenticated_user` (default false): anyone who has signed in.
    pub allow_any_authenticated_user: bool,
    /// Route-level `allowed_domains`.
    pub allowed_domains: Vec<String>,
    /// Route-level `allowed_users` (emails).
    pub allowed_users: Vec<String>,
    /// Route-level `allowed_groups` (group names or ids, as the IdP or directory gives them).
    pub allowed_groups: Vec<String>,
    /// `policy:` in Pomerium's policy language, or the named policy it refers to.
    pub policy: Option<PolicySpec>,
    /// `policy: <name>`: the named policy (from `policies_dir`) the route uses.
    pub policy_name: Option<String>,
    /// Where the route's entry starts in `routes:`.
    pub origin: Origin,
}

/// Where a route forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `to: http://host:port`: one upstream for everyone.
    Url(Url),
    /// `to_backend: <pool>`: each signed-in person's own backend from the pool of that name
    /// in `backends:`.
    Backend(String),
}

impl Upstream {
    /// The static URL, if this is one.
    pub fn url(&self) -> Option<&Url> {
        match self {
            Upstream::Url(u) => Some(u),
            Upstream::Backend(_) => None,
        }
    }
}

/// One pool of per-person backends (`backends.<name>`): every signed-in person who reaches
/// a route with `to_backend: <name>` gets their own process, started on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendPool {
    /// The key under `backends:`.
    pub name: String,
    /// `command`: program and arguments; `{port}` is replaced by the backend's port.
    /// Default: `opencode serve --hostname 127.0.0.1 --port {port}`.
    pub command: Vec<String>,
    /// `ports`: loopback ports handed to backends, `4101-4199` by default.
    pub ports: (u16, u16),
    /// `data_root`: one directory per person below it (named by a hash of the person's
    /// issuer and subject), used as the backend's HOME. Default `/var/lib/gatehouse/backends`.
    pub data_root: PathBuf,
    /// `idle_timeout` (default 30m): no request, no open stream and no busy session for
    /// this long stops a backend.
    pub idle_timeout: Duration,
    /// `start_timeout` (default 60s): spawn to ready, at most; API calls wait this long.
    pub start_timeout: Duration,
    /// `max_starting` (default 2): starts at the same time; more wait their turn.
    pub max_starting: usize,
    /// `max_backends` (default: as many as there are ports): running at the same time.
    pub max_backends: usize,
    /// `env`: extra environment for every backend. Not for secrets: the person can read it
    /// through the backend's terminal.
    pub env: Vec<(String, String)>,
    /// `uids` (like `200000-200999`): each person's backend runs as their own uid (and
    /// gid) from this range. Required when Gatehouse runs as root.
    pub uids: Option<UidRange>,
    /// `isolation: none`: backends share Gatehouse's own uid (only when Gatehouse does not
    /// run as root; `check` warns). Default: one uid per person (`uids`).
    pub isolation_none: Option<Origin>,
    /// `limits`: what one person's backend (every process of their uid) may use.
    pub limits: Limits,
    /// `egress.allow`: what a backend may connect to besides the public internet.
    pub egress: Vec<EgressRule>,
    /// `confinement` (default `required`): where the host lacks nftables or Landlock,
    /// `required` refuses to start; `best_effort` starts without it and says so.
    pub confinement: Confinement,
    /// `stop_on_sign_out` (default false): signing out also stops the person's backend.
    pub stop_on_sign_out: bool,
    /// `workspace` (default `workspace`): the project directory made in each person's home
    /// (a git repository of its own, so no enclosing checkout becomes their project), where
    /// the backend starts and where a browser's page load of `/` lands.
    pub workspace: String,
    /// `relay`: the LLM providers whose keys Gatehouse keeps and relays (issue 12).
    pub relay: Option<RelaySettings>,
    /// Where `backends.<name>` was written (the built-in default for [`Self::with_defaults`]).
    pub origin: Origin,
}

/// `uids: first-last`, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidRange {
    /// The lowest uid of the range (never 0).
    pub first: u32,
    /// The highest uid of the range, inclusive.
    pub last: u32,
    /// Where `uids:` was written.
    pub origin: Origin,
}

impl UidRange {
    /// Whether `uid` is in the range (both ends included).
    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
    /// Whether the two ranges share at least one uid.
    pub fn overlaps(&self, other: &UidRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// `limits:` of a pool. Each applies to one person's backend: `processes` counts every
/// process and thread of the person's uid (`RLIMIT_NPROC`), `memory` is each process's data
/// segment (`RLIMIT_DATA`; OpenCode reserves ~129 GiB of address space, so `RLIMIT_AS`
/// cannot be used: docs/opencode.md), `open_files` is `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `processes` (default 512): `RLIMIT_NPROC`, processes and threads of the person's uid.
    pub processes: u64,
    /// `memory` (default 8G), in bytes: `RLIMIT_DATA` of each process.
    pub memory_bytes: u64,
    /// `open_files` (default 4096): `RLIMIT_NOFILE`.
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            processes: 512,
            memory_bytes: 8 << 30,
            open_files: 4096,
        }
    }
}

/// One `egress.allow` entry: a network (an address is a /32 or /128) or a host name
/// (resolved by the backends crate when it writes the firewall rules), and optionally one
/// port (required with a host name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// The network or host name a backend may connect to.
    pub target: EgressTarget,
    /// The one port allowed; `None`: every port (only for a network).
    pub port: Option<u16>,
    /// As written (`llm.internal:443`), for logs.
    pub written: String,
    /// Where the entry was written in `egress.allow`.
    pub origin: Origin,
}

/// What an `egress.allow` entry lets a backend reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressTarget {
    /// An address or network (`10.0.0.5`, `10.1.0.0/16`).
    Net {
        /// The network's address.
        addr: std::net::IpAddr,
        /// Prefix length: 32 (IPv4) or 128 (IPv6) for a single address.
        prefix: u8,
    },
    /// A host name (lower-case), resolved when the firewall rules are written.
    Host(String),
}

/// `confinement:` of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Confinement {
    /// Refuse to start when nftables or Landlock is missing.
    #[default]
    Required,
    /// Start without what is missing, with a warning at start.
    BestEffort,
}

impl BackendPool {
    /// The real OpenCode server, found on `PATH`.
    pub const DEFAULT_COMMAND: &[&str] = &[
        "opencode",
        "serve",
        "--hostname",
        "127.0.0.1",
        "--port",
        "{port}",
    ];
    /// `ports` default: loopback ports 4101–4199 (both included).
    pub const DEFAULT_PORTS: (u16, u16) = (4101, 4199);
    /// `data_root` default: where the per-person home directories live.
    pub const DEFAULT_DATA_ROOT: &str = "/var/lib/gatehouse/backends";

    /// A pool named `name` with every default (issue 5): OpenCode, ports 4101–4199, one
    /// backend per port, idle 30m, start 60s, 2 starts at once, no uid range.
    pub fn with_defaults(name: &str) -> Self {
        let (first, last) = Self::DEFAULT_PORTS;
        BackendPool {
            name: name.to_string(),
            command: Self::DEFAULT_COMMAND
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ports: Self::DEFAULT_PORTS,
            data_root: PathBuf::from(Self::DEFAULT_DATA_ROOT),
            idle_timeout: Duration::from_secs(30 * 60),
            start_timeout: Duration::from_secs(60),
            max_starting: 2,
            max_backends: usize::from(last - first) + 1,
            env: Vec::new(),
            uids: None,
            isolation_none: None,
            limits: Limits::default(),
            egress: Vec::new(),
            confinement: Confinement::Required,
            stop_on_sign_out: false,
            workspace: "workspace".to_string(),
            relay: None,
            origin: Origin::Default,
        }
    }
}

/// `backends.<pool>.relay`: the person's provider keys stay in Gatehouse; the backend gets
/// a relay address and a token of its own instead (docs/relay.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// `keys`: where a person's keys are kept.
    pub keys: KeyMode,
    /// `rate_limit`: relay requests one person may make per minute (default 120).
    pub rate_limit: u32,
    /// `providers`: the providers relayed, in config order.
    pub providers: Vec<RelayProvider>,
    /// Where `relay:` was written.
    pub origin: Origin,
}

impl RelaySettings {
    /// The provider with OpenCode's id `id`.
    pub fn provider(&self, id: &str) -> Option<&RelayProvider> {
        self.providers.iter().find(|p| p.id == id)
    }
}

/// Where a person's provider keys are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// `ephemeral` (default): sealed in a cookie of the browser that entered it, and in
    /// memory while the person is active.
    Ephemeral,
    /// `persistent`: encrypted (AES-256-GCM, per-person key) in the state store.
    Persistent,
}

impl KeyMode {
    /// The word the config uses.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyMode::Ephemeral => "ephemeral",
            KeyMode::Persistent => "persistent",
        }
    }
}

/// One relayed provider (`relay.providers.<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayProvider {
    /// OpenCode's provider id (`openai`, `anthropic`, or the operator's own).
    pub id: String,
    /// Which API paths are relayed and how the key is sent.
    pub style: ProviderStyle,
    /// `base_url`: the provider's real API base, like `https://api.openai.com/v1`.
    pub base_url: Url,
    /// `auth_header`: the header that carries the key (lower case).
    pub auth_header: String,
    /// `auth_prefix`: written before the key in that header (`Bearer ` for OpenAI style).
    pub auth_prefix: String,
    /// Where the provider was written.
    pub origin: Origin,
}

/// A provider API's shape: the paths relayed and the key header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderStyle {
    /// OpenAI and compatible APIs: `Authorization: Bearer`, `/chat/completions`,
    /// `/completions`, `/responses`, `/embeddings`, `/models`.
    OpenAi,
    /// Anthropic: `x-api-key`, `/messages`, `/messages/count_tokens`, `/models`.
    Anthropic,
}

/// A policy file in `policies_dir`: `<name>.yaml` holds the same list of `allow:`/`deny:`
/// blocks a route's `policy:` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPolicy {
    /// The file name without `.yaml`: what a route's `policy: <name>` refers to.
    pub name: String,
    /// The policy file it was read from.
    pub file: PathBuf,
    /// The blocks the file holds.
    pub spec: PolicySpec,
}

/// The `policy:` of a route, in Pomerium's policy language (PPL), checked and normalised.
/// The policy crate compiles and evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// The `allow:`/`deny:` blocks; a request is let in by an allow that holds and no deny.
    pub blocks: Vec<PolicyBlock>,
}

/// Whether a policy block lets the request in or keeps it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `allow:`: lets the request in when its rule holds (and no `deny:` holds).
    Allow,
    /// `deny:`: keeps the request out when its rule holds; wins over every `allow:`.
    Deny,
}

/// PPL's logical operators, with Pomerium's documented meaning (docs "Pomerium Policy
/// Language", "More on Logical Operators", and its generator `conditionals.go`):
/// `and` = all hold (A ∧ B); `or` = at least one holds (A ∨ B); `not` = none holds
/// (¬A ∧ ¬B, "traditionally called NOR"); `nor` = not all hold (¬A ∨ ¬B, "traditionally
/// called NAND"). Note that PPL's `nor` is *not* the Boolean NOR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogicalOp {
    /// `and`: every child holds.
    And,
    /// `or`: at least one child holds.
    Or,
    /// `not`: no child holds (Boolean NOR).
    Not,
    /// `nor`: not every child holds (Boolean NAND).
    Nor,
}

impl LogicalOp {
    /// The PPL keyword, as written (`and`, `or`, `not`, `nor`).
    pub fn keyword(self) -> &'static str {
        match self {
            LogicalOp::And => "and",
            LogicalOp::Or => "or",
            LogicalOp::Not => "not",
            LogicalOp::Nor => "nor",
        }
    }
}

/// `- allow: { or: [ … ] }`. Several operators in one block (valid PPL) hold if any of
/// them holds, as Pomerium documents ("Multiple Operators in a Rule"); they are kept as
/// one `or` of the operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyBlock {
    /// `allow` or `deny`.
    pub action: Action,
    /// The condition under the block's key.
    pub rule: Condition,
    /// Where the `allow:`/`deny:` key was written.
    pub origin: Origin,
}

/// A logical operator over conditions, or one criterion. Nests to any depth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `and:`/`or:`/`not:`/`nor:` over a list of conditions.
    Op {
        /// The operator.
        op: LogicalOp,
        /// The conditions it combines, in the order written.
        children: Vec<Condition>,
        /// Where the operator was written.
        origin: Origin,
    },
    /// A single criterion, like `domain: {is: example.com}`.
    Criterion(Criterion),
}

/// One criterion, like `domain: {is: example.com}`, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Criterion {
    /// What is tested, and how.
    pub kind: CriterionKind,
    /// Where the criterion's name was written.
    pub origin: Origin,
}

/// The criteria of PPL that Gatehouse supports, each with its matcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CriterionKind {
    /// `accept: true`: always matches.
    Accept,
    /// `reject: true`: never matches.
    Reject,
    /// `authenticated_user: true`: anyone signed in.
    AuthenticatedUser,
    /// The part of the email after `@` (lower-case).
    Domain(StringMatcher),
    /// The email address (lower-case).
    Email(StringMatcher),
    /// The IdP's user id (`sub`), compared as written.
    User(StringMatcher),
    /// The person's groups (a list).
    Groups(ListMatcher),
    /// `claim/<name>`: the values of an ID-token or directory claim (a list).
    Claim {
        /// The claim's name, after `claim/`.
        name: String,
        /// How the claim's values are matched.
        matcher: ListMatcher,
    },
    /// The request method (upper-case).
    HttpMethod(StringMatcher),
    /// The request path.
    HttpPath(StringMatcher),
    /// `day_of_week: mon-fri`.
    DayOfWeek(DaysOfWeek),
    /// `time_of_day: {timezone: Europe/Paris, after: "9:00", before: "17:30"}`.
    TimeOfDay(TimeOfDay),
}

impl CriterionKind {
    /// The PPL name, as written (`claim/department`).
    pub fn name(&self) -> String {
        match self {
            CriterionKind::Accept => "accept".into(),
            CriterionKind::Reject => "reject".into(),
            CriterionKind::AuthenticatedUser => "authenticated_user".into(),
            CriterionKind::Domain(_) => "domain".into(),
            CriterionKind::Email(_) => "email".into(),
            CriterionKind::User(_) => "user".into(),
            CriterionKind::Groups(_) => "groups".into(),
            CriterionKind::Claim { name, .. } => format!("claim/{name}"),
            CriterionKind::HttpMethod(_) => "http_method".into(),
            CriterionKind::HttpPath(_) => "http_path".into(),
            CriterionKind::DayOfWeek(_) => "day_of_week".into(),
            CriterionKind::TimeOfDay(_) => "time_of_day".into(),
        }
    }
}

/// A PPL string matcher: every operator given must hold (Pomerium ANDs them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringMatcher {
    /// The operators (a bare value is one `is`).
    pub ops: Vec<StringOp>,
}

/// One operator of a PPL string matcher, applied to a single value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringOp {
    /// `is`: the value equals this.
    Is(String),
    /// `starts_with`: the value starts with this.
    StartsWith(String),
    /// `ends_with`: the value ends with this.
    EndsWith(String),
    /// `contains`: the value contains this.
    Contains(String),
    /// `in`: the value equals one of these.
    In(Vec<String>),
    /// `not_in`: the value equals none of these.
    NotIn(Vec<String>),
}

/// A PPL string list matcher (for list facts: groups, claims): every operator must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListOp {
    /// The list contains this value.
    Has(String),
    /// The list is exactly this one value.
    Is(String),
    /// The list does not contain this value.
    Exclude(String),
}

/// The matcher of a list criterion (groups, claims): every operator given must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListMatcher {
    /// The operators (a bare value is one `has`).
    pub ops: Vec<ListOp>,
}

/// Days as a bit set (bit 0 = Monday … bit 6 = Sunday), in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaysOfWeek {
    /// The days that match: bit 0 = Monday … bit 6 = Sunday.
    pub days: u8,
    /// `timezone` (default UTC): the zone the day is taken in.
    pub timezone: TimeZone,
}

/// A window within the day, in seconds after midnight local time: `after < t < before`
/// (either bound may be absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeOfDay {
    /// `timezone` (required): the zone the time of day is taken in.
    pub timezone: TimeZone,
    /// `after`: the window opens after this (exclusive). `None`: from midnight.
    pub after: Option<u32>,
    /// `before`: the window closes at this (exclusive). `None`: until midnight.
    pub before: Option<u32>,
}

/// An IANA time zone from the tz database compiled into Gatehouse (no files are read),
/// with the name it was written as.
#[derive(Clone)]
pub struct TimeZone {
    /// The name as written (`Europe/Paris`); two zones are equal when their names are.
    pub name: String,
    /// The zone's rules, for converting the request time.
    pub zone: jiff::tz::TimeZone,
}

impl TimeZone {
    /// `UTC`, or a name from the tz database (`Europe/Paris`); `None` if unknown.
    pub fn get(name: &str) -> Option<Self> {
        let zone = if name.eq_ignore_ascii_case("utc") {
            jiff::tz::TimeZone::UTC
        } else {
            jiff::tz::TimeZone::get(name).ok()?
        };
        Some(TimeZone {
            name: name.to_string(),
            zone,
        })
    }

    /// UTC: the zone of `day_of_week` when none is given.
    pub fn utc() -> Self {
        TimeZone {
            name: "UTC".into(),
            zone: jiff::tz::TimeZone::UTC,
        }
    }
}

impl std::fmt::Debug for TimeZone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl PartialEq for TimeZone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for TimeZone {}
