//! The identity JWT sent upstream as `X-Pomerium-Jwt-Assertion` (ES256, with `kid`), and
//! the JWKS that lets upstreams verify it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Why the signing key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// Not an EC P-256 private key in PEM (PKCS#8 or SEC1).
    #[error(
        "signing_key is not an EC P-256 private key in PEM (PKCS#8 `BEGIN PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY`); make one with `gatehouse keygen`"
    )]
    NotP256Pem,
    /// The key parsed but could not be turned into a signing key or JWK.
    #[error("signing key could not be encoded: {0}")]
    Encode(String),
}

/// Claims of the identity JWT (Pomerium's names).
#[derive(Debug, Serialize)]
pub struct IdentityClaims<'a> {
    /// Issuer: the route host the JWT is sent for.
    pub iss: &'a str,
    /// Audience: the route host the JWT is sent for.
    pub aud: &'a str,
    /// The IdP's subject for the person.
    pub sub: &'a str,
    /// The person's email address, as the identity provider gave it.
    pub email: &'a str,
    /// Whether the identity provider verified `email`. Upstreams must not take an
    /// unverified address as the person's (Gatehouse then sends no
    /// `X-Pomerium-Claim-Email` header).
    pub email_verified: bool,
    /// Pomerium's `user` claim: the IdP subject again.
    pub user: &'a str,
    /// The person's groups ([`crate::VerifiedIdentity::groups`]).
    pub groups: &'a [String],
    /// The person's display name; left out when the IdP gave none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expiry (Unix seconds); [`crate::Auth::identity_jwt`] caps it at
    /// [`crate::IDENTITY_JWT_TTL_SECS`] after `iat` and at the session's end.
    pub exp: u64,
    /// Random token id.
    pub jti: &'a str,
}

/// Signs identity JWTs with one ES256 key and serves its public half as JWKS.
pub struct IdentitySigner {
    key: EncodingKey,
    kid: String,
    jwks: String,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl IdentitySigner {
    /// From a PEM private key (PKCS#8 or SEC1).
    pub fn from_pem(pem: &str) -> Result<Self, SigningKeyError> {
        let secret = p256::SecretKey::from_pkcs8_pem(pem)
            .or_else(|_| p256::SecretKey::from_sec1_pem(pem))
            .map_err(|_| SigningKeyError::NotP256Pem)?;
        Self::from_secret(&secret)
    }

    /// A fresh random key (kept for the life of the process).
    pub fn generate() -> Result<Self, SigningKeyError> {
        Self::from_secret(&p256::SecretKey::random(&mut rand::rngs::OsRng))
    }

    fn from_secret(secret: &p256::SecretKey) -> Result<Self, SigningKeyError> {
        let der = secret
            .to_pkcs8_der()
            .map_err(|e| SigningKeyError::Encode(e.to_string()))?;
        let key = EncodingKey::from_ec_der(der.as_bytes());
        let point = secret.public_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(SigningKeyError::Encode(
                "public key has no coordinates".into(),
            ));
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        // RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order.
        let thumb = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(Sha256::digest(thumb.as_bytes()));
        let jwks = serde_json::json!({
            "keys": [{"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"}]
        })
        .to_string();
        Ok(IdentitySigner { key, kid, jwks })
    }

    /// The key id: the public key's RFC 7638 thumbprint, in each JWT header and the JWKS.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS document (`{"keys":[…]}`).
    pub fn jwks_json(&self) -> &str {
        &self.jwks
    }

    /// Signs `claims` as an ES256 JWT with this key's `kid`.
    pub fn sign(&self, claims: &IdentityClaims<'_>) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
    }
}

/// Makes a new signing key as base64 of its PKCS#8 PEM (the `signing_key` config form).
pub fn generate_signing_key_b64() -> Result<String, SigningKeyError> {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = secret
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| SigningKeyError::Encode(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn signed_jwt_verifies_with_published_key_and_has_kid() {
        let s = IdentitySigner::generate().unwrap();
        let groups = vec!["a".to_string()];
        let claims = IdentityClaims {
            email_verified: true,
            iss: "h",
            aud: "h",
            sub: "alice",
            email: "a@x",
            user: "alice",
            groups: &groups,
            name: None,
            iat: 1,
            exp: 4_000_000_000,
            jti: "j",
        };
        let token = s.sign(&claims).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(s.kid()));
        let jwks: serde_json::Value = serde_json::from_str(s.jwks_json()).unwrap();
        let k = &jwks["keys"][0];
        let dk =
            DecodingKey::from_ec_components(k["x"].as_str().unwrap(), k["y"].as_str().unwrap())
                .unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["h"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &dk, &v).unwrap();
        assert_eq!(data.claims["email"], "a@x");
        let other = IdentitySigner::generate().unwrap();
        let jwks2: serde_json::Value = serde_json::from_str(other.jwks_json()).unwrap();
        let k2 = &jwks2["keys"][0];
        let dk2 =
            DecodingKey::from_ec_components(k2["x"].as_str().unwrap(), k2["y"].as_str().unwrap())
                .unwrap();
        assert!(
            jsonwebtoken::decode::<serde_json::Value>(&token, &dk2, &v).is_err(),
            "another key must not verify it"
        );
    }

    #[test]
    fn pem_round_trip_and_garbage_refused() {
        use base64::engine::general_purpose::STANDARD;
        let b64 = generate_signing_key_b64().unwrap();
        let pem = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        let a = IdentitySigner::from_pem(&pem).unwrap();
        let b = IdentitySigner::from_pem(&pem).unwrap();
        assert_eq!(a.kid(), b.kid(), "same key, same kid");
        // The same armour around a body that is not a key.
        let lines: Vec<&str> = pem.lines().collect();
        let garbage = format!("{}\nAAAA\n{}\n", lines[0], lines[lines.len() - 1]);
        assert!(matches!(
            IdentitySigner::from_pem(&garbage),
            Err(SigningKeyError::NotP256Pem)
        ));
    }
}
