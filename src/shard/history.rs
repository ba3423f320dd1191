//! Topic history on a shard: one sequencer per history topic, and joins
//! that recover what their client missed.
//!
//! Every history topic has an owner shard ([`owner_shard`]). On one node
//! the owner is the topic's sequencer: a broadcast published on any shard
//! goes to the owner's inbox first ([`ToSequence`]), the owner gives it the
//! next offset, keeps it in its [`HistoryStore`] and hands it to every
//! shard like any other broadcast. One place assigns offsets, so every
//! subscriber on every shard sees one order. (With `[cluster]` Redis
//! assigns them, and the owner keeps a mirror: `history_cluster.rs`.)
//!
//! A join on a history topic asks the owner for the topic's position and,
//! with `since`, for the broadcasts after it ([`RecoveryAsk`]); the join
//! (subscription, reply, presence) is held until the answer comes back
//! ([`RecoveryAnswer`]). The answer travels through the same inbox as the
//! owner's broadcasts and after every broadcast it counted, so once the
//! client is subscribed on receiving it, the replay and the live stream
//! meet without a gap or a duplicate.
//!
//! | entry point | when |
//! | --- | --- |
//! | [`Shard::publish_history`] | a broadcast to a history topic is published on this shard |
//! | [`Shard::hold_for_history`] | a join of a history topic reaches its subscription |
//! | `ShardMessage::Sequence` / `RecoveryAsk` / `RecoveryAnswer` | the inbox |
//! | [`Shard::history_tick`] | expiry, gauges, stream reads that took too long |

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::channels::unix_ms;
use super::inbox::ShardMessage;
use super::Shard;
use crate::fanout::broadcast::{Broadcast, Content};
use crate::fanout::deliver::{FrameSinks, Queued};
use crate::fanout::topics::ClientId;
use crate::history::position::RecoverFrom;
use crate::history::{owner_shard, HistoryStore, Recovery, RecoveryFailure, Retention};
use crate::metrics::ShardMetrics;
use crate::protocol::channels::{reply_payload, Action, Outgoing};
use crate::protocol::json_object::JsonObject;
use crate::protocol::message::RawJson;

/// A broadcast to a history topic, on its way to the topic's owner.
#[derive(Debug)]
pub struct ToSequence {
    /// What to publish.
    pub content: Content,
    /// The shard it was published on.
    pub shard: u16,
    /// A `broadcast_from`'s sender on that shard.
    pub sender: Option<ClientId>,
}

/// A join's question to the topic's owner.
#[derive(Debug)]
pub struct RecoveryAsk {
    /// The topic.
    pub topic: String,
    /// What the join asked to recover.
    pub recover: RecoverFrom,
    /// The asking shard.
    pub shard: usize,
    /// The asking shard's id of the join.
    pub ticket: u64,
}

/// The owner's answer to a [`RecoveryAsk`].
#[derive(Debug)]
pub struct RecoveryAnswer {
    /// The asking shard's id of the join.
    pub ticket: u64,
    /// Position, outcome and replay.
    pub recovery: Recovery,
}

/// A join waiting for its topic owner's answer.
#[derive(Debug)]
struct WaitingJoin {
    client: ClientId,
    serial: u64,
    /// The join's actions from its `Subscribe` on.
    actions: Vec<Action>,
}

/// The history component of a shard.
#[derive(Debug)]
pub struct ShardHistory {
    /// The histories of the topics this shard owns.
    pub(super) store: HistoryStore,
    /// Joins waiting for an owner's answer, by ticket.
    waiting: HashMap<u64, WaitingJoin>,
    tickets: u64,
    /// Whether any route keeps history (no lookups on the publish path
    /// otherwise).
    pub(super) enabled: bool,
    /// Cluster: reads of Redis's streams in flight.
    pub(super) mirrors: super::history_cluster::Mirrors,
}

impl ShardHistory {
    /// The component of one of `shards` shards, with the store's share of
    /// `memory_limit`.
    pub fn new(enabled: bool, memory_limit: usize, shards: usize, seed: u64) -> ShardHistory {
        ShardHistory {
            store: HistoryStore::new(memory_limit / shards.max(1), seed),
            waiting: HashMap::new(),
            tickets: 0,
            enabled,
            mirrors: Default::default(),
        }
    }
}

