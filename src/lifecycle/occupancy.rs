//! What this node holds, for the events about topics and presence keys:
//! which topics have a subscriber on some shard here, and which presence
//! keys have a meta here. Sans-IO.
//!
//! Each topic has one owner shard on a node (the same hash as history).
//! Shards tell the owner when they get a topic's first subscriber or lose
//! its last ([`NodeOccupancy`]); the owner sees every local presence diff of
//! its topics anyway (presence replicates to every shard) and counts metas
//! per key ([`NodeMembers`]). What either reports is a [`NodeChange`]: on
//! one node it is the event; in a cluster Redis decides whether it is one
//! (`cluster/lifecycle.rs`).
//!
//! The owner judges in the order its inbox brings the shards' reports,
//! which may differ from the order things happened by the time a message
//! takes between two shards (microseconds): a key whose only tab closes on
//! one shard as its next tab opens on another may read as removed and
//! added again.

use std::collections::HashMap;
use std::sync::Arc;

use smallvec::SmallVec;

use super::event::{EndReason, EventKind, LifecycleEvent};
use crate::presence::{Meta, PresenceDiff};

/// A change of what this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChange {
    /// The node got its first subscriber of `topic` (`occupied`), or lost
    /// its last.
    Topic {
        /// The topic.
        topic: String,
        /// Whether the node now holds it.
        occupied: bool,
    },
    /// Presence key `key` got its first meta on `topic` here (`added`), or
    /// lost its last.
    Member {
        /// The topic.
        topic: String,
        /// The presence key.
        key: Arc<str>,
        /// The meta that came first (added) or went last (removed).
        meta: Meta,
        /// Whether the key is now present here.
        added: bool,
    },
}

impl NodeChange {
    /// The event this change is when it is a change of the whole cluster.
    pub fn kind(&self) -> EventKind {
        match self {
            NodeChange::Topic { occupied: true, .. } => EventKind::ChannelOccupied,
            NodeChange::Topic { .. } => EventKind::ChannelVacated,
            NodeChange::Member { added: true, .. } => EventKind::MemberAdded,
            NodeChange::Member { .. } => EventKind::MemberRemoved,
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        match self {
            NodeChange::Topic { topic, .. } | NodeChange::Member { topic, .. } => topic,
        }
    }

    /// Whether the node holds something more after this change.
    pub fn holds(&self) -> bool {
        match self {
            NodeChange::Topic { occupied, .. } => *occupied,
            NodeChange::Member { added, .. } => *added,
        }
    }

    /// The event at `time_ms`, with `reason` when the change was not a
    /// client's doing (a node down, a shutdown).
    pub fn event(&self, time_ms: u64, reason: Option<EndReason>) -> LifecycleEvent {
        let mut event = LifecycleEvent::new(self.kind(), time_ms);
        event.topic = Some(self.topic().to_string());
        if let NodeChange::Member { key, meta, .. } = self {
            event.key = Some(key.to_string());
            event.meta = Some(meta.json.to_string());
        }
        if !self.holds() {
            event.reason = reason;
        }
        event
    }
}

/// Which shards hold each topic an owner shard owns.
#[derive(Debug, Default)]
pub struct NodeOccupancy {
    holders: HashMap<String, SmallVec<[u16; 4]>>,
}

impl NodeOccupancy {
    /// Shard `shard` holds `topic` now (`occupied`) or no longer: the
    /// node's change, if this was its first shard or its last.
    pub fn change(&mut self, topic: &str, shard: usize, occupied: bool) -> Option<NodeChange> {
        let shard = shard as u16;
        if occupied {
            let holders = self.holders.entry(topic.to_string()).or_default();
            if holders.contains(&shard) {
                return None;
            }
            holders.push(shard);
            return (holders.len() == 1).then(|| NodeChange::Topic {
                topic: topic.to_string(),
                occupied: true,
            });
        }
        let holders = self.holders.get_mut(topic)?;
        let at = holders.iter().position(|s| *s == shard)?;
        holders.swap_remove(at);
        if !holders.is_empty() {
            return None;
        }
        self.holders.remove(topic);
        Some(NodeChange::Topic {
            topic: topic.to_string(),
            occupied: false,
        })
    }

    /// Lets every topic go (the node is stopping): one change each.
    pub fn release_all(&mut self) -> Vec<NodeChange> {
        self.holders
            .drain()
            .map(|(topic, _)| NodeChange::Topic {
                topic,
                occupied: false,
            })
            .collect()
    }

