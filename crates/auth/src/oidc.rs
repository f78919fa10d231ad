//! OpenID Connect sign-in: discovery, authorization code flow with PKCE S256, `state` and
//! `nonce`, and the full ID-token check (OIDC Core 3.1.3.7): signature against the issuer's
//! JWKS (refreshed once when a token names an unknown `kid`), `iss`, `aud`, `azp` when
//! present, `exp`/`iat` with a small leeway, and `nonce`.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::reqwest;
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, IdToken, IdTokenVerifier, IssuerUrl, JsonWebKeySet, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, SignatureVerificationError,
    TokenResponse,
};
use serde::{Deserialize, Serialize};

use gatehouse_config::IdpConfig;

/// How long a discovery document is trusted before it is fetched again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// A token naming an unknown `kid` may trigger a JWKS fetch at most this often.
const JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed discovery, answer from that failure for this long instead of queueing
/// every sign-in behind another attempt with its own timeouts.
const DISCOVERY_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Clock leeway for `exp` and `iat`.
const LEEWAY_SECS: i64 = 60;

/// Non-standard claims Gatehouse reads from the ID token.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraClaims {
    /// The `groups` claim, for IdPs that send one (Google does not: see [`crate::directory`]).
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// Google's `hd`: the Workspace domain of the account (absent for consumer accounts).
    #[serde(default)]
    pub hd: Option<String>,
}
impl AdditionalClaims for ExtraClaims {}

/// The client type `from_provider_metadata` gives (auth URL set, token/userinfo maybe).
type Client = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

type GatehouseIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

type IdClaims = openidconnect::IdTokenClaims<ExtraClaims, CoreGenderClaim>;

/// Why a sign-in failed. Messages never contain codes, tokens or secrets.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The issuer is not a URL, or its discovery document or JWKS could not be fetched.
    #[error("could not fetch the identity provider's discovery document from {issuer}: {reason}")]
    Discovery {
        /// The configured issuer.
        issuer: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// The `redirect_uri` given is not a URL.
    #[error("redirect_uri {0:?} is not a valid URL")]
    BadRedirectUri(String),
    /// The token endpoint refused the code; holds its OAuth `error` and description.
    #[error("the identity provider refused the authorization code: {0}")]
    CodeRefused(String),
    /// The token endpoint is not in the discovery document, could not be reached, or its
    /// answer did not parse (the answer itself is never included: it may hold tokens).
    #[error("could not reach the identity provider's token endpoint: {0}")]
    TokenEndpoint(String),
    /// The token response has no `id_token`.
    #[error("the token response has no ID token (is the `openid` scope requested?)")]
    NoIdToken,
    /// The `id_token` does not parse as a JWT.
    #[error("the ID token is not a well-formed JWT")]
    MalformedIdToken,
    /// The ID token failed a check: signature, `iss`, `aud`, `exp`, `iat` or `nonce`.
    #[error("ID token refused: {0}")]
    IdTokenRefused(String),
    /// The ID token's `azp` names another client.
    #[error("ID token refused: azp {found:?} is not this client ({expected:?})")]
    AzpMismatch {
        /// This client's id.
        expected: String,
        /// The token's `azp`.
        found: String,
    },
    /// The ID token has no `email` claim.
    #[error("the identity provider returned no email address; request the `email` scope")]
    NoEmail,
}

/// What a verified ID token says about the person.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The issuer that signed the ID token (`iss`).
    pub iss: String,
    /// The IdP's subject for the person (`sub`).
    pub sub: String,
    /// The `email` claim (a token without one is refused).
    pub email: String,
    /// The `email_verified` claim; `false` when absent.
    pub email_verified: bool,
    /// The `name` claim, if any.
    pub name: Option<String>,
    /// The `groups` claim; empty when absent.
    pub groups: Vec<String>,
    /// Google's `hd` claim (the Workspace domain), if any.
    pub hd: Option<String>,
}

struct Provider {
    metadata: CoreProviderMetadata,
    fetched_at: Instant,
    jwks_fetched_at: Instant,
}

/// An OIDC relying party for one issuer and client.
pub struct Oidc {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: ClientSecret,
    scopes: Vec<Scope>,
    http: reqwest::Client,
    provider: RwLock<Option<Arc<Provider>>>,
    fetch_lock: tokio::sync::Mutex<()>,
    last_failure: std::sync::Mutex<Option<(Instant, String)>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id.as_str())
            .finish_non_exhaustive()
    }
}