impl Shard {
    /// The retention of `topic`, when it is a history topic.
    pub(super) fn retention(&self, topic: &str) -> Option<Retention> {
        if !self.history.enabled {
            return None;
        }
        self.config.routes.retention(topic)
    }

    /// The shard owning `topic`'s history on this node.
    pub(super) fn history_owner(&self, topic: &str) -> usize {
        owner_shard(topic, self.peers.len())
    }

    /// Publishes a broadcast to a history topic: through the topic's owner
    /// (one node), or through Redis, which assigns the offset (cluster).
    pub(super) fn publish_history(
        &mut self,
        content: Content,
        sender: Option<ClientId>,
        retention: Retention,
        now: Instant,
    ) {
        ShardMetrics::add(&self.metrics().broadcasts, 1);
        if self.distributor.cluster().is_some() {
            return self.publish_history_to_cluster(content, sender, retention);
        }
        let owner = self.history_owner(content.topic());
        let shard = self.id as u16;
        if owner == self.id {
            self.sequence(content, shard, sender, retention, now);
        } else {
            self.peers[owner].send(ShardMessage::Sequence(Box::new(ToSequence {
                content,
                shard,
                sender,
            })));
        }
    }

    /// The owner's side of a publish: the next offset, the history, then
    /// every shard (this one at once).
    pub(super) fn sequence(
        &mut self,
        content: Content,
        shard: u16,
        sender: Option<ClientId>,
        retention: Retention,
        now: Instant,
    ) {
        let now_ms = unix_ms();
        let position = self
            .history
            .store
            .log(content.topic(), now_ms)
            .next_position();
        let broadcast = Arc::new(
            self.distributor
                .stamp_for(shard, content, sender, now_ms)
                .with_position(position),
        );
        self.history
            .store
            .push(broadcast.clone(), retention, now_ms);
        self.distributor.to_other_shards(&broadcast);
        self.deliver(&broadcast, now);
    }

    /// A broadcast another shard published for a topic this shard owns.
    pub(super) fn on_sequence(&mut self, to_sequence: ToSequence, now: Instant) {
        let ToSequence {
            content,
            shard,
            sender,
        } = to_sequence;
        // The route table is the same on every shard; a topic that lost
        // its history route cannot, but must not panic either.
        match self.retention(content.topic()) {
            Some(retention) => self.sequence(content, shard, sender, retention, now),
            None => {
                let broadcast = self.distributor.publish(content, sender, unix_ms());
                self.deliver(&broadcast, now);
            }
        }
    }

    /// Holds a join of a history topic (`actions`, from its `Subscribe`
    /// on) until the topic's owner tells its position and what to replay;
    /// gives the actions back at once for other topics.
    pub(super) fn hold_for_history(
        &mut self,
        topic: &str,
        client: ClientId,
        actions: Vec<Action>,
        now: Instant,
    ) -> Option<Vec<Action>> {
        let Some(retention) = self.retention(topic) else {
            return Some(actions);
        };
        let Some(Action::Subscribe { recover, .. }) = actions.first() else {
            return Some(actions);
        };
        let recover = recover.clone();
        let serial = self.clients.get(client)?.serial;
        self.history.tickets += 1;
        let ticket = self.history.tickets;
        self.history.waiting.insert(
            ticket,
            WaitingJoin {
                client,
                serial,
                actions,
            },
        );
        let ask = RecoveryAsk {
            topic: topic.to_string(),
            recover,
            shard: self.id,
            ticket,
        };
        let owner = self.history_owner(topic);
        if owner == self.id {
            self.on_recovery_ask(ask, retention, now);
        } else {
            self.peers[owner].send(ShardMessage::RecoveryAsk(Box::new(ask)));
        }
        None
    }

    /// The owner's side of a join: the position, and the replay asked for.
    pub(super) fn on_recovery_ask(&mut self, ask: RecoveryAsk, retention: Retention, now: Instant) {
        if self.distributor.cluster().is_some() {
            return self.recovery_ask_in_cluster(ask, retention, now);
        }
        let recovery = self.recovery_from_log(&ask, retention);
        self.answer_recovery(ask.shard, ask.ticket, recovery, now);
    }