    /// Whether the node holds no topic.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
}

/// How many metas each presence key has on each topic, on this node.
#[derive(Debug, Default)]
pub struct NodeMembers {
    topics: HashMap<String, HashMap<Arc<str>, KeyMetas>>,
}

/// One key's metas on one topic.
#[derive(Debug)]
struct KeyMetas {
    count: usize,
    /// The newest meta that joined: what a removal at shutdown reports.
    latest: Meta,
}

impl NodeMembers {
    /// Applies one diff of this node: the keys that appeared or went.
    /// Joins count before leaves, so an update (a leave and a join of the
    /// same key in one diff) is no change.
    pub fn apply(&mut self, diff: &PresenceDiff) -> Vec<NodeChange> {
        let mut changes = Vec::new();
        let keys = self.topics.entry(diff.topic.clone()).or_default();
        for (key, meta) in &diff.joins {
            let entry = keys.entry(key.clone()).or_insert_with(|| KeyMetas {
                count: 0,
                latest: meta.clone(),
            });
            entry.count += 1;
            entry.latest = meta.clone();
            if entry.count == 1 {
                changes.push(NodeChange::Member {
                    topic: diff.topic.clone(),
                    key: key.clone(),
                    meta: meta.clone(),
                    added: true,
                });
            }
        }
        for (key, meta) in &diff.leaves {
            // A leave of a key not counted (never seen here) changes
            // nothing: counts never go below zero.
            let Some(entry) = keys.get_mut(key) else {
                continue;
            };
            entry.count -= 1;
            if entry.count == 0 {
                keys.remove(key);
                changes.push(NodeChange::Member {
                    topic: diff.topic.clone(),
                    key: key.clone(),
                    meta: meta.clone(),
                    added: false,
                });
            }
        }
        if keys.is_empty() {
            self.topics.remove(&diff.topic);
        }
        changes
    }

    /// Lets every key go (the node is stopping): one change each.
    pub fn release_all(&mut self) -> Vec<NodeChange> {
        self.topics
            .drain()
            .flat_map(|(topic, keys)| {
                keys.into_iter()
                    .map(move |(key, metas)| NodeChange::Member {
                        topic: topic.clone(),
                        key,
                        meta: metas.latest,
                        added: false,
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::MetaData;

    fn meta(phx_ref: &str) -> Meta {
        Arc::new(MetaData {
            phx_ref: phx_ref.into(),
            json: format!(r#"{{"phx_ref":"{phx_ref}"}}"#).into(),
        })
    }

    fn diff(joins: &[(&str, &str)], leaves: &[(&str, &str)]) -> PresenceDiff {
        let pairs = |list: &[(&str, &str)]| {
            list.iter()
                .map(|(key, r)| (Arc::<str>::from(*key), meta(r)))
                .collect()
        };
        PresenceDiff {
            topic: "room:1".into(),
            joins: pairs(joins),
            leaves: pairs(leaves),
        }
    }

    #[test]
    fn a_topic_changes_with_its_first_and_last_shard() {
        let mut node = NodeOccupancy::default();
        let occupied = node.change("t", 0, true).unwrap();
        assert_eq!(occupied.kind(), EventKind::ChannelOccupied);
        assert_eq!(node.change("t", 1, true), None);
        assert_eq!(node.change("t", 1, true), None, "a repeated report");
        assert_eq!(node.change("t", 0, false), None);
        assert_eq!(node.change("t", 0, false), None, "not a holder");
        let vacated = node.change("t", 1, false).unwrap();
        assert_eq!(vacated.kind(), EventKind::ChannelVacated);
        assert!(node.is_empty());
        assert_eq!(node.change("never", 3, false), None);
    }

    #[test]
    fn release_all_vacates_every_topic_once() {
        let mut node = NodeOccupancy::default();
        node.change("a", 0, true);
        node.change("a", 1, true);
        node.change("b", 1, true);
        let mut topics: Vec<String> = node
            .release_all()
            .iter()
            .map(|c| c.topic().to_string())
            .collect();
        topics.sort();
        assert_eq!(topics, ["a", "b"]);
        assert!(node.release_all().is_empty());
    }

    #[test]
    fn a_key_with_two_tabs_is_added_once_and_removed_with_the_last() {
        let mut members = NodeMembers::default();
        let added = members.apply(&diff(&[("alice", "1")], &[]));
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].kind(), EventKind::MemberAdded);
        assert!(members.apply(&diff(&[("alice", "2")], &[])).is_empty());
        assert!(members.apply(&diff(&[], &[("alice", "1")])).is_empty());
        let removed = members.apply(&diff(&[], &[("alice", "2")]));
        assert_eq!(removed.len(), 1);
        let event = removed[0].event(5, Some(EndReason::Shutdown));
        assert_eq!(event.kind, EventKind::MemberRemoved);
        assert_eq!(event.key.as_deref(), Some("alice"));
        assert_eq!(event.meta.as_deref(), Some(r#"{"phx_ref":"2"}"#));
        assert_eq!(event.reason, Some(EndReason::Shutdown));
    }

    #[test]
    fn an_update_is_no_change_and_unknown_leaves_are_ignored() {
        let mut members = NodeMembers::default();
        members.apply(&diff(&[("bob", "1")], &[]));
        assert!(members
            .apply(&diff(&[("bob", "2")], &[("bob", "1")]))
            .is_empty());
        assert!(members.apply(&diff(&[], &[("carol", "9")])).is_empty());
        let released = members.release_all();
        assert_eq!(released.len(), 1);
        let event = released[0].event(1, None);
        assert_eq!(event.meta.as_deref(), Some(r#"{"phx_ref":"2"}"#));
        assert_eq!(event.reason, None);
    }

    #[test]
    fn an_added_event_carries_no_reason() {
        let change = NodeChange::Topic {
            topic: "t".into(),
            occupied: true,
        };
        assert_eq!(change.event(1, Some(EndReason::NodeDown)).reason, None);
    }
}
