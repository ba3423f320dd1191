//! Topic history across nodes: Redis holds each history topic's stream,
//! and each node's owner shard of a topic keeps a mirror of it.
//!
//! A broadcast to a history topic goes to Redis first: one script gives
//! it the topic's next offset, appends it to the topic's stream and
//! publishes it, atomically, so the order of the channel is the order of
//! the offsets. Every node listening to the topic — the publishing one
//! too — hands it to its owner shard of the topic ([`Shard::on_sequenced`]),
//! which checks that the offsets follow each other, appends it to its
//! mirror ([`crate::history::TopicLog`]) and hands it to the node's shards.
//!
//! The owner reads the whole stream from Redis ([`HistoryRead`]) when it
//! has no mirror of a topic yet (a first join, a first broadcast), when a
//! broadcast skips offsets (a message lost while Redis hiccupped), and
//! when the stream's life changed. While the read is out, broadcasts and
//! joins of the topic wait; then the missed broadcasts are delivered in
//! order and the joins answered from the mirror. Broadcasts that Redis no
//! longer holds cannot be delivered: the topic's subscribers on this node
//! get `phx_error` and rejoin, recovering what can be recovered — never
//! a silent gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::channels::unix_ms;
use super::history::{channel_error, RecoveryAsk};
use super::history_api::HeldHistoryRequest;
use super::inbox::ShardMessage;
use super::Shard;
use crate::fanout::broadcast::{Broadcast, Content};
use crate::fanout::topics::ClientId;
use crate::history::position::RecoverFrom;
use crate::history::{Epoch, Position, Recovery, RecoveryFailure, Retention, TopicLog};
use crate::metrics::ShardMetrics;

/// A topic's stream as Redis holds it.
#[derive(Debug)]
pub struct StreamRead {
    /// The stream's life (the read starts one when Redis had none, so a
    /// position given before the first publish stays valid).
    pub epoch: Epoch,
    /// The newest offset.
    pub last: u64,
    /// The retained broadcasts, oldest first, with their positions.
    pub entries: Vec<Arc<Broadcast>>,
}

/// What the bus read of a topic's stream, for the topic's owner shard.
#[derive(Debug)]
pub struct HistoryRead {
    /// The topic.
    pub topic: String,
    /// The stream, or why it could not be read.
    pub stream: Result<StreamRead, String>,
}

/// How long a read of a stream may take before what waits for it is
/// answered as if Redis were down (a bus that does not answer must not
/// hang joins: its thread may be gone).
const READ_WAIT_MAX: Duration = Duration::from_secs(3);

/// A read of one topic in flight, and what waits for it.
#[derive(Debug, Default)]
struct Reading {
    /// When the read was asked for (`None` until then).
    since: Option<Instant>,
    /// Broadcasts that arrived meanwhile, in arrival order.
    queued: Vec<Arc<Broadcast>>,
    /// Joins to answer once the mirror is up to date.
    asks: Vec<RecoveryAsk>,
    /// `GET /api/history` requests to answer then.
    api: Vec<HeldHistoryRequest>,
}

/// The owner shard's reads in flight, by topic.
#[derive(Debug, Default)]
pub struct Mirrors {
    reading: HashMap<String, Reading>,
}

impl Shard {
    /// Hands a broadcast to a history topic to Redis, which gives it its
    /// offset and sends it back to every node listening (this one too).
    pub(super) fn publish_history_to_cluster(
        &mut self,
        content: Content,
        sender: Option<ClientId>,
        retention: Retention,
    ) {
        let shard = self.id as u16;
        let broadcast = Arc::new(
            self.distributor
                .stamp_for(shard, content, sender, unix_ms()),
        );
        if let Some(cluster) = self.distributor.cluster() {
            cluster.publish_history(&broadcast, retention);
        }
    }

