//! The long-poll half of a shard (spec §9): sessions, the requests that
//! carry them, and handing a request to the shard that owns its session.
//!
//! A session is a client of the channel layer like a WebSocket connection:
//! its key in the channel layer is its slab key tagged with
//! [`LONGPOLL_TAG`], so joins, replies, fan-out and hooks reach it through
//! the same code. What differs is the output: messages are buffered on the
//! session and leave in the answer to the next poll.
//!
//! Requests of one session may arrive on any shard (`SO_REUSEPORT`); the
//! token names the owner, and a shard that is not the owner hands the
//! connection over (`handover.rs`).

use std::collections::VecDeque;
use std::time::Instant;

use slab::Slab;

use super::connection::{ClientSession, Connection, Phase};
use super::http::Handled;
use super::Shard;
use crate::connect::{ConnectDecision, ConnectRequest, Identity};
use crate::fanout::topics::LONGPOLL_TAG;
use crate::limits::EventLimiter;
use crate::longpoll::session::{HeldRequest, MessageBuffer};
use crate::longpoll::token::{SessionAddress, TokenSigner};
use crate::longpoll::wire::{self, PostedFrame};
use crate::metrics::ShardMetrics;
use crate::protocol::channels::ChannelSet;
use crate::protocol::decode::{decode_binary, decode_text};
use crate::protocol::message::Serializer;
use crate::protocol::vsn::negotiate;
use crate::transport::http::{write_json_error, Request};
use crate::transport::query::{is_plain_string, last_value, parse_pairs};

/// The header that carries the session token (Phoenix ≥ 1.8.10; wins over
/// the query parameter).
const TOKEN_HEADER: &str = "x-phoenix-longpoll-token";
/// The header that carries the application's auth token on long-poll.
const AUTH_TOKEN_HEADER: &str = "x-phoenix-authtoken";

/// Whether a channel-layer key names a long-poll session.
#[inline]
pub fn is_session(key: usize) -> bool {
    key & LONGPOLL_TAG != 0
}

/// The channel-layer client behind `key`: a WebSocket connection's session,
/// or (tagged key) a long-poll session.
pub fn client_of<'a>(
    connections: &'a mut Slab<Connection>,
    sessions: &'a mut Slab<LongPollSession>,
    key: usize,
) -> Option<&'a mut ClientSession> {
    if is_session(key) {
        sessions.get_mut(key & !LONGPOLL_TAG).map(|s| &mut s.client)
    } else {
        connections
            .get_mut(key)
            .and_then(|c| c.websocket())
            .map(|ws| &mut ws.client)
    }
}

/// A long-poll session owned by this shard.
#[derive(Debug)]
pub struct LongPollSession {
    /// Its channels, identity and limits.
    pub client: ClientSession,
    /// Unique per shard: in the token, and in backend asks.
    pub serial: u64,
    /// The token naming this session.
    pub token: Box<str>,
    /// Messages waiting for the next poll.
    pub buffer: MessageBuffer,
    /// A poll waiting for messages.
    pub poll: Option<HeldRequest>,
    /// A POST whose lines wait for a backend answer, with the lines left.
    pub post: Option<(HeldRequest, VecDeque<PostedFrame>)>,
    /// Backend asks (hooked joins and events) not yet answered.
    pub pending_asks: u32,
    /// When the last poll arrived (the session ends 1.5 windows later).
    pub last_poll: Instant,
    /// Whether the session is on the shard's list of polls to answer.
    pub ready: bool,
}

