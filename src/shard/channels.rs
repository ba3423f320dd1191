//! The channel layer on a shard: client messages through each client's
//! channel state machine, the actions carried out, broadcasts published and
//! delivered, clients closed. Nothing here knows which transport carries a
//! client: replies and broadcasts go to its sink ([`SinkSet`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::clients::{Sink, SinkSet};
use super::hooks::HookKind;
use super::inbox::ShardMessage;
use super::websocket::{CLOSE_GOING_AWAY, CLOSE_POLICY_VIOLATION};
use super::Shard;
use crate::connect::DisconnectTarget;
use crate::fanout::broadcast::{Broadcast, Content};
use crate::fanout::deliver::{deliver, Queued};
use crate::fanout::frame::FrameKind;
use crate::fanout::topics::{ClientId, SubscriptionSlot};
use crate::lifecycle::event::EndReason;
use crate::limits::Verdict;
use crate::metrics::ShardMetrics;
use crate::protocol::channels::{Action, ChannelSet, Outgoing};
use crate::protocol::encode::encode_text;
use crate::protocol::message::ClientMessage;

impl Shard {
    /// The sinks of this shard's clients, for one delivery or reply.
    pub(super) fn sinks(&mut self) -> SinkSet<'_> {
        SinkSet {
            clients: &mut self.clients,
            connections: &mut self.connections,
            ready_polls: &mut self.longpoll.ready,
            limit: self.config.socket.send_buffer_limit,
        }
    }

    /// Runs one client message through the client's channels.
    pub(super) fn on_message(&mut self, id: ClientId, message: ClientMessage, now: Instant) {
        let mut actions = std::mem::take(&mut self.scratch.actions);
        let mut verdict = Verdict::Allow;
        let now_ms = self.clock_ms(now);
        if let Some(client) = self.clients.get_mut(id) {
            let session = &mut client.session;
            if let (Some(limiter), Some(limit)) = (&mut session.limiter, self.event_limit) {
                if ChannelSet::is_client_event(&message) {
                    verdict = limiter.check(limit, now_ms);
                }
            }
            if verdict != Verdict::Allow {
                session.channels.refuse_rate_limited(&message, &mut actions);
            } else {
                let identity = session
                    .identity
                    .as_deref()
                    .unwrap_or(&super::clients::ANONYMOUS);
                session
                    .channels
                    .handle(message, &self.config.routes, identity, &mut actions);
            }
        }
        self.apply_all(id, &mut actions, now);
        self.scratch.actions = actions;
        match verdict {
            Verdict::Allow => {}
            Verdict::Refuse => ShardMetrics::add(&self.metrics().rate_limited, 1),
            Verdict::Close => {
                ShardMetrics::add(&self.metrics().rate_limited, 1);
                self.close_client(id, CLOSE_POLICY_VIOLATION, "rate limit exceeded", now);
            }
        }
    }

    /// Carries out a client's actions in order. A join's actions from its
    /// `Subscribe` on may wait: in a cluster for the node to listen to the
    /// topic (`subscriptions.rs`), on a history topic for the topic's
    /// position (`history.rs`).
    pub(super) fn apply_all(&mut self, id: ClientId, actions: &mut Vec<Action>, now: Instant) {
        let mut pending = actions.drain(..);
        while let Some(action) = pending.next() {
            if let Action::Subscribe { topic, .. } = &action {
                let topic = topic.clone();
                let mut rest = vec![action];
                rest.extend(pending.by_ref());
                let Some(rest) = self.hold_until_subscribed(&topic, id, rest, now) else {
                    return;
                };
                let Some(mut rest) = self.hold_for_history(&topic, id, rest, now) else {
                    return;
                };
                let subscribe = rest.remove(0);
                return self.apply_subscription(id, subscribe, rest, now);
            }
            self.apply(id, action, now);
        }
    }

    /// Carries out a join's `Subscribe` and the actions after it, once
    /// nothing holds them. A join left or replaced while it was held is
    /// dropped whole: its instance is gone.
    pub(super) fn apply_subscription(
        &mut self,
        id: ClientId,
        subscribe: Action,
        mut rest: Vec<Action>,
        now: Instant,
    ) {
        let Action::Subscribe {
            topic, join_ref, ..
        } = &subscribe
        else {
            debug_assert!(false, "a join's actions start with its Subscribe");
            return;
        };
        let awaited = self
            .clients
            .get(id)
            .is_some_and(|c| c.session.channels.awaits_subscription(topic, join_ref));
        if !awaited {
            return;
        }
        self.apply(id, subscribe, now);
        self.apply_all(id, &mut rest, now);
    }

    /// Carries out one action of the channel state machine.
    fn apply(&mut self, id: ClientId, action: Action, now: Instant) {
        match action {
            Action::Send(outgoing) => self.send_message(id, &outgoing, now),
            Action::AskJoin(ask) => self.ask_hook(id, HookKind::Join, ask, now),
            Action::AskEvent(ask) => self.ask_hook(id, HookKind::Event, ask, now),
            Action::Subscribe { topic, .. } => {
                let Some(kind) = self.clients.get(id).map(|c| c.session.frame_kind()) else {
                    return;
                };
                let slot = self.topics.subscribe(&topic, kind, id);
                if let Some(client) = self.clients.get_mut(id) {
                    client.session.channels.set_slot(&topic, slot);
                }
                if self.topics.get(&topic).is_some_and(|set| set.len() == 1) {
                    self.shard_occupancy(&topic, true);
                }
                ShardMetrics::add(&self.metrics().channels, 1);
                self.note_lifecycle_join(id, &topic);
            }
            Action::Unsubscribe {
                topic,
                slot,
                join_ref,
            } => {
                let Some(kind) = self.clients.get(id).map(|c| c.session.frame_kind()) else {
                    return;
                };
                self.unsubscribe(id, &topic, kind, slot);
                self.live_channel_ended(id, &topic, &join_ref, EndReason::Leave);
            }
            Action::Track(join) => self.track_presence(id, join, now),
            Action::UpdatePresence(update) => self.update_presence(id, update, now),
            Action::Publish {
                content,
                from_sender,
            } => self.publish(content, from_sender.then_some(id), now),
        }
    }

    /// Encodes a message for one client in its serializer and queues it.
    pub(super) fn send_message(&mut self, id: ClientId, message: &Outgoing, now: Instant) {
        let Some(serializer) = self.clients.get(id).map(|c| c.session.serializer) else {
            return;
        };
        let mut body = std::mem::take(&mut self.scratch.text);
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
        let queued = self.sinks().queue_text(id, &body);
        self.scratch.text = body;
        if queued == Queued::OverLimit {
            self.on_over_limit(id, now);
        }
    }

    /// Publishes a broadcast from this shard: the distributor sends it to
    /// the other shards (and the bus, to other nodes; the bridge, to a
    /// Phoenix app's), and local subscribers get it at once.
    pub(super) fn publish(&mut self, content: Content, sender: Option<ClientId>, now: Instant) {
        if let Some(bridge) = &self.bridge {
            bridge.publish(&content); // to the Phoenix app's nodes
        }
        if let Some(retention) = self.retention(content.topic()) {
            return self.publish_history(content, sender, retention, now);
        }
        ShardMetrics::add(&self.metrics().broadcasts, 1);
        let broadcast = self.distributor.publish(content, sender, unix_ms());
        self.deliver(&broadcast, now);
    }

    /// The fan-out on this shard: one shared frame queued per subscriber
    /// (see [`crate::fanout::deliver`]).
    pub(super) fn deliver(&mut self, broadcast: &Broadcast, now: Instant) {
        let Some(subscribers) = self.topics.get(broadcast.topic()) else {
            return;
        };
        let sender = broadcast.sender_on(self.distributor.node(), self.distributor.shard());
        let mut over_limit = std::mem::take(&mut self.scratch.over_limit);
        let mut sinks = SinkSet {
            clients: &mut self.clients,
            connections: &mut self.connections,
            ready_polls: &mut self.longpoll.ready,
            limit: self.config.socket.send_buffer_limit,
        };
        let delivery = deliver(broadcast, subscribers, sender, &mut sinks, &mut over_limit);
        let metrics = &self.metrics[self.id];
        ShardMetrics::add(&metrics.deliveries, delivery.delivered);
        if delivery.skipped > 0 {
            ShardMetrics::add(&metrics.binary_skipped_v1, delivery.skipped);
        }
        // Closing unsubscribes, which needs the topic table the delivery was
        // borrowing; hence the deferred list.
        for client in over_limit.drain(..) {
            self.on_over_limit(client, now);
        }
        self.scratch.over_limit = over_limit;
    }

    /// A client went over its send buffer limit.
    pub(super) fn on_over_limit(&mut self, id: ClientId, now: Instant) {
        match self.clients.get(id).map(|c| &c.sink) {
            Some(Sink::WebSocket(connection)) => {
                let connection = *connection;
                self.on_backlog(connection, now);
            }
            Some(Sink::LongPoll(_)) => {
                let max = self.config.socket.send_buffer_max;
                let Some(session) = self.clients.get_mut(id).and_then(|c| c.longpoll()) else {
                    return;
                };
                if session.buffer.bytes() > max {
                    self.end_slow_session(id, now);
                } else {
                    // Slow only if no poll drains it in time (the tick checks).
                    session.backlog_since.get_or_insert(now);
                }
            }
            None => {}
        }
    }

    /// Closes a client: a WebSocket with `code`, a long-poll session by
    /// ending it (its next poll gets `410`, and the client reconnects).
    pub(super) fn close_client(&mut self, id: ClientId, code: u16, reason: &str, now: Instant) {
        match self.clients.get(id).map(|c| &c.sink) {
            Some(Sink::WebSocket(connection)) => {
                let connection = *connection;
                self.close_websocket(connection, code, reason, now);
            }
            Some(Sink::LongPoll(_)) => self.end_session(id, reason, now),
            None => {}
        }
    }

    /// Removes a client that is going away: its channels end silently (as
    /// in Phoenix), its subscriptions and presences go; the backend hears a
    /// `leave` per channel and then a `disconnect` (`lifecycle.rs`).
    pub(super) fn drop_client(&mut self, id: ClientId) -> Option<super::clients::Client> {
        let mut client = self.clients.remove(id)?;
        let kind = client.session.frame_kind();
        let reason = client.session.ending.unwrap_or(EndReason::Closed);
        // Fields borrowed apart: the channels are drained while the
        // identity is read.
        let identity = client
            .session
            .identity
            .as_deref()
            .unwrap_or(&super::clients::ANONYMOUS);
        for (topic, slot, join_ref) in client.session.channels.close_all() {
            self.unsubscribe(id, &topic, kind, slot);
            self.channel_ended(identity, &topic, &join_ref, reason);
        }
        self.client_ended(&client.session, reason);
        Some(client)
    }

    /// Removes one subscription of a client (and its presence there).
    pub(super) fn unsubscribe(
        &mut self,
        id: ClientId,
        topic: &str,
        kind: FrameKind,
        slot: SubscriptionSlot,
    ) {
        self.topics.unsubscribe(topic, kind, slot);
        if self.topics.get(topic).is_none() {
            self.topic_vacated(topic);
            self.shard_occupancy(topic, false);
        }
        ShardMetrics::sub(&self.metrics().channels, 1);
        self.presence.untrack(topic, id);
    }

    /// A forced disconnect: closes the targeted clients on every shard
    /// (this one at once, the others through their queues).
    pub(super) fn disconnect_everywhere(&mut self, target: DisconnectTarget, now: Instant) {
        let target = Arc::new(target);
        self.disconnect_local(&target, now);
        self.send_to_peers(|| ShardMessage::Disconnect(target.clone()));
        if let Some(cluster) = self.distributor.cluster() {
            cluster.disconnect(&target);
        }
    }

    /// Closes local clients the target names: WebSockets with 1001, which
    /// the JS client reconnects after (Phoenix ≥ 1.8.8), long-poll sessions
    /// by ending them. A scan: forced disconnects are rare administrative
    /// events, not worth an index.
    pub(super) fn disconnect_local(&mut self, target: &DisconnectTarget, now: Instant) {
        let named: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, client)| client.session.identity().is_target_of(target))
            .map(|(id, _)| id)
            .collect();
        for id in named {
            self.mark_ending(id, EndReason::ForcedDisconnect);
            self.close_client(id, CLOSE_GOING_AWAY, "disconnected", now);
        }
    }
}

/// Milliseconds since the Unix epoch: a broadcast's publish time.
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
