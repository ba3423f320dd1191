//! The long-poll component: sessions' HTTP requests, the polls answered at
//! the end of a turn, and the session timers.
//!
//! A session is a client like a WebSocket connection (same channels,
//! identity, limits, fan-out and hooks); its sink is a
//! [`LongPollSession`](crate::longpoll::session::LongPollSession), whose
//! state machine lives in `longpoll/session.rs`. This file is its I/O:
//! requests arrive on connections, held requests are answered on them.
//!
//! Requests of one session may arrive on any shard (`SO_REUSEPORT`); the
//! token names the owner, and a shard that is not the owner hands the
//! connection over (`handover.rs`).

use std::time::Instant;

use super::clients::Sink;
use super::connection::{ConnectionKey, PendingTransport, PendingUpgrade, Phase};
use super::forward::Forwarding;
use super::http::Handled;
use super::Shard;
use crate::admission::{admit, Admission, AdmissionRequest};
use crate::connect::Identity;
use crate::fanout::broadcast::NodeId;
use crate::fanout::topics::ClientId;
use crate::longpoll::session::{HeldRequest, LongPollSession};
use crate::longpoll::token::{SessionAddress, TokenSigner};
use crate::longpoll::wire::{self, PostedFrame};
use crate::metrics::ShardMetrics;
use crate::protocol::decode::{decode_binary, decode_text};
use crate::protocol::message::Serializer;
use crate::transport::http::{write_json_error, Request};
use crate::transport::query::{last_value, parse_pairs};

/// The header that carries the session token (Phoenix ≥ 1.8.10; wins over
/// the query parameter).
const TOKEN_HEADER: &str = "x-phoenix-longpoll-token";
/// The header that carries the application's auth token on long-poll.
const AUTH_TOKEN_HEADER: &str = "x-phoenix-authtoken";

/// The long-poll component's state.
#[derive(Debug)]
pub struct LongPoll {
    /// Signs and verifies session tokens.
    signer: TokenSigner,
    /// Sessions with a held poll that got messages this turn: answered at
    /// the end of the turn, so one answer carries the whole turn.
    pub(super) ready: Vec<ClientId>,
    /// Requests forwarded to and from other cluster nodes.
    pub(super) forwarding: Forwarding,
}

impl LongPoll {
    /// The component, signing with `signer`.
    pub fn new(signer: TokenSigner) -> LongPoll {
        LongPoll {
            signer,
            ready: Vec::new(),
            forwarding: Forwarding::default(),
        }
    }
}

