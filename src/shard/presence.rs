//! The shard's side of presence: tracking its clients on presence-enabled
//! routes, pushing `presence_state` after joins, and sending this turn's
//! changes to every shard at the end of the turn (see [`crate::presence`]).

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::Value;

use super::inbox::ShardMessage;
use super::Shard;
use crate::fanout::broadcast::Broadcast;
use crate::metrics::ShardMetrics;
use crate::presence::tracker::UpdateError;
use crate::presence::PresenceDiff;
use crate::protocol::channels::{reply_payload, Outgoing, PresenceJoin, PresenceUpdate};
use crate::protocol::message::{Payload, RawJson};

/// One topic's presence changes of one turn, as every shard receives them:
/// the structured diff (for the replicas) and its `presence_diff` broadcast
/// (encoded once for every subscriber on every shard).
#[derive(Debug)]
pub struct PresenceSync {
    /// The changes.
    pub diff: PresenceDiff,
    /// The `presence_diff` message.
    pub broadcast: Broadcast,
}

/// Parses a JSON payload into a value (joins and updates only; not the
/// fan-out path).
fn payload_value(payload: &Payload) -> Option<Value> {
    match payload {
        Payload::Json(text) => serde_json::from_slice(text).ok(),
        Payload::Binary(_) => None,
    }
}

/// A JSON scalar as a presence key (Phoenix stringifies keys).
fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Shard {
    /// Tracks a client that joined a presence-enabled topic, then pushes it
    /// the topic's state. Its own join reaches it (and everyone) in this
    /// turn's diff, after the state, as the JS client expects.
    pub(super) fn track_presence(&mut self, key: usize, join: PresenceJoin) {
        let Some(route) = self
            .config
            .routes
            .get(join.route)
            .and_then(|r| r.presence.clone())
        else {
            return;
        };
        let payload = payload_value(&join.payload);
        let Some(serial) = self.client_serial(key) else {
            return;
        };
        let user_id = self
            .client_mut(key)
            .and_then(|c| c.identity().user_id.clone());
        // The key: the configured join payload field, else the user id,
        // else an id of this connection alone.
        let presence_key = route
            .key_field
            .as_deref()
            .and_then(|field| payload.as_ref()?.get(field))
            .and_then(key_text)
            .or(user_id)
            .unwrap_or_else(|| format!("anonymous:{}:{}:{serial}", self.instance, self.id));
        // A `meta` that is not an object is ignored rather than failing a
        // join that already succeeded.
        let meta = payload
            .as_ref()
            .and_then(|p| p.get("meta"))
            .filter(|m| m.is_object());
        if let Err(error) = self.presence.track(&join.topic, key, &presence_key, meta) {
            tracing::debug!(%error, "presence not tracked");
        }
        let state = self.replica.state_json(&join.topic);
        self.send_message(
            key,
            &Outgoing {
                join_ref: join.join_ref,
                msg_ref: RawJson::null(),
                topic: join.topic_name,
                event: Cow::Borrowed("presence_state"),
                payload: Cow::Owned(state.to_vec()),
            },
        );
    }

    /// `presence_update`: replaces the caller's metas with the payload's
    /// `meta` object and replies.
    pub(super) fn update_presence(&mut self, key: usize, update: PresenceUpdate) {
        let payload = payload_value(&update.payload);
        let meta = payload.as_ref().and_then(|p| p.get("meta"));
        let reply = match self.presence.update(&update.topic, key, meta) {
            Ok(()) => reply_payload("ok", b"{}"),
            Err(UpdateError::NotTracked) => reply_payload("error", br#"{"reason":"not tracked"}"#),
            Err(UpdateError::Meta(_)) => {
                reply_payload("error", br#"{"reason":"meta must be a JSON object"}"#)
            }
        };
        self.send_message(
            key,
            &Outgoing {
                join_ref: update.join_ref,
                msg_ref: update.msg_ref,
                topic: update.topic_name,
                event: Cow::Borrowed("phx_reply"),
                payload: Cow::Owned(reply),
            },
        );
    }

    /// End of turn: each changed topic's diff goes to this shard's replica
    /// and subscribers, and to every other shard.
    pub(super) fn flush_presence(&mut self) {
        let diffs: Vec<PresenceDiff> = self.presence.take_diffs().collect();
        for diff in diffs {
            let payload = Payload::Json(diff.payload());
            let broadcast = match Broadcast::new(
                diff.topic.clone(),
                "presence_diff".to_string(),
                payload,
                None,
            ) {
                Ok(broadcast) => broadcast,
                Err(error) => {
                    tracing::warn!(%error, topic = %diff.topic, "presence diff not sent");
                    continue;
                }
            };
            let sync = Arc::new(PresenceSync { diff, broadcast });
            ShardMetrics::add(&self.metrics[self.id].presence_diffs, 1);
            self.on_presence_sync(&sync);
            for (shard, inbox) in self.peers.iter().enumerate() {
                if shard != self.id {
                    inbox.send(ShardMessage::Presence(sync.clone()));
                }
            }
        }
    }

    /// Applies a diff to the replica and delivers it, in one step: a client
    /// gets either the state with the change or the diff, never neither.
    pub(super) fn on_presence_sync(&mut self, sync: &PresenceSync) {
        self.replica.apply(&sync.diff);
        self.deliver(&sync.broadcast);
    }
}