    /// A join's question, arrived through the inbox.
    pub(super) fn on_recovery_ask_message(&mut self, ask: RecoveryAsk, now: Instant) {
        match self.retention(&ask.topic) {
            Some(retention) => self.on_recovery_ask(ask, retention, now),
            None => {
                // Cannot happen (one route table); answer rather than hang.
                let recovery = Recovery::without_history(true, RecoveryFailure::Invalid, 0);
                self.answer_recovery(ask.shard, ask.ticket, recovery, now);
            }
        }
    }

    /// The owner's side of a join in a cluster: answered from the mirror,
    /// or once the stream is read when there is no mirror yet.
    pub(super) fn recovery_ask_in_cluster(
        &mut self,
        ask: RecoveryAsk,
        retention: Retention,
        now: Instant,
    ) {
        let reading = self.history.mirrors.reading.contains_key(&ask.topic);
        if reading || self.history.store.get(&ask.topic).is_none() {
            return self.read_stream(ask.topic.clone(), None, Some(ask));
        }
        self.answer_from_mirror(ask, retention, now);
    }

    fn answer_from_mirror(&mut self, ask: RecoveryAsk, retention: Retention, now: Instant) {
        let recovery = self.recovery_from_log(&ask, retention);
        self.answer_recovery(ask.shard, ask.ticket, recovery, now);
    }

    /// Starts (or joins) a read of `topic`'s stream, with a broadcast or a
    /// join that waits for it.
    fn read_stream(
        &mut self,
        topic: String,
        broadcast: Option<Arc<Broadcast>>,
        ask: Option<RecoveryAsk>,
    ) {
        let started = !self.history.mirrors.reading.contains_key(&topic);
        let reading = self
            .history
            .mirrors
            .reading
            .entry(topic.clone())
            .or_default();
        reading.queued.extend(broadcast);
        reading.asks.extend(ask);
        reading.since.get_or_insert_with(Instant::now);
        if started {
            match self.distributor.cluster() {
                Some(cluster) => cluster.read_history(&topic, self.peers[self.id].clone()),
                None => debug_assert!(false, "a stream read without a cluster"),
            }
        }
    }

    /// Whether answering about `topic` needs a read of its stream first
    /// (cluster only: no mirror yet, or a read in flight).
    pub(super) fn needs_stream_read(&self, topic: &str) -> bool {
        self.distributor.cluster().is_some()
            && (self.history.mirrors.reading.contains_key(topic)
                || self.history.store.get(topic).is_none())
    }

    /// Holds an API request until `topic`'s stream is read.
    pub(super) fn hold_for_stream_read(&mut self, topic: String, request: HeldHistoryRequest) {
        self.read_stream(topic.clone(), None, None);
        if let Some(reading) = self.history.mirrors.reading.get_mut(&topic) {
            reading.api.push(request);
        }
    }

    /// Reads that took too long end as failed reads.
    pub(super) fn stream_reads_tick(&mut self, now: Instant) {
        let late: Vec<String> = self
            .history
            .mirrors
            .reading
            .iter()
            .filter(|(_, r)| {
                r.since
                    .is_some_and(|since| now.saturating_duration_since(since) >= READ_WAIT_MAX)
            })
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in late {
            let stream = Err("the bus did not answer".to_string());
            self.on_history_read(HistoryRead { topic, stream }, now);
        }
    }

    /// A broadcast with its position in Redis's stream, for a topic this
    /// shard owns on this node.
    pub(super) fn on_sequenced(&mut self, broadcast: Arc<Broadcast>, now: Instant) {
        let topic = broadcast.topic();
        let Some(retention) = self.retention(topic) else {
            // No history route (cannot happen): deliver it as it is.
            self.distributor.to_other_shards(&broadcast);
            return self.deliver(&broadcast, now);
        };
        if self.history.mirrors.reading.contains_key(topic) {
            let topic = topic.to_string();
            return self.read_stream(topic, Some(broadcast), None);
        }
        let Some(position) = broadcast.position().cloned() else {
            return;
        };
        let follows = match self.history.store.get(topic) {
            None => false,
            Some(log) if *log.epoch() != position.epoch => false,
            Some(log) if position.offset <= log.last() => return, // had it already
            Some(log) => position.offset == log.last() + 1,
        };
        if follows {
            self.accept_sequenced(broadcast, retention, now);
        } else {
            // No mirror yet, another life of the stream, or a gap.
            let topic = topic.to_string();
            self.read_stream(topic, Some(broadcast), None);
        }
    }

