//! The presences a shard owns — one per (topic, client) — and the changes
//! made to them during the current loop turn.
//!
//! Each presence has a size, its key plus its meta object as compact JSON
//! (what the client chose; the server's `phx_ref` fields are not counted).
//! One presence may not be larger than [`MetaLimits::presence`], and one
//! client's presences on all its topics not larger together than
//! [`MetaLimits::client`]: a client cannot pin more than that in this
//! shard's tracker and every shard's replica, however many topics it joins.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Meta, MetaData, MetaError, PresenceDiff, RefMinter};
use crate::fanout::topics::ClientId;

/// One tracked client on one topic.
#[derive(Debug)]
struct Tracked {
    key: Arc<str>,
    meta: Meta,
    /// Key plus meta object, in bytes (what the limits count).
    size: usize,
}

/// What one client's presences hold, on all its topics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    /// Number of presences.
    presences: usize,
    /// Sum of their sizes.
    bytes: usize,
}

/// Bounds on presence sizes (`socket.presence_meta_max` and
/// `socket.presence_meta_total_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaLimits {
    /// Largest size of one presence: key plus meta object as JSON.
    pub presence: usize,
    /// Largest sum of the sizes of one client's presences.
    pub client: usize,
}

impl MetaLimits {
    /// No bounds (tests).
    pub const UNLIMITED: MetaLimits = MetaLimits {
        presence: usize::MAX,
        client: usize::MAX,
    };
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
    /// Per client with at least one presence: what its presences hold.
    usage: HashMap<ClientId, Usage>,
    minter: RefMinter,
}

impl LocalPresence {
    /// An empty tracker minting refs with `minter`.
    pub fn new(minter: RefMinter) -> LocalPresence {
        LocalPresence {
            tracked: HashMap::new(),
            pending: HashMap::new(),
            usage: HashMap::new(),
            minter,
        }
    }

    /// Tracks `client` on `topic` under `key` with the meta object `object`.
    /// Tracking a client again replaces its presence (a leave and a join).
    /// A presence over `limits`, or one that would take the client's
    /// presences over them, is refused and changes nothing.
    pub fn track(
        &mut self,
        topic: &str,
        client: ClientId,
        key: &str,
        object: Option<&serde_json::value::RawValue>,
        limits: MetaLimits,
    ) -> Result<(), MetaError> {
        let (meta, meta_size) = MetaData::sized(object, self.minter.next_ref(), None)?;
        let size = key.len().saturating_add(meta_size);
        let replaced = self.tracked_size(topic, client);
        self.check(client, replaced, size, limits)?;
        self.untrack(topic, client);
        let key: Arc<str> = Arc::from(key);
        self.diff(topic).joins.push((key.clone(), meta.clone()));
        self.tracked
            .entry(topic.to_string())
            .or_default()
            .insert(client, Tracked { key, meta, size });
        let usage = self.usage.entry(client).or_default();
        usage.presences += 1;
        usage.bytes += size;
        Ok(())
    }

    /// Refuses a presence of `size` replacing one of `replaced` bytes
    /// (0: none) when it breaks `limits`.
    fn check(
        &self,
        client: ClientId,
        replaced: usize,
        size: usize,
        limits: MetaLimits,
    ) -> Result<(), MetaError> {
        if size > limits.presence {
            return Err(MetaError::TooLarge);
        }
        let held = self.usage.get(&client).map_or(0, |u| u.bytes);
        if held.saturating_sub(replaced).saturating_add(size) > limits.client {
            return Err(MetaError::TotalTooLarge);
        }
        Ok(())
    }

    /// The size of `client`'s presence on `topic` (0: none).
    fn tracked_size(&self, topic: &str, client: ClientId) -> usize {
        self.tracked
            .get(topic)
            .and_then(|clients| clients.get(&client))
            .map_or(0, |t| t.size)
    }

    /// What `client`'s presences hold: (presences, bytes).
    pub fn usage(&self, client: ClientId) -> (usize, usize) {
        self.usage
            .get(&client)
            .map_or((0, 0), |u| (u.presences, u.bytes))
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
        if let Some(usage) = self.usage.get_mut(&client) {
            usage.presences = usage.presences.saturating_sub(1);
            usage.bytes = usage.bytes.saturating_sub(gone.size);
            if usage.presences == 0 {
                self.usage.remove(&client);
            }
        }
        self.diff(topic).leaves.push((gone.key, gone.meta));
    }

