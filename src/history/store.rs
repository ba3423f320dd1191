//! A shard's histories: the [`TopicLog`] of every history topic this shard
//! owns, under one memory limit.
//!
//! Each history topic has one owner shard (by hash, [`super::owner_shard`]);
//! only the owner holds its log, so nothing is shared between threads. The
//! process-wide `history.memory_limit` is split evenly between the shards.
//! Past its share a shard drops whole logs, least recently used first
//! (counted): their clients get `recovered: false`, the process keeps
//! its memory.

use std::collections::HashMap;
use std::sync::Arc;

use super::log::{Retention, TopicLog};
use super::position::{Epoch, Position};
use crate::fanout::broadcast::Broadcast;

/// Share of the limit a shard frees down to when over it, so eviction
/// runs rarely rather than on every publish.
const EVICT_TO_PERCENT: usize = 90;

/// The histories one shard owns.
#[derive(Debug)]
pub struct HistoryStore {
    logs: HashMap<Box<str>, TopicLog>,
    /// Estimated memory of every log.
    bytes: usize,
    /// This shard's share of `history.memory_limit`.
    limit: usize,
    /// Makes each new log's epoch unique: the process's random id, the
    /// shard and a counter.
    seed: u64,
    created: u64,
    /// Logs dropped to stay under the limit, since start.
    pub evicted: u64,
}

impl HistoryStore {
    /// An empty store of at most `limit` bytes; `seed` is random per process.
    pub fn new(limit: usize, seed: u64) -> HistoryStore {
        HistoryStore {
            logs: HashMap::new(),
            bytes: 0,
            limit,
            seed,
            created: 0,
            evicted: 0,
        }
    }

    /// Estimated memory held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Topics with a log.
    pub fn topics(&self) -> usize {
        self.logs.len()
    }

    /// The log of `topic`, if it has one.
    pub fn get(&self, topic: &str) -> Option<&TopicLog> {
        self.logs.get(topic)
    }

    /// The log of `topic`, made (a new life of the stream, offset 0) when
    /// it has none.
    pub fn log(&mut self, topic: &str, now_ms: u64) -> &mut TopicLog {
        self.log_from(topic, None, now_ms)
    }

    /// The log of `topic`; when it has none, one continuing `start` (a
    /// stream that lives elsewhere: Redis), or a new life of the stream.
    pub fn log_from(&mut self, topic: &str, start: Option<Position>, now_ms: u64) -> &mut TopicLog {
        if !self.logs.contains_key(topic) {
            let (epoch, last) = match start {
                Some(position) => (position.epoch, position.offset),
                None => {
                    self.created += 1;
                    (
                        Epoch::generate('n', self.seed ^ self.created.rotate_left(32)),
                        0,
                    )
                }
            };
            let log = TopicLog::new(epoch, last, now_ms);
            self.bytes += log.bytes();
            self.logs.insert(topic.into(), log);
        }
        self.logs.get_mut(topic).expect("inserted above")
    }

    /// Drops `topic`'s log (its stream's life ends here).
    pub fn remove(&mut self, topic: &str) {
        if let Some(log) = self.logs.remove(topic) {
            self.bytes -= log.bytes();
        }
    }

    /// Appends a broadcast that carries its position to its topic's log,
    /// then keeps the store under its limit. The log must exist.
    pub fn push(&mut self, broadcast: Arc<Broadcast>, retention: Retention, now_ms: u64) {
        let Some(log) = self.logs.get_mut(broadcast.topic()) else {
            debug_assert!(false, "push to a topic without a log");
            return;
        };
        let change = log.push(broadcast, retention, now_ms);
        self.bytes = self.bytes.saturating_add_signed(change);
        if self.bytes > self.limit {
            self.evict();
        }
    }

