//! Who may connect: Cinder's stand-in for Phoenix's `connect/3`.
//!
//! The transport gathers what the client presented — query params, the auth
//! token from the `Sec-WebSocket-Protocol` header, the peer address — into a
//! [`ConnectRequest`], and a [`ConnectPolicy`] decides. The policy runs after
//! subprotocol negotiation and before the upgrade headers are validated,
//! which is Phoenix's order.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::{TokenError, Verifier};
use crate::protocol::json_object::{key_text, JsonObject};

/// What a client presented when connecting.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    /// Decoded query parameters, in order (`vsn` included, as in Phoenix).
    pub params: &'a [(String, String)],
    /// The token carried in the `base64url.bearer.phx.` subprotocol, decoded.
    pub auth_token: Option<&'a str>,
    /// The client's address.
    pub peer: SocketAddr,
}

/// Who the connection is, once accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The user the connection belongs to, when the policy knows it
    /// (the token's `sub`).
    pub user_id: Option<String>,
    /// Topics or patterns the token's `channels` claim allows.
    pub channels: Option<Vec<String>>,
    /// The socket id (`user_socket:<user id>` by default): the name a forced
    /// disconnect addresses, as in Phoenix's `id/1`.
    pub socket_id: Option<String>,
}

impl Identity {
    /// Whether a forced disconnect for `target` applies to this connection.
    pub fn is_target_of(&self, target: &DisconnectTarget) -> bool {
        match target {
            DisconnectTarget::UserId(id) => self.user_id.as_deref() == Some(id.as_str()),
            DisconnectTarget::SocketId(id) => self.socket_id.as_deref() == Some(id.as_str()),
        }
    }
}

/// Whose connections a forced disconnect closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectTarget {
    /// Every connection of this user id.
    UserId(String),
    /// Every connection with this socket id.
    SocketId(String),
}

/// The default socket id template.
pub const DEFAULT_SOCKET_ID: &str = "user_socket:{user_id}";

/// The outcome of a connect decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectDecision {
    /// Upgrade the connection.
    Accept(Identity),
    /// Ask the application's backend (`POST {webhook.url}/connect` with
    /// this body); the upgrade waits for the answer.
    Ask(Vec<u8>),
    /// Answer with this HTTP status and reason, without upgrading.
    Refuse {
        /// HTTP status (403 in Phoenix).
        status: u16,
        /// Why, for the JSON body and the logs.
        reason: String,
    },
}

/// How connections are admitted.
#[derive(Debug, Clone, Default)]
pub enum ConnectPolicy {
    /// Everyone may connect; identity is anonymous.
    #[default]
    Open,
    /// A JWT is required: from the connect parameter `param`, or else from
    /// the auth-token subprotocol.
    Jwt(Arc<JwtPolicy>),
    /// The application's backend decides.
    Webhook(Arc<WebhookConnect>),
}

/// The `webhook` connect policy's settings.
#[derive(Debug)]
pub struct WebhookConnect {
    /// Upgrade request headers passed to the backend (lowercase names).
    pub forward_headers: Vec<String>,
    /// Socket id template (`{user_id}` replaced).
    pub socket_id: String,
}

impl WebhookConnect {
    /// The identity the backend's 2xx answer describes:
    /// `{"user_id": "alice", "channels": ["room:*"]}`, both optional.
    pub fn identity_from(&self, answer: &[u8]) -> Identity {
        let answer = JsonObject::parse_bytes(answer).ok();
        let field = |name: &str| answer.as_ref().and_then(|a| a.get(name));
        let user_id = field("user_id")
            .filter(|v| !v.get().starts_with(['t', 'f']))
            .and_then(key_text);
        let channels = field("channels").and_then(|c| {
            serde_json::from_str::<crate::auth::ChannelsClaim>(c.get())
                .ok()
                .map(|c| c.entries())
        });
        Identity {
            socket_id: user_id
                .as_ref()
                .map(|id| self.socket_id.replace("{user_id}", id)),
            user_id,
            channels,
        }
    }
}

/// The `jwt` policy's settings.
#[derive(Debug)]
pub struct JwtPolicy {
    verifier: Verifier,
    param: String,
    socket_id: String,
}

