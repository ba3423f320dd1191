//! The presence component: tracking this shard's clients on presence
//! routes, replicating every shard's changes, and pushing `presence_state`
//! to joiners (see [`crate::presence`]).
//!
//! A join on a presence route is tracked at once; its change leaves at the
//! end of the turn in the topic's one diff for the turn, which every shard
//! applies to its replica and delivers. Only then does the joiner get its
//! `presence_state`, read from the replica — so, as on Phoenix, a joiner
//! sees its join reply, the `presence_diff` announcing it, then a state
//! that already holds it, and the JS `Presence` helper syncs once.
//!
//! The join's reply waits for the tracker: a presence over
//! `socket.presence_meta_max`, or one taking the client's presences over
//! `socket.presence_meta_total_max`, is not tracked, the join is undone and
//! its reply is an error; a `presence_update` over them keeps the old meta
//! and gets an error reply.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use crate::protocol::json_object::JsonObject;

use super::inbox::ShardMessage;
use super::Shard;
use crate::fanout::broadcast::Content;
use crate::fanout::topics::ClientId;
use crate::metrics::ShardMetrics;
use crate::presence::state::PresenceReplica;
use crate::presence::tracker::{LocalPresence, MetaLimits, UpdateError};
use crate::presence::{presence_key, MetaError, PresenceSync, RefMinter};
use crate::protocol::channels::{reply_payload, Outgoing, PresenceJoin, PresenceUpdate};
use crate::protocol::message::{Name, Payload, RawJson};

/// A joiner waiting for its `presence_state` until the turn's diffs are out.
#[derive(Debug)]
struct StatePush {
    client: ClientId,
    serial: u64,
    topic: String,
    topic_name: Name,
    join_ref: RawJson,
}

/// The presence component's state.
#[derive(Debug)]
pub struct Presence {
    /// The presences this shard owns, and this turn's changes to them.
    tracker: LocalPresence,
    /// Every presence topic's state, from all shards' diffs.
    replica: PresenceReplica,
    /// Random per process start (names anonymous presences).
    instance: u64,
    /// This shard (names anonymous presences).
    shard: usize,
    /// Joiners of this turn, in join order.
    awaiting_state: Vec<StatePush>,
}

impl Presence {
    /// The component of shard `shard` of process `instance`.
    pub fn new(instance: u64, shard: usize) -> Presence {
        Presence {
            tracker: LocalPresence::new(RefMinter::new(instance as u32, shard as u16)),
            replica: PresenceReplica::default(),
            instance,
            shard,
            awaiting_state: Vec::new(),
        }
    }

    /// Stops tracking a client on a topic it left (or lost).
    pub fn untrack(&mut self, topic: &str, client: ClientId) {
        self.tracker.untrack(topic, client);
    }

    /// A topic's state as `presence_state` JSON, from the replica.
    pub fn state_json(&mut self, topic: &str) -> Arc<[u8]> {
        self.replica.state_json(topic)
    }
}

/// The `response` of an error reply refusing a meta.
fn refusal(error: &MetaError) -> &'static [u8] {
    match error {
        MetaError::NotAnObject => br#"{"reason":"meta must be a JSON object"}"#,
        MetaError::TooLarge => br#"{"reason":"presence meta too large"}"#,
        MetaError::TotalTooLarge => br#"{"reason":"presence meta total too large"}"#,
    }
}

/// Reads a JSON object payload's fields, each kept as its exact text
/// (joins and updates only; not the fan-out path).
fn payload_object(payload: &Payload) -> Option<JsonObject<'_>> {
    match payload {
        Payload::Json(text) => JsonObject::parse_bytes(text).ok(),
        Payload::Binary(_) => None,
    }
}

impl Shard {
    /// The configured bounds on presence metas.
    fn meta_limits(&self) -> MetaLimits {
        MetaLimits {
            presence: self.config.socket.presence_meta_max,
            client: self.config.socket.presence_meta_total_max,
        }
    }

    /// Tracks a client that joined a presence-enabled topic and sends the
    /// join's reply; its state follows at the end of the turn. A presence
    /// over the limits is not tracked: the join is undone and its reply is
    /// an error.
    pub(super) fn track_presence(&mut self, id: ClientId, join: PresenceJoin, now: Instant) {
        match self.track(id, &join) {
            Ok(()) => self.send_message(id, &join.reply, now),
            Err(error) => return self.refuse_join(id, join, &error, now),
        }
        let Some(client) = self.clients.get(id) else {
            return;
        };
        self.presence.awaiting_state.push(StatePush {
            client: id,
            serial: client.serial,
            topic: join.topic,
            topic_name: join.topic_name,
            join_ref: join.join_ref,
        });
    }

