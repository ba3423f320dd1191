//! `[socket.auth]`: who may connect, and the connect policy built from it
//! (keys are loaded once, at load time).

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::section::config_section;
use super::ConfigError;
use crate::auth::Verifier;
use crate::connect::{ConnectPolicy, WebhookConnect, DEFAULT_SOCKET_ID};
use crate::hooks::HooksConfig;

config_section! {
    /// `[socket.auth]`: the connect policy.
    pub struct AuthConfig {
        /// `none` (anyone may connect) or `jwt` (a valid token is required).
        pub mode: AuthMode = AuthMode::None,
        /// HMAC secret for HS256 (HS384/HS512 with `algorithm`).
        pub secret: Option<String> = None,
        /// PEM public key for RS256 or ES256, chosen by the key's type.
        pub public_key_file: Option<PathBuf> = None,
        /// Overrides the algorithm within the key's family (e.g. `RS512`).
        pub algorithm: Option<String> = None,
        /// The connect parameter carrying the token; the auth-token subprotocol
        /// (`authToken` in the JS client) is used when the parameter is absent.
        pub param: String = "token".to_string(),
        /// The socket id of an authenticated connection; `{user_id}` is
        /// replaced by the token's `sub`. Forced disconnects address it.
        pub socket_id: String = DEFAULT_SOCKET_ID.to_string(),
    }
}

/// How connections are admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Anyone may connect.
    #[default]
    None,
    /// A JWT signed with the configured key is required.
    Jwt,
    /// The application's backend decides (`POST {webhook.url}/connect`).
    Webhook,
}

impl AuthConfig {
    fn check_socket_id(&self) -> Result<(), ConfigError> {
        if !self.socket_id.contains("{user_id}") {
            return Err(ConfigError::invalid(
                "socket.auth.socket_id",
                "must contain {user_id}, or every user would share one socket id",
            ));
        }
        Ok(())
    }

    /// Builds the connect policy, loading keys; errors name the key.
    pub(super) fn policy(&self, webhook: &HooksConfig) -> Result<ConnectPolicy, ConfigError> {
        let verifier = match (self.mode, &self.secret, &self.public_key_file) {
            (AuthMode::None, _, _) => return Ok(ConnectPolicy::Open),
            (AuthMode::Webhook, _, _) => {
                if webhook.url.is_none() {
                    return Err(ConfigError::invalid(
                        "socket.auth.mode",
                        "\"webhook\" needs webhook.url",
                    ));
                }
                self.check_socket_id()?;
                return Ok(ConnectPolicy::Webhook(Arc::new(WebhookConnect {
                    forward_headers: webhook
                        .forward_headers
                        .iter()
                        .map(|h| h.to_ascii_lowercase())
                        .collect(),
                    socket_id: self.socket_id.clone(),
                })));
            }
            (AuthMode::Jwt, Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "socket.auth",
                    "set either secret or public_key_file, not both",
                ))
            }
            (AuthMode::Jwt, None, None) => {
                return Err(ConfigError::invalid(
                    "socket.auth",
                    "mode = \"jwt\" needs secret (HS256) or public_key_file (RS256/ES256)",
                ))
            }
            (AuthMode::Jwt, Some(secret), None) => {
                if secret.len() < 8 {
                    return Err(ConfigError::invalid(
                        "socket.auth.secret",
                        "must be at least 8 bytes",
                    ));
                }
                Verifier::from_secret(secret, self.algorithm.as_deref())
                    .map_err(|e| ConfigError::invalid("socket.auth.algorithm", e.to_string()))?
            }
            (AuthMode::Jwt, None, Some(path)) => {
                Verifier::from_public_key_file(path, self.algorithm.as_deref()).map_err(|e| {
                    ConfigError::invalid("socket.auth.public_key_file", e.to_string())
                })?
            }
        };
        if self.param.is_empty() {
            return Err(ConfigError::invalid(
                "socket.auth.param",
                "must not be empty",
            ));
        }
        self.check_socket_id()?;
        Ok(ConnectPolicy::jwt(
            verifier,
            self.param.clone(),
            self.socket_id.clone(),
        ))
    }
}
