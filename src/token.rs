//! Device tokens: JWTs signed by an app's backend with the app's key.
//!
//! The algorithm is pinned per key (HS256 today): a token naming any other algorithm,
//! `none` included, is refused before its signature is looked at, and its claims are read
//! only after the signature verifies. Times allow a fixed clock skew.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::proto::device::ErrorCode;

/// Clock skew allowed on `exp`, `iat` and `nbf`, in seconds.
pub const SKEW_SECS: i64 = 60;

/// The only algorithm app keys are pinned to for now.
const ALGORITHM: &str = "HS256";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm is not the one pinned for the app key")]
    Algorithm,
    #[error("token signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token names another app")]
    WrongApp,
    #[error("token names another device")]
    WrongDevice,
}

impl TokenError {
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Algorithm => "token_algorithm",
            TokenError::Signature => "token_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongApp => "token_wrong_app",
            TokenError::WrongDevice => "token_wrong_device",
        }
    }

    pub fn code(self) -> ErrorCode {
        match self {
            TokenError::Malformed => ErrorCode::TokenMalformed,
            TokenError::Algorithm => ErrorCode::TokenAlgorithm,
            TokenError::Signature => ErrorCode::TokenSignature,
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::NotYetValid => ErrorCode::TokenNotYetValid,
            TokenError::WrongApp => ErrorCode::TokenWrongApp,
            TokenError::WrongDevice => ErrorCode::TokenWrongDevice,
        }
    }
}

/// The claims longlink reads. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Device id.
    pub sub: String,
    /// App id.
    pub app: String,
    /// User id the device is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: i64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// An app's signing key, with its algorithm pinned.
#[derive(Clone)]
pub struct AppKey {
    secret: Vec<u8>,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKey").field("alg", &ALGORITHM).finish_non_exhaustive()
    }
}

impl AppKey {
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Self {
        AppKey { secret: secret.into() }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims encode"));
        let signing_input = format!("{header}.{body}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Verifies `token` for `app` and `device` at `now` (Unix seconds).
    pub fn verify(
        &self,
        token: &str,
        app: &str,
        device: &str,
        now: i64,
    ) -> Result<Claims, TokenError> {
        let claims = self.verified_claims(token)?;
        if claims.app != app {
            return Err(TokenError::WrongApp);
        }
        if claims.sub != device {
            return Err(TokenError::WrongDevice);
        }
        check_times(&claims, now)?;
        Ok(claims)
    }

    fn verified_claims(&self, token: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(body), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Header = decode_json(header)?;
        if header.alg != ALGORITHM {
            return Err(TokenError::Algorithm);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(&token.as_bytes()[..header_and_body_len(token)]);
        // verify_slice compares in constant time.
        mac.verify_slice(&signature).map_err(|_| TokenError::Signature)?;
        decode_json(body)
    }
}

fn header_and_body_len(token: &str) -> usize {
    token.rfind('.').expect("three parts were checked")
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

fn check_times(claims: &Claims, now: i64) -> Result<(), TokenError> {
    if claims.exp + SKEW_SECS < now {
        return Err(TokenError::Expired);
    }
    let not_before = claims.nbf.unwrap_or(claims.iat);
    if not_before - SKEW_SECS > now {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn claims() -> Claims {
        Claims {
            sub: "d1".into(),
            app: "demo".into(),
            uid: Some("u1".into()),
            exp: NOW + 3600,
            iat: NOW,
            nbf: None,
        }
    }

    fn key() -> AppKey {
        AppKey::hs256(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn valid_token_yields_its_claims() {
        let token = key().sign(&claims());
        assert_eq!(key().verify(&token, "demo", "d1", NOW), Ok(claims()));
    }

    #[test]
    fn each_kind_of_bad_token_has_its_own_error() {
        let k = key();
        let good = k.sign(&claims());
        let mut expired = claims();
        expired.exp = NOW - SKEW_SECS - 1;
        let mut early = claims();
        early.iat = NOW + SKEW_SECS + 1;
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let body = good.split('.').nth(1).unwrap();
        let mut other = claims();
        other.sub = "d9".into();
        let other_token = k.sign(&other);
        let other_sig = other_token.rsplit('.').next().unwrap();
        let cases = [
            ("garbage", TokenError::Malformed),
            (&format!("{none_header}.{body}."), TokenError::Algorithm),
            (&format!("{}.{other_sig}", &good[..good.rfind('.').unwrap()]), TokenError::Signature),
            (&AppKey::hs256(b"other".to_vec()).sign(&claims()), TokenError::Signature),
            (&k.sign(&expired), TokenError::Expired),
            (&k.sign(&early), TokenError::NotYetValid),
        ];
        for (token, want) in cases {
            assert_eq!(k.verify(token, "demo", "d1", NOW), Err(want), "{token}");
        }
        assert_eq!(k.verify(&good, "other", "d1", NOW), Err(TokenError::WrongApp));
        assert_eq!(k.verify(&good, "demo", "d2", NOW), Err(TokenError::WrongDevice));
    }

    #[test]
    fn skew_allowance_is_honoured_at_its_edge() {
        let mut c = claims();
        c.exp = NOW - SKEW_SECS;
        assert!(key().verify(&key().sign(&c), "demo", "d1", NOW).is_ok());
        c.exp = NOW + 10;
        c.iat = NOW + SKEW_SECS;
        assert!(key().verify(&key().sign(&c), "demo", "d1", NOW).is_ok());
    }

    #[test]
    fn mismatched_algorithm_is_refused_even_with_a_valid_hmac() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims()).unwrap());
        let input = format!("{header}.{body}");
        let mut mac = key().mac();
        mac.update(input.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let token = format!("{input}.{sig}");
        assert_eq!(key().verify(&token, "demo", "d1", NOW), Err(TokenError::Algorithm));
    }
}
