//! Who may open a client, for both transports: one sans-IO decision.
//!
//! A WebSocket upgrade and a long-poll GET that opens a session are the same
//! question — may this client connect, with which serializer, as whom — and
//! get the same answer in the same order, Phoenix's: the server's own state
//! first (shutting down, full), then the `Origin` check (before connect/3),
//! then `vsn`, then the connect policy. The transports only render the
//! answer (a 101 or a `410` + token; a JSON error or a poll status).

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::config::Config;
use crate::connect::{ConnectDecision, ConnectRequest, Identity};
use crate::protocol::message::Serializer;
use crate::protocol::vsn::negotiate;
use crate::transport::query::{is_plain_string, last_value};

/// What a client presented when asking to connect.
#[derive(Debug)]
pub struct AdmissionRequest<'a> {
    /// Decoded query parameters, in order (`vsn` included).
    pub params: &'a [(String, String)],
    /// The application's auth token (WebSocket subprotocol, or the long-poll
    /// `X-Phoenix-AuthToken` header).
    pub auth_token: Option<&'a str>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The request's headers (`Origin`, `Host`, and what a webhook forwards).
    pub headers: &'a [(String, String)],
}

impl AdmissionRequest<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The shard's side of the question.
#[derive(Debug, Clone, Copy)]
pub struct ShardState {
    /// Whether the shard is draining for shutdown.
    pub shutting_down: bool,
    /// Clients (WebSocket connections and long-poll sessions) it holds.
    pub clients: usize,
}

/// Why a client may not connect: the HTTP status and the reason given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 403 for the client's fault, 503 for the server's state.
    pub status: u16,
    /// Said in the JSON body (and the logs).
    pub reason: Cow<'static, str>,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Open the client.
    Accept {
        /// The serializer `vsn` asked for.
        serializer: Serializer,
        /// Who the policy says it is.
        identity: Identity,
    },
    /// The backend decides: ask it with this body, and open or refuse when
    /// it answers.
    Ask {
        /// The serializer `vsn` asked for.
        serializer: Serializer,
        /// The body of `POST {webhook.url}/connect`.
        body: Vec<u8>,
    },
    /// Do not open it.
    Refuse(Refusal),
}

/// Decides whether `request` may open a client on a shard in `shard` state.
pub fn admit(config: &Config, shard: ShardState, request: &AdmissionRequest<'_>) -> Admission {
    if shard.shutting_down {
        return Admission::Refuse(Refusal::new(503, "server shutting down"));
    }
    if shard.clients >= config.server.max_connections_per_shard {
        return Admission::Refuse(Refusal::new(503, "server full"));
    }
    if !config
        .origin
        .allows(request.header("origin"), request.header("host"))
    {
        return Admission::Refuse(Refusal::new(403, "origin not allowed"));
    }
    // `vsn[]=x` decodes to a list in Phoenix, which refuses it; it must not
    // count as an absent vsn (which would mean V1).
    if !is_plain_string(request.params, "vsn") {
        return Admission::Refuse(Refusal::new(403, "vsn must be a string"));
    }
    let serializer = match negotiate(last_value(request.params, "vsn")) {
        Ok(serializer) => serializer,
        Err(error) => return Admission::Refuse(Refusal::new(403, error.to_string())),
    };
    let connect = ConnectRequest {
        params: request.params,
        auth_token: request.auth_token,
        peer: request.peer,
    };
    match config.connect.decide(&connect, request.headers) {
        ConnectDecision::Accept(identity) => Admission::Accept {
            serializer,
            identity,
        },
        ConnectDecision::Ask(body) => Admission::Ask { serializer, body },
        ConnectDecision::Refuse { status, reason } => {
            Admission::Refuse(Refusal::new(status, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("[server]\nmax_connections_per_shard = 2\n{extra}");
        Config::parse(&text, "test").unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ask(
        config: &Config,
        shard: ShardState,
        params: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> Admission {
        let params = pairs(params);
        let headers = pairs(headers);
        let request = AdmissionRequest {
            params: &params,
            auth_token: None,
            peer: "10.0.0.1:5000".parse().unwrap(),
            headers: &headers,
        };
        admit(config, shard, &request)
    }

    const OPEN: ShardState = ShardState {
        shutting_down: false,
        clients: 0,
    };

    fn refused(status: u16, reason: &str) -> Admission {
        Admission::Refuse(Refusal::new(status, reason.to_string()))
    }

    #[test]
    fn accepts_with_the_negotiated_serializer() {
        let open = config("");
        assert_eq!(
            ask(&open, OPEN, &[("vsn", "2.0.0")], &[]),
            Admission::Accept {
                serializer: Serializer::V2,
                identity: Identity::default()
            }
        );
        assert_eq!(
            ask(&open, OPEN, &[], &[]),
            Admission::Accept {
                serializer: Serializer::V1,
                identity: Identity::default()
            }
        );
    }

    #[test]
    fn checks_in_order_shard_then_origin_then_vsn_then_policy() {
        let strict = config("[socket]\ncheck_origin = [\"https://app.example.com\"]\n[socket.auth]\nmode = \"jwt\"\nsecret = \"0123456789abcdef\"");
        let evil = [("origin", "https://evil.example.com")];
        let bad_vsn = [("vsn", "9.9.9")];
        let draining = ShardState {
            shutting_down: true,
            clients: 0,
        };
        let full = ShardState {
            shutting_down: false,
            clients: 2,
        };
        assert_eq!(
            ask(&strict, draining, &bad_vsn, &evil),
            refused(503, "server shutting down")
        );
        assert_eq!(
            ask(&strict, full, &bad_vsn, &evil),
            refused(503, "server full")
        );
        assert_eq!(
            ask(&strict, OPEN, &bad_vsn, &evil),
            refused(403, "origin not allowed")
        );
        let good = [("origin", "https://app.example.com")];
        assert!(matches!(
            ask(&strict, OPEN, &bad_vsn, &good),
            Admission::Refuse(Refusal { status: 403, .. })
        ));
        assert_eq!(
            ask(&strict, OPEN, &[("vsn[]", "2.0.0")], &good),
            refused(403, "vsn must be a string")
        );
        assert_eq!(
            ask(&strict, OPEN, &[("vsn", "2.0.0")], &good),
            refused(403, "missing token")
        );
    }

    #[test]
    fn a_webhook_policy_asks() {
        let hooked = config(
            "[webhook]\nurl = \"http://127.0.0.1:9/hooks\"\n[socket.auth]\nmode = \"webhook\"",
        );
        assert!(matches!(
            ask(&hooked, OPEN, &[("vsn", "2.0.0")], &[]),
            Admission::Ask {
                serializer: Serializer::V2,
                ..
            }
        ));
    }
}
