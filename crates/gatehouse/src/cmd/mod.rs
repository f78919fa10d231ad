//! One module per subcommand, each with a `run` (or one per sub-subcommand) that returns
//! the exit code; and the config loading they share.

pub mod backend;
pub mod check;
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
fn load(path: &Path, fail: u8) -> Result<(Config, Prepared), ExitCode> {
    load_with(path, fail, gatehouse_proxy::prepare)
}

/// [`load`] with the checks against this machine (`check`).
fn load_to_check(path: &Path) -> Result<(Config, Prepared), ExitCode> {
    load_with(path, 1, gatehouse_proxy::prepare_to_check)
}

/// [`load_to_check`], and the state store opened (`serve`).
fn load_to_serve(path: &Path) -> Result<(Config, Prepared), ExitCode> {
    load_with(path, 1, gatehouse_proxy::prepare_to_serve)
}

fn load_with(
    path: &Path,
    fail: u8,
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
    let config = gatehouse_config::load(path, &gatehouse_config::ProcessEnv).map_err(report)?;
    let prepared = prepare(&config).map_err(report)?;
    Ok((config, prepared))
}
