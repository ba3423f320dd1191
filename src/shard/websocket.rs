//! The WebSocket transport on a shard: the upgrade, frames in (decoded and
//! handed to the channel layer as client messages), control frames, and the
//! close — including the slow-consumer close of a connection whose unsent
//! output outgrew its limit.

use std::time::Instant;

use tungstenite::protocol::frame::coding::{Control, OpCode};

use super::clients::{ClientSession, Sink};
use super::connection::{ConnectionKey, PendingTransport, PendingUpgrade, Phase, WebSocketPhase};
use super::http::Handled;
use super::outbox::FlushStats;
use super::Shard;
use crate::admission::{admit, Admission, AdmissionRequest, ShardState};
use crate::connect::Identity;
use crate::limits::EventLimiter;
use crate::metrics::ShardMetrics;
use crate::protocol::channels::ChannelSet;
use crate::protocol::decode::{decode_binary, decode_text};
use crate::protocol::message::Serializer;
use crate::transport::frame::{close_frame, write_frame, Decoded, FrameDecoder, WsEvent};
use crate::transport::handshake::{
    negotiate_subprotocols, validate_upgrade, write_switching_protocols,
};
use crate::transport::http::{write_json_error, write_response, Request};
use crate::transport::query::parse_pairs;

/// Close code for a connection whose unsent output exceeded its limit
/// (policy violation: the client does not read fast enough).
pub const CLOSE_SLOW_CONSUMER: u16 = 1008;
/// Close code for a client that ignores its rate limit.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close code of a forced disconnect and of the idle timeout (Phoenix ≥ 1.8.8).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code of a shutdown: clients reconnect, to the successor.
pub const CLOSE_SERVICE_RESTART: u16 = 1012;

impl Shard {
    /// The WebSocket upgrade, in Phoenix's order: method, subprotocols (the
    /// auth token), admission (shard state, origin, vsn, connect policy),
    /// then the upgrade headers.
    pub(super) fn upgrade(
        &mut self,
        key: ConnectionKey,
        request: &Request,
        now: Instant,
    ) -> Handled {
        let refuse = |shard: &mut Shard, status: u16, reason: &str| {
            let mut out = Vec::new();
            write_json_error(&mut out, status, reason, false);
            shard.send_bytes(key, &out);
            Handled::Close
        };
        if request.method != "GET" {
            return refuse(self, 400, "websocket upgrade requires GET");
        }
        let subprotocols = match negotiate_subprotocols(request) {
            Ok(s) => s,
            Err(error) => return refuse(self, error.status(), &error.to_string()),
        };
        let Some(peer) = self.connections.get(key).map(|c| c.peer) else {
            return Handled::Close;
        };
        let params = parse_pairs(&request.query);
        let admission = admit(
            &self.config,
            self.shard_state(),
            &AdmissionRequest {
                params: &params,
                auth_token: subprotocols.auth_token.as_deref(),
                peer,
                headers: &request.headers,
            },
        );
        if let Admission::Refuse(refusal) = &admission {
            return refuse(self, refusal.status, &refusal.reason);
        }
        // Only well-formed upgrades are worth a backend call.
        let accept_key = match validate_upgrade(request) {
            Ok(k) => k,
            Err(error) => {
                let mut out = Vec::new();
                let body = serde_json::json!({ "error": error.to_string() }).to_string();
                let mut headers = vec![("content-type", "application/json")];
                headers.extend_from_slice(error.headers());
                write_response(&mut out, error.status(), &headers, body.as_bytes(), false);
                self.send_bytes(key, &out);
                return Handled::Close;
            }
        };
        match admission {
            Admission::Accept {
                serializer,
                identity,
            } => {
                let subprotocol = subprotocols.selected.as_deref();
                self.complete_upgrade(key, serializer, &accept_key, subprotocol, identity, now);
                Handled::Upgraded
            }
            Admission::Ask { serializer, body } => {
                let pending = PendingUpgrade {
                    serializer,
                    transport: PendingTransport::WebSocket {
                        accept_key,
                        subprotocol: subprotocols.selected,
                    },
                };
                self.park_for_connect(key, pending, body);
                Handled::Parked
            }
            Admission::Refuse(_) => Handled::Close,
        }
    }

