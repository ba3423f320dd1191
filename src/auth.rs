//! JSON Web Tokens: the `jwt` connect policy and `cinder token`.
//!
//! A verifier accepts exactly one algorithm, chosen from the configured key
//! (HS256 for a shared secret; RS256 or ES256 from the PEM's key type, or the
//! configured `algorithm` of that family). Tokens signed with any other
//! algorithm are refused — including `alg: none` and the classic confusion of
//! an HMAC token "signed" with the RSA public key — because the algorithm is
//! never taken from the token's header.

use std::path::Path;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 5;

/// What a valid token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Topics or patterns the holder may join (`join = "claims"` routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<ChannelsClaim>,
    /// Expiry, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not valid before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// The `channels` claim: a JSON list, or one comma-separated string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChannelsClaim {
    /// `["room:*", "user:alice"]`.
    List(Vec<String>),
    /// `"room:*,user:alice"`.
    Joined(String),
}

impl ChannelsClaim {
    /// The entries, trimmed, empty ones dropped.
    pub fn entries(&self) -> Vec<String> {
        let items: Vec<&str> = match self {
            ChannelsClaim::List(list) => list.iter().map(String::as_str).collect(),
            ChannelsClaim::Joined(text) => text.split(',').collect(),
        };
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// Why a token was refused. The text is what the client and the logs see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was presented.
    #[error("missing token")]
    Missing,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// Signed with another algorithm than the configured one (or `none`).
    #[error("token algorithm not accepted")]
    WrongAlgorithm,
    /// The signature does not match the key.
    #[error("invalid token signature")]
    BadSignature,
    /// Not a JWT, or claims of the wrong shape (e.g. no `sub`).
    #[error("malformed token")]
    Malformed,
}

/// A key problem found when loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The reason.
        source: std::io::Error,
    },
    /// The PEM is neither an RSA nor an EC public key, or does not fit the algorithm.
    #[error("{0}")]
    Unusable(String),
}

/// Checks tokens against one key and one algorithm.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

/// Parses an algorithm name from the config.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    name.parse::<Algorithm>()
        .ok()
        .filter(|a| {
            matches!(
                a,
                Algorithm::HS256
                    | Algorithm::HS384
                    | Algorithm::HS512
                    | Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::ES256
                    | Algorithm::ES384
            )
        })
        .ok_or_else(|| {
            KeyError::Unusable(format!(
                "unknown algorithm {name:?} (HS256/384/512, RS256/384/512, ES256/384)"
            ))
        })
}

impl Verifier {
    /// A verifier for an HMAC secret (HS256 unless `algorithm` says otherwise).
    pub fn from_secret(secret: &str, algorithm: Option<&str>) -> Result<Verifier, KeyError> {
        let algorithm = algorithm.map_or(Ok(Algorithm::HS256), parse_algorithm)?;
        if !matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(KeyError::Unusable(format!(
                "a secret is an HMAC key; {algorithm:?} needs public_key_file"
            )));
        }
        Ok(Verifier::new(
            DecodingKey::from_secret(secret.as_bytes()),
            algorithm,
        ))
    }

    /// A verifier for a PEM public key: RSA (RS256 unless `algorithm` says
    /// otherwise) or EC (ES256 unless `algorithm` says ES384).
    pub fn from_public_key_file(
        path: &Path,
        algorithm: Option<&str>,
    ) -> Result<Verifier, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let algorithm = algorithm.map(parse_algorithm).transpose()?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            let algorithm = algorithm.unwrap_or(Algorithm::RS256);
            if !matches!(
                algorithm,
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
            ) {
                return Err(KeyError::Unusable(format!(
                    "{} is an RSA key; {algorithm:?} does not use one",
                    path.display()
                )));
            }
            return Ok(Verifier::new(key, algorithm));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
            let algorithm = algorithm.unwrap_or(Algorithm::ES256);
            if !matches!(algorithm, Algorithm::ES256 | Algorithm::ES384) {
                return Err(KeyError::Unusable(format!(
                    "{} is an EC key; {algorithm:?} does not use one",
                    path.display()
                )));
            }
            return Ok(Verifier::new(key, algorithm));
        }
        Err(KeyError::Unusable(format!(
            "{} holds no RSA or EC public key in PEM form",
            path.display()
        )))
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Verifier {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        // `exp` is checked when present; `sub` is what makes a token useful.
        validation.set_required_spec_claims(&["sub"]);
        Verifier { key, validation }
    }

    /// Verifies `token` and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(TokenError::WrongAlgorithm);
        }
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm => TokenError::WrongAlgorithm,
                _ => TokenError::Malformed,
            })
    }
}

/// Mints an HS256 token (for `cinder token` and tests).
pub fn mint_hs256(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HMAC signing cannot fail")
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
