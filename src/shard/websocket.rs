//! The WebSocket half of a shard: frames in, Phoenix messages through the
//! channel state machine, actions carried out — and the fan-out of
//! broadcasts into subscribers' outboxes.

use std::sync::Arc;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

use super::connection::{Phase, ANONYMOUS};
use super::hooks::HookKind;
use super::inbox::ShardMessage;
use super::longpoll::{client_of, is_session};
use super::outbox::FlushStats;
use super::Shard;
use crate::connect::DisconnectTarget;
use crate::fanout::broadcast::{Broadcast, Sender};
use crate::fanout::topics::LONGPOLL_TAG;
use crate::limits::Verdict;
use crate::metrics::ShardMetrics;
use crate::protocol::channels::{Action, ChannelSet, Outgoing};
use crate::protocol::decode::{decode_binary, decode_text};
use crate::protocol::encode::encode_text;
use crate::protocol::message::{ClientMessage, Serializer};
use crate::transport::frame::{close_frame, write_frame, Decoded, WsEvent};

/// Close code for a connection whose unsent output exceeded its limit
/// (policy violation: the client does not read fast enough).
pub const CLOSE_SLOW_CONSUMER: u16 = 1008;
/// Close code for a client that ignores its rate limit.
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;
/// Close code of a forced disconnect (Phoenix ≥ 1.8.8).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for input the server cannot process (Phoenix's crash code).
pub const CLOSE_INTERNAL: u16 = 1011;

