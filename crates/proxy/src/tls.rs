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
    /// When each configured certificate expires, for the metrics.
    expiries: ArcSwap<Vec<Expiry>>,
    /// A digest of the certificate and key files' contents (0: made in memory).
    contents: AtomicU64,
}

impl SniResolver {
    fn new(keys: Vec<Arc<CertifiedKey>>, expiries: Vec<Expiry>, contents: u64) -> Self {
        SniResolver {
            keys: ArcSwap::from_pointee(keys),
            expiries: ArcSwap::from_pointee(expiries),
            contents: AtomicU64::new(contents),
        }
    }

    /// When each configured certificate (the first of each file) expires.
    pub fn expiries(&self) -> Arc<Vec<Expiry>> {
        self.expiries.load_full()
    }

    /// Takes `newer`'s certificates if their files' contents differ from the ones serving;
    /// `true` when it did. Handshakes already done keep what they got.
    pub fn replace(&self, newer: SniResolver) -> bool {
        let contents = newer.contents.load(Ordering::Relaxed);
        if contents == self.contents.load(Ordering::Relaxed) {
            return false;
        }
        self.keys.store(newer.keys.load_full());
        self.expiries.store(newer.expiries.load_full());
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
    let mut expiries = Vec::new();
    let mut errors = Vec::new();
    let mut digest = std::collections::hash_map::DefaultHasher::new();
    for pair in pairs {
        match load_pair(pair, &provider) {
            Ok(ck) => {
                if let Some(e) = ck.cert.first().and_then(|c| expiry(pair, c)) {
                    expiries.push(e);
                }
                keys.push(Arc::new(ck));
            }
            Err(msg) => errors.push(ConfigError::new(pair.origin.clone(), msg)),
        }
        for f in [&pair.cert_file, &pair.key_file] {
            std::fs::read(f).unwrap_or_default().hash(&mut digest);
        }
    }
    if errors.is_empty() {
        // Never 0, which stands for a certificate made in memory.
        Ok(SniResolver::new(keys, expiries, digest.finish().max(1)))
    } else {
        Err(errors)
    }
}

/// When a served certificate expires (`gatehouse_certificate_not_after_timestamp_seconds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// The certificate file, as configured.
    pub file: String,
    /// The first DNS name it is for (or its subject's common name, or `-`).
    pub name: String,
    /// Its `notAfter`, in Unix seconds.
    pub not_after: i64,
}

/// `cert`'s expiry; `None` if it does not parse (load_pair has checked that it does).
fn expiry(pair: &CertificatePair, cert: &CertificateDer<'_>) -> Option<Expiry> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let dns = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
        });
    let cn = || {
        parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
    };
    Some(Expiry {
        file: pair.cert_file.display().to_string(),
        name: dns.or_else(cn).unwrap_or_else(|| "-".to_string()),
        not_after: parsed.validity().not_after.timestamp(),
    })
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
    Ok(SniResolver::new(vec![Arc::new(ck)], Vec::new(), 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate for `name` valid until `not_after` (Unix seconds), written as PEM files.
    fn pair(dir: &std::path::Path, name: &str, not_after: i64) -> CertificatePair {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params.not_after =
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_secs(not_after as u64);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let cert_file = dir.join(format!("{name}.crt"));
        let key_file = dir.join(format!("{name}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        CertificatePair {
            cert_file,
            key_file,
            origin: gatehouse_config::Origin::Default,
        }
    }

    #[test]
    fn each_certificate_reports_its_expiry_and_a_replacement_brings_its_own() {
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-tls-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let a = pair(&dir, "a.example", 2_000_000_000);
        let b = pair(&dir, "b.example", 2_100_000_000);
        let serving = load_resolver(&[a.clone(), b]).expect("loads");
        let got: Vec<(String, i64)> = serving
            .expiries()
            .iter()
            .map(|e| (e.name.clone(), e.not_after))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a.example".to_string(), 2_000_000_000),
                ("b.example".to_string(), 2_100_000_000)
            ]
        );
        assert_eq!(
            serving.expiries()[0].file,
            a.cert_file.display().to_string()
        );

        let c = pair(&dir, "c.example", 2_200_000_000);
        assert!(serving.replace(load_resolver(&[c]).expect("loads")));
        assert_eq!(serving.expiries().len(), 1);
        assert_eq!(serving.expiries()[0].not_after, 2_200_000_000);
        assert_eq!(serving.expiries()[0].name, "c.example");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
