//! `gatehouse check`: load the config as `serve` would, print a summary, start nothing.

use std::path::Path;
use std::process::ExitCode;

/// Exit 0 with a summary (and the warnings) when the config is valid, 1 when not.
pub fn run(path: &Path) -> ExitCode {
    let (config, prepared) = match super::load_to_check(path) {
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
