//! Who may connect: Cinder's stand-in for Phoenix's `connect/3`.
//!
//! The transport gathers what the client presented — query params, the auth
//! token from the `Sec-WebSocket-Protocol` header, the peer address — into a
//! [`ConnectRequest`], and a [`ConnectPolicy`] decides. The policy runs after
//! subprotocol negotiation and before the upgrade headers are validated,
//! which is Phoenix's order (spec §2.4).

use std::net::SocketAddr;

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
    /// The user the connection belongs to, when the policy knows it.
    pub user_id: Option<String>,
}

/// The outcome of a connect decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectDecision {
    /// Upgrade the connection.
    Accept(Identity),
    /// Answer with this HTTP status and reason, without upgrading.
    Refuse {
        /// HTTP status (403 in Phoenix).
        status: u16,
        /// Why, for the JSON body and the logs.
        reason: String,
    },
}

/// How connections are admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConnectPolicy {
    /// Everyone may connect; identity is anonymous. The default on a loopback
    /// bind, where only local processes can reach the server.
    #[default]
    Open,
}

impl ConnectPolicy {
    /// Decides whether `request` may connect.
    pub fn decide(&self, request: &ConnectRequest<'_>) -> ConnectDecision {
        match self {
            ConnectPolicy::Open => {
                tracing::trace!(
                    peer = %request.peer,
                    params = request.params.len(),
                    has_token = request.auth_token.is_some(),
                    "connect accepted (open policy)"
                );
                ConnectDecision::Accept(Identity::default())
            }
        }
    }
}
