//! Resume tokens (§6.3): HMAC-SHA256 signed, base64url, binding a session, its
//! principal, a generation and an expiry.
//!
//! Wire form: `rt1.<claims>.<mac>` where `<claims>` is the base64url (no
//! padding) JSON `{"sid","sub","gen","exp"}` and `<mac>` the base64url
//! HMAC-SHA256 over `rt1.<claims>`. The first configured secret signs; every
//! configured secret verifies, so secrets can be rotated without logging
//! everybody out. Claims are parsed only after a MAC has verified.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::ids::{Principal, SessionId};

type HmacSha256 = Hmac<Sha256>;

/// The prefix that tells a resume token apart from an api token.
pub const RESUME_TOKEN_PREFIX: &str = "rt1.";

/// The longest token accepted before any work is done on it.
const MAX_TOKEN_LENGTH: usize = 2048;

/// What a verified token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeClaims {
    pub session_id: SessionId,
    pub principal: Principal,
    /// Bumped on every welcome; older generations stop working once a newer
    /// one has been used (rotation).
    pub generation: u64,
    /// Seconds since the Unix epoch.
    pub expires_at_unix: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeTokenError {
    /// Not of the `rt1.<claims>.<mac>` form, or not decodable.
    Malformed,
    /// No configured secret produced this MAC.
    BadSignature,
    /// Signed by us, but past its expiry.
    Expired,
}

#[derive(Serialize, Deserialize)]
struct WireClaims {
    sid: String,
    sub: String,
    gen: u64,
    exp: u64,
}

/// The signing and verifying secrets.
pub struct ResumeTokenKeys {
    secrets: Vec<Vec<u8>>,
}

impl ResumeTokenKeys {
    /// `secrets[0]` signs; all verify. At least one secret is required.
    pub fn new(secrets: Vec<Vec<u8>>) -> Option<Self> {
        if secrets.is_empty() || secrets.iter().any(|secret| secret.is_empty()) {
            return None;
        }
        Some(ResumeTokenKeys { secrets })
    }

    pub fn sign(&self, claims: &ResumeClaims) -> String {
        let wire = WireClaims {
            sid: claims.session_id.as_str().to_owned(),
            sub: claims.principal.as_str().to_owned(),
            gen: claims.generation,
            exp: claims.expires_at_unix,
        };
        let claims_json = serde_json::to_vec(&wire).unwrap_or_default();
        let mut token = String::with_capacity(160);
        token.push_str(RESUME_TOKEN_PREFIX);
        token.push_str(&URL_SAFE_NO_PAD.encode(claims_json));
        let mac = mac_for(&self.secrets[0], token.as_bytes())
            .finalize()
            .into_bytes();
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(mac));
        token
    }

    /// Checks form, signature (constant-time, against every secret) and
    /// expiry, in that order.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<ResumeClaims, ResumeTokenError> {
        if token.len() > MAX_TOKEN_LENGTH || !token.starts_with(RESUME_TOKEN_PREFIX) {
            return Err(ResumeTokenError::Malformed);
        }
        let Some((signed_part, mac_text)) = token.rsplit_once('.') else {
            return Err(ResumeTokenError::Malformed);
        };
        let claims_text = &signed_part[RESUME_TOKEN_PREFIX.len().min(signed_part.len())..];
        if claims_text.is_empty() || claims_text.contains('.') {
            return Err(ResumeTokenError::Malformed);
        }
        let Ok(presented_mac) = URL_SAFE_NO_PAD.decode(mac_text) else {
            return Err(ResumeTokenError::Malformed);
        };
        let mut verified = false;
        for secret in &self.secrets {
            // `verify_slice` compares in constant time.
            let ok = mac_for(secret, signed_part.as_bytes())
                .verify_slice(&presented_mac)
                .is_ok();
            verified |= ok;
        }
        if !verified {
            return Err(ResumeTokenError::BadSignature);
        }
        let claims_json = URL_SAFE_NO_PAD
            .decode(claims_text)
            .map_err(|_| ResumeTokenError::Malformed)?;
        let wire: WireClaims =
            serde_json::from_slice(&claims_json).map_err(|_| ResumeTokenError::Malformed)?;
        if wire.exp <= now_unix {
            return Err(ResumeTokenError::Expired);
        }
        Ok(ResumeClaims {
            session_id: SessionId::from_client(&wire.sid),
            principal: Principal::new(&wire.sub),
            generation: wire.gen,
            expires_at_unix: wire.exp,
        })
    }
}

