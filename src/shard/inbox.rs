//! How shards talk to each other: one queue per shard, woken by a `mio::Waker`.
//!
//! The queue is `std::sync::mpsc` (lock-free on the send side). Waking costs
//! a syscall, so a sender only wakes the target when the target's
//! `wake_pending` flag was clear: a burst of a thousand broadcasts to a shard
//! costs one wake. The target clears the flag *before* draining the queue, so
//! a message sent during the drain either is seen by that drain or sets the
//! flag again and wakes the shard once more: nothing is ever left waiting.
//!
//! Each message belongs to one feature and is defined next to it; this file
//! only gathers them. Features never send through the inbox themselves: the
//! loop routes what they return (and the hook workers call a closure).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use super::forward::Forwarded;
use super::handover::HandOver;
use super::history::{RecoveryAnswer, RecoveryAsk, ToSequence};
use super::history_cluster::HistoryRead;
use super::hooks::HookAnswer;
use crate::connect::DisconnectTarget;
use crate::fanout::broadcast::Broadcast;
use crate::fanout::deliver::ShardLink;
use crate::presence::PresenceSync;

/// A message to a shard.
#[derive(Debug)]
pub enum ShardMessage {
    /// Fan-out: deliver a broadcast published elsewhere to local subscribers.
    Broadcast(Arc<Broadcast>),
    /// Fan-out: close every local client this forced disconnect targets.
    Disconnect(Arc<DisconnectTarget>),
    /// Hooks: the backend answered (sent by a webhook worker).
    Hook(HookAnswer),
    /// Long-poll: a request for a session this shard owns, with its
    /// connection (moved from the shard that accepted it).
    HandOver(Box<HandOver>),
    /// Presence: another shard's changes of one turn, for one topic.
    Presence(Arc<PresenceSync>),
    /// Cluster: the node now listens to this topic's channel (sent by the
    /// bus): joins of the topic waiting for it are answered.
    Subscribed(String),
    /// Long-poll: a request another node forwarded, for a session this
    /// shard owns (sent by the cluster bus).
    Forwarded(Box<Forwarded>),
    /// Long-poll: the owner node's answer to a request this shard
    /// forwarded (sent by the cluster bus).
    ForwardAnswer {
        /// This shard's id of the request.
        id: u64,
        /// The whole HTTP response; `None` when the session's node is not
        /// up (the request is then handled here).
        response: Option<Vec<u8>>,
    },
    /// History: a broadcast to a topic this shard owns, for it to sequence.
    Sequence(Box<ToSequence>),
    /// History: a join asks this shard, the topic's owner, for the
    /// position and the broadcasts to replay.
    RecoveryAsk(Box<RecoveryAsk>),
    /// History: the owner's answer to a join held here.
    RecoveryAnswer(Box<RecoveryAnswer>),
    /// History (cluster): a broadcast with its position in Redis's stream,
    /// for this shard, the topic's owner on this node (sent by the bus).
    Sequenced(Arc<Broadcast>),
    /// History (cluster): what the bus read of a topic's stream for this
    /// shard.
    HistoryRead(Box<HistoryRead>),
    /// History (cluster): broadcasts of this topic were lost to this node;
    /// its local channels end with `phx_error` so their clients rejoin.
    HistoryGap(Arc<str>),
    /// Lifecycle: shard `shard` got its first subscriber of `topic`
    /// (`occupied`) or lost its last; sent to the topic's owner shard.
    Occupancy {
        /// The topic.
        topic: String,
        /// The reporting shard.
        shard: usize,
        /// Whether it now has a subscriber.
        occupied: bool,
    },
    /// Stop accepting, close every client, flush, exit.
    Shutdown,
}

/// The sending side of a shard's inbox, cloned to every other shard.
#[derive(Debug, Clone)]
pub struct ShardInbox {
    sender: mpsc::Sender<ShardMessage>,
    waker: Arc<mio::Waker>,
    wake_pending: Arc<AtomicBool>,
}

/// The receiving side, owned by the shard.
#[derive(Debug)]
pub struct InboxReceiver {
    receiver: mpsc::Receiver<ShardMessage>,
    wake_pending: Arc<AtomicBool>,
}

/// Creates a shard's inbox, woken through `waker`.
pub fn inbox(waker: mio::Waker) -> (ShardInbox, InboxReceiver) {
    let (sender, receiver) = mpsc::channel();
    let wake_pending = Arc::new(AtomicBool::new(false));
    (
        ShardInbox {
            sender,
            waker: Arc::new(waker),
            wake_pending: wake_pending.clone(),
        },
        InboxReceiver {
            receiver,
            wake_pending,
        },
    )
}

impl ShardInbox {
    /// Queues `message` and wakes the shard if it is not already due to wake.
    /// Returns false when the shard has exited.
    pub fn send(&self, message: ShardMessage) -> bool {
        if self.sender.send(message).is_err() {
            return false;
        }
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            // A failed wake means the poll is gone, i.e. the shard exited.
            return self.waker.wake().is_ok();
        }
        true
    }
}

impl ShardLink for ShardInbox {
    fn send_broadcast(&self, broadcast: Arc<Broadcast>) {
        self.send(ShardMessage::Broadcast(broadcast));
    }
}

impl InboxReceiver {
    /// Takes everything queued. Call after a waker event.
    pub fn drain(&self) -> impl Iterator<Item = ShardMessage> + '_ {
        self.wake_pending.store(false, Ordering::Release);
        self.receiver.try_iter()
    }
}
