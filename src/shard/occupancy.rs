//! Topics filling and emptying, presence keys coming and going: judged
//! for this node by each topic's owner shard (the history owner's hash),
//! then reported — as the event on one node, to the bus with `[cluster]`,
//! where Redis decides whether the whole cluster changed.
//!
//! | entry point | when |
//! | --- | --- |
//! | [`Shard::shard_occupancy`] | this shard got a topic's first subscriber, or lost its last |
//! | [`Shard::occupancy_end_of_turn`] | end of turn: the losses go to the owners |
//! | [`Shard::on_occupancy`] | (owner) a shard of this node reported that |
//! | [`Shard::presence_members`] | (owner) a presence diff of this node was applied |
//! | [`Shard::release_occupancy`] | (owner, one node) the shard stops: what it still holds goes |
//!
//! Once a shard is stopping it reports nothing more: what the node held
//! goes all at once with reason `shutdown`, from the owner shards on one
//! node, from the bus (which releases the node's holdings in Redis) in a
//! cluster.

use super::channels::unix_ms;
use super::inbox::ShardMessage;
use super::Shard;
use crate::lifecycle::event::{EndReason, EventKind};
use crate::lifecycle::occupancy::NodeChange;
use crate::presence::PresenceSync;

impl Shard {
    /// Whether the server is stopping: this shard began to, or another
    /// may have (a report sent by a stopping shard can arrive before this
    /// one hears `Shutdown`).
    fn is_stopping(&self) -> bool {
        self.stop_deadline.is_some() || self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether the backend wants to hear `kinds` about `topic`.
    fn wants_any(&self, kinds: [EventKind; 2], topic: &str) -> bool {
        kinds.iter().any(|k| self.lifecycle.wants(*k)) && self.lifecycle_topic(topic)
    }

    /// This shard has its first subscriber of `topic` (`occupied`) or lost
    /// its last: the topic's owner on this node hears it — a loss at the
    /// end of the turn, after the turn's presence diffs, so the last
    /// member's `member_removed` comes before the `channel_vacated`.
    pub(super) fn shard_occupancy(&mut self, topic: &str, occupied: bool) {
        let kinds = [EventKind::ChannelOccupied, EventKind::ChannelVacated];
        if !self.wants_any(kinds, topic) {
            return;
        }
        let pending = &mut self.lifecycle.vacated_this_turn;
        if !occupied {
            return pending.push(topic.to_string());
        }
        if let Some(at) = pending.iter().position(|t| t == topic) {
            // Lost and taken again within the turn: no change to report.
            pending.swap_remove(at);
            return;
        }
        self.report_occupancy(topic, true);
    }

    /// End of turn (after presence): the topics this shard lost.
    pub(super) fn occupancy_end_of_turn(&mut self) {
        if self.lifecycle.vacated_this_turn.is_empty() {
            return;
        }
        let mut vacated = std::mem::take(&mut self.lifecycle.vacated_this_turn);
        for topic in vacated.drain(..) {
            self.report_occupancy(&topic, false);
        }
        self.lifecycle.vacated_this_turn = vacated; // keeps its allocation
    }

    fn report_occupancy(&mut self, topic: &str, occupied: bool) {
        let owner = self.history_owner(topic);
        if owner == self.id {
            return self.on_occupancy(topic, self.id, occupied);
        }
        if let Some(inbox) = self.peers.get(owner) {
            inbox.send(ShardMessage::Occupancy {
                topic: topic.to_string(),
                shard: self.id,
                occupied,
            });
        }
    }

    /// (Owner) shard `shard` of this node holds `topic` now, or no longer.
    pub(super) fn on_occupancy(&mut self, topic: &str, shard: usize, occupied: bool) {
        if self.is_stopping() {
            // Stopping: what is left goes at once, with reason `shutdown`
            // (`release_occupancy`, or the bus's release in a cluster).
            return;
        }
        if let Some(change) = self.lifecycle.occupancy.change(topic, shard, occupied) {
            self.node_changed(change, None);
        }
    }

    /// (Owner) a presence diff was applied here: keys of this node that
    /// appeared or went. Other nodes' diffs count on their own nodes.
    pub(super) fn presence_members(&mut self, sync: &PresenceSync) {
        let topic = &sync.diff.topic;
        let kinds = [EventKind::MemberAdded, EventKind::MemberRemoved];
        // Cheapest first: this runs for every diff on every shard.
        if !kinds.iter().any(|k| self.lifecycle.wants(*k))
            || self.is_stopping()
            || sync.broadcast.origin().node != self.distributor.node()
            || self.history_owner(topic) != self.id
            || !self.wants_any(kinds, topic)
        {
            return;
        }
        for change in self.lifecycle.members.apply(&sync.diff) {
            self.node_changed(change, None);
        }
    }

    /// (Owner, one node) the shard exits: every topic and key it still
    /// counts goes, once, with reason `shutdown` (the other shards are
    /// closing their clients too, and their reports may come too late).
    /// With `[cluster]` the bus releases the node's holdings in Redis.
    pub(super) fn release_occupancy(&mut self) {
        if self.distributor.cluster().is_some() {
            return;
        }
        let mut changes = self.lifecycle.occupancy.release_all();
        changes.extend(self.lifecycle.members.release_all());
        for change in changes {
            self.node_changed(change, Some(EndReason::Shutdown));
        }
    }

    /// This node's change: the event, or the bus's to judge.
    fn node_changed(&mut self, change: NodeChange, reason: Option<EndReason>) {
        if let Some(cluster) = self.distributor.cluster() {
            return cluster.lifecycle(change);
        }
        if self.lifecycle.wants(change.kind()) {
            let event = change.event(unix_ms(), reason);
            self.lifecycle.emit(event);
        }
    }
}