    /// Answers a join whose presence was refused: the channel is left
    /// silently (nothing was tracked, no diff goes out) and the reply says
    /// why.
    fn refuse_join(&mut self, id: ClientId, join: PresenceJoin, error: &MetaError, now: Instant) {
        tracing::debug!(%error, topic = %join.topic, "presence refused");
        let slot = self
            .clients
            .get_mut(id)
            .and_then(|c| c.session.channels.undo_join(&join.topic, &join.join_ref));
        let kind = self.clients.get(id).map(|c| c.session.frame_kind());
        if let (Some(slot), Some(kind)) = (slot, kind) {
            // Not a `leave` for the backend: the join never succeeded.
            self.unsubscribe(id, &join.topic, kind, slot);
        }
        let reply = Outgoing {
            payload: Cow::Owned(reply_payload("error", refusal(error))),
            ..join.reply
        };
        self.send_message(id, &reply, now);
    }

    /// Tracks the presence of a join, within the limits. A `meta` that is
    /// not an object is ignored rather than failing the join.
    fn track(&mut self, id: ClientId, join: &PresenceJoin) -> Result<(), MetaError> {
        let limits = self.meta_limits();
        let Some(route) = self
            .config
            .routes
            .get(join.route)
            .and_then(|r| r.presence.as_ref())
        else {
            return Ok(());
        };
        let Some(client) = self.clients.get(id) else {
            return Ok(());
        };
        let serial = client.serial;
        let payload = payload_object(&join.payload);
        let presence = &mut self.presence;
        let (instance, shard) = (presence.instance, presence.shard);
        let key = presence_key(
            route.key_field.as_deref(),
            payload.as_ref(),
            client.session.identity().user_id.as_deref(),
            || format!("anonymous:{instance}:{shard}:{serial}"),
        );
        let meta = payload.as_ref().and_then(|p| p.get_object("meta"));
        presence.tracker.track(&join.topic, id, &key, meta, limits)
    }

    /// `presence_update`: replaces the caller's metas with the payload's
    /// `meta` object and replies.
    pub(super) fn update_presence(&mut self, id: ClientId, update: PresenceUpdate, now: Instant) {
        let payload = payload_object(&update.payload);
        let meta = payload.as_ref().and_then(|p| p.get("meta"));
        let limits = self.meta_limits();
        let reply = match self
            .presence
            .tracker
            .update(&update.topic, id, meta, limits)
        {
            Ok(()) => reply_payload("ok", b"{}"),
            Err(UpdateError::NotTracked) => reply_payload("error", br#"{"reason":"not tracked"}"#),
            Err(UpdateError::Meta(error)) => reply_payload("error", refusal(&error)),
        };
        let reply = Outgoing {
            join_ref: update.join_ref,
            msg_ref: update.msg_ref,
            topic: update.topic_name,
            event: Cow::Borrowed("phx_reply"),
            payload: Cow::Owned(reply),
        };
        self.send_message(id, &reply, now);
    }

    /// End of turn: each changed topic's diff goes to this shard's replica
    /// and subscribers and to every other shard; then this turn's joiners
    /// get their states, which hold them.
    pub(super) fn presence_end_of_turn(&mut self, now: Instant) {
        if self.presence.tracker.has_changes() {
            let diffs: Vec<_> = self.presence.tracker.take_diffs().collect();
            for diff in diffs {
                let content = Content::new(
                    diff.topic.clone(),
                    "presence_diff".to_string(),
                    Payload::Json(diff.payload()),
                );
                let content = match content {
                    Ok(content) => content,
                    Err(error) => {
                        tracing::warn!(%error, topic = %diff.topic, "presence diff not sent");
                        continue;
                    }
                };
                let broadcast = self
                    .distributor
                    .stamp(content, None, super::channels::unix_ms());
                let sync = Arc::new(PresenceSync { diff, broadcast });
                ShardMetrics::add(&self.metrics().presence_diffs, 1);
                self.on_presence_sync(&sync, now);
                self.send_to_peers(|| ShardMessage::Presence(sync.clone()));
                if let Some(cluster) = self.distributor.cluster() {
                    cluster.presence(&sync);
                }
            }
        }
        let joiners = std::mem::take(&mut self.presence.awaiting_state);
        for push in joiners {
            if self
                .clients
                .get(push.client)
                .is_none_or(|c| c.serial != push.serial)
            {
                continue; // gone within the turn
            }
            let state = self.presence.state_json(&push.topic);
            let message = Outgoing {
                join_ref: push.join_ref,
                msg_ref: RawJson::null(),
                topic: push.topic_name,
                event: Cow::Borrowed("presence_state"),
                payload: Cow::Owned(state.to_vec()),
            };
            self.send_message(push.client, &message, now);
        }
    }

    /// Applies a diff to the replica and delivers it, in one step: a client
    /// gets either the state with the change or the diff, never neither.
    pub(super) fn on_presence_sync(&mut self, sync: &PresenceSync, now: Instant) {
        self.presence.replica.apply(&sync.diff);
        self.presence_members(sync);
        self.deliver(&sync.broadcast, now);
    }
}
