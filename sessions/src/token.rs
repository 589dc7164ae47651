//! Access tokens: HS256 JWTs with claims `{sub, did, iat, exp, iss: "natter"}` and the
//! key id in the header. Verification checks signature, algorithm, expiry and issuer;
//! revocation is the caller's second step (`Sessions::authenticate` or the bus).

use std::{sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use natter_proto::{DeviceId, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ISSUER;

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_S: u64 = 30;

/// What a valid access token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub user: UserId,
    pub device: DeviceId,
    /// When the token stops being valid, in ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Why a request was not authenticated. The messages are safe to show clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing access token")]
    Missing,
    #[error("malformed access token")]
    Malformed,
    #[error("access token expired")]
    Expired,
    #[error("invalid access token signature")]
    BadSignature,
    #[error("invalid access token claims")]
    InvalidClaims,
    #[error("device logged out")]
    Revoked,
    /// The device is logged in but an administrator disabled its account.
    #[error("this account is disabled")]
    Disabled,
}

/// Missing fields default so that a token without them is refused as `InvalidClaims` by
/// the validation (required `exp`, `iss`, `sub`) or the id parse, not as `Malformed`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct JwtClaims {
    sub: String,
    did: String,
    /// Informational; not checked.
    iat: u64,
    exp: u64,
    iss: String,
}

/// Checks access tokens. Cheap to clone.
#[derive(Clone)]
pub struct TokenVerifier {
    inner: Arc<VerifierInner>,
}

struct VerifierInner {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier for tokens signed with `secret`: how an edge in a cluster checks the
    /// tokens the sessions role issues (both read the same secret file). The secret must
    /// hold at least [`crate::MIN_SECRET_BYTES`].
    pub fn from_secret(secret: &[u8]) -> Result<TokenVerifier, String> {
        if secret.len() < crate::MIN_SECRET_BYTES {
            return Err(format!(
                "the secret has {} bytes; at least {} are needed",
                secret.len(),
                crate::MIN_SECRET_BYTES
            ));
        }
        // The TTL only matters to the issuer, which is dropped here.
        Ok(keys(secret, Duration::from_secs(1)).1)
    }

    /// Signature, algorithm (HS256 only), expiry and issuer. Not revocation.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data =
            jsonwebtoken::decode::<JwtClaims>(token, &self.inner.key, &self.inner.validation)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        AuthError::BadSignature
                    }
                    ErrorKind::InvalidIssuer
                    | ErrorKind::MissingRequiredClaim(_)
                    | ErrorKind::InvalidClaimFormat(_)
                    | ErrorKind::ImmatureSignature
                    | ErrorKind::InvalidAudience
                    | ErrorKind::InvalidSubject => AuthError::InvalidClaims,
                    _ => AuthError::Malformed,
                })?;
        let c = data.claims;
        let id = |s: &str| s.parse::<u64>().ok().filter(|&v| v != 0);
        let (Some(user), Some(device)) = (id(&c.sub), id(&c.did)) else {
            return Err(AuthError::InvalidClaims);
        };
        Ok(Claims {
            user: UserId(user),
            device: DeviceId(device),
            expires_at_ms: c.exp.saturating_mul(1000),
        })
    }
}

/// Signs access tokens.
pub(crate) struct TokenIssuer {
    key: EncodingKey,
    kid: String,
    ttl: Duration,
}

impl TokenIssuer {
    pub(crate) fn issue(
        &self,
        user: UserId,
        device: DeviceId,
        now_ms: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = now_ms / 1000;
        let claims = JwtClaims {
            sub: user.to_string(),
            did: device.to_string(),
            iat,
            exp: iat.saturating_add(self.ttl.as_secs().max(1)),
            iss: ISSUER.to_owned(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}

/// The key id: the first 8 bytes of SHA-256(secret), in hex. Names the key without
/// revealing it, so a future rotation can tell tokens apart.
fn key_id(secret: &[u8]) -> String {
    Sha256::digest(secret)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn keys(secret: &[u8], ttl: Duration) -> (TokenIssuer, TokenVerifier) {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_S;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    let issuer = TokenIssuer {
        key: EncodingKey::from_secret(secret),
        kid: key_id(secret),
        ttl,
    };
    let verifier = TokenVerifier {
        inner: Arc::new(VerifierInner {
            key: DecodingKey::from_secret(secret),
            validation,
        }),
    };
    (issuer, verifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sign(claims: &serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn now_s() -> u64 {
        natter_proto::now_ms() / 1000
    }

    #[test]
    fn issued_tokens_verify_with_header_kid() {
        let (issuer, verifier) = keys(SECRET, Duration::from_secs(900));
        let now = natter_proto::now_ms();
        let t = issuer.issue(UserId(5), DeviceId(6), now).unwrap();
        let header = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key_id(SECRET).as_str()));
        assert_eq!(header.alg, Algorithm::HS256);
        let c = verifier.verify(&t).unwrap();
        assert_eq!((c.user, c.device), (UserId(5), DeviceId(6)));
        assert_eq!(c.expires_at_ms, (now / 1000 + 900) * 1000);
    }

    #[test]
    fn bad_tokens_are_refused_with_the_right_reason() {
        let (_, verifier) = keys(SECRET, Duration::from_secs(900));
        let ok =
            serde_json::json!({"sub":"1","did":"2","iat":now_s(),"exp":now_s()+60,"iss":"natter"});
        assert!(
            verifier
                .verify(&sign(&ok, Algorithm::HS256, SECRET))
                .is_ok()
        );
        let cases = [
            (
                serde_json::json!({"sub":"1","did":"2","iat":0,"exp":now_s()-3600,"iss":"natter"}),
                Algorithm::HS256,
                SECRET,
                AuthError::Expired,
            ),
            (
                ok.clone(),
                Algorithm::HS256,
                b"another secret of thirty-two bytes!".as_slice(),
                AuthError::BadSignature,
            ),
            (
                ok.clone(),
                Algorithm::HS512,
                SECRET,
                AuthError::BadSignature,
            ),
            (
                serde_json::json!({"sub":"1","did":"2","exp":now_s()+60,"iss":"evil"}),
                Algorithm::HS256,
                SECRET,
                AuthError::InvalidClaims,
            ),
            (
                serde_json::json!({"sub":"1","did":"2","exp":now_s()+60}),
                Algorithm::HS256,
                SECRET,
                AuthError::InvalidClaims,
            ),
            (
                serde_json::json!({"sub":"0","did":"2","exp":now_s()+60,"iss":"natter"}),
                Algorithm::HS256,
                SECRET,
                AuthError::InvalidClaims,
            ),
            (
                serde_json::json!({"sub":"1","did":"x","exp":now_s()+60,"iss":"natter"}),
                Algorithm::HS256,
                SECRET,
                AuthError::InvalidClaims,
            ),
        ];
        for (claims, alg, secret, want) in cases {
            assert_eq!(
                verifier.verify(&sign(&claims, alg, secret)),
                Err(want.clone()),
                "{claims}"
            );
        }
        for garbage in ["abc", "a.b.c", "....", "eyJhbGciOiJub25lIn0.e30."] {
            assert_eq!(
                verifier.verify(garbage),
                Err(AuthError::Malformed),
                "{garbage}"
            );
        }
        assert_eq!(verifier.verify(""), Err(AuthError::Missing));
    }
}