    /// What admission needs to know of this shard.
    pub(super) fn shard_state(&self) -> ShardState {
        ShardState {
            shutting_down: self.stop_deadline.is_some(),
            clients: self.clients.len(),
        }
    }

    /// Answers 101 and turns the connection into a WebSocket client.
    pub(super) fn complete_upgrade(
        &mut self,
        key: ConnectionKey,
        serializer: Serializer,
        accept_key: &str,
        subprotocol: Option<&str>,
        identity: Identity,
        now: Instant,
    ) {
        let mut out = Vec::with_capacity(256);
        write_switching_protocols(&mut out, accept_key, subprotocol);
        self.send_bytes(key, &out);
        let session = self.new_client_session(serializer, identity, now);
        let (client, _) = self.clients.insert(session, Sink::WebSocket(key));
        if let Some(conn) = self.connections.get_mut(key) {
            conn.phase = Phase::WebSocket(WebSocketPhase {
                decoder: FrameDecoder::new(self.config.socket.max_message_size),
                client,
            });
        }
        ShardMetrics::add(&self.metrics().websocket_upgrades, 1);
    }

    /// A client's channel-layer state, the same for both transports.
    pub(super) fn new_client_session(
        &self,
        serializer: Serializer,
        identity: Identity,
        now: Instant,
    ) -> ClientSession {
        ClientSession {
            serializer,
            channels: ChannelSet::new(self.config.socket.max_channels),
            identity: (identity != Identity::default()).then(|| Box::new(identity)),
            limiter: self
                .event_limit
                .map(|limit| EventLimiter::new(limit, self.clock_ms(now))),
            ending: None,
            lifecycle: false,
        }
    }

    /// Refuses a parked upgrade: a JSON error, then close.
    pub(super) fn refuse_upgrade(
        &mut self,
        key: ConnectionKey,
        status: u16,
        reason: &str,
        now: Instant,
    ) {
        let mut out = Vec::new();
        write_json_error(&mut out, status, reason, false);
        self.send_bytes(key, &out);
        self.start_closing(key, now);
    }