    /// Drops expired broadcasts, and logs that are empty and were not
    /// used for their topic's whole retention time (`retention` of each
    /// topic is the caller's to tell).
    pub fn expire(&mut self, now_ms: u64, retention: impl Fn(&str) -> Option<Retention>) {
        let mut released = 0;
        self.logs.retain(|topic, log| {
            // A topic no route keeps history for any more: nothing to keep.
            let Some(retention) = retention(topic) else {
                released += log.bytes();
                return false;
            };
            released += log.expire(retention, now_ms);
            let idle = log.touched_ms.saturating_add(retention.ttl_ms) <= now_ms;
            if log.is_empty() && idle {
                released += log.bytes();
                return false;
            }
            true
        });
        self.bytes -= released;
    }

    /// Drops the least recently used logs until the store is back under
    /// [`EVICT_TO_PERCENT`] of its limit.
    fn evict(&mut self) {
        let target = self.limit / 100 * EVICT_TO_PERCENT;
        let mut by_age: Vec<(u64, Box<str>)> = self
            .logs
            .iter()
            .map(|(topic, log)| (log.touched_ms, topic.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, topic) in by_age {
            if self.bytes <= target {
                break;
            }
            self.remove(&topic);
            self.evicted += 1;
        }
        if self.evicted > 0 {
            tracing::debug!(
                evicted = self.evicted,
                "history over its memory limit: oldest topics dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::broadcast::{BroadcastId, Content, NodeId, Origin};
    use crate::protocol::message::Payload;

    const KEEP: Retention = Retention {
        count: 10,
        ttl_ms: 1_000,
    };

    fn publish(store: &mut HistoryStore, topic: &str, now_ms: u64) -> Position {
        let position = store.log(topic, now_ms).next_position();
        let content =
            Content::new(topic.into(), "e".into(), Payload::Json(b"{}".to_vec())).unwrap();
        let origin = Origin {
            node: NodeId(1),
            shard: 0,
            sender: None,
        };
        let broadcast = Broadcast::new(content, BroadcastId(position.offset), origin, now_ms)
            .with_position(position.clone());
        store.push(Arc::new(broadcast), KEEP, now_ms);
        position
    }

    #[test]
    fn each_topic_has_its_own_epoch_and_offsets() {
        let mut store = HistoryStore::new(1 << 20, 42);
        let a1 = publish(&mut store, "a", 0);
        let a2 = publish(&mut store, "a", 1);
        let b1 = publish(&mut store, "b", 2);
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_ne!(a1.epoch, b1.epoch);
        assert_eq!(store.topics(), 2);
    }

    #[test]
    fn a_dropped_log_comes_back_as_a_new_life() {
        let mut store = HistoryStore::new(1 << 20, 42);
        let before = publish(&mut store, "a", 0);
        store.expire(500, |_| Some(KEEP));
        assert_eq!(store.topics(), 1, "entries still young");
        store.expire(1_000, |_| Some(KEEP));
        assert_eq!(store.topics(), 0, "expired, and idle for the ttl");
        assert_eq!(store.bytes(), 0);
        let after = publish(&mut store, "a", 2_000);
        assert_ne!(after.epoch, before.epoch);
        assert_eq!(after.offset, 1);
    }

    #[test]
    fn memory_stays_under_the_limit_dropping_the_least_recently_used() {
        let mut store = HistoryStore::new(16 * 1024, 1);
        for i in 0..200u64 {
            publish(&mut store, &format!("t{i}"), i);
            assert!(store.bytes() <= 16 * 1024, "at {i}: {}", store.bytes());
        }
        assert!(store.evicted > 0);
        assert!(store.get("t199").is_some(), "the newest survive");
        assert!(store.get("t0").is_none(), "the oldest went first");
    }

    #[test]
    fn topics_no_route_keeps_are_dropped() {
        let mut store = HistoryStore::new(1 << 20, 42);
        publish(&mut store, "a", 0);
        store.expire(1, |_| None);
        assert_eq!((store.topics(), store.bytes()), (0, 0));
    }
}
