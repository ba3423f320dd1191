//! A shard's replica of the presence state of every presence topic, built
//! from the diffs all shards emit, and its encoding as `presence_state`.

use std::collections::HashMap;
use std::sync::Arc;

use super::{write_presence, Meta, PresenceDiff};

/// The presence state of one topic.
#[derive(Debug, Default)]
struct TopicState {
    /// Key → its metas, one per tracked client.
    members: HashMap<Arc<str>, Vec<Meta>>,
    /// The encoded state, kept until the next change: a burst of joins in
    /// one loop turn encodes it once, not once per joining client.
    encoded: Option<Arc<[u8]>>,
}

/// Every presence topic's state, as this shard knows it.
#[derive(Debug, Default)]
pub struct PresenceReplica {
    topics: HashMap<String, TopicState>,
}

impl PresenceReplica {
    /// Applies a diff: joins first (a meta already present is not added
    /// twice), then leaves by `phx_ref` — the order the JS client uses, so an
    /// update (new meta joined, old meta left) lands as one change.
    pub fn apply(&mut self, diff: &PresenceDiff) {
        let state = self.topics.entry(diff.topic.clone()).or_default();
        state.encoded = None;
        for (key, meta) in &diff.joins {
            let metas = state.members.entry(key.clone()).or_default();
            if !metas.iter().any(|m| m.phx_ref == meta.phx_ref) {
                metas.push(meta.clone());
            }
        }
        for (key, meta) in &diff.leaves {
            if let Some(metas) = state.members.get_mut(key) {
                metas.retain(|m| m.phx_ref != meta.phx_ref);
                if metas.is_empty() {
                    state.members.remove(key);
                }
            }
        }
        if state.members.is_empty() {
            self.topics.remove(&diff.topic);
        }
    }

    /// The `presence_state` payload of `topic`: `{"key":{"metas":[...]},...}`.
    pub fn state_json(&mut self, topic: &str) -> Arc<[u8]> {
        let Some(state) = self.topics.get_mut(topic) else {
            return Arc::from(&b"{}"[..]);
        };
        state
            .encoded
            .get_or_insert_with(|| {
                let mut out = Vec::with_capacity(2 + 96 * state.members.len());
                out.push(b'{');
                for (i, (key, metas)) in state.members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_presence(&mut out, key, metas.iter().map(|m| m.json.as_bytes()));
                }
                out.push(b'}');
                Arc::from(out)
            })
            .clone()
    }

    /// Number of keys present on `topic`.
    pub fn key_count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |s| s.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::MetaData;
    use serde_json::{json, Value};

    fn meta(r: &str) -> Meta {
        MetaData::new(None, r.into(), None).unwrap()
    }

    #[test]
    fn joins_leaves_and_two_tabs_of_one_user() {
        let mut replica = PresenceReplica::default();
        let (a1, a2, b1) = (meta("A1"), meta("A2"), meta("B1"));
        replica.apply(&PresenceDiff {
            topic: "t".into(),
            joins: vec![("alice".into(), a1.clone()), ("bob".into(), b1.clone())],
            leaves: vec![],
        });
        // The second tab of alice, and a duplicate of the first (ignored).
        replica.apply(&PresenceDiff {
            topic: "t".into(),
            joins: vec![("alice".into(), a2.clone()), ("alice".into(), a1.clone())],
            leaves: vec![("bob".into(), b1)],
        });
        let state: Value = serde_json::from_slice(&replica.state_json("t")).unwrap();
        assert_eq!(
            state,
            json!({"alice": {"metas": [{"phx_ref": "A1"}, {"phx_ref": "A2"}]}})
        );
        // One tab closes: alice stays; the other closes: alice leaves.
        replica.apply(&PresenceDiff {
            topic: "t".into(),
            joins: vec![],
            leaves: vec![("alice".into(), a1)],
        });
        assert_eq!(replica.key_count("t"), 1);
        replica.apply(&PresenceDiff {
            topic: "t".into(),
            joins: vec![],
            leaves: vec![("alice".into(), a2)],
        });
        assert_eq!(&*replica.state_json("t"), b"{}");
        assert_eq!(replica.key_count("t"), 0);
    }
}
