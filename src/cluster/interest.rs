//! Which topics' Redis channels this node listens to. Sans-IO.
//!
//! Shards report when a topic gets its first subscriber on them and when it
//! loses its last. The node subscribes to the topic's channel while any
//! shard has a subscriber, so Redis sends it nothing for topics nobody here
//! reads. Unsubscribing waits `linger`: a topic whose last client leaves
//! and another joins a moment later (a reconnecting client, a page reload)
//! costs no UNSUBSCRIBE/SUBSCRIBE pair, and no broadcast published in
//! between is missed by the newcomer because of it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One topic's interest.
#[derive(Debug)]
struct TopicInterest {
    /// Bit `i`: shard `i` has a subscriber (shards are at most 1024; the
    /// bits past 128 share bit 127, which only delays an unsubscribe).
    shards: u128,
    /// When the last shard lost interest, if none has it now.
    idle_since: Option<Instant>,
}

/// What the bus must do on Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Start listening to the topic.
    Subscribe(String),
    /// Stop listening to the topic.
    Unsubscribe(String),
}

/// The topics this node listens to.
#[derive(Debug)]
pub struct Interest {
    linger: Duration,
    topics: HashMap<String, TopicInterest>,
}

impl Interest {
    /// Nothing listened to; unsubscribing waits `linger`.
    pub fn new(linger: Duration) -> Interest {
        Interest {
            linger,
            topics: HashMap::new(),
        }
    }

    /// Shard `shard` now has (or no longer has) a subscriber of `topic`.
    /// Returns a subscribe when the node must start listening.
    pub fn set(
        &mut self,
        topic: &str,
        shard: usize,
        interested: bool,
        now: Instant,
    ) -> Option<Change> {
        let bit = 1u128 << shard.min(127);
        if interested {
            match self.topics.get_mut(topic) {
                Some(entry) => {
                    entry.shards |= bit;
                    entry.idle_since = None;
                    None
                }
                None => {
                    self.topics.insert(
                        topic.to_string(),
                        TopicInterest {
                            shards: bit,
                            idle_since: None,
                        },
                    );
                    Some(Change::Subscribe(topic.to_string()))
                }
            }
        } else {
            if let Some(entry) = self.topics.get_mut(topic) {
                entry.shards &= !bit;
                if entry.shards == 0 && entry.idle_since.is_none() {
                    entry.idle_since = Some(now);
                }
            }
            None
        }
    }

    /// Topics idle for `linger`: the node stops listening to them.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let linger = self.linger;
        let idle: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, entry)| {
                entry
                    .idle_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= linger)
            })
            .map(|(topic, _)| topic.clone())
            .collect();
        idle.into_iter()
            .map(|topic| {
                self.topics.remove(&topic);
                Change::Unsubscribe(topic)
            })
            .collect()
    }

    /// Every topic listened to (to subscribe again on a new connection).
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.topics.keys().map(String::as_str)
    }

    /// Number of topics listened to.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether no topic is listened to.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_listened_to_while_any_shard_has_a_subscriber() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut interest = Interest::new(Duration::from_millis(1000));
        assert_eq!(
            interest.set("t", 0, true, at(0)),
            Some(Change::Subscribe("t".into()))
        );
        assert_eq!(interest.set("t", 1, true, at(0)), None);
        assert_eq!(interest.set("t", 0, false, at(10)), None);
        assert!(
            interest.expire(at(5000)).is_empty(),
            "shard 1 still has one"
        );
        assert_eq!(interest.set("t", 1, false, at(100)), None);
        assert!(interest.expire(at(1099)).is_empty(), "lingering");
        assert_eq!(
            interest.expire(at(1100)),
            vec![Change::Unsubscribe("t".into())]
        );
        assert!(interest.is_empty());
    }

    #[test]
    fn a_quick_rejoin_costs_no_resubscription() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut interest = Interest::new(Duration::from_millis(1000));
        interest.set("t", 0, true, at(0));
        interest.set("t", 0, false, at(10));
        assert_eq!(interest.set("t", 1, true, at(500)), None);
        assert!(interest.expire(at(5000)).is_empty());
        assert_eq!(interest.topics().collect::<Vec<_>>(), ["t"]);
        assert_eq!(interest.len(), 1);
    }
}