    /// What the topic's log (made if there is none) tells a join.
    pub(super) fn recovery_from_log(
        &mut self,
        ask: &RecoveryAsk,
        retention: Retention,
    ) -> Recovery {
        let now_ms = unix_ms();
        let log = self.history.store.log(&ask.topic, now_ms);
        match &ask.recover {
            RecoverFrom::Nothing => log.recover(None, retention, now_ms),
            RecoverFrom::Position(since) => log.recover(Some(since), retention, now_ms),
            RecoverFrom::Unknown => Recovery {
                position: log.position(),
                outcome: Some(Err(RecoveryFailure::Invalid)),
                replay: Vec::new(),
            },
        }
    }

    /// Sends an owner's answer to the asking shard (this one at once).
    pub(super) fn answer_recovery(
        &mut self,
        shard: usize,
        ticket: u64,
        recovery: Recovery,
        now: Instant,
    ) {
        let answer = RecoveryAnswer { ticket, recovery };
        if shard == self.id {
            self.on_recovery_answer(answer, now);
        } else {
            self.peers[shard].send(ShardMessage::RecoveryAnswer(Box::new(answer)));
        }
    }

    /// The owner answered a held join: the join goes on with the position
    /// in its reply, then the replay is pushed, before anything newer can
    /// arrive (it comes through the inbox, after this answer).
    pub(super) fn on_recovery_answer(&mut self, answer: RecoveryAnswer, now: Instant) {
        let Some(waiting) = self.history.waiting.remove(&answer.ticket) else {
            return;
        };
        let alive = self
            .clients
            .get(waiting.client)
            .is_some_and(|c| c.serial == waiting.serial);
        if !alive {
            return;
        }
        let client = waiting.client;
        let mut actions = waiting.actions;
        let Some(Action::Subscribe {
            topic, join_ref, ..
        }) = actions.first()
        else {
            return;
        };
        let (topic, join_ref) = (topic.clone(), join_ref.clone());
        let recovery = answer.recovery;
        self.count_recovery(&recovery);
        add_recovery_to_reply(&mut actions, &recovery);
        let subscribe = actions.remove(0);
        self.apply_subscription(client, subscribe, actions, now);
        let joined = self
            .clients
            .get(client)
            .is_some_and(|c| c.session.channels.is_subscribed(&topic, &join_ref));
        if joined {
            self.replay(client, &recovery.replay, now);
        }
    }

    /// Pushes missed broadcasts to one client, oldest first.
    fn replay(&mut self, client: ClientId, replay: &[Arc<Broadcast>], now: Instant) {
        let Some(kind) = self.clients.get(client).map(|c| c.session.frame_kind()) else {
            return;
        };
        let mut over_limit = false;
        let mut sinks = self.sinks();
        for broadcast in replay {
            let Some(frame) = broadcast.frame(kind) else {
                continue;
            };
            match sinks.queue(client, frame) {
                Queued::Queued => {}
                Queued::OverLimit => over_limit = true,
                Queued::Unsupported => {}
            }
        }
        ShardMetrics::add(&self.metrics().replayed, replay.len() as u64);
        if over_limit {
            self.on_over_limit(client, now);
        }
    }

    fn count_recovery(&self, recovery: &Recovery) {
        let metrics = self.metrics();
        match recovery.outcome {
            None => {}
            Some(Ok(())) => {
                ShardMetrics::add(&metrics.recoveries, 1);
                ShardMetrics::add(&metrics.recovered, 1);
            }
            Some(Err(failure)) => {
                ShardMetrics::add(&metrics.recoveries, 1);
                let index = RecoveryFailure::ALL
                    .iter()
                    .position(|f| *f == failure)
                    .unwrap_or(0);
                ShardMetrics::add(&metrics.recovery_failed[index], 1);
            }
        }
    }