impl Shard {
    /// Handles a request to `{socket.path}/longpoll`.
    pub(super) fn longpoll_request(
        &mut self,
        key: ConnectionKey,
        request: Request,
        now: Instant,
    ) -> Handled {
        let keep_alive = request.keep_alive && self.stop_deadline.is_none();
        let mut out = Vec::new();
        let handled = Handled::answered(keep_alive);
        match request.method.as_str() {
            "OPTIONS" => {
                let asked = request.header("access-control-request-headers");
                wire::write_preflight(&mut out, asked, keep_alive);
                self.send_bytes(key, &out);
                return handled;
            }
            "GET" | "POST" => {}
            _ => {
                wire::write_bad_method(&mut out);
                self.send_bytes(key, &out);
                return Handled::Close;
            }
        }
        // Every request, not only the one opening a session: a page of
        // another origin must not drive someone's session either.
        if !self
            .config
            .origin
            .allows(request.header("origin"), request.header("host"))
        {
            wire::write_status_reason(&mut out, 403, "origin not allowed", keep_alive);
            self.send_bytes(key, &out);
            return handled;
        }
        let mut params = parse_pairs(&request.query);
        // The header wins; otherwise the *last* `token` parameter, since
        // apps often pass their own `token` in the socket params.
        let from_header = request.header(TOKEN_HEADER).map(str::to_string);
        let token = from_header
            .clone()
            .or_else(|| last_value(&params, "token").map(str::to_string));
        let signed = token
            .as_deref()
            .and_then(|t| self.longpoll.signer.verify_any(t));
        let own = self.longpoll.signer.instance();
        if let Some((instance, address)) = signed {
            if instance != own && self.distributor.cluster().is_some() {
                // Another node's session (the nodes share the secret).
                let owner = NodeId(instance);
                return self.forward_longpoll(key, owner, address.shard, request, now);
            }
        }
        let address = signed
            .filter(|(instance, _)| *instance == own)
            .map(|(_, address)| address);
        if let Some(address) = address {
            let owner = usize::from(address.shard);
            if owner != self.id && owner < self.peers.len() {
                ShardMetrics::add(&self.metrics().longpoll_handovers, 1);
                return Handled::HandOver { owner, request };
            }
        }
        let session = address.and_then(|a| self.live_session(a));
        match (request.method.as_str(), session) {
            ("GET", Some(id)) => self.poll(key, id, keep_alive, now),
            ("POST", Some(id)) => self.post(key, id, &request, keep_alive, now),
            ("POST", None) => {
                wire::write_status(&mut out, 410, keep_alive);
                self.send_bytes(key, &out);
                handled
            }
            _ => {
                // No valid session: this GET opens one. A stale session
                // token in the query (after a restart, or an expiry) is not
                // one of the application's connect params.
                if from_header.is_none() {
                    let stale = params.iter().rposition(|(k, v)| {
                        k == "token" && TokenSigner::looks_like_session_token(v)
                    });
                    if let Some(stale) = stale {
                        params.remove(stale);
                    }
                }
                self.open_session(key, &request, &params, keep_alive, now)
            }
        }
    }

    /// The session an address names, if it is alive on this shard.
    fn live_session(&mut self, address: SessionAddress) -> Option<ClientId> {
        let id = ClientId(address.key as usize);
        let client = self.clients.get_current(id, address.serial)?;
        client.longpoll().map(|_| id)
    }

    /// A GET without a valid session: admission decides, as for a
    /// WebSocket upgrade; admitted → `410` with a new token.
    fn open_session(
        &mut self,
        key: ConnectionKey,
        request: &Request,
        params: &[(String, String)],
        keep_alive: bool,
        now: Instant,
    ) -> Handled {
        let Some(peer) = self.connections.get(key).map(|c| c.peer) else {
            return Handled::Close;
        };
        let admission = admit(
            &self.config,
            self.shard_state(),
            &AdmissionRequest {
                params,
                auth_token: request.header(AUTH_TOKEN_HEADER),
                peer,
                headers: &request.headers,
            },
        );
        let mut out = Vec::new();
        match admission {
            Admission::Accept {
                serializer,
                identity,
            } => {
                let token = self.create_session(serializer, identity, now);
                wire::write_poll(&mut out, 410, &token, std::iter::empty(), keep_alive);
            }
            Admission::Ask { serializer, body } => {
                let pending = PendingUpgrade {
                    serializer,
                    transport: PendingTransport::LongPoll { keep_alive },
                };
                self.park_for_connect(key, pending, body);
                return Handled::Parked;
            }
            Admission::Refuse(refusal) if refusal.status == 403 => {
                wire::write_status_reason(&mut out, 403, &refusal.reason, keep_alive);
            }
            Admission::Refuse(refusal) => {
                if refusal.status == 503 && refusal.reason == "server full" {
                    ShardMetrics::add(&self.metrics().refused, 1);
                }
                write_json_error(&mut out, refusal.status, &refusal.reason, false);
                self.send_bytes(key, &out);
                return Handled::Close;
            }
        }
        self.send_bytes(key, &out);
        Handled::answered(keep_alive)
    }