    /// Replaces `client`'s meta on `topic`: the new meta (new `phx_ref`,
    /// `phx_ref_prev` = the old one) joins and the old one leaves, in one diff.
    /// A meta over `limits` is refused and the old one stays.
    pub fn update(
        &mut self,
        topic: &str,
        client: ClientId,
        object: Option<&serde_json::value::RawValue>,
        limits: MetaLimits,
    ) -> Result<(), UpdateError> {
        let old = self
            .tracked
            .get(topic)
            .and_then(|clients| clients.get(&client))
            .ok_or(UpdateError::NotTracked)?;
        let (meta, meta_size) =
            MetaData::sized(object, self.minter.next_ref(), Some(&old.meta.phx_ref))?;
        let size = old.key.len().saturating_add(meta_size);
        let (key, old_meta, old_size) = (old.key.clone(), old.meta.clone(), old.size);
        self.check(client, old_size, size, limits)?;
        let diff = self.diff(topic);
        diff.joins.push((key.clone(), meta.clone()));
        diff.leaves.push((key, old_meta));
        if let Some(tracked) = self.tracked.get_mut(topic).and_then(|c| c.get_mut(&client)) {
            tracked.meta = meta;
            tracked.size = size;
        }
        if let Some(usage) = self.usage.get_mut(&client) {
            usage.bytes = usage.bytes.saturating_sub(old_size).saturating_add(size);
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
                .track(
                    "room",
                    ClientId(client),
                    &format!("u{client}"),
                    None,
                    MetaLimits::UNLIMITED,
                )
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
            .track(
                "room",
                ClientId(1),
                "alice",
                Some(&raw(json!({"s": 1}))),
                MetaLimits::UNLIMITED,
            )
            .unwrap();
        let old = local.take_diffs().next().unwrap().joins[0].1.clone();
        local
            .update(
                "room",
                ClientId(1),
                Some(&raw(json!({"s": 2}))),
                MetaLimits::UNLIMITED,
            )
            .unwrap();
        let diff = local.take_diffs().next().unwrap();
        let new = &diff.joins[0].1;
        assert!(new
            .json
            .contains(&format!("\"phx_ref_prev\":\"{}\"", old.phx_ref)));
        assert_eq!(diff.leaves[0].1, old);
        assert_eq!(
            local.update("room", ClientId(2), None, MetaLimits::UNLIMITED),
            Err(UpdateError::NotTracked)
        );
        assert_eq!(
            local.update(
                "room",
                ClientId(1),
                Some(&raw(json!("x"))),
                MetaLimits::UNLIMITED
            ),
            Err(UpdateError::Meta(MetaError::NotAnObject))
        );
    }

    /// A meta object of exactly `n` bytes as compact JSON (`n` ≥ 8).
    fn raw(value: serde_json::Value) -> Box<serde_json::value::RawValue> {
        serde_json::value::to_raw_value(&value).unwrap()
    }

    fn meta_of(n: usize) -> Box<serde_json::value::RawValue> {
        let value = serde_json::value::to_raw_value(&json!({ "p": "x".repeat(n - 8) })).unwrap();
        assert_eq!(value.get().len(), n);
        value
    }

    const LIMITS: MetaLimits = MetaLimits {
        presence: 100,
        client: 250,
    };

    /// Tracks `client` on `topic` under `key` with a meta of `meta_len`
    /// bytes, within [`LIMITS`].
    fn track(
        local: &mut LocalPresence,
        topic: &str,
        client: usize,
        key: &str,
        meta_len: usize,
    ) -> Result<(), MetaError> {
        local.track(
            topic,
            ClientId(client),
            key,
            Some(&meta_of(meta_len)),
            LIMITS,
        )
    }

    #[test]
    fn a_presence_is_its_key_plus_its_meta_object() {
        let mut local = LocalPresence::new(RefMinter::new(1, 0));
        // Key 4 bytes + meta 96 = 100: at the limit.
        track(&mut local, "a", 1, "ann1", 96).unwrap();
        assert_eq!(local.usage(ClientId(1)), (1, 100));
        // One byte more in the key is too much; nothing changes.
        assert_eq!(
            track(&mut local, "b", 1, "ann12", 96),
            Err(MetaError::TooLarge)
        );
        // The server's refs do not count; no meta counts as `{}`.
        local.track("c", ClientId(1), "ann1", None, LIMITS).unwrap();
        assert_eq!(local.usage(ClientId(1)), (2, 106));
        let diffs: Vec<PresenceDiff> = local.take_diffs().collect();
        assert_eq!(diffs.len(), 2, "the refused track left no diff");
    }

    #[test]
    fn a_client_total_is_bounded_and_released_by_untrack() {
        let mut local = LocalPresence::new(RefMinter::new(1, 0));
        let meta = meta_of(96); // 100 bytes with the key "k-10"
        for topic in ["t1", "t2"] {
            local
                .track(topic, ClientId(1), "k-10", Some(&meta), LIMITS)
                .unwrap();
        }
        assert_eq!(
            local.track("t3", ClientId(1), "k-10", Some(&meta), LIMITS),
            Err(MetaError::TotalTooLarge)
        );
        assert_eq!(local.usage(ClientId(1)), (2, 200));
        // Another client has its own budget.
        local
            .track("t3", ClientId(2), "k-10", Some(&meta), LIMITS)
            .unwrap();
        // Re-tracking a topic replaces its presence: its bytes are not counted twice.
        local
            .track("t2", ClientId(1), "k-10", Some(&meta), LIMITS)
            .unwrap();
        assert_eq!(local.usage(ClientId(1)), (2, 200));
        // Leaving frees the bytes.
        local.untrack("t1", ClientId(1));
        assert_eq!(local.usage(ClientId(1)), (1, 100));
        local
            .track("t3", ClientId(1), "k-10", Some(&meta), LIMITS)
            .unwrap();
        local.untrack("t2", ClientId(1));
        local.untrack("t3", ClientId(1));
        local.untrack("t3", ClientId(2));
        assert_eq!(local.usage(ClientId(1)), (0, 0));
        assert!(
            local.usage.is_empty(),
            "no accounting left for gone clients"
        );
        assert!(local.tracked.is_empty());
    }

    #[test]
    fn an_update_over_a_limit_keeps_the_old_meta() {
        let mut local = LocalPresence::new(RefMinter::new(1, 0));
        track(&mut local, "t1", 1, "k-10", 96).unwrap();
        track(&mut local, "t2", 1, "k-10", 56).unwrap();
        local.take_diffs().for_each(drop);
        assert_eq!(local.usage(ClientId(1)), (2, 160));
        assert_eq!(
            local.update("t1", ClientId(1), Some(&meta_of(97)), LIMITS),
            Err(UpdateError::Meta(MetaError::TooLarge))
        );
        // The update replaces the old size: 160 - 60 + 100.
        local
            .update("t2", ClientId(1), Some(&meta_of(96)), LIMITS)
            .unwrap();
        assert_eq!(local.usage(ClientId(1)), (2, 200));
        track(&mut local, "t3", 1, "k-10", 40).unwrap();
        // 244 held; growing t3 by 10 bytes would make 254.
        assert_eq!(
            local.update("t3", ClientId(1), Some(&meta_of(50)), LIMITS),
            Err(UpdateError::Meta(MetaError::TotalTooLarge))
        );
        assert_eq!(local.usage(ClientId(1)), (3, 244));
        // Shrinking always fits, and makes room.
        local
            .update("t1", ClientId(1), Some(&meta_of(10)), LIMITS)
            .unwrap();
        local
            .update("t3", ClientId(1), Some(&meta_of(50)), LIMITS)
            .unwrap();
        assert_eq!(local.usage(ClientId(1)), (3, 14 + 100 + 54));
        let diffs: Vec<PresenceDiff> = local.take_diffs().collect();
        let joins: usize = diffs.iter().map(|d| d.joins.len()).sum();
        let leaves: usize = diffs.iter().map(|d| d.leaves.len()).sum();
        assert_eq!((joins, leaves), (4, 3), "refused updates left no diff");
    }
}
