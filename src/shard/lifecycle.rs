//! Lifecycle events on a shard: `leave` when a channel of a route with
//! `lifecycle` ends, `disconnect` when a client that had such a channel
//! goes. Events are made here and handed to the delivery thread's queue
//! for this shard without blocking ([`crate::lifecycle::delivery`]).
//!
//! | entry point | when |
//! | --- | --- |
//! | [`Shard::mark_ending`] | something decided a client goes (idle timeout, slow consumer, forced disconnect, shutdown): the reason its events carry |
//! | [`Shard::channel_ended`] | a joined channel ended (left, replaced, or its client went) |
//! | [`Shard::client_ended`] | a client is removed, after its channels |
//!
//! Topics filling and emptying and presence keys coming and going are in
//! `occupancy.rs`.

use std::sync::Arc;

use super::channels::unix_ms;
use super::clients::ClientSession;
use super::Shard;
use crate::connect::Identity;
use crate::fanout::topics::ClientId;
use crate::lifecycle::delivery::{EventMetrics, EventProducer};
use crate::lifecycle::event::{EndReason, EventIds, EventKind, EventSet, LifecycleEvent};
use crate::lifecycle::occupancy::{NodeMembers, NodeOccupancy};
use crate::protocol::message::RawJson;

/// The lifecycle component of a shard.
#[derive(Debug)]
pub struct ShardLifecycle {
    /// This shard's queue to the delivery thread; `None`: events are off.
    producer: Option<EventProducer>,
    /// The delivery thread's counters (rendered by `/metrics`).
    pub(super) metrics: Option<Arc<EventMetrics>>,
    ids: EventIds,
    kinds: EventSet,
    /// The topics this shard owns that have a subscriber on some shard of
    /// this node (`occupancy.rs`).
    pub(super) occupancy: NodeOccupancy,
    /// The presence keys of topics this shard owns, on this node.
    pub(super) members: NodeMembers,
    /// Topics this shard lost this turn, reported at its end.
    pub(super) vacated_this_turn: Vec<String>,
}

impl ShardLifecycle {
    /// The component of shard `shard` of process `instance`, sending the
    /// `kinds` asked for through `producer` (none: off).
    pub fn new(
        delivery: Option<(EventProducer, Arc<EventMetrics>)>,
        kinds: EventSet,
        instance: u64,
        shard: usize,
    ) -> ShardLifecycle {
        let (producer, metrics) = match delivery {
            Some((producer, metrics)) => (Some(producer), Some(metrics)),
            None => (None, None),
        };
        ShardLifecycle {
            producer,
            metrics,
            ids: EventIds::new(instance, shard),
            kinds,
            occupancy: NodeOccupancy::default(),
            members: NodeMembers::default(),
            vacated_this_turn: Vec::new(),
        }
    }

    pub(super) fn wants(&self, kind: EventKind) -> bool {
        self.producer.is_some() && self.kinds.contains(kind)
    }

    /// Gives the event its id and queues it (never blocks; a full queue
    /// drops it, counted by the delivery side).
    pub(super) fn emit(&mut self, event: LifecycleEvent) {
        if let Some(producer) = &self.producer {
            let id = self.ids.next_id();
            producer.send(event.to_json(&id));
        }
    }
}

/// An event about the client of `identity`.
fn event_of(kind: EventKind, identity: &Identity) -> LifecycleEvent {
    let mut event = LifecycleEvent::new(kind, unix_ms());
    event.user_id = identity.user_id.clone();
    event.socket_id = identity.socket_id.clone();
    event
}

impl Shard {
    /// Whether `topic`'s route has `lifecycle` (and events are on at all).
    pub(super) fn lifecycle_topic(&self, topic: &str) -> bool {
        self.lifecycle.producer.is_some()
            && self
                .config
                .routes
                .find(topic)
                .is_some_and(|(_, route)| route.lifecycle)
    }

    /// Records why client `id` is going away, unless something already did
    /// (the first decision is the reason).
    pub(super) fn mark_ending(&mut self, id: ClientId, reason: EndReason) {
        if let Some(client) = self.clients.get_mut(id) {
            client.session.ending.get_or_insert(reason);
        }
    }

    /// Marks a client that joined a lifecycle topic (its end becomes a
    /// `disconnect` event).
    pub(super) fn note_lifecycle_join(&mut self, id: ClientId, topic: &str) {
        if self.lifecycle_topic(topic) {
            if let Some(client) = self.clients.get_mut(id) {
                client.session.lifecycle = true;
            }
        }
    }

    /// A joined channel of the client of `identity` ended: one `leave`.
    pub(super) fn channel_ended(
        &mut self,
        identity: &Identity,
        topic: &str,
        join_ref: &RawJson,
        reason: EndReason,
    ) {
        if !self.lifecycle.wants(EventKind::Leave) || !self.lifecycle_topic(topic) {
            return;
        }
        let mut event = event_of(EventKind::Leave, identity);
        event.topic = Some(topic.to_string());
        event.join_ref = Some(String::from_utf8_lossy(join_ref.as_bytes()).into_owned());
        event.reason = Some(reason);
        self.lifecycle.emit(event);
    }

    /// A joined channel of the live client `id` ended.
    pub(super) fn live_channel_ended(
        &mut self,
        id: ClientId,
        topic: &str,
        join_ref: &RawJson,
        reason: EndReason,
    ) {
        if !self.lifecycle.wants(EventKind::Leave) {
            return;
        }
        let Some(identity) = self.clients.get(id).map(|c| c.session.identity().clone()) else {
            return;
        };
        self.channel_ended(&identity, topic, join_ref, reason);
    }

    /// A client is gone (its channels' `leave`s were sent): `disconnect`,
    /// when it had joined a lifecycle topic.
    pub(super) fn client_ended(&mut self, session: &ClientSession, reason: EndReason) {
        if !session.lifecycle || !self.lifecycle.wants(EventKind::Disconnect) {
            return;
        }
        let mut event = event_of(EventKind::Disconnect, session.identity());
        event.reason = Some(reason);
        self.lifecycle.emit(event);
    }

    /// The lifecycle counters in Prometheus text, when events are on.
    pub(super) fn lifecycle_metrics(&self, out: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(m) = &self.lifecycle.metrics else {
            return;
        };
        #[rustfmt::skip]
        let rows = [
            ("cinder_events_produced_total",  "counter", m.produced.load(Relaxed),  "Lifecycle events produced by the shards."),
            ("cinder_events_delivered_total", "counter", m.delivered.load(Relaxed), "Lifecycle events the backend acknowledged."),
            ("cinder_events_retried_total",   "counter", m.retried.load(Relaxed),   "Event batches sent again after a failure."),
            ("cinder_events_dropped_total",   "counter", m.dropped.load(Relaxed),   "Lifecycle events dropped (queue full, or undelivered at shutdown)."),
            ("cinder_events_batches_total",   "counter", m.batches.load(Relaxed),   "Event batches delivered."),
            ("cinder_events_batch_latency_ms_sum", "counter", m.batch_latency_ms_sum.load(Relaxed), "Sum over delivered batches of the wait of their oldest event, in ms."),
        ];
        crate::metrics::write_rows(out, &rows);
    }
}
