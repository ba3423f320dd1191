//! Which topics' Redis channels this node listens to. Sans-IO.
//!
//! Shards report when a topic gets its first subscriber on them and when it
//! loses its last. The node subscribes to the topic's channel while any
//! shard has a subscriber, so Redis sends it nothing for topics nobody here
//! reads. Unsubscribing waits `linger`: a topic whose last client leaves
//! and another joins a moment later (a reconnecting client, a page reload)
//! costs no UNSUBSCRIBE/SUBSCRIBE pair, and no broadcast published in
//! between is missed by the newcomer because of it.
//!
//! A shard that reports a new topic waits for the subscription to be in
//! place before it answers the joins of that topic (the bus tells it: see
//! [`Interest::subscribed`]), so a client that got its join reply gets
//! every broadcast published afterwards on any node.

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
    /// Whether Redis confirmed the subscription.
    confirmed: bool,
    /// Shards waiting for that confirmation.
    waiting: Vec<usize>,
}

/// What the bus must do when a shard gains a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// Subscribe to the topic; the shard waits for [`Interest::subscribed`].
    Subscribe,
    /// The subscription is in flight; the shard waits for it.
    Waiting,
    /// The topic is already subscribed: tell the shard at once.
    Ready,
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

    /// Shard `shard` now has a subscriber of `topic`.
    pub fn join(&mut self, topic: &str, shard: usize) -> Joined {
        let bit = 1u128 << shard.min(127);
        match self.topics.get_mut(topic) {
            Some(entry) => {
                entry.shards |= bit;
                entry.idle_since = None;
                if entry.confirmed {
                    Joined::Ready
                } else {
                    entry.waiting.push(shard);
                    Joined::Waiting
                }
            }
            None => {
                self.topics.insert(
                    topic.to_string(),
                    TopicInterest {
                        shards: bit,
                        idle_since: None,
                        confirmed: false,
                        waiting: vec![shard],
                    },
                );
                Joined::Subscribe
            }
        }
    }

    /// Shard `shard` no longer has a subscriber of `topic`.
    pub fn leave(&mut self, topic: &str, shard: usize, now: Instant) {
        let bit = 1u128 << shard.min(127);
        if let Some(entry) = self.topics.get_mut(topic) {
            entry.shards &= !bit;
            if entry.shards == 0 && entry.idle_since.is_none() {
                entry.idle_since = Some(now);
            }
        }
    }

    /// Redis confirmed the subscription to `topic`; returns the shards
    /// waiting for it.
    pub fn subscribed(&mut self, topic: &str) -> Vec<usize> {
        match self.topics.get_mut(topic) {
            Some(entry) => {
                entry.confirmed = true;
                std::mem::take(&mut entry.waiting)
            }
            None => Vec::new(),
        }
    }

    /// The connection to Redis was lost: every subscription must be made
    /// again. Returns the shards that were waiting (they need not wait for
    /// an outage to end: their clients are served locally meanwhile).
    pub fn lost(&mut self) -> Vec<(String, usize)> {
        let mut released = Vec::new();
        for (topic, entry) in &mut self.topics {
            entry.confirmed = false;
            released.extend(entry.waiting.drain(..).map(|shard| (topic.clone(), shard)));
        }
        released
    }

    /// Topics idle for `linger`: the node stops listening to them.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
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
        for topic in &idle {
            self.topics.remove(topic);
        }
        idle
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
        assert_eq!(interest.join("t", 0), Joined::Subscribe);
        assert_eq!(interest.join("t", 1), Joined::Waiting);
        assert_eq!(interest.subscribed("t"), vec![0, 1]);
        assert_eq!(interest.join("t", 2), Joined::Ready);
        interest.leave("t", 0, at(10));
        interest.leave("t", 2, at(10));
        assert!(
            interest.expire(at(5000)).is_empty(),
            "shard 1 still has one"
        );
        interest.leave("t", 1, at(100));
        assert!(interest.expire(at(1099)).is_empty(), "lingering");
        assert_eq!(interest.expire(at(1100)), vec!["t".to_string()]);
        assert!(interest.is_empty());
    }

    #[test]
    fn a_quick_rejoin_costs_no_resubscription() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut interest = Interest::new(Duration::from_millis(1000));
        interest.join("t", 0);
        interest.subscribed("t");
        interest.leave("t", 0, at(10));
        assert_eq!(interest.join("t", 1), Joined::Ready);
        assert!(interest.expire(at(5000)).is_empty());
        assert_eq!(interest.topics().collect::<Vec<_>>(), ["t"]);
        assert_eq!(interest.len(), 1);
    }

    #[test]
    fn a_lost_connection_releases_the_waiting_shards() {
        let mut interest = Interest::new(Duration::from_millis(1000));
        interest.join("a", 0);
        interest.join("b", 1);
        interest.subscribed("b");
        let mut released = interest.lost();
        released.sort();
        assert_eq!(released, vec![("a".to_string(), 0)]);
        // Both must be subscribed again; the next join waits again.
        assert_eq!(interest.join("b", 0), Joined::Waiting);
    }
}