    /// Appends the next broadcast of a topic's stream to the mirror and
    /// delivers it on every shard of this node.
    fn accept_sequenced(&mut self, broadcast: Arc<Broadcast>, retention: Retention, now: Instant) {
        self.history
            .store
            .push(broadcast.clone(), retention, unix_ms());
        self.distributor.to_other_shards(&broadcast);
        self.deliver(&broadcast, now);
    }

    /// The bus read a topic's stream: the mirror catches up (delivering
    /// what this node missed, in order), then the broadcasts and joins that
    /// waited go on.
    pub(super) fn on_history_read(&mut self, read: HistoryRead, now: Instant) {
        let Some(reading) = self.history.mirrors.reading.remove(&read.topic) else {
            return;
        };
        let topic = read.topic;
        let Some(retention) = self.retention(&topic) else {
            return;
        };
        let deliver_from = reading
            .queued
            .iter()
            .filter_map(|b| b.position())
            .filter(|p| matches!(&read.stream, Ok(s) if s.epoch == p.epoch))
            .map(|p| p.offset)
            .min();
        match read.stream {
            Ok(stream) => self.catch_up(&topic, stream, deliver_from, retention, now),
            Err(error) => {
                tracing::warn!(%topic, %error, "cluster: cannot read a topic's history");
                if !reading.queued.is_empty() {
                    // Broadcasts are known to be missing and cannot be read.
                    self.lose_gap(&topic);
                }
            }
        }
        for broadcast in reading.queued {
            let Some(position) = broadcast.position().cloned() else {
                continue;
            };
            let log = self.mirror_for(&topic, &position);
            if position.offset <= log.last() {
                continue;
            }
            if position.offset > log.last() + 1 {
                // Still a gap right after a read: those broadcasts are gone.
                self.lose_gap(&topic);
                self.restart_mirror(&topic, &position);
            }
            self.accept_sequenced(broadcast, retention, now);
        }
        let unread = self.history.store.get(&topic).is_none();
        self.answer_held_history(reading.api, now);
        for ask in reading.asks {
            if unread {
                // Redis could not be read and nothing is mirrored.
                let asked = ask.recover != RecoverFrom::Nothing;
                let recovery =
                    Recovery::without_history(asked, RecoveryFailure::Unavailable, ask.ticket);
                self.answer_recovery(ask.shard, ask.ticket, recovery, now);
            } else {
                self.answer_from_mirror(ask, retention, now);
            }
        }
    }

