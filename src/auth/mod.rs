//! Who is calling: api tokens that name a principal (§6.1), and the signed
//! resume tokens that let a principal come back to one of its sessions (§6.3).
//!
//! Every comparison against a secret is constant-time, and no type here prints
//! a token through `Debug`.

pub mod resume_token;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::Principal;

pub use resume_token::{ResumeClaims, ResumeTokenError, ResumeTokenKeys};

/// The configured api tokens, kept only as SHA-256 digests.
pub struct ApiTokens {
    entries: Vec<(Principal, [u8; 32])>,
}

impl ApiTokens {
    pub fn new(pairs: &[(Principal, String)]) -> Self {
        let entries = pairs
            .iter()
            .map(|(principal, token)| (principal.clone(), digest(token)))
            .collect();
        ApiTokens { entries }
    }

    /// The principal whose api token this is. Every configured entry is
    /// compared, in constant time, whatever matches first.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let presented_digest = digest(presented);
        let mut found = None;
        for (principal, expected_digest) in &self.entries {
            if bool::from(expected_digest.ct_eq(&presented_digest)) {
                found = Some(principal.clone());
            }
        }
        found
    }
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let principals: Vec<&str> = self.entries.iter().map(|(p, _)| p.as_str()).collect();
        formatter
            .debug_struct("ApiTokens")
            .field("principals", &principals)
            .finish_non_exhaustive()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_tokens_map_to_their_principal_only() {
        let tokens = ApiTokens::new(&[
            (Principal::new("alice"), "alice-secret".into()),
            (Principal::new("bob"), "bob-secret".into()),
        ]);
        assert_eq!(
            tokens.authenticate("alice-secret"),
            Some(Principal::new("alice"))
        );
        assert_eq!(
            tokens.authenticate("bob-secret"),
            Some(Principal::new("bob"))
        );
        assert_eq!(tokens.authenticate("alice-secreT"), None);
        assert_eq!(tokens.authenticate(""), None);
        assert!(!format!("{tokens:?}").contains("secret"));
    }
}
