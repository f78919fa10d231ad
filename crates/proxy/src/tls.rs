//! TLS for the main listener: certificates from the config (several hostnames, chosen by
//! SNI), or a self-signed one made at start when none is configured.
//!
//! A config reload (file change, SIGHUP) loads the certificate files again and, when their
//! contents changed, swaps the resolver's certificates at once ([`SniResolver::replace`]):
//! new handshakes get the new ones, connections already open keep theirs.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    CertificateDer, ClientHello, CryptoProvider, PrivateKeyDer, ResolvesServerCert, ServerName,
};

use gatehouse_config::{CertificatePair, ConfigError};

/// Picks the first configured certificate valid for the client's SNI name, or the first
/// certificate when there is no SNI or none matches.
#[derive(Debug)]
pub struct SniResolver {
    keys: ArcSwap<Vec<Arc<CertifiedKey>>>,
    /// A digest of the certificate and key files' contents (0: made in memory).
    contents: AtomicU64,
}

impl SniResolver {
    fn new(keys: Vec<Arc<CertifiedKey>>, contents: u64) -> Self {
        SniResolver {
            keys: ArcSwap::from_pointee(keys),
            contents: AtomicU64::new(contents),
        }
    }

    /// Takes `newer`'s certificates if their files' contents differ from the ones serving;
    /// `true` when it did. Handshakes already done keep what they got.
    pub fn replace(&self, newer: SniResolver) -> bool {
        let contents = newer.contents.load(Ordering::Relaxed);
        if contents == self.contents.load(Ordering::Relaxed) {
            return false;
        }
        self.keys.store(newer.keys.load_full());
        self.contents.store(contents, Ordering::Relaxed);
        true
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let keys = self.keys.load();
        if let Some(name) = hello.server_name()
            && let Ok(sni) = ServerName::try_from(name)
        {
            for ck in keys.iter() {
                let valid = ck
                    .cert
                    .first()
                    .and_then(|c| webpki::EndEntityCert::try_from(c).ok())
                    .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&sni).is_ok());
                if valid {
                    return Some(ck.clone());
                }
            }
        }
        keys.first().cloned()
    }
}

/// The process's rustls crypto provider (ring, as Pingora installs it).
fn provider() -> Result<Arc<CryptoProvider>, String> {
    pingora::tls::install_default_crypto_provider();
    CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| "no rustls crypto provider is installed".to_string())
}

/// Loads every certificate pair, checking that each parses and that its key matches.
/// Returns every problem found, each at the config position of the pair.
pub fn load_resolver(pairs: &[CertificatePair]) -> Result<SniResolver, Vec<ConfigError>> {
    let provider =
        provider().map_err(|e| vec![ConfigError::new(gatehouse_config::Origin::Default, e)])?;
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    for pair in pairs {
        match load_pair(pair, &provider) {
            Ok(ck) => keys.push(Arc::new(ck)),
            Err(msg) => errors.push(ConfigError::new(pair.origin.clone(), msg)),
        }
        for f in [&pair.cert_file, &pair.key_file] {
            std::fs::read(f).unwrap_or_default().hash(&mut digest);
        }
    }
    if errors.is_empty() {
        // Never 0, which stands for a certificate made in memory.
        Ok(SniResolver::new(keys, digest.finish().max(1)))
    } else {
        Err(errors)
    }
}

fn load_pair(pair: &CertificatePair, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let cert_path = pair.cert_file.display().to_string();
    let key_path = pair.key_file.display().to_string();
    let loaded = pingora::tls::load_certs_and_key_files(&cert_path, &key_path).map_err(|e| {
        format!(
            "cannot read certificate {cert_path} or key {key_path}: {}",
            e.root_cause()
        )
    })?;
    let Some((certs, key)) = loaded else {
        return Err(format!(
            "{cert_path} must hold a PEM certificate (BEGIN CERTIFICATE) and {key_path} a PEM private key (BEGIN PRIVATE KEY / RSA PRIVATE KEY / EC PRIVATE KEY)"
        ));
    };
    let certs: Vec<CertificateDer<'static>> = certs.into_iter().map(|c| c.into_owned()).collect();
    for (i, c) in certs.iter().enumerate() {
        if webpki::EndEntityCert::try_from(c).is_err() {
            return Err(format!(
                "certificate #{} in {cert_path} does not parse as X.509",
                i + 1
            ));
        }
    }
    let key: PrivateKeyDer<'static> = key.clone_key();
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        format!("the key in {key_path} does not match the certificate in {cert_path} ({e})")
    })
}

/// A self-signed certificate for `names`, made now (kept in memory only).
pub fn self_signed(names: Vec<String>) -> anyhow::Result<SniResolver> {
    let provider = provider().map_err(anyhow::Error::msg)?;
    let generated = rcgen::generate_simple_self_signed(names)?;
    let cert = CertificateDer::from(generated.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
    let ck = CertifiedKey::from_der(vec![cert], key, &provider)?;
    Ok(SniResolver::new(vec![Arc::new(ck)], 0))
}