    /// Brings the mirror of `topic` to the stream Redis holds, delivering
    /// the broadcasts this node has not delivered yet: those after the
    /// mirror's newest one, or — without a mirror — those from
    /// `deliver_from` (the oldest broadcast that arrived during the read).
    fn catch_up(
        &mut self,
        topic: &str,
        stream: StreamRead,
        deliver_from: Option<u64>,
        retention: Retention,
        now: Instant,
    ) {
        let now_ms = unix_ms();
        let StreamRead {
            epoch,
            last,
            entries,
        } = stream;
        let mirrored = self
            .history
            .store
            .get(topic)
            .map(|log| (*log.epoch() == epoch).then(|| log.last()));
        let (mut expected, deliver_from) = match mirrored {
            Some(Some(mirror_last)) => (mirror_last + 1, mirror_last + 1),
            other => {
                // No mirror of this life: a first one (what is retained is
                // history, not news, except what arrived meanwhile), or a
                // new life of the stream (all of it is news here).
                let new_life = matches!(other, Some(None));
                let first = entries
                    .first()
                    .and_then(|b| b.position())
                    .map_or(last + 1, |p| p.offset);
                self.history.store.remove(topic);
                let start = Position {
                    epoch: epoch.clone(),
                    offset: first - 1,
                };
                self.history.store.log_from(topic, Some(start), now_ms);
                let deliver_from = match (new_life, deliver_from) {
                    (true, _) => 1,
                    (false, Some(offset)) => offset,
                    (false, None) => u64::MAX,
                };
                (first, deliver_from)
            }
        };
        for broadcast in entries {
            let Some(position) = broadcast.position().cloned() else {
                continue;
            };
            if position.offset < expected {
                continue;
            }
            let news = position.offset >= deliver_from;
            if position.offset > expected && news {
                // Trimmed away before this node could read them.
                self.lose_gap(topic);
            } else if news && deliver_from != 1 {
                ShardMetrics::add(&self.metrics().history_gaps_filled, 1);
            }
            if position.offset > expected {
                self.restart_mirror(topic, &position);
            }
            expected = position.offset + 1;
            if news {
                self.accept_sequenced(broadcast, retention, now);
            } else {
                self.history.store.push(broadcast, retention, now_ms);
            }
        }
    }

    /// The mirror of `topic`, made to continue right before `position`
    /// when there is none of its life.
    fn mirror_for(&mut self, topic: &str, position: &Position) -> &mut TopicLog {
        let same_life = self
            .history
            .store
            .get(topic)
            .is_some_and(|log| *log.epoch() == position.epoch);
        if !same_life {
            self.restart_mirror(topic, position);
        }
        self.history.store.log(topic, unix_ms())
    }

    /// Starts the mirror of `topic` over right before `position` (what came
    /// before is lost to this node).
    fn restart_mirror(&mut self, topic: &str, position: &Position) {
        self.history.store.remove(topic);
        let start = Position {
            epoch: position.epoch.clone(),
            offset: position.offset - 1,
        };
        self.history.store.log_from(topic, Some(start), unix_ms());
    }

    /// Broadcasts of `topic` are lost to this node: every subscriber on
    /// every shard gets `phx_error` and rejoins.
    fn lose_gap(&mut self, topic: &str) {
        ShardMetrics::add(&self.metrics().history_gaps_lost, 1);
        tracing::warn!(%topic, "cluster: broadcasts of a history topic are lost; its subscribers rejoin");
        let topic: Arc<str> = topic.into();
        self.send_to_peers(|| ShardMessage::HistoryGap(topic.clone()));
        self.on_history_gap(&topic, Instant::now());
    }

    /// Ends every local channel of `topic` with `phx_error`, as Phoenix
    /// does when a channel crashes: the clients rejoin, with `since`.
    pub(super) fn on_history_gap(&mut self, topic: &str, now: Instant) {
        let Some(subscribers) = self.topics.get(topic) else {
            return;
        };
        let clients: Vec<ClientId> = crate::fanout::frame::FrameKind::ALL
            .iter()
            .flat_map(|kind| subscribers.of(*kind).iter().map(|(_, &client)| client))
            .collect();
        for client in clients {
            let Some(kind) = self.clients.get(client).map(|c| c.session.frame_kind()) else {
                continue;
            };
            let Some((join_ref, slot)) = self
                .clients
                .get_mut(client)
                .and_then(|c| c.session.channels.drop_channel(topic))
            else {
                continue;
            };
            if let Some(slot) = slot {
                self.unsubscribe(client, topic, kind, slot);
                self.live_channel_ended(
                    client,
                    topic,
                    &join_ref,
                    crate::lifecycle::event::EndReason::Closed,
                );
            }
            self.send_message(client, &channel_error(join_ref, topic), now);
        }
    }
}