impl std::fmt::Debug for ResumeTokenKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ResumeTokenKeys({} secrets)", self.secrets.len())
    }
}

fn mac_for(secret: &[u8], message: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| <HmacSha256 as Mac>::new_from_slice(b"unreachable").unwrap());
    mac.update(message);
    mac
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn keys(secrets: &[&str]) -> ResumeTokenKeys {
        ResumeTokenKeys::new(secrets.iter().map(|s| s.as_bytes().to_vec()).collect()).unwrap()
    }

    fn claims(generation: u64, expires_at_unix: u64) -> ResumeClaims {
        ResumeClaims {
            session_id: SessionId::from_client("sess_0123"),
            principal: Principal::new("alice"),
            generation,
            expires_at_unix,
        }
    }

    #[test]
    fn a_token_signed_with_an_old_secret_still_verifies_after_rotation() {
        let old = keys(&["old-secret-0123456789"]);
        let rotated = keys(&["new-secret-0123456789", "old-secret-0123456789"]);
        let token = old.sign(&claims(3, 2_000));
        assert_eq!(rotated.verify(&token, 1_000), Ok(claims(3, 2_000)));
        let dropped = keys(&["new-secret-0123456789"]);
        assert_eq!(
            dropped.verify(&token, 1_000),
            Err(ResumeTokenError::BadSignature)
        );
    }

    #[test]
    fn expiry_is_checked_after_the_signature() {
        let keys = keys(&["secret-0123456789abcdef"]);
        let token = keys.sign(&claims(1, 100));
        assert_eq!(keys.verify(&token, 99), Ok(claims(1, 100)));
        assert_eq!(keys.verify(&token, 100), Err(ResumeTokenError::Expired));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let keys = keys(&["secret-0123456789abcdef"]);
        for bad in [
            "",
            "rt1.",
            "rt1..",
            "rt1.abc",
            "rt2.abc.def",
            "rt1.a.b.c",
            "rt1.@@@.###",
        ] {
            assert_eq!(
                keys.verify(bad, 0),
                Err(ResumeTokenError::Malformed),
                "{bad}"
            );
        }
        let huge = format!("rt1.{}.x", "a".repeat(5000));
        assert_eq!(keys.verify(&huge, 0), Err(ResumeTokenError::Malformed));
    }

    proptest! {
        #[test]
        fn tokens_round_trip(
            sid in "[a-z0-9_]{1,40}",
            principal in "\\PC{1,30}",
            generation in any::<u64>(),
            expires in 1u64..u64::MAX,
        ) {
            let keys = keys(&["proptest-secret-0123456789"]);
            let claims = ResumeClaims {
                session_id: SessionId::from_client(&sid),
                principal: Principal::new(&principal),
                generation,
                expires_at_unix: expires,
            };
            let token = keys.sign(&claims);
            prop_assert!(token.starts_with(RESUME_TOKEN_PREFIX));
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
            prop_assert_eq!(keys.verify(&token, expires - 1), Ok(claims));
        }

        #[test]
        fn arbitrary_text_is_refused_without_panic(text in "(rt1\\.)?[A-Za-z0-9_.=+/-]{0,120}|\\PC{0,64}") {
            let keys = keys(&["proptest-secret-0123456789"]);
            prop_assert!(keys.verify(&text, 0).is_err());
        }

        #[test]
        fn any_single_byte_change_is_rejected(
            generation in any::<u64>(),
            position in any::<prop::sample::Index>(),
            replacement in prop::sample::select(b"ABCabc012-_.".to_vec()),
        ) {
            let keys = keys(&["proptest-secret-0123456789"]);
            let token = keys.sign(&claims(generation, u64::MAX));
            let mut bytes = token.clone().into_bytes();
            let index = position.index(bytes.len());
            prop_assume!(bytes[index] != replacement);
            bytes[index] = replacement;
            let tampered = String::from_utf8(bytes).unwrap();
            prop_assert!(keys.verify(&tampered, 0).is_err());
        }
    }
}
