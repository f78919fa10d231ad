//! The `gatehouse` binary: parses arguments, loads the config, calls into the crates and
//! maps errors to exit codes. No logic the library crates own lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod policy_cmd;

// mimalloc measured ~25% faster than glibc malloc for Pingora on this workload
// (docs/pingora.md, "Tuning a passthrough").
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
        #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = policy_cmd::parse_claim)]
        claims: Vec<(String, String)>,
        /// The request method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// When the request arrives (RFC 3339; default: now).
        #[arg(long, value_name = "TIME", value_parser = policy_cmd::parse_time)]
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
        } => serve(config.path, threads, log_format),
        Command::Check { config } => check(config.path),
        Command::Keygen => keygen(),
        Command::BackendLaunch { spec } => {
            exit_code(gatehouse_backends::launch::launch_main(&spec))
        }
        Command::BackendReap { uid } => exit_code(gatehouse_backends::launch::reap_main(&uid)),
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
            let routes = match load(&config.path, 2) {
                Ok((config, _)) => policy_cmd::Routes::new(config),
                Err(code) => return code,
            };
            let req = policy_cmd::Request {
                url,
                user,
                email,
                email_verified: !email_unverified,
                groups,
                claims: policy_cmd::group_claims(claims),
                method,
                at: at.unwrap_or_else(std::time::SystemTime::now),
            };
            policy_cmd::explain(&routes, &req, route.as_deref())
        }
        Command::Policy(PolicyCommand::Test { config, paths }) => policy_test(config, paths),
    }
}

fn policy_test(config: Option<PathBuf>, paths: Vec<PathBuf>) -> ExitCode {
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
        match policy_cmd::test_files(p) {
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
        let tests = match policy_cmd::read_test_file(file) {
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
        let routes = match load(&config_path, 2) {
            Ok((c, _)) => policy_cmd::Routes::new(c),
            Err(code) => return code,
        };
        println!("# {}", file.display());
        let (p, f) = policy_cmd::run_cases(&routes, &tests.cases);
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

/// Loads and prepares the config as `check` does; on problems prints them and returns
/// `fail` as the exit code.
fn load(
    path: &std::path::Path,
    fail: u8,
) -> Result<(gatehouse_config::Config, gatehouse_proxy::Prepared), ExitCode> {
    load_with(path, fail, gatehouse_proxy::prepare)
}

/// [`load`] with the checks against this machine (`check`, `serve`).
fn load_to_serve(
    path: &std::path::Path,
) -> Result<(gatehouse_config::Config, gatehouse_proxy::Prepared), ExitCode> {
    load_with(path, 1, gatehouse_proxy::prepare_to_serve)
}

fn load_with(
    path: &std::path::Path,
    fail: u8,
    prepare: fn(
        &gatehouse_config::Config,
    ) -> Result<gatehouse_proxy::Prepared, gatehouse_config::ConfigErrors>,
) -> Result<(gatehouse_config::Config, gatehouse_proxy::Prepared), ExitCode> {
    let report = |e: gatehouse_config::ConfigErrors| {
        eprintln!("{e}");
        eprintln!(
            "{}: {} problem(s); nothing was started",
            path.display(),
            e.errors.len()
        );
        ExitCode::from(fail)
    };
    let config = gatehouse_config::load(path, &gatehouse_config::ProcessEnv).map_err(report)?;
    let prepared = prepare(&config).map_err(report)?;
    Ok((config, prepared))
}

fn check(path: PathBuf) -> ExitCode {
    let (config, prepared) = match load_to_serve(&path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    for n in &prepared.notes {
        eprintln!("note: {n}");
    }
    println!(
        "{}: OK ({} route(s), identity provider {}, {} warning(s))",
        path.display(),
        prepared.routes(),
        config.idp.issuer,
        config.warnings.len()
    );
    ExitCode::SUCCESS
}

fn serve(path: PathBuf, threads: Option<usize>, format: LogFormat) -> ExitCode {
    let (config, prepared) = match load_to_serve(&path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    init_logging(&config.log_level, format);
    // No core dumps and no ptrace or /proc access to this process by anyone but root (its
    // memory holds every key; backends may share its uid with `isolation: none`).
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(error = %e, "cannot make Gatehouse non-dumpable");
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %path.display(), routes = prepared.routes(), issuer = %config.idp.issuer, "gatehouse starting");
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    for n in &prepared.notes {
        tracing::warn!("{n}");
    }
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    match gatehouse_proxy::run(prepared, gatehouse_proxy::RunOptions { threads }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse could not run: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // Pingora's own log lines come through the `log` bridge. Keep them to warnings by
    // default, and never below info unless asked for by name: at debug, Pingora prints
    // whole upstream requests, identity JWT included.
    let default = format!("{level},pingora=warn,pingora_core=warn,pingora_proxy=warn");
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            let spec = if spec.contains("pingora") {
                spec
            } else {
                format!("{spec},pingora=info,pingora_core=info,pingora_proxy=info")
            };
            EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new(&default))
        }
        _ => EnvFilter::new(default),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("gatehouse: cannot set up logging: {e}");
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn keygen() -> ExitCode {
    use base64::Engine;
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    match gatehouse_auth::jwt::generate_signing_key_b64() {
        Ok(key) => {
            println!(
                "cookie_secret: {}",
                base64::engine::general_purpose::STANDARD.encode(secret)
            );
            println!("signing_key: {key}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatehouse keygen: {e}");
            ExitCode::from(2)
        }
    }
}