impl Oidc {
    /// A relying party for the issuer and client in `cfg`. Nothing is fetched here: the
    /// discovery document is fetched at first use. Its HTTP client never follows redirects.
    pub fn new(cfg: &IdpConfig) -> Result<Self, OidcError> {
        let issuer = IssuerUrl::new(cfg.issuer.as_str().trim_end_matches('/').to_string())
            .map_err(|e| OidcError::Discovery {
                issuer: cfg.issuer.to_string(),
                reason: e.to_string(),
            })?;
        // No redirects: following them from an IdP response is an SSRF risk (openidconnect docs).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| OidcError::Discovery {
                issuer: cfg.issuer.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Oidc {
            issuer,
            client_id: ClientId::new(cfg.client_id.clone()),
            client_secret: ClientSecret::new(cfg.client_secret.expose().clone()),
            scopes: cfg
                .scopes
                .iter()
                .filter(|s| *s != "openid")
                .map(|s| Scope::new(s.clone()))
                .collect(),
            http,
            provider: RwLock::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            last_failure: std::sync::Mutex::new(None),
        })
    }

    /// For readiness: the discovery document and keys are cached (fetched now if not), and
    /// the IdP answers its discovery URL right now (within 3 s). `Err` says what is wrong.
    pub async fn probe(&self) -> Result<(), String> {
        self.provider().await.map_err(|e| e.to_string())?;
        let url = format!("{}/.well-known/openid-configuration", self.issuer.as_str());
        match self
            .http
            .get(&url)
            .timeout(Duration::from_secs(3))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!(
                "the identity provider answers {} at {url}",
                r.status()
            )),
            Err(e) => Err(format!(
                "the identity provider does not answer at {url}: {}",
                error_chain(&e)
            )),
        }
    }

    /// The issuer URL, without a trailing `/`.
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// The cached document while it is fresh, or the recent failure; `None`: fetch now.
    fn without_fetching(&self) -> Option<Result<Arc<Provider>, OidcError>> {
        if let Some(p) = self
            .cached()
            .filter(|p| p.fetched_at.elapsed() < DISCOVERY_TTL)
        {
            return Some(Ok(p));
        }
        self.recent_failure().map(|reason| {
            Err(OidcError::Discovery {
                issuer: self.issuer.to_string(),
                reason,
            })
        })
    }

    /// The reason of a discovery failure in the last [`DISCOVERY_RETRY_AFTER`], if any.
    fn recent_failure(&self) -> Option<String> {
        let f = self.last_failure.lock().ok()?;
        f.as_ref()
            .filter(|(at, _)| at.elapsed() < DISCOVERY_RETRY_AFTER)
            .map(|(_, r)| r.clone())
    }

    fn cached(&self) -> Option<Arc<Provider>> {
        self.provider.read().ok().and_then(|g| g.clone())
    }

    fn store(&self, p: Arc<Provider>) {
        if let Ok(mut g) = self.provider.write() {
            *g = Some(p);
        }
    }

    /// The discovery document (fetched on first use, then cached for an hour).
    async fn provider(&self) -> Result<Arc<Provider>, OidcError> {
        if let Some(ready) = self.without_fetching() {
            return ready;
        }
        let _guard = self.fetch_lock.lock().await;
        // Another request may have fetched (or failed) while this one waited for the lock.
        if let Some(ready) = self.without_fetching() {
            return ready;
        }
        let metadata =
            match CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http).await {
                Ok(m) => m,
                Err(e) => {
                    let reason = error_chain(&e);
                    if let Ok(mut f) = self.last_failure.lock() {
                        *f = Some((Instant::now(), reason.clone()));
                    }
                    return Err(OidcError::Discovery {
                        issuer: self.issuer.to_string(),
                        reason,
                    });
                }
            };
        let now = Instant::now();
        let p = Arc::new(Provider {
            metadata,
            fetched_at: now,
            jwks_fetched_at: now,
        });
        self.store(p.clone());
        tracing::info!(issuer = %self.issuer.as_str(), "identity provider discovered");
        Ok(p)
    }

    /// Fetches the JWKS again (a token named a `kid` we don't have: the IdP rotated keys).
    async fn refresh_jwks(&self, old: &Arc<Provider>) -> Result<Arc<Provider>, OidcError> {
        let _guard = self.fetch_lock.lock().await;
        if let Some(p) = self.cached().filter(|p| !Arc::ptr_eq(p, old)) {
            return Ok(p);
        }
        if old.jwks_fetched_at.elapsed() < JWKS_REFRESH_MIN_INTERVAL {
            return Ok(old.clone());
        }
        let jwks: JsonWebKeySet<CoreJsonWebKey> =
            JsonWebKeySet::fetch_async(old.metadata.jwks_uri(), &self.http)
                .await
                .map_err(|e| OidcError::Discovery {
                    issuer: self.issuer.to_string(),
                    reason: error_chain(&e),
                })?;
        let metadata = old.metadata.clone().set_jwks(jwks);
        let p = Arc::new(Provider {
            metadata,
            fetched_at: old.fetched_at,
            jwks_fetched_at: Instant::now(),
        });
        self.store(p.clone());
        tracing::info!(issuer = %self.issuer.as_str(), "identity provider keys refreshed");
        Ok(p)
    }

    fn client(&self, p: &Provider) -> Client {
        CoreClient::from_provider_metadata(
            p.metadata.clone(),
            self.client_id.clone(),
            Some(self.client_secret.clone()),
        )
    }

    /// Starts a sign-in: the IdP authorization URL, and the state to keep in the login cookie.
    /// `prompt`: ask the IdP to show its account chooser (`select_account`) or its login
    /// form (`login`) even when the browser is signed in there.
    pub async fn begin(
        &self,
        redirect_uri: &str,
        prompt: Option<openidconnect::core::CoreAuthPrompt>,
    ) -> Result<(String, Begun), OidcError> {
        let p = self.provider().await?;
        let client = self.client(&p);
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|_| OidcError::BadRedirectUri(redirect_uri.to_string()))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.scopes.iter().cloned())
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect));
        if let Some(p) = prompt {
            request = request.add_prompt(p);
        }
        let (url, state, nonce) = request.url();
        Ok((
            url.to_string(),
            Begun {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
            },
        ))
    }

    /// Finishes a sign-in: exchanges `code` (with the PKCE verifier) and checks the ID token.
    pub async fn finish(
        &self,
        code: &str,
        begun: &Begun,
        redirect_uri: &str,
    ) -> Result<SignedIn, OidcError> {
        let p = self.provider().await?;
        let client = self.client(&p);
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|_| OidcError::BadRedirectUri(redirect_uri.to_string()))?;
        let request = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::TokenEndpoint(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(begun.pkce_verifier.clone()))
            .set_redirect_uri(Cow::Owned(redirect));
        let response = request
            .request_async(&self.http)
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => {
                    OidcError::CodeRefused(match r.error_description() {
                        Some(d) => format!("{} ({d})", r.error()),
                        None => r.error().to_string(),
                    })
                }
                // The body may hold tokens: never put it in the message.
                RequestTokenError::Parse(..) => {
                    OidcError::TokenEndpoint("the token response did not parse".into())
                }
                RequestTokenError::Request(e) => OidcError::TokenEndpoint(error_chain(&e)),
                RequestTokenError::Other(m) => OidcError::TokenEndpoint(m),
            })?;
        let raw = response.id_token().ok_or(OidcError::NoIdToken)?.to_string();
        let id_token: GatehouseIdToken = raw.parse().map_err(|_| OidcError::MalformedIdToken)?;
        let nonce = Nonce::new(begun.nonce.clone());
        let signed_in = match self.verify(&client, &id_token, &nonce) {
            Err(OidcError::IdTokenRefused(_)) if self.unknown_kid(&client, &id_token, &nonce) => {
                let fresh = self.refresh_jwks(&p).await?;
                self.verify(&self.client(&fresh), &id_token, &nonce)?
            }
            other => other?,
        };
        Ok(signed_in)
    }

    /// An ID token sent as `Authorization: Bearer` (a route with `bearer_token_format:
    /// idp_identity_token`): verified as at sign-in (signature by the IdP's keys, issuer,
    /// expiry, issue time, `azp`), except that there is no nonce to match, and its audience
    /// may be this client or one of `audiences`.
    pub async fn verify_bearer(
        &self,
        raw: &str,
        audiences: &[String],
    ) -> Result<SignedIn, OidcError> {
        let id_token: GatehouseIdToken = raw.parse().map_err(|_| OidcError::MalformedIdToken)?;
        let p = self.provider().await?;
        // The error, and whether it was an unknown signing key (then the JWKS is fetched
        // again, once, as at sign-in).
        let check = |client: &Client| -> Result<SignedIn, (OidcError, bool)> {
            let verifier = self
                .verifier(client)
                .require_audience_match(false)
                .set_other_audience_verifier_fn(|aud| {
                    audiences.iter().any(|a| a.as_str() == aud.as_str())
                });
            let claims = id_token
                .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                .map_err(|e| {
                    let no_key = matches!(
                        e,
                        ClaimsVerificationError::SignatureVerification(
                            SignatureVerificationError::NoMatchingKey
                        )
                    );
                    (OidcError::IdTokenRefused(e.to_string()), no_key)
                })?;
            // With the audience check relaxed above, one of the audiences must still be
            // this client or a listed one.
            let ours = claims.audiences().iter().any(|a| {
                a.as_str() == self.client_id.as_str()
                    || audiences.iter().any(|x| x.as_str() == a.as_str())
            });
            if !ours {
                return Err((
                    OidcError::IdTokenRefused("the token is for another audience".into()),
                    false,
                ));
            }
            if let Some(azp) = claims.authorized_party()
                && azp.as_str() != self.client_id.as_str()
                && !audiences.iter().any(|a| a.as_str() == azp.as_str())
            {
                return Err((
                    OidcError::AzpMismatch {
                        expected: self.client_id.to_string(),
                        found: azp.to_string(),
                    },
                    false,
                ));
            }
            signed_in(claims).map_err(|e| (e, false))
        };
        match check(&self.client(&p)) {
            Err((_, true)) => {
                let fresh = self.refresh_jwks(&p).await?;
                check(&self.client(&fresh)).map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    fn verifier<'a>(&self, client: &'a Client) -> IdTokenVerifier<'a, CoreJsonWebKey> {
        use openidconnect::core::CoreJwsSigningAlgorithm as A;
        client
            .id_token_verifier()
            .set_allowed_algs([
                A::RsaSsaPkcs1V15Sha256,
                A::RsaSsaPkcs1V15Sha384,
                A::RsaSsaPkcs1V15Sha512,
                A::RsaSsaPssSha256,
                A::EcdsaP256Sha256,
                A::EcdsaP384Sha384,
                A::EdDsa,
            ])
            // `exp` leeway: judge expiry as of a minute ago.
            .set_time_fn(|| chrono::Utc::now() - chrono::Duration::seconds(LEEWAY_SECS))
            .set_issue_time_verifier_fn(|iat| {
                if iat > chrono::Utc::now() + chrono::Duration::seconds(LEEWAY_SECS) {
                    Err(format!("iat {iat} is in the future"))
                } else {
                    Ok(())
                }
            })
    }

    fn unknown_kid(&self, client: &Client, token: &GatehouseIdToken, nonce: &Nonce) -> bool {
        matches!(
            token.claims(&self.verifier(client), nonce),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey
            ))
        )
    }

    fn verify(
        &self,
        client: &Client,
        token: &GatehouseIdToken,
        nonce: &Nonce,
    ) -> Result<SignedIn, OidcError> {
        let claims = token
            .claims(&self.verifier(client), nonce)
            .map_err(|e| OidcError::IdTokenRefused(e.to_string()))?;
        if let Some(azp) = claims.authorized_party()
            && azp.as_str() != self.client_id.as_str()
        {
            return Err(OidcError::AzpMismatch {
                expected: self.client_id.to_string(),
                found: azp.to_string(),
            });
        }
        signed_in(claims)
    }
}

/// What verified ID-token claims say about the person.
fn signed_in(claims: &IdClaims) -> Result<SignedIn, OidcError> {
    let email = claims
        .email()
        .map(|e| e.to_string())
        .ok_or(OidcError::NoEmail)?;
    Ok(SignedIn {
        iss: claims.issuer().to_string(),
        sub: claims.subject().to_string(),
        email,
        email_verified: claims.email_verified().unwrap_or(false),
        name: claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.to_string()),
        groups: claims
            .additional_claims()
            .groups
            .clone()
            .unwrap_or_default(),
        hd: claims.additional_claims().hd.clone(),
    })
}

/// The secrets of one sign-in attempt (stored sealed in the login cookie).
#[derive(Debug, Clone)]
pub struct Begun {
    /// The `state` sent to the IdP; the callback must bring it back.
    pub state: String,
    /// The `nonce` sent to the IdP; the ID token must carry it.
    pub nonce: String,
    /// The PKCE S256 verifier, sent with the code so only this sign-in can redeem it.
    pub pkce_verifier: String,
}

/// An error and its sources, `a: b: c`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
