//! `gatehouse serve`: load the config, set up logging, run the proxy.

use std::path::Path;
use std::process::ExitCode;

use crate::LogFormat;

/// Exit 1 when the config is invalid, 2 when the proxy could not run.
pub fn run(path: &Path, threads: Option<usize>, format: LogFormat) -> ExitCode {
    let (config, prepared) = match super::load_to_serve(path) {
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
    use tracing_subscriber::prelude::*;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry()
        .with(QuietHandshakes)
        .with(filter);
    let result = match format {
        LogFormat::Plain => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).try_init(),
    };
    if let Err(e) = result {
        eprintln!("gatehouse: cannot set up logging: {e}");
    }
}

/// Pingora logs every failed TLS handshake at ERROR: a port probe, a load balancer's TCP
/// check, a browser that does not trust the certificate yet. Those are not an operator's
/// problem, so they go to DEBUG (target `gatehouse::tls`); Pingora's other listener errors
/// (a failed `accept`) stay errors.
struct QuietHandshakes;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for QuietHandshakes {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        // Pingora logs through the `log` bridge: its events carry the module in `log.target`.
        if event.metadata().target() != "log" {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        if message.target == "pingora_core::services::listening"
            && message.text.starts_with("Downstream handshake error")
        {
            tracing::debug!(target: "gatehouse::tls", "{}", message.text);
            return false;
        }
        true
    }
}

/// A bridged `log` event's message and target, as text.
#[derive(Default)]
struct Message {
    text: String,
    target: String,
}

impl tracing::field::Visit for Message {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "log.target" {
            self.target = value.to_string();
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.text = format!("{value:?}"),
            "log.target" => self.target = format!("{value:?}"),
            _ => {}
        }
    }
}
