//! The `gatehouse` binary: parses arguments, loads the config, calls into the crates and
//! maps errors to exit codes. No logic the library crates own lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// mimalloc measured ~25% faster than glibc malloc for Pingora on this workload
// (shared/notes/pingora.md, "Tuning a passthrough").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gatehouse: a zero-trust reverse proxy. People sign in with OpenID Connect (Google or any
/// issuer), every request is checked against a policy, and each upstream gets the person's
/// identity in Pomerium-compatible headers and a signed JWT.
#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    after_help = "Exit codes: 0 ok; 1 the configuration is invalid; 2 Gatehouse could not run."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy.
    Serve {
        /// The YAML config file (Pomerium-compatible keys).
        #[arg(
            short,
            long,
            env = "GATEHOUSE_CONFIG",
            default_value = "gatehouse.yaml"
        )]
        config: PathBuf,
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
        /// The YAML config file.
        #[arg(
            short,
            long,
            env = "GATEHOUSE_CONFIG",
            default_value = "gatehouse.yaml"
        )]
        config: PathBuf,
    },
    /// Print a new random `cookie_secret` and `signing_key`, ready to paste into the config
    /// or to export as COOKIE_SECRET / SIGNING_KEY.
    Keygen,
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
        } => serve(config, threads, log_format),
        Command::Check { config } => check(config),
        Command::Keygen => keygen(),
    }
}

fn load(
    path: &std::path::Path,
) -> Result<(gatehouse_config::Config, gatehouse_proxy::Prepared), ExitCode> {
    let report = |e: gatehouse_config::ConfigErrors| {
        eprintln!("{e}");
        eprintln!(
            "{}: {} problem(s); nothing was started",
            path.display(),
            e.errors.len()
        );
        ExitCode::from(1)
    };
    let config = gatehouse_config::load(path, &gatehouse_config::ProcessEnv).map_err(report)?;
    let prepared = gatehouse_proxy::prepare(&config).map_err(report)?;
    Ok((config, prepared))
}

fn check(path: PathBuf) -> ExitCode {
    let (config, prepared) = match load(&path) {
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
    let (config, prepared) = match load(&path) {
        Ok(x) => x,
        Err(code) => return code,
    };
    init_logging(&config.log_level, format);
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