impl Shard {
    /// Handles a request to `{socket.path}/longpoll`.
    pub(super) fn longpoll_request(&mut self, key: usize, request: Request) -> Handled {
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
        // apps often pass their own `token` in the socket params (§9.2).
        let from_header = request.header(TOKEN_HEADER).map(str::to_string);
        let token = from_header
            .clone()
            .or_else(|| last_value(&params, "token").map(str::to_string));
        let address = token.as_deref().and_then(|t| self.signer.verify(t));
        if let Some(address) = address {
            let owner = usize::from(address.shard);
            if owner != self.id && owner < self.peers.len() {
                return Handled::HandOver { owner, request };
            }
        }
        let session = address.and_then(|a| self.live_session(a));
        match (request.method.as_str(), session) {
            ("GET", Some(skey)) => self.poll(key, skey, keep_alive),
            ("POST", Some(skey)) => self.post(key, skey, &request, keep_alive),
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
                self.open_session(key, &request, &params, keep_alive)
            }
        }
    }

    /// The session an address names, if it is alive on this shard.
    fn live_session(&self, address: SessionAddress) -> Option<usize> {
        let key = address.key as usize;
        let session = self.sessions.get(key)?;
        (session.serial == address.serial).then_some(key)
    }

    /// A GET without a valid session: the connect policy decides, as for a
    /// WebSocket upgrade; admitted → `410` with a new token.
    fn open_session(
        &mut self,
        key: usize,
        request: &Request,
        params: &[(String, String)],
        keep_alive: bool,
    ) -> Handled {
        let mut out = Vec::new();
        let handled = Handled::answered(keep_alive);
        if self.stop_deadline.is_some() {
            write_json_error(&mut out, 503, "server shutting down", false);
            self.send_bytes(key, &out);
            return Handled::Close;
        }
        if self.connections.len() + self.sessions.len()
            > self.config.server.max_connections_per_shard
        {
            ShardMetrics::add(&self.metrics[self.id].refused, 1);
            write_json_error(&mut out, 503, "server full", false);
            self.send_bytes(key, &out);
            return Handled::Close;
        }
        let serializer = if is_plain_string(params, "vsn") {
            negotiate(last_value(params, "vsn")).ok()
        } else {
            None
        };
        let Some(serializer) = serializer else {
            wire::write_status_reason(&mut out, 403, "unsupported vsn", keep_alive);
            self.send_bytes(key, &out);
            return handled;
        };
        let Some(peer) = self.connections.get(key).map(|c| c.peer) else {
            return Handled::Close;
        };
        let connect = ConnectRequest {
            params,
            auth_token: request.header(AUTH_TOKEN_HEADER),
            peer,
        };
        match self.config.connect.decide(&connect, &request.headers) {
            ConnectDecision::Accept(identity) => {
                let token = self.create_session(serializer, identity);
                wire::write_poll(&mut out, 410, &token, std::iter::empty(), keep_alive);
                self.send_bytes(key, &out);
                handled
            }
            ConnectDecision::Refuse { reason, .. } => {
                wire::write_status_reason(&mut out, 403, &reason, keep_alive);
                self.send_bytes(key, &out);
                handled
            }
            ConnectDecision::Ask(body) => {
                let pending = super::connection::PendingUpgrade {
                    serializer,
                    transport: super::connection::PendingTransport::LongPoll { keep_alive },
                };
                if let Some(conn) = self.connections.get_mut(key) {
                    conn.phase = Phase::Authorizing(Box::new(pending));
                }
                self.ask_connect(key, body);
                Handled::Parked
            }
        }
    }

    /// Creates a session on this shard; returns its token.
    pub(super) fn create_session(&mut self, serializer: Serializer, identity: Identity) -> String {
        self.next_serial += 1;
        let serial = self.next_serial;
        let limiter = self
            .event_limit
            .map(|limit| EventLimiter::new(limit, self.clock_ms()));
        let entry = self.sessions.vacant_entry();
        let address = SessionAddress {
            shard: self.id as u16,
            key: entry.key() as u32,
            serial,
        };
        let token = self.signer.sign(address);
        entry.insert(LongPollSession {
            client: ClientSession {
                serializer,
                channels: ChannelSet::new(self.config.socket.max_channels),
                identity: (identity != Identity::default()).then(|| Box::new(identity)),
                limiter,
            },
            serial,
            token: token.clone().into_boxed_str(),
            buffer: MessageBuffer::default(),
            poll: None,
            post: None,
            pending_asks: 0,
            last_poll: self.now,
            ready: false,
        });
        ShardMetrics::add(&self.metrics[self.id].longpoll_sessions, 1);
        token
    }

    /// A poll: answer at once if messages wait, else hold the request until
    /// one arrives or the window ends.
    fn poll(&mut self, key: usize, skey: usize, keep_alive: bool) -> Handled {
        let Some(serial) = self.connections.get(key).map(|c| c.serial) else {
            return Handled::Close;
        };
        let deadline = self.now + self.config.socket.longpoll.window();
        let Some(session) = self.sessions.get_mut(skey) else {
            return Handled::Close;
        };
        session.last_poll = self.now;
        // A newer poll replaces a held one, which is answered now.
        let previous = session.poll.replace(HeldRequest {
            connection: key,
            serial,
            deadline,
            keep_alive,
        });
        if let Some(previous) = previous {
            self.answer_held_poll(skey, previous, 204);
        }
        if let Some(conn) = self.connections.get_mut(key) {
            conn.phase = Phase::Held;
        }
        let has_messages = self
            .sessions
            .get(skey)
            .is_some_and(|s| !s.buffer.is_empty());
        if has_messages {
            self.answer_poll(skey, 200);
        }
        Handled::Held
    }

    /// A POST: each line is dispatched in order. A line that waits for the
    /// backend holds the POST until it is answered (or `408`).
    fn post(&mut self, key: usize, skey: usize, request: &Request, keep_alive: bool) -> Handled {
        let Some(serial) = self.connections.get(key).map(|c| c.serial) else {
            return Handled::Close;
        };
        let frames = wire::split_post(request.header("content-type"), &request.body);
        let held = HeldRequest {
            connection: key,
            serial,
            deadline: self.now + self.config.socket.longpoll.window(),
            keep_alive,
        };
        let Some(session) = self.sessions.get_mut(skey) else {
            return Handled::Close;
        };
        // The JS client never overlaps POSTs; if another client does, the
        // older one is given up like a timed-out one.
        if let Some((older, _)) = session.post.replace((held, frames.into())) {
            self.answer_post(older, 408);
        }
        if let Some(conn) = self.connections.get_mut(key) {
            conn.phase = Phase::Held;
        }
        self.continue_post(skey);
        Handled::Held
    }

    /// Dispatches the held POST's lines until one waits for the backend;
    /// answers the POST when none are left.
    pub(super) fn continue_post(&mut self, skey: usize) {
        loop {
            let Some(session) = self.sessions.get_mut(skey) else {
                return;
            };
            if session.pending_asks > 0 {
                return; // resumed when the backend answers
            }
            let serializer = session.client.serializer;
            let Some((held, lines)) = session.post.as_mut() else {
                return;
            };
            let held = *held;
            let Some(frame) = lines.pop_front() else {
                session.post = None;
                return self.answer_post(held, 200);
            };
            ShardMetrics::add(&self.metrics[self.id].client_messages, 1);
            let max = self.config.socket.max_message_size;
            let decoded = match frame {
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
            let message = match decoded {
                Ok(message) => message,
                Err(reason) => {
                    // As a WebSocket closes (1011, or 1009 when too big), the
                    // session ends; the client reconnects.
                    ShardMetrics::add(&self.metrics[self.id].protocol_closes, 1);
                    if let Some(session) = self.sessions.get_mut(skey) {
                        session.post = None;
                    }
                    self.answer_held(held, |out, keep_alive| {
                        wire::write_status_reason(out, 410, reason, keep_alive)
                    });
                    return self.end_session(skey | LONGPOLL_TAG, reason);
                }
            };
            self.on_message(skey | LONGPOLL_TAG, message);
        }
    }

    /// Buffers a message made for one session (a reply or push).
    pub(super) fn buffer_for_session(&mut self, key: usize, text: Vec<u8>) {
        let skey = key & !LONGPOLL_TAG;
        let limit = self.config.socket.send_buffer_limit;
        let Some(session) = self.sessions.get_mut(skey) else {
            return;
        };
        session.buffer.push_owned(text);
        let over = session.buffer.bytes() > limit;
        if session.poll.is_some() && !session.ready {
            session.ready = true;
            self.ready_sessions.push(skey);
        }
        if over {
            self.end_slow_session(key);
        }
    }

    /// Answers the polls of sessions that received messages this turn: one
    /// answer carries everything buffered by the end of the turn.
    pub(super) fn answer_ready_polls(&mut self) {
        let ready = std::mem::take(&mut self.ready_sessions);
        for &skey in &ready {
            if let Some(session) = self.sessions.get_mut(skey) {
                session.ready = false;
                if session.poll.is_some() && !session.buffer.is_empty() {
                    self.answer_poll(skey, 200);
                }
            }
        }
        let mut ready = ready;
        ready.clear();
        self.ready_sessions = ready;
    }

    /// Answers the held poll: `200` with every buffered message, or a
    /// status (`204`, `410`) with none.
    pub(super) fn answer_poll(&mut self, skey: usize, status: u16) {
        let Some(held) = self.sessions.get_mut(skey).and_then(|s| s.poll.take()) else {
            return;
        };
        self.answer_held_poll(skey, held, status);
    }

    fn answer_held_poll(&mut self, skey: usize, held: HeldRequest, status: u16) {
        if !self.is_held(held) {
            // The client went away: the messages wait for its next poll.
            return;
        }
        let keep_alive = held.keep_alive && self.stop_deadline.is_none();
        let Some(session) = self.sessions.get_mut(skey) else {
            return;
        };
        // The session is alive as long as polls are held or arrive: the
        // expiry counts from the end of the last one.
        session.last_poll = self.now;
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
        } else {
            wire::write_poll(
                &mut out,
                status,
                &session.token,
                std::iter::empty(),
                keep_alive,
            );
        }
        self.release_held(held, &out, keep_alive);
    }

    /// Answers a held POST with `{"status": status}`.
    pub(super) fn answer_post(&mut self, held: HeldRequest, status: u16) {
        self.answer_held(held, |out, keep_alive| {
            wire::write_status(out, status, keep_alive)
        });
    }

    /// Answers a held request whose connection is still there with what
    /// `write` makes (given whether the connection stays open).
    fn answer_held(&mut self, held: HeldRequest, write: impl FnOnce(&mut Vec<u8>, bool)) {
        if !self.is_held(held) {
            return;
        }
        let keep_alive = held.keep_alive && self.stop_deadline.is_none();
        let mut out = Vec::new();
        write(&mut out, keep_alive);
        self.release_held(held, &out, keep_alive);
    }

    /// Whether the held request's connection is still there, holding it.
    fn is_held(&self, held: HeldRequest) -> bool {
        self.connections
            .get(held.connection)
            .is_some_and(|c| c.serial == held.serial && matches!(c.phase, Phase::Held))
    }

    /// Sends the answer of a held request and lets its connection read the
    /// next request (or close).
    fn release_held(&mut self, held: HeldRequest, answer: &[u8], keep_alive: bool) {
        if let Some(conn) = self.connections.get_mut(held.connection) {
            conn.phase = Phase::Http;
            // The keep-alive idle clock starts when the answer leaves.
            conn.last_active = self.now;
        }
        self.send_bytes(held.connection, answer);
        if keep_alive {
            // A request pipelined behind the held one is handled now.
            self.process_input(held.connection, &mut []);
        } else {
            self.start_closing(held.connection);
        }
    }

    /// Ends a session: its channels end (presence leaves), a held poll gets
    /// `410` (the client reconnects with a new session), a held POST too.
    pub(super) fn end_session(&mut self, key: usize, reason: &str) {
        let skey = key & !LONGPOLL_TAG;
        if !self.sessions.contains(skey) {
            return;
        }
        let mut session = self.sessions.remove(skey);
        tracing::debug!(shard = self.id, reason, "long-poll session ended");
        self.drop_client_subscriptions(key, &mut session.client);
        ShardMetrics::sub(&self.metrics[self.id].longpoll_sessions, 1);
        if let Some(held) = session.poll.take() {
            self.answer_held(held, |out, keep_alive| {
                wire::write_status_reason(out, 410, reason, keep_alive)
            });
        }
        if let Some((held, _)) = session.post.take() {
            self.answer_post(held, 410);
        }
    }

    /// A session whose buffer outgrew `socket.send_buffer_limit`: its
    /// client does not poll fast enough. Ended like a slow WebSocket.
    pub(super) fn end_slow_session(&mut self, key: usize) {
        if self.sessions.contains(key & !LONGPOLL_TAG) {
            ShardMetrics::add(&self.metrics[self.id].slow_consumer_closes, 1);
            self.end_session(key, "slow consumer");
        }
    }

    /// Timers: polls past their window get `204`, POSTs past it `408`, and
    /// sessions nobody polled for 1.5 windows end.
    pub(super) fn expire_sessions(&mut self) {
        let timeout = self.config.socket.longpoll.session_timeout();
        let mut polls = Vec::new();
        let mut posts = Vec::new();
        let mut gone = Vec::new();
        for (skey, session) in self.sessions.iter() {
            if session.poll.is_some_and(|p| self.now >= p.deadline) {
                polls.push(skey);
            }
            if session
                .post
                .as_ref()
                .is_some_and(|(p, _)| self.now >= p.deadline)
            {
                posts.push(skey);
            }
            if session.poll.is_none()
                && self.now.saturating_duration_since(session.last_poll) > timeout
            {
                gone.push(skey);
            }
        }
        for skey in polls {
            self.answer_poll(skey, 204);
        }
        for skey in posts {
            if let Some((held, _)) = self.sessions.get_mut(skey).and_then(|s| s.post.take()) {
                self.answer_post(held, 408);
            }
        }
        for skey in gone {
            self.end_session(skey | LONGPOLL_TAG, "session expired");
        }
    }
}

impl Shard {
    /// Answers a long-poll GET whose session waited for the backend's
    /// connect decision: `410` + token when admitted, `403` when refused.
    pub(super) fn finish_session_connect(
        &mut self,
        key: usize,
        serializer: Serializer,
        keep_alive: bool,
        admitted: Result<Identity, (u16, String)>,
    ) {
        let keep_alive = keep_alive && self.stop_deadline.is_none();
        let mut out = Vec::new();
        match admitted {
            Ok(identity) => {
                let token = self.create_session(serializer, identity);
                wire::write_poll(&mut out, 410, &token, std::iter::empty(), keep_alive);
            }
            Err((403, reason)) => wire::write_status_reason(&mut out, 403, &reason, keep_alive),
            Err((status, reason)) => write_json_error(&mut out, status, &reason, keep_alive),
        }
        self.send_bytes(key, &out);
        if keep_alive {
            self.process_input(key, &mut []);
        } else {
            self.start_closing(key);
        }
    }
}
