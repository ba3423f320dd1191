//! The presences of every node, as the bus knows them: its own node's
//! (from the local shards' diffs) and each other node's (from theirs).
//! Sans-IO.
//!
//! The shards' replicas hold the same presences, but mixed: the ledger is
//! what lets the bus answer "everything node X owns" — to leave them all
//! when X goes down, to replace them all when X sends a snapshot, and to
//! send this node's own snapshot. Every operation returns the *effective*
//! diffs (joins not already held, leaves of what was held), so members see
//! each change exactly once however often a node re-announces itself.

use std::collections::HashMap;
use std::sync::Arc;

use crate::fanout::broadcast::NodeId;
use crate::presence::{Meta, PresenceDiff};

/// One node's presences: topic → `phx_ref` → (key, meta).
type NodePresences = HashMap<String, HashMap<Box<str>, (Arc<str>, Meta)>>;

/// Every node's presences.
#[derive(Debug, Default)]
pub struct Ledger {
    nodes: HashMap<NodeId, NodePresences>,
}

impl Ledger {
    /// Applies `node`'s diff; returns what changed (`None`: nothing).
    pub fn apply(&mut self, node: NodeId, diff: &PresenceDiff) -> Option<PresenceDiff> {
        let topics = self.nodes.entry(node).or_default();
        let held = topics.entry(diff.topic.clone()).or_default();
        let mut effective = PresenceDiff {
            topic: diff.topic.clone(),
            joins: Vec::new(),
            leaves: Vec::new(),
        };
        for (key, meta) in &diff.joins {
            if !held.contains_key(&meta.phx_ref) {
                held.insert(meta.phx_ref.clone(), (key.clone(), meta.clone()));
                effective.joins.push((key.clone(), meta.clone()));
            }
        }
        for (_, meta) in &diff.leaves {
            if let Some((key, meta)) = held.remove(&meta.phx_ref) {
                effective.leaves.push((key, meta));
            }
        }
        if held.is_empty() {
            topics.remove(&diff.topic);
        }
        if topics.is_empty() {
            self.nodes.remove(&node);
        }
        (!effective.joins.is_empty() || !effective.leaves.is_empty()).then_some(effective)
    }

    /// Forgets everything `node` owned; returns its presences as leaves,
    /// one diff per topic.
    pub fn remove_node(&mut self, node: NodeId) -> Vec<PresenceDiff> {
        let Some(topics) = self.nodes.remove(&node) else {
            return Vec::new();
        };
        topics
            .into_iter()
            .map(|(topic, held)| PresenceDiff {
                topic,
                joins: Vec::new(),
                leaves: held.into_values().collect(),
            })
            .collect()
    }

    /// Replaces what `node` owned by `snapshot` (diffs holding joins only);
    /// returns the difference as diffs, one per topic that changed.
    pub fn replace(&mut self, node: NodeId, snapshot: &[PresenceDiff]) -> Vec<PresenceDiff> {
        let mut old = self.nodes.remove(&node).unwrap_or_default();
        let mut changes = Vec::new();
        for topic in snapshot {
            let mut held = old.remove(&topic.topic).unwrap_or_default();
            let mut diff = PresenceDiff {
                topic: topic.topic.clone(),
                joins: Vec::new(),
                leaves: Vec::new(),
            };
            let mut now_held = HashMap::with_capacity(topic.joins.len());
            for (key, meta) in &topic.joins {
                if held.remove(&meta.phx_ref).is_none() {
                    diff.joins.push((key.clone(), meta.clone()));
                }
                now_held.insert(meta.phx_ref.clone(), (key.clone(), meta.clone()));
            }
            diff.leaves.extend(held.into_values());
            if !now_held.is_empty() {
                self.nodes
                    .entry(node)
                    .or_default()
                    .insert(topic.topic.clone(), now_held);
            }
            if !diff.joins.is_empty() || !diff.leaves.is_empty() {
                changes.push(diff);
            }
        }
        // Topics the snapshot no longer mentions: everything there left.
        changes.extend(old.into_iter().map(|(topic, held)| PresenceDiff {
            topic,
            joins: Vec::new(),
            leaves: held.into_values().collect(),
        }));
        changes
    }

    /// Everything `node` owns, as diffs holding joins only.
    pub fn snapshot(&self, node: NodeId) -> Vec<PresenceDiff> {
        let Some(topics) = self.nodes.get(&node) else {
            return Vec::new();
        };
        topics
            .iter()
            .map(|(topic, held)| PresenceDiff {
                topic: topic.clone(),
                joins: held.values().cloned().collect(),
                leaves: Vec::new(),
            })
            .collect()
    }

