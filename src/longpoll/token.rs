//! Long-poll session tokens: which shard owns a session, and proof that this
//! server issued the token.
//!
//! A token is the URL-safe base64 (no padding) of 24 bytes of session address
//! followed by the first 16 bytes of their HMAC-SHA256 under the server's
//! long-poll secret:
//!
//! ```text
//! version u8 | 0 u8 | shard u16 | session key u32 | serial u64 | instance u64 | tag [u8; 16]
//! ```
//!
//! The *instance* is random per process start, so a token minted before a
//! restart never names a session of the new process even when the secret is
//! configured and the (shard, key, serial) triple happens to be reused. The
//! token is not encrypted: it only names a session, and forging one needs
//! the secret.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VERSION: u8 = 1;
const ADDRESS_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Where a long-poll session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionAddress {
    /// The owning shard.
    pub shard: u16,
    /// The session's key in the owner's session slab.
    pub key: u32,
    /// The session's serial number on that shard (tells it from a later
    /// session that reuses the key).
    pub serial: u64,
}

/// Signs and verifies session tokens for one server process.
#[derive(Clone)]
pub struct TokenSigner {
    mac: Hmac<Sha256>,
    instance: u64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenSigner")
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer with `secret` for a process identified by `instance`.
    pub fn new(secret: &[u8], instance: u64) -> TokenSigner {
        TokenSigner {
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts keys of any length"),
            instance,
        }
    }

    /// The token naming `address`.
    pub fn sign(&self, address: SessionAddress) -> String {
        let mut bytes = [0u8; ADDRESS_LEN + TAG_LEN];
        bytes[0] = VERSION;
        bytes[2..4].copy_from_slice(&address.shard.to_be_bytes());
        bytes[4..8].copy_from_slice(&address.key.to_be_bytes());
        bytes[8..16].copy_from_slice(&address.serial.to_be_bytes());
        bytes[16..24].copy_from_slice(&self.instance.to_be_bytes());
        let mut mac = self.mac.clone();
        mac.update(&bytes[..ADDRESS_LEN]);
        let tag = mac.finalize().into_bytes();
        bytes[ADDRESS_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Whether `token` has the shape of a session token (signed by this
    /// process or not): tells a stale session token from an application's
    /// own `token` connect parameter.
    pub fn looks_like_session_token(token: &str) -> bool {
        token.len() <= 64
            && URL_SAFE_NO_PAD
                .decode(token)
                .is_ok_and(|b| b.len() == ADDRESS_LEN + TAG_LEN && b[0] == VERSION)
    }

    /// The session a token names, if this process signed it.
    pub fn verify(&self, token: &str) -> Option<SessionAddress> {
        match self.verify_any(token)? {
            (instance, address) if instance == self.instance => Some(address),
            _ => None,
        }
    }

    /// The process (`instance`) and session a token names, if it was signed
    /// with this signer's secret by any process: in a cluster whose nodes
    /// share `socket.longpoll.secret`, a token of another node's session.
    pub fn verify_any(&self, token: &str) -> Option<(u64, SessionAddress)> {
        if token.len() > 64 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        if bytes.len() != ADDRESS_LEN + TAG_LEN || bytes[0] != VERSION {
            return None;
        }
        let mut mac = self.mac.clone();
        mac.update(&bytes[..ADDRESS_LEN]);
        // Constant-time comparison of the truncated tag.
        mac.verify_truncated_left(&bytes[ADDRESS_LEN..]).ok()?;
        let instance = u64::from_be_bytes(bytes[16..24].try_into().ok()?);
        let address = SessionAddress {
            shard: u16::from_be_bytes(bytes[2..4].try_into().ok()?),
            key: u32::from_be_bytes(bytes[4..8].try_into().ok()?),
            serial: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
        };
        Some((instance, address))
    }

    /// The process this signer signs for.
    pub fn instance(&self) -> u64 {
        self.instance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: SessionAddress = SessionAddress {
        shard: 3,
        key: 77,
        serial: 1234,
    };

    #[test]
    fn a_token_of_another_process_verifies_only_with_verify_any() {
        let mine = TokenSigner::new(b"shared secret", 1);
        let other_node = TokenSigner::new(b"shared secret", 2);
        let token = other_node.sign(ADDRESS);
        assert_eq!(mine.verify(&token), None, "not this process's session");
        assert_eq!(mine.verify_any(&token), Some((2, ADDRESS)));
        let stranger = TokenSigner::new(b"another secret", 2);
        assert_eq!(stranger.verify_any(&token), None, "another secret");
        assert_eq!(mine.instance(), 1);
    }

    #[test]
    fn a_token_round_trips_and_is_url_safe() {
        let signer = TokenSigner::new(b"secret", 42);
        let token = signer.sign(ADDRESS);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(signer.verify(&token), Some(ADDRESS));
    }

    #[test]
    fn forged_or_foreign_tokens_are_refused() {
        let signer = TokenSigner::new(b"secret", 42);
        let token = signer.sign(ADDRESS);
        // Another secret, another process instance.
        assert_eq!(TokenSigner::new(b"other", 42).verify(&token), None);
        assert_eq!(TokenSigner::new(b"secret", 43).verify(&token), None);
        // Any flipped character.
        let mut chars: Vec<char> = token.chars().collect();
        chars[5] = if chars[5] == 'A' { 'B' } else { 'A' };
        let tampered: String = chars.into_iter().collect();
        assert_eq!(signer.verify(&tampered), None);
        for junk in ["", "x", "not a token", &"A".repeat(54), &token[..40]] {
            assert_eq!(signer.verify(junk), None, "{junk}");
        }
        assert!(TokenSigner::looks_like_session_token(&tampered));
        assert!(!TokenSigner::looks_like_session_token(
            "eyJhbGciOiJIUzI1NiJ9.e30.sig"
        ));
    }
}