    /// Decodes at most one frame from `input` and acts on it; returns the
    /// bytes consumed (0 when the frame is incomplete).
    pub(super) fn process_websocket(
        &mut self,
        key: ConnectionKey,
        input: &mut [u8],
        now: Instant,
    ) -> usize {
        let Some(conn) = self.connections.get_mut(key) else {
            return input.len();
        };
        let Phase::WebSocket(ws) = &mut conn.phase else {
            return input.len();
        };
        let client = ws.client;
        let decoded = match ws.decoder.decode(input) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::debug!(shard = self.id, %error, "closing on a bad frame");
                ShardMetrics::add(&self.metrics().protocol_closes, 1);
                self.close_websocket(key, error.close_code(), &error.to_string(), now);
                return input.len();
            }
        };
        match decoded {
            Decoded::Incomplete => 0,
            Decoded::Skipped { consumed } => consumed,
            Decoded::Event { event, consumed } => {
                self.on_frame(key, client, event, now);
                consumed
            }
        }
    }

    fn on_frame(
        &mut self,
        key: ConnectionKey,
        client: super::ClientId,
        event: WsEvent,
        now: Instant,
    ) {
        let Some(serializer) = self.clients.get(client).map(|c| c.session.serializer) else {
            return;
        };
        let decoded = match event {
            WsEvent::Text(mut text) => decode_text(serializer, &mut text),
            // A V1 socket has no binary form; Phoenix feeds the bytes to the
            // JSON decoder, which usually fails (→ 1011), so do the same.
            WsEvent::Binary(mut bytes) => match serializer {
                Serializer::V2 => decode_binary(&bytes),
                Serializer::V1 => decode_text(serializer, &mut bytes),
            },
            WsEvent::Ping(payload) => {
                let mut frame = Vec::with_capacity(payload.len() + 2);
                write_frame(&mut frame, OpCode::Control(Control::Pong), &payload);
                return self.send_bytes(key, &frame);
            }
            WsEvent::Pong => return,
            WsEvent::Close { code, .. } => {
                // Echo the peer's code (RFC 6455 §5.5.1), or an empty close.
                let mut frame = Vec::new();
                match code {
                    Some(code) => frame = close_frame(code, ""),
                    None => write_frame(&mut frame, OpCode::Control(Control::Close), &[]),
                }
                self.send_bytes(key, &frame);
                return self.start_closing(key, now);
            }
        };
        ShardMetrics::add(&self.metrics().client_messages, 1);
        match decoded {
            Ok(message) => self.on_message(client, message, now),
            Err(error) => {
                tracing::debug!(shard = self.id, %error, "closing on an undecodable message");
                ShardMetrics::add(&self.metrics().protocol_closes, 1);
                self.close_websocket(key, error.close_code(), "malformed message", now);
            }
        }
    }

    /// A WebSocket went over its send buffer limit. The limit is on what the
    /// *kernel* will not take, so first hand the stream what it accepts now:
    /// a reader that keeps up is under the limit again at once. One that is
    /// not starts (or continues) a backlog: it is a slow consumer only if it
    /// stays over the limit for `socket.slow_consumer_timeout_ms` (checked
    /// on the tick), or at once if it passes `socket.send_buffer_max`.
    pub(super) fn on_backlog(&mut self, key: ConnectionKey, now: Instant) {
        let Some(conn) = self.connections.get(key) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        if conn.backlog_since.is_some() {
            // Already known not to drain: no write to try again until the
            // socket says it is writable; only the hard cap matters now.
            if conn.outbox.queued_bytes() > self.config.socket.send_buffer_max {
                self.close_slow_consumer(key, now);
            }
            return;
        }
        let mut stats = FlushStats::default();
        let flushed = self.connections.flush_one(key, &mut stats);
        self.count_flush(stats);
        if flushed.is_err() {
            return self.remove(key);
        }
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        let queued = conn.outbox.queued_bytes();
        if queued <= self.config.socket.send_buffer_limit {
            return;
        }
        if queued > self.config.socket.send_buffer_max {
            return self.close_slow_consumer(key, now);
        }
        conn.backlog_since.get_or_insert(now);
    }

    /// Closes a slow consumer: what it has not started to receive is dropped
    /// (memory stays bounded), so its 1008 close frame comes right after
    /// what the kernel already holds; the connection then stays open for a
    /// grace period, so a client that resumes reading still sees the 1008.
    pub(super) fn close_slow_consumer(&mut self, key: ConnectionKey, now: Instant) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        if let Some(client) = conn.client() {
            self.mark_ending(client, crate::lifecycle::event::EndReason::SlowConsumer);
        }
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        conn.outbox.discard_unstarted();
        conn.outbox
            .push_owned(&close_frame(CLOSE_SLOW_CONSUMER, "slow consumer"));
        ShardMetrics::add(&self.metrics[self.id].slow_consumer_closes, 1);
        tracing::debug!(shard = self.id, peer = %conn.peer, "closing a slow consumer");
        self.start_closing_within(key, now + super::SLOW_CONSUMER_GRACE);
    }

    /// Sends a close frame and moves the connection to `Closing`.
    pub(super) fn close_websocket(
        &mut self,
        key: ConnectionKey,
        code: u16,
        reason: &str,
        now: Instant,
    ) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        conn.outbox.push_owned(&close_frame(code, reason));
        self.start_closing(key, now);
    }
}
