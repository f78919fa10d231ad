//! One module per subcommand, each with a `run` (or one per sub-subcommand) that returns
//! the exit code; and the config loading they share.

pub mod backend;
pub mod check;
pub mod health;
pub mod keygen;
pub mod policy;
pub mod serve;
pub mod signout;

use std::path::Path;
use std::process::ExitCode;

use gatehouse_config::{Config, ConfigErrors};
use gatehouse_proxy::Prepared;

/// Loads and prepares the config as `check` does; on problems prints them and returns
/// `fail` as the exit code.
/// Secrets may be missing: the policy tools decide offline (`gatehouse_config::load_offline`).
fn load(path: &Path, fail: u8) -> Result<(Config, Prepared), ExitCode> {
    load_with(path, fail, true, gatehouse_proxy::prepare)
}

/// [`load`] with the checks against this machine (`check`).
fn load_to_check(path: &Path) -> Result<(Config, Prepared), ExitCode> {
    load_with(path, 1, false, gatehouse_proxy::prepare_to_check)
}

/// [`load_to_check`], and the state store opened (`serve`).
fn load_to_serve(path: &Path) -> Result<(Config, Prepared), ExitCode> {
    load_with(path, 1, false, gatehouse_proxy::prepare_to_serve)
}

fn load_with(
    path: &Path,
    fail: u8,
    offline: bool,
    prepare: fn(&Config) -> Result<Prepared, ConfigErrors>,
) -> Result<(Config, Prepared), ExitCode> {
    let report = |e: ConfigErrors| {
        eprintln!("{e}");
        eprintln!(
            "{}: {} problem(s); nothing was started",
            path.display(),
            e.errors.len()
        );
        ExitCode::from(fail)
    };
    let loaded = if offline {
        gatehouse_config::load_offline(path, &gatehouse_config::ProcessEnv)
    } else {
        gatehouse_config::load(path, &gatehouse_config::ProcessEnv)
    };
    let config = loaded.map_err(report)?;
    let prepared = prepare(&config).map_err(report)?;
    Ok((config, prepared))
}
