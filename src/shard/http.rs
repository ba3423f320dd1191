//! The HTTP half of a shard: parse a request, then either upgrade it to a
//! Phoenix WebSocket or answer it (publish API, health, metrics).

use std::sync::Arc;

use super::connection::{ClientSession, PendingTransport, PendingUpgrade, Phase, WebSocketSession};
use super::Shard;
use crate::api::{self, ApiReply};
use crate::connect::{ConnectDecision, ConnectRequest, DisconnectTarget, Identity};
use crate::limits::EventLimiter;
use crate::metrics::ShardMetrics;
use crate::protocol::channels::ChannelSet;
use crate::protocol::message::Serializer;
use crate::protocol::vsn::negotiate;
use crate::transport::frame::FrameDecoder;
use crate::transport::handshake::{
    negotiate_subprotocols, validate_upgrade, write_switching_protocols,
};
use crate::transport::http::{
    parse_request, write_json_error, write_response, HttpLimits, Parsed, Request,
};
use crate::transport::query::{is_plain_string, last_value, parse_pairs};

/// Largest request head accepted (request line and headers).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// What handling a request did to the connection.
pub(super) enum Handled {
    /// Answered; keep reading requests.
    KeepAlive,
    /// Answered; close after the response is flushed.
    Close,
    /// Upgraded to a WebSocket; what follows is frames.
    Upgraded,
    /// The upgrade (or long-poll session) waits for the backend's connect
    /// decision.
    Parked,
    /// A long-poll session holds the request open.
    Held,
    /// The request belongs to a long-poll session on shard `owner`: the
    /// connection moves there with it.
    HandOver {
        /// The owning shard.
        owner: usize,
        /// The request, parsed.
        request: Request,
    },
}

impl Handled {
    /// A request answered in place: keep the connection for the next one,
    /// or close it after the answer.
    pub(super) fn answered(keep_alive: bool) -> Handled {
        if keep_alive {
            Handled::KeepAlive
        } else {
            Handled::Close
        }
    }
}

impl Shard {
    /// Parses at most one request from `input` and handles it; returns the
    /// bytes consumed (0 when the request is incomplete).
    pub(super) fn process_http(&mut self, key: usize, input: &mut [u8]) -> usize {
        let limits = HttpLimits {
            max_header_bytes: MAX_HEADER_BYTES,
            max_body_bytes: self.config.api.max_body_size,
        };
        let (request, consumed) = match parse_request(input, &limits) {
            Ok(Parsed::Incomplete) => return 0,
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            Err(error) => {
                let mut out = Vec::new();
                write_json_error(&mut out, error.status(), &error.to_string(), false);
                self.send_bytes(key, &out);
                self.start_closing(key);
                return input.len();
            }
        };
        match self.handle_request(key, request) {
            Handled::KeepAlive | Handled::Upgraded | Handled::Parked | Handled::Held => consumed,
            Handled::Close => {
                self.start_closing(key);
                input.len()
            }
            Handled::HandOver { owner, request } => {
                self.hand_over(key, owner, request, &input[consumed..]);
                input.len()
            }
        }
    }