    /// Creates a session on this shard; returns its token.
    fn create_session(
        &mut self,
        serializer: Serializer,
        identity: Identity,
        now: Instant,
    ) -> String {
        let (id, serial) = self.clients.next_id();
        let token = self.longpoll.signer.sign(SessionAddress {
            shard: self.id as u16,
            key: id.0 as u32,
            serial,
        });
        let session = self.new_client_session(serializer, identity, now);
        let sink = Sink::LongPoll(Box::new(LongPollSession::new(token.clone(), now)));
        let inserted = self.clients.insert(session, sink);
        debug_assert_eq!(inserted, (id, serial), "the token names the session");
        ShardMetrics::add(&self.metrics().longpoll_sessions, 1);
        token
    }

    /// Answers a long-poll GET whose session waited for the backend's
    /// connect decision: `410` + token when admitted, `403` when refused.
    pub(super) fn finish_session_connect(
        &mut self,
        key: ConnectionKey,
        serializer: Serializer,
        keep_alive: bool,
        admitted: Result<Identity, (u16, String)>,
        now: Instant,
    ) {
        let keep_alive = keep_alive && self.stop_deadline.is_none();
        let mut out = Vec::new();
        match admitted {
            Ok(identity) => {
                let token = self.create_session(serializer, identity, now);
                wire::write_poll(&mut out, 410, &token, std::iter::empty(), keep_alive);
            }
            Err((403, reason)) => wire::write_status_reason(&mut out, 403, &reason, keep_alive),
            Err((status, reason)) => write_json_error(&mut out, status, &reason, keep_alive),
        }
        self.send_bytes(key, &out);
        if keep_alive {
            self.process_input(key, &mut [], now);
        } else {
            self.start_closing(key, now);
        }
    }

    /// A poll: answered at once if messages wait, else held until one
    /// arrives or the window ends.
    fn poll(
        &mut self,
        key: ConnectionKey,
        id: ClientId,
        keep_alive: bool,
        now: Instant,
    ) -> Handled {
        let Some(held) = self.hold(key, keep_alive, now) else {
            return Handled::Close;
        };
        let Some(session) = self.clients.get_mut(id).and_then(|c| c.longpoll()) else {
            return Handled::Close;
        };
        let replaced = session.hold_poll(held, now);
        let answer_now = session.has_messages();
        if let Some(previous) = replaced {
            // A newer poll replaces a held one, which is answered now.
            self.answer_held_poll(id, previous, 204, now);
        }
        if answer_now {
            self.answer_poll(id, now);
        }
        Handled::Held
    }

    /// Puts the connection's request on hold; the hold's description.
    fn hold(&mut self, key: ConnectionKey, keep_alive: bool, now: Instant) -> Option<HeldRequest> {
        let window = self.config.socket.longpoll.window();
        let conn = self.connections.get_mut(key)?;
        conn.phase = Phase::Held;
        Some(HeldRequest {
            connection: key,
            serial: conn.serial,
            deadline: now + window,
            keep_alive,
        })
    }

    /// A POST: each line is dispatched in order. A line that waits for the
    /// backend holds the POST until it is answered (or `408`).
    fn post(
        &mut self,
        key: ConnectionKey,
        id: ClientId,
        request: &Request,
        keep_alive: bool,
        now: Instant,
    ) -> Handled {
        let lines = wire::split_post(request.header("content-type"), &request.body);
        let Some(held) = self.hold(key, keep_alive, now) else {
            return Handled::Close;
        };
        let Some(session) = self.clients.get_mut(id).and_then(|c| c.longpoll()) else {
            return Handled::Close;
        };
        if let Some(older) = session.hold_post(held, lines) {
            self.answer_post(older, 408, now);
        }
        self.continue_post(id, now);
        Handled::Held
    }