    /// Expires old broadcasts and idle logs; refreshes the gauges.
    pub(super) fn history_tick(&mut self, now: Instant) {
        if !self.history.enabled {
            return;
        }
        self.stream_reads_tick(now);
        let routes = &self.config.routes;
        self.history
            .store
            .expire(unix_ms(), |topic| routes.retention(topic));
        let store = &self.history.store;
        let metrics = &self.metrics[self.id];
        metrics
            .history_bytes
            .store(store.bytes() as u64, std::sync::atomic::Ordering::Relaxed);
        metrics
            .history_topics
            .store(store.topics() as u64, std::sync::atomic::Ordering::Relaxed);
        metrics
            .history_evicted
            .store(store.evicted, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Adds `"position"` and (when the join asked) `"recovered"` to the
/// response of the join's ok reply — whichever action carries it (a plain
/// reply, or the reply of a presence join). A backend's response object
/// keeps its other fields; ours replace any of the same name.
fn add_recovery_to_reply(actions: &mut [Action], recovery: &Recovery) {
    let reply = actions.iter_mut().find_map(|action| match action {
        Action::Send(outgoing) if outgoing.event == "phx_reply" => Some(outgoing),
        Action::Track(join) => Some(&mut join.reply),
        _ => None,
    });
    if let Some(reply) = reply {
        if let Some(payload) = with_recovery(&reply.payload, recovery) {
            reply.payload = payload.into();
        }
    }
}

/// The reply payload `{"status":"ok","response":{…}}` with the recovery's
/// fields in its response; `None` when it is not an ok reply.
fn with_recovery(payload: &[u8], recovery: &Recovery) -> Option<Vec<u8>> {
    let reply = JsonObject::parse_bytes(payload).ok()?;
    if reply.get("status")?.get() != r#""ok""# {
        return None;
    }
    let response = JsonObject::parse(reply.get_object("response")?.get()).ok()?;
    let mut fields = Vec::with_capacity(payload.len() + 64);
    let written = response.write_open(&mut fields, &["position", "recovered"]);
    if written > 1 {
        fields.push(b',');
    }
    fields.extend_from_slice(br#""position":"#);
    fields.extend_from_slice(RawJson::from_string(&recovery.position.to_string()).as_bytes());
    if let Some(outcome) = recovery.outcome {
        fields.extend_from_slice(br#","recovered":"#);
        fields.extend_from_slice(if outcome.is_ok() { b"true" } else { b"false" });
    }
    fields.push(b'}');
    Some(reply_payload("ok", &fields))
}

/// A `phx_error` for a channel instance, as Phoenix sends when a channel
/// crashes: the client rejoins (and, with `since`, recovers).
pub(super) fn channel_error(join_ref: RawJson, topic: &str) -> Outgoing {
    Outgoing {
        join_ref: join_ref.clone(),
        msg_ref: join_ref,
        topic: crate::protocol::message::Name::Str(topic.to_string()),
        event: "phx_error".into(),
        payload: b"{}".as_slice().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Epoch, Position};

    fn recovery(outcome: Option<Result<(), RecoveryFailure>>) -> Recovery {
        Recovery {
            position: Position {
                epoch: Epoch::parse("e1").unwrap(),
                offset: 9,
            },
            outcome,
            replay: Vec::new(),
        }
    }

    #[test]
    fn the_reply_gets_the_position_and_keeps_the_backends_fields() {
        let plain = with_recovery(br#"{"status":"ok","response":{}}"#, &recovery(None)).unwrap();
        assert_eq!(plain, br#"{"status":"ok","response":{"position":"e1:9"}}"#);
        let hooked = with_recovery(
            br#"{"status":"ok","response":{"role":"admin","recovered":"x"}}"#,
            &recovery(Some(Ok(()))),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(hooked).unwrap(),
            r#"{"status":"ok","response":{"role":"admin","position":"e1:9","recovered":true}}"#
        );
        let failed = with_recovery(
            br#"{"status":"ok","response":{}}"#,
            &recovery(Some(Err(RecoveryFailure::Trimmed))),
        )
        .unwrap();
        assert!(String::from_utf8(failed)
            .unwrap()
            .ends_with(r#""recovered":false}}"#));
        assert_eq!(
            with_recovery(br#"{"status":"error","response":{}}"#, &recovery(None)),
            None
        );
    }
}
