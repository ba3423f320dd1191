//! Joins that wait for the node to listen to their topic (cluster only).
//!
//! When a shard first needs a topic, it tells the bus, which subscribes to
//! the topic's Redis channel unless the node already listens to it. Until
//! the bus says it does, the shard holds the join from its subscription
//! on — the subscription itself, the reply, the presence tracking — so a
//! client that has its `ok` is sure to get every broadcast published
//! afterwards on any node, and (as on Phoenix) gets nothing of the topic
//! before its `ok`. The wait is one Redis round trip; while Redis is away
//! the bus answers at once (clients are served locally), and
//! [`SUBSCRIBE_WAIT_MAX`] bounds it whatever happens.
//!
//! The shard tells the bus it no longer needs a topic once the topic has
//! neither a subscriber nor a held join here.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::Shard;
use crate::fanout::topics::ClientId;
use crate::protocol::channels::Action;

/// The longest a join waits for the node's subscription.
const SUBSCRIBE_WAIT_MAX: Duration = Duration::from_secs(2);

/// The rest of one join's actions, held.
#[derive(Debug)]
struct Held {
    client: ClientId,
    serial: u64,
    actions: Vec<Action>,
}

/// One topic the bus has not confirmed yet.
#[derive(Debug)]
struct Awaited {
    since: Instant,
    held: Vec<Held>,
}

/// This shard's topics as the cluster sees them.
#[derive(Debug, Default)]
pub struct AwaitedTopics {
    /// Topics waiting for the node's subscription, with the joins held.
    topics: HashMap<String, Awaited>,
    /// Topics the node listens to for this shard.
    listening: HashSet<String>,
}

impl Shard {
    /// Holds a join from its subscription on (`actions`, starting with
    /// the `Subscribe` of `topic`) until the node listens to the topic;
    /// gives the actions back when it already does (or without a cluster).
    pub(super) fn hold_until_subscribed(
        &mut self,
        topic: &str,
        client: ClientId,
        actions: Vec<Action>,
        now: Instant,
    ) -> Option<Vec<Action>> {
        let Some(cluster) = self.distributor.cluster() else {
            return Some(actions);
        };
        if self.awaited.listening.contains(topic) {
            return Some(actions);
        }
        let serial = self.clients.get(client)?.serial;
        let awaited = self
            .awaited
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| {
                cluster.interest(topic, self.id, true);
                Awaited {
                    since: now,
                    held: Vec::new(),
                }
            });
        awaited.held.push(Held {
            client,
            serial,
            actions,
        });
        None
    }

    /// The last subscriber of `topic` on this shard went: unless joins of
    /// it are held, the shard no longer needs it.
    pub(super) fn topic_vacated(&mut self, topic: &str) {
        if self.awaited.topics.contains_key(topic) {
            return;
        }
        if self.awaited.listening.remove(topic) {
            if let Some(cluster) = self.distributor.cluster() {
                cluster.interest(topic, self.id, false);
            }
        }
    }

    /// The node listens to `topic` now (or the wait is over): the held
    /// actions go on, in the order they were held.
    pub(super) fn on_subscribed(&mut self, topic: &str, now: Instant) {
        let Some(awaited) = self.awaited.topics.remove(topic) else {
            return;
        };
        self.awaited.listening.insert(topic.to_string());
        for held in awaited.held {
            let alive = self
                .clients
                .get(held.client)
                .is_some_and(|c| c.serial == held.serial);
            if alive {
                let mut actions = held.actions;
                self.apply_all(held.client, &mut actions, now);
            }
        }
        if self.topics.get(topic).is_none() {
            // Every client held here went away meanwhile.
            self.topic_vacated(topic);
        }
    }

    /// Releases joins that waited too long (a bus that does not answer
    /// must not hang them).
    pub(super) fn subscriptions_tick(&mut self, now: Instant) {
        let late: Vec<String> = self
            .awaited
            .topics
            .iter()
            .filter(|(_, awaited)| {
                now.saturating_duration_since(awaited.since) >= SUBSCRIBE_WAIT_MAX
            })
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in late {
            tracing::debug!(%topic, "joins answered without the bus's confirmation");
            self.on_subscribed(&topic, now);
        }
    }
}
