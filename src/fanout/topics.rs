//! A shard's topic table: which of its connections subscribe to which topic.
//!
//! Subscribers are kept per serializer so a broadcast looks up the frame for
//! a serializer once and then only clones it into each subscriber's outbox.
//! Each set is a `Slab` of connection keys: subscribing returns the slot,
//! the connection keeps it, and unsubscribing is O(1) even in a topic with a
//! hundred thousand subscribers (no scan, no shifting).

use std::collections::HashMap;

use slab::Slab;

use crate::protocol::message::Serializer;

/// Subscriber keys with this bit set name a long-poll session rather than a
/// connection. They are kept apart from the connections so the WebSocket
/// fan-out loop stays one `Arc` clone per subscriber with no per-subscriber
/// branch.
pub const LONGPOLL_TAG: usize = 1 << (usize::BITS - 1);

/// A subscription's position in its topic's set, kept by the connection so
/// it can leave in O(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionSlot(usize);

impl SubscriptionSlot {
    /// A slot with a chosen value, for tests of code that only stores slots.
    #[cfg(test)]
    pub(crate) fn for_tests(n: usize) -> SubscriptionSlot {
        SubscriptionSlot(n)
    }
}

/// The subscribers of one topic on one shard.
#[derive(Debug, Default)]
pub struct SubscriberSet {
    /// Connection keys of V1 (JSON object) subscribers.
    v1: Slab<usize>,
    /// Connection keys of V2 (JSON array / binary) subscribers.
    v2: Slab<usize>,
    /// Tagged keys of long-poll sessions (any serializer; the session knows).
    longpoll: Slab<usize>,
}

impl SubscriberSet {
    /// The connection keys subscribed with `serializer`.
    #[inline]
    pub fn of(&self, serializer: Serializer) -> &Slab<usize> {
        match serializer {
            Serializer::V1 => &self.v1,
            Serializer::V2 => &self.v2,
        }
    }

    /// The long-poll sessions subscribed (keys carry [`LONGPOLL_TAG`]).
    #[inline]
    pub fn longpoll(&self) -> &Slab<usize> {
        &self.longpoll
    }

    fn of_mut(&mut self, serializer: Serializer) -> &mut Slab<usize> {
        match serializer {
            Serializer::V1 => &mut self.v1,
            Serializer::V2 => &mut self.v2,
        }
    }

    /// Subscribers of every kind.
    pub fn len(&self) -> usize {
        self.v1.len() + self.v2.len() + self.longpoll.len()
    }

    /// Whether nobody is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Topic → subscribers, for one shard.
#[derive(Debug, Default)]
pub struct TopicTable {
    topics: HashMap<Box<str>, SubscriberSet>,
}

impl TopicTable {
    /// An empty table.
    pub fn new() -> TopicTable {
        TopicTable::default()
    }

    /// Adds connection `connection` (or a session, tagged with
    /// [`LONGPOLL_TAG`]) to `topic`.
    pub fn subscribe(
        &mut self,
        topic: &str,
        serializer: Serializer,
        connection: usize,
    ) -> SubscriptionSlot {
        let set = match self.topics.get_mut(topic) {
            Some(set) => set,
            None => self.topics.entry(Box::from(topic)).or_default(),
        };
        if connection & LONGPOLL_TAG != 0 {
            return SubscriptionSlot(set.longpoll.insert(connection) | LONGPOLL_TAG);
        }
        SubscriptionSlot(set.of_mut(serializer).insert(connection))
    }

    /// Removes the subscription at `slot`. The topic disappears with its last
    /// subscriber so the table's size follows the live topics.
    pub fn unsubscribe(&mut self, topic: &str, serializer: Serializer, slot: SubscriptionSlot) {
        let Some(set) = self.topics.get_mut(topic) else {
            debug_assert!(false, "unsubscribe from unknown topic {topic}");
            return;
        };
        let removed = if slot.0 & LONGPOLL_TAG != 0 {
            set.longpoll.try_remove(slot.0 & !LONGPOLL_TAG)
        } else {
            set.of_mut(serializer).try_remove(slot.0)
        };
        debug_assert!(removed.is_some(), "unsubscribe of a vacant slot on {topic}");
        if set.is_empty() {
            self.topics.remove(topic);
        }
    }

    /// The subscribers of `topic`, if any.
    #[inline]
    pub fn get(&self, topic: &str) -> Option<&SubscriberSet> {
        self.topics.get(topic)
    }

    /// Number of topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_lookup_unsubscribe() {
        let mut table = TopicTable::new();
        let a = table.subscribe("room:1", Serializer::V2, 10);
        let b = table.subscribe("room:1", Serializer::V1, 11);
        let c = table.subscribe("room:1", Serializer::V2, 12);
        let set = table.get("room:1").unwrap();
        assert_eq!(set.len(), 3);
        let v2: Vec<usize> = set.of(Serializer::V2).iter().map(|(_, &k)| k).collect();
        assert_eq!(v2, vec![10, 12]);
        table.unsubscribe("room:1", Serializer::V2, a);
        table.unsubscribe("room:1", Serializer::V1, b);
        assert_eq!(table.get("room:1").unwrap().len(), 1);
        table.unsubscribe("room:1", Serializer::V2, c);
        assert!(table.get("room:1").is_none());
        assert_eq!(table.topic_count(), 0);
    }

    #[test]
    fn sessions_are_kept_apart_from_connections() {
        let mut table = TopicTable::new();
        let conn = table.subscribe("room:1", Serializer::V2, 3);
        let session = table.subscribe("room:1", Serializer::V2, 3 | LONGPOLL_TAG);
        let set = table.get("room:1").unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.of(Serializer::V2).len(), 1);
        let sessions: Vec<usize> = set.longpoll().iter().map(|(_, &k)| k).collect();
        assert_eq!(sessions, vec![3 | LONGPOLL_TAG]);
        table.unsubscribe("room:1", Serializer::V2, session);
        assert!(table.get("room:1").unwrap().longpoll().is_empty());
        table.unsubscribe("room:1", Serializer::V2, conn);
        assert!(table.get("room:1").is_none());
    }
}