impl ConnectPolicy {
    /// The `jwt` policy with `verifier`, reading the token from `param`;
    /// `socket_id` is a template in which `{user_id}` is replaced.
    pub fn jwt(verifier: Verifier, param: String, socket_id: String) -> ConnectPolicy {
        ConnectPolicy::Jwt(Arc::new(JwtPolicy {
            verifier,
            param,
            socket_id,
        }))
    }

    /// Decides whether `request` may connect. `headers` are the upgrade
    /// request's headers (only the webhook policy reads them).
    pub fn decide(
        &self,
        request: &ConnectRequest<'_>,
        headers: &[(String, String)],
    ) -> ConnectDecision {
        match self {
            ConnectPolicy::Open => ConnectDecision::Accept(Identity::default()),
            ConnectPolicy::Webhook(policy) => {
                let mut params = serde_json::Map::new();
                for (name, value) in request.params {
                    params.insert(name.clone(), serde_json::Value::from(value.clone()));
                }
                let mut forwarded = serde_json::Map::new();
                for (name, value) in headers {
                    let name = name.to_ascii_lowercase();
                    if policy.forward_headers.contains(&name) {
                        forwarded.insert(name, serde_json::Value::from(value.clone()));
                    }
                }
                let body = serde_json::json!({
                    "params": params,
                    "headers": forwarded,
                    "peer": request.peer.to_string(),
                    "auth_token": request.auth_token,
                });
                ConnectDecision::Ask(serde_json::to_vec(&body).unwrap_or_default())
            }
            ConnectPolicy::Jwt(policy) => {
                // The last value wins, as with every connect param.
                let token = request
                    .params
                    .iter()
                    .rev()
                    .find(|(name, _)| *name == policy.param)
                    .map(|(_, value)| value.as_str())
                    .or(request.auth_token)
                    .ok_or(TokenError::Missing);
                match token.and_then(|t| policy.verifier.verify(t)) {
                    Ok(claims) => ConnectDecision::Accept(Identity {
                        socket_id: Some(policy.socket_id.replace("{user_id}", &claims.sub)),
                        user_id: Some(claims.sub),
                        channels: claims.channels.map(|c| c.entries()),
                    }),
                    Err(error) => {
                        tracing::debug!(peer = %request.peer, %error, "connect refused");
                        ConnectDecision::Refuse {
                            status: 403,
                            reason: error.to_string(),
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{mint_hs256, now_secs, Claims};

    fn request<'a>(
        params: &'a [(String, String)],
        auth_token: Option<&'a str>,
    ) -> ConnectRequest<'a> {
        ConnectRequest {
            params,
            auth_token,
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn jwt_policy_reads_the_param_then_the_subprotocol() {
        let policy = ConnectPolicy::jwt(
            Verifier::from_secret("dev-secret", None).unwrap(),
            "token".into(),
            DEFAULT_SOCKET_ID.into(),
        );
        let claims = Claims {
            sub: "alice".into(),
            channels: None,
            exp: Some(now_secs() + 60),
            nbf: None,
            iat: None,
        };
        let token = mint_hs256("dev-secret", &claims);
        let alice = ConnectDecision::Accept(Identity {
            user_id: Some("alice".into()),
            channels: None,
            socket_id: Some("user_socket:alice".into()),
        });
        let params = vec![("token".to_string(), token.clone())];
        assert_eq!(policy.decide(&request(&params, None), &[]), alice);
        assert_eq!(policy.decide(&request(&[], Some(&token)), &[]), alice);
        let refused = |reason: &str| ConnectDecision::Refuse {
            status: 403,
            reason: reason.into(),
        };
        assert_eq!(
            policy.decide(&request(&[], None), &[]),
            refused("missing token")
        );
        let bad = vec![("token".to_string(), "x.y.z".to_string())];
        assert_eq!(
            policy.decide(&request(&bad, Some(&token)), &[]),
            refused("malformed token")
        );
        assert_eq!(
            ConnectPolicy::Open.decide(&request(&[], None), &[]),
            ConnectDecision::Accept(Identity::default())
        );
    }
}