    /// Dispatches the held POST's lines until one waits for the backend;
    /// answers the POST when none are left.
    pub(super) fn continue_post(&mut self, id: ClientId, now: Instant) {
        loop {
            let Some(client) = self.clients.get_mut(id) else {
                return;
            };
            let serializer = client.session.serializer;
            let Some(next) = client.longpoll().and_then(LongPollSession::next_line) else {
                return;
            };
            let (held, line) = match next {
                Ok(line) => line,
                Err(held) => return self.answer_post(held, 200, now),
            };
            ShardMetrics::add(&self.metrics().client_messages, 1);
            let max = self.config.socket.max_message_size;
            let decoded = match line {
                PostedFrame::Text(text) | PostedFrame::Binary(text) if text.len() > max => {
                    Err("message too big")
                }
                PostedFrame::Text(mut text) => {
                    decode_text(serializer, &mut text).map_err(|_| "malformed message")
                }
                PostedFrame::Binary(bytes) if serializer == Serializer::V2 => {
                    decode_binary(&bytes).map_err(|_| "malformed message")
                }
                PostedFrame::Binary(_) | PostedFrame::Malformed => Err("malformed message"),
            };
            match decoded {
                Ok(message) => self.on_message(id, message, now),
                Err(reason) => {
                    // As a WebSocket closes (1011, or 1009 when too big), the
                    // session ends; the client reconnects.
                    ShardMetrics::add(&self.metrics().protocol_closes, 1);
                    if let Some(session) = self.clients.get_mut(id).and_then(|c| c.longpoll()) {
                        session.post = None;
                    }
                    self.answer_held(held, now, |out, keep_alive| {
                        wire::write_status_reason(out, 410, reason, keep_alive)
                    });
                    return self.end_session(id, reason, now);
                }
            }
        }
    }

    /// End of turn: the polls of sessions that got messages this turn are
    /// answered, each with everything buffered by now.
    pub(super) fn longpoll_end_of_turn(&mut self, now: Instant) {
        if self.longpoll.ready.is_empty() {
            return;
        }
        let mut ready = std::mem::take(&mut self.longpoll.ready);
        for id in ready.drain(..) {
            self.answer_poll(id, now);
        }
        self.longpoll.ready = ready;
    }

    /// A session whose client does not poll its messages away fast enough:
    /// ended like a slow WebSocket (its next poll gets `410`).
    pub(super) fn end_slow_session(&mut self, id: ClientId, now: Instant) {
        ShardMetrics::add(&self.metrics().slow_consumer_closes, 1);
        self.mark_ending(id, crate::lifecycle::event::EndReason::SlowConsumer);
        self.end_session(id, "slow consumer", now);
    }

    /// Timers: polls past their window get `204`, POSTs past it `408`, and
    /// sessions nobody polled for 1.5 windows end, as do sessions whose
    /// buffer stayed over the send buffer limit too long.
    pub(super) fn longpoll_tick(&mut self, now: Instant) {
        let timeout = self.config.socket.longpoll.session_timeout();
        let slow_after =
            std::time::Duration::from_millis(self.config.socket.slow_consumer_timeout_ms);
        let due: Vec<_> = self
            .clients
            .iter()
            .filter_map(|(id, client)| match &client.sink {
                Sink::LongPoll(session) => Some((id, session.due(now, timeout, slow_after))),
                Sink::WebSocket(_) => None,
            })
            .filter(|(_, due)| due.poll || due.post || due.expired || due.slow)
            .collect();
        for (id, due) in due {
            if due.poll {
                if let Some(held) = self
                    .clients
                    .get_mut(id)
                    .and_then(|c| c.longpoll())
                    .and_then(|s| s.take_poll(now))
                {
                    self.answer_held_poll(id, held, 204, now);
                }
            }
            if due.post {
                if let Some((held, _)) = self
                    .clients
                    .get_mut(id)
                    .and_then(|c| c.longpoll())
                    .and_then(|s| s.post.take())
                {
                    self.answer_post(held, 408, now);
                }
            }
            if due.expired {
                self.mark_ending(id, crate::lifecycle::event::EndReason::Timeout);
                self.end_session(id, "session expired", now);
            } else if due.slow {
                self.end_slow_session(id, now);
            }
        }
    }

