//! Access tokens: HS256 JWTs with claims `{sub, did, iat, exp, iss: "natter"}` and the
//! key id (`kid`) in the header. Verification checks signature, algorithm, expiry and
//! issuer; revocation is the caller's second step (`Sessions::authenticate` or the bus).
//!
//! Keys rotate with overlap: tokens are signed with the current key only, and verified
//! with the key their `kid` names, which may be the current key or one of the previous
//! keys the operator still lists. A `kid` naming no configured key is refused without
//! trying any key; a token without a `kid` is checked against the current key alone.

use std::{collections::HashMap, sync::Arc, time::Duration};

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
    /// The token names a key (`kid`) that is neither the current signing key nor a
    /// previous one still accepted: signed before a rotation that has since finished, or
    /// forged.
    #[error("access token signed with an unknown key")]
    UnknownKey,
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
    /// The signing key's id: tokens without a `kid` are checked against that key alone.
    current: String,
    /// Key id → key: the signing key and every previous key still accepted.
    keys: HashMap<String, DecodingKey>,
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
        Self::from_secrets(secret, &[])
    }

    /// A verifier for tokens signed with `current` or with one of the `previous` secrets
    /// (during a key rotation: tokens issued before it stay valid until they expire).
    /// Every secret must hold at least [`crate::MIN_SECRET_BYTES`].
    pub fn from_secrets(current: &[u8], previous: &[Vec<u8>]) -> Result<TokenVerifier, String> {
        check_secret_len(current, "the secret")?;
        for (i, secret) in previous.iter().enumerate() {
            check_secret_len(secret, &format!("previous secret #{}", i + 1))?;
        }
        // The TTL only matters to the issuer, which is dropped here.
        Ok(keys(current, previous, Duration::from_secs(1)).1)
    }

    /// The ids (`kid`) of the accepted keys, the signing key's first. Not secret: they
    /// are in every token's header; operators compare them across roles.
    pub fn key_ids(&self) -> Vec<String> {
        let mut previous: Vec<String> = self
            .inner
            .keys
            .keys()
            .filter(|k| **k != self.inner.current)
            .cloned()
            .collect();
        previous.sort();
        let mut ids = vec![self.inner.current.clone()];
        ids.extend(previous);
        ids
    }

    /// Signature, algorithm (HS256 only), expiry and issuer. Not revocation.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // The header picks the key; `alg` is still checked by the validation (HS256
        // only), so a header cannot choose a weaker algorithm or `none` (which does not
        // even parse as a header).
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let kid = header.kid.as_deref().unwrap_or(&self.inner.current);
        let key = self.inner.keys.get(kid).ok_or(AuthError::UnknownKey)?;
        let data =
            jsonwebtoken::decode::<JwtClaims>(token, key, &self.inner.validation).map_err(|e| {
                match e.kind() {
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
                }
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

fn check_secret_len(secret: &[u8], what: &str) -> Result<(), String> {
    if secret.len() < crate::MIN_SECRET_BYTES {
        return Err(format!(
            "{what} has {} bytes; at least {} are needed",
            secret.len(),
            crate::MIN_SECRET_BYTES
        ));
    }
    Ok(())
}

/// The issuer signing with `secret` and a verifier accepting it and the `previous`
/// secrets. Lengths are the caller's to check.
pub(crate) fn keys(
    secret: &[u8],
    previous: &[Vec<u8>],
    ttl: Duration,
) -> (TokenIssuer, TokenVerifier) {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_S;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    let issuer = TokenIssuer {
        key: EncodingKey::from_secret(secret),
        kid: key_id(secret),
        ttl,
    };
    let current = key_id(secret);
    let mut accepted = HashMap::new();
    for old in previous {
        accepted.insert(key_id(old), DecodingKey::from_secret(old));
    }
    // The current key wins should a previous secret be the same one.
    accepted.insert(current.clone(), DecodingKey::from_secret(secret));
    let verifier = TokenVerifier {
        inner: Arc::new(VerifierInner {
            current,
            keys: accepted,
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
        let (issuer, verifier) = keys(SECRET, &[], Duration::from_secs(900));
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
        let (_, verifier) = keys(SECRET, &[], Duration::from_secs(900));
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

    const NEXT: &[u8] = b"the next secret, also 32 bytes long!";

    fn sign_kid(claims: &serde_json::Value, kid: Option<&str>, secret: &[u8]) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    #[test]
    fn rotation_accepts_previous_keys_by_kid_and_nothing_else() {
        let now = natter_proto::now_ms();
        let (old_issuer, _) = keys(SECRET, &[], Duration::from_secs(900));
        let old_token = old_issuer.issue(UserId(5), DeviceId(6), now).unwrap();

        // The new key signs; the old one is still accepted for what it signed.
        let (new_issuer, verifier) = keys(NEXT, &[SECRET.to_vec()], Duration::from_secs(900));
        assert_eq!(verifier.key_ids(), vec![key_id(NEXT), key_id(SECRET)]);
        let new_token = new_issuer.issue(UserId(5), DeviceId(7), now).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&new_token).unwrap().kid,
            Some(key_id(NEXT))
        );
        assert_eq!(verifier.verify(&old_token).unwrap().device, DeviceId(6));
        assert_eq!(verifier.verify(&new_token).unwrap().device, DeviceId(7));

        // Once the old key is dropped, its tokens are refused by kid.
        let (_, after) = keys(NEXT, &[], Duration::from_secs(900));
        assert_eq!(after.verify(&old_token), Err(AuthError::UnknownKey));
        assert!(after.verify(&new_token).is_ok());

        let claims =
            serde_json::json!({"sub":"1","did":"2","iat":now_s(),"exp":now_s()+60,"iss":"natter"});
        // A kid nobody configured, even with a valid signature by some key.
        assert_eq!(
            verifier.verify(&sign_kid(&claims, Some("0011223344556677"), NEXT)),
            Err(AuthError::UnknownKey)
        );
        // The old key's kid on a token signed with another key: the signature decides.
        assert_eq!(
            verifier.verify(&sign_kid(&claims, Some(&key_id(SECRET)), NEXT)),
            Err(AuthError::BadSignature)
        );
        // No kid: the current key only, never a previous one.
        assert!(verifier.verify(&sign_kid(&claims, None, NEXT)).is_ok());
        assert_eq!(
            verifier.verify(&sign_kid(&claims, None, SECRET)),
            Err(AuthError::BadSignature)
        );
        // Short previous secrets are refused like short current ones.
        assert!(TokenVerifier::from_secrets(NEXT, &[b"short".to_vec()]).is_err());
        assert!(TokenVerifier::from_secrets(b"short", &[]).is_err());
        assert!(TokenVerifier::from_secrets(NEXT, &[SECRET.to_vec()]).is_ok());
    }

    #[test]
    fn alg_none_and_unsigned_tokens_are_refused() {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
        let (_, verifier) = keys(SECRET, &[], Duration::from_secs(900));
        let claims = B64.encode(
            serde_json::json!({"sub":"1","did":"2","exp":now_s()+60,"iss":"natter"}).to_string(),
        );
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#.to_owned(),
            format!(r#"{{"alg":"none","kid":"{}"}}"#, key_id(SECRET)),
            r#"{"alg":"HS256"}"#.to_owned(),
        ] {
            let token = format!("{}.{claims}.", B64.encode(header.as_bytes()));
            assert!(verifier.verify(&token).is_err(), "{header}");
        }
    }
}