impl Shard {
    /// Decodes at most one frame from `input` and acts on it; returns the
    /// bytes consumed (0 when the frame is incomplete).
    pub(super) fn process_websocket(&mut self, key: usize, input: &mut [u8]) -> usize {
        let Some(conn) = self.connections.get_mut(key) else {
            return input.len();
        };
        let Phase::WebSocket(session) = &mut conn.phase else {
            return input.len();
        };
        let decoded = match session.decoder.decode(input) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::debug!(shard = self.id, %error, "closing on a bad frame");
                ShardMetrics::add(&self.metrics[self.id].protocol_closes, 1);
                self.close_websocket(key, error.close_code(), &error.to_string());
                return input.len();
            }
        };
        match decoded {
            Decoded::Incomplete => 0,
            Decoded::Skipped { consumed } => consumed,
            Decoded::Event { event, consumed } => {
                self.on_event(key, event);
                consumed
            }
        }
    }

    fn on_event(&mut self, key: usize, event: WsEvent) {
        let Some(session) = self.connections.get_mut(key).and_then(|c| c.websocket()) else {
            return;
        };
        let serializer = session.client.serializer;
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
                return self.start_closing(key);
            }
        };
        ShardMetrics::add(&self.metrics[self.id].client_messages, 1);
        match decoded {
            Ok(message) => self.on_message(key, message),
            Err(error) => {
                tracing::debug!(shard = self.id, %error, "closing on an undecodable message");
                ShardMetrics::add(&self.metrics[self.id].protocol_closes, 1);
                self.close_websocket(key, CLOSE_INTERNAL, "malformed message");
            }
        }
    }

    /// Runs one client message through the client's channels; `key` names
    /// a WebSocket connection or (tagged) a long-poll session.
    pub(super) fn on_message(&mut self, key: usize, message: ClientMessage) {
        let me = Sender {
            shard: self.id,
            connection: key,
        };
        let mut actions = std::mem::take(&mut self.actions);
        let mut verdict = Verdict::Allow;
        let now_ms = self.clock_ms();
        if let Some(session) = client_of(&mut self.connections, &mut self.sessions, key) {
            if let (Some(limiter), Some(limit)) = (&mut session.limiter, self.event_limit) {
                if ChannelSet::is_client_event(&message) {
                    verdict = limiter.check(limit, now_ms);
                }
            }
            if verdict != Verdict::Allow {
                session.channels.refuse_rate_limited(&message, &mut actions);
            } else {
                session.channels.handle(
                    message,
                    &self.config.routes,
                    session.identity.as_deref().unwrap_or(&ANONYMOUS),
                    me,
                    &mut actions,
                );
            }
        }
        for action in actions.drain(..) {
            self.apply(key, action);
        }
        self.actions = actions;
        match verdict {
            Verdict::Allow => {}
            Verdict::Refuse => ShardMetrics::add(&self.metrics[self.id].rate_limited, 1),
            Verdict::Close => {
                ShardMetrics::add(&self.metrics[self.id].rate_limited, 1);
                self.close_client(key, CLOSE_POLICY_VIOLATION, "rate limit exceeded");
            }
        }
    }

    /// Carries out one action of the channel state machine.
    pub(super) fn apply(&mut self, key: usize, action: Action) {
        match action {
            Action::Send(outgoing) => self.send_message(key, &outgoing),
            Action::AskJoin(ask) => self.ask_hook(key, HookKind::Join, ask),
            Action::AskEvent(ask) => self.ask_hook(key, HookKind::Event, ask),
            Action::Subscribe { topic } => {
                let Some(session) = self.client_mut(key) else {
                    return;
                };
                let serializer = session.serializer;
                let slot = self.topics.subscribe(&topic, serializer, key);
                if let Some(session) = self.client_mut(key) {
                    session.channels.set_slot(&topic, slot);
                }
                ShardMetrics::add(&self.metrics[self.id].channels, 1);
            }
            Action::Unsubscribe { topic, slot } => {
                let Some(serializer) = self.client_mut(key).map(|s| s.serializer) else {
                    return;
                };
                self.unsubscribe(key, &topic, serializer, slot);
            }
            Action::Track(track) => self.track_presence(key, track),
            Action::UpdatePresence(update) => self.update_presence(key, update),
            Action::Publish(broadcast) => self.publish(Arc::new(broadcast)),
        }
    }

    /// Encodes a message for one client in its serializer and queues it.
    pub(super) fn send_message(&mut self, key: usize, message: &Outgoing) {
        let Some(session) = self.client_mut(key) else {
            return;
        };
        let serializer = session.serializer;
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        encode_text(
            &mut body,
            serializer,
            &message.join_ref,
            &message.msg_ref,
            &message.topic,
            &message.event,
            &message.payload,
        );
        if is_session(key) {
            self.buffer_for_session(key, body.clone());
            self.scratch = body;
            return;
        }
        let mut frame = Vec::with_capacity(body.len() + 10);
        write_frame(&mut frame, OpCode::Data(Data::Text), &body);
        self.scratch = body;
        self.send_bytes(key, &frame);
    }

    /// Queues bytes for one connection, enforcing the send buffer limit.
    pub(super) fn send_bytes(&mut self, key: usize, bytes: &[u8]) {
        let limit = self.config.socket.send_buffer_limit;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        conn.outbox.push_owned(bytes);
        let over = conn.outbox.queued_bytes() > limit && !conn.is_closing();
        self.schedule_flush(key);
        if over {
            self.relieve_or_close(key);
        }
    }

    /// A forced disconnect: closes the targeted connections on every shard
    /// (this one at once, the others through their queues).
    pub(super) fn disconnect_everywhere(&mut self, target: DisconnectTarget) {
        let target = Arc::new(target);
        self.disconnect_local(&target);
        for (shard, inbox) in self.peers.iter().enumerate() {
            if shard != self.id {
                inbox.send(ShardMessage::Disconnect(target.clone()));
            }
        }
    }

    /// Closes local WebSockets the target names with 1001, which the JS
    /// client reconnects after (Phoenix ≥ 1.8.8), and ends the long-poll
    /// sessions it names. A scan: forced disconnects are rare administrative
    /// events, not worth an index.
    pub(super) fn disconnect_local(&mut self, target: &DisconnectTarget) {
        let keys: Vec<usize> = self
            .connections
            .iter_mut()
            .filter_map(|(key, conn)| {
                let session = conn.websocket()?;
                session
                    .client
                    .identity()
                    .is_target_of(target)
                    .then_some(key)
            })
            .chain(self.sessions.iter().filter_map(|(key, session)| {
                let named = session.client.identity().is_target_of(target);
                named.then_some(key | LONGPOLL_TAG)
            }))
            .collect();
        for key in keys {
            self.close_client(key, CLOSE_GOING_AWAY, "disconnected");
        }
    }

    /// Closes a client: a WebSocket with `code`, a long-poll session by
    /// ending it (its next poll gets `410`, and the client reconnects).
    pub(super) fn close_client(&mut self, key: usize, code: u16, reason: &str) {
        if is_session(key) {
            self.end_session(key, reason);
        } else {
            self.close_websocket(key, code, reason);
        }
    }

    /// Publishes a broadcast from this shard: local subscribers now, other
    /// shards through their inboxes.
    pub(super) fn publish(&mut self, broadcast: Arc<Broadcast>) {
        ShardMetrics::add(&self.metrics[self.id].broadcasts, 1);
        self.deliver(&broadcast);
        for (shard, inbox) in self.peers.iter().enumerate() {
            if shard != self.id {
                inbox.send(ShardMessage::Broadcast(broadcast.clone()));
            }
        }
    }

    /// The fan-out: queue one shared frame per local subscriber. No encoding
    /// and no copying per subscriber — one `Arc` clone and one queue push.
    pub(super) fn deliver(&mut self, broadcast: &Broadcast) {
        let Some(set) = self.topics.get(broadcast.topic()) else {
            return;
        };
        let limit = self.config.socket.send_buffer_limit;
        let exclude = broadcast
            .exclude()
            .filter(|sender| sender.shard == self.id)
            .map(|sender| sender.connection);
        let mut delivered = 0u64;
        let mut skipped = 0u64;
        for serializer in [Serializer::V1, Serializer::V2] {
            let subscribers = set.of(serializer);
            if subscribers.is_empty() {
                continue;
            }
            let Some(frame) = broadcast.frame_for(serializer) else {
                skipped += subscribers.len() as u64;
                continue;
            };
            for (_, &key) in subscribers.iter() {
                if Some(key) == exclude {
                    continue;
                }
                let Some(conn) = self.connections.get_mut(key) else {
                    debug_assert!(false, "subscriber {key} has no connection");
                    continue;
                };
                conn.outbox.push_shared(frame.clone());
                if conn.outbox.queued_bytes() > limit {
                    self.slow_consumers.push(key);
                }
                if !conn.flush_scheduled {
                    conn.flush_scheduled = true;
                    self.flush_list.push(key);
                }
                delivered += 1;
            }
        }
        if !set.longpoll().is_empty() && broadcast.is_binary() {
            // A binary frame has no long-poll form.
            let excluded = set.longpoll().iter().any(|(_, &k)| Some(k) == exclude);
            skipped += (set.longpoll().len() - usize::from(excluded)) as u64;
        } else if !set.longpoll().is_empty() {
            // Long-poll sessions take the same encoded frame, whose body is
            // the JSON text a poll answer carries.
            for (_, &key) in set.longpoll().iter() {
                if Some(key) == exclude {
                    continue;
                }
                let Some(session) = self.sessions.get_mut(key & !LONGPOLL_TAG) else {
                    debug_assert!(false, "subscriber {key} has no session");
                    continue;
                };
                let Some(frame) = broadcast.frame_for(session.client.serializer) else {
                    continue;
                };
                session.buffer.push_shared(frame.clone());
                if session.buffer.bytes() > limit {
                    self.slow_consumers.push(key);
                }
                if session.poll.is_some() && !session.ready {
                    session.ready = true;
                    self.ready_sessions.push(key & !LONGPOLL_TAG);
                }
                delivered += 1;
            }
        }
        let metrics = &self.metrics[self.id];
        ShardMetrics::add(&metrics.deliveries, delivered);
        if skipped > 0 {
            ShardMetrics::add(&metrics.binary_skipped_v1, skipped);
        }
        // Closing unsubscribes, which needs the topic table the loop above
        // was borrowing; hence the deferred list.
        let slow = std::mem::take(&mut self.slow_consumers);
        for &key in &slow {
            if is_session(key) {
                self.end_slow_session(key);
            } else {
                self.relieve_or_close(key);
            }
        }
        self.slow_consumers = slow;
        self.slow_consumers.clear();
    }

    /// A connection went over its send buffer limit. The limit is on what
    /// the *kernel* will not take, so first hand the socket what it accepts
    /// now (a fast reader with a burst bigger than the limit is not slow);
    /// if it is still over, it is a slow consumer: what it has not started
    /// to receive is dropped (memory stays bounded) and a 1008 close follows.
    fn relieve_or_close(&mut self, key: usize) {
        let limit = self.config.socket.send_buffer_limit;
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        let mut stats = FlushStats::default();
        let flushed = conn.outbox.flush(&mut conn.socket, &mut stats);
        let metrics = &self.metrics[self.id];
        ShardMetrics::add(&metrics.bytes_written, stats.bytes);
        ShardMetrics::add(&metrics.write_calls, stats.calls);
        if flushed.is_err() {
            return self.remove(key);
        }
        if conn.outbox.queued_bytes() <= limit {
            return;
        }
        conn.outbox.discard_unstarted();
        ShardMetrics::add(&self.metrics[self.id].slow_consumer_closes, 1);
        tracing::debug!(shard = self.id, peer = %conn.peer, "closing a slow consumer");
        self.close_websocket(key, CLOSE_SLOW_CONSUMER, "slow consumer");
    }

    /// Sends a close frame and moves the connection to `Closing`.
    pub(super) fn close_websocket(&mut self, key: usize, code: u16, reason: &str) {
        let Some(conn) = self.connections.get_mut(key) else {
            return;
        };
        if conn.is_closing() {
            return;
        }
        conn.outbox.push_owned(&close_frame(code, reason));
        self.start_closing(key);
    }
}