    /// Dispatches one request by path.
    pub(super) fn handle_request(&mut self, key: usize, request: Request) -> Handled {
        let keep_alive = request.keep_alive && self.stop_deadline.is_none();
        if self.config.socket.websocket && request.path == self.config.websocket_path() {
            return self.upgrade(key, &request);
        }
        if self.config.socket.longpoll.enabled && request.path == self.config.longpoll_path() {
            return self.longpoll_request(key, request);
        }
        let mut out = Vec::new();
        if request.path.starts_with("/api/")
            && !api::authorized(
                self.config.api.api_key.as_deref(),
                request.header("authorization"),
            )
        {
            let body = br#"{"error":"unauthorized","reason":"missing or wrong API key (Authorization: Bearer <api_key>)"}"#;
            write_response(
                &mut out,
                401,
                &[
                    ("content-type", "application/json"),
                    ("www-authenticate", "Bearer"),
                ],
                body,
                keep_alive,
            );
            self.send_bytes(key, &out);
            return Handled::answered(keep_alive);
        }
        match api::route(&request.method, &request.path) {
            Some(api::Endpoint::Broadcast) => {
                match api::parse_broadcasts(&request.body, self.config.api.max_batch) {
                    Ok(broadcasts) => {
                        let count = broadcasts.len();
                        for broadcast in broadcasts {
                            // Phoenix's forced disconnect: `disconnect` sent to
                            // a socket id closes that socket's connections.
                            if broadcast.event() == "disconnect" {
                                let target =
                                    DisconnectTarget::SocketId(broadcast.topic().to_string());
                                self.disconnect_everywhere(target);
                            }
                            self.publish(Arc::new(broadcast));
                        }
                        let body = format!(r#"{{"ok":true,"count":{count}}}"#);
                        write_response(
                            &mut out,
                            200,
                            &[("content-type", "application/json")],
                            body.as_bytes(),
                            keep_alive,
                        );
                    }
                    Err(error) => write_json_error(&mut out, 400, &error.to_string(), keep_alive),
                }
            }
            Some(api::Endpoint::Disconnect) => match api::parse_disconnect(&request.body) {
                Ok(target) => {
                    self.disconnect_everywhere(target);
                    write_response(
                        &mut out,
                        200,
                        &[("content-type", "application/json")],
                        br#"{"ok":true}"#,
                        keep_alive,
                    );
                }
                Err(error) => write_json_error(&mut out, 400, &error.to_string(), keep_alive),
            },
            Some(api::Endpoint::Presence) => {
                let params = parse_pairs(&request.query);
                match last_value(&params, "topic").filter(|t| !t.is_empty()) {
                    Some(topic) => {
                        let state = self.replica.state_json(topic);
                        write_response(
                            &mut out,
                            200,
                            &[("content-type", "application/json")],
                            &state,
                            keep_alive,
                        );
                    }
                    None => write_json_error(
                        &mut out,
                        400,
                        "the topic query parameter is required: /api/presence?topic=room:lobby",
                        keep_alive,
                    ),
                }
            }
            Some(api::Endpoint::Health) => write_response(
                &mut out,
                200,
                &[("content-type", "application/json")],
                br#"{"status":"ok"}"#,
                keep_alive,
            ),
            Some(api::Endpoint::Metrics) => {
                let text = crate::metrics::render_prometheus(&self.metrics);
                write_response(
                    &mut out,
                    200,
                    &[("content-type", "text/plain; version=0.0.4")],
                    text.as_bytes(),
                    keep_alive,
                );
            }
            None => match api::reply_for_unknown(&request.method, &request.path) {
                ApiReply::MethodNotAllowed { allow } => {
                    let body = br#"{"error":"method not allowed"}"#;
                    write_response(
                        &mut out,
                        405,
                        &[("content-type", "application/json"), ("allow", allow)],
                        body,
                        keep_alive,
                    );
                }
                ApiReply::NotFound => write_json_error(&mut out, 404, "not found", keep_alive),
            },
        }
        self.send_bytes(key, &out);
        Handled::answered(keep_alive)
    }

    /// The WebSocket upgrade, in Phoenix's order (spec §2.4): method,
    /// subprotocols (auth token), connect (vsn, policy), upgrade headers.
    fn upgrade(&mut self, key: usize, request: &Request) -> Handled {
        let refuse = |shard: &mut Shard, status: u16, reason: &str| {
            let mut out = Vec::new();
            write_json_error(&mut out, status, reason, false);
            shard.send_bytes(key, &out);
            Handled::Close
        };
        if self.stop_deadline.is_some() {
            return refuse(self, 503, "server shutting down");
        }
        if request.method != "GET" {
            return refuse(self, 400, "websocket upgrade requires GET");
        }
        let subprotocols = match negotiate_subprotocols(request) {
            Ok(s) => s,
            Err(error) => return refuse(self, error.status(), &error.to_string()),
        };
        let params = parse_pairs(&request.query);
        // `vsn[]=x` decodes to a list in Phoenix, which refuses it; it must not
        // count as an absent vsn (which would mean V1).
        if !is_plain_string(&params, "vsn") {
            return refuse(self, 403, "vsn must be a string");
        }
        let serializer = match negotiate(last_value(&params, "vsn")) {
            Ok(s) => s,
            Err(error) => return refuse(self, 403, &error.to_string()),
        };
        let Some(peer) = self.connections.get(key).map(|c| c.peer) else {
            return Handled::Close;
        };
        let connect = ConnectRequest {
            params: &params,
            auth_token: subprotocols.auth_token.as_deref(),
            peer,
        };
        // Phoenix checks the origin before running connect/3.
        if !self
            .config
            .origin
            .allows(request.header("origin"), request.header("host"))
        {
            return refuse(self, 403, "origin not allowed");
        }
        let identity = match self.config.connect.decide(&connect, &request.headers) {
            ConnectDecision::Accept(identity) => identity,
            ConnectDecision::Refuse { status, reason } => return refuse(self, status, &reason),
            ConnectDecision::Ask(body) => {
                // Only well-formed upgrades are worth a backend call.
                let accept_key = match validate_upgrade(request) {
                    Ok(k) => k,
                    Err(error) => return refuse(self, error.status(), &error.to_string()),
                };
                let pending = PendingUpgrade {
                    serializer,
                    transport: PendingTransport::WebSocket {
                        accept_key,
                        subprotocol: subprotocols.selected.clone(),
                    },
                };
                if let Some(conn) = self.connections.get_mut(key) {
                    conn.phase = Phase::Authorizing(Box::new(pending));
                }
                self.ask_connect(key, body);
                return Handled::Parked;
            }
        };
        let accept_key = match validate_upgrade(request) {
            Ok(k) => k,
            Err(error) => return refuse(self, error.status(), &error.to_string()),
        };
        self.complete_upgrade(
            key,
            serializer,
            &accept_key,
            subprotocols.selected.as_deref(),
            identity,
        );
        Handled::Upgraded
    }

    /// Answers 101 and turns the connection into a WebSocket.
    pub(super) fn complete_upgrade(
        &mut self,
        key: usize,
        serializer: Serializer,
        accept_key: &str,
        subprotocol: Option<&str>,
        identity: Identity,
    ) {
        let mut out = Vec::with_capacity(256);
        write_switching_protocols(&mut out, accept_key, subprotocol);
        self.send_bytes(key, &out);
        let session = WebSocketSession {
            decoder: FrameDecoder::new(self.config.socket.max_message_size),
            client: ClientSession {
                serializer,
                channels: ChannelSet::new(self.config.socket.max_channels),
                identity: (identity != Identity::default()).then(|| Box::new(identity)),
                limiter: self
                    .event_limit
                    .map(|limit| EventLimiter::new(limit, self.clock_ms())),
            },
        };
        if let Some(conn) = self.connections.get_mut(key) {
            conn.phase = Phase::WebSocket(session);
        }
        ShardMetrics::add(&self.metrics[self.id].websocket_upgrades, 1);
    }

    /// Refuses a parked upgrade: a JSON error, then close.
    pub(super) fn refuse_upgrade(&mut self, key: usize, status: u16, reason: &str) {
        let mut out = Vec::new();
        write_json_error(&mut out, status, reason, false);
        self.send_bytes(key, &out);
        self.start_closing(key);
    }
}
