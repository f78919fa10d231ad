//! The `gatehouse` binary: parses arguments, loads the config, calls into the crates and
//! maps errors to exit codes. No logic the library crates own lives here.
//!
//! This file holds the command line (clap types) and the dispatch; each subcommand is a
//! module of [`cmd`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

// mimalloc measured ~25% faster than glibc malloc for Pingora on this workload
// (docs/pingora.md, "Tuning a passthrough").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gatehouse: a zero-trust reverse proxy. People sign in with OpenID Connect (Google or any
/// issuer), every request is checked against a policy, and each upstream gets the person's
/// identity in Pomerium-compatible headers and a signed JWT.
#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    after_help = "Exit codes: 0 ok; 1 the configuration is invalid (check, serve), the request is \
                  denied (policy explain) or a policy test failed (policy test); 2 Gatehouse \
                  could not run (for policy: a bad config, test file or argument)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--config`, shared by the commands that load a config file.
#[derive(clap::Args, Debug)]
struct ConfigFile {
    /// The YAML config file (Pomerium-compatible keys).
    #[arg(
        short = 'c',
        long = "config",
        value_name = "CONFIG",
        env = "GATEHOUSE_CONFIG",
        default_value = "gatehouse.yaml"
    )]
    path: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy.
    Serve {
        #[command(flatten)]
        config: ConfigFile,
        /// Worker threads (default: the number of CPUs).
        #[arg(long)]
        threads: Option<usize>,
        /// Log format: `plain` or `json`.
        #[arg(long, env = "GATEHOUSE_LOG_FORMAT", default_value = "plain")]
        log_format: LogFormat,
    },
    /// Check a config file (syntax, keys, secrets, certificates, URLs) and exit:
    /// 0 and a summary when it is valid, 1 and `file:line:col: message` lines when not.
    Check {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Try policies offline: explain one request's decision, or run policy test files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print a new random `cookie_secret` and `signing_key`, ready to paste into the config
    /// or to export as COOKIE_SECRET / SIGNING_KEY.
    Keygen,
    /// Ask the running Gatehouse whether it is alive, ready or started (through
    /// `health_check_addr`): exit 0 when it is, 1 when not (with the reasons), 2 when the
    /// config has no `health_check_addr`. For container health checks.
    Health {
        #[command(flatten)]
        config: ConfigFile,
        /// Which check: alive (`/healthz`), ready (`/readyz`) or started (`/startupz`).
        #[arg(long, value_enum, default_value = "alive")]
        check: cmd::health::Check,
    },
    /// Sign a person out everywhere, as an administrator: every session and access token of
    /// this email address, begun up to now, is refused by the running `gatehouse serve`
    /// (reached through the control socket in its `state_dir`), and their open streams end.
    #[command(
        name = "sign-out",
        after_help = "Exit codes: 0 done; 2 the running Gatehouse \
                            could not be reached or could not record it."
    )]
    SignOut {
        #[command(flatten)]
        config: ConfigFile,
        /// The person's email address.
        email: String,
    },
    /// Internal: confine this process as one backend (session, uid, limits, Landlock) and
    /// exec it. Run by `serve` for each backend; not for people.
    #[command(name = "backend-launch", hide = true)]
    BackendLaunch { spec: String },
    /// Internal: end every process of one backend uid. Run by `serve`; not for people.
    #[command(name = "backend-reap", hide = true)]
    BackendReap { uid: String },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Decide one request offline and show why: the route it matches, the decision, the
    /// reason, and each rule and criterion, matched or not. The config is loaded exactly as
    /// `check` loads it; nothing listens and the identity provider is not contacted.
    #[command(after_help = "Exit codes: 0 the request is allowed; 1 it is denied; \
                            2 the config or the arguments are invalid.")]
    Explain {
        #[command(flatten)]
        config: ConfigFile,
        /// Use this route instead of the one the URL matches: its 0-based index, or its
        /// `from` URL (the first route with that `from`).
        #[arg(long, value_name = "FROM_URL_OR_INDEX")]
        route: Option<String>,
        /// The person's email address.
        #[arg(long, default_value = "")]
        email: String,
        /// The identity provider has not verified the address.
        #[arg(long)]
        email_unverified: bool,
        /// The person's groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The identity provider's user id (`sub`).
        #[arg(long, default_value = "")]
        user: String,
        /// A claim, `name=value`; repeat for more values or claims.
        #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = cmd::policy::parse_claim)]
        claims: Vec<(String, String)>,
        /// The request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// When the request arrives (RFC 3339; default: now).
        #[arg(long, value_name = "TIME", value_parser = gatehouse_config::policy_tests::parse_time)]
        at: Option<std::time::SystemTime>,
        /// The URL requested (`https://host[:port]/path`).
        url: String,
    },
    /// Run policy test files: each case is a request (url, email, email_verified, groups,
    /// user, claims, method, at) and the expected `expect: allow|deny` (and optionally
    /// `reason: CODE`). Prints `ok   NAME` or `FAIL NAME: ...` per case and a summary.
    #[command(after_help = "Exit codes: 0 every case passed; 1 a case failed; \
                            2 a test file or the config is invalid.")]
    Test {
        /// The config to test against, unless a test file names one with `config:`.
        #[arg(short, long, env = "GATEHOUSE_CONFIG")]
        config: Option<PathBuf>,
        /// Test files, or directories of `*.test.yaml` files (default: `policies/` next to
        /// the config, else `policies/` here).
        paths: Vec<PathBuf>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Plain,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            threads,
            log_format,
        } => cmd::serve::run(&config.path, threads, log_format),
        Command::Check { config } => cmd::check::run(&config.path),
        Command::Keygen => cmd::keygen::run(),
        Command::SignOut { config, email } => cmd::signout::run(&config.path, &email),
        Command::Health { config, check } => cmd::health::run(&config.path, check),
        Command::BackendLaunch { spec } => cmd::backend::launch(&spec),
        Command::BackendReap { uid } => cmd::backend::reap(&uid),
        Command::Policy(PolicyCommand::Explain {
            config,
            route,
            email,
            email_unverified,
            groups,
            user,
            claims,
            method,
            at,
            url,
        }) => {
            let req = gatehouse_config::policy_tests::Request {
                url,
                user,
                email,
                email_verified: !email_unverified,
                groups,
                claims: cmd::policy::group_claims(claims),
                method,
                at,
            };
            cmd::policy::explain(&config.path, &req, route.as_deref())
        }
        Command::Policy(PolicyCommand::Test { config, paths }) => cmd::policy::test(config, paths),
    }
}
