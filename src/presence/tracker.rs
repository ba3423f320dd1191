//! The presences a shard owns — one per (topic, client) — and the changes
//! made to them during the current loop turn.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Meta, MetaData, MetaError, PresenceDiff, RefMinter};
use crate::fanout::topics::ClientId;

/// One tracked client on one topic.
#[derive(Debug)]
struct Tracked {
    key: Arc<str>,
    meta: Meta,
}

/// Why a `presence_update` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The client has no presence on the topic.
    #[error("not tracked")]
    NotTracked,
    /// The new meta is not an object.
    #[error(transparent)]
    Meta(#[from] MetaError),
}

/// A shard's own presences and this turn's changes to them.
#[derive(Debug)]
pub struct LocalPresence {
    /// Topic → client key → what it tracks.
    tracked: HashMap<String, HashMap<ClientId, Tracked>>,
    /// Changes of this turn, by topic, in the order made.
    pending: HashMap<String, PresenceDiff>,
    minter: RefMinter,
}

impl LocalPresence {
    /// An empty tracker minting refs with `minter`.
    pub fn new(minter: RefMinter) -> LocalPresence {
        LocalPresence {
            tracked: HashMap::new(),
            pending: HashMap::new(),
            minter,
        }
    }

    /// Tracks `client` on `topic` under `key` with the meta object `object`.
    /// Tracking a client again replaces its presence (a leave and a join).
    pub fn track(
        &mut self,
        topic: &str,
        client: ClientId,
        key: &str,
        object: Option<&serde_json::Value>,
    ) -> Result<(), MetaError> {
        let meta = MetaData::new(object, self.minter.next_ref(), None)?;
        self.untrack(topic, client);
        let key: Arc<str> = Arc::from(key);
        self.diff(topic).joins.push((key.clone(), meta.clone()));
        self.tracked
            .entry(topic.to_string())
            .or_default()
            .insert(client, Tracked { key, meta });
        Ok(())
    }

    /// Stops tracking `client` on `topic` (left, replaced or disconnected);
    /// nothing happens if it was not tracked.
    pub fn untrack(&mut self, topic: &str, client: ClientId) {
        if self.tracked.is_empty() {
            return; // the usual case when no route tracks presence: no hashing
        }
        let Some(clients) = self.tracked.get_mut(topic) else {
            return;
        };
        let Some(gone) = clients.remove(&client) else {
            return;
        };
        if clients.is_empty() {
            self.tracked.remove(topic);
        }
        self.diff(topic).leaves.push((gone.key, gone.meta));
    }

    /// Replaces `client`'s meta on `topic`: the new meta (new `phx_ref`,
    /// `phx_ref_prev` = the old one) joins and the old one leaves, in one diff.
    pub fn update(
        &mut self,
        topic: &str,
        client: ClientId,
        object: Option<&serde_json::Value>,
    ) -> Result<(), UpdateError> {
        let old = self
            .tracked
            .get(topic)
            .and_then(|clients| clients.get(&client))
            .ok_or(UpdateError::NotTracked)?;
        let meta = MetaData::new(object, self.minter.next_ref(), Some(&old.meta.phx_ref))?;
        let key = old.key.clone();
        let old_meta = old.meta.clone();
        let diff = self.diff(topic);
        diff.joins.push((key.clone(), meta.clone()));
        diff.leaves.push((key.clone(), old_meta));
        if let Some(tracked) = self.tracked.get_mut(topic).and_then(|c| c.get_mut(&client)) {
            tracked.meta = meta;
        }
        Ok(())
    }

    /// Whether this turn changed anything.
    pub fn has_changes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// This turn's diffs, one per changed topic; the turn starts afresh.
    pub fn take_diffs(&mut self) -> impl Iterator<Item = PresenceDiff> + '_ {
        self.pending.drain().map(|(_, diff)| diff)
    }

    fn diff(&mut self, topic: &str) -> &mut PresenceDiff {
        if !self.pending.contains_key(topic) {
            self.pending.insert(
                topic.to_string(),
                PresenceDiff {
                    topic: topic.to_string(),
                    ..PresenceDiff::default()
                },
            );
        }
        self.pending.get_mut(topic).expect("inserted above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_turn_batches_every_change_of_a_topic_into_one_diff() {
        let mut local = LocalPresence::new(RefMinter::new(1, 0));
        for client in 0..100 {
            local
                .track("room", ClientId(client), &format!("u{client}"), None)
                .unwrap();
        }
        local.untrack("room", ClientId(7));
        local.untrack("room", ClientId(7)); // already gone: nothing
        let diffs: Vec<PresenceDiff> = local.take_diffs().collect();
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].joins.len(), 100);
        assert_eq!(diffs[0].leaves.len(), 1);
        assert!(!local.has_changes());
    }

    #[test]
    fn updates_join_the_new_meta_and_leave_the_old() {
        let mut local = LocalPresence::new(RefMinter::new(1, 0));
        local
            .track("room", ClientId(1), "alice", Some(&json!({"s": 1})))
            .unwrap();
        let old = local.take_diffs().next().unwrap().joins[0].1.clone();
        local
            .update("room", ClientId(1), Some(&json!({"s": 2})))
            .unwrap();
        let diff = local.take_diffs().next().unwrap();
        let new = &diff.joins[0].1;
        assert!(new
            .json
            .contains(&format!("\"phx_ref_prev\":\"{}\"", old.phx_ref)));
        assert_eq!(diff.leaves[0].1, old);
        assert_eq!(
            local.update("room", ClientId(2), None),
            Err(UpdateError::NotTracked)
        );
        assert_eq!(
            local.update("room", ClientId(1), Some(&json!("x"))),
            Err(UpdateError::Meta(MetaError::NotAnObject))
        );
    }
}