    /// Answers the held poll if messages wait: `200` with all of them.
    fn answer_poll(&mut self, id: ClientId, now: Instant) {
        let Some(session) = self.clients.get_mut(id).and_then(|c| c.longpoll()) else {
            return;
        };
        if !session.has_messages() {
            session.ready = false;
            return;
        }
        if let Some(held) = session.take_poll(now) {
            self.answer_held_poll(id, held, 200, now);
        }
    }

    /// Answers a poll: `200` with every buffered message, or a status
    /// (`204`, `410`) with none.
    fn answer_held_poll(&mut self, id: ClientId, held: HeldRequest, status: u16, now: Instant) {
        if !self.is_held(held) {
            // The client went away: the messages wait for its next poll.
            return;
        }
        let keep_alive = held.keep_alive && self.stop_deadline.is_none();
        let Some(session) = self.clients.get_mut(id).and_then(|c| c.longpoll()) else {
            return;
        };
        let mut out = Vec::new();
        if status == 200 {
            wire::write_poll(
                &mut out,
                200,
                &session.token,
                session.buffer.texts(),
                keep_alive,
            );
            session.buffer.clear();
            session.backlog_since = None;
        } else {
            wire::write_poll(
                &mut out,
                status,
                &session.token,
                std::iter::empty(),
                keep_alive,
            );
        }
        self.release_held(held, &out, keep_alive, now);
    }

    /// Answers a held POST with `{"status": status}`.
    fn answer_post(&mut self, held: HeldRequest, status: u16, now: Instant) {
        self.answer_held(held, now, |out, keep_alive| {
            wire::write_status(out, status, keep_alive)
        });
    }

    /// Answers a held request whose connection is still there with what
    /// `write` makes (given whether the connection stays open).
    pub(super) fn answer_held(
        &mut self,
        held: HeldRequest,
        now: Instant,
        write: impl FnOnce(&mut Vec<u8>, bool),
    ) {
        if !self.is_held(held) {
            return;
        }
        let keep_alive = held.keep_alive && self.stop_deadline.is_none();
        let mut out = Vec::new();
        write(&mut out, keep_alive);
        self.release_held(held, &out, keep_alive, now);
    }

    /// Whether the held request's connection is still there, holding it.
    fn is_held(&self, held: HeldRequest) -> bool {
        self.connections
            .get(held.connection)
            .is_some_and(|c| c.serial == held.serial && matches!(c.phase, Phase::Held))
    }

    /// Sends the answer of a held request and lets its connection read the
    /// next request (or close).
    fn release_held(&mut self, held: HeldRequest, answer: &[u8], keep_alive: bool, now: Instant) {
        if let Some(conn) = self.connections.get_mut(held.connection) {
            conn.phase = Phase::http();
            // The keep-alive idle clock starts when the answer leaves.
            conn.last_active = now;
        }
        self.send_bytes(held.connection, answer);
        if keep_alive {
            // A request pipelined behind the held one is handled now.
            self.process_input(held.connection, &mut [], now);
        } else {
            self.start_closing(held.connection, now);
        }
    }

    /// Ends a session: its channels end (presence leaves), a held poll gets
    /// `410` (the client reconnects with a new session), a held POST too.
    pub(super) fn end_session(&mut self, id: ClientId, reason: &str, now: Instant) {
        if self
            .clients
            .get_mut(id)
            .and_then(|c| c.longpoll())
            .is_none()
        {
            return;
        }
        let Some(client) = self.drop_client(id) else {
            return;
        };
        let Sink::LongPoll(mut session) = client.sink else {
            return;
        };
        tracing::debug!(shard = self.id, reason, "long-poll session ended");
        ShardMetrics::sub(&self.metrics().longpoll_sessions, 1);
        if let Some(held) = session.poll.take() {
            self.answer_held(held, now, |out, keep_alive| {
                wire::write_status_reason(out, 410, reason, keep_alive)
            });
        }
        if let Some((held, _)) = session.post.take() {
            self.answer_post(held, 410, now);
        }
    }
}
