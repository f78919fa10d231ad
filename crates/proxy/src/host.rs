//! Checks of the config against the machine it is served on (issue 9), run by `check` and
//! `serve` (not by the offline policy tools): the backend pools' isolation and confinement
//! ([`gatehouse_backends::preflight`]), and that no backend can read Gatehouse's secrets
//! from its files.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use gatehouse_backends::PoolSettings;
use gatehouse_backends::firewall::Firewall;
use gatehouse_backends::preflight::{self, Host};
use gatehouse_config::{Config, ConfigError};

/// What the host checks decided for each pool, and what the operator must hear.
pub(crate) struct HostPlan {
    pub pools: Vec<PoolSettings>,
    pub warnings: Vec<String>,
}

/// Checks `config`'s pools and secret files on this machine, and builds each pool's
/// settings (launcher, Landlock requirement, firewall). Problems are pushed on `errors`.
/// Without pools there is nothing to check, and the machine is not probed (`nft`).
pub(crate) fn plan(config: &Config, errors: &mut Vec<ConfigError>) -> HostPlan {
    let mut warnings = Vec::new();
    if config.backends.is_empty() {
        return HostPlan {
            pools: Vec::new(),
            warnings,
        };
    }
    let host = &Host::current();
    secret_files(config, errors);
    let findings = preflight::check(&config.backends, host);
    errors.extend(
        findings
            .errors
            .into_iter()
            .map(|(origin, message)| ConfigError::new(origin, message)),
    );
    warnings.extend(
        findings
            .warnings
            .into_iter()
            .map(|(origin, message)| format!("{origin}: {message}")),
    );
    let pools = config
        .backends
        .iter()
        .map(|pool| {
            let mut settings = PoolSettings::from_pool(pool.clone());
            if pool.relay.is_some() {
                settings.relay_url = Some(format!("http://{}", config.relay_address));
            }
            if let (Some(range), 0, Ok(())) = (&pool.uids, host.euid, &host.nftables) {
                match Firewall::for_pool(pool, range) {
                    Ok(fw) if pool.relay.is_some() => {
                        settings.firewall = Some(Arc::new(fw.with_relay(config.relay_address)));
                    }
                    Ok(fw) => settings.firewall = Some(Arc::new(fw)),
                    Err(e) => errors.push(ConfigError::new(pool.origin.clone(), e)),
                }
            }
            settings
        })
        .collect();
    HostPlan { pools, warnings }
}

/// With backends on the host, a file holding a secret of Gatehouse's must be readable by
/// Gatehouse alone: the config when it holds a secret literally (not `${VAR}`), and every
/// certificate key.
fn secret_files(config: &Config, errors: &mut Vec<ConfigError>) {
    if let Some((key, origin)) = config.literal_secrets.first() {
        let keys: Vec<&str> = config
            .literal_secrets
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        if let Some(mode) = open_mode(&config.source) {
            errors.push(ConfigError::new(
                origin.clone(),
                format!(
                    "{key}: this file holds {} literally and is readable by group or others \
                     (mode {mode:04o}), and per-person backends run on this host: `chmod 600 {}`, \
                     or take the secret from the environment (`{key}: ${{{}}}`)",
                    keys.join(", "),
                    config.source.display(),
                    key.to_ascii_uppercase()
                ),
            ));
        }
    }
    for (key, path, origin) in &config.secret_files {
        if let Some(mode) = open_mode(path) {
            errors.push(ConfigError::new(
                origin.clone(),
                format!(
                    "{key}: {} is readable by group or others (mode {mode:04o}), and per-person \
                     backends run on this host, so a person's agent could read it: `chmod 600 {}` \
                     (as Gatehouse's user; for a Docker secret, the file on the host)",
                    path.display(),
                    path.display()
                ),
            ));
        }
    }
    for pair in &config.certificates {
        if let Some(mode) = open_mode(&pair.key_file) {
            errors.push(ConfigError::new(
                pair.origin.clone(),
                format!(
                    "the certificate key {} is readable by group or others (mode {mode:04o}), and \
                     per-person backends run on this host: `chmod 600 {}`",
                    pair.key_file.display(),
                    pair.key_file.display()
                ),
            ));
        }
    }
}

/// The file's mode if group or others may read it.
fn open_mode(path: &Path) -> Option<u32> {
    let mode = std::fs::metadata(path).ok()?.mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}