    /// Number of presences `node` owns.
    pub fn count(&self, node: NodeId) -> usize {
        self.nodes
            .get(&node)
            .map_or(0, |topics| topics.values().map(HashMap::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::MetaData;

    const A: NodeId = NodeId(1);

    fn meta(phx_ref: &str) -> Meta {
        Arc::new(MetaData {
            phx_ref: phx_ref.into(),
            json: format!(r#"{{"phx_ref":"{phx_ref}"}}"#).into(),
        })
    }

    fn diff(topic: &str, joins: &[(&str, &str)], leaves: &[(&str, &str)]) -> PresenceDiff {
        let list = |items: &[(&str, &str)]| {
            items
                .iter()
                .map(|(key, r)| (Arc::from(*key), meta(r)))
                .collect()
        };
        PresenceDiff {
            topic: topic.into(),
            joins: list(joins),
            leaves: list(leaves),
        }
    }

    fn refs(list: &[(Arc<str>, Meta)]) -> Vec<String> {
        let mut refs: Vec<String> = list.iter().map(|(_, m)| m.phx_ref.to_string()).collect();
        refs.sort();
        refs
    }

    #[test]
    fn diffs_apply_once_and_report_only_what_changed() {
        let mut ledger = Ledger::default();
        let first = ledger
            .apply(A, &diff("t", &[("ann", "R1"), ("bob", "R2")], &[]))
            .unwrap();
        assert_eq!(refs(&first.joins), ["R1", "R2"]);
        // The same joins again, and a leave of something never held.
        assert!(ledger
            .apply(A, &diff("t", &[("ann", "R1")], &[("zed", "R9")]))
            .is_none());
        let left = ledger.apply(A, &diff("t", &[], &[("ann", "R1")])).unwrap();
        assert_eq!(refs(&left.leaves), ["R1"]);
        assert_eq!(ledger.count(A), 1);
    }

    #[test]
    fn a_node_that_goes_down_leaves_everything() {
        let mut ledger = Ledger::default();
        ledger.apply(A, &diff("t1", &[("ann", "R1"), ("ann", "R2")], &[]));
        ledger.apply(A, &diff("t2", &[("bob", "R3")], &[]));
        ledger.apply(NodeId(2), &diff("t1", &[("cat", "R4")], &[]));
        let mut leaves = ledger.remove_node(A);
        leaves.sort_by(|a, b| a.topic.cmp(&b.topic));
        assert_eq!(leaves.len(), 2);
        assert_eq!(refs(&leaves[0].leaves), ["R1", "R2"]);
        assert!(leaves[0].joins.is_empty());
        assert_eq!(ledger.count(A), 0);
        assert_eq!(ledger.count(NodeId(2)), 1, "other nodes keep theirs");
        assert!(ledger.remove_node(A).is_empty());
    }

    #[test]
    fn a_snapshot_replaces_what_a_node_owned() {
        let mut ledger = Ledger::default();
        ledger.apply(A, &diff("t1", &[("ann", "R1"), ("bob", "R2")], &[]));
        ledger.apply(A, &diff("gone", &[("cat", "R3")], &[]));
        let snapshot = [
            diff("t1", &[("bob", "R2"), ("dan", "R4")], &[]),
            diff("new", &[("eve", "R5")], &[]),
        ];
        let mut changes = ledger.replace(A, &snapshot);
        changes.sort_by(|a, b| a.topic.cmp(&b.topic));
        let topics: Vec<&str> = changes.iter().map(|d| d.topic.as_str()).collect();
        assert_eq!(topics, ["gone", "new", "t1"]);
        assert_eq!(refs(&changes[0].leaves), ["R3"]);
        assert_eq!(refs(&changes[1].joins), ["R5"]);
        assert_eq!(refs(&changes[2].joins), ["R4"]);
        assert_eq!(refs(&changes[2].leaves), ["R1"]);
        // The same snapshot again changes nothing.
        assert!(ledger.replace(A, &snapshot).is_empty());
        let mut mine = ledger.snapshot(A);
        mine.sort_by(|a, b| a.topic.cmp(&b.topic));
        assert_eq!(refs(&mine[1].joins), ["R2", "R4"]);
        assert_eq!(ledger.count(A), 3);
    }
}
